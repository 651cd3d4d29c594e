//! Closed-candle events in (one or a batch, in order), at most one signal each out: the
//! per-series states, warming from Postgres, the upsert and the post-commit publication.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use klinebus_schemas::{subjects, Interval, KlineEvent, Symbol};
use sqlx::PgPool;

use super::store::{load_history, upsert_signals, SignalRecord, SignalRow};
use crate::{Candle, Config, Outcome, SeriesState};

/// Header naming the payload format of a signal event.
pub const SIGNAL_SCHEMA_HEADER: &str = "Klinebus-Schema";
/// Its value: a JSON [`SignalReport`](crate::SignalReport).
pub const SIGNAL_SCHEMA: &str = "signal/1";

/// Why an event could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The event is unusable (dead-letter it).
    #[error("{0}")]
    Poison(String),
    /// Try the same event again later (database or broker trouble).
    #[error("retryable: {0}")]
    Retryable(String),
    /// Stop (a schema mismatch, misconfiguration).
    #[error("fatal: {0}")]
    Fatal(String),
}

fn db_error(e: sqlx::Error) -> EngineError {
    let fatal = match &e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("42") || c.starts_with("3D") || c.starts_with("28")),
        sqlx::Error::Configuration(_) | sqlx::Error::ColumnNotFound(_) => true,
        _ => false,
    };
    metrics::counter!("klinebus_signals_errors_total", "kind" => "db").increment(1);
    if fatal {
        EngineError::Fatal(e.to_string())
    } else {
        EngineError::Retryable(e.to_string())
    }
}

/// The `Nats-Msg-Id` of a signal event: `<venue>:<symbol>:<interval>:<open_time>`.
pub fn signal_msg_id(e: &KlineEvent) -> String {
    e.candle_key()
}

/// Every series' state and where results go.
pub struct Engine {
    cfg: Config,
    pool: PgPool,
    js: Option<Context>,
    states: HashMap<(Symbol, Interval), SeriesState>,
    warm_candles: i64,
    store_insufficient: bool,
}

impl Engine {
    /// An engine with no series yet; `js` publishes signal events when set.
    pub fn new(
        cfg: Config,
        pool: PgPool,
        js: Option<Context>,
        warm_candles: usize,
        store_insufficient: bool,
    ) -> Self {
        let warm = warm_candles.max(crate::lookback(&cfg)) as i64;
        Self {
            cfg,
            pool,
            js,
            states: HashMap::new(),
            warm_candles: warm,
            store_insufficient,
        }
    }

    /// Series currently held.
    pub fn series(&self) -> usize {
        self.states.len()
    }

    /// Processes one closed-candle event: [`process_batch`](Self::process_batch) of one, with
    /// an unusable event as `Err(Poison)`.
    pub async fn process(&mut self, e: &KlineEvent) -> Result<Outcome, EngineError> {
        let mut out = self.process_batch(std::slice::from_ref(e)).await?;
        match out.pop() {
            Some(Ok(outcome)) => Ok(outcome),
            Some(Err(reason)) => Err(EngineError::Poison(reason)),
            None => Err(EngineError::Fatal("empty batch result".into())),
        }
    }

    /// Processes closed-candle events in order, all or nothing. Per event: replay → nothing;
    /// otherwise apply (warming the series from Postgres first if it is new or the event does
    /// not follow its last candle). Then ONE statement upserts every resulting row, every
    /// signal event is published and all their stream acks awaited, and only then the new
    /// series states are kept. On `Err` nothing of the batch is kept in memory and no row of it
    /// is committed (some of its signal events may be stored already; a retry republishes them
    /// under the same `Nats-Msg-Id`), so the same batch can simply be retried and gives the
    /// same results.
    ///
    /// Returns one entry per event: its outcome, or `Err(reason)` for an unusable event
    /// (dead-letter it; it changes nothing).
    pub async fn process_batch(
        &mut self,
        events: &[KlineEvent],
    ) -> Result<Vec<Result<Outcome, String>>, EngineError> {
        let batch_started = Instant::now();
        // Series touched by this batch, advanced on copies.
        let mut staged: HashMap<(Symbol, Interval), SeriesState> = HashMap::new();
        let mut results = Vec::with_capacity(events.len());
        let mut rows: Vec<SignalRecord> = Vec::new();
        let mut to_publish: Vec<(usize, Vec<u8>)> = Vec::new();
        let (mut n_signal, mut n_insufficient, mut n_replay) = (0u64, 0u64, 0u64);
        for (i, e) in events.iter().enumerate() {
            let candle = match Candle::from_event(e) {
                Ok(c) => c,
                Err(err) => {
                    results.push(Err(err.to_string()));
                    continue;
                }
            };
            let key = (e.symbol.clone(), e.interval);
            let last = staged
                .get(&key)
                .or_else(|| self.states.get(&key))
                .and_then(SeriesState::last_open_time);
            if let Some(last) = last {
                if e.open_time <= last {
                    n_replay += 1;
                    results.push(Ok(Outcome::Replay {
                        open_time: e.open_time,
                        last_open_time: last,
                    }));
                    continue;
                }
            }
            let follows = last.is_some_and(|l| e.interval.next_open(l) == e.open_time);
            let mut state = match staged.remove(&key) {
                Some(s) if follows => s,
                _ => match self.states.get(&key) {
                    Some(s) if follows => s.clone(),
                    _ => self.warm(&e.symbol, e.interval, e.open_time).await?,
                },
            };
            let started = Instant::now();
            let outcome = state.apply(&candle);
            metrics::histogram!("klinebus_signals_compute_seconds")
                .record(started.elapsed().as_secs_f64());
            staged.insert(key, state);
            match &outcome {
                Outcome::Signal(report) => {
                    n_signal += 1;
                    let details = serde_json::to_string(report.as_ref())
                        .map_err(|err| EngineError::Fatal(format!("serialising report: {err}")))?;
                    let row = SignalRow::from_report(report, serde_json::Value::Null);
                    rows.push(SignalRecord::new(&row, details.clone()));
                    if self.js.is_some() {
                        to_publish.push((i, details.into_bytes()));
                    }
                    tracing::debug!(symbol = %e.symbol, interval = %e.interval,
                        open_time = e.open_time, action = ?report.action,
                        confidence = report.confidence, "signal");
                }
                Outcome::InsufficientData { reason, have, need } => {
                    n_insufficient += 1;
                    tracing::debug!(symbol = %e.symbol, interval = %e.interval,
                        open_time = e.open_time, have, need, %reason, "insufficient data");
                    if self.store_insufficient {
                        let row = SignalRow {
                            symbol: &e.symbol,
                            interval: e.interval,
                            open_time: e.open_time,
                            action: "insufficient_data",
                            confidence: 0.0,
                            regime: "unknown",
                            details: serde_json::Value::Null,
                        };
                        let details = serde_json::json!({
                            "outcome": "insufficient_data",
                            "reason": reason,
                            "have": have,
                            "need": need,
                        });
                        rows.push(SignalRecord::new(&row, details.to_string()));
                    }
                }
                Outcome::Replay { .. } => n_replay += 1,
            }
            results.push(Ok(outcome));
        }
        let computed = Instant::now();
        upsert_signals(&self.pool, &rows).await.map_err(db_error)?;
        let upserted = Instant::now();
        if let Some(js) = &self.js {
            publish_all(js, events, to_publish).await?;
        }
        tracing::debug!(target: "kline_signals::batch", events = events.len(), rows = rows.len(),
            compute_us = (computed - batch_started).as_micros() as u64,
            upsert_us = (upserted - computed).as_micros() as u64,
            publish_us = upserted.elapsed().as_micros() as u64, "batch done");
        self.states.extend(staged);
        for (outcome, n) in [
            ("signal", n_signal),
            ("insufficient_data", n_insufficient),
            ("replay", n_replay),
        ] {
            if n > 0 {
                metrics::counter!("klinebus_signals_outcomes_total", "outcome" => outcome)
                    .increment(n);
            }
        }
        Ok(results)
    }

    /// A fresh state fed the stored closed candles before `open_time`.
    async fn warm(
        &self,
        symbol: &Symbol,
        interval: Interval,
        open_time: i64,
    ) -> Result<SeriesState, EngineError> {
        let started = Instant::now();
        let history = load_history(&self.pool, symbol, interval, open_time, self.warm_candles)
            .await
            .map_err(db_error)?;
        let mut state = SeriesState::new(&self.cfg, symbol.clone(), interval);
        state.warm(&history);
        metrics::counter!("klinebus_signals_warms_total").increment(1);
        tracing::info!(%symbol, %interval, before = open_time, candles = history.len(),
            warm = state.is_warm(), elapsed_ms = started.elapsed().as_millis() as u64,
            "series warmed from ohlcv_candles");
        Ok(state)
    }
}

/// Publishes the signal events of a batch (`(event index, JSON)`), then waits until the stream
/// stored all of them (deduplicated by `Nats-Msg-Id`, so a retry after a failure is harmless).
async fn publish_all(
    js: &Context,
    events: &[KlineEvent],
    payloads: Vec<(usize, Vec<u8>)>,
) -> Result<(), EngineError> {
    let failed = |subject: &str, err: String| {
        metrics::counter!("klinebus_signals_errors_total", "kind" => "publish").increment(1);
        EngineError::Retryable(format!("publishing on {subject}: {err}"))
    };
    // The context bounds un-awaited publish acks (`bus::jetstream(_, 1024)`, blocking beyond
    // that), so a large batch awaits its acks every PUBLISH_WINDOW publications.
    const PUBLISH_WINDOW: usize = 256;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut acks = Vec::with_capacity(payloads.len().min(PUBLISH_WINDOW));
    for (i, payload) in payloads {
        if acks.len() == PUBLISH_WINDOW {
            await_acks(&mut acks, deadline, &failed).await?;
        }
        let e = &events[i];
        let subject = subjects::signals(&e.venue, &e.symbol, e.interval);
        let mut headers = HeaderMap::new();
        headers.insert(SIGNAL_SCHEMA_HEADER, SIGNAL_SCHEMA);
        headers.insert("Content-Type", "application/json");
        let msg = PublishMessage::build()
            .headers(headers)
            .payload(payload.into())
            .message_id(signal_msg_id(e));
        let ack = js
            .send_publish(subject.clone(), msg)
            .await
            .map_err(|err| failed(&subject, err.to_string()))?;
        acks.push((subject, ack));
    }
    await_acks(&mut acks, deadline, &failed).await
}

/// Awaits (and empties) publish acks; one deadline for the whole batch.
async fn await_acks(
    acks: &mut Vec<(String, async_nats::jetstream::context::PublishAckFuture)>,
    deadline: tokio::time::Instant,
    failed: &impl Fn(&str, String) -> EngineError,
) -> Result<(), EngineError> {
    for (subject, ack) in acks.drain(..) {
        match tokio::time::timeout_at(deadline, ack).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(failed(&subject, err.to_string())),
            Err(_) => return Err(failed(&subject, "no publish ack within 10 s".into())),
        }
    }
    Ok(())
}
