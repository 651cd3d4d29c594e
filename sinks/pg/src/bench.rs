//! The `pg-sink-bench` benchmark (not used by the sink itself): a private nats-server and a
//! throwaway database, N closed klines published, then the real `kline-pg-sink` binary as a
//! child process — throughput from its start until lag 0 and N rows, its peak RSS (VmHWM), and
//! publish→commit latency of single candles on an idle sink.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use klinebus_consume::consumer_lag;
use klinebus_schemas::streams::Retention;
use klinebus_schemas::{bus, Interval, KlineEvent, Source, Venue};
use sqlx::PgPool;

/// Benchmark knobs.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Klines to publish and ingest.
    pub n: usize,
    /// Single-candle latency samples.
    pub samples: usize,
    /// Extra arguments for the sink binary (e.g. `--batch-size 2000`).
    pub sink_args: Vec<String>,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Candles per second, sink start → lag 0 and N rows.
    pub throughput: f64,
    /// Seconds that took.
    pub seconds: f64,
    /// Peak RSS of the sink process, kB.
    pub peak_rss_kb: u64,
    /// Latency percentiles (ms): p50, p99, max.
    pub latency_ms: (f64, f64, f64),
}

struct NatsChild {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for NatsChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_nats() -> anyhow::Result<NatsChild> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("kb-bench-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new(std::env::var("NATS_SERVER_BIN").unwrap_or("nats-server".into()))
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start nats-server")?;
    let n = NatsChild { child, dir, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(n)
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

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
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

/// Runs the benchmark end to end and cleans up after itself.
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    let nats = start_nats()?;
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    let admin_url = std::env::var("DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("kb_bench_{}", std::process::id());
    let admin = PgPool::connect(&admin_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&admin)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    let db_url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => bail!("admin URL without a database"),
    };
    let result = measure(&args, &nats_url, &db_url).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    drop(nats);
    result
}

async fn measure(args: &BenchArgs, nats_url: &str, db_url: &str) -> anyhow::Result<Report> {
    let pool = PgPool::connect(db_url).await?;
    klinebus_migrations::run(&pool).await?;
    let client = async_nats::connect(nats_url).await?;
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

    let exe = std::env::current_exe()?.with_file_name("kline-pg-sink");
    let mut child = Command::new(&exe)
        .args([
            "--nats-url",
            nats_url,
            "--database-url",
            db_url,
            "--consumer",
            "bench",
        ])
        .args(["--metrics-addr", "off", "--no-migrate"])
        .args(&args.sink_args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let pid = child.id();
    let started = Instant::now();
    let mut peak = 0;
    loop {
        peak = peak.max(vm_hwm_kb(pid).unwrap_or(0));
        if let Some(s) = child.try_wait()? {
            bail!("sink exited early: {s}");
        }
        let lag = consumer_lag(&js, "KLINES", "bench").await;
        if lag.is_ok_and(|l| l.is_caught_up()) {
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles")
                .fetch_one(&pool)
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
        while !has_row(&pool, &e).await? {
            if t0.elapsed() > Duration::from_secs(5) {
                bail!("live candle {s} not stored within 5 s");
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
        peak = peak.max(vm_hwm_kb(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lat.sort_by(f64::total_cmp);
    peak = peak.max(vm_hwm_kb(pid).unwrap_or(0));
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    pool.close().await;
    Ok(Report {
        throughput,
        seconds,
        peak_rss_kb: peak,
        latency_ms: (
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
        ),
    })
}
