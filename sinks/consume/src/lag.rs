//! Consumer lag: how far the durable is behind the stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::jetstream::Context;

/// Counters of a running pull loop, shared with whoever wants to watch (metrics, tests).
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages received.
    pub received: AtomicU64,
    /// Messages acked after the handler succeeded.
    pub acked: AtomicU64,
    /// Messages dead-lettered and terminated.
    pub dead_lettered: AtomicU64,
    /// Messages naked for a retry.
    pub naked: AtomicU64,
    /// Batches handled successfully.
    pub batches: AtomicU64,
    /// Latest known number of messages not yet delivered to the consumer.
    pub lag: AtomicU64,
}

impl Stats {
    /// Shared empty counters.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The server's view of a durable consumer's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerLag {
    /// Messages matching the filter not yet delivered.
    pub pending: u64,
    /// Messages delivered but not yet acked (or terminated).
    pub ack_pending: u64,
}

impl ConsumerLag {
    /// True when everything was delivered and settled.
    pub fn is_caught_up(&self) -> bool {
        self.pending == 0 && self.ack_pending == 0
    }
}

/// Asks the server for a durable consumer's lag.
pub async fn consumer_lag(
    js: &Context,
    stream: &str,
    durable: &str,
) -> Result<ConsumerLag, async_nats::Error> {
    let stream = js.get_stream(stream).await?;
    let info = stream.consumer_info(durable).await?;
    Ok(ConsumerLag {
        pending: info.num_pending,
        ack_pending: info.num_ack_pending as u64,
    })
}
