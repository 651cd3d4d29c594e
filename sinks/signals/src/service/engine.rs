//! One closed-candle event in, at most one signal out: the per-series states, warming from
//! Postgres, the upsert and the post-commit publication.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use klinebus_schemas::{subjects, Interval, KlineEvent, Symbol};
use sqlx::PgPool;

use super::store::{load_history, upsert_signal, SignalRow};
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

    /// Processes one closed-candle event: replay → nothing; otherwise apply (warming the series
    /// from Postgres first if it is new or the event does not follow its last candle), upsert,
    /// publish, and only then keep the new state — so a failed attempt can simply be retried.
    pub async fn process(&mut self, e: &KlineEvent) -> Result<Outcome, EngineError> {
        let candle = Candle::from_event(e).map_err(|err| EngineError::Poison(err.to_string()))?;
        let key = (e.symbol.clone(), e.interval);
        let last = self.states.get(&key).and_then(SeriesState::last_open_time);
        if let Some(last) = last {
            if e.open_time <= last {
                metrics::counter!("klinebus_signals_outcomes_total", "outcome" => "replay")
                    .increment(1);
                return Ok(Outcome::Replay {
                    open_time: e.open_time,
                    last_open_time: last,
                });
            }
        }
        let follows = last.is_some_and(|l| e.interval.next_open(l) == e.open_time);
        let mut state = match self.states.get(&key) {
            Some(s) if follows => s.clone(),
            _ => self.warm(&e.symbol, e.interval, e.open_time).await?,
        };
        let started = Instant::now();
        let outcome = state.apply(&candle);
        metrics::histogram!("klinebus_signals_compute_seconds")
            .record(started.elapsed().as_secs_f64());
        match &outcome {
            Outcome::Signal(report) => {
                let details = serde_json::to_value(report.as_ref())
                    .map_err(|err| EngineError::Fatal(format!("serialising report: {err}")))?;
                upsert_signal(&self.pool, &SignalRow::from_report(report, details))
                    .await
                    .map_err(db_error)?;
                if let Some(js) = &self.js {
                    let payload = serde_json::to_vec(report.as_ref())
                        .map_err(|err| EngineError::Fatal(format!("serialising report: {err}")))?;
                    publish(js, e, payload).await?;
                }
                metrics::counter!("klinebus_signals_outcomes_total", "outcome" => "signal")
                    .increment(1);
                tracing::debug!(symbol = %e.symbol, interval = %e.interval, open_time = e.open_time,
                    action = ?report.action, confidence = report.confidence, "signal");
            }
            Outcome::InsufficientData { reason, have, need } => {
                metrics::counter!("klinebus_signals_outcomes_total", "outcome" => "insufficient_data")
                    .increment(1);
                tracing::debug!(symbol = %e.symbol, interval = %e.interval, open_time = e.open_time,
                    have, need, %reason, "insufficient data");
                if self.store_insufficient {
                    let row = SignalRow {
                        symbol: &e.symbol,
                        interval: e.interval,
                        open_time: e.open_time,
                        action: "insufficient_data",
                        confidence: 0.0,
                        regime: "unknown",
                        details: serde_json::json!({
                            "outcome": "insufficient_data",
                            "reason": reason,
                            "have": have,
                            "need": need,
                        }),
                    };
                    upsert_signal(&self.pool, &row).await.map_err(db_error)?;
                }
            }
            Outcome::Replay { .. } => {
                metrics::counter!("klinebus_signals_outcomes_total", "outcome" => "replay")
                    .increment(1);
            }
        }
        self.states.insert(key, state);
        Ok(outcome)
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

/// Publishes a signal event and waits for the stream to store it (deduplicated by
/// `Nats-Msg-Id`, so a retry after a failure is harmless).
async fn publish(js: &Context, e: &KlineEvent, payload: Vec<u8>) -> Result<(), EngineError> {
    let subject = subjects::signals(&e.venue, &e.symbol, e.interval);
    let mut headers = HeaderMap::new();
    headers.insert(SIGNAL_SCHEMA_HEADER, SIGNAL_SCHEMA);
    headers.insert("Content-Type", "application/json");
    let msg = PublishMessage::build()
        .headers(headers)
        .payload(payload.into())
        .message_id(signal_msg_id(e));
    let failed = |err: String| {
        metrics::counter!("klinebus_signals_errors_total", "kind" => "publish").increment(1);
        EngineError::Retryable(format!("publishing on {subject}: {err}"))
    };
    let ack = js
        .send_publish(subject.clone(), msg)
        .await
        .map_err(|err| failed(err.to_string()))?;
    match tokio::time::timeout(Duration::from_secs(10), ack).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(failed(err.to_string())),
        Err(_) => Err(failed("no publish ack within 10 s".into())),
    }
}
