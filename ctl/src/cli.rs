//! Command-line surface: every `///` here is `--help` text.

use clap::{Args, Parser, Subcommand};
use klinebus_svc::{DbArgs, NatsArgs};

/// klinectl — verify, inspect and maintain the klinebus candle store.
///
/// Exit codes: 0 when everything checked is fine; 1 when a check fails (verify not `ok`, an
/// alert firing); 2 for bad usage or an unreachable service.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The operators' commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Check stored candles per symbol and timeframe: ok, halted (not trading, complete up to
    /// its halt), incomplete, stale, missing or error, with the gaps inside the window (from
    /// the listing, when the series is younger); with --repair, backfill the gaps and check
    /// again. Exit code 0 only when everything (finally) is ok or halted.
    Verify(VerifyArgs),
    /// Show ingestion_status and each JetStream consumer's lag.
    Status(StatusArgs),
    /// Evaluate the alert rules; one line per firing alert; exit code 1 when any fires.
    Alerts(AlertsArgs),
    /// Reset a sink's durable consumer to a start time or sequence so it re-applies history
    /// (the recovery path for a lost or damaged database). Safe while sinks run.
    Replay(ReplayArgs),
    /// Delete candles older than a age: monthly partitions entirely older are dropped whole
    /// (an instant's lock on their timeframe's table), the rest deleted in bounded batches per
    /// series (no table-wide lock).
    ///
    /// The bus keeps its own history independently: the KLINES stream retains 30 days or
    /// 8 GiB by default (discarding the oldest first), so pruning the table never touches it.
    Prune(PruneArgs),
    /// The continuous completeness auditor: every --every, check the recent window of every
    /// series in Postgres (holes, forming rows whose close has passed), repair what is missing
    /// over REST with kline-backfill's code, and expose Prometheus metrics. With --once, one
    /// run (exit code 1 when something stayed unrepaired).
    Audit(AuditArgs),
    /// The klinebus streams are the operator's configuration: `streams apply` creates or
    /// updates KLINES, CANDLES, SIGNALS and DLQ to the given retention, duplicate window and
    /// replicas (--stream-replicas) and says per stream what changed. Services only create a
    /// stream that is missing and never change an existing one.
    Streams(StreamsArgs),
}

/// `streams` options.
#[derive(Debug, Args)]
pub struct StreamsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: StreamsAction,
}

/// `streams` actions.
#[derive(Debug, Subcommand)]
pub enum StreamsAction {
    /// Create or update every klinebus stream to these settings.
    Apply(ApplyArgs),
}

/// `streams apply` settings. Sizing: an event is about 330 bytes (a MessagePack map with field
/// names; pages of history cost the same per candle); 100 symbols × 16 intervals of live
/// forming updates every 2 s are about 800 events/s, 23 GB a day, so KLINES' byte budget, not
/// its age, usually decides how long events stay: keep it above what a sink outage may have to
/// replay.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// KLINES: the oldest event kept (e.g. 30d).
    #[arg(long, env = "KLINES_MAX_AGE", default_value = "30d")]
    pub klines_max_age: humantime::Duration,
    /// KLINES: the byte budget, oldest events discarded first (bytes, or with a unit: 8GiB,
    /// 500MB).
    #[arg(long, env = "KLINES_MAX_BYTES", default_value = "8GiB", value_parser = parse_bytes)]
    pub klines_max_bytes: i64,
    /// Window in which a repeated Nats-Msg-Id is dropped as a duplicate (every stream).
    #[arg(long, env = "NATS_DUPLICATE_WINDOW", default_value = "2m")]
    pub duplicate_window: humantime::Duration,
}

/// `8GiB`, `500MB`, `1024` (bytes).
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("expected a byte size such as 8GiB or 500MB, got {s:?}"))?;
    let mul: i64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown byte unit {other:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    n.checked_mul(mul)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("byte size {s:?} out of range"))
}

/// `verify` options.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Symbols, comma-separated (default: TRADING_PAIRS).
    #[arg(long, env = "TRADING_PAIRS", value_delimiter = ',')]
    pub symbols: Vec<String>,
    /// Timeframes, comma-separated (default: TIMEFRAMES).
    #[arg(long, env = "TIMEFRAMES", value_delimiter = ',')]
    pub timeframes: Vec<String>,
    /// Window in days (default per timeframe: 1m 7, 5m 14, 15m 30, 1h 90, 4h 180, 1d 365, 1w 730).
    #[arg(long)]
    pub days: Option<u32>,
    /// Verify as of this instant (RFC 3339) instead of now.
    #[arg(long)]
    pub at: Option<String>,
    /// Print the report as JSON.
    #[arg(long, conflicts_with_all = ["repair", "deep"])]
    pub json: bool,
    /// Compare the stored closed candles with the exchange's field by field (REST pages of
    /// 1000, weight-limited) instead of counting them; every difference is listed (20 per
    /// series printed). With --repair, the exchange's version of each differing candle is
    /// published (it supersedes the stored one), the sink is waited for and the candles are
    /// compared again. Exit code 1 when a difference remains.
    #[arg(long)]
    pub deep: bool,
    /// With --deep: compare N pages of up to 1000 stored candles chosen at random per series,
    /// not all of them.
    #[arg(long, requires = "deep")]
    pub sample: Option<usize>,
    #[command(flatten)]
    pub repair: RepairArgs,
}

/// `verify --repair` options.
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Repair instead of only reporting: fetch the gaps of every series that is not ok from the
    /// exchange and publish them to NATS with kline-backfill's code
    /// (`klines.backfill.binance.<SYMBOL>.<tf>`), wait for the sink, verify again. Candles the
    /// KLINES stream already holds are not re-published (the sink is behind, or lost them:
    /// see `klinectl replay`). Exit code 0 only when the final verification is ok.
    #[arg(id = "repair", long = "repair")]
    pub enabled: bool,
    /// Binance REST base URL the repair fetches from.
    #[arg(
        long,
        env = "BINANCE_REST_URL",
        default_value = klinebus_binance::DEFAULT_REST_URL
    )]
    pub rest_url: String,
    /// REQUEST_WEIGHT per minute: the repair waits once the IP has used this much in the minute,
    /// as Binance counts it for every process on the IP (it allows 6000).
    #[arg(long, env = "BINANCE_WEIGHT_BUDGET", default_value_t = klinebus_binance::DEFAULT_BUDGET)]
    pub weight_budget: u32,
    /// After publishing, wait up to this long for the sink's durable consumer to drain before
    /// verifying again; `0s` verifies at once.
    #[arg(long, default_value = "5m")]
    pub repair_wait: humantime::Duration,
    /// Durable consumer (the Postgres sink's) that --repair-wait waits on.
    #[arg(long, default_value = kline_backfill::verify::DEFAULT_VERIFY_CONSUMER)]
    pub repair_consumer: String,
}

/// `status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `alerts` options.
#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// Consecutive ingestion errors of a series above which an alert fires.
    #[arg(long, default_value_t = 3)]
    pub max_errors: i32,
    /// Fire when no symbol has ingested anything for this long.
    #[arg(long, default_value = "2h")]
    pub no_data_for: humantime::Duration,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `replay` options.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Durable consumer to reset (e.g. pg-sink).
    #[arg(long)]
    pub consumer: String,
    /// Stream the consumer reads.
    #[arg(long, default_value = "KLINES")]
    pub stream: String,
    /// Where to start: `all`, an RFC 3339 time (2024-06-01T00:00:00Z), or `seq:N`.
    #[arg(long)]
    pub from: String,
    /// Only these subjects (one filter subject, e.g. `klines.*.binance.BTCUSDT.>`); default:
    /// keep the consumer's filter.
    #[arg(long)]
    pub subjects: Option<String>,
}

/// `prune` options.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete candles whose open time is older than this (e.g. 2y, 180d).
    #[arg(long)]
    pub older_than: humantime::Duration,
    /// Count what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rows deleted per statement.
    #[arg(long, default_value_t = 10_000)]
    pub batch_size: i64,
}

/// `audit` options.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Symbols, comma-separated (default: TRADING_PAIRS).
    #[arg(long, env = "TRADING_PAIRS", value_delimiter = ',', required = true)]
    pub symbols: Vec<String>,
    /// Timeframes, comma-separated (default: TIMEFRAMES).
    #[arg(long, env = "TIMEFRAMES", value_delimiter = ',', required = true)]
    pub timeframes: Vec<String>,
    /// Time between runs.
    #[arg(long, env = "AUDIT_EVERY", default_value = "5m")]
    pub every: humantime::Duration,
    /// One run, then exit.
    #[arg(long)]
    pub once: bool,
    /// Recent history checked per series (at least 3 candles of each timeframe).
    #[arg(long, env = "AUDIT_WINDOW", default_value = "1d")]
    pub window: humantime::Duration,
    /// Candles closed less than this long ago are not expected yet (the pipeline's latency).
    #[arg(long, env = "AUDIT_GRACE", default_value = "2m")]
    pub grace: humantime::Duration,
    /// Binance REST base URL repairs fetch from.
    #[arg(
        long,
        env = "BINANCE_REST_URL",
        default_value = klinebus_binance::DEFAULT_REST_URL
    )]
    pub rest_url: String,
    /// REQUEST_WEIGHT per minute: the auditor's repairs wait once the IP has used this much in
    /// the minute, as Binance counts it for every process on the IP; below the producers' budget,
    /// so the auditor yields first (Binance allows 6000).
    #[arg(long, env = "AUDIT_WEIGHT_BUDGET", default_value_t = 1200)]
    pub weight_budget: u32,
    /// Address of /metrics (Prometheus) and /health; `off` disables it.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9106")]
    pub metrics_addr: String,
}
