//! `pg-sink-bench [N] [SAMPLES] [-- sink args…]` (build with `--release`, next to
//! `kline-pg-sink`): a private nats-server and a throwaway database, N closed klines published,
//! then the real `kline-pg-sink` binary as a child process — throughput from its start until lag
//! 0 and N rows, its peak RSS (VmHWM), and publish→commit latency of single candles on an idle
//! sink.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use klinebus_bench::harness::{percentile, sibling, terminate, Usage};
use klinebus_consume::consumer_lag;
use klinebus_schemas::streams::Retention;
use klinebus_schemas::{bus, Interval, KlineEvent, Source, Venue};
use klinebus_testkit::{NatsServer, TestDb};
use sqlx::PgPool;

/// End-to-end benchmark of kline-pg-sink: replay of N retained klines into an empty table.
#[derive(Debug, Parser)]
#[command(name = "pg-sink-bench")]
struct Args {
    /// Klines to publish and ingest (spread over 100 series).
    #[arg(default_value_t = 1_000_000)]
    n: usize,
    /// Single-candle latency samples, on the idle sink afterwards.
    #[arg(default_value_t = 500)]
    samples: usize,
    /// Extra arguments for the sink binary, after `--` (e.g. `-- --batch-size 2000`).
    #[arg(last = true)]
    sink_args: Vec<String>,
}

/// A closed 1m candle: `i` spreads over 100 symbols.
fn kline(i: usize) -> anyhow::Result<KlineEvent> {
    let open_time = 1_700_000_000_000 - 1_700_000_000_000 % 60_000 + (i / 100) as i64 * 60_000;
    Ok(KlineEvent {
        venue: Venue::binance(),
        symbol: format!("SYM{}USDT", i % 100).parse()?,
        interval: Interval::M1,
        open_time,
        close_time: open_time + 59_999,
        open: "105312.44000000".into(),
        high: "105340.00000000".into(),
        low: "105298.10000000".into(),
        close: format!("105330.{:08}", i % 100_000_000),
        volume: "8.41236000".into(),
        quote_volume: "885990.91189950".into(),
        taker_buy_base: "4.56875000".into(),
        taker_buy_quote: "481181.37820313".into(),
        trades: 1264,
        closed: true,
        event_time: open_time + 60_000,
        source: Source::Backfill,
        received_at: open_time + 60_100,
    })
}

async fn has_row(pool: &PgPool, e: &KlineEvent) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar::<_, bool>(
        r#"SELECT EXISTS (SELECT 1 FROM ohlcv_candles WHERE symbol = $1 AND timeframe = '1m' AND "timestamp" = $2)"#,
    )
    .bind(e.symbol.as_str())
    .bind(e.open_time)
    .fetch_one(pool)
    .await?)
}

/// The sink's peak RSS so far (0 once it has exited).
fn peak_mib(pid: u32) -> f64 {
    Usage::of(pid).map_or(0.0, |u| u.peak_rss_mib)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nats = NatsServer::try_start()?;
    let db = TestDb::try_named(klinebus_testkit::admin_url(), "kb_bench").await?;
    let pool = &db.pool;
    let client = async_nats::connect(nats.url()).await?;
    let js = bus::jetstream(client, 20_000);
    bus::ensure_streams(&js, &Retention::default()).await?;

    let t = Instant::now();
    let mut acks = Vec::with_capacity(10_000);
    for i in 0..args.n {
        acks.push(bus::publish_event(&js, &kline(i)?).await?);
        if acks.len() == 10_000 || i + 1 == args.n {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    eprintln!(
        "published {} klines in {:.1} s",
        args.n,
        t.elapsed().as_secs_f64()
    );

    let exe = sibling("kline-pg-sink")?;
    let mut child = tokio::process::Command::new(&exe)
        .args(["--nats-url", &nats.url(), "--database-url", &db.url])
        .args([
            "--consumer",
            "bench",
            "--metrics-addr",
            "off",
            "--no-migrate",
        ])
        .args(&args.sink_args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let pid = child.id().context("kline-pg-sink exited at once")?;
    let started = Instant::now();
    let mut peak = 0.0_f64;
    loop {
        peak = peak.max(peak_mib(pid));
        if let Some(s) = child.try_wait()? {
            bail!("sink exited early: {s}");
        }
        let lag = consumer_lag(&js, "KLINES", "bench").await;
        if lag.is_ok_and(|l| l.is_caught_up()) {
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles")
                .fetch_one(pool)
                .await?;
            if rows as usize >= args.n {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let throughput = args.n as f64 / seconds;
    eprintln!("ingested {} in {seconds:.2} s = {throughput:.0}/s", args.n);

    let mut lat = Vec::with_capacity(args.samples);
    for s in 0..args.samples {
        let e = kline(args.n + s)?;
        let t0 = Instant::now();
        bus::publish_event(&js, &e).await?.await?;
        while !has_row(pool, &e).await? {
            if t0.elapsed() > Duration::from_secs(5) {
                bail!("live candle {s} not stored within 5 s");
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
        peak = peak.max(peak_mib(pid));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lat.sort_by(f64::total_cmp);
    peak = peak.max(peak_mib(pid));
    terminate(&mut child, "kline-pg-sink").await;

    println!("candles:          {}", args.n);
    println!("throughput:       {throughput:.0} candles/s ({seconds:.2} s)");
    println!("sink peak RSS:    {peak:.1} MB");
    println!(
        "live latency ms:  p50 {:.2}  p99 {:.2}  max {:.2} ({} samples)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        args.samples
    );
    Ok(())
}
