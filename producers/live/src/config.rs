//! Command line and environment (a `.env` file is read first). Every `///` is `--help` text.
//! [`Config::settings`] turns it into the library's [`Settings`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use klinebus_binance::{
    DEFAULT_BUDGET, DEFAULT_CONNECT_BUDGET, DEFAULT_REST_URL, DEFAULT_WS_URL,
    MAX_STREAMS_PER_CONNECTION,
};
use klinebus_schemas::bus::BusOptions;
use klinebus_schemas::{Interval, Symbol};
use klinebus_svc::{NatsArgs, SecretError};

/// Streams live Binance klines into NATS JetStream: every WebSocket update (forming and closed)
/// on `klines.ws.binance.<SYMBOL>.<tf>`, candles missed during reconnects on `klines.repair.…`,
/// and, in polling mode or after repeated WebSocket failures, closed candles on `klines.poll.…`.
///
/// Polling periods: POLLING_INTERVAL_<tf> (seconds, e.g. POLLING_INTERVAL_1h=3600) overrides the
/// default of polling just after each candle close, for every configured timeframe.
///
/// Examples:
///   kline-live                                   (TRADING_PAIRS, TIMEFRAMES from env/.env)
///   kline-live --symbols BTCUSDT,ETHUSDT --timeframes 1m,1h --mode polling
#[derive(Debug, Clone, Parser)]
#[command(name = "kline-live", version, verbatim_doc_comment)]
pub struct Config {
    /// Symbols, comma-separated upper-case Binance names (BTCUSDT,ETHUSDT).
    #[arg(long, env = "TRADING_PAIRS", value_parser = parse_symbols)]
    pub symbols: SymbolList,

    /// Timeframes, comma-separated Binance interval names (case-sensitive: 1m is a minute, 1M a
    /// month).
    #[arg(long, env = "TIMEFRAMES", value_parser = parse_intervals)]
    pub timeframes: IntervalList,

    /// websocket: stream every update, repair gaps over REST, fall back to polling when the
    /// WebSocket keeps failing. polling: REST only, closed candles only.
    #[arg(long, env = "INGESTION_MODE", value_enum, ignore_case = true, default_value_t = Mode::Websocket)]
    pub mode: Mode,

    /// Binance WebSocket base URL (combined streams are opened at <url>/stream?streams=…).
    #[arg(long, env = "BINANCE_WS_URL", default_value = DEFAULT_WS_URL)]
    pub ws_url: String,

    /// Binance REST base URL (gap repair and polling).
    #[arg(long, env = "BINANCE_REST_URL", default_value = DEFAULT_REST_URL)]
    pub rest_url: String,

    /// REQUEST_WEIGHT per minute: requests wait once the IP has used this much in the minute, as
    /// Binance counts it for every process on the IP (it allows 6000).
    #[arg(long, env = "BINANCE_WEIGHT_BUDGET", default_value_t = DEFAULT_BUDGET)]
    pub weight_budget: u32,

    /// Timeout of one REST request or WebSocket connect (e.g. 10s).
    #[arg(long, env = "BINANCE_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Streams per WebSocket connection; more streams are sharded over several connections
    /// (Binance allows at most 1024).
    #[arg(long, env = "LIVE_STREAMS_PER_CONNECTION", default_value_t = MAX_STREAMS_PER_CONNECTION)]
    pub streams_per_connection: usize,

    /// A connection that delivers no kline for this long is treated as dead and replaced
    /// (Binance pushes every 2 s per stream).
    #[arg(long, env = "LIVE_WATCHDOG", default_value = "30s", value_parser = humantime::parse_duration)]
    pub watchdog: Duration,

    /// Replace each connection after this long, opening the new one before closing the old
    /// (Binance closes connections at 24 h). Connections rotate staggered: the shard numbered
    /// i of n first rotates i/n of a twelfth of this earlier, so rotations never coincide.
    #[arg(long, env = "LIVE_ROTATE_AFTER", default_value = "23h", value_parser = humantime::parse_duration)]
    pub rotate_after: Duration,

    /// WebSocket connection attempts (connects, reconnects, rotations) this process makes per
    /// 5 minutes, over all its connections. Binance allows 300 per IP: processes sharing an IP
    /// split that (the default leaves half for restarts and others).
    #[arg(long, env = "LIVE_WS_CONNECT_BUDGET", default_value_t = DEFAULT_CONNECT_BUDGET)]
    pub ws_connect_budget: u32,

    /// Consecutive WebSocket failures (refused connects, connections lost before any data)
    /// after which a connection's series are polled over REST until the WebSocket holds again.
    #[arg(long, env = "LIVE_FALLBACK_AFTER", default_value_t = 5)]
    pub fallback_after: u32,

    /// Shortest wait before a reconnect; doubles per failure, with jitter.
    #[arg(long, env = "LIVE_BACKOFF_MIN", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub backoff_min: Duration,

    /// Longest wait before a reconnect.
    #[arg(long, env = "LIVE_BACKOFF_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,

    /// In polling, how long after a candle's close (exchange time) to ask for it.
    #[arg(long, env = "LIVE_POLL_DELAY", default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll_delay: Duration,

    /// Closed candles published at start-up per series that the KLINES stream holds nothing of
    /// (history is kline-backfill's job). A series the stream knows resumes after its newest
    /// closed candle there, whichever producer stored it.
    #[arg(long, env = "LIVE_INITIAL_CANDLES", default_value_t = 1)]
    pub initial_candles: u32,

    /// Most closed candles one repair fetches per series (at start-up, after a reconnect or a
    /// NATS outage); older missing candles are logged, counted
    /// (klinebus_live_repair_skipped_candles_total) and left to `klinectl audit`. The default is
    /// about 3.5 days of 1m candles.
    #[arg(long, env = "LIVE_MAX_REPAIR_CANDLES", default_value_t = 5000)]
    pub max_repair_candles: u32,

    /// Events held in memory while NATS is unreachable. When full, forming updates are dropped
    /// first; closed candles only when none is left, and those are fetched again by REST repair.
    #[arg(long, env = "LIVE_MAX_BUFFERED", default_value_t = 100_000)]
    pub max_buffered: usize,

    /// A publish not acknowledged by JetStream within this time of being sent is retried.
    #[arg(long, env = "LIVE_ACK_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,

    /// On shutdown, how long to keep publishing what is buffered.
    #[arg(long, env = "LIVE_FLUSH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub flush_timeout: Duration,

    /// Address of /metrics (Prometheus) and /health; `off` disables it.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9102", value_parser = check_metrics_addr)]
    pub metrics_addr: String,

    #[command(flatten)]
    pub nats: NatsArgs,
}

/// How live data is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// WebSocket streams, REST repair, polling fallback.
    Websocket,
    /// REST polling only.
    Polling,
}

use klinebus_schemas::list::{
    parse_interval_list as parse_intervals, parse_symbol_list as parse_symbols,
};
pub use klinebus_schemas::list::{IntervalList, SymbolList};

/// What the library needs, without the process plumbing (tests build it directly).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Symbols.
    pub symbols: Vec<Symbol>,
    /// Timeframes.
    pub timeframes: Vec<Interval>,
    /// WebSocket or polling.
    pub mode: Mode,
    /// WebSocket base URL.
    pub ws_url: String,
    /// Streams per connection (1..=1024).
    pub streams_per_connection: usize,
    /// WebSocket connect timeout.
    pub connect_timeout: Duration,
    /// No kline for this long: the connection is replaced.
    pub watchdog: Duration,
    /// Proactive connection replacement.
    pub rotate_after: Duration,
    /// Connection attempts per 5 minutes (see `--ws-connect-budget`).
    pub ws_connect_budget: u32,
    /// Consecutive failures before polling takes over.
    pub fallback_after: u32,
    /// Reconnect backoff bounds.
    pub backoff_min: Duration,
    /// Reconnect backoff bounds.
    pub backoff_max: Duration,
    /// Poll period overrides per timeframe (`POLLING_INTERVAL_<tf>`); others poll after closes.
    pub poll_intervals: HashMap<Interval, Duration>,
    /// Delay after a close before polling for it.
    pub poll_delay: Duration,
    /// Closed candles published per series at start-up when the stream knows nothing of it.
    pub initial_candles: u32,
    /// Most closed candles one repair fetches per series.
    pub max_repair_candles: u32,
    /// Buffered events while NATS is away.
    pub max_buffered: usize,
    /// Publish ack deadline before a retry.
    pub ack_timeout: Duration,
    /// Shutdown flush deadline.
    pub flush_timeout: Duration,
}

impl Settings {
    /// Defaults for `symbols` × `timeframes` against `ws_url` (as the flags' defaults).
    pub fn new(symbols: Vec<Symbol>, timeframes: Vec<Interval>, ws_url: impl Into<String>) -> Self {
        Self {
            symbols,
            timeframes,
            mode: Mode::Websocket,
            ws_url: ws_url.into(),
            streams_per_connection: MAX_STREAMS_PER_CONNECTION,
            connect_timeout: Duration::from_secs(10),
            watchdog: Duration::from_secs(30),
            rotate_after: Duration::from_secs(23 * 3600),
            ws_connect_budget: DEFAULT_CONNECT_BUDGET,
            fallback_after: 5,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            poll_intervals: HashMap::new(),
            poll_delay: Duration::from_secs(2),
            initial_candles: 1,
            max_repair_candles: 5000,
            max_buffered: 100_000,
            ack_timeout: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(10),
        }
    }
}

fn check_metrics_addr(a: &str) -> Result<String, String> {
    klinebus_svc::parse_metrics_addr(a)
        .map(|_| a.to_owned())
        .map_err(|e| format!("{a:?}: {e} (host:port or off)"))
}

/// `POLLING_INTERVAL_<tf>` for each timeframe, read through `lookup` (the environment).
pub fn poll_overrides(
    timeframes: &[Interval],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<Interval, Duration>, String> {
    let mut out = HashMap::new();
    for iv in timeframes {
        let name = format!("POLLING_INTERVAL_{iv}");
        let Some(text) = lookup(&name) else { continue };
        let secs: f64 = text
            .trim()
            .parse()
            .map_err(|_| format!("{name}={text:?}: expected seconds, e.g. 3600"))?;
        if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
            return Err(format!(
                "{name}={text:?}: must be a positive number of seconds"
            ));
        }
        out.insert(*iv, Duration::from_secs_f64(secs));
    }
    Ok(out)
}

impl Config {
    /// The library settings (reads `POLLING_INTERVAL_<tf>` from the environment).
    pub fn settings(&self) -> Result<Settings, String> {
        let mut s = Settings::new(
            self.symbols.0.clone(),
            self.timeframes.0.clone(),
            self.ws_url.clone(),
        );
        s.mode = self.mode;
        s.streams_per_connection = self
            .streams_per_connection
            .clamp(1, MAX_STREAMS_PER_CONNECTION);
        s.connect_timeout = self.request_timeout;
        s.watchdog = self.watchdog;
        s.rotate_after = self.rotate_after;
        s.ws_connect_budget = self.ws_connect_budget.max(1);
        s.fallback_after = self.fallback_after.max(1);
        s.backoff_min = self.backoff_min;
        s.backoff_max = self.backoff_max.max(self.backoff_min);
        s.poll_intervals = poll_overrides(&self.timeframes.0, |k| std::env::var(k).ok())?;
        s.poll_delay = self.poll_delay;
        s.initial_candles = self.initial_candles;
        s.max_repair_candles = self.max_repair_candles.max(1);
        s.max_buffered = self.max_buffered.max(1);
        s.ack_timeout = self.ack_timeout;
        s.flush_timeout = self.flush_timeout;
        Ok(s)
    }

    /// Where /metrics and /health are served; `None` for `off`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        // Checked by clap when parsed.
        klinebus_svc::parse_metrics_addr(&self.metrics_addr)
            .ok()
            .flatten()
    }

    /// The NATS connection options (secrets stay out of `Debug`).
    pub fn bus_options(&self) -> Result<BusOptions, SecretError> {
        self.nats.bus_options("kline-live")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("kline-live").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_and_modes() {
        let c = parse(&["--symbols", "BTCUSDT,ETHUSDT", "--timeframes", "1m,1h"]).unwrap();
        assert_eq!(c.mode, Mode::Websocket);
        assert_eq!(c.ws_url, "wss://stream.binance.com:9443");
        assert_eq!(c.rest_url, "https://api.binance.com");
        assert_eq!(
            c.metrics_addr().map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9102")
        );
        let off = parse(&[
            "--symbols",
            "BTCUSDT",
            "--timeframes",
            "1m",
            "--metrics-addr",
            "off",
        ]);
        assert_eq!(off.unwrap().metrics_addr(), None);
        assert!(parse(&[
            "--symbols",
            "BTCUSDT",
            "--timeframes",
            "1m",
            "--metrics-addr",
            "x"
        ])
        .is_err());
        let s = c.settings().unwrap();
        assert_eq!(s.streams_per_connection, 1024);
        assert_eq!(s.rotate_after, Duration::from_secs(23 * 3600));
        let c = parse(&[
            "--symbols",
            "BTCUSDT",
            "--timeframes",
            "1m",
            "--mode",
            "polling",
        ])
        .unwrap();
        assert_eq!(c.mode, Mode::Polling);
        let c = parse(&[
            "--symbols",
            "BTCUSDT",
            "--timeframes",
            "1m",
            "--mode",
            "WEBSOCKET",
        ])
        .unwrap();
        assert_eq!(c.mode, Mode::Websocket);
        assert!(parse(&["--symbols", "BTCUSDT", "--timeframes", "2m"]).is_err());
        assert!(parse(&["--symbols", ",", "--timeframes", "1m"]).is_err());
    }

    #[test]
    fn polling_interval_overrides() {
        let env: HashMap<&str, &str> = [
            ("POLLING_INTERVAL_1h", "3600"),
            ("POLLING_INTERVAL_1M", "0.5"),
        ]
        .into();
        let tfs = [Interval::M1, Interval::H1, Interval::Mo1];
        let o = poll_overrides(&tfs, |k| env.get(k).map(|v| (*v).to_owned())).unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o[&Interval::H1], Duration::from_secs(3600));
        assert_eq!(o[&Interval::Mo1], Duration::from_millis(500));
        for bad in ["abc", "-1", "0"] {
            let e = poll_overrides(&tfs, |k| {
                (k == "POLLING_INTERVAL_1m").then(|| bad.to_owned())
            });
            assert!(e.unwrap_err().contains("POLLING_INTERVAL_1m"));
        }
    }

    #[test]
    fn secrets_stay_hidden() {
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
