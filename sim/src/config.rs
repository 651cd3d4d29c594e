//! Command-line / environment configuration. Every field's doc is its `--help` text.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::archive::{parse_archive_fault, ArchiveConfig, ArchiveFault};
use crate::market::Gap;
use crate::symbols::DEFAULT_SYMBOLS;

/// A Binance-compatible spot market-data exchange simulator (REST + WebSocket on one port).
#[derive(Clone, Debug, Parser)]
#[command(name = "binance-sim", version)]
pub struct Config {
    /// Address to listen on for REST and WebSocket.
    #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,

    /// Simulated clock speed: the clock runs N times faster than wall time (e.g. 600 = a
    /// minute every 100 ms).
    #[arg(long, env = "SIM_SPEED", default_value_t = 1.0, value_parser = parse_speed)]
    pub speed: f64,

    /// The simulated clock's value at start-up, RFC3339 (2025-06-04T12:00:00Z) or epoch ms.
    /// Default: the real time now.
    #[arg(long, env = "SIM_START_TIME", value_parser = parse_time)]
    pub start_time: Option<i64>,

    /// Seed of every generated figure: same seed, same candles.
    #[arg(long, env = "SIM_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Comma-separated upper-case symbols to serve. Known ones get realistic prices, tick and
    /// step sizes and listing dates; other names get generic parameters.
    #[arg(long, env = "SIM_SYMBOLS", value_delimiter = ',', default_value = DEFAULT_SYMBOLS)]
    pub symbols: Vec<String>,

    /// Override every symbol's listing time (RFC3339 or epoch ms): no candles before it.
    #[arg(long, env = "SIM_LISTED_SINCE", value_parser = parse_time)]
    pub listed_since: Option<i64>,

    /// REQUEST_WEIGHT budget per IP per wall-clock minute (Binance: 6000).
    #[arg(long, env = "SIM_WEIGHT_LIMIT", default_value_t = 6000)]
    pub weight_limit: u32,

    /// Disable weight limits and bans (weight headers are still sent). For benchmarks.
    #[arg(long, env = "SIM_NO_LIMITS")]
    pub no_limits: bool,

    /// How many requests an IP may send within one minute after exceeding the weight limit
    /// (each answered 429) before it is banned with 418.
    #[arg(long, env = "SIM_BAN_AFTER", default_value_t = 20)]
    pub ban_after: u32,

    /// Length of an IP's first ban in seconds; doubles per repeat offence, up to 259200 (3 days).
    #[arg(long, env = "SIM_BAN_SECONDS", default_value_t = 120)]
    pub ban_seconds: u64,

    /// Seconds between server pings on each WebSocket connection.
    #[arg(long, env = "SIM_WS_PING_SECS", default_value_t = 20)]
    pub ws_ping_secs: u64,

    /// Drop a WebSocket client that has not answered a ping (echoing its payload) within this
    /// many seconds.
    #[arg(long, env = "SIM_WS_PONG_TIMEOUT_SECS", default_value_t = 60)]
    pub ws_pong_timeout_secs: u64,

    /// Close every WebSocket connection this many seconds after it opened (Binance: 24 h).
    #[arg(long, env = "SIM_WS_MAX_LIFETIME_SECS", default_value_t = 86_400)]
    pub ws_max_lifetime_secs: u64,

    /// Wall milliseconds between pushes of a forming candle. Default: 2000 / speed, at least 100.
    #[arg(long, env = "SIM_WS_UPDATE_MS")]
    pub ws_update_ms: Option<u64>,

    /// WebSocket connection attempts allowed per IP per 5 minutes (Binance: 300).
    #[arg(long, env = "SIM_WS_CONNECT_LIMIT", default_value_t = 300)]
    pub ws_connect_limit: u32,

    /// Exchange-side gap at start-up, `SYMBOL:START..END` (SYMBOL `*` = all; times RFC3339 or
    /// epoch ms; no 1m candle opening in [START, END)). Repeatable.
    #[arg(long = "gap", env = "SIM_GAPS", value_delimiter = ';', value_parser = parse_gap)]
    pub gaps: Vec<Gap>,

    /// Refuse new WebSocket connections (HTTP 503 on upgrade) from start-up.
    #[arg(long, env = "SIM_REFUSE_WS")]
    pub refuse_ws: bool,

    /// Stall kline streams from start-up: connections stay open and answer pings, no klines.
    #[arg(long, env = "SIM_STALL_WS")]
    pub stall_ws: bool,

    /// Delay every REST response by this many milliseconds.
    #[arg(long, env = "SIM_DELAY_MS", default_value_t = 0)]
    pub delay_ms: u64,

    /// Answer the first N REST requests with a 5xx (see --fail-status).
    #[arg(long, env = "SIM_FAIL_NEXT", default_value_t = 0)]
    pub fail_next: u64,

    /// HTTP status used by --fail-next (500, 502, 503 or 504).
    #[arg(long, env = "SIM_FAIL_STATUS", default_value_t = 503)]
    pub fail_status: u16,

    /// Answer the first N REST requests with 429 and a Retry-After, as a throttle burst.
    #[arg(long, env = "SIM_THROTTLE_NEXT", default_value_t = 0)]
    pub throttle_next: u64,

    /// Kline archive (data.binance.vision's /data/spot/{monthly,daily}/klines/... on this port):
    /// a daily file of day D is published at D+1 00:00 UTC plus this lag on the sim clock (404
    /// before). E.g. 8h30m, 0s.
    #[arg(long, env = "SIM_ARCHIVE_DAILY_LAG", default_value = "8h30m", value_parser = parse_duration)]
    pub archive_daily_lag: Duration,

    /// Kline archive: a monthly file of month M is published on the 1st of M+1, 00:00 UTC, plus
    /// this lag on the sim clock (404 before). 3d and 1w files count it from their last
    /// candle's close when that lies past the period.
    #[arg(long, env = "SIM_ARCHIVE_MONTHLY_LAG", default_value = "3d", value_parser = parse_duration)]
    pub archive_monthly_lag: Duration,

    /// Kline archive: memory for built files (MiB), least recently used evicted past it. A month
    /// of 1m is about 3.4 MiB; 0 builds every request anew. `POST /_sim/archive/prewarm` builds
    /// files ahead of a benchmark.
    #[arg(long, env = "SIM_ARCHIVE_CACHE_MB", default_value_t = 1024)]
    pub archive_cache_mb: usize,

    /// Kline archive fault at start-up, FILE=KIND or FILE=KIND:N, FILE a file name
    /// (BTCUSDT-1m-2024-06.zip) or path. KIND: missing, bad_checksum, truncated_zip (N bytes
    /// kept, default half), missing_rows (N rows kept, default half), duplicate_rows (each row
    /// N times, default 3), wrong_values (N candles with another close, default 1). Repeatable.
    #[arg(long = "archive-fault", env = "SIM_ARCHIVE_FAULTS", value_delimiter = ';', value_parser = parse_archive_fault)]
    pub archive_faults: Vec<ArchiveFault>,
}

impl Default for Config {
    fn default() -> Self {
        Self::parse_from(["binance-sim"])
    }
}

impl Config {
    /// The archive's start-up settings.
    pub fn archive(&self) -> ArchiveConfig {
        ArchiveConfig {
            daily_lag: self.archive_daily_lag,
            monthly_lag: self.archive_monthly_lag,
            cache_bytes: self.archive_cache_mb.saturating_mul(1 << 20),
            faults: self.archive_faults.clone(),
        }
    }

    /// Effective wall interval between forming-candle pushes, in ms.
    pub fn ws_update_ms(&self) -> u64 {
        self.ws_update_ms
            .unwrap_or_else(|| (2000.0 / self.speed) as u64)
            .max(100)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration like 8h30m or 3d, got {s:?}: {e}"))
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("speed must be a positive number, got {s:?}")),
    }
}

/// RFC3339 or epoch milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("expected RFC3339 or epoch ms, got {s:?}: {e}"))
}

/// `SYMBOL:START..END`; the symbol ends at the first ':' so RFC3339 times keep theirs.
pub fn parse_gap(s: &str) -> Result<Gap, String> {
    let (sym, range) = s
        .split_once(':')
        .ok_or_else(|| format!("expected SYMBOL:START..END, got {s:?}"))?;
    let (a, b) = range
        .split_once("..")
        .ok_or_else(|| format!("expected START..END in {s:?}"))?;
    let (start_ms, end_ms) = (parse_time(a)?, parse_time(b)?);
    if end_ms <= start_ms {
        return Err(format!("gap end must be after its start in {s:?}"));
    }
    let symbol = (sym != "*" && !sym.eq_ignore_ascii_case("all")).then(|| sym.to_owned());
    Ok(Gap {
        symbol,
        start_ms,
        end_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags() {
        let c = Config::parse_from([
            "binance-sim",
            "--speed",
            "600",
            "--start-time",
            "2025-06-04T12:00:00Z",
            "--gap",
            "BTCUSDT:2025-06-04T12:00:00Z..1749042000000",
            "--gap",
            "*:0..60000",
        ]);
        assert_eq!(c.start_time, Some(1_749_038_400_000));
        assert_eq!(c.ws_update_ms(), 100);
        assert_eq!(c.gaps.len(), 2);
        assert_eq!(c.gaps[0].symbol.as_deref(), Some("BTCUSDT"));
        assert_eq!(c.gaps[0].end_ms, 1_749_042_000_000);
        assert_eq!(c.gaps[1].symbol, None);
        assert_eq!(Config::default().symbols.len(), 8);
        assert!(parse_gap("BTCUSDT:5..1").is_err());
        let c = Config::parse_from([
            "binance-sim",
            "--archive-daily-lag",
            "1h",
            "--archive-fault",
            "BTCUSDT-1m-2024-06.zip=missing",
            "--archive-fault",
            "BTCUSDT-1d-2024-06-01.zip=duplicate_rows:3",
        ]);
        assert_eq!(c.archive_daily_lag, Duration::from_secs(3600));
        assert_eq!(c.archive_faults.len(), 2);
        let d = Config::default();
        assert_eq!(d.archive_daily_lag, Duration::from_secs(8 * 3600 + 1800));
        assert_eq!(d.archive_monthly_lag, Duration::from_secs(3 * 86_400));
    }
}
