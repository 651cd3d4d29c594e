//! The `kline-signals` service: closed-candle events in, signals out.
//!
//! - [`config`]: flags and environment (`kline-signals --help`).
//! - [`store`]: warming history from `ohlcv_candles`, upserting `signals`, the ownership lock.
//! - [`engine`]: per-series [`SeriesState`](crate::SeriesState)s, events applied in order, a
//!   batch at a time.
//! - [`run`]: wiring and the pull loop.
//!
//! ## Delivery and ordering
//!
//! The durable pull consumer (`signals` on the CANDLES stream, filter `candles.closed.>`) is
//! prepared with [`klinebus_consume::Consumer::prepare`] and dead letters go through
//! [`klinebus_consume::dlq`], like every klinebus sink. The batch loop of
//! [`klinebus_consume::Consumer::run`] is not used: its decoder accepts only producer subjects
//! (`klines.…`), and its nak-the-batch retry would let later candles of a series overtake an
//! earlier one. Instead messages are handled in stream order, in batches of what one pull has
//! already delivered (at most `--batch-size`; a lone live candle is never held back waiting
//! for more): the events are applied in order to copies of their series' states, ONE statement
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
//! first one stops; if the lock's connection is lost, the service stops with an error.
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
//!   is filled.
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

use async_nats::jetstream::{self, AckKind, Context};
use futures::{FutureExt, StreamExt};
use klinebus_consume::{Backoff, ConsumeOptions, Consumer, StartFrom};
use klinebus_schemas::bus::{self, BusOptions};
use klinebus_schemas::closed::CLOSED_SCHEMA_VERSION;
use klinebus_schemas::codec::{self, SCHEMA_HEADER};
use klinebus_schemas::streams::{
    ConsumerSpec, Retention, CANDLES_STREAM, DLQ_STREAM, SIGNALS_STREAM,
};
use klinebus_schemas::{subjects, ClosedCandles, KlineEvent};
use klinebus_svc::Health;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

pub use config::SinkConfig;
pub use engine::{Engine, EngineError};
use store::OwnerLock;

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A flag value is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The strategy config file is unusable.
    #[error(transparent)]
    Strategy(#[from] crate::ConfigError),
    /// The telemetry endpoint could not start.
    #[error(transparent)]
    Telemetry(#[from] klinebus_svc::TelemetryError),
    /// NATS trouble at start-up.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// A stream could not be checked.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The durable consumer could not be prepared.
    #[error(transparent)]
    Consume(#[from] klinebus_consume::ConsumeError),
    /// The ownership lock was lost (its connection died): another instance may take over.
    #[error("lost the ownership lock: {0}")]
    LockLost(String),
    /// An event failed in a way retrying cannot fix.
    #[error("{0}")]
    Fatal(String),
}

/// NATS connection options from the config.
pub fn bus_options(c: &SinkConfig) -> Result<BusOptions, ServiceError> {
    c.nats
        .bus_options(&format!("kline-signals/{}", c.consumer))
        .map_err(|e| ServiceError::Config(e.to_string()))
}

/// The durable consumer on the CANDLES stream (`--max-ack-pending`, default 1: the server
/// delivers the next message only after the previous one was acked, so order survives
/// redeliveries).
pub fn consume_options(c: &SinkConfig) -> ConsumeOptions {
    let spec = ConsumerSpec {
        stream: CANDLES_STREAM.into(),
        durable: c.consumer.clone(),
        filter_subject: c.filter_subject.clone(),
        ack_wait: c.ack_wait(),
        max_ack_pending: i64::from(c.max_ack_pending),
    };
    let mut o = ConsumeOptions::new(spec);
    o.batch_size = c.batch_size as usize;
    o.start = c.replay_from.clone().unwrap_or(StartFrom::Resume);
    o
}

/// Retries `f` with a growing pause until it succeeds or `shutdown` fires (`None`).
async fn until_ok<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                let d = backoff.fail();
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "cannot reach {what} yet");
                if !pause(d, shutdown).await {
                    return None;
                }
            }
        }
    }
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
                .map_err(|e| ServiceError::JetStream(e.to_string()));
        }
    }
    Ok(())
}

/// Waits for the ownership lock (`None` if shutdown comes first).
async fn acquire_lock(
    config: &SinkConfig,
    db_url: &str,
    shutdown: &CancellationToken,
) -> Option<OwnerLock> {
    let mut warned = false;
    loop {
        match OwnerLock::try_acquire(db_url, &config.consumer).await {
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

/// Runs the service until `shutdown` fires (the pulled batch is finished and acked) and returns
/// `Ok(())`; returns an error only for what retrying cannot fix.
pub async fn run(config: SinkConfig, shutdown: CancellationToken) -> Result<(), ServiceError> {
    tracing::info!(config = ?config, "starting kline-signals");
    let strategy = match &config.config {
        Some(path) => crate::Config::load(path)?,
        None => crate::Config::default(),
    };
    let health = Health::default();
    if let Some(addr) = config
        .metrics_addr()
        .map_err(|e| ServiceError::Config(format!("--metrics-addr: {e}")))?
    {
        let bound = klinebus_svc::serve_telemetry(addr, health.clone(), shutdown.clone()).await?;
        tracing::info!(%bound, "serving /metrics and /health");
    }
    let opts = bus_options(&config)?;
    let db_url = config
        .db
        .url()
        .map_err(|e| ServiceError::Config(e.to_string()))?;
    let Some(client) = until_ok("NATS", &shutdown, || bus::connect(&opts)).await else {
        return Ok(());
    };
    let js = bus::jetstream(client, 1024);
    check_streams(&js, &config.nats.retention()).await?;
    let max = config.max_connections.max(1);
    let Some(pool) = until_ok("PostgreSQL", &shutdown, || {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&db_url)
    })
    .await
    else {
        return Ok(());
    };
    if !config.no_migrate {
        klinebus_migrations::run(&pool).await?;
        tracing::info!("migrations applied");
    }
    let Some(mut lock) = acquire_lock(&config, &db_url, &shutdown).await else {
        pool.close().await;
        return Ok(());
    };
    health.set_ready(true);
    let lookback = crate::lookback(&strategy);
    let mut engine = Engine::new(
        strategy,
        pool.clone(),
        Some(js.clone()),
        config.warm_candles as usize,
        config.store_insufficient,
    )
    .with_max_recompute(config.max_recompute as usize);
    tracing::info!(consumer = %config.consumer, filter = %config.filter_subject,
        lookback, "consuming");
    let result = consume(
        &js,
        &consume_options(&config),
        &mut engine,
        &mut lock,
        &shutdown,
    )
    .await;
    klinebus_consume::flush_acks(&js.client()).await;
    health.set_ready(false);
    lock.release().await;
    pool.close().await;
    tracing::info!(series = engine.series(), "kline-signals stopped");
    result
}

/// What to do after a message.
enum Flow {
    Next,
    Stop,
}

/// How long a batch waits for more messages after its first one.
const BATCH_LINGER: Duration = Duration::from_millis(10);

/// How often the ownership lock's connection is checked while consuming.
const LOCK_CHECK: Duration = Duration::from_secs(1);

/// The pull loop: batches of at most `batch_size`, each message handled in order.
async fn consume(
    js: &Context,
    opts: &ConsumeOptions,
    engine: &mut Engine,
    lock: &mut OwnerLock,
    shutdown: &CancellationToken,
) -> Result<(), ServiceError> {
    let consumer = Consumer::new(js.clone(), opts.clone());
    let start = resume_at_ack_floor(js, opts)
        .await
        .unwrap_or_else(|| opts.start.clone());
    let mut pull = consumer.prepare(&start).await?;
    let durable = opts.spec.durable.as_str();
    let mut stream_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        lock.check()
            .await
            .map_err(|e| ServiceError::LockLost(e.to_string()))?;
        // A continuous pull: the next pull request goes out while a batch is being processed,
        // so batches can fill (the server still delivers at most --max-ack-pending un-acked).
        let stream = pull
            .stream()
            .max_messages_per_batch(opts.batch_size)
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await;
        // Lingering for more only makes sense when the server may deliver more than one
        // un-acked message (the consumer's setting, which may predate --max-ack-pending).
        let linger_for = if pull.cached_info().config.max_ack_pending != 1 {
            BATCH_LINGER
        } else {
            Duration::ZERO
        };
        let mut next_check = tokio::time::Instant::now() + LOCK_CHECK;
        let mut messages = match stream {
            Ok(m) => m,
            Err(e) => {
                metrics::counter!("klinebus_signals_errors_total", "kind" => "pull").increment(1);
                tracing::warn!(error = %e, "cannot pull; retrying");
                if !pause(stream_backoff.fail(), shutdown).await {
                    break;
                }
                if let Ok(c) = consumer.prepare(&StartFrom::Resume).await {
                    pull = c;
                }
                continue;
            }
        };
        loop {
            // Stop waiting for more on shutdown.
            let next = tokio::select! {
                biased;
                m = messages.next() => m,
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next_check) => {
                    lock.check()
                        .await
                        .map_err(|e| ServiceError::LockLost(e.to_string()))?;
                    next_check = tokio::time::Instant::now() + LOCK_CHECK;
                    continue;
                }
            };
            let m = match next {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    metrics::counter!("klinebus_signals_errors_total", "kind" => "pull")
                        .increment(1);
                    tracing::warn!(error = %e, "pull error; pulling again");
                    pause(stream_backoff.fail(), shutdown).await;
                    break;
                }
            };
            stream_backoff.reset();
            // What else arrives within BATCH_LINGER goes into the same batch (a lone live
            // candle waits that long at most; a replay gets full batches). Without lingering
            // (max_ack_pending 1) only what is already here, i.e. nothing.
            let mut chunk = vec![m];
            let mut pull_again = false;
            let linger = tokio::time::Instant::now() + linger_for;
            while chunk.len() < opts.batch_size {
                match tokio::time::timeout_at(linger, messages.next()).await.ok() {
                    Some(Some(Ok(m))) => chunk.push(m),
                    Some(Some(Err(e))) => {
                        metrics::counter!("klinebus_signals_errors_total", "kind" => "pull")
                            .increment(1);
                        tracing::warn!(error = %e, "pull error; pulling again");
                        pull_again = true;
                        break;
                    }
                    Some(None) => {
                        pull_again = true;
                        break;
                    }
                    None => break,
                }
            }
            if let Flow::Stop = handle_batch(js, durable, engine, &chunk, shutdown).await? {
                nak_rest(&mut messages).await;
                return Ok(());
            }
            if pull_again {
                break;
            }
            if tokio::time::Instant::now() >= next_check {
                lock.check()
                    .await
                    .map_err(|e| ServiceError::LockLost(e.to_string()))?;
                next_check = tokio::time::Instant::now() + LOCK_CHECK;
            }
        }
        if shutdown.is_cancelled() {
            nak_rest(&mut messages).await;
        }
    }
    Ok(())
}

/// On shutdown: naks what this pull already delivered but was not processed, in stream order,
/// so that the next owner gets it before anything newer.
async fn nak_rest<E>(
    messages: &mut (impl futures::Stream<Item = Result<jetstream::Message, E>> + Unpin),
) {
    while let Some(Some(Ok(m))) = messages.next().now_or_never() {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
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

/// Decodes a `candles.closed.<venue>.<symbol>.<interval>` message into its closed candles, in
/// order: a [`ClosedCandles`] payload (header `Klinebus-Schema: closed/1`, what kline-pg-sink
/// publishes) or a single `KlineEvent` (header `kline/1` or none); every candle valid and
/// closed, all of the subject's series.
pub fn decode_closed(
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<Vec<KlineEvent>, String> {
    let version = headers
        .and_then(|h| h.get(SCHEMA_HEADER))
        .map(|v| v.as_str());
    let batch = if version == Some(CLOSED_SCHEMA_VERSION) {
        codec::decode::<ClosedCandles>(payload).map_err(|e| format!("undecodable: {e}"))?
    } else {
        codec::check_version(version).map_err(|e| format!("version: {e}"))?;
        let event: KlineEvent = codec::decode(payload).map_err(|e| format!("undecodable: {e}"))?;
        ClosedCandles {
            candles: vec![event],
        }
    };
    batch.validate().map_err(|e| format!("invalid: {e}"))?;
    let first = &batch.candles[0];
    let expected = subjects::closed(&first.venue, &first.symbol, first.interval);
    if subject != expected {
        return Err(format!(
            "subject: {subject:?} does not match payload {expected}"
        ));
    }
    Ok(batch.candles)
}

async fn dead_letter(js: &Context, durable: &str, m: &jetstream::Message, seq: u64, reason: &str) {
    tracing::warn!(subject = %m.subject, stream_seq = seq, %reason, "poison message; dead-lettering");
    match klinebus_consume::dlq::dead_letter(js, durable, m, seq, reason).await {
        Ok(()) => {
            metrics::counter!("klinebus_signals_dead_letters_total").increment(1);
        }
        Err(e) => {
            metrics::counter!("klinebus_signals_errors_total", "kind" => "dlq").increment(1);
            tracing::warn!(stream_seq = seq, error = %e, "dead-lettering failed; naked");
            let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
        }
    }
}

/// Processes messages in stream order as one batch ([`Engine::process_batch`]): undecodable
/// ones are dead-lettered first (they change nothing); the rest is retried in place as a whole
/// until it succeeds, then acked in order (and unusable events dead-lettered). On shutdown during
/// a retry every message is naked, in order, for redelivery and the loop stops.
async fn handle_batch(
    js: &Context,
    durable: &str,
    engine: &mut Engine,
    msgs: &[jetstream::Message],
    shutdown: &CancellationToken,
) -> Result<Flow, ServiceError> {
    metrics::counter!("klinebus_signals_messages_total").increment(msgs.len() as u64);
    // Messages that decoded, with how many of `events` (consecutive, in order) each carries.
    let mut good = Vec::with_capacity(msgs.len());
    let mut events = Vec::with_capacity(msgs.len());
    for m in msgs {
        let seq = m.info().map_or(0, |i| i.stream_sequence);
        match decode_closed(m.subject.as_str(), m.headers.as_ref(), &m.payload) {
            Ok(candles) => {
                good.push((m, seq, candles.len()));
                events.extend(candles);
            }
            Err(reason) => dead_letter(js, durable, m, seq, &reason).await,
        }
    }
    if events.is_empty() {
        return Ok(Flow::Next);
    }
    let first = good.first().map_or(0, |g| g.1);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match engine.process_batch(&events).await {
            Ok(results) => {
                let mut results = results.into_iter();
                for (m, seq, n) in &good {
                    // A message is done when all its candles are; one unusable candle
                    // dead-letters the message (the others were processed all the same).
                    let unusable: Vec<String> =
                        results.by_ref().take(*n).filter_map(Result::err).collect();
                    if unusable.is_empty() {
                        if let Err(e) = m.ack().await {
                            metrics::counter!("klinebus_signals_errors_total", "kind" => "ack")
                                .increment(1);
                            tracing::warn!(error = %e, stream_seq = seq,
                                "ack failed; redelivery is a replay");
                        }
                    } else {
                        let reason = format!("invalid: {}", unusable.join("; "));
                        dead_letter(js, durable, m, *seq, &reason).await;
                    }
                }
                return Ok(Flow::Next);
            }
            Err(EngineError::Retryable(reason)) => {
                let d = backoff.fail();
                tracing::warn!(stream_seq = first, events = events.len(), %reason,
                    retry_in_ms = d.as_millis() as u64, failures = backoff.failures(),
                    "batch failed; retrying it in place");
                for (m, _, _) in &good {
                    let _ = m.ack_with(AckKind::Progress).await;
                }
                if !pause(d, shutdown).await {
                    nak_all(&good).await;
                    return Ok(Flow::Stop);
                }
            }
            Err(EngineError::Poison(reason)) => {
                // process_batch reports unusable events per event; should one come as a whole,
                // stop rather than lose the batch.
                nak_all(&good).await;
                tracing::error!(stream_seq = first, %reason, "batch rejected; stopping");
                return Err(ServiceError::Fatal(reason));
            }
            Err(EngineError::Fatal(reason)) => {
                nak_all(&good).await;
                tracing::error!(stream_seq = first, %reason, "event failed fatally; stopping");
                return Err(ServiceError::Fatal(reason));
            }
        }
    }
}

/// Naks messages in order (redelivered at once, before anything newer).
async fn nak_all(msgs: &[(&jetstream::Message, u64, usize)]) {
    for (m, _, _) in msgs {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
}
