//! `klinectl prune`: remove candles opening before a cutoff. On the partitioned table (migration
//! 0007) a monthly partition whose whole range is older is dropped at once; what remains older
//! (the partition holding the cutoff, the default partitions, the timeframes kept in one table)
//! is deleted in bounded batches, one series and one partition at a time, each batch a
//! primary-key range delete (row locks on the deleted rows only, never a table lock).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool};

use crate::cli::PruneArgs;
use crate::{CtlError, Outcome};

/// Every leaf table of `ohlcv_candles` (the table itself when it is not partitioned), as SQL
/// names it, with its range bound (`FOR VALUES FROM (…) TO (…)`) when it is a partition by
/// "timestamp".
const LEAVES: &str = r#"
SELECT t.relid::regclass::text,
       CASE WHEN pg_get_partkeydef(t.parentrelid) = 'RANGE ("timestamp")'
            THEN pg_get_expr(c.relpartbound, c.oid) END
FROM pg_partition_tree('ohlcv_candles') t
JOIN pg_class c ON c.oid = t.relid
WHERE t.isleaf
UNION ALL
SELECT oid::regclass::text, NULL FROM pg_class WHERE oid = 'ohlcv_candles'::regclass AND relkind <> 'p'
ORDER BY 1"#;

/// The tables directly under `ohlcv_candles` (one a timeframe, partitioned or not), else the
/// table itself.
const CHILDREN: &str = r#"
SELECT t.relid::regclass::text
FROM pg_partition_tree('ohlcv_candles') t
WHERE t.level = 1
UNION ALL
SELECT oid::regclass::text FROM pg_class WHERE oid = 'ohlcv_candles'::regclass AND relkind <> 'p'
ORDER BY 1"#;

/// Every (symbol, timeframe) present in `table` (a name as SQL writes it), found with a loose
/// index scan over the primary key instead of a sequential `DISTINCT`.
async fn series_in(pool: &PgPool, table: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
    let sql = format!(
        r#"WITH RECURSIVE s AS (
             (SELECT symbol, timeframe FROM {table} ORDER BY symbol, timeframe LIMIT 1)
             UNION ALL
             SELECT n.symbol, n.timeframe FROM s, LATERAL (
               SELECT symbol, timeframe FROM {table}
               WHERE (symbol, timeframe) > (s.symbol, s.timeframe)
               ORDER BY symbol, timeframe LIMIT 1) n
           )
           SELECT symbol::text, timeframe::text FROM s"#
    );
    sqlx::query_as(AssertSqlSafe(sql)).fetch_all(pool).await
}

/// Every (symbol, timeframe) present, sorted. The loose index scan runs per timeframe table: over
/// the whole partitioned table each step would probe every partition's index (a merge append
/// of all of them), per timeframe only that timeframe's months.
pub async fn series(pool: &PgPool) -> Result<Vec<(String, String)>, sqlx::Error> {
    let tables: Vec<String> = sqlx::query_scalar(CHILDREN).fetch_all(pool).await?;
    let mut out = Vec::new();
    for t in &tables {
        out.extend(series_in(pool, t).await?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The epoch-ms range of a partition bound `FOR VALUES FROM ('a') TO ('b')`; `None` for an end
/// that is MINVALUE / MAXVALUE (or anything else).
fn range_of(bound: &str) -> Option<(Option<i64>, Option<i64>)> {
    let inner = bound.strip_prefix("FOR VALUES FROM (")?.strip_suffix(')')?;
    let (from, to) = inner.split_once(") TO (")?;
    let num = |s: &str| s.trim_matches('\'').parse::<i64>().ok();
    Some((num(from), num(to)))
}

/// What a prune did (or, with `dry_run`, would do).
#[derive(Debug, Default)]
pub struct Pruned {
    /// Partitions dropped whole, with the candles they held.
    pub partitions: Vec<(String, i64)>,
    /// Every series present, with the candles deleted row by row.
    pub series: Vec<(String, String, i64)>,
}

impl Pruned {
    /// Candles removed, both ways.
    pub fn total(&self) -> i64 {
        self.partitions.iter().map(|p| p.1).sum::<i64>()
            + self.series.iter().map(|s| s.2).sum::<i64>()
    }
}

/// Counts `table`'s rows, then drops it. The count is taken just before the drop (a month
/// entirely older than the cutoff is not written to any more, bar a backfill of that old history
/// at the same moment).
async fn drop_partition(pool: &PgPool, table: &str) -> Result<i64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await?;
    let mut tx = pool.begin().await?;
    // DROP takes an ACCESS EXCLUSIVE lock on the timeframe's table for an instant; queued
    // behind a long query it would hold up every reader and writer queued behind it.
    sqlx::query("SET LOCAL lock_timeout = '10s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Deletes (or with `dry_run` counts) the rows of one series in `table` opening before
/// `cutoff_ms`, `batch` at a time.
async fn delete_series(
    pool: &PgPool,
    table: &str,
    (symbol, tf): (&str, &str),
    cutoff_ms: i64,
    batch: i64,
    dry_run: bool,
    log: &mut String,
) -> Result<i64, sqlx::Error> {
    if dry_run {
        return sqlx::query_scalar(AssertSqlSafe(format!(
            r#"SELECT count(*) FROM {table}
               WHERE symbol = $1 AND timeframe = $2 AND "timestamp" < $3"#
        )))
        .bind(symbol)
        .bind(tf)
        .bind(cutoff_ms)
        .fetch_one(pool)
        .await;
    }
    let sql = format!(
        r#"DELETE FROM {table} WHERE symbol = $1 AND timeframe = $2 AND "timestamp" < $3
             AND "timestamp" IN (
               SELECT "timestamp" FROM {table}
               WHERE symbol = $1 AND timeframe = $2 AND "timestamp" < $3
               ORDER BY "timestamp" LIMIT $4)"#
    );
    let mut total = 0;
    loop {
        let done = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(symbol)
            .bind(tf)
            .bind(cutoff_ms)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected() as i64;
        total += done;
        if done > 0 {
            let _ = writeln!(log, "  {symbol} {tf}: deleted {total} so far in {table}");
        }
        if done < batch {
            return Ok(total);
        }
    }
}

/// Removes (or with `dry_run` counts) candles opening before `cutoff_ms`: partitions entirely
/// older are dropped, the older rows of the others deleted per series; writes progress lines to
/// `log`.
pub async fn prune(
    pool: &PgPool,
    cutoff_ms: i64,
    batch: i64,
    dry_run: bool,
    log: &mut String,
) -> Result<Pruned, sqlx::Error> {
    let all_series = series(pool).await?;
    let leaves: Vec<(String, Option<String>)> = sqlx::query_as(LEAVES).fetch_all(pool).await?;
    let mut out = Pruned::default();
    let mut deleted: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (table, bound) in leaves {
        let range = bound.as_deref().and_then(range_of);
        match range {
            // Nothing in it opens before the cutoff.
            Some((Some(from), _)) if from >= cutoff_ms => continue,
            Some((_, Some(to))) if to <= cutoff_ms => {
                let dropped = if dry_run {
                    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                        .fetch_one(pool)
                        .await
                } else {
                    drop_partition(pool, &table).await
                };
                match dropped {
                    Ok(n) => {
                        let verb = if dry_run { "would drop" } else { "dropped" };
                        let _ = writeln!(log, "{verb} partition {table} ({n} candles)");
                        out.partitions.push((table, n));
                        continue;
                    }
                    // Only the tables' owner may drop them: delete row by row instead.
                    Err(e)
                        if e.as_database_error()
                            .and_then(|d| d.code())
                            .is_some_and(|c| c == "42501") =>
                    {
                        let _ = writeln!(
                            log,
                            "cannot drop partition {table} ({e}); deleting its rows instead"
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => {}
        }
        for (symbol, tf) in series_in(pool, &table).await? {
            let n =
                delete_series(pool, &table, (&symbol, &tf), cutoff_ms, batch, dry_run, log).await?;
            *deleted.entry((symbol, tf)).or_default() += n;
        }
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    for (symbol, tf) in all_series {
        let n = deleted
            .get(&(symbol.clone(), tf.clone()))
            .copied()
            .unwrap_or(0);
        if n > 0 {
            let _ = writeln!(log, "{symbol} {tf}: {verb} {n} candles");
        }
        out.series.push((symbol, tf, n));
    }
    Ok(out)
}

/// Runs `prune`.
pub async fn run(db: &crate::Database, a: &PruneArgs) -> Result<Outcome, CtlError> {
    if a.batch_size < 1 {
        return Err(CtlError::Usage("--batch-size must be at least 1".into()));
    }
    let age: Duration = a.older_than.into();
    let now = chrono::Utc::now().timestamp_millis();
    let cutoff = now - i64::try_from(age.as_millis()).unwrap_or(i64::MAX).min(now);
    let p = db.pool().await?;
    let mut log = format!(
        "Pruning candles opening before {}{}\n",
        klinebus_verify::datetime(cutoff),
        if a.dry_run { " (dry run)" } else { "" }
    );
    let pruned = prune(&p, cutoff, a.batch_size, a.dry_run, &mut log).await?;
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    let _ = write!(
        log,
        "Total: {verb} {} candles in {} series",
        pruned.total(),
        pruned.series.len()
    );
    if !pruned.partitions.is_empty() {
        let in_partitions: i64 = pruned.partitions.iter().map(|p| p.1).sum();
        let _ = write!(
            log,
            " ({in_partitions} of them in {} {} partitions)",
            pruned.partitions.len(),
            if a.dry_run { "droppable" } else { "dropped" }
        );
    }
    log.push('\n');
    Ok(Outcome {
        output: log,
        code: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_bounds_parse() {
        assert_eq!(
            range_of("FOR VALUES FROM ('1735689600000') TO ('1738368000000')"),
            Some((Some(1_735_689_600_000), Some(1_738_368_000_000)))
        );
        assert_eq!(
            range_of("FOR VALUES FROM (MINVALUE) TO ('5')"),
            Some((None, Some(5)))
        );
        assert_eq!(range_of("DEFAULT"), None);
        assert_eq!(range_of("FOR VALUES IN ('1h')"), None);
    }
}
