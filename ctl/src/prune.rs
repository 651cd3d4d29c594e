//! `klinectl prune`: delete old candles in bounded batches, one series at a time, each batch a
//! primary-key range delete (row locks on the deleted rows only, never a table lock).

use std::fmt::Write;
use std::time::Duration;

use sqlx::PgPool;

use crate::cli::PruneArgs;
use crate::{pool, CtlError, Outcome};

/// Every (symbol, timeframe) present, found with a loose index scan over the primary key
/// instead of a sequential `DISTINCT` over the whole table.
pub async fn series(pool: &PgPool) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        r#"WITH RECURSIVE s AS (
             (SELECT symbol, timeframe FROM ohlcv_candles ORDER BY symbol, timeframe LIMIT 1)
             UNION ALL
             SELECT n.symbol, n.timeframe FROM s, LATERAL (
               SELECT symbol, timeframe FROM ohlcv_candles
               WHERE (symbol, timeframe) > (s.symbol, s.timeframe)
               ORDER BY symbol, timeframe LIMIT 1) n
           )
           SELECT symbol::text, timeframe::text FROM s"#,
    )
    .fetch_all(pool)
    .await
}

/// Deletes (or with `dry_run` counts) candles opening before `cutoff_ms`; returns per-series
/// counts and writes progress lines to `log`.
pub async fn prune(
    pool: &PgPool,
    cutoff_ms: i64,
    batch: i64,
    dry_run: bool,
    log: &mut String,
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    let mut out = Vec::new();
    for (symbol, tf) in series(pool).await? {
        let n: i64 = if dry_run {
            sqlx::query_scalar(
                r#"SELECT count(*) FROM ohlcv_candles
                   WHERE symbol = $1 AND timeframe = $2 AND "timestamp" < $3"#,
            )
            .bind(&symbol)
            .bind(&tf)
            .bind(cutoff_ms)
            .fetch_one(pool)
            .await?
        } else {
            let mut total = 0;
            loop {
                let done = sqlx::query(
                    r#"DELETE FROM ohlcv_candles WHERE symbol = $1 AND timeframe = $2
                         AND "timestamp" IN (
                           SELECT "timestamp" FROM ohlcv_candles
                           WHERE symbol = $1 AND timeframe = $2 AND "timestamp" < $3
                           ORDER BY "timestamp" LIMIT $4)"#,
                )
                .bind(&symbol)
                .bind(&tf)
                .bind(cutoff_ms)
                .bind(batch)
                .execute(pool)
                .await?
                .rows_affected() as i64;
                total += done;
                if done > 0 {
                    let _ = writeln!(log, "  {symbol} {tf}: deleted {total} so far");
                }
                if done < batch {
                    break;
                }
            }
            total
        };
        if n > 0 {
            let verb = if dry_run { "would delete" } else { "deleted" };
            let _ = writeln!(log, "{symbol} {tf}: {verb} {n} candles");
        }
        out.push((symbol, tf, n));
    }
    Ok(out)
}

/// Runs `prune`.
pub async fn run(database_url: &str, a: &PruneArgs) -> Result<Outcome, CtlError> {
    if a.batch_size < 1 {
        return Err(CtlError::Usage("--batch-size must be at least 1".into()));
    }
    let age: Duration = a.older_than.into();
    let now = chrono::Utc::now().timestamp_millis();
    let cutoff = now - i64::try_from(age.as_millis()).unwrap_or(i64::MAX).min(now);
    let p = pool(database_url).await?;
    let mut log = format!(
        "Pruning candles opening before {}{}\n",
        klinebus_verify::datetime(cutoff),
        if a.dry_run { " (dry run)" } else { "" }
    );
    let counts = prune(&p, cutoff, a.batch_size, a.dry_run, &mut log).await?;
    let total: i64 = counts.iter().map(|c| c.2).sum();
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    let _ = writeln!(
        log,
        "Total: {verb} {total} candles in {} series",
        counts.len()
    );
    Ok(Outcome {
        output: log,
        code: 0,
    })
}
