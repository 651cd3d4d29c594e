//! Progress acks (`+WPI`) for messages this process holds: collected batches waiting for the
//! handler, in its transaction, or awaiting their confirmation. A short ack wait then only
//! brings back what a dead instance held, never a slow batch that is still being written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::Subject;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The batches in flight, each with the reply subjects of its messages.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    next_id: AtomicU64,
    batches: Mutex<Vec<Entry>>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    /// When it was tracked or last kept alive.
    touched: Instant,
    replies: Arc<[Subject]>,
}

/// A tracked batch; dropping it (after the ack or nak) stops its progress acks.
#[derive(Debug)]
pub(crate) struct Tracked {
    id: u64,
    set: Arc<InFlight>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut b = self.set.lock();
        if let Some(i) = b.iter().position(|e| e.id == self.id) {
            b.swap_remove(i);
        }
    }
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic elsewhere cannot leave the list half-updated: keep using it.
        self.batches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tracks `msgs` until the returned guard drops.
    pub(crate) fn track(self: &Arc<Self>, msgs: &[Message]) -> Tracked {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replies: Arc<[Subject]> = msgs.iter().filter_map(|m| m.reply.clone()).collect();
        self.lock().push(Entry {
            id,
            touched: Instant::now(),
            replies,
        });
        Tracked {
            id,
            set: self.clone(),
        }
    }

    /// The reply subjects of batches not touched for `age`, marked as touched now.
    fn due(&self, age: Duration) -> Vec<Arc<[Subject]>> {
        let now = Instant::now();
        self.lock()
            .iter_mut()
            .filter(|e| now.duration_since(e.touched) >= age)
            .map(|e| {
                e.touched = now;
                e.replies.clone()
            })
            .collect()
    }

    /// Messages tracked right now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().iter().map(|e| e.replies.len()).sum()
    }
}

/// The progress-ack interval for a consumer's ack wait: a quarter of it, so a batch is kept
/// alive at the latest half-way through its ack wait (at least every 100 ms).
pub(crate) fn interval(ack_wait: Duration) -> Duration {
    (ack_wait / 4).max(Duration::from_millis(100))
}

/// Every `every`, sends a progress ack for each message of the batches held that long, until
/// `stop` fires. A batch handled within `every` (the usual case) costs nothing.
pub(crate) async fn keep_alive(
    client: async_nats::Client,
    set: Arc<InFlight>,
    every: Duration,
    durable: String,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let mut sent = 0u64;
        for replies in set.due(every) {
            for r in replies.iter() {
                if client.publish(r.clone(), "+WPI".into()).await.is_err() {
                    // Not connected: the server cannot take it now; the next round tries again.
                    break;
                }
                sent += 1;
            }
        }
        if sent > 0 {
            tracing::debug!(
                messages = sent,
                "progress acks sent for batches still in flight"
            );
            metrics::counter!("klinebus_sink_progress_acks_total", "consumer" => durable.clone())
                .increment(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_a_quarter_of_the_ack_wait() {
        assert_eq!(
            interval(Duration::from_secs(10)),
            Duration::from_millis(2500)
        );
        assert_eq!(
            interval(Duration::from_millis(200)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn due_only_after_the_interval_and_untracked_on_drop() {
        let age = Duration::from_millis(50);
        let set = Arc::new(InFlight::default());
        let a = set.track(&[]);
        assert!(set.due(age).is_empty());
        std::thread::sleep(age + Duration::from_millis(10));
        let _b = set.track(&[]);
        assert_eq!(set.due(age).len(), 1, "only the older batch");
        assert!(set.due(age).is_empty(), "just touched");
        drop(a);
        assert_eq!(set.lock().len(), 1);
        assert_eq!(set.len(), 0);
    }
}
