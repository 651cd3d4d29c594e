//! # kline-pg-sink: kline events → PostgreSQL
//!
//! Consumes the `KLINES` stream through a durable pull consumer ([`klinebus_consume`]) and
//! persists candles: single events (`kline/1`, live) and pages of up to 1000 closed candles of
//! one series (`kline-page/1`, backfill), read by [`klinebus_consume::decode_klines`]; a batch
//! is bounded by its candles (`--batch-size`). Delivery is **at-least-once with an idempotent
//! effect**:
//!
//! - [`config`]: flags and environment (`kline-pg-sink --help`).
//! - [`dedup`]: which version of a candle wins (closed beats forming; otherwise only a strictly
//!   newer event time), inside a batch and — the same rule in SQL — across batches.
//! - [`upsert`]: one transaction per flush: an `UNNEST` upsert with `ON CONFLICT … WHERE …
//!   RETURNING` for live-sized flushes, `COPY` for large ones (straight into the table when
//!   their series' ranges hold nothing yet, else through a staging table and the same upsert),
//!   then [`status`] (`ingestion_status`); acked only after the commit.
//! - [`sink`]: the [`Handler`](klinebus_consume::Handler): quick retries, error status, then
//!   after the commit the closed candles it committed on `candles.closed.…`, one
//!   [`ClosedCandles`](klinebus_schemas::ClosedCandles) message per series and flush; the
//!   input is acked only once JetStream stored them (else it comes back and they are announced
//!   again), so every committed closed candle is announced at least once.
//! - [`run`]: wiring (telemetry, NATS, streams, pool, migrations, consumer, shutdown).
//!
//! Poison messages go to `dlq.<consumer>`. Several instances sharing `--consumer` split the work
//! and converge on the same table contents as one; inside one process `--workers` loops do the
//! same, so one batch is in PostgreSQL while the next is decoded and the last one acked.
//! `--replay-from` recreates the durable consumer for recovery (one instance only). The ack wait
//! is short (`--ack-wait-secs`, 10 s) with progress acks for batches still in flight, so the
//! messages of a killed instance reach another one within about that long.

pub mod config;
pub mod dedup;
pub mod sink;
pub mod status;
pub mod upsert;

use std::time::Duration;

use klinebus_consume::{ConsumeOptions, Consumer, StartFrom};
use klinebus_schemas::bus::{self, BusOptions};
use klinebus_schemas::streams::{
    ConsumerSpec, Retention, CANDLES_STREAM, DLQ_STREAM, KLINES_STREAM,
};
use klinebus_svc::db::DbError;
use klinebus_svc::{DbArgs, Health};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::Config;
pub use sink::{Newest, PgSink};

/// Why the sink stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A secret file could not be read.
    #[error(transparent)]
    Secret(#[from] klinebus_svc::SecretError),
    /// `--metrics-addr` is not an address.
    #[error("--metrics-addr {0:?}")]
    MetricsAddr(String, #[source] std::net::AddrParseError),
    /// The telemetry endpoint could not start.
    #[error(transparent)]
    Telemetry(#[from] klinebus_svc::TelemetryError),
    /// NATS trouble at start-up.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// PostgreSQL refused the connection for good (credentials, URL).
    #[error(transparent)]
    Db(#[from] DbError),
    /// The streams could not be created.
    #[error("creating the klinebus streams")]
    Streams(#[source] bus::BusError),
    /// Migrations failed.
    #[error("migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The consumer loop stopped.
    #[error(transparent)]
    Consume(#[from] klinebus_consume::ConsumeError),
    /// A worker task panicked.
    #[error("worker task failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// NATS connection options from the config.
pub fn bus_options(c: &Config) -> Result<BusOptions, SinkError> {
    c.nats
        .bus_options(&format!("kline-pg-sink/{}", c.consumer))
        .map_err(SinkError::Secret)
}

/// Consumer options from the config.
pub fn consume_options(c: &Config) -> ConsumeOptions {
    let mut spec = ConsumerSpec::klines(&c.consumer, c.filter_subject.clone());
    spec.ack_wait = Duration::from_secs(c.ack_wait_secs);
    let mut o = ConsumeOptions::new(spec);
    // Durables created with an older default (60 s) get the short ack wait too.
    o.update_ack_wait = true;
    o.batch_size = c.batch_size as usize;
    o.flush_interval = c.flush_interval();
    o.start = c.replay_from.clone().unwrap_or(StartFrom::Resume);
    o
}

/// Creates the streams only if one is missing (an existing stream keeps the retention its
/// operator gave it).
async fn check_streams(
    js: &async_nats::jetstream::Context,
    retention: &Retention,
) -> Result<(), SinkError> {
    for name in [KLINES_STREAM, CANDLES_STREAM, DLQ_STREAM] {
        if js.get_stream(name).await.is_err() {
            tracing::info!(
                stream = name,
                "stream missing; creating the klinebus streams"
            );
            return bus::ensure_streams(js, retention)
                .await
                .map_err(SinkError::Streams);
        }
    }
    Ok(())
}

/// Connects to PostgreSQL (retrying while it is unreachable; with several hosts the pool
/// follows the read-write one, see [`klinebus_svc::db`]).
pub async fn connect_db(
    db: &DbArgs,
    max: u32,
    shutdown: &CancellationToken,
) -> Result<Option<PgPool>, DbError> {
    db.connect_waiting(
        PgPoolOptions::new()
            .max_connections(max.max(1))
            .acquire_timeout(Duration::from_secs(5)),
        shutdown,
    )
    .await
}

/// Runs the sink until `shutdown` fires: the batch in flight is committed and acked, then it
/// returns `Ok(())`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), SinkError> {
    tracing::info!(config = ?config, "starting kline-pg-sink");
    let health = Health::default();
    if let Some(addr) = config
        .metrics_addr()
        .map_err(|e| SinkError::MetricsAddr(config.metrics_addr.clone(), e))?
    {
        let bound = klinebus_svc::serve_telemetry(addr, health.clone(), shutdown.clone()).await?;
        tracing::info!(%bound, "serving /metrics and /health");
    }
    let opts = bus_options(&config)?;
    // Read up front: a missing URL file stops the sink, it is not retried.
    config.db.url()?;
    let Some(client) = klinebus_svc::connect_bus(&opts, &shutdown, None).await? else {
        return Ok(());
    };
    let js = bus::jetstream(client, 4096);
    check_streams(&js, &config.nats.retention()).await?;
    let Some(pool) = connect_db(
        &config.db,
        config.max_connections.max(config.workers + 1),
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
    health.set_ready(true);
    let opts = consume_options(&config);
    if opts.start.is_replay() {
        // Reset the durable once; the workers then resume from it.
        Consumer::new(js.clone(), opts.clone())
            .prepare(&opts.start)
            .await?;
    }
    tracing::info!(consumer = %config.consumer, filter = %config.filter_subject,
        workers = config.workers, "consuming");
    let newest = Newest::default();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..config.workers {
        let mut o = opts.clone();
        o.start = StartFrom::Resume;
        let consumer = Consumer::new(js.clone(), o);
        let mut sink = PgSink::new(
            pool.clone(),
            Some(js.clone()),
            health.clone(),
            newest.clone(),
        )
        .with_copy_min_rows(config.copy_min_rows as usize);
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("worker", worker);
        workers.spawn(async move { consumer.run(&mut sink, shutdown).await }.instrument(span));
    }
    let mut result = Ok(());
    while let Some(joined) = workers.join_next().await {
        let failed = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => SinkError::from(e),
            Err(e) => SinkError::Worker(e),
        };
        // One worker failing stops the others: the process exits with the first error.
        tracing::error!(error = %klinebus_svc::error_line(&failed), "worker stopped; stopping the others");
        shutdown.cancel();
        if result.is_ok() {
            result = Err(failed);
        }
    }
    health.set_ready(false);
    pool.close().await;
    tracing::info!("kline-pg-sink stopped");
    result
}
