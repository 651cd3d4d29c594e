//! Collecting a batch from the pull stream: flush when its messages weigh `batch_size` (a
//! message weighs 1, or the candles of a page: [`Handler::weight`](crate::Handler::weight)),
//! when `flush_interval` has passed since the first one, or when the stream has been quiet for
//! `idle_gap` — so a lone candle is written at once instead of waiting for company.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind};
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
/// A missed heartbeat or "no responders" means the server holds no pull request of ours (the
/// consumer's leader changed, or it has none yet). async-nats (0.51) sends the next request
/// only once the lost one would have expired, 35 s later; a new stream asks again at once.
pub(crate) fn is_terminal(e: &MessagesError) -> bool {
    matches!(
        e.kind(),
        MessagesErrorKind::ConsumerDeleted
            | MessagesErrorKind::PushBasedConsumer
            | MessagesErrorKind::RequestLimitExceeded
            | MessagesErrorKind::MissingHeartbeat
            | MessagesErrorKind::NoResponders
    )
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most weight in one batch (a heavier message alone is a batch of its own).
    pub size: usize,
    pub flush_interval: Duration,
    pub idle_gap: Duration,
}

/// Waits for the first message (as long as it takes), then gathers more within the limits.
/// A message that would take the batch past `limits.size` is left in `carry` and begins the
/// next batch (which takes it without waiting), so a batch weighs at most `limits.size`
/// unless its one message alone weighs more.
pub(crate) async fn collect<S, M>(
    messages: &mut S,
    batch: &mut Vec<M>,
    carry: &mut Option<M>,
    limits: Limits,
    weigh: fn(&M) -> usize,
    shutdown: &CancellationToken,
) -> Collected
where
    S: Stream<Item = Result<M, MessagesError>> + Unpin,
{
    let first = match carry.take() {
        Some(m) => m,
        None => {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Collected::Shutdown,
                m = messages.next() => m,
            };
            match first {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Collected::Error(e),
                None => return Collected::Ended,
            }
        }
    };
    let mut weight = weigh(&first);
    batch.push(first);
    let deadline = Instant::now() + limits.flush_interval;
    while weight < limits.size {
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
            Some(Ok(m)) => {
                let w = weigh(&m);
                if weight.saturating_add(w) > limits.size {
                    *carry = Some(m);
                    break;
                }
                weight += w;
                batch.push(m);
            }
            Some(Err(e)) => return Collected::Error(e),
            None => return Collected::Ended,
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Collected::Ready
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::stream;

    /// The tests' messages are their weights.
    fn weigh(m: &usize) -> usize {
        *m
    }

    const LIMITS: Limits = Limits {
        size: 10,
        flush_interval: Duration::from_secs(5),
        idle_gap: Duration::from_millis(20),
    };

    /// Batches (by weights) that `collect` makes of messages of `weights`, all buffered.
    async fn batches(weights: &[usize]) -> Vec<Vec<usize>> {
        let items: Vec<Result<usize, MessagesError>> = weights.iter().map(|&w| Ok(w)).collect();
        let mut s = stream::iter(items).chain(stream::pending());
        let mut carry = None;
        let mut out = Vec::new();
        let shutdown = CancellationToken::new();
        loop {
            let mut batch = Vec::new();
            let state = tokio::time::timeout(
                Duration::from_secs(1),
                collect(&mut s, &mut batch, &mut carry, LIMITS, weigh, &shutdown),
            )
            .await;
            if batch.is_empty() {
                assert!(state.is_err(), "nothing collected, yet {state:?}");
                return out;
            }
            out.push(batch);
        }
    }

    #[tokio::test]
    async fn batches_are_bounded_by_weight_and_a_heavy_message_goes_alone() {
        assert_eq!(
            batches(&[1; 25]).await,
            vec![vec![1; 10], vec![1; 10], vec![1; 5]]
        );
        assert_eq!(
            batches(&[4, 4, 4, 30, 1, 9, 2, 10]).await,
            vec![vec![4, 4], vec![4], vec![30], vec![1, 9], vec![2], vec![10]]
        );
    }
}
