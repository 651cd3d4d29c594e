//! # kline-live: live Binance klines → `klines.{ws,poll,repair}.binance.<SYMBOL>.<tf>`
//!
//! - [`config`]: flags and environment ([`Config`]) and the library's [`Settings`].
//! - `feed`: WebSocket connections (sharded, watchdog, rotation, backoff, polling fallback).
//! - `poll`: REST polling just after candle closes (or every `POLLING_INTERVAL_<tf>`).
//! - `repair`: REST fetch of closed candles after the last one seen, newest page first (gap
//!   repair and polling); the process' repair queue, newest missing candles first, retried until
//!   it succeeds.
//! - `resume`: where each series left off, read from the `KLINES` stream at start-up.
//! - [`publish`]: the bounded buffer in front of JetStream ([`Publisher`]).
//! - [`series`]: the last closed candle seen per series ([`Tracker`]).
//! - [`run()`] for the binary, [`run_live`] for tests.
//!
//! Delivery: every closed candle carries `Nats-Msg-Id` (its candle key), whichever path
//! delivered it, so the overlaps between WebSocket, repair, polling and rotated connections are
//! server-side duplicates: each closed candle is stored once. Forming updates carry no id.
//! At start-up each series resumes from the newest closed candle the `KLINES` stream holds for
//! it (any source), and after every (re)connect the closed candles since the last one seen are
//! fetched over REST, so a restart or a disconnect leaves no missing candle (up to
//! `--max-repair-candles` per series; older holes are the auditor's). A repair that meets a REST
//! failure keeps its place and is retried with backoff until it succeeds. While NATS is away events wait in a
//! bounded buffer; closed candles dropped from it are fetched again by REST (see [`publish`]).
//! NATS unreachable at start-up is waited out too.

pub mod config;
mod feed;
mod poll;
pub mod publish;
mod repair;
mod resume;
pub mod series;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;

use async_nats::jetstream::Context;
use klinebus_binance::{ConnectBudget, RestClient, RestConfig, RetryPolicy, WeightLimiter};
use klinebus_schemas::bus;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{Config, Mode, Settings};
pub use publish::Publisher;
pub use series::Tracker;

/// Counters for tests and reports (the same figures go to Prometheus).
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Kline events read from WebSockets and queued.
    pub ws_events: AtomicU64,
    /// Closed candles queued by polling.
    pub polled: AtomicU64,
    /// Closed candles queued by gap repair.
    pub repaired: AtomicU64,
    /// Events acknowledged by JetStream.
    pub published: AtomicU64,
    /// Publishes retried (failed or unacknowledged).
    pub publish_retries: AtomicU64,
    /// Events dropped because the buffer was full.
    pub dropped: AtomicU64,
    /// Frames that were not usable kline events.
    pub malformed: AtomicU64,
    /// Connections lost, refused or replaced by the watchdog.
    pub reconnects: AtomicU64,
    /// WebSocket connection attempts (connects, reconnects, rotations).
    pub connect_attempts: AtomicU64,
    /// Attempts that had to wait for (or, rotating, were put off by) the connect budget.
    pub connect_waits: AtomicU64,
    /// Watchdog replacements.
    pub watchdog_trips: AtomicU64,
    /// Proactive rotations.
    pub rotations: AtomicU64,
    /// Switches to polling.
    pub fallbacks: AtomicU64,
    /// Connections currently in polling fallback.
    pub polling_shards: std::sync::atomic::AtomicUsize,
    /// Fired when a closed candle was dropped locally and must be fetched again.
    pub repair_wanted: Notify,
    /// Counts those requests, so a connection busy elsewhere when one fires still sees it.
    pub repair_requests: AtomicU64,
    /// Closed candles that repairs still have to fetch (`klinebus_live_repair_pending_candles`).
    pub repair_pending: AtomicI64,
}

impl LiveStats {
    pub(crate) fn add_repair_pending(&self, delta: i64) {
        if delta != 0 {
            let now = self.repair_pending.fetch_add(delta, Relaxed) + delta;
            metrics::gauge!("klinebus_live_repair_pending_candles").set(now as f64);
        }
    }
}

/// What every task shares.
pub(crate) struct Ctx {
    pub settings: Settings,
    pub rest: RestClient,
    pub publisher: Publisher,
    pub tracker: Arc<Tracker>,
    pub stats: Arc<LiveStats>,
    /// WebSocket connection attempts, shared by every shard.
    pub connects: ConnectBudget,
    /// Gap repairs of every connection, newest candles first.
    pub repairs: repair::Repairs,
    /// `klinebus_live_ws_messages_total`, taken once (it counts every frame).
    pub ws_messages: metrics::Counter,
    /// Ends repairs that are still retrying.
    pub shutdown: CancellationToken,
}

/// Why kline-live could not start (once running, it rides out outages).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// Flags that do not fit together.
    #[error("{0}")]
    Config(String),
    /// The telemetry endpoint could not start.
    #[error(transparent)]
    Telemetry(#[from] klinebus_svc::TelemetryError),
    /// A secret file could not be read.
    #[error(transparent)]
    Secret(#[from] klinebus_svc::SecretError),
    /// The REST client could not be built.
    #[error("the REST client")]
    Rest(#[source] klinebus_binance::BinanceError),
    /// NATS refused the connection for good (credentials, TLS, URL).
    #[error("connecting to NATS")]
    Connect(#[source] klinebus_schemas::bus::BusError),
    /// The streams could not be created or updated.
    #[error("creating the klinebus streams")]
    Streams(#[source] klinebus_schemas::bus::BusError),
}

/// The REST client a [`Config`] describes (with its own limiter).
pub fn rest_client(config: &Config) -> Result<RestClient, LiveError> {
    let rest = RestConfig {
        base_url: config.rest_url.clone(),
        timeout: config.request_timeout,
        retry: RetryPolicy::default(),
    };
    RestClient::new(rest, Arc::new(WeightLimiter::new(config.weight_budget)))
        .map_err(LiveError::Rest)
}

/// The whole service: telemetry, NATS, then [`run_live`] until `shutdown`; exits cleanly after
/// flushing what is buffered.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), LiveError> {
    let settings = config.settings().map_err(LiveError::Config)?;
    let health = klinebus_svc::Health::default();
    if let Some(addr) = config.metrics_addr() {
        let addr = klinebus_svc::serve_telemetry(addr, health.clone(), shutdown.clone()).await?;
        tracing::info!(%addr, "serving /metrics and /health");
    }
    let rest = rest_client(&config)?;
    let bus_options = config.bus_options()?;
    // NATS down at start-up is waited out (like an outage later on), not a crash loop;
    // refused credentials are not.
    let Some(client) = klinebus_svc::connect_bus(&bus_options, &shutdown, None)
        .await
        .map_err(LiveError::Connect)?
    else {
        return Ok(());
    };
    let js = bus::jetstream(client, 10_000);
    bus::ensure_streams(&js, &config.nats.retention())
        .await
        .map_err(LiveError::Streams)?;
    health.set_ready(true);
    tracing::info!(
        symbols = settings.symbols.len(),
        timeframes = settings.timeframes.len(),
        mode = ?settings.mode,
        "kline-live started"
    );
    run_live(settings, rest, js, Arc::new(LiveStats::default()), shutdown).await;
    health.set_ready(false);
    Ok(())
}

/// Streams `settings`' series into `js` until `shutdown`, then flushes the buffer (at most
/// `flush_timeout`). `stats` is updated as it goes.
pub async fn run_live(
    settings: Settings,
    rest: RestClient,
    js: Context,
    stats: Arc<LiveStats>,
    shutdown: CancellationToken,
) {
    let tracker = Arc::new(Tracker::default());
    let series: Vec<_> = settings
        .symbols
        .iter()
        .flat_map(|s| settings.timeframes.iter().map(move |i| (s.clone(), *i)))
        .collect();
    resume::seed(&js, &tracker, &series, &shutdown).await;
    let publisher = Publisher::new(
        settings.max_buffered,
        settings.ack_timeout,
        stats.clone(),
        tracker.clone(),
    );
    let publishing = tokio::spawn(publisher.clone().run(js));
    let mode = settings.mode;
    let per_conn = settings.streams_per_connection;
    let connects = ConnectBudget::new(settings.ws_connect_budget);
    let ctx = Arc::new(Ctx {
        settings,
        connects,
        repairs: repair::Repairs::default(),
        ws_messages: metrics::counter!("klinebus_live_ws_messages_total"),
        rest,
        publisher: publisher.clone(),
        tracker,
        stats,
        shutdown: shutdown.clone(),
    });
    // Detached: a worker may be waiting for room in the buffer while NATS is away, and shutdown
    // must not wait for that.
    for _ in 0..repair::REPAIR_WORKERS {
        tokio::spawn(repair::repair_worker(ctx.clone()));
    }
    let mut tasks = JoinSet::new();
    match mode {
        Mode::Websocket => {
            metrics::gauge!("klinebus_live_mode").set(0.0);
            let shards = klinebus_binance::ws::shard(&series, per_conn);
            let n = shards.len();
            for (id, shard) in shards.into_iter().enumerate() {
                let place = feed::Place { id, of: n };
                tasks.spawn(feed::run_shard(ctx.clone(), place, shard, shutdown.clone()));
            }
        }
        Mode::Polling => {
            metrics::gauge!("klinebus_live_mode").set(1.0);
            tasks.spawn(poll::run_poller(ctx.clone(), series, shutdown.clone()));
        }
    }
    while tasks.join_next().await.is_some() {}
    publisher.close();
    let left = publisher.len();
    tracing::info!(buffered = left, "flushing publishes");
    match tokio::time::timeout(ctx.settings.flush_timeout, publishing).await {
        Ok(_) => tracing::info!("all publishes flushed"),
        Err(_) => tracing::warn!(
            lost = publisher.len(),
            "flush deadline passed; unpublished events dropped (closed candles can be refetched \
             with kline-backfill)"
        ),
    }
}
