//! `ingestion_status`: one row per (symbol, timeframe), updated in the flush's transaction on
//! success, and marked `error` (when the database answers at all) after a failed flush.

use std::collections::BTreeMap;

use klinebus_schemas::KlineEvent;
use sqlx::{PgPool, Postgres, Transaction};

/// What a batch says about one series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesUpdate {
    /// Symbol.
    pub symbol: String,
    /// Timeframe (interval name).
    pub timeframe: String,
    /// Newest candle open time in the batch.
    pub last_ingested: i64,
    /// Newest closed candle open time in the batch, if any.
    pub last_closed: Option<i64>,
    /// `ingestion_mode` of the newest event (by event time).
    pub mode: &'static str,
    /// Instant latency is measured from (ms): close (`close_time + 1`) of a closed newest
    /// event, its event time if forming.
    pub latency_ref_ms: i64,
    /// Rows of this series that actually changed.
    pub changed: i64,
    newest_event_time: i64,
}

/// Per-series summary of a batch (key-ordered, so status rows are locked in a fixed order);
/// `changed[i]` says whether `rows[i]` was inserted or replaced.
pub fn series_of(rows: &[&KlineEvent], changed: &[bool]) -> Vec<SeriesUpdate> {
    let mut map: BTreeMap<(&str, &str), SeriesUpdate> = BTreeMap::new();
    for (i, e) in rows.iter().enumerate() {
        let key = (e.symbol.as_str(), e.interval.as_str());
        let reference = if e.closed {
            e.close_time + 1
        } else {
            e.event_time
        };
        let was_changed = changed.get(i).copied().unwrap_or(false);
        let s = map.entry(key).or_insert_with(|| SeriesUpdate {
            symbol: key.0.to_owned(),
            timeframe: key.1.to_owned(),
            last_ingested: e.open_time,
            last_closed: None,
            mode: e.source.ingestion_mode(),
            latency_ref_ms: reference,
            changed: 0,
            newest_event_time: e.event_time,
        });
        s.last_ingested = s.last_ingested.max(e.open_time);
        if e.closed {
            s.last_closed = Some(s.last_closed.map_or(e.open_time, |c| c.max(e.open_time)));
        }
        if e.event_time > s.newest_event_time {
            s.newest_event_time = e.event_time;
            s.mode = e.source.ingestion_mode();
            s.latency_ref_ms = reference;
        }
        s.changed += i64::from(was_changed);
    }
    map.into_values().collect()
}

const UPSERT_STATUS: &str = r#"
INSERT INTO ingestion_status AS s (
    symbol, timeframe, last_ingested_timestamp, last_closed_timestamp, last_ingested_at,
    ingestion_mode, status, error_message, error_count, latency_ms, candles_ingested, updated_at)
SELECT t.symbol, t.timeframe, t.last_ts, t.last_closed, now(), t.mode, 'active', NULL, 0,
       GREATEST(0, (extract(epoch FROM clock_timestamp()) * 1000)::int8 - t.ref_ms), t.n, now()
FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[], $7::int8[])
    AS t(symbol, timeframe, last_ts, last_closed, mode, ref_ms, n)
ON CONFLICT (symbol, timeframe) DO UPDATE SET
    last_ingested_timestamp = GREATEST(s.last_ingested_timestamp, EXCLUDED.last_ingested_timestamp),
    last_closed_timestamp = GREATEST(s.last_closed_timestamp, EXCLUDED.last_closed_timestamp),
    last_ingested_at = EXCLUDED.last_ingested_at,
    ingestion_mode = EXCLUDED.ingestion_mode,
    status = 'active',
    error_message = NULL,
    error_count = 0,
    latency_ms = EXCLUDED.latency_ms,
    candles_ingested = s.candles_ingested + EXCLUDED.candles_ingested,
    updated_at = now()
"#;

/// Upserts the status rows of a committed batch (inside its transaction).
pub async fn upsert_status(
    tx: &mut Transaction<'_, Postgres>,
    series: &[SeriesUpdate],
) -> Result<(), sqlx::Error> {
    let col = |f: fn(&SeriesUpdate) -> &str| series.iter().map(f).collect::<Vec<_>>();
    let int = |f: fn(&SeriesUpdate) -> i64| series.iter().map(f).collect::<Vec<_>>();
    sqlx::query(UPSERT_STATUS)
        .bind(col(|s| &s.symbol))
        .bind(col(|s| &s.timeframe))
        .bind(int(|s| s.last_ingested))
        .bind(series.iter().map(|s| s.last_closed).collect::<Vec<_>>())
        .bind(col(|s| s.mode))
        .bind(int(|s| s.latency_ref_ms))
        .bind(int(|s| s.changed))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const RECORD_ERROR: &str = r#"
INSERT INTO ingestion_status AS s (symbol, timeframe, status, error_message, error_count, updated_at)
SELECT t.symbol, t.timeframe, 'error', $3, 1, now()
FROM UNNEST($1::text[], $2::text[]) AS t(symbol, timeframe)
ON CONFLICT (symbol, timeframe) DO UPDATE SET
    status = 'error',
    error_message = EXCLUDED.error_message,
    error_count = s.error_count + 1,
    updated_at = now()
"#;

/// Marks the series of a failed batch as `error` (best effort: the caller bounds the time).
pub async fn record_error(
    pool: &PgPool,
    series: &[(String, String)],
    message: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(RECORD_ERROR)
        .bind(series.iter().map(|s| s.0.clone()).collect::<Vec<_>>())
        .bind(series.iter().map(|s| s.1.clone()).collect::<Vec<_>>())
        .bind(message)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dedup::tests::candle;
    use klinebus_schemas::Source;

    #[test]
    fn summarises_each_series() {
        let a0 = candle("BTCUSDT", 0, true, 0);
        let mut a1 = candle("BTCUSDT", 1, false, 5);
        a1.source = Source::Poll;
        let mut b3 = candle("ETHUSDT", 3, true, 0);
        b3.source = Source::Backfill;
        let rows = [&a0, &a1, &b3];
        let s = series_of(&rows, &[true, false, false]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].symbol, "BTCUSDT");
        assert_eq!(s[0].last_ingested, a1.open_time);
        assert_eq!(s[0].last_closed, Some(a0.open_time));
        assert_eq!(s[0].mode, "polling");
        assert_eq!(s[0].latency_ref_ms, a1.event_time);
        assert_eq!(s[0].changed, 1);
        assert_eq!(s[1].symbol, "ETHUSDT");
        assert_eq!(s[1].mode, "backfill");
        assert_eq!(s[1].latency_ref_ms, b3.close_time + 1);
        assert_eq!(s[1].changed, 0);
    }

    #[test]
    fn no_closed_candle_means_no_closed_timestamp() {
        let a = candle("BTCUSDT", 0, false, 0);
        let s = series_of(&[&a], &[false]);
        assert_eq!(s[0].last_closed, None);
    }
}
