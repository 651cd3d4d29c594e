//! `scale-bench`: kline-live at fleet scale, end to end (build with `--release`, next to
//! `kline-live` and `kline-pg-sink`: `cargo build --release -p kline-live -p kline-pg-sink
//! -p klinebus-bench`).
//!
//! An in-process binance-sim at real speed with Binance's limits enforced serves N symbols
//! (default 1500) × every timeframe (16, 24 000 streams); `kline-live` (WebSocket) and
//! `kline-pg-sink` run as child processes on a private nats-server and a throwaway database.
//! It reports:
//! - the time from kline-live's start until every series has a row in `ohlcv_candles`;
//! - over the measured window, CPU (% of one core) of kline-live, kline-pg-sink, nats-server,
//!   PostgreSQL (every `postgres` process) and this process (the simulator), and the peak RSS
//!   of kline-live and kline-pg-sink;
//! - the REST weight the simulator counted per minute, its 429s and 418s, and WebSocket
//!   connection attempts;
//! - whether every 1m candle that closed during the window is stored, closed, for every
//!   symbol, value for value.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use klinebus_bench::harness::{pids_where, sibling, terminate, CpuTracker, Usage};
use klinebus_testkit::{NatsServer, TestDb};
use sqlx::PgPool;

/// Every Binance spot kline interval.
const ALL_TIMEFRAMES: &str = "1s,1m,3m,5m,15m,30m,1h,2h,4h,6h,8h,12h,1d,3d,1w,1M";

/// kline-live with thousands of streams through the whole pipeline: CPU, memory, time to live,
/// weight, and every closed 1m candle stored.
#[derive(Debug, Parser)]
#[command(name = "scale-bench")]
struct Args {
    /// Symbols, each streamed for every timeframe.
    #[arg(long, default_value_t = 1500)]
    symbols: usize,
    /// Timeframes.
    #[arg(long, default_value = ALL_TIMEFRAMES)]
    timeframes: String,
    /// Measured window, after every series is live.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Longest wait for every series to be live and its start-up repair done (24 000 series
    /// fetch their last closed candle over REST first: about 10 minutes at 4800 weight a minute;
    /// `--live-arg=--initial-candles=0` skips that).
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    live_timeout: Duration,
    /// Extra kline-live argument, e.g. `--live-arg=--ws-connect-budget=300`. Repeatable.
    #[arg(long = "live-arg", allow_hyphen_values = true)]
    live_args: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    klinebus_svc::init_tracing();
    let args = Args::parse();
    let symbols: Vec<String> = (0..args.symbols)
        .map(|i| format!("SCALE{i:04}USDT"))
        .collect();
    let tfs = args.timeframes.split(',').count();
    let series = (symbols.len() * tfs) as i64;
    let joined = symbols.join(",");
    let sim = binance_sim::spawn(binance_sim::Config::parse_from([
        "binance-sim",
        "--symbols",
        &joined,
    ]))
    .await?;
    let nats = NatsServer::try_start()?;
    let own = std::process::id();
    let nats_pids = pids_where(|comm, ppid, _| comm == "nats-server" && ppid == own);
    let db = TestDb::try_named(klinebus_testkit::admin_url(), "kb_scale").await?;

    let mut sink = tokio::process::Command::new(sibling("kline-pg-sink")?)
        .args(["--nats-url", &nats.url(), "--database-url", &db.url])
        .args(["--metrics-addr", "off", "--no-migrate"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting kline-pg-sink")?;
    let sink_pid = sink.id().context("kline-pg-sink exited at once")?;
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let started = Instant::now();
    let mut live = tokio::process::Command::new(sibling("kline-live")?)
        .args(["--symbols", &joined, "--timeframes", &args.timeframes])
        .args(["--ws-url", &sim.ws_url(), "--rest-url", &sim.base_url()])
        .args(["--nats-url", &nats.url()])
        .args(["--metrics-addr", &metrics_addr.to_string()])
        .args(&args.live_args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting kline-live")?;
    let live_pid = live.id().context("kline-live exited at once")?;
    println!(
        "scale-bench: {series} series ({} symbols × {tfs} timeframes), real speed, Binance's limits",
        symbols.len()
    );

    // Every series live: a row of its own in the table.
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT DISTINCT symbol, timeframe FROM ohlcv_candles) s",
        )
        .fetch_one(&db.pool)
        .await?;
        if n >= series {
            break;
        }
        if started.elapsed() > args.live_timeout {
            bail!(
                "only {n} of {series} series live after {:?}",
                args.live_timeout
            );
        }
        if let Some(s) = live.try_wait()? {
            bail!("kline-live exited: {s}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let to_live = started.elapsed();
    println!("every series live after {:.1} s", to_live.as_secs_f64());
    // Then the start-up repair (each series' last closed candle over REST, within the weight
    // budget) is over: the steady state is what is measured.
    loop {
        // Never set: nothing was ever pending (e.g. `--initial-candles 0`).
        if repair_pending(metrics_addr).await?.unwrap_or(0.0) == 0.0 {
            break;
        }
        if started.elapsed() > args.live_timeout {
            bail!("the start-up repair not done after {:?}", args.live_timeout);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "start-up repair of every series done after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let postgres = || pids_where(|comm, _, _| comm == "postgres");
    let (mut nats_cpu, mut pg_cpu) = (CpuTracker::default(), CpuTracker::default());
    nats_cpu.sample(&nats_pids, true);
    pg_cpu.sample(&postgres(), true);
    let (live0, sink0, own0) = (
        Usage::of(live_pid)?.cpu_secs,
        Usage::of(sink_pid)?.cpu_secs,
        Usage::own()?.cpu_secs,
    );
    let window_start = sim.clock().now_ms();
    let t = Instant::now();
    while t.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_secs(5)).await;
        pg_cpu.sample(&postgres(), false);
    }
    let secs = t.elapsed().as_secs_f64();
    let window_end = sim.clock().now_ms();
    nats_cpu.sample(&nats_pids, true);
    pg_cpu.sample(&postgres(), false);
    let (lu, su, ou) = (Usage::of(live_pid)?, Usage::of(sink_pid)?, Usage::own()?);
    let pct = |cpu: f64| cpu / secs * 100.0;
    println!("CPU over {secs:.0} s (% of one core):");
    println!(
        "  kline-live {:.1} %  (peak RSS {:.1} MiB)",
        pct(lu.cpu_secs - live0),
        lu.peak_rss_mib
    );
    println!(
        "  kline-pg-sink {:.1} %  (peak RSS {:.1} MiB)",
        pct(su.cpu_secs - sink0),
        su.peak_rss_mib
    );
    println!("  nats-server {:.1} %", pct(nats_cpu.seconds()));
    println!(
        "  PostgreSQL {:.1} % ({} processes)",
        pct(pg_cpu.seconds()),
        pg_cpu.processes()
    );
    println!(
        "  binance-sim + this program {:.1} %",
        pct(ou.cpu_secs - own0)
    );

    // The 1m candles that closed in the window, given time to land.
    let minute = 60_000;
    let (from, to) = (
        (window_start / minute + 1) * minute,
        (window_end / minute) * minute,
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (complete, missing, wrong) = check_1m(&db.pool, &sim, &symbols, from, to).await?;
    println!(
        "closed 1m candles of the window ({} minutes × {} symbols): {complete} stored exactly, \
         {missing} missing, {wrong} different from the exchange",
        (to - from) / minute,
        symbols.len()
    );

    let usage = sim.usage();
    if let Some(ip) = usage.ip("127.0.0.1") {
        let weights: Vec<u32> = ip.minutes.iter().map(|m| m.weight).collect();
        let limited: u32 = ip.minutes.iter().map(|m| m.rate_limited + m.banned).sum();
        println!(
            "REST weight per minute (limit {}): {weights:?}; 429/418: {limited}",
            usage.weight_limit
        );
        println!(
            "WebSocket connection attempts: {} (most in 5 minutes {}, refused by the limit {})",
            ip.ws_attempts, ip.ws_attempts_max_5min, ip.ws_refused_by_limit
        );
    }
    terminate(&mut live, "kline-live").await;
    terminate(&mut sink, "kline-pg-sink").await;
    if missing > 0 || wrong > 0 {
        bail!("the table lacks or differs in closed 1m candles");
    }
    Ok(())
}

/// kline-live's `klinebus_live_repair_pending_candles`, read from its /metrics.
async fn repair_pending(addr: std::net::SocketAddr) -> anyhow::Result<Option<f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut body = String::new();
    tcp.read_to_string(&mut body).await?;
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix("klinebus_live_repair_pending_candles "))
        .and_then(|v| v.trim().parse().ok()))
}

/// Closed 1m candles opening in `[from, to)`: (stored exactly, missing, different).
async fn check_1m(
    pool: &PgPool,
    sim: &binance_sim::SimHandle,
    symbols: &[String],
    from: i64,
    to: i64,
) -> anyhow::Result<(usize, usize, usize)> {
    let rows: Vec<(String, i64, String, String, i64)> = sqlx::query_as(
        r#"SELECT symbol, "timestamp", open::text, close::text, trades FROM ohlcv_candles
           WHERE timeframe = '1m' AND is_closed AND "timestamp" >= $1 AND "timestamp" < $2"#,
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let stored: std::collections::HashMap<(String, i64), (String, String, i64)> = rows
        .into_iter()
        .map(|(s, t, o, c, n)| ((s, t), (o, c, n)))
        .collect();
    let (mut ok, mut missing, mut wrong) = (0, 0, 0);
    let now = sim.clock().now_ms();
    for symbol in symbols {
        for k in sim.market().klines(symbol, "1m", from, to - 1, now)? {
            match stored.get(&(symbol.clone(), k.open_time)) {
                None => missing += 1,
                Some((o, c, n))
                    if *o == k.open
                        && *c == k.close
                        && u64::try_from(*n).ok() == Some(k.trades) =>
                {
                    ok += 1
                }
                Some(_) => wrong += 1,
            }
        }
    }
    Ok((ok, missing, wrong))
}
