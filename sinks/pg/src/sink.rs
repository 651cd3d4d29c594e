//! The [`Handler`] that writes batches to Postgres and, after the ack, publishes the closed
//! candles that changed on `candles.closed.<venue>.<symbol>.<interval>`, one
//! [`ClosedCandles`](klinebus_schemas::ClosedCandles) message per series and flush.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::Context;
use klinebus_consume::{Delivered, Handler, HandlerError};
use klinebus_schemas::closed::MAX_PER_MESSAGE;
use klinebus_schemas::{bus, Interval, KlineEvent, Symbol};
use klinebus_svc::Health;
use sqlx::PgPool;
use tokio::task::JoinSet;

use crate::dedup::winners;
use crate::status::record_error;
use crate::upsert::write_batch;

/// Quick in-process retries of a failed flush before handing the batch back for a nak.
const QUICK_RETRIES: u32 = 2;
/// Most post-commit publish-ack waiters kept at once.
const MAX_PUBLISH_TASKS: usize = 64;
/// Post-commit publishes sent before their acks are handed to a waiter task.
const ACK_CHUNK: usize = 256;
/// How long a waiter task waits for its acks, all together.
const POST_COMMIT_ACK_WAIT: Duration = Duration::from_secs(10);

/// Writes batches to Postgres.
pub struct PgSink {
    pool: PgPool,
    js: Option<Context>,
    health: Health,
    publishing: JoinSet<usize>,
    newest: Newest,
}

/// Close time (ms) of the newest closed candle committed per series, for the freshness gauge;
/// shared by the workers of one process so that the gauge never goes backwards.
pub type Newest = Arc<Mutex<HashMap<(Symbol, Interval), i64>>>;

impl PgSink {
    /// A sink writing through `pool`; with `js`, committed closed candles are re-published.
    /// Workers of one process share `newest`.
    pub fn new(pool: PgPool, js: Option<Context>, health: Health, newest: Newest) -> Self {
        Self {
            pool,
            js,
            health,
            publishing: JoinSet::new(),
            newest,
        }
    }

    /// Sets `klinebus_sink_newest_candle_close_seconds{symbol,timeframe}` to the close time of
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
                    "symbol" => e.symbol.as_str().to_owned(), "timeframe" => e.interval.as_str())
                .set((e.close_time + 1) as f64 / 1000.0);
            }
        }
    }

    /// Awaits publish acks in a waiter task (at most MAX_PUBLISH_TASKS at once), counting the
    /// ones not confirmed.
    async fn await_in_background(&mut self, acks: Vec<PublishAckFuture>) {
        while self.publishing.try_join_next().is_some() {}
        while self.publishing.len() >= MAX_PUBLISH_TASKS {
            let _ = self.publishing.join_next().await;
        }
        self.publishing.spawn(async move {
            let deadline = tokio::time::Instant::now() + POST_COMMIT_ACK_WAIT;
            let results = bus::await_acks(acks, deadline).await;
            let mut errors = results.iter().filter_map(|r| r.as_ref().err());
            let Some(first) = errors.next() else {
                return 0;
            };
            let failed = 1 + errors.count();
            // Once per waiter: a broker outage fails all of its acks at once.
            tracing::warn!(error = %first, messages = failed, "post-commit publishes not confirmed");
            metrics::counter!("klinebus_sink_errors_total", "kind" => "publish_closed")
                .increment(failed as u64);
            failed
        });
    }

    /// Waits (bounded) for the post-commit publishes still in flight; not at all without a
    /// connection to NATS, which could not confirm them.
    pub async fn finish(&mut self, within: Duration) {
        let connected = self
            .js
            .as_ref()
            .is_some_and(|js| js.client().connection_state() == State::Connected);
        while self.publishing.try_join_next().is_some() {}
        if !connected && !self.publishing.is_empty() {
            tracing::warn!(
                unconfirmed = self.publishing.len(),
                "NATS unreachable at shutdown; post-commit publishes left unconfirmed"
            );
            self.publishing.abort_all();
            return;
        }
        let all = async { while self.publishing.join_next().await.is_some() {} };
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!("post-commit publishes still unconfirmed at shutdown");
        }
    }
}

/// Errors worth retrying: connection trouble, timeouts, serialization failures, deadlocks,
/// a server shutting down. Anything else (a schema mismatch) is fatal.
fn is_fatal(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("42") || c.starts_with("3D") || c.starts_with("28")),
        sqlx::Error::Configuration(_) | sqlx::Error::ColumnNotFound(_) => true,
        _ => false,
    }
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
    type Committed = Vec<KlineEvent>;

    async fn handle(&mut self, batch: &[Delivered]) -> Result<Vec<KlineEvent>, HandlerError> {
        let rows = winners(batch.iter().map(|d| &d.event));
        let started = Instant::now();
        let mut attempt = 0;
        let written = loop {
            match write_batch(&self.pool, &rows).await {
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
            events = batch.len(),
            rows = written.rows(),
            changed,
            elapsed_ms = elapsed.as_millis() as u64,
            "flush committed"
        );
        if self.js.is_none() {
            return Ok(Vec::new());
        }
        Ok(rows
            .into_iter()
            .zip(&written.changed)
            .filter(|(e, changed)| e.closed && **changed)
            .map(|(e, _)| e.clone())
            .collect())
    }

    async fn after_ack(&mut self, closed: Vec<KlineEvent>) {
        let Some(js) = self.js.clone() else { return };
        if closed.is_empty() {
            return;
        }
        // One message per series and flush (rows are key-ordered: a series is one run), split
        // at MAX_PER_MESSAGE candles.
        let refs: Vec<&KlineEvent> = closed.iter().collect();
        let mut acks = Vec::new();
        for series in refs.chunk_by(|a, b| a.symbol == b.symbol && a.interval == b.interval) {
            for chunk in series.chunks(MAX_PER_MESSAGE) {
                match bus::publish_closed(&js, chunk).await {
                    Ok(Some(ack)) => acks.push(ack),
                    Ok(None) => {}
                    Err(err) => {
                        metrics::counter!("klinebus_sink_errors_total", "kind" => "publish_closed")
                            .increment(1);
                        tracing::warn!(symbol = %chunk[0].symbol, interval = %chunk[0].interval,
                            candles = chunk.len(), error = %err, "post-commit publish failed");
                    }
                }
                // Publish-ack futures hold the context's in-flight permits until awaited: hand
                // them to a waiter task every ACK_CHUNK, or a batch of many series would wait
                // for permits only its own unawaited futures hold.
                if acks.len() >= ACK_CHUNK {
                    self.await_in_background(std::mem::take(&mut acks)).await;
                }
            }
        }
        if !acks.is_empty() {
            self.await_in_background(acks).await;
        }
    }
}
