//! Collecting a batch from the pull stream: flush when `batch_size` messages are in, when
//! `flush_interval` has passed since the first one, or when the stream has been quiet for
//! `idle_gap` — so a lone candle is written at once instead of waiting for company.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind};
use async_nats::jetstream::Message;
use futures::{FutureExt, Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why collecting stopped. The collected messages (possibly none) are in the batch either way.
#[derive(Debug)]
pub(crate) enum Collected {
    /// Full, timer expired or the stream went quiet: flush and keep going.
    Ready,
    /// Shutdown requested: flush what is there and stop.
    Shutdown,
    /// The stream reported an error; flush, then decide whether to rebuild it.
    Error(MessagesError),
    /// The stream ended: flush, then rebuild it.
    Ended,
}

/// Errors after which the pull stream is useless and must be recreated (consumer re-fetched).
pub(crate) fn is_terminal(e: &MessagesError) -> bool {
    matches!(
        e.kind(),
        MessagesErrorKind::ConsumerDeleted
            | MessagesErrorKind::PushBasedConsumer
            | MessagesErrorKind::RequestLimitExceeded
    )
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub size: usize,
    pub flush_interval: Duration,
    pub idle_gap: Duration,
}

/// Waits for the first message (as long as it takes), then gathers more within the limits.
pub(crate) async fn collect<S>(
    messages: &mut S,
    batch: &mut Vec<Message>,
    limits: Limits,
    shutdown: &CancellationToken,
) -> Collected
where
    S: Stream<Item = Result<Message, MessagesError>> + Unpin,
{
    let first = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return Collected::Shutdown,
        m = messages.next() => m,
    };
    match first {
        Some(Ok(m)) => batch.push(m),
        Some(Err(e)) => return Collected::Error(e),
        None => return Collected::Ended,
    }
    let deadline = Instant::now() + limits.flush_interval;
    while batch.len() < limits.size {
        // Fast path: whatever is already buffered, without touching a timer.
        let next = match messages.next().now_or_never() {
            Some(m) => m,
            None => {
                let quiet = (Instant::now() + limits.idle_gap).min(deadline);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Collected::Shutdown,
                    m = messages.next() => m,
                    _ = tokio::time::sleep_until(quiet) => return Collected::Ready,
                }
            }
        };
        match next {
            Some(Ok(m)) => batch.push(m),
            Some(Err(e)) => return Collected::Error(e),
            None => return Collected::Ended,
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Collected::Ready
}
