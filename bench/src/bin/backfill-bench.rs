//! `backfill-bench` (build with `--release`): an in-process binance-sim and a private
//! nats-server, then `kline_backfill::run_backfill` as the binary would run it.
//!
//! - `throughput`: limits off, N 1m candles spread over a few symbols; prints candles/s from sim
//!   REST to acknowledged JetStream publishes.
//! - `limits`: the sim enforces 6000 weight/min; the backfill spends `--budget` for `--duration`;
//!   prints the server-reported weight per full minute against the budget, and the 429 count.
//!
//! `--nats cluster` publishes to a three-node JetStream cluster on loopback with the streams at
//! three replicas instead; `--nats both` measures a single server, then the cluster, in one run.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kline_backfill::{run_backfill, Plan, ProgressMode, RunOptions, Summary, Window};
use klinebus_binance::{RestClient, RestConfig, WeightLimiter};
use klinebus_schemas::streams::Retention;
use klinebus_schemas::{bus, Interval, Symbol};
use klinebus_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

// The allocator of the binary it measures.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SYMBOLS: [&str; 8] = [
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "LTCUSDT",
];

/// Which measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Candles/s with the sim's limits off.
    Throughput,
    /// Weight used per minute against the budget, with the sim's limits on.
    Limits,
}

/// Where the candles are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Nats {
    /// One nats-server, streams at one replica.
    Single,
    /// Three nodes on loopback, streams at three replicas.
    Cluster,
    /// Single, then cluster.
    Both,
}

/// Benchmark of kline-backfill against binance-sim and a private nats-server.
#[derive(Debug, Clone, Parser)]
#[command(name = "backfill-bench")]
struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Throughput)]
    mode: Mode,
    /// 1m candles to backfill in throughput mode (split evenly over the symbols).
    #[arg(long, default_value_t = 1_000_000)]
    candles: i64,
    /// Number of symbols (1-8).
    #[arg(long, default_value_t = 4)]
    symbols: usize,
    /// Series fetched at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Weight budget per minute in limits mode (the sim allows 6000).
    #[arg(long, default_value_t = 4800)]
    budget: u32,
    /// How long limits mode runs (e.g. 150s).
    #[arg(long, default_value = "150s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Publish acks in flight.
    #[arg(long, default_value_t = 20_000)]
    max_inflight: usize,
    /// The broker (throughput mode).
    #[arg(long, value_enum, default_value_t = Nats::Single)]
    nats: Nats,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    klinebus_svc::init_tracing();
    let args = BenchArgs::parse();
    let n = args.symbols.clamp(1, SYMBOLS.len());
    let names = SYMBOLS[..n].join(",");
    let limits = args.mode == Mode::Limits;
    let mut sim_args = vec!["binance-sim", "--symbols", &names];
    if !limits {
        sim_args.push("--no-limits");
    }
    let sim = binance_sim::spawn(binance_sim::Config::parse_from(sim_args)).await?;
    let budget = if limits { args.budget } else { u32::MAX / 2 };
    let rest = RestClient::new(
        RestConfig {
            base_url: sim.base_url(),
            ..RestConfig::default()
        },
        Arc::new(WeightLimiter::new(budget)),
    )?;
    let now = rest.server_time().await.context("sim time")?;
    let minutes = if limits {
        // Far more than the budget allows in the run: 5 years × 4 symbols is 10.5M candles,
        // 2.4M a minute at 4800 weight.
        5 * 365 * 1440
    } else {
        args.candles / n as i64 + 1
    };
    let symbols: Vec<Symbol> = Symbol::parse_list(&names)?;
    let window = Window::Range {
        from_ms: now - minutes * 60_000,
        to_ms: None,
    };
    let plan = Plan::build(&symbols, &[Interval::M1], window, now);
    let options = RunOptions {
        concurrency: args.concurrency,
        progress: ProgressMode::Quiet,
        resume: true,
        fetch: kline_backfill::Fetch::Rest,
        flow: None,
        patience: std::time::Duration::from_secs(60),
    };
    let brokers: &[Nats] = match (limits, args.nats) {
        (true, _) | (false, Nats::Single) => &[Nats::Single],
        (false, Nats::Cluster) => &[Nats::Cluster],
        (false, Nats::Both) => &[Nats::Single, Nats::Cluster],
    };
    for &broker in brokers {
        // Kept until the run is over; killed on drop.
        let (_servers, url, replicas) = match broker {
            Nats::Cluster | Nats::Both => {
                let nodes = NatsServer::try_start_cluster(3)?;
                let urls: Vec<_> = nodes.iter().map(NatsServer::url).collect();
                let url = urls.join(",");
                (nodes, url, 3)
            }
            Nats::Single => {
                let node = NatsServer::try_start()?;
                let url = node.url();
                (vec![node], url, 1)
            }
        };
        let client = bus::connect(&bus::BusOptions::new(url, "backfill-bench")).await?;
        let js = bus::jetstream(client, args.max_inflight);
        let retention = Retention {
            replicas,
            ..Retention::default()
        };
        bus::ensure_streams(&js, &retention).await?;
        let cancel = CancellationToken::new();
        if limits {
            let c = cancel.clone();
            let d = args.duration;
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                c.cancel();
            });
        }
        let summary = run_backfill(&plan, &rest, &js, options, &cancel).await;
        print!(
            "{} replica{}: ",
            replicas,
            if replicas == 1 { "" } else { "s" }
        );
        report(&args, &summary, &rest);
    }
    Ok(())
}

fn report(args: &BenchArgs, s: &Summary, rest: &RestClient) {
    let secs = s.elapsed.as_secs_f64().max(1e-3);
    let stored: u64 = s.series.iter().map(|r| r.published + r.duplicates).sum();
    println!(
        "{} series, {} candles published+acked in {:.2}s: {:.0} candles/s (sim REST → NATS ack), {} REST requests, {} × 429, {} × 418",
        s.series.len(),
        stored,
        secs,
        stored as f64 / secs,
        s.rest_requests,
        s.rate_limited,
        s.banned
    );
    if args.mode == Mode::Limits {
        let hist = rest.limiter().history();
        // The first and last minutes are partial.
        let full = hist.get(1..hist.len().saturating_sub(1)).unwrap_or(&[]);
        for m in &hist {
            let tag = if full.contains(m) { "" } else { " (partial)" };
            println!(
                "minute {}: server weight {} / budget {} = {:.1} %, reserved {}{tag}",
                chrono::DateTime::from_timestamp_millis(m.minute_start_ms).map_or_else(
                    || m.minute_start_ms.to_string(),
                    |t| t.format("%H:%M").to_string()
                ),
                m.server_used,
                args.budget,
                100.0 * f64::from(m.server_used) / f64::from(args.budget),
                m.reserved
            );
        }
        if !full.is_empty() {
            let avg =
                full.iter().map(|m| f64::from(m.server_used)).sum::<f64>() / full.len() as f64;
            println!(
                "full minutes: {} , mean weight {:.0} = {:.1} % of budget; 429s: {}",
                full.len(),
                avg,
                100.0 * avg / f64::from(args.budget),
                s.rate_limited
            );
        }
    }
}
