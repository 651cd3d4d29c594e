//! One flush = one transaction: a bulk `UNNEST` upsert of the batch's winning candle versions
//! (ordering rules of [`crate::dedup`], enforced again in the `WHERE` of `ON CONFLICT` so that
//! versions from different batches or instances converge too), then the `ingestion_status` rows
//! of the series in the batch. Numbers travel as text and are cast to `numeric` by Postgres:
//! what the exchange sent is what is stored.

use std::collections::HashMap;

use klinebus_schemas::KlineEvent;
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::status::{series_of, upsert_status};

const UPSERT_CANDLES: &str = r#"
INSERT INTO ohlcv_candles AS c (
    symbol, timeframe, "timestamp", open, high, low, close, volume, quote_volume,
    taker_buy_base, taker_buy_quote, trades, close_time, is_closed, event_time, source)
SELECT t.symbol, t.timeframe, t.ts, t.open, t.high, t.low, t.close, t.volume, t.quote_volume,
       t.tbb, t.tbq, t.trades, t.close_time, t.is_closed, t.event_time, t.source
FROM UNNEST(
    $1::text[], $2::text[], $3::int8[],
    $4::text[]::numeric[], $5::text[]::numeric[], $6::text[]::numeric[], $7::text[]::numeric[],
    $8::text[]::numeric[], $9::text[]::numeric[], $10::text[]::numeric[], $11::text[]::numeric[],
    $12::int8[], $13::int8[], $14::bool[], $15::int8[], $16::text[]
) AS t(symbol, timeframe, ts, open, high, low, close, volume, quote_volume, tbb, tbq,
       trades, close_time, is_closed, event_time, source)
ON CONFLICT (symbol, timeframe, "timestamp") DO UPDATE SET
    open = EXCLUDED.open,
    high = EXCLUDED.high,
    low = EXCLUDED.low,
    close = EXCLUDED.close,
    volume = EXCLUDED.volume,
    quote_volume = EXCLUDED.quote_volume,
    taker_buy_base = EXCLUDED.taker_buy_base,
    taker_buy_quote = EXCLUDED.taker_buy_quote,
    trades = EXCLUDED.trades,
    close_time = EXCLUDED.close_time,
    is_closed = EXCLUDED.is_closed,
    event_time = EXCLUDED.event_time,
    source = EXCLUDED.source,
    updated_at = now()
WHERE (EXCLUDED.is_closed AND NOT c.is_closed)
   OR (EXCLUDED.is_closed = c.is_closed AND EXCLUDED.event_time > c.event_time)
RETURNING c.symbol::text, c.timeframe::text, c."timestamp"
"#;

/// The stored version (closedness, event time) of some keys, read in the upsert's transaction.
const STORED_VERSIONS: &str = r#"
SELECT c.symbol::text, c.timeframe::text, c."timestamp", c.is_closed, c.event_time
FROM ohlcv_candles c
JOIN UNNEST($1::text[], $2::text[], $3::int8[]) AS k(symbol, timeframe, ts)
  ON c.symbol = k.symbol AND c.timeframe = k.timeframe AND c."timestamp" = k.ts
"#;

/// What one committed flush did.
#[derive(Debug, Default)]
pub struct Written {
    /// Per candle version sent (after in-batch dedup, same order): whether it was inserted or
    /// replaced.
    pub changed: Vec<bool>,
    /// Per candle version sent, for the rows asked to be rechecked (else empty): unchanged
    /// because the table already holds exactly this version (same closedness and event time).
    pub already: Vec<bool>,
}

impl Written {
    /// Candle versions sent.
    pub fn rows(&self) -> usize {
        self.changed.len()
    }

    /// Rows actually inserted or replaced.
    pub fn changed_count(&self) -> usize {
        self.changed.iter().filter(|c| **c).count()
    }

    /// Whether row `i` was unchanged because the table already held exactly it.
    pub fn already(&self, i: usize) -> bool {
        self.already.get(i).copied().unwrap_or(false)
    }

    /// Rows unchanged because the table already held exactly them.
    pub fn already_count(&self) -> usize {
        self.already.iter().filter(|c| **c).count()
    }
}

/// Column arrays for the upsert, built in one pass. They borrow the events: sqlx encodes at
/// bind time, so nothing is copied twice.
struct Columns<'a> {
    symbol: Vec<&'a str>,
    timeframe: Vec<&'static str>,
    ts: Vec<i64>,
    open: Vec<&'a str>,
    high: Vec<&'a str>,
    low: Vec<&'a str>,
    close: Vec<&'a str>,
    volume: Vec<&'a str>,
    quote_volume: Vec<&'a str>,
    tbb: Vec<&'a str>,
    tbq: Vec<&'a str>,
    trades: Vec<i64>,
    close_time: Vec<i64>,
    is_closed: Vec<bool>,
    event_time: Vec<i64>,
    source: Vec<&'static str>,
}

impl<'a> Columns<'a> {
    fn of(rows: &[&'a KlineEvent]) -> Self {
        let n = rows.len();
        let mut c = Self {
            symbol: Vec::with_capacity(n),
            timeframe: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            open: Vec::with_capacity(n),
            high: Vec::with_capacity(n),
            low: Vec::with_capacity(n),
            close: Vec::with_capacity(n),
            volume: Vec::with_capacity(n),
            quote_volume: Vec::with_capacity(n),
            tbb: Vec::with_capacity(n),
            tbq: Vec::with_capacity(n),
            trades: Vec::with_capacity(n),
            close_time: Vec::with_capacity(n),
            is_closed: Vec::with_capacity(n),
            event_time: Vec::with_capacity(n),
            source: Vec::with_capacity(n),
        };
        for e in rows {
            c.symbol.push(e.symbol.as_str());
            c.timeframe.push(e.interval.as_str());
            c.ts.push(e.open_time);
            c.open.push(&e.open);
            c.high.push(&e.high);
            c.low.push(&e.low);
            c.close.push(&e.close);
            c.volume.push(&e.volume);
            c.quote_volume.push(&e.quote_volume);
            c.tbb.push(&e.taker_buy_base);
            c.tbq.push(&e.taker_buy_quote);
            // validate() bounds nothing here, but no exchange reports 2^63 trades.
            c.trades.push(i64::try_from(e.trades).unwrap_or(i64::MAX));
            c.close_time.push(e.close_time);
            c.is_closed.push(e.closed);
            c.event_time.push(e.event_time);
            c.source.push(e.source.as_str());
        }
        c
    }
}

/// Upserts the candles (already deduplicated and key-ordered) inside `tx`; returns, per row,
/// whether it was inserted or replaced.
pub async fn upsert_candles(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&KlineEvent],
) -> Result<Vec<bool>, sqlx::Error> {
    let c = Columns::of(rows);
    let returned = sqlx::query(UPSERT_CANDLES)
        .bind(&c.symbol)
        .bind(&c.timeframe)
        .bind(&c.ts)
        .bind(&c.open)
        .bind(&c.high)
        .bind(&c.low)
        .bind(&c.close)
        .bind(&c.volume)
        .bind(&c.quote_volume)
        .bind(&c.tbb)
        .bind(&c.tbq)
        .bind(&c.trades)
        .bind(&c.close_time)
        .bind(&c.is_closed)
        .bind(&c.event_time)
        .bind(&c.source)
        .fetch_all(&mut **tx)
        .await?;
    // The usual case (new candles, newer versions): every row changed.
    if returned.len() == rows.len() {
        return Ok(vec![true; rows.len()]);
    }
    let mut keys = Vec::with_capacity(returned.len());
    for r in &returned {
        keys.push((
            r.try_get::<&str, _>(0)?,
            r.try_get::<&str, _>(1)?,
            r.try_get::<i64, _>(2)?,
        ));
    }
    Ok(mark_changed(rows, keys))
}

/// `rows` (key-ordered, unique) marked by whether their key is among `keys` (any order).
fn mark_changed(rows: &[&KlineEvent], mut keys: Vec<(&str, &str, i64)>) -> Vec<bool> {
    keys.sort_unstable();
    let mut changed = vec![false; rows.len()];
    let mut k = keys.into_iter().peekable();
    for (i, e) in rows.iter().enumerate() {
        let key = (e.symbol.as_str(), e.interval.as_str(), e.open_time);
        while k.next_if(|r| *r < key).is_some() {}
        if k.next_if(|r| *r == key).is_some() {
            changed[i] = true;
        }
    }
    changed
}

/// For the rows flagged in `recheck` that `changed` says were left alone: whether the table
/// holds exactly that version. Read inside the upsert's transaction, whose `ON CONFLICT` locked
/// those rows, so the answer is what this commit leaves.
pub async fn stored_same(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&KlineEvent],
    changed: &[bool],
    recheck: &[bool],
) -> Result<Vec<bool>, sqlx::Error> {
    let ask: Vec<usize> = (0..rows.len())
        .filter(|&i| recheck.get(i).copied().unwrap_or(false) && !changed[i])
        .collect();
    let mut same = vec![false; rows.len()];
    if ask.is_empty() {
        return Ok(same);
    }
    let symbols: Vec<&str> = ask.iter().map(|&i| rows[i].symbol.as_str()).collect();
    let timeframes: Vec<&str> = ask.iter().map(|&i| rows[i].interval.as_str()).collect();
    let opens: Vec<i64> = ask.iter().map(|&i| rows[i].open_time).collect();
    let found = sqlx::query(STORED_VERSIONS)
        .bind(&symbols)
        .bind(&timeframes)
        .bind(&opens)
        .fetch_all(&mut **tx)
        .await?;
    let mut stored = HashMap::with_capacity(found.len());
    for r in &found {
        stored.insert(
            (
                r.try_get::<String, _>(0)?,
                r.try_get::<String, _>(1)?,
                r.try_get::<i64, _>(2)?,
            ),
            (r.try_get::<bool, _>(3)?, r.try_get::<i64, _>(4)?),
        );
    }
    for &i in &ask {
        let e = rows[i];
        let k = (
            e.symbol.as_str().to_owned(),
            e.interval.as_str().to_owned(),
            e.open_time,
        );
        same[i] = stored.get(&k) == Some(&(e.closed, e.event_time));
    }
    Ok(same)
}

/// One transaction: candles, then status rows; committed before returning `Ok`. Rows flagged
/// in `recheck` (may be empty) that change nothing are looked up ([`stored_same`]).
pub async fn write_batch(
    pool: &PgPool,
    rows: &[&KlineEvent],
    recheck: &[bool],
) -> Result<Written, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let changed = upsert_candles(&mut tx, rows).await?;
    let already = if recheck.iter().any(|r| *r) {
        stored_same(&mut tx, rows, &changed, recheck).await?
    } else {
        Vec::new()
    };
    let series = series_of(rows, &changed);
    upsert_status(&mut tx, &series).await?;
    tx.commit().await?;
    Ok(Written { changed, already })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dedup::tests::candle;
    use crate::dedup::winners;

    #[test]
    fn marks_returned_keys_in_any_order() {
        let (b0, b1, e0) = (
            candle("BTCUSDT", 0, true, 0),
            candle("BTCUSDT", 1, true, 0),
            candle("ETHUSDT", 0, true, 0),
        );
        let rows = winners([&e0, &b1, &b0]);
        let keys = vec![
            ("ETHUSDT", "1m", e0.open_time),
            ("BTCUSDT", "1m", b0.open_time),
        ];
        assert_eq!(mark_changed(&rows, keys), vec![true, false, true]);
        assert_eq!(mark_changed(&rows, vec![]), vec![false; 3]);
    }
}
