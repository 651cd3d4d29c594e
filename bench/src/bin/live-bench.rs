//! `live-bench`, in two modes (build with `--release`, next to `kline-live` and `kline-pg-sink`:
//! `cargo build --release -p kline-live -p kline-pg-sink -p klinebus-bench`).
//!
//! * `--mode cpu` (default): the real `kline-live` binary (a child process, so its CPU and
//!   memory are its own) streams N symbols × timeframes from an in-process binance-sim at real
//!   speed into a private nats-server. A core-NATS subscriber measures, per WebSocket event, the
//!   time from the producer receiving the frame (`received_at`) to the event arriving on the
//!   bus; the child's CPU time and RSS are read from `/proc`.
//! * `--mode latency`: the whole pipeline, binance-sim → `kline-live` → JetStream →
//!   `kline-pg-sink` → PostgreSQL, both services as child processes of this one. A throwaway
//!   database (`kb_livebench_<pid>_<random>`, migrated, dropped at the end) gets a trigger that
//!   `NOTIFY`s every inserted or replaced `ohlcv_candles` row; PostgreSQL delivers a
//!   notification when its transaction commits, so the time it reaches this process, minus the
//!   row's exchange event time (`E`, read on the simulator's clock), is the event → committed
//!   latency. Forming and closed candles are reported separately, next to a breakdown from the
//!   same run: event → frame received by kline-live (its `received_at`, at speed 1 only) and
//!   event → on the bus (a core-NATS subscriber).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use klinebus_bench::harness::{percentile, sibling, terminate, Usage};
use klinebus_binance::limiter::wall_now_ms;
use klinebus_schemas::{bus, codec, KlineEvent};
use klinebus_testkit::{NatsServer, TestDb};
use sqlx::postgres::PgListener;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// kline-live alone: frame received → on the bus, CPU and RSS.
    Cpu,
    /// The whole pipeline: exchange event time → row committed in PostgreSQL (p50/p99).
    Latency,
}

/// Measures kline-live's publish latency, CPU and memory for many streams, or the whole
/// pipeline's event → committed-row latency (`--mode latency`).
#[derive(Debug, Clone, Parser)]
#[command(name = "live-bench")]
struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Cpu)]
    mode: Mode,
    /// Number of symbols, each streamed for every timeframe (default: 100 for cpu, 25 for
    /// latency; latency mode uses the simulator's default symbols first).
    #[arg(long)]
    symbols: Option<usize>,
    /// Timeframes.
    #[arg(long, default_value = "1m,1h")]
    timeframes: String,
    /// Measured run time (default: 30s for cpu, 60s for latency).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Warm-up before measuring.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The kline-live binary (default: next to this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Latency mode: the kline-pg-sink binary (default: next to this one; build it with
    /// `cargo build --release -p kline-pg-sink`).
    #[arg(long)]
    sink_binary: Option<PathBuf>,
    /// Latency mode: PostgreSQL admin URL, used to create and drop the throwaway database
    /// (default: `DATABASE_ADMIN_URL`, else postgres://postgres@127.0.0.1:5432/postgres).
    #[arg(long)]
    admin_url: Option<String>,
    /// Latency mode: simulator speed (latencies are converted back to wall milliseconds).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Extra simulator argument, e.g. `--sim-arg=--ws-update-ms=500`. Repeatable.
    #[arg(long = "sim-arg", allow_hyphen_values = true)]
    sim_args: Vec<String>,
    /// Latency mode: extra kline-pg-sink argument, e.g. `--sink-arg=--batch-size=100`.
    /// Repeatable.
    #[arg(long = "sink-arg", allow_hyphen_values = true)]
    sink_args: Vec<String>,
}

/// The latency target of the issue: p99 below this many milliseconds.
const TARGET_P99_MS: f64 = 25.0;

/// `n …  p50 …  p99 …  max …  >25ms …` of unsorted samples (sorted in place).
fn summary(samples: &mut [f64]) -> String {
    samples.sort_by(f64::total_cmp);
    let over = samples.iter().filter(|&&v| v >= TARGET_P99_MS).count();
    format!(
        "n {:>5}  p50 {:>6.1}  p99 {:>6.1}  max {:>6.1}  >={TARGET_P99_MS}ms {over}",
        samples.len(),
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        samples.last().copied().unwrap_or(f64::NAN)
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    klinebus_svc::init_tracing();
    let args = BenchArgs::parse();
    match args.mode {
        Mode::Cpu => run_cpu(args).await,
        Mode::Latency => run_latency(args).await,
    }
}

/// kline-live (`--binary`, else the one beside this program) on `symbols` × `--timeframes`
/// against the simulator and the private bus, with its pid.
fn start_live(
    args: &BenchArgs,
    symbols: &str,
    sim: &binance_sim::SimHandle,
    nats: &NatsServer,
) -> anyhow::Result<(tokio::process::Child, u32)> {
    let binary = match args.binary.clone() {
        Some(b) => b,
        None => sibling("kline-live")?,
    };
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let child = tokio::process::Command::new(&binary)
        .env("TRADING_PAIRS", symbols)
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
    Ok((child, pid))
}

async fn run_cpu(args: BenchArgs) -> anyhow::Result<()> {
    let duration = args.duration.unwrap_or(Duration::from_secs(30));
    let symbols: Vec<String> = (0..args.symbols.unwrap_or(100))
        .map(|i| format!("BENCH{i:03}USDT"))
        .collect();
    let streams = symbols.len() * args.timeframes.split(',').count();
    let joined = symbols.join(",");
    let sim_args = ["binance-sim", "--no-limits", "--symbols", &joined]
        .into_iter()
        .map(String::from)
        .chain(args.sim_args.iter().cloned());
    let sim = binance_sim::spawn(binance_sim::Config::parse_from(sim_args)).await?;
    let nats = NatsServer::try_start()?;
    let client = bus::connect(&bus::BusOptions::new(nats.url(), "live-bench")).await?;
    let mut sub = client.subscribe("klines.ws.>").await?;
    let (mut child, pid) = start_live(&args, &joined, &sim, &nats)?;
    println!(
        "live-bench: {streams} streams ({} symbols × {}), warm-up {:?}, measuring {:?}",
        symbols.len(),
        args.timeframes,
        args.warmup,
        duration
    );
    tokio::time::sleep(args.warmup).await;
    while tokio::time::timeout(Duration::from_millis(1), sub.next())
        .await
        .is_ok()
    {}
    let cpu0 = Usage::of(pid)?.cpu_secs;
    let started = Instant::now();
    let end = started + duration;
    let mut latencies = Vec::new();
    let mut decode_errors = 0u64;
    while let Ok(Some(msg)) = tokio::time::timeout_at(end.into(), sub.next()).await {
        match codec::decode::<KlineEvent>(&msg.payload) {
            Ok(ev) => latencies.push((wall_now_ms() - ev.received_at) as f64),
            Err(_) => decode_errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let usage = Usage::of(pid)?;
    terminate(&mut child, "kline-live").await;
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
        "kline-live CPU: {:.1} % of one core; RSS {:.1} MiB (peak {:.1} MiB)",
        (usage.cpu_secs - cpu0) / elapsed * 100.0,
        usage.rss_mib,
        usage.peak_rss_mib
    );
    Ok(())
}

/// Notifies channel `kb_livebench` with `source,is_closed,event_time,symbol,timeframe` for
/// every row the sink inserts or replaces. Created only in the throwaway database.
const NOTIFY_TRIGGER: &str = r#"
CREATE FUNCTION kb_livebench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kb_livebench', NEW.source || ',' || NEW.is_closed::text || ','
        || NEW.event_time::text || ',' || NEW.symbol || ',' || NEW.timeframe);
    RETURN NULL;
END
$$;
CREATE TRIGGER kb_livebench_notify AFTER INSERT OR UPDATE ON ohlcv_candles
    FOR EACH ROW EXECUTE FUNCTION kb_livebench_notify();
"#;

async fn run_latency(args: BenchArgs) -> anyhow::Result<()> {
    if !args.speed.is_finite() || args.speed <= 0.0 {
        bail!("--speed must be positive");
    }
    let admin_url = args
        .admin_url
        .clone()
        .unwrap_or_else(klinebus_testkit::admin_url);
    // Dropped (with the trigger) when `db` goes, after the services have stopped.
    let db = TestDb::try_named(admin_url, "kb_livebench").await?;
    measure_latency(&args, &db).await
}

/// Latency samples of one kind, in wall milliseconds.
#[derive(Default)]
struct Samples {
    forming: Vec<f64>,
    closed: Vec<f64>,
}

impl Samples {
    fn push(&mut self, closed: bool, ms: f64) {
        if closed {
            self.closed.push(ms);
        } else {
            self.forming.push(ms);
        }
    }

    fn print(&mut self, what: &str) {
        let mut all: Vec<f64> = self.forming.iter().chain(&self.closed).copied().collect();
        println!("{what} (ms):");
        println!("  all      {}", summary(&mut all));
        println!("  forming  {}", summary(&mut self.forming));
        println!("  closed   {}", summary(&mut self.closed));
    }

    fn p99_all(&self) -> f64 {
        let mut all: Vec<f64> = self.forming.iter().chain(&self.closed).copied().collect();
        all.sort_by(f64::total_cmp);
        percentile(&all, 0.99)
    }
}

async fn measure_latency(args: &BenchArgs, db: &TestDb) -> anyhow::Result<()> {
    let duration = args.duration.unwrap_or(Duration::from_secs(60));
    let n = args.symbols.unwrap_or(25);
    let mut symbols: Vec<String> = binance_sim::symbols::DEFAULT_SYMBOLS
        .split(',')
        .take(n)
        .map(String::from)
        .collect();
    let mut i = 0;
    while symbols.len() < n {
        symbols.push(format!("BENCH{i:03}USDT"));
        i += 1;
    }
    let streams = symbols.len() * args.timeframes.split(',').count();
    let joined = symbols.join(",");
    let speed = args.speed.to_string();
    let sim_args = [
        "binance-sim",
        "--no-limits",
        "--speed",
        &speed,
        "--symbols",
        &joined,
    ]
    .into_iter()
    .map(String::from)
    .chain(args.sim_args.iter().cloned());
    let sim = binance_sim::spawn(binance_sim::Config::parse_from(sim_args)).await?;
    let clock = sim.clock();
    // Wall milliseconds since simulated time `sim_ms`.
    let since = move |sim_ms: i64| (clock.now_ms() - sim_ms) as f64 / args.speed;

    let nats = NatsServer::try_start()?;
    let db_url = db.url.as_str();
    sqlx::raw_sql(NOTIFY_TRIGGER).execute(&db.pool).await?;
    let mut listener = PgListener::connect(db_url).await?;
    listener.listen("kb_livebench").await?;
    let client = bus::connect(&bus::BusOptions::new(nats.url(), "live-bench")).await?;
    let mut sub = client.subscribe("klines.ws.>").await?;

    let sink_bin = match args.sink_binary.clone() {
        Some(b) => b,
        None => sibling("kline-pg-sink")?,
    };
    if !sink_bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p kline-pg-sink` or pass --sink-binary",
            sink_bin.display()
        );
    }
    let mut sink = tokio::process::Command::new(&sink_bin)
        .args(["--nats-url", &nats.url(), "--database-url", db_url])
        .args(["--consumer", "live-bench", "--metrics-addr", "off"])
        .arg("--no-migrate")
        .args(&args.sink_args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", sink_bin.display()))?;
    let sink_pid = sink.id().context("kline-pg-sink exited at once")?;

    let (mut live, live_pid) = start_live(args, &joined, &sim, &nats)?;
    println!(
        "live-bench latency: {streams} streams ({} symbols × {}), sim speed {}, warm-up {:?}, \
         measuring {:?}",
        symbols.len(),
        args.timeframes,
        args.speed,
        args.warmup,
        duration
    );

    // Warm-up: connections, stream and consumer creation, start-up repair.
    let warm_end = Instant::now() + args.warmup;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(warm_end.into()) => break,
            n = listener.recv() => { n?; }
            m = sub.next() => { if m.is_none() { bail!("bus subscription ended"); } }
        }
    }
    for (pid, name) in [(sink_pid, "kline-pg-sink"), (live_pid, "kline-live")] {
        if Usage::of(pid).is_err() {
            bail!("{name} is not running after the warm-up");
        }
    }
    let live_cpu0 = Usage::of(live_pid)?.cpu_secs;
    let sink_cpu0 = Usage::of(sink_pid)?.cpu_secs;
    let started = Instant::now();
    let end = started + duration;
    let mut committed = Samples::default();
    let mut on_bus = Samples::default();
    let mut received = Samples::default();
    let mut other_sources = 0u64;
    let mut bad = 0u64;
    loop {
        tokio::select! {
            biased;
            n = listener.recv() => {
                let n = n?;
                let mut f = n.payload().split(',');
                let (source, closed, event_time) = (f.next(), f.next(), f.next());
                match (closed, event_time.and_then(|e| e.parse::<i64>().ok())) {
                    (Some(c), Some(e)) if source == Some("ws") => {
                        committed.push(c == "true", since(e));
                    }
                    (Some(_), Some(_)) => other_sources += 1,
                    _ => bad += 1,
                }
            }
            m = sub.next() => match m {
                Some(m) => match codec::decode::<KlineEvent>(&m.payload) {
                    Ok(ev) => {
                        on_bus.push(ev.closed, since(ev.event_time));
                        // `received_at` is kline-live's wall clock: comparable at speed 1 only.
                        if args.speed == 1.0 {
                            received.push(ev.closed, (ev.received_at - ev.event_time) as f64);
                        }
                    }
                    Err(_) => bad += 1,
                },
                None => bail!("bus subscription ended"),
            },
            _ = tokio::time::sleep_until(end.into()) => break,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let live_usage = Usage::of(live_pid)?;
    let sink_usage = Usage::of(sink_pid)?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles")
        .fetch_one(&db.pool)
        .await?;
    terminate(&mut live, "kline-live").await;
    terminate(&mut sink, "kline-pg-sink").await;
    drop(listener);

    println!(
        "ws events on the bus: {} ({:.1}/s); committed ws row versions: {} ({:.1}/s); \
         other sources: {other_sources}; undecodable: {bad}; rows in table: {rows}",
        on_bus.forming.len() + on_bus.closed.len(),
        (on_bus.forming.len() + on_bus.closed.len()) as f64 / elapsed,
        committed.forming.len() + committed.closed.len(),
        (committed.forming.len() + committed.closed.len()) as f64 / elapsed,
    );
    if args.speed == 1.0 {
        received.print("exchange event time → frame received by kline-live (received_at)");
    }
    on_bus.print("exchange event time → on the bus");
    let p99 = committed.p99_all();
    committed.print("exchange event time → row committed in PostgreSQL (NOTIFY received)");
    println!(
        "target p99 < {TARGET_P99_MS} ms: {} (p99 {p99:.1} ms; event times are whole ms, so \
         each figure is good to about 1 ms)",
        if p99 < TARGET_P99_MS { "MET" } else { "MISSED" }
    );
    println!(
        "CPU (% of one core): kline-live {:.1} (RSS {:.1} MiB), kline-pg-sink {:.1} \
         (RSS {:.1} MiB)",
        (live_usage.cpu_secs - live_cpu0) / elapsed * 100.0,
        live_usage.rss_mib,
        (sink_usage.cpu_secs - sink_cpu0) / elapsed * 100.0,
        sink_usage.rss_mib,
    );
    Ok(())
}
