//! PostgreSQL: reading history to warm a series, upserting `signals` rows (one or a batch in one
//! statement), and the ownership lock.

use klinebus_schemas::{Interval, Symbol};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, PgPool};

use crate::{Candle, SignalReport};

/// Up to `limit` closed candles of one series opening strictly before `before`, oldest first.
/// Reads the primary-key index backwards from `before` (no scan of older history). Rows whose
/// prices cannot be used (never written by kline-pg-sink) end the history there, which the
/// series treats like a gap.
pub async fn load_history(
    pool: &PgPool,
    symbol: &Symbol,
    interval: Interval,
    before: i64,
    limit: i64,
) -> Result<Vec<Candle>, sqlx::Error> {
    let rows: Vec<(i64, String, String, String, String, String)> = sqlx::query_as(
        r#"SELECT "timestamp", open::text, high::text, low::text, close::text, volume::text
           FROM ohlcv_candles
           WHERE symbol = $1 AND timeframe = $2 AND "timestamp" < $3 AND is_closed
           ORDER BY "timestamp" DESC
           LIMIT $4"#,
    )
    .bind(symbol.as_str())
    .bind(interval.as_str())
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (t, o, h, l, c, v) in rows {
        match Candle::from_text(t, &o, &h, &l, &c, &v) {
            Ok(candle) => out.push(candle),
            Err(e) => {
                tracing::warn!(%symbol, %interval, open_time = t, error = %e,
                    "unusable stored candle; history starts after it");
                break;
            }
        }
    }
    out.reverse();
    Ok(out)
}

/// Open times of the stored signals (not `insufficient_data` rows) of one series in
/// `[from, to]`: candles a recompute must leave alone, since their signal was published.
pub async fn signalled_between(
    pool: &PgPool,
    symbol: &Symbol,
    interval: Interval,
    from: i64,
    to: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        r#"SELECT "timestamp" FROM signals
           WHERE symbol = $1 AND timeframe = $2 AND "timestamp" >= $3 AND "timestamp" <= $4
             AND action <> 'insufficient_data'"#,
    )
    .bind(symbol.as_str())
    .bind(interval.as_str())
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// Open time of the oldest `signals` row of one series in `[from, before)`, if any (a previous
/// run of the service answered for the candles from there on).
pub async fn earliest_signal(
    pool: &PgPool,
    symbol: &Symbol,
    interval: Interval,
    from: i64,
    before: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        r#"SELECT "timestamp" FROM signals
           WHERE symbol = $1 AND timeframe = $2 AND "timestamp" >= $3 AND "timestamp" < $4
           ORDER BY "timestamp" LIMIT 1"#,
    )
    .bind(symbol.as_str())
    .bind(interval.as_str())
    .bind(from)
    .bind(before)
    .fetch_optional(pool)
    .await
}

/// One row of `signals`.
#[derive(Debug, Clone)]
pub struct SignalRow<'a> {
    /// Symbol.
    pub symbol: &'a Symbol,
    /// Interval.
    pub interval: Interval,
    /// Candle open time.
    pub open_time: i64,
    /// `BUY`/`SELL`/`HOLD` or `insufficient_data`.
    pub action: &'a str,
    /// In [0, 1]; never NaN.
    pub confidence: f64,
    /// `trending`, `ranging` or `unknown`.
    pub regime: &'a str,
    /// The report (or the insufficient-data reason) as JSON.
    pub details: serde_json::Value,
}

impl<'a> SignalRow<'a> {
    /// The row for a report.
    pub fn from_report(r: &'a SignalReport, details: serde_json::Value) -> Self {
        Self {
            symbol: &r.symbol,
            interval: r.interval,
            open_time: r.open_time,
            action: match r.action {
                crate::Action::Buy => "BUY",
                crate::Action::Sell => "SELL",
                crate::Action::Hold => "HOLD",
            },
            confidence: r.confidence,
            regime: match r.regime {
                crate::Regime::Trending => "trending",
                crate::Regime::Ranging => "ranging",
            },
            details,
        }
    }
}

/// One row of `signals` ready for [`upsert_signals`]: owned, `details` already JSON text.
#[derive(Debug, Clone)]
pub struct SignalRecord {
    symbol: String,
    timeframe: &'static str,
    open_time: i64,
    action: String,
    confidence: f64,
    regime: String,
    details: String,
}

impl SignalRecord {
    /// The record of `row` (its `details` field is ignored) with `details` as JSON text.
    pub fn new(row: &SignalRow<'_>, details: String) -> Self {
        Self {
            symbol: row.symbol.as_str().to_owned(),
            timeframe: row.interval.as_str(),
            open_time: row.open_time,
            action: row.action.to_owned(),
            confidence: if row.confidence.is_finite() {
                row.confidence.clamp(0.0, 1.0)
            } else {
                0.0
            },
            regime: row.regime.to_owned(),
            details,
        }
    }
}

/// Inserts or updates many rows in ONE statement (so all or none are committed); identical
/// rows are left alone. The keys must be distinct. Returns the number of rows written.
pub async fn upsert_signals(pool: &PgPool, rows: &[SignalRecord]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let col = |f: fn(&SignalRecord) -> String| -> Vec<String> { rows.iter().map(f).collect() };
    let done = sqlx::query(
        r#"INSERT INTO signals (symbol, timeframe, "timestamp", action, confidence, regime, details)
           SELECT s, tf, t, a, c, r, d::jsonb
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::float8[],
                       $6::text[], $7::text[]) AS x(s, tf, t, a, c, r, d)
           ON CONFLICT (symbol, timeframe, "timestamp") DO UPDATE
             SET action = EXCLUDED.action, confidence = EXCLUDED.confidence,
                 regime = EXCLUDED.regime, details = EXCLUDED.details, updated_at = now()
             WHERE (signals.action, signals.confidence, signals.regime, signals.details)
                   IS DISTINCT FROM
                   (EXCLUDED.action, EXCLUDED.confidence, EXCLUDED.regime, EXCLUDED.details)"#,
    )
    .bind(col(|r| r.symbol.clone()))
    .bind(col(|r| r.timeframe.to_owned()))
    .bind(rows.iter().map(|r| r.open_time).collect::<Vec<i64>>())
    .bind(col(|r| r.action.clone()))
    .bind(rows.iter().map(|r| r.confidence).collect::<Vec<f64>>())
    .bind(col(|r| r.regime.clone()))
    .bind(col(|r| r.details.clone()))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The advisory-lock key of a consumer name (`hashtext('kline-signals/<consumer>')`).
const LOCK_SQL: &str = "SELECT pg_try_advisory_lock(hashtext('kline-signals/' || $1)::bigint)";

/// A session-level advisory lock on a dedicated connection; released when dropped (the
/// connection closes) or when the process dies.
pub struct OwnerLock {
    conn: PgConnection,
}

impl OwnerLock {
    /// Tries to become the one owner of `consumer`; `Ok(None)` if another session holds it.
    pub async fn try_acquire(url: &str, consumer: &str) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = PgConnection::connect(url).await?;
        let (got,): (bool,) = sqlx::query_as(LOCK_SQL)
            .bind(consumer)
            .fetch_one(&mut conn)
            .await?;
        Ok(got.then_some(Self { conn }))
    }

    /// The same on a connection taken out of `pool` (so on the host the pool is aimed at,
    /// checked read-write when the URL names several hosts).
    pub async fn try_acquire_from(
        pool: &PgPool,
        consumer: &str,
    ) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = pool.acquire().await?.detach();
        let (got,): (bool,) = sqlx::query_as(LOCK_SQL)
            .bind(consumer)
            .fetch_one(&mut conn)
            .await?;
        Ok(got.then_some(Self { conn }))
    }

    /// Checks the lock's connection is still alive (the lock dies with it).
    pub async fn check(&mut self) -> Result<(), sqlx::Error> {
        self.conn.ping().await
    }

    /// Closes the connection, releasing the lock.
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}
