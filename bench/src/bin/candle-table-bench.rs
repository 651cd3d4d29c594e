//! `candle-table-bench [--rows N] [--days D] [--migrate]`: `ohlcv_candles` at N rows (default
//! 100 M) in two throwaway databases, today's single table (migrations up to 0006) and the
//! partitioned layout (all migrations), filled by COPY with the same generated candles, then
//! the same operations on both, timed:
//!
//! - fill (COPY in backfill-like order: day by day, each series' day of candles together), then
//!   VACUUM ANALYZE; table and index sizes;
//! - the sink's real write path (`kline_pg_sink::upsert::write_batch`): batches of candles of every
//!   symbol, half new (after the data's end), half newer versions of stored ones, through the
//!   UNNEST upsert and through COPY + staging;
//! - `klinebus_verify::verify` of one complete 1m series over 365 days, and of one with three holes
//!   (the gap search runs then);
//! - `klinectl prune` of the oldest month (batched DELETE on the single table, partition drops on
//!   the partitioned one);
//! - with `--migrate`: migration 0007 of the single table (what an existing installation's
//!   upgrade costs at that size).
//!
//! Data: the symbols N allows over `--days` (default 366) of 1m, 5m, 15m, 1h and 1d candles ending
//! at today's 00:00 UTC (1m is 78 % of the rows). 100 M rows take ~15-20 GB per database: check
//! the free disk first. Both databases are dropped at the end (a killed run leaves databases
//! named `kb_bench_candles_*`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use kline_pg_sink::dedup::winners;
use kline_pg_sink::upsert::write_batch;
use klinebus_schemas::{Interval, KlineEvent, Source, Symbol, Venue};
use klinebus_testkit::{admin_url, TestDb};
use klinebus_verify::{verify, Status, VerifyRequest};
use sqlx::PgPool;

/// The generated timeframes and their period (minutes).
const TIMEFRAMES: [(Interval, i64); 5] = [
    (Interval::M1, 1),
    (Interval::M5, 5),
    (Interval::M15, 15),
    (Interval::H1, 60),
    (Interval::D1, 1440),
];
const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

/// `ohlcv_candles` at N rows, single table vs partitioned.
#[derive(Debug, Parser)]
#[command(name = "candle-table-bench")]
struct Args {
    /// Rows per database (rounded to whole symbols).
    #[arg(long, default_value_t = 100_000_000)]
    rows: u64,
    /// Days of history per series (verify checks the last 365).
    #[arg(long, default_value_t = 366)]
    days: i64,
    /// Batches per upsert figure.
    #[arg(long, default_value_t = 40)]
    batches: usize,
    /// Candles per batch of the UNNEST upsert (the sink's live-sized flushes).
    #[arg(long, default_value_t = 200)]
    unnest_batch: usize,
    /// Candles per batch of COPY + staging (a large flush).
    #[arg(long, default_value_t = 2000)]
    copy_batch: usize,
    /// Also time migration 0007 of the single table at the end.
    #[arg(long)]
    migrate: bool,
    /// Keep the databases (for EXPLAIN; the partitioned one only without --migrate); drop them
    /// by hand afterwards.
    #[arg(long)]
    keep: bool,
}

/// The generated data.
struct Plan {
    symbols: usize,
    /// First open time (00:00 UTC).
    start: i64,
    /// End (exclusive, 00:00 UTC today).
    end: i64,
}

impl Plan {
    /// Days verify checks: 365, or all but the first day of shorter data.
    fn verify_days(&self) -> u32 {
        ((self.end - self.start) / DAY - 1).clamp(1, 365) as u32
    }

    fn rows(&self) -> u64 {
        let minutes = (self.end - self.start) / MINUTE;
        let per_symbol: i64 = TIMEFRAMES.iter().map(|(_, p)| minutes / p).sum();
        per_symbol as u64 * self.symbols as u64
    }
}

fn symbol(i: usize) -> String {
    format!("S{i:03}USDT")
}

/// splitmix64: the candle's "market data", deterministic per key.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `n / 10^8` with eight decimals, as the exchange writes numbers.
fn push_fixed8(buf: &mut Vec<u8>, n: u64) {
    use std::io::Write as _;
    let _ = write!(buf, "{}.{:08}", n / 100_000_000, n % 100_000_000);
}

fn push_int(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Prices (cents, two decimals like most USDT pairs) and volumes of one candle.
struct Values {
    open: u64,
    high: u64,
    low: u64,
    close: u64,
    volume: u64,
    quote: u64,
    taker: u64,
    taker_quote: u64,
    trades: u64,
}

fn values(sym: usize, tf: usize, open_time: i64) -> Values {
    let h = mix(((sym as u64) << 44) ^ ((tf as u64) << 40) ^ (open_time / MINUTE) as u64);
    // A per-symbol price level from 0.5 to 50 000, moving slowly with time.
    let level = 50 + mix(sym as u64) % 5_000_000;
    let drift = ((open_time / DAY) as u64 % 200) * level / 2000;
    // Fixed8 units, rounded to cents as most USDT pairs quote.
    let cents = |x: u64| x / 1_000_000 * 1_000_000;
    let base = (level + drift) * 1_000_000;
    let spread = base / 200 + 1_000_000;
    let (a, b) = (h % spread, (h >> 20) % spread);
    let low = cents(base - spread / 2);
    let open = cents(low + a.min(b));
    let close = cents(low + a.max(b));
    let high = close + cents((h >> 40) % (spread / 4 + 1));
    let volume = (h >> 8) % 100_000_000_000;
    Values {
        open,
        high,
        low,
        close,
        volume,
        quote: volume / 100_000_000 * (base / 100_000_000 + 1) * 100_000_000
            + (h >> 3) % 100_000_000,
        taker: volume / 2,
        taker_quote: volume / 2 / 100_000_000 * (base / 100_000_000 + 1) * 100_000_000,
        trades: (h >> 33) % 5000 + 1,
    }
}

/// One COPY text row (the sink's columns).
fn copy_row(buf: &mut Vec<u8>, sym: &str, sym_i: usize, tf_i: usize, open_time: i64) {
    let (interval, period) = TIMEFRAMES[tf_i];
    let v = values(sym_i, tf_i, open_time);
    buf.extend_from_slice(sym.as_bytes());
    buf.push(b'\t');
    buf.extend_from_slice(interval.as_str().as_bytes());
    buf.push(b'\t');
    push_int(buf, open_time as u64);
    for n in [
        v.open,
        v.high,
        v.low,
        v.close,
        v.volume,
        v.quote,
        v.taker,
        v.taker_quote,
    ] {
        buf.push(b'\t');
        push_fixed8(buf, n);
    }
    buf.push(b'\t');
    push_int(buf, v.trades);
    buf.push(b'\t');
    let close_time = open_time + period * MINUTE - 1;
    push_int(buf, close_time as u64);
    buf.extend_from_slice(b"\tt\t");
    push_int(buf, (close_time + 1) as u64);
    buf.extend_from_slice(b"\tbackfill\n");
}

/// The same candle as an event, for the sink's write path.
fn event(
    sym_i: usize,
    tf_i: usize,
    open_time: i64,
    event_delay: i64,
) -> anyhow::Result<KlineEvent> {
    let (interval, period) = TIMEFRAMES[tf_i];
    let v = values(sym_i, tf_i, open_time);
    let fixed = |n: u64| {
        let mut b = Vec::new();
        push_fixed8(&mut b, n);
        String::from_utf8(b).unwrap_or_default()
    };
    let close_time = open_time + period * MINUTE - 1;
    Ok(KlineEvent {
        venue: Venue::binance(),
        symbol: symbol(sym_i).parse::<Symbol>()?,
        interval,
        open_time,
        close_time,
        open: fixed(v.open),
        high: fixed(v.high),
        low: fixed(v.low),
        close: fixed(v.close),
        volume: fixed(v.volume),
        quote_volume: fixed(v.quote),
        taker_buy_base: fixed(v.taker),
        taker_buy_quote: fixed(v.taker_quote),
        trades: v.trades,
        closed: true,
        event_time: close_time + 1 + event_delay,
        source: Source::Ws,
        received_at: close_time + 1 + event_delay,
    })
}

const COPY: &str = r#"COPY ohlcv_candles (symbol, timeframe, "timestamp", open, high, low, close,
    volume, quote_volume, taker_buy_base, taker_buy_quote, trades, close_time, is_closed,
    event_time, source) FROM STDIN"#;

/// Fills the table: day by day, every symbol's candles of each timeframe of that day together
/// (as a backfill writes history: pages of one series).
async fn fill(pool: &PgPool, plan: &Plan, label: &str) -> anyhow::Result<Duration> {
    let names: Vec<String> = (0..plan.symbols).map(symbol).collect();
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut copy = conn.copy_in_raw(COPY).await?;
    let mut buf = Vec::with_capacity(1 << 20);
    let days = (plan.end - plan.start) / DAY;
    for d in 0..days {
        let day0 = plan.start + d * DAY;
        for (s, name) in names.iter().enumerate() {
            for (t, (_, period)) in TIMEFRAMES.iter().enumerate() {
                let mut open = day0;
                while open < day0 + DAY {
                    copy_row(&mut buf, name, s, t, open);
                    if buf.len() >= 1 << 20 {
                        copy.send(buf.as_slice()).await?;
                        buf.clear();
                    }
                    open += period * MINUTE;
                }
            }
        }
        if (d + 1) % (days / 10).max(1) == 0 {
            eprintln!(
                "  {label}: day {}/{days}, {:.0} s",
                d + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    if !buf.is_empty() {
        copy.send(buf.as_slice()).await?;
    }
    copy.finish().await?;
    Ok(started.elapsed())
}

/// Heap (with TOAST, FSM, VM) and index bytes over every leaf table.
async fn sizes(pool: &PgPool) -> anyhow::Result<(i64, i64, i64)> {
    Ok(sqlx::query_as(
        r#"SELECT coalesce(sum(pg_table_size(relid)), 0)::int8,
                  coalesce(sum(pg_indexes_size(relid)), 0)::int8,
                  count(*)
           FROM (SELECT relid FROM pg_partition_tree('ohlcv_candles') WHERE isleaf
                 UNION ALL
                 SELECT oid::regclass FROM pg_class WHERE oid = 'ohlcv_candles'::regclass AND relkind <> 'p') t"#,
    )
    .fetch_one(pool)
    .await?)
}

fn gib(b: i64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Upserts `batches` batches of `size` 1m candles through the sink's write path, half of each
/// new (after the data's end), half newer versions of stored candles, every symbol in turn;
/// `first` numbers the first batch (so that each call writes other keys). Candles per second.
async fn upserts(
    pool: &PgPool,
    plan: &Plan,
    (batches, size): (usize, usize),
    first: usize,
    copy_min_rows: usize,
) -> anyhow::Result<f64> {
    let half = (size / 2).max(1);
    let mut all = Vec::with_capacity(batches);
    for k in first..first + batches {
        let mut batch = Vec::with_capacity(2 * half);
        for j in 0..half {
            let i = k * half + j;
            let (s, m) = (i % plan.symbols, (i / plan.symbols) as i64);
            batch.push(event(s, 0, plan.end + m * MINUTE, 0)?);
            batch.push(event(s, 0, plan.end - (m + 1) * MINUTE, 1)?);
        }
        all.push(batch);
    }
    let mut rows = 0;
    let started = Instant::now();
    for batch in &all {
        let refs = winners(batch.iter());
        let w = write_batch(pool, &refs, &[], copy_min_rows).await?;
        if w.changed_count() != refs.len() {
            bail!("{} of {} candles changed", w.changed_count(), refs.len());
        }
        rows += refs.len();
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Verifies one 1m series over [`Plan::verify_days`]: the first time and the median of 5 more (ms).
async fn time_verify(
    pool: &PgPool,
    plan: &Plan,
    sym: usize,
    want: Status,
) -> anyhow::Result<(f64, f64)> {
    let req = VerifyRequest {
        symbols: vec![symbol(sym).parse()?],
        intervals: vec![Interval::M1],
        span: klinebus_verify::Span::Days(Some(plan.verify_days())),
        now_ms: plan.end,
    };
    let mut ms = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        let report = verify(pool, &req).await;
        ms.push(started.elapsed().as_secs_f64() * 1e3);
        if report.overall_status != want {
            bail!(
                "verify of {} said {:?}, expected {want:?}: {}",
                symbol(sym),
                report.overall_status,
                report.render_text()
            );
        }
    }
    let first = ms[0];
    let mut rest = ms.split_off(1);
    rest.sort_by(f64::total_cmp);
    Ok((first, rest[rest.len() / 2]))
}

/// What `EXPLAIN ANALYZE` says of `sql`: tables read, how, and the top node's buffers.
async fn explain(pool: &PgPool, sql: &str) -> anyhow::Result<String> {
    let lines: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) {sql}"
    )))
    .fetch_all(pool)
    .await?;
    let mut tables = std::collections::BTreeSet::new();
    let mut kinds = std::collections::BTreeSet::new();
    for l in &lines {
        let l = l.trim_start().trim_start_matches("->").trim();
        if let Some((kind, rest)) = l.split_once(" on ") {
            // "Index Scan using <index> on <table>".
            let kind = kind.split_once(" using ").map_or(kind, |k| k.0);
            if kind.ends_with("Scan") && !kind.contains("Bitmap Index") && kind != "Subquery Scan" {
                kinds.insert(kind.to_owned());
                tables.insert(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    }
    let buffers = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("Buffers: "))
        .unwrap_or("-");
    Ok(format!(
        "{} table(s) by {}; {buffers}",
        tables.len(),
        kinds.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// A database at the schema of `version` (all migrations with `None`).
async fn database(version: Option<i64>) -> anyhow::Result<TestDb> {
    TestDb::try_named_up_to(admin_url(), "kb_bench_candles", version)
        .await
        .context("creating a benchmark database")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.days < 63 {
        bail!("--days must be at least 63 (prune takes the oldest month)");
    }
    let end = Interval::D1.align(chrono::Utc::now().timestamp_millis());
    let start = end - args.days * DAY;
    let per_symbol = Plan {
        symbols: 1,
        start,
        end,
    }
    .rows();
    let plan = Plan {
        symbols: (args.rows / per_symbol).max(1) as usize,
        start,
        end,
    };
    println!(
        "candle-table-bench: {} rows per database = {} symbols x (1m 5m 15m 1h 1d) x {} days, {} .. {}",
        plan.rows(),
        plan.symbols,
        args.days,
        klinebus_verify::datetime(start),
        klinebus_verify::datetime(end)
    );
    let single = database(Some(6)).await?;
    let parts = database(None).await?;
    eprintln!(
        "databases: {} (single table), {} (partitioned)",
        single.name, parts.name
    );
    let parts_pool = parts.pool.clone();
    let mut parts = Some(parts);
    // The partitions of every month of the data and the two after it, as the sink makes them.
    for (interval, _) in TIMEFRAMES {
        sqlx::query("SELECT klinebus_ensure_candle_partitions($1, $2, $3)")
            .bind(interval.as_str())
            .bind(start)
            .bind(end + 62 * DAY)
            .execute(&parts_pool)
            .await?;
    }
    let dbs = [("single table", &single.pool), ("partitioned", &parts_pool)];
    let mut out = String::new();
    let row = |out: &mut String, what: &str, a: String, b: String| {
        let _ = writeln!(out, "{what:<36} {a:<40} {b}");
    };
    row(&mut out, "", "single table".into(), "partitioned".into());

    let mut fills = Vec::new();
    let mut vacuums = Vec::new();
    for (label, pool) in dbs {
        let took = fill(pool, &plan, label).await?;
        let started = Instant::now();
        sqlx::raw_sql("VACUUM (ANALYZE) ohlcv_candles")
            .execute(pool)
            .await?;
        vacuums.push(started.elapsed());
        fills.push(took);
    }
    let rate = |d: &Duration| {
        format!(
            "{:.1} s ({:.0} rows/s)",
            d.as_secs_f64(),
            plan.rows() as f64 / d.as_secs_f64()
        )
    };
    row(&mut out, "fill (COPY)", rate(&fills[0]), rate(&fills[1]));
    row(
        &mut out,
        "VACUUM ANALYZE after the fill",
        format!("{:.1} s", vacuums[0].as_secs_f64()),
        format!("{:.1} s", vacuums[1].as_secs_f64()),
    );
    let mut size = Vec::new();
    for (_, pool) in dbs {
        size.push(sizes(pool).await?);
    }
    let show = |s: &(i64, i64, i64)| format!("{} + {} ({} tables)", gib(s.0), gib(s.1), s.2);
    row(&mut out, "table + indexes", show(&size[0]), show(&size[1]));
    println!("{out}");

    // Verify: S000 complete; S001 with three holes, so the gap search runs.
    for (_, pool) in dbs.iter().filter(|_| plan.symbols > 1) {
        for hole in [40 * DAY, 200 * DAY + 7 * MINUTE, 300 * DAY + 3 * MINUTE] {
            sqlx::query(r#"DELETE FROM ohlcv_candles WHERE symbol = $1 AND timeframe = '1m' AND "timestamp" = $2"#)
                .bind(symbol(1))
                .bind(end - hole)
                .execute(*pool)
                .await?;
        }
    }
    let mut ver = Vec::new();
    let mut gaps = Vec::new();
    for (_, pool) in dbs {
        ver.push(time_verify(pool, &plan, 0, Status::Ok).await?);
        if plan.symbols > 1 {
            gaps.push(time_verify(pool, &plan, 1, Status::Incomplete).await?);
        }
    }
    let ms = |v: &(f64, f64)| format!("{:.1} ms (first {:.1} ms)", v.1, v.0);
    let mut out = String::new();
    let label = format!("verify 1m x {} d, complete", plan.verify_days());
    row(&mut out, &label, ms(&ver[0]), ms(&ver[1]));
    if gaps.len() == 2 {
        row(
            &mut out,
            "verify + gap search (3 holes)",
            ms(&gaps[0]),
            ms(&gaps[1]),
        );
    }

    let (lo, hi) = (end - i64::from(plan.verify_days()) * DAY, end);
    let count_sql = format!(
        r#"SELECT count(*), min("timestamp"), max("timestamp") FROM ohlcv_candles
           WHERE symbol = 'S000USDT' AND timeframe = '1m' AND is_closed
             AND "timestamp" >= {lo} AND "timestamp" < {hi}"#
    );
    let gap_sql = format!(
        r#"SELECT prev + 60000, ts - 1 FROM (
             SELECT "timestamp" AS ts, lag("timestamp") OVER (ORDER BY "timestamp") AS prev
             FROM ohlcv_candles
             WHERE symbol = 'S001USDT' AND timeframe = '1m' AND is_closed
               AND "timestamp" >= {lo} AND "timestamp" < {hi}) s
           WHERE ts - prev > 60000 ORDER BY ts LIMIT 1000"#
    );
    let mut plans = String::new();
    for (label, pool) in dbs {
        let _ = writeln!(
            plans,
            "  {label}, verify's count: {}",
            explain(pool, &count_sql).await?
        );
        let _ = writeln!(
            plans,
            "  {label}, gap search:     {}",
            explain(pool, &gap_sql).await?
        );
    }

    // The sink's write path: UNNEST (live-sized flushes), then COPY + staging.
    let mut unnest = Vec::new();
    let mut staged = Vec::new();
    for (_, pool) in dbs {
        // Keys of the second call start after the first call's.
        let after = args.batches * args.unnest_batch / args.copy_batch.max(2) + 1;
        unnest.push(upserts(pool, &plan, (args.batches, args.unnest_batch), 0, 0).await?);
        staged.push(upserts(pool, &plan, (args.batches, args.copy_batch), after, 1).await?);
    }
    let cps = |c: f64| format!("{c:.0} candles/s");
    let label = format!("upsert UNNEST, {} a batch", args.unnest_batch);
    row(&mut out, &label, cps(unnest[0]), cps(unnest[1]));
    let label = format!("upsert COPY + staging, {} a batch", args.copy_batch);
    row(&mut out, &label, cps(staged[0]), cps(staged[1]));

    // Prune the oldest month: everything before the 1st of the second calendar month of data.
    let second_month = {
        let d = chrono::DateTime::from_timestamp_millis(start).context("start time")?;
        use chrono::Datelike;
        let (y, m) = if d.month() == 12 {
            (d.year() + 1, 2)
        } else if d.month() == 11 {
            (d.year() + 1, 1)
        } else {
            (d.year(), d.month() + 2)
        };
        chrono::NaiveDate::from_ymd_opt(y, m, 1)
            .context("month")?
            .and_hms_opt(0, 0, 0)
            .context("midnight")?
            .and_utc()
            .timestamp_millis()
    };
    let mut prunes = Vec::new();
    for (_, pool) in dbs {
        let mut log = String::new();
        let started = Instant::now();
        let pruned = klinectl::prune::prune(pool, second_month, 10_000, false, &mut log).await?;
        prunes.push((started.elapsed(), pruned.total(), pruned.partitions.len()));
    }
    let pr = |p: &(Duration, i64, usize)| {
        format!(
            "{:.2} s ({} candles{})",
            p.0.as_secs_f64(),
            p.1,
            if p.2 > 0 {
                format!(", {} partitions dropped", p.2)
            } else {
                String::new()
            }
        )
    };
    let label = format!("prune before {}", klinebus_verify::datetime(second_month));
    row(&mut out, &label, pr(&prunes[0]), pr(&prunes[1]));
    println!("{out}");
    println!("plans (EXPLAIN ANALYZE after the timed runs):\n{plans}");

    if args.migrate {
        // The copy needs the table's size again: free the other database's disk first.
        if let Some(db) = parts.take() {
            eprintln!("dropping {} before the migration", db.name);
        }
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles")
            .fetch_one(&single.pool)
            .await?;
        let started = Instant::now();
        klinebus_migrations::run(&single.pool).await?;
        let took = started.elapsed();
        let after = sizes(&single.pool).await?;
        println!(
            "migration 0007 of the single table (after its prune): {:.1} s for {rows} rows ({:.0} rows/s); after it {}",
            took.as_secs_f64(),
            rows as f64 / took.as_secs_f64(),
            show(&after)
        );
    }
    if args.keep {
        eprintln!("kept: {}", single.name);
        std::mem::forget(single);
        if let Some(db) = parts {
            eprintln!("kept: {}", db.name);
            std::mem::forget(db);
        }
    }
    Ok(())
}
