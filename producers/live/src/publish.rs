//! The bounded publish buffer between the feeds and JetStream.
//!
//! Feeds never wait for NATS: [`Publisher::push`] queues an event and returns. One task sends
//! queued events in batches and awaits the acks of the closed candles; events whose publish or
//! ack fails go back to the front of the queue and are retried after a pause (closed candles
//! carry `Nats-Msg-Id`, so a retry of something the server did store is a server-side
//! duplicate). Forming updates are sent without an ack ([`bus::publish_forming`]): superseded
//! seconds later, they are not worth a reply each.
//!
//! When the queue holds `max` events (NATS away for long), the oldest forming update is dropped
//! to make room — forming updates are superseded by later ones anyway. Only when no forming
//! update is left is the oldest closed candle dropped; it is then marked in the
//! [`Tracker`] as lost, and a repair is requested once publishing works again, so REST fetches
//! it again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use klinebus_schemas::{bus, KlineEvent, Source};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::series::Tracker;
use crate::LiveStats;

/// Most events sent before their acks are awaited.
const BATCH: usize = 512;
/// How long an idle publisher lets events gather after the first one arrives.
const COALESCE: Duration = Duration::from_millis(1);

struct Queue {
    events: VecDeque<(KlineEvent, Instant)>,
    closed: bool,
    /// Drops since the buffer last had room, to log once per episode.
    dropping: u64,
    /// A closed candle was dropped: ask for a repair once publishing works again.
    repair_due: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Fired whenever the queue shrank, for [`Publisher::push_when_room`].
    room: Notify,
    max: usize,
    ack_timeout: Duration,
    stats: Arc<LiveStats>,
    tracker: Arc<Tracker>,
    /// `klinebus_live_published_total` per source (by [`slot`]) and the publish latency:
    /// handles taken once, not looked up for every event.
    published: [metrics::Counter; 4],
    latency: metrics::Histogram,
}

/// Index of `source` in [`Source::ALL`].
fn slot(source: Source) -> usize {
    Source::ALL.iter().position(|s| *s == source).unwrap_or(0)
}

/// Handle to the buffer; clones share it.
#[derive(Clone)]
pub struct Publisher(Arc<Inner>);

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("max", &self.0.max)
            .finish()
    }
}

impl Publisher {
    /// A buffer of at most `max` events; an ack not received within `ack_timeout` of its batch's
    /// send counts as a failed publish.
    pub fn new(
        max: usize,
        ack_timeout: Duration,
        stats: Arc<LiveStats>,
        tracker: Arc<Tracker>,
    ) -> Self {
        Self(Arc::new(Inner {
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                closed: false,
                dropping: 0,
                repair_due: false,
            }),
            wake: Notify::new(),
            room: Notify::new(),
            max: max.max(1),
            ack_timeout,
            stats,
            tracker,
            published: Source::ALL.map(
                |s| metrics::counter!("klinebus_live_published_total", "source" => s.as_str()),
            ),
            latency: metrics::histogram!("klinebus_live_publish_latency_seconds"),
        }))
    }

    /// Queues `event` for publishing (never waits).
    pub fn push(&self, event: KlineEvent) {
        {
            let mut q = self.0.queue.lock();
            self.insert(&mut q, event, Instant::now(), false);
        }
        self.0.wake.notify_one();
    }

    /// Queues `event` once the buffer has room (or the publisher is closing). For REST repair
    /// and polling: they can wait, and pushing a long repair into a full buffer would drop the
    /// very candles it fetched, and repair them again, forever.
    pub async fn push_when_room(&self, event: KlineEvent) {
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let q = self.0.queue.lock();
                if q.events.len() < self.0.max || q.closed {
                    break;
                }
            }
            room.await;
        }
        self.push(event);
    }

    /// Events waiting to be published.
    pub fn len(&self) -> usize {
        self.0.queue.lock().events.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, q: &mut Queue, event: KlineEvent, at: Instant, front: bool) {
        if q.events.len() >= self.0.max {
            let victim = if !event.closed {
                Some(event.clone())
            } else if let Some(i) = q.events.iter().position(|(e, _)| !e.closed) {
                q.events.remove(i).map(|(e, _)| e)
            } else {
                q.events.pop_front().map(|(e, _)| e)
            };
            if let Some(v) = victim {
                self.dropped(q, &v);
                if !event.closed {
                    return;
                }
            }
        } else if q.dropping > 0 {
            tracing::info!(dropped = q.dropping, "publish buffer has room again");
            q.dropping = 0;
        }
        if front {
            q.events.push_front((event, at));
        } else {
            q.events.push_back((event, at));
        }
    }

    fn dropped(&self, q: &mut Queue, e: &KlineEvent) {
        let kind = if e.closed { "closed" } else { "forming" };
        self.0.stats.dropped.fetch_add(1, Relaxed);
        metrics::counter!("klinebus_live_dropped_events_total", "kind" => kind).increment(1);
        if e.closed {
            // REST repair fetches it again (see the module docs).
            self.0.tracker.lost(&e.symbol, e.interval, e.open_time);
            q.repair_due = true;
        }
        if q.dropping == 0 || e.closed {
            tracing::warn!(
                max = self.0.max,
                kind,
                candle = %e.candle_key(),
                "publish buffer full (NATS unreachable?): dropping the oldest forming update, or a \
                 closed candle that REST repair will fetch again"
            );
        }
        q.dropping += 1;
    }

    /// No more events will be pushed: the publishing task ends once the queue is empty.
    pub fn close(&self) {
        self.0.queue.lock().closed = true;
        self.0.wake.notify_one();
        self.0.room.notify_waiters();
    }

    /// Publishes until [`close`](Self::close) was called and the queue is empty.
    pub async fn run(self, js: Context) {
        let mut pause = Duration::from_millis(100);
        loop {
            let Some(batch) = self.take_batch() else {
                return;
            };
            if batch.is_empty() {
                self.0.wake.notified().await;
                // Let a few events gather: one wake-up and one burst of publishes for a batch
                // instead of for every event (thousands a second with many streams).
                tokio::time::sleep(COALESCE).await;
                continue;
            }
            let failed = self.send(&js, batch).await;
            if failed.is_empty() {
                pause = Duration::from_millis(100);
                if std::mem::take(&mut self.0.queue.lock().repair_due) {
                    tracing::info!("publishing works again; repairing dropped closed candles");
                    self.0.stats.repair_requests.fetch_add(1, Relaxed);
                    self.0.stats.repair_wanted.notify_waiters();
                }
                continue;
            }
            self.0
                .stats
                .publish_retries
                .fetch_add(failed.len() as u64, Relaxed);
            tracing::warn!(
                failed = failed.len(),
                buffered = self.len() + failed.len(),
                "publishing to NATS failed; will retry"
            );
            {
                let mut q = self.0.queue.lock();
                for (e, at) in failed.into_iter().rev() {
                    self.insert(&mut q, e, at, true);
                }
                metrics::gauge!("klinebus_live_buffered_events").set(q.events.len() as f64);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Takes up to [`BATCH`] events off the queue (`None`: closed and empty) and wakes those
    /// waiting for room.
    fn take_batch(&self) -> Option<Vec<(KlineEvent, Instant)>> {
        let batch: Vec<_> = {
            let mut q = self.0.queue.lock();
            let n = q.events.len().min(BATCH);
            if n == 0 && q.closed {
                return None;
            }
            // Set per batch, not per event: what waits behind this batch.
            metrics::gauge!("klinebus_live_buffered_events").set((q.events.len() - n) as f64);
            q.events.drain(..n).collect()
        };
        if !batch.is_empty() {
            self.0.room.notify_waiters();
        }
        Some(batch)
    }

    /// Sends a batch and awaits the acks of its closed candles; returns what was not stored.
    /// Forming updates go without an ack (see [`bus::publish_forming`]).
    async fn send(
        &self,
        js: &Context,
        batch: Vec<(KlineEvent, Instant)>,
    ) -> Vec<(KlineEvent, Instant)> {
        let client = js.client();
        let mut failed = Vec::new();
        let mut pending = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        let mut forming = 0u64;
        for (e, at) in batch {
            if !e.closed {
                match bus::publish_forming(&client, &e).await {
                    Ok(()) => {
                        forming += 1;
                        self.0.latency.record(at.elapsed().as_secs_f64());
                    }
                    Err(err) => {
                        tracing::debug!(error = %klinebus_svc::error_line(&err), "publish failed");
                        failed.push((e, at));
                    }
                }
                continue;
            }
            match bus::publish_event(js, &e).await {
                Ok(ack) => {
                    pending.push((e, at));
                    acks.push(ack);
                }
                Err(err) => {
                    tracing::debug!(error = %klinebus_svc::error_line(&err), "publish failed");
                    failed.push((e, at));
                }
            }
        }
        self.0.stats.published.fetch_add(forming, Relaxed);
        self.0.published[slot(Source::Ws)].increment(forming);
        let deadline = tokio::time::Instant::now() + self.0.ack_timeout;
        for ((e, at), r) in pending
            .into_iter()
            .zip(bus::await_acks(acks, deadline).await)
        {
            match r {
                Ok(_) => {
                    self.0.stats.published.fetch_add(1, Relaxed);
                    self.0.published[slot(e.source)].increment(1);
                    self.0.latency.record(at.elapsed().as_secs_f64());
                }
                Err(err) => {
                    tracing::debug!(error = %err, "publish not acknowledged");
                    failed.push((e, at));
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use klinebus_schemas::{Interval, Venue};

    fn ev(open: i64, closed: bool) -> KlineEvent {
        let open_time = 1_749_038_400_000 + open * 60_000;
        KlineEvent {
            venue: Venue::binance(),
            symbol: "BTCUSDT".parse().unwrap(),
            interval: Interval::M1,
            open_time,
            close_time: open_time + 59_999,
            open: "1".into(),
            high: "1".into(),
            low: "1".into(),
            close: "1".into(),
            volume: "1".into(),
            quote_volume: "1".into(),
            taker_buy_base: "0".into(),
            taker_buy_quote: "0".into(),
            trades: 1,
            closed,
            event_time: open_time + 60_000,
            source: Source::Ws,
            received_at: 0,
        }
    }

    fn contents(p: &Publisher) -> Vec<(i64, bool)> {
        let q = p.0.queue.lock();
        q.events
            .iter()
            .map(|(e, _)| ((e.open_time - 1_749_038_400_000) / 60_000, e.closed))
            .collect()
    }

    #[test]
    fn full_buffer_drops_forming_before_closed() {
        let tracker = Arc::new(Tracker::default());
        let stats = Arc::new(LiveStats::default());
        let p = Publisher::new(3, Duration::from_secs(1), stats.clone(), tracker.clone());
        p.push(ev(0, false));
        p.push(ev(1, true));
        p.push(ev(2, false));
        // Full: a new forming update is the one dropped.
        p.push(ev(3, false));
        assert_eq!(contents(&p), vec![(0, false), (1, true), (2, false)]);
        // A closed candle evicts the oldest forming update.
        p.push(ev(4, true));
        assert_eq!(contents(&p), vec![(1, true), (2, false), (4, true)]);
        p.push(ev(5, true));
        assert_eq!(contents(&p), vec![(1, true), (4, true), (5, true)]);
        // Only closed candles left: the oldest goes, and its series is rewound for repair.
        let sym = "BTCUSDT".parse().unwrap();
        tracker.observe(&sym, Interval::M1, ev(5, true).open_time);
        p.push(ev(6, true));
        assert_eq!(contents(&p), vec![(4, true), (5, true), (6, true)]);
        assert_eq!(stats.dropped.load(Relaxed), 4);
        assert_eq!(
            tracker.repair_start(&sym, Interval::M1),
            Some(ev(0, true).open_time),
            "repair restarts just before the dropped candle"
        );
    }

    #[tokio::test]
    async fn rest_pushes_wait_for_room_instead_of_dropping() {
        let tracker = Arc::new(Tracker::default());
        let stats = Arc::new(LiveStats::default());
        let p = Publisher::new(2, Duration::from_secs(1), stats.clone(), tracker);
        p.push(ev(0, true));
        p.push(ev(1, true));
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.push_when_room(ev(2, true)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "must wait while the buffer is full");
        assert_eq!(contents(&p), vec![(0, true), (1, true)]);
        assert_eq!(p.take_batch().unwrap().len(), 2);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(contents(&p), vec![(2, true)]);
        assert_eq!(stats.dropped.load(Relaxed), 0);
        // A closing publisher never leaves a REST task waiting.
        p.push(ev(3, true));
        p.close();
        tokio::time::timeout(Duration::from_secs(5), p.push_when_room(ev(4, true)))
            .await
            .unwrap();
    }
}
