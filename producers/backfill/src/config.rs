//! Command line and environment (a `.env` file is read first). Every `///` is `--help` text.

use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};
use clap::{Parser, ValueEnum};
use klinebus_binance::{DEFAULT_BUDGET, DEFAULT_REST_URL};
use klinebus_schemas::bus::BusOptions;
use klinebus_svc::{DbArgs, NatsArgs, SecretError};

/// Backfills closed Binance klines into NATS JetStream (`klines.backfill.binance.<SYMBOL>.<tf>`),
/// resuming where an earlier run stopped; the sinks take them from there.
///
/// Examples:
///   kline-backfill                          (symbols/timeframes from TRADING_PAIRS/TIMEFRAMES)
///   kline-backfill --symbols BTCUSDT,ETHUSDT --timeframes 15m,1h,4h,1d --days 90
#[derive(Debug, Clone, Parser)]
#[command(name = "kline-backfill", version, verbatim_doc_comment)]
pub struct Config {
    /// Symbols to backfill, comma-separated upper-case Binance names (BTCUSDT,ETHUSDT).
    #[arg(long, env = "TRADING_PAIRS", value_parser = parse_symbols)]
    pub symbols: SymbolList,

    /// Timeframes, comma-separated Binance interval names (case-sensitive: 1m is a minute, 1M a
    /// month): 1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M.
    #[arg(long, env = "TIMEFRAMES", value_parser = parse_intervals)]
    pub timeframes: IntervalList,

    /// Days of history to fetch, for every timeframe. Default per timeframe: 1m 7, 5m 14,
    /// 15m 30, 1h 90, 4h 180, 1d 365, 1w 730 (others alike, see Interval::default_days).
    #[arg(long, conflicts_with = "from")]
    pub days: Option<u32>,

    /// Start of an explicit range instead of --days: RFC3339 (2025-06-04T12:00:00Z) or a UTC
    /// date (2025-06-04). Candles opening at or after it are fetched.
    #[arg(long, value_parser = parse_time)]
    pub from: Option<i64>,

    /// End of the range (exclusive), RFC3339 or a UTC date. Default: now. Only closed candles
    /// are ever published.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<i64>,

    /// Series (symbol × timeframe) fetched at the same time. They share one weight budget.
    #[arg(long, env = "BACKFILL_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Where history comes from: `auto` takes Binance's public archive (monthly files for
    /// months that are over, daily files for the days of this month) and REST for the rest
    /// (today, unpublished days, and any file missing, failing its checksum, truncated or with
    /// holes); `archive` takes files only (nothing is fetched over REST); `rest` only REST.
    #[arg(long, env = "BACKFILL_SOURCE", value_enum, default_value_t = SourceMode::Auto)]
    pub source: SourceMode,

    /// Base URL of Binance's public kline archive.
    #[arg(long, env = "BINANCE_ARCHIVE_URL", default_value = klinebus_binance::archive::DEFAULT_ARCHIVE_URL)]
    pub archive_url: String,

    /// Archive files downloaded at the same time (whole process). The archive charges no
    /// request weight.
    #[arg(long, env = "BACKFILL_ARCHIVE_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub archive_concurrency: u16,

    /// Binance REST base URL.
    #[arg(long, env = "BINANCE_REST_URL", default_value = DEFAULT_REST_URL)]
    pub rest_url: String,

    /// REQUEST_WEIGHT per minute: requests wait once the IP has used this much in the minute, as
    /// Binance counts it for every process on the IP (it allows 6000; the default, 80 %, leaves
    /// room for what is in flight).
    #[arg(long, env = "BINANCE_WEIGHT_BUDGET", default_value_t = DEFAULT_BUDGET)]
    pub weight_budget: u32,

    /// Tries per REST request on 5xx, timeouts and connection errors (jittered exponential
    /// backoff between them). Input errors (-1121, -1120, other 4xx) are never retried.
    #[arg(long, env = "BINANCE_MAX_ATTEMPTS", default_value_t = 6)]
    pub max_attempts: u32,

    /// How long a request keeps retrying 5xx answers, timeouts and connection errors after its
    /// first failure (once --max-attempts are spent), so an exchange incident or maintenance
    /// window of minutes is waited out, each wait logged, before a series fails (e.g. 10m; 0s:
    /// give up after --max-attempts). A NATS server not reachable yet at start-up is waited for
    /// as long (refused credentials fail at once), and so is JetStream when it does not
    /// acknowledge a publish (a broker restart, a stream leader election): the page is
    /// republished for at least a minute, whatever this says.
    #[arg(long, env = "BACKFILL_PATIENCE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub patience: Duration,

    /// Timeout of one REST request (e.g. 30s, 2m).
    #[arg(long, env = "BINANCE_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    #[command(flatten)]
    pub nats: NatsArgs,

    /// Address of /metrics (Prometheus) and /health while the backfill runs; `off` (the
    /// default: a one-shot job) disables it.
    #[arg(long, env = "METRICS_ADDR", default_value = "off")]
    pub metrics_addr: String,

    /// Publish acknowledgements outstanding at once; publishing waits when this many are in
    /// flight.
    #[arg(long, env = "BACKFILL_MAX_INFLIGHT", default_value_t = 20_000)]
    pub max_inflight: usize,

    /// Progress display: bars on a terminal and log lines otherwise (auto), always bars, always
    /// lines (plain), or only the final summary (quiet).
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// After publishing, wait until the Postgres sink has consumed everything (consumer lag 0),
    /// then verify the stored candles for the same symbols, timeframes and window
    /// (as `klinectl verify`; a --to before now is history, not checked for freshness) and
    /// print the report; the exit code is non-zero unless it is ok
    /// (or halted). Also records what the run learnt from the exchange, so verification counts
    /// it: exchange-side gaps, the first candle of a series listed inside the window, and the
    /// symbols' exchangeInfo statuses.
    #[arg(long)]
    pub verify: bool,

    /// Publishing waits while the sink's durable consumer (--verify-consumer) has more
    /// unconsumed events than this share of the KLINES stream's byte limit: the stream discards
    /// its oldest events when full, read or not, and a backfill from the archive publishes
    /// faster than a sink commits (0 turns the wait off).
    #[arg(long, env = "BACKFILL_MAX_SINK_LAG", default_value_t = 0.5, value_parser = parse_share)]
    pub max_sink_lag: f64,

    /// Durable consumer whose lag `--verify` waits on.
    #[arg(long, env = "VERIFY_CONSUMER", default_value = crate::verify::DEFAULT_VERIFY_CONSUMER)]
    pub verify_consumer: String,

    /// Longest wait for the sink to catch up before `--verify` gives up.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub verify_timeout: Duration,

    /// PostgreSQL that `--verify` reads.
    #[command(flatten)]
    pub db: DbArgs,
}

/// Where history comes from (`--source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceMode {
    /// The archive where published, REST for the rest.
    Auto,
    /// Archive files only.
    Archive,
    /// REST only.
    Rest,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Bars when stdout is a terminal, plain lines otherwise.
    Auto,
    /// Progress bars.
    Bars,
    /// A log line per series every few seconds.
    Plain,
    /// Completion lines and the summary only.
    Quiet,
    /// Nothing (for callers with their own report, such as the auditor).
    Silent,
}

use klinebus_schemas::list::{
    parse_interval_list as parse_intervals, parse_symbol_list as parse_symbols,
};
pub use klinebus_schemas::list::{IntervalList, SymbolList};

/// A share between 0 and 1.
fn parse_share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a share between 0 and 1 (0.5), got {s:?}")),
    }
}

/// RFC3339, `YYYY-MM-DDTHH:MM:SS` (UTC) or a UTC date `YYYY-MM-DD`, to epoch ms.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S") {
        return Ok(t.and_utc().timestamp_millis());
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis());
    }
    Err(format!(
        "expected RFC3339 (2025-06-04T12:00:00Z) or a date (2025-06-04), got {s:?}"
    ))
}

impl Config {
    /// The NATS connection options (secrets stay out of `Debug`).
    pub fn bus_options(&self) -> Result<BusOptions, SecretError> {
        self.nats.bus_options("kline-backfill")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use klinebus_schemas::Interval;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("kline-backfill").chain(args.iter().copied()))
    }

    #[test]
    fn parses_the_documented_command() {
        let c = parse(&[
            "--symbols",
            "BTCUSDT,ETHUSDT",
            "--timeframes",
            "15m,1h,4h,1d",
            "--days",
            "90",
        ])
        .unwrap();
        assert_eq!(c.symbols.0.len(), 2);
        assert_eq!(
            c.timeframes.0,
            vec![Interval::M15, Interval::H1, Interval::H4, Interval::D1]
        );
        assert_eq!(c.days, Some(90));
        assert_eq!(c.weight_budget, 4800);
        // A one-shot job: no endpoint unless asked for.
        assert_eq!(klinebus_svc::parse_metrics_addr(&c.metrics_addr), Ok(None));
    }

    #[test]
    fn rejects_bad_symbols_and_intervals_clearly() {
        let e = parse(&["--symbols", "btc.usdt", "--timeframes", "1m"]).unwrap_err();
        assert!(e.to_string().contains("btc.usdt"), "{e}");
        let e = parse(&["--symbols", "BTCUSDT", "--timeframes", "2m"]).unwrap_err();
        assert!(e.to_string().contains("unknown interval \"2m\""), "{e}");
        let e = parse(&["--symbols", ",", "--timeframes", "1m"]).unwrap_err();
        assert!(e.to_string().contains("no symbols"), "{e}");
        let e = parse(&[
            "--symbols",
            "BTCUSDT",
            "--timeframes",
            "1m",
            "--from",
            "yesterday",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("RFC3339"), "{e}");
    }

    #[test]
    fn times_and_secrets() {
        assert_eq!(parse_time("2025-06-04").unwrap(), 1_748_995_200_000);
        assert_eq!(
            parse_time("2025-06-04T12:00:00Z").unwrap(),
            1_749_038_400_000
        );
        assert_eq!(
            parse_time("2025-06-04T12:00:00").unwrap(),
            1_749_038_400_000
        );
        let c = parse(&[
            "--symbols",
            "BTCUSDT",
            "--timeframes",
            "1m",
            "--nats-password",
            "hunter2",
        ])
        .unwrap();
        assert!(!format!("{:?}", c.bus_options().unwrap()).contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
