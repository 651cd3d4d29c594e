//! The auditor's per-series metrics, read from the database: what Prometheus needs to alert on
//! data that stopped arriving, data older than its timeframe's freshness limit, and ingestion
//! errors (the rules of `klinectl alerts`, as `compose/prometheus/alerts.yml` states them).
//!
//! Per configured series (labels `symbol` and `interval` only, `TRADING_PAIRS` × `TIMEFRAMES`):
//! - `klinebus_audit_series_newest_close_timestamp_seconds`: close time of the newest closed
//!   candle stored, 0 when there is none;
//! - `klinebus_audit_series_freshness_limit_seconds`: [`Interval::freshness_limit`];
//! - `klinebus_audit_series_last_ingested_timestamp_seconds`: `ingestion_status.last_ingested_at`,
//!   when a candle of the series was last committed, 0 when never;
//! - `klinebus_audit_series_consecutive_errors`: `ingestion_status.error_count`;
//! - `klinebus_audit_series_halted`: 1 when the symbol's recorded exchange status is not
//!   `TRADING` (halted or delisted: no candles form, so no freshness limit applies, as in
//!   verify), else 0;
//!
//! and `klinebus_audit_series_refreshed_timestamp_seconds`, when they were last read.
//! Timestamps rather than ages, so that an age keeps growing in Prometheus (`time() - …`) when
//! nothing refreshes them.

use std::time::Duration;

use klinebus_schemas::{Interval, Symbol};
use sqlx::PgPool;

/// One series as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesHealth {
    /// Symbol.
    pub symbol: Symbol,
    /// Timeframe.
    pub interval: Interval,
    /// Close time (epoch ms) of the newest closed candle stored.
    pub newest_close_ms: Option<i64>,
    /// When a candle of the series was last committed (epoch ms).
    pub last_ingested_ms: Option<i64>,
    /// Consecutive ingestion errors (0 without an `ingestion_status` row).
    pub consecutive_errors: i32,
    /// The symbol's recorded exchange status is not `TRADING`.
    pub halted: bool,
}

impl SeriesHealth {
    /// The timeframe's freshness limit.
    pub fn freshness_limit(&self) -> Duration {
        self.interval.freshness_limit()
    }
}

/// Reads every series of `symbols` × `intervals`: one index probe each for the newest closed
/// candle, and their `ingestion_status` and `symbol_status` rows.
pub async fn read(
    pool: &PgPool,
    symbols: &[Symbol],
    intervals: &[Interval],
) -> Result<Vec<SeriesHealth>, sqlx::Error> {
    let mut series = Vec::with_capacity(symbols.len() * intervals.len());
    for s in symbols {
        for &i in intervals {
            series.push((s.clone(), i));
        }
    }
    let names: Vec<&str> = series.iter().map(|(s, _)| s.as_str()).collect();
    let tfs: Vec<&str> = series.iter().map(|(_, i)| i.as_str()).collect();
    // symbol, timeframe, newest closed close_time, last ingested (ms), errors, exchange status
    type Row = (
        String,
        String,
        Option<i64>,
        Option<i64>,
        Option<i32>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        r#"SELECT q.symbol, q.timeframe,
                  (SELECT c.close_time FROM ohlcv_candles c
                    WHERE c.symbol = q.symbol AND c.timeframe = q.timeframe AND c.is_closed
                    ORDER BY c."timestamp" DESC LIMIT 1),
                  (extract(epoch FROM i.last_ingested_at) * 1000)::bigint,
                  i.error_count,
                  st.status::text
           FROM unnest($1::text[], $2::text[]) AS q(symbol, timeframe)
           LEFT JOIN ingestion_status i ON i.symbol = q.symbol AND i.timeframe = q.timeframe
           LEFT JOIN symbol_status st ON st.symbol = q.symbol"#,
    )
    .bind(&names)
    .bind(&tfs)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (symbol, tf, newest_close_ms, last_ingested_ms, errors, status) in rows {
        // The query returns exactly the pairs it was given.
        let Some((s, i)) = series
            .iter()
            .find(|(s, i)| s.as_str() == symbol && i.as_str() == tf)
        else {
            continue;
        };
        out.push(SeriesHealth {
            symbol: s.clone(),
            interval: *i,
            newest_close_ms,
            last_ingested_ms,
            consecutive_errors: errors.unwrap_or(0),
            halted: status.is_some_and(|s| s != klinebus_verify::TRADING),
        });
    }
    Ok(out)
}

/// Sets the gauges of `series` (see the module's documentation).
pub fn record(series: &[SeriesHealth]) {
    let seconds = |ms: Option<i64>| ms.map_or(0.0, |t| t as f64 / 1000.0);
    for s in series {
        let labels = [
            ("symbol", s.symbol.as_str().to_owned()),
            ("interval", s.interval.as_str().to_owned()),
        ];
        metrics::gauge!(
            "klinebus_audit_series_newest_close_timestamp_seconds",
            &labels
        )
        .set(seconds(s.newest_close_ms));
        metrics::gauge!("klinebus_audit_series_freshness_limit_seconds", &labels)
            .set(s.freshness_limit().as_secs_f64());
        metrics::gauge!(
            "klinebus_audit_series_last_ingested_timestamp_seconds",
            &labels
        )
        .set(seconds(s.last_ingested_ms));
        metrics::gauge!("klinebus_audit_series_consecutive_errors", &labels)
            .set(f64::from(s.consecutive_errors));
        metrics::gauge!("klinebus_audit_series_halted", &labels).set(f64::from(u8::from(s.halted)));
    }
    metrics::gauge!("klinebus_audit_series_refreshed_timestamp_seconds").set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
}

/// [`read`], then [`record`].
pub async fn refresh(
    pool: &PgPool,
    symbols: &[Symbol],
    intervals: &[Interval],
) -> Result<Vec<SeriesHealth>, sqlx::Error> {
    let series = read(pool, symbols, intervals).await?;
    record(&series);
    Ok(series)
}
