//! The `kline-signals` service: closed-candle events in, signals out.
//!
//! - [`config`]: flags and environment (`kline-signals --help`).
//! - [`store`]: warming history from `ohlcv_candles`, upserting `signals`, the ownership lock.
//! - [`engine`]: per-series [`SeriesState`](crate::SeriesState)s, events applied in order, a
//!   batch at a time.
//! - [`run`]: wiring, and the [`Handler`] of the shared pull loop around the [`Engine`].
//!
//! ## Delivery and ordering
//!
//! The durable pull consumer (`signals` on the CANDLES stream, filter `candles.closed.>`) runs
//! on [`klinebus_consume::Consumer`] like every klinebus sink (dead letters to `dlq.<consumer>`,
//! progress acks, reconnects), with the closed-candle decoder
//! ([`klinebus_consume::decode_closed`]) and [`Retry::InOrder`]: a nak-the-batch retry would
//! let later candles of a series overtake an earlier one. Messages are handled in stream
//! order, in batches of what the pull delivers within 10 ms (at most `--batch-size`; with one
//! un-acked message allowed, each message at once): the events are applied in order to copies
//! of their series' states, ONE statement
//! upserts all resulting rows, all signal events are published and their stream acks awaited,
//! and only then are the new states kept and the messages acked, in order. A retryable failure
//! (database, publish) retries the *same* batch in place with a growing pause (keeping its
//! messages with in-progress acks) from the states before it, so nothing overtakes it and the
//! retry gives exactly the same rows and events (identical rows are left alone; republished
//! events carry the same `Nats-Msg-Id`). On shutdown, delivered but unprocessed messages are
//! naked in order.
//!
//! The server keeps that order too. With `max_ack_pending` 1 (flag `--max-ack-pending`, the
//! default) a message that was naked or whose process died is redelivered before anything
//! newer is delivered, but each batch is one message. Larger values let batches fill (much
//! faster replays, see `signals-bench replay`); what they could reorder is only a dead owner's
//! un-acked messages, which the server would redeliver after the ack wait behind newer ones. So
//! the new owner (it holds the lock, see below) restarts the durable at its ack floor when it
//! finds un-acked messages at start-up: they come first, in stream order, and whatever after
//! the floor was already processed is recomputed to identical rows and deduplicated events.
//!
//! Indicator state needs each series in order, so there must be ONE owner: at start the
//! service takes the PostgreSQL advisory lock `hashtext('kline-signals/<consumer>')` on a
//! dedicated connection. A second instance logs that it is waiting and takes over when the
//! first one stops. If the lock's connection is lost (the database restarted or failed over),
//! consuming stops (the batch in hand finished, the rest naked in order) until the lock is
//! taken again, then resumes from the durable with a fresh engine, in the same process.
//!
//! A message carries one or more closed candles of one series
//! ([`ClosedCandles`]: one for a live candle, up to 500 after a backfill's flush); its candles
//! are events of the batch, in order, and the message is acked once all of them are processed.
//!
//! ## Per event
//!
//! - open time ≤ the series' last one → `Replay`, acked; except that a candle older than the
//!   series' run while the run is shorter than `--warm-candles`, when the table now holds the
//!   candle just before the run (the hole is filled), makes the series **recomputed** from the
//!   table (one read, at most `--max-recompute` candles, once per series and batch), and a
//!   late live candle (`ws`/`poll`/`repair`) below the series' floor lowers the floor (and is
//!   recomputed if it was applied as history). Every candle of a recompute from the floor on
//!   without a stored signal gets one; published signals are final. Details:
//!   `sinks/signals/README.md`.
//! - new series, or a candle that does not follow the last one (a gap in the events) → the
//!   series is rebuilt from the `--warm-candles` stored closed candles before it (index range
//!   scan), then the event is applied. A gap that is also in the table resets the series: the
//!   outcome is `InsufficientData` until enough consecutive candles have followed or the hole
//!   is filled. While its run is shorter than `--warm-candles` the series remembers the
//!   oldest candle it still owes a signal (where such a hole begins, or one that got
//!   `InsufficientData`): the next gap rebuilds from there, a recompute reaches back there, and
//!   an in-order candle rebuilds from there once the table holds the candle before the run, so
//!   a hole's candles (and the ones around it) get their signals even when they were committed
//!   after the next ones were announced and are announced only after a later rebuild, or never.
//! - `Signal` → upsert into `signals` (`details` = the report as JSON), then publish the same
//!   JSON on `signals.<venue>.<symbol>.<interval>` (`Nats-Msg-Id` =
//!   `<venue>:<symbol>:<interval>:<open_time>`, header `Klinebus-Schema: signal/1`,
//!   `Content-Type: application/json`), then ack (per batch as above).
//! - `InsufficientData` → counted (`klinebus_signals_outcomes_total{outcome="insufficient_data"}`)
//!   and logged; stored with action `insufficient_data` only with `--store-insufficient`.
//!
//! Replaying the events (`--replay-from all`, or after deleting the rows) recomputes the same
//! signals: the upsert leaves identical rows untouched and the stream drops duplicate ids
//! within its duplicate window.

pub mod config;
pub mod engine;
pub mod store;

use std::time::Duration;

use async_nats::jetstream::{Context, Message};
use klinebus_consume::{
    decode_closed, ConsumeOptions, Consumer, Delivered, Handler, HandlerError, Poison, Retry,
    StartFrom,
};
use klinebus_schemas::bus::{self, BusOptions};
use klinebus_schemas::streams::{
    ConsumerSpec, Retention, CANDLES_STREAM, DLQ_STREAM, SIGNALS_STREAM,
};
use klinebus_schemas::KlineEvent;
use klinebus_svc::Health;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use engine::{Engine, EngineError};
use store::OwnerLock;

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A secret file could not be read.
    #[error(transparent)]
    Secret(#[from] klinebus_svc::SecretError),
    /// `--metrics-addr` is not an address.
    #[error("--metrics-addr {0:?}")]
    MetricsAddr(String, #[source] std::net::AddrParseError),
    /// The strategy config file is unusable.
    #[error(transparent)]
    Strategy(#[from] crate::ConfigError),
    /// The telemetry endpoint could not start.
    #[error(transparent)]
    Telemetry(#[from] klinebus_svc::TelemetryError),
    /// NATS trouble at start-up.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// PostgreSQL refused the connection for good (credentials, URL).
    #[error(transparent)]
    Db(#[from] klinebus_svc::db::DbError),
    /// The streams could not be created.
    #[error("creating the klinebus streams")]
    Streams(#[source] bus::BusError),
    /// Migrations failed.
    #[error("migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The pull loop stopped: the consumer could not be prepared, or an event failed in a way
    /// retrying cannot fix.
    #[error(transparent)]
    Consume(#[from] klinebus_consume::ConsumeError),
}

/// NATS connection options from the config.
pub fn bus_options(c: &Config) -> Result<BusOptions, ServiceError> {
    c.nats
        .bus_options(&format!("kline-signals/{}", c.consumer))
        .map_err(ServiceError::Secret)
}

/// How long a batch waits for more messages after its first one (a lone live candle waits
/// that long at most; a replay gets full batches).
const BATCH_LINGER: Duration = Duration::from_millis(10);

/// How often the ownership lock's connection is checked while consuming.
const LOCK_CHECK: Duration = Duration::from_secs(1);

/// The durable consumer on the CANDLES stream (`--max-ack-pending`, default 1: the server
/// delivers the next message only after the previous one was acked, so order survives
/// redeliveries), retried in order.
pub fn consume_options(c: &Config) -> ConsumeOptions {
    let spec = ConsumerSpec {
        stream: CANDLES_STREAM.into(),
        durable: c.consumer.clone(),
        filter_subject: c.filter_subject.clone(),
        ack_wait: c.ack_wait(),
        max_ack_pending: i64::from(c.max_ack_pending),
    };
    let mut o = ConsumeOptions::new(spec);
    o.batch_size = c.batch_size as usize;
    o.flush_interval = BATCH_LINGER;
    o.idle_gap = BATCH_LINGER;
    o.retry = Retry::InOrder;
    o.start = c.replay_from.clone().unwrap_or(StartFrom::Resume);
    o
}

/// Sleeps `d` unless shutdown comes first; false if it did.
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Creates the streams only if one this service uses is missing.
async fn check_streams(js: &Context, retention: &Retention) -> Result<(), ServiceError> {
    for name in [CANDLES_STREAM, SIGNALS_STREAM, DLQ_STREAM] {
        if js.get_stream(name).await.is_err() {
            tracing::info!(
                stream = name,
                "stream missing; creating the klinebus streams"
            );
            return bus::ensure_streams(js, retention)
                .await
                .map_err(ServiceError::Streams);
        }
    }
    Ok(())
}

/// Waits for the ownership lock, taken on a connection of `pool` (`None` if shutdown comes
/// first).
async fn acquire_lock(
    config: &Config,
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> Option<OwnerLock> {
    let mut warned = false;
    loop {
        match OwnerLock::try_acquire_from(pool, &config.consumer).await {
            Ok(Some(lock)) => {
                tracing::info!(consumer = %config.consumer, "ownership lock taken");
                return Some(lock);
            }
            Ok(None) => {
                if !warned {
                    tracing::warn!(consumer = %config.consumer,
                        "another kline-signals instance owns consumer {:?} (PostgreSQL advisory \
                         lock); signals need one instance per consumer — waiting until it stops",
                        config.consumer);
                    warned = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot take the ownership lock yet"),
        }
        if !pause(Duration::from_secs(2), shutdown).await {
            return None;
        }
    }
}

/// Checks the ownership lock's connection every [`LOCK_CHECK`] until `stop` fires; if it is
/// lost, fires `stop` (the pull loop finishes its batch and naks the rest in order) and
/// returns why.
async fn watch_lock(lock: &mut OwnerLock, stop: &CancellationToken) -> Option<sqlx::Error> {
    while pause(LOCK_CHECK, stop).await {
        if let Err(e) = lock.check().await {
            tracing::error!(error = %e, "ownership lock lost; consuming stops until it is taken again");
            stop.cancel();
            return Some(e);
        }
    }
    None
}

/// Runs the service until `shutdown` fires (the pulled batch is finished and acked) and returns
/// `Ok(())`; returns an error only for what retrying cannot fix.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServiceError> {
    tracing::info!(config = ?config, "starting kline-signals");
    let strategy = match &config.config {
        Some(path) => crate::StrategyConfig::load(path)?,
        None => crate::StrategyConfig::default(),
    };
    let health = Health::default();
    if let Some(addr) = config
        .metrics_addr()
        .map_err(|e| ServiceError::MetricsAddr(config.metrics_addr.clone(), e))?
    {
        let bound = klinebus_svc::serve_telemetry(addr, health.clone(), shutdown.clone()).await?;
        tracing::info!(%bound, "serving /metrics and /health");
    }
    let opts = bus_options(&config)?;
    // Read up front: a missing URL file stops the service, it is not retried.
    config.db.url()?;
    let Some(client) = klinebus_svc::connect_bus(&opts, &shutdown, None).await? else {
        return Ok(());
    };
    let js = bus::jetstream(client, 1024);
    check_streams(&js, &config.nats.retention()).await?;
    let max = config.max_connections.max(1);
    let Some(pool) = config
        .db
        .connect_waiting(
            PgPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(5)),
            &shutdown,
        )
        .await?
    else {
        return Ok(());
    };
    if !config.no_migrate {
        klinebus_migrations::run(&pool).await?;
        tracing::info!("migrations applied");
    }
    let lookback = crate::lookback(&strategy);
    let mut start = consume_options(&config).start;
    let mut series = 0;
    // A lost lock (its connection died: the database restarted or failed over) stops
    // consuming; the lock is taken again, on the pool's current host, and consuming resumes
    // with a fresh engine (another owner may have written meanwhile), without a restart.
    let result = loop {
        let Some(mut lock) = acquire_lock(&config, &pool, &shutdown).await else {
            break Ok(());
        };
        health.set_ready(true);
        let mut engine = Engine::new(
            strategy.clone(),
            pool.clone(),
            Some(js.clone()),
            config.warm_candles as usize,
            config.store_insufficient,
        )
        .with_max_recompute(config.max_recompute as usize);
        tracing::info!(consumer = %config.consumer, filter = %config.filter_subject,
            lookback, "consuming");
        let mut opts = consume_options(&config);
        // A replay is asked for once, at start; later rounds resume.
        opts.start = std::mem::replace(&mut start, StartFrom::Resume);
        if let Some(from) = resume_at_ack_floor(&js, &opts).await {
            opts.start = from;
        }
        let consumer = Consumer::new(js.clone(), opts);
        let stop = shutdown.child_token();
        let consume = async {
            let result = consumer.run(&mut engine, stop.clone()).await;
            // Ends the lock watch too.
            stop.cancel();
            result
        };
        let (result, lost) = tokio::join!(consume, watch_lock(&mut lock, &stop));
        health.set_ready(false);
        lock.release().await;
        series = engine.series();
        if result.is_err() || lost.is_none() || shutdown.is_cancelled() {
            break result;
        }
    };
    pool.close().await;
    tracing::info!(series, "kline-signals stopped");
    Ok(result?)
}

/// With `--max-ack-pending` > 1 a previous owner that died (or lost its lock) can leave
/// delivered, un-acked messages behind; the server would redeliver them only after the ack wait,
/// after newer messages of the same series. As the one owner (the lock is held), restart the
/// durable at its ack floor instead, so they come first and in stream order (anything after the
/// floor that was processed already is recomputed to identical rows and deduplicated events).
async fn resume_at_ack_floor(js: &Context, opts: &ConsumeOptions) -> Option<StartFrom> {
    if !matches!(opts.start, StartFrom::Resume) {
        return None;
    }
    let stream = js.get_stream(&opts.spec.stream).await.ok()?;
    let info = stream.consumer_info(&opts.spec.durable).await.ok()?;
    if info.config.max_ack_pending == 1 || info.num_ack_pending == 0 {
        return None;
    }
    let from = info.ack_floor.stream_sequence + 1;
    tracing::warn!(durable = %opts.spec.durable, un_acked = info.num_ack_pending, from,
        "a previous owner left un-acked messages; restarting the consumer at its ack floor");
    Some(StartFrom::Sequence(from))
}

/// The engine as a sink of the shared pull loop: a message is the closed candles of one
/// series; a batch is processed as one ([`Engine::process_batch`]), retried in place as a
/// whole until it succeeds; a message with an unusable candle is dead-lettered afterwards (its
/// other candles were processed all the same).
impl Handler for Engine {
    type Item = Vec<KlineEvent>;
    /// The messages with unusable candles.
    type Committed = Vec<(usize, Poison)>;

    fn decode(&self, msg: &Message) -> Result<Vec<KlineEvent>, Poison> {
        decode_closed(msg.subject.as_str(), msg.headers.as_ref(), &msg.payload)
    }

    async fn handle(
        &mut self,
        batch: &[Delivered<Vec<KlineEvent>>],
    ) -> Result<Self::Committed, HandlerError> {
        metrics::counter!("klinebus_signals_messages_total").increment(batch.len() as u64);
        let events: Vec<KlineEvent> = batch.iter().flat_map(|d| d.event.iter().cloned()).collect();
        let results = self.process_batch(&events).await.map_err(|e| {
            if e.is_retryable() {
                HandlerError::Retryable(Box::new(e))
            } else {
                HandlerError::Fatal(Box::new(e))
            }
        })?;
        let mut results = results.into_iter();
        let mut rejected = Vec::new();
        for (i, d) in batch.iter().enumerate() {
            let unusable: Vec<String> = results
                .by_ref()
                .take(d.event.len())
                .filter_map(|r| r.err().map(|e| e.to_string()))
                .collect();
            if !unusable.is_empty() {
                rejected.push((i, Poison::Invalid(unusable.join("; "))));
            }
        }
        Ok(rejected)
    }

    fn rejected(&self, committed: &mut Self::Committed) -> Vec<(usize, Poison)> {
        std::mem::take(committed)
    }
}
