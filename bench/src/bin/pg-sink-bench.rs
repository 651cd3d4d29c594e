//! `pg-sink-bench [N] [SAMPLES] [--pages P] [--compare] [-- sink args…]` (build with `--release`,
//! next to `kline-pg-sink`): a private nats-server and a throwaway database, N closed klines
//! published (one a message, or pages of P candles as kline-backfill publishes history), then
//! the real `kline-pg-sink` binary as a child process — throughput from its start until lag 0
//! and N rows, the CPU time per million candles of the sink, of its PostgreSQL backends, of
//! PostgreSQL's background processes and of nats-server meanwhile, the WAL written, its peak
//! RSS (VmHWM), and publish→commit latency of single candles on an idle sink.
//!
//! `--compare` runs the three ways side by side (each on a fresh server and database) and
//! prints one table: single messages written with UNNEST (`--copy-min-rows 0`), pages written
//! with UNNEST, and pages written with COPY (the sink's default).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use klinebus_bench::harness::{percentile, pids_where, sibling, terminate, CpuTracker, Usage};
use klinebus_consume::consumer_lag;
use klinebus_schemas::streams::Retention;
use klinebus_schemas::{bus, subjects, Interval, KlineEvent, Source, Venue};
use klinebus_testkit::{NatsServer, TestDb};
use sqlx::PgPool;

/// Series the candles are spread over.
const SERIES: usize = 100;
/// The sink's connections say who they are, so that only their backends are counted.
const APP_NAME: &str = "pg-sink-bench-sink";

/// End-to-end benchmark of kline-pg-sink: replay of N retained klines into an empty table.
#[derive(Debug, Clone, Parser)]
#[command(name = "pg-sink-bench")]
struct Args {
    /// Klines to publish and ingest (spread over 100 series).
    #[arg(default_value_t = 1_000_000)]
    n: usize,
    /// Single-candle latency samples, on the idle sink afterwards.
    #[arg(default_value_t = 500)]
    samples: usize,
    /// Publish the history as pages (`kline-page/1`) of this many candles of one series
    /// (at most 1000), the series taking turns; 0: one candle a message.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pages: u16,
    /// Run singles + UNNEST, pages (of `--pages`, 1000 if 0) + UNNEST and pages + COPY, each on a
    /// fresh nats-server and database, and print them side by side (the sink args apply to all).
    #[arg(long)]
    compare: bool,
    /// Extra arguments for the sink binary, after `--` (e.g. `-- --batch-size 2000`).
    #[arg(last = true)]
    sink_args: Vec<String>,
}

/// What one run measured.
#[derive(Debug, Clone)]
struct Figures {
    label: String,
    candles: usize,
    messages: usize,
    publish_secs: f64,
    secs: f64,
    sink_cpu: f64,
    pg_cpu: f64,
    pg_background_cpu: f64,
    nats_cpu: f64,
    wal_bytes: f64,
    peak_mib: f64,
    latency_ms: Vec<f64>,
}

impl Figures {
    fn per_million(&self, cpu: f64) -> f64 {
        cpu * 1e6 / self.candles as f64
    }

    fn throughput(&self) -> f64 {
        self.candles as f64 / self.secs
    }

    fn print(&self) {
        let pm = |c| self.per_million(c);
        println!("run:              {}", self.label);
        println!(
            "candles:          {} in {} messages (published in {:.1} s)",
            self.candles, self.messages, self.publish_secs
        );
        println!(
            "throughput:       {:.0} candles/s ({:.2} s)",
            self.throughput(),
            self.secs
        );
        println!("sink peak RSS:    {:.1} MB", self.peak_mib);
        println!(
            "CPU s per 1M:     sink {:.2}, PostgreSQL backends {:.2}, PostgreSQL background {:.2}, nats-server {:.2}; sink + backends {:.2}",
            pm(self.sink_cpu),
            pm(self.pg_cpu),
            pm(self.pg_background_cpu),
            pm(self.nats_cpu),
            pm(self.sink_cpu + self.pg_cpu),
        );
        println!(
            "WAL per candle:   {:.0} bytes (server-wide, as the background CPU)",
            self.wal_bytes / self.candles as f64
        );
        if !self.latency_ms.is_empty() {
            println!(
                "live latency ms:  p50 {:.2}  p99 {:.2}  max {:.2} ({} samples)",
                percentile(&self.latency_ms, 0.5),
                percentile(&self.latency_ms, 0.99),
                self.latency_ms.last().copied().unwrap_or(f64::NAN),
                self.latency_ms.len()
            );
        }
    }
}

/// A closed 1m candle: `i` spreads over 100 symbols.
fn kline(i: usize) -> anyhow::Result<KlineEvent> {
    let open_time = 1_700_000_000_000 - 1_700_000_000_000 % 60_000 + (i / SERIES) as i64 * 60_000;
    Ok(KlineEvent {
        venue: Venue::binance(),
        symbol: format!("SYM{}USDT", i % SERIES).parse()?,
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

/// Publishes klines `0..n`, one a message or in pages of `page` (the series taking turns, as a
/// backfill of many series does); returns the number of messages.
async fn publish(
    js: &async_nats::jetstream::Context,
    n: usize,
    page: usize,
) -> anyhow::Result<usize> {
    let mut acks = Vec::with_capacity(10_000);
    let mut messages = 0;
    if page == 0 {
        for i in 0..n {
            acks.push(bus::publish_event(js, &kline(i)?).await?);
            messages += 1;
            if acks.len() == 10_000 {
                for a in acks.drain(..) {
                    a.await?;
                }
            }
        }
    } else {
        let mut series: Vec<Vec<KlineEvent>> = vec![Vec::new(); SERIES];
        for i in 0..n {
            series[i % SERIES].push(kline(i)?);
        }
        let longest = series.iter().map(Vec::len).max().unwrap_or(0);
        for start in (0..longest).step_by(page) {
            for s in &series {
                let Some(chunk) = s.get(start..(start + page).min(s.len())) else {
                    continue;
                };
                let Some(first) = chunk.first() else { continue };
                if let Some(ack) = bus::publish_page(js, subjects::for_event(first), chunk).await? {
                    acks.push(ack);
                    messages += 1;
                }
                // About 330 KB a page: a few hundred in flight at most.
                if acks.len() == 200 {
                    for a in acks.drain(..) {
                        a.await?;
                    }
                }
            }
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(messages)
}

/// The sink's PostgreSQL backends.
async fn sink_backends(pool: &PgPool) -> anyhow::Result<Vec<u32>> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(APP_NAME)
            .fetch_all(pool)
            .await?;
    Ok(pids
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect())
}

/// PostgreSQL's background processes (WAL writer, checkpointer, background writer,
/// autovacuum): the whole server's, not only this database's.
fn pg_background() -> Vec<u32> {
    pids_where(|comm, _, cmdline| {
        comm == "postgres"
            && [
                "walwriter",
                "checkpointer",
                "background writer",
                "autovacuum",
            ]
            .iter()
            .any(|p| cmdline.contains(p))
    })
}

async fn wal_lsn(pool: &PgPool) -> anyhow::Result<f64> {
    Ok(
        sqlx::query_scalar::<_, f64>("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8")
            .fetch_one(pool)
            .await?,
    )
}

/// One run: publish, start the sink, measure until it has committed everything, then the live
/// latency samples.
async fn run(
    label: String,
    n: usize,
    samples: usize,
    page: usize,
    sink_args: &[String],
) -> anyhow::Result<Figures> {
    let nats = NatsServer::try_start()?;
    let nats_pids = pids_where(|comm, ppid, _| comm == "nats-server" && ppid == std::process::id());
    let db = TestDb::try_named(klinebus_testkit::admin_url(), "kb_bench").await?;
    let pool = &db.pool;
    let client = async_nats::connect(nats.url()).await?;
    let js = bus::jetstream(client, 20_000);
    bus::ensure_streams(&js, &Retention::default()).await?;

    let t = Instant::now();
    let messages = publish(&js, n, page).await?;
    let publish_secs = t.elapsed().as_secs_f64();
    eprintln!("{label}: published {n} klines in {messages} messages in {publish_secs:.1} s");

    let exe = sibling("kline-pg-sink")?;
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let db_url = format!("{}{sep}application_name={APP_NAME}", db.url);
    let mut background = CpuTracker::default();
    background.sample(&pg_background(), true);
    let mut nats_cpu = CpuTracker::default();
    nats_cpu.sample(&nats_pids, true);
    let wal0 = wal_lsn(pool).await?;
    let mut child = tokio::process::Command::new(&exe)
        .args(["--nats-url", &nats.url(), "--database-url", &db_url])
        .args([
            "--consumer",
            "bench",
            "--metrics-addr",
            "off",
            "--no-migrate",
        ])
        .args(sink_args)
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
    let mut backends = CpuTracker::default();
    loop {
        peak = peak.max(peak_mib(pid));
        backends.sample(&sink_backends(pool).await?, false);
        background.sample(&pg_background(), false);
        if let Some(s) = child.try_wait()? {
            bail!("sink exited early: {s}");
        }
        let lag = consumer_lag(&js, "KLINES", "bench").await;
        if lag.is_ok_and(|l| l.is_caught_up()) {
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles")
                .fetch_one(pool)
                .await?;
            if rows as usize >= n {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let sink_cpu = Usage::of(pid)?.cpu_secs;
    backends.sample(&sink_backends(pool).await?, false);
    background.sample(&pg_background(), false);
    nats_cpu.sample(&nats_pids, true);
    let wal_bytes = wal_lsn(pool).await? - wal0;
    eprintln!(
        "{label}: ingested {n} in {secs:.2} s = {:.0}/s ({} backends)",
        n as f64 / secs,
        backends.processes()
    );

    let mut lat = Vec::with_capacity(samples);
    for s in 0..samples {
        let e = kline(n + s)?;
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
    Ok(Figures {
        label,
        candles: n,
        messages,
        publish_secs,
        secs,
        sink_cpu,
        pg_cpu: backends.seconds(),
        pg_background_cpu: background.seconds(),
        nats_cpu: nats_cpu.seconds(),
        wal_bytes,
        peak_mib: peak,
        latency_ms: lat,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let page = usize::from(args.pages);
    if !args.compare {
        let label = match page {
            0 => "single messages".to_owned(),
            p => format!("pages of {p}"),
        };
        let f = run(label, args.n, args.samples, page, &args.sink_args).await?;
        f.print();
        return Ok(());
    }
    let page = if page == 0 { 1000 } else { page };
    let with = |extra: &[&str]| {
        let mut a = args.sink_args.clone();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let runs = [
        (
            "singles + UNNEST".to_owned(),
            0,
            with(&["--copy-min-rows", "0"]),
        ),
        (
            format!("pages of {page} + UNNEST"),
            page,
            with(&["--copy-min-rows", "0"]),
        ),
        (format!("pages of {page} + COPY"), page, with(&[])),
    ];
    let mut all = Vec::new();
    for (label, page, sink_args) in runs {
        let f = run(label, args.n, args.samples, page, &sink_args).await?;
        f.print();
        println!();
        all.push(f);
    }
    println!(
        "{:<24} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "CPU s per 1M candles", "candles/s", "sink", "pg", "pg bg", "nats", "sink+pg", "WAL B/c"
    );
    for f in &all {
        let pm = |c| f.per_million(c);
        println!(
            "{:<24} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.0}",
            f.label,
            f.throughput(),
            pm(f.sink_cpu),
            pm(f.pg_cpu),
            pm(f.pg_background_cpu),
            pm(f.nats_cpu),
            pm(f.sink_cpu + f.pg_cpu),
            f.wal_bytes / f.candles as f64
        );
    }
    Ok(())
}
