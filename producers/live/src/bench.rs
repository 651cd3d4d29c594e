//! The benchmark behind `live-bench` (feature `bench`): the real `kline-live` binary (a child
//! process, so its CPU and memory are its own) streams N symbols × timeframes from an
//! in-process binance-sim at real speed into a private nats-server. A core-NATS subscriber
//! measures, per WebSocket event, the time from the producer receiving the frame
//! (`received_at`) to the event arriving on the bus; the child's CPU time and RSS are read from
//! `/proc`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt;
use klinebus_binance::limiter::wall_now_ms;
use klinebus_schemas::{bus, codec, KlineEvent};

/// Measures kline-live's publish latency, CPU and memory for many streams.
#[derive(Debug, Clone, Parser)]
#[command(name = "live-bench")]
pub struct BenchArgs {
    /// Number of symbols (each streamed for every timeframe).
    #[arg(long, default_value_t = 100)]
    pub symbols: usize,
    /// Timeframes.
    #[arg(long, default_value = "1m,1h")]
    pub timeframes: String,
    /// Measured run time (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Warm-up before measuring.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// The kline-live binary (default: next to this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// (user+system CPU seconds, RSS now in MiB, peak RSS in MiB) of `pid`.
fn proc_usage(pid: u32) -> anyhow::Result<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux reports in USER_HZ, 100 on every mainstream configuration.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    Ok((cpu, kb("VmRSS:"), kb("VmHWM:")))
}

/// Runs the benchmark and prints the report.
pub async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let symbols: Vec<String> = (0..args.symbols)
        .map(|i| format!("BENCH{i:03}USDT"))
        .collect();
    let streams = symbols.len() * args.timeframes.split(',').count();
    let sim_args = [
        "binance-sim",
        "--no-limits",
        "--symbols",
        &symbols.join(","),
    ];
    let sim = binance_sim::spawn(binance_sim::Config::parse_from(sim_args)).await?;
    let nats = klinebus_testkit::NatsServer::start();
    let client = bus::connect(&bus::BusOptions::new(nats.url(), "live-bench")).await?;
    let binary = match args.binary.clone() {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .context("no directory for the current executable")?
            .join("kline-live"),
    };
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut sub = client.subscribe("klines.ws.>").await?;
    let mut child = tokio::process::Command::new(&binary)
        .env("TRADING_PAIRS", symbols.join(","))
        .env("TIMEFRAMES", &args.timeframes)
        .env("BINANCE_WS_URL", sim.ws_url())
        .env("BINANCE_REST_URL", sim.base_url())
        .env("NATS_URL", nats.url())
        .env("METRICS_ADDR", metrics_addr.to_string())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().context("kline-live exited at once")?;
    println!(
        "live-bench: {streams} streams ({} symbols × {}), warm-up {:?}, measuring {:?}",
        symbols.len(),
        args.timeframes,
        args.warmup,
        args.duration
    );
    tokio::time::sleep(args.warmup).await;
    while tokio::time::timeout(Duration::from_millis(1), sub.next())
        .await
        .is_ok()
    {}
    let (cpu0, _, _) = proc_usage(pid)?;
    let started = Instant::now();
    let end = started + args.duration;
    let mut latencies = Vec::new();
    let mut decode_errors = 0u64;
    while let Ok(Some(msg)) = tokio::time::timeout_at(end.into(), sub.next()).await {
        match codec::decode::<KlineEvent>(&msg.payload) {
            Ok(ev) => latencies.push((wall_now_ms() - ev.received_at) as f64),
            Err(_) => decode_errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu1, rss, peak) = proc_usage(pid)?;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    latencies.sort_by(f64::total_cmp);
    println!(
        "events: {} ({:.0}/s), decode errors: {decode_errors}",
        latencies.len(),
        latencies.len() as f64 / elapsed
    );
    println!(
        "frame received → on the bus (ms): p50 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "kline-live CPU: {:.1} % of one core; RSS {rss:.1} MiB (peak {peak:.1} MiB)",
        (cpu1 - cpu0) / elapsed * 100.0
    );
    match status {
        Ok(Ok(s)) => println!("exit after SIGTERM: {s}"),
        _ => println!("kline-live did not exit within 15 s of SIGTERM"),
    }
    Ok(())
}
