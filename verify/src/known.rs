//! Exchange-side gaps (maintenance windows) confirmed by a backfill, stored in `exchange_gaps`
//! so verification counts them as known rather than missing.

use klinebus_schemas::{Interval, Symbol};
use sqlx::PgPool;

/// A range of open times `[start, end)` the exchange has no candles for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownGap {
    /// First missing open time (ms).
    pub start: i64,
    /// Exclusive end: the next open time that exists (ms).
    pub end: i64,
}

/// Records exchange gaps of one series (idempotent: a gap already known keeps its first
/// detection time; a longer end replaces a shorter one).
pub async fn record_exchange_gaps(
    pool: &PgPool,
    symbol: &Symbol,
    interval: Interval,
    gaps: &[KnownGap],
) -> Result<(), sqlx::Error> {
    for g in gaps {
        sqlx::query(
            "INSERT INTO exchange_gaps (symbol, timeframe, start_time, end_time, candles)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (symbol, timeframe, start_time) DO UPDATE
               SET end_time = GREATEST(exchange_gaps.end_time, EXCLUDED.end_time),
                   candles = GREATEST(exchange_gaps.candles, EXCLUDED.candles)",
        )
        .bind(symbol.as_str())
        .bind(interval.as_str())
        .bind(g.start)
        .bind(g.end)
        .bind(interval.count_between(g.start, g.end))
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Known gaps of a series overlapping `[start, end)`.
pub(crate) async fn load(
    pool: &PgPool,
    symbol: &str,
    interval: Interval,
    start: i64,
    end: i64,
) -> Result<Vec<KnownGap>, sqlx::Error> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT start_time, end_time FROM exchange_gaps
         WHERE symbol = $1 AND timeframe = $2 AND start_time < $4 AND end_time > $3
         ORDER BY start_time",
    )
    .bind(symbol)
    .bind(interval.as_str())
    .bind(start)
    .bind(end)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(start, end)| KnownGap { start, end })
        .collect())
}

/// Candles of `known` inside `[start, end)`.
pub(crate) fn known_candles(interval: Interval, known: &[KnownGap], start: i64, end: i64) -> i64 {
    known
        .iter()
        .map(|k| interval.count_between(k.start.max(start), k.end.min(end)))
        .sum()
}

/// `[a, b)` minus every known gap: the pieces still unexplained.
pub(crate) fn subtract(a: i64, b: i64, known: &[KnownGap]) -> Vec<(i64, i64)> {
    let mut pieces = vec![(a, b)];
    for k in known {
        pieces = pieces
            .into_iter()
            .flat_map(|(s, e)| {
                if k.end <= s || k.start >= e {
                    vec![(s, e)]
                } else {
                    let mut v = Vec::new();
                    if k.start > s {
                        v.push((s, k.start));
                    }
                    if k.end < e {
                        v.push((k.end, e));
                    }
                    v
                }
            })
            .collect();
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtracts_ranges() {
        let k = [
            KnownGap { start: 10, end: 20 },
            KnownGap { start: 30, end: 35 },
        ];
        assert_eq!(subtract(0, 50, &k), [(0, 10), (20, 30), (35, 50)]);
        assert_eq!(subtract(12, 18, &k), []);
        assert_eq!(subtract(15, 25, &k), [(20, 25)]);
        assert_eq!(subtract(40, 45, &k), [(40, 45)]);
    }
}
