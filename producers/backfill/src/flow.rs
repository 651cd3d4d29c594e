//! Keeping a fast backfill from outrunning the sink by more than the stream can hold.
//!
//! From the archive, kline-backfill publishes about twice as fast as kline-pg-sink commits.
//! `KLINES` keeps a byte budget and discards its oldest messages when full, consumed or not:
//! a deep backfill (5 years × 1m × 100 symbols is about 87 GB of events) would push candles out
//! before the sink read them. So publishing waits while the sink's durable consumer
//! (`--verify-consumer`, `pg-sink`) has more unconsumed messages than `--max-sink-lag` of the
//! stream's `max_bytes` (estimated from the stream's mean message size). No consumer, or a
//! stream without a byte limit: nothing to protect, no wait.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::Context;
use klinebus_schemas::streams::KLINES_STREAM;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a measurement is trusted before the server is asked again.
const RECHECK: Duration = Duration::from_millis(250);

/// The shared guard of a run (one per process; every series asks it before a page).
#[derive(Debug)]
pub struct FlowGuard {
    js: Context,
    consumer: String,
    share: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    checked: Option<Instant>,
    over: bool,
    /// When the current wait began (for the log and the metric).
    waiting_since: Option<Instant>,
}

impl FlowGuard {
    /// Waits while `consumer` lags by more than `share` (0–1) of `KLINES`' `max_bytes`.
    pub fn new(js: Context, consumer: &str, share: f64) -> Self {
        Self {
            js,
            consumer: consumer.to_owned(),
            share,
            state: Mutex::new(State {
                checked: None,
                over: false,
                waiting_since: None,
            }),
        }
    }

    /// Returns once the sink's lag is within the limit (at once, usually), or `false` when
    /// cancelled meanwhile.
    pub async fn wait(&self, cancel: &CancellationToken) -> bool {
        loop {
            if !self.over().await {
                return true;
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    async fn over(&self) -> bool {
        let mut st = self.state.lock().await;
        if st.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return st.over;
        }
        let measured = self.measure().await;
        st.checked = Some(Instant::now());
        st.over = match measured {
            Ok(Some((lag, limit))) => {
                let over = lag > limit;
                match (over, st.waiting_since) {
                    (true, None) => {
                        st.waiting_since = Some(Instant::now());
                        tracing::warn!(consumer = %self.consumer, lag_mb = lag / 1_000_000, limit_mb = limit / 1_000_000,
                            "the sink is far behind; publishing waits so KLINES does not discard what it has not read");
                        metrics::gauge!("klinebus_backfill_waiting_for_sink").set(1.0);
                    }
                    (false, Some(since)) => {
                        st.waiting_since = None;
                        tracing::info!(
                            waited_ms = since.elapsed().as_millis() as u64,
                            "the sink caught up; publishing again"
                        );
                        metrics::gauge!("klinebus_backfill_waiting_for_sink").set(0.0);
                    }
                    _ => {}
                }
                over
            }
            Ok(None) => false,
            Err(e) => {
                // Unknown is not "over": the publishes themselves notice a broker that is away.
                tracing::debug!(error = %e, "cannot measure the sink's lag");
                false
            }
        };
        st.over
    }

    /// (unconsumed bytes, allowed bytes), or None when there is nothing to protect.
    async fn measure(
        &self,
    ) -> Result<Option<(u64, u64)>, Box<dyn std::error::Error + Send + Sync>> {
        let mut stream = self.js.get_stream(KLINES_STREAM).await?;
        let info = stream.info().await?;
        let (max_bytes, bytes, messages) =
            (info.config.max_bytes, info.state.bytes, info.state.messages);
        if max_bytes <= 0 || messages == 0 {
            return Ok(None);
        }
        let Ok(mut consumer) = stream.get_consumer::<pull::Config>(&self.consumer).await else {
            return Ok(None); // no sink yet: nothing consumes, nothing to keep pace with
        };
        let ci = consumer.info().await?;
        let pending = ci.num_pending + ci.num_ack_pending as u64;
        let lag = pending.saturating_mul(bytes / messages);
        let limit = (max_bytes as f64 * self.share) as u64;
        Ok(Some((lag, limit)))
    }
}
