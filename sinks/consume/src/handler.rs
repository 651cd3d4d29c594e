//! What a sink plugs into the pull loop.

use std::future::Future;
use std::pin::Pin;

use async_nats::jetstream::Message;
use klinebus_schemas::KlineEvent;

use crate::decode::Poison;

/// A boxed error from a handler.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One good (decoded, validated) message of a batch: whatever the handler's
/// [`Handler::decode`] makes of it (for producer subjects, the candles of
/// [`decode_klines`](crate::decode_klines)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered<T = KlineEvent> {
    /// The decoded payload.
    pub event: T,
    /// The subject it was published on.
    pub subject: async_nats::Subject,
    /// Its stream sequence (0 if the server did not say).
    pub stream_sequence: u64,
    /// How many times it has been delivered (1 the first time).
    pub delivered: i64,
}

/// How a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Try again later (database down, deadlock, timeout): the batch is naked with a backoff
    /// delay and comes back; nothing is lost or skipped.
    #[error("retryable")]
    Retryable(#[source] BoxError),
    /// Stop consuming (misconfiguration): the batch is naked and the loop returns the error.
    #[error("fatal")]
    Fatal(#[source] BoxError),
}

/// What must still succeed before a committed batch is acked, e.g. post-commit announcements
/// awaiting their stream acks. The loop awaits it in the background (the next batch goes on
/// meanwhile) and keeps the batch's messages alive with progress acks: `Ok` acks them, `Err`
/// naks them with a backoff delay, so the batch comes back (marked [`Delivered::delivered`] > 1)
/// and the handler can do its follow-up again.
pub type Confirmation = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;

/// The sink side of the pull loop. `handle` must have a durable, idempotent effect before it
/// returns `Ok`: the loop acks the batch only afterwards (at-least-once delivery).
pub trait Handler: Send {
    /// What one message decodes to (`Vec<KlineEvent>` with
    /// [`decode_klines`](crate::decode_klines)).
    type Item: Send + Sync;
    /// What `handle` hands on to `after_commit` (e.g. the rows that changed).
    type Committed: Send;

    /// Decodes and validates one message; poison is dead-lettered and never reaches `handle`.
    fn decode(&self, msg: &Message) -> Result<Self::Item, Poison>;

    /// How much one message counts toward [`ConsumeOptions::batch_size`](crate::ConsumeOptions):
    /// 1 by default (batches of messages), the candles it carries for a sink of pages
    /// ([`klines_weight`](crate::klines_weight)). Read from the raw message, since batches are
    /// collected ahead, while `handle` still has the handler. A batch holds at most
    /// `batch_size` of weight, except a single message weighing more, which is a batch alone.
    fn weight(msg: &Message) -> usize {
        let _ = msg;
        1
    }

    /// Persists a batch. Called with at least one message. With
    /// [`Retry::InOrder`](crate::Retry::InOrder) a retryable failure calls it again with the
    /// same batch, so it must leave nothing of a failed attempt behind.
    fn handle(
        &mut self,
        batch: &[Delivered<Self::Item>],
    ) -> impl Future<Output = Result<Self::Committed, HandlerError>> + Send;

    /// Messages of a committed batch that proved unusable while it was handled (index into the
    /// batch, and why): they are dead-lettered instead of acked. None by default.
    fn rejected(&self, committed: &mut Self::Committed) -> Vec<(usize, Poison)> {
        let _ = committed;
        Vec::new()
    }

    /// Runs after `handle` committed, before the batch is acked: starts what must succeed
    /// first (e.g. publishes post-commit events) and returns it to be awaited, or `None` to ack
    /// at once (the default).
    fn after_commit(
        &mut self,
        committed: Self::Committed,
    ) -> impl Future<Output = Option<Confirmation>> + Send {
        let _ = committed;
        async { None }
    }
}
