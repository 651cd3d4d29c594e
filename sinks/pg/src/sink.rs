//! The [`Handler`] that writes batches to Postgres and, after the commit, announces the closed
//! candles it committed on `candles.closed.<venue>.<symbol>.<interval>`, one
//! [`ClosedCandles`](klinebus_schemas::ClosedCandles) message per series and flush. The input
//! is acked only once JetStream has stored every announcement of its batch (the pull loop
//! awaits the [`Confirmation`] in the background); otherwise it is naked and comes back, and a
//! redelivered closed candle is announced again even though the upsert then changes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::Context;
use async_nats::jetstream::Message;
use klinebus_consume::db::is_fatal;
use klinebus_consume::{
    decode_klines, klines_weight, Confirmation, Delivered, Handler, HandlerError, Poison,
};
use klinebus_schemas::closed::MAX_PER_MESSAGE;
use klinebus_schemas::{bus, Interval, KlineEvent, Symbol};
use klinebus_svc::Health;
use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::dedup::winners;
use crate::status::record_error;
use crate::upsert::{write_batch, Partitions, COPY_MIN_ROWS};

/// Quick in-process retries of a failed flush before handing the batch back for a nak.
const QUICK_RETRIES: u32 = 2;
/// Post-commit publishes sent before their acks are handed to a waiter task.
const ACK_CHUNK: usize = 256;
/// How long a batch's announcements may take to be acknowledged, all together.
const POST_COMMIT_ACK_WAIT: Duration = Duration::from_secs(10);

/// Why a batch's announcements were not all stored (its input is naked and comes back).
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// A publish could not even be sent.
    #[error("post-commit publish not sent")]
    Send(#[source] bus::BusError),
    /// JetStream did not acknowledge some publishes in time, or refused them.
    #[error("{failed} post-commit publishes not confirmed")]
    Unconfirmed {
        /// How many.
        failed: usize,
        /// The first failure.
        #[source]
        source: PublishError,
    },
    /// A task awaiting acks died.
    #[error("post-commit ack waiter failed")]
    Waiter(#[source] tokio::task::JoinError),
}

/// Writes batches to Postgres.
pub struct PgSink {
    pool: PgPool,
    js: Option<Context>,
    health: Health,
    newest: Newest,
    copy_min_rows: usize,
    partitions: Partitions,
}

/// Close time (ms) of the newest closed candle committed per series, for the freshness gauge;
/// shared by the workers of one process so that the gauge never goes backwards.
pub type Newest = Arc<Mutex<HashMap<(Symbol, Interval), i64>>>;

impl PgSink {
    /// A sink writing through `pool`; with `js`, committed closed candles are announced and
    /// the input acked only once they are stored. Workers of one process share `newest`.
    pub fn new(pool: PgPool, js: Option<Context>, health: Health, newest: Newest) -> Self {
        Self {
            pool,
            js,
            health,
            newest,
            copy_min_rows: COPY_MIN_ROWS,
            partitions: Partitions::default(),
        }
    }

    /// Flushes of at least `rows` candle versions are written with COPY, smaller ones with one
    /// UNNEST upsert; 0 never uses COPY (`--copy-min-rows`, [`write_batch`]).
    pub fn with_copy_min_rows(mut self, rows: usize) -> Self {
        self.copy_min_rows = rows;
        self
    }

    /// Sets `klinebus_sink_newest_candle_close_seconds{symbol,interval}` to the close time of
    /// the newest closed candle committed (never backwards: a backfill of old history does not
    /// make a series look stale). Data age is `time() - gauge` (max over instances).
    fn record_freshness(&self, rows: &[&KlineEvent]) {
        // A poisoned lock only means another worker panicked mid-update: the map is still valid.
        let mut map = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        // Rows come in key order, one series after another: the last row of a run is its
        // newest, so the gauge is set once per series and batch.
        let mut it = rows.iter().filter(|e| e.closed).peekable();
        while let Some(e) = it.next() {
            if it
                .peek()
                .is_some_and(|n| n.symbol == e.symbol && n.interval == e.interval)
            {
                continue;
            }
            let newest = map
                .entry((e.symbol.clone(), e.interval))
                .or_insert(i64::MIN);
            if e.close_time > *newest {
                *newest = e.close_time;
                metrics::gauge!("klinebus_sink_newest_candle_close_seconds",
                    "symbol" => e.symbol.as_str().to_owned(), "interval" => e.interval.as_str())
                .set((e.close_time + 1) as f64 / 1000.0);
            }
        }
    }
}

/// Awaits publish acks against `deadline`; counts and logs (once) the ones not confirmed.
async fn confirm_acks(
    acks: Vec<PublishAckFuture>,
    deadline: tokio::time::Instant,
) -> Result<(), AnnounceError> {
    let results = bus::await_acks(acks, deadline).await;
    let mut errors = results.into_iter().filter_map(Result::err);
    let Some(first) = errors.next() else {
        return Ok(());
    };
    let failed = 1 + errors.count();
    // Once per waiter: a broker outage fails all of its acks at once.
    tracing::warn!(error = %first, messages = failed,
        "post-commit publishes not confirmed; the batch will be redelivered and announced again");
    metrics::counter!("klinebus_sink_errors_total", "kind" => "publish_closed")
        .increment(failed as u64);
    Err(AnnounceError::Unconfirmed {
        failed,
        source: first,
    })
}

/// The candle key as the table orders it.
fn key(e: &KlineEvent) -> (&str, &'static str, i64) {
    (e.symbol.as_str(), e.interval.as_str(), e.open_time)
}

fn error_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => "db_connection",
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => "db_pool",
        sqlx::Error::Database(_) => "db_statement",
        _ => "db_other",
    }
}

impl Handler for PgSink {
    type Item = Vec<KlineEvent>;
    type Committed = Vec<KlineEvent>;

    fn decode(&self, msg: &Message) -> Result<Vec<KlineEvent>, Poison> {
        decode_klines(msg.subject.as_str(), msg.headers.as_ref(), &msg.payload)
    }

    /// Candles, so that `--batch-size` bounds a flush whether they come one a message or a
    /// page of a thousand.
    fn weight(msg: &Message) -> usize {
        klines_weight(msg.headers.as_ref(), &msg.payload)
    }

    async fn handle(
        &mut self,
        batch: &[Delivered<Vec<KlineEvent>>],
    ) -> Result<Vec<KlineEvent>, HandlerError> {
        let rows = winners(batch.iter().flat_map(|d| &d.event));
        // A redelivered closed candle may have been committed by its first delivery (by any
        // instance) without being announced: the write checks whether the table holds exactly
        // that version, and it is announced again then. A page comes back whole.
        let recheck: Vec<bool> = if self.js.is_some() && batch.iter().any(|d| d.delivered > 1) {
            let again: HashSet<_> = batch
                .iter()
                .filter(|d| d.delivered > 1)
                .flat_map(|d| d.event.iter().filter(|e| e.closed))
                .map(key)
                .collect();
            rows.iter()
                .map(|r| r.closed && again.contains(&key(r)))
                .collect()
        } else {
            Vec::new()
        };
        let started = Instant::now();
        // Before the write, in a transaction of its own: the partition DDL must not wait
        // behind, or hold locks into, the flush's transaction.
        self.partitions.ensure(&self.pool, &rows).await;
        let mut attempt = 0;
        let written = loop {
            match write_batch(&self.pool, &rows, &recheck, self.copy_min_rows).await {
                Ok(w) => break w,
                Err(e) => {
                    metrics::counter!("klinebus_sink_errors_total", "kind" => error_kind(&e))
                        .increment(1);
                    if !is_fatal(&e) && attempt < QUICK_RETRIES {
                        attempt += 1;
                        tracing::debug!(error = %e, attempt, "flush failed; retrying at once");
                        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                        continue;
                    }
                    self.health.set_ready(false);
                    let series: HashSet<(String, String)> = rows
                        .iter()
                        .map(|r| (r.symbol.as_str().to_owned(), r.interval.as_str().to_owned()))
                        .collect();
                    let mut series: Vec<_> = series.into_iter().collect();
                    series.sort();
                    let message = e.to_string();
                    let recorded = tokio::time::timeout(
                        Duration::from_secs(2),
                        record_error(&self.pool, &series, &message),
                    )
                    .await;
                    if !matches!(recorded, Ok(Ok(()))) {
                        tracing::debug!("could not record the error in ingestion_status");
                    }
                    tracing::warn!(error = %e, rows = rows.len(), "flush failed");
                    return Err(if is_fatal(&e) {
                        HandlerError::Fatal(Box::new(e))
                    } else {
                        HandlerError::Retryable(Box::new(e))
                    });
                }
            }
        };
        self.health.set_ready(true);
        let elapsed = started.elapsed();
        metrics::histogram!("klinebus_sink_flush_seconds").record(elapsed.as_secs_f64());
        metrics::counter!("klinebus_sink_batches_total").increment(1);
        metrics::counter!("klinebus_sink_rows_upserted_total").increment(written.rows() as u64);
        let changed = written.changed_count();
        metrics::counter!("klinebus_sink_rows_changed_total").increment(changed as u64);
        self.record_freshness(&rows);
        tracing::debug!(
            messages = batch.len(),
            rows = written.rows(),
            changed,
            elapsed_ms = elapsed.as_millis() as u64,
            "flush committed"
        );
        if self.js.is_none() {
            return Ok(Vec::new());
        }
        let again = written.already_count();
        if again > 0 {
            metrics::counter!("klinebus_sink_closed_reannounced_total").increment(again as u64);
            tracing::debug!(
                candles = again,
                "announcing redelivered closed candles again"
            );
        }
        // Sized up front: a filtered collect would grow (and move) a bulk flush's candles
        // several times.
        let mut closed = Vec::with_capacity(changed + again);
        for (i, e) in rows.into_iter().enumerate() {
            if e.closed && (written.changed[i] || written.already(i)) {
                closed.push(e.clone());
            }
        }
        Ok(closed)
    }

    async fn after_commit(&mut self, closed: Vec<KlineEvent>) -> Option<Confirmation> {
        let js = self.js.clone()?;
        if closed.is_empty() {
            return None;
        }
        let deadline = tokio::time::Instant::now() + POST_COMMIT_ACK_WAIT;
        // One message per series and flush (rows are key-ordered: a series is one run), split
        // at MAX_PER_MESSAGE candles.
        let refs: Vec<&KlineEvent> = closed.iter().collect();
        let mut acks = Vec::new();
        let mut waiters: Vec<JoinHandle<Result<(), AnnounceError>>> = Vec::new();
        for series in refs.chunk_by(|a, b| a.symbol == b.symbol && a.interval == b.interval) {
            for chunk in series.chunks(MAX_PER_MESSAGE) {
                match bus::publish_closed(&js, chunk).await {
                    Ok(Some(ack)) => acks.push(ack),
                    Ok(None) => {}
                    Err(err) => {
                        metrics::counter!("klinebus_sink_errors_total", "kind" => "publish_closed")
                            .increment(1);
                        tracing::warn!(symbol = %chunk[0].symbol, interval = %chunk[0].interval,
                            candles = chunk.len(), error = %klinebus_svc::error_line(&err),
                            "post-commit publish failed; the batch will be redelivered");
                        // The rest would fail alike; the redelivery announces them all.
                        let err = AnnounceError::Send(err);
                        return Some(Box::pin(async move { Err(err.into()) }));
                    }
                }
                // Publish-ack futures hold the context's in-flight permits until awaited: hand
                // them to a waiter task every ACK_CHUNK, or a batch of many series would wait
                // for permits only its own unawaited futures hold.
                if acks.len() >= ACK_CHUNK {
                    let chunk = std::mem::take(&mut acks);
                    waiters.push(tokio::spawn(confirm_acks(chunk, deadline)));
                }
            }
        }
        Some(Box::pin(async move {
            for w in waiters {
                w.await.map_err(AnnounceError::Waiter)??;
            }
            confirm_acks(acks, deadline).await?;
            Ok(())
        }))
    }
}
