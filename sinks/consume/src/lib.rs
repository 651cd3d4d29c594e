//! # klinebus-consume: the pull loop every klinebus sink shares
//!
//! A sink implements [`Handler`] (persist a batch durably and idempotently) and runs a
//! [`Consumer`] on a durable JetStream pull consumer. Delivery is **at-least-once with an
//! idempotent effect**:
//!
//! - [`batch`](crate::ConsumeOptions): messages are collected until `batch_size`, until
//!   `flush_interval` after the first one, or until the stream is quiet for `idle_gap` —
//!   whichever comes first, so a single candle never waits for the next message.
//! - [`decode_event`]: schema header, MessagePack, `KlineEvent::validate`, subject ↔ payload.
//! - [`dlq`]: poison is copied to `dlq.<consumer>` with `Klinebus-Dlq-Reason`/`-Subject`/
//!   `-Consumer` headers, the copy's ack awaited, then the original terminated (`AckKind::Term`):
//!   never dropped silently, never blocking, never redelivered forever.
//! - [`Handler::handle`] `Ok` → every message of the batch is acked (explicitly, one by one —
//!   never ack-all, which would ack other instances' messages), then [`Handler::after_ack`].
//!   [`HandlerError::Retryable`] → every message is naked with a bounded exponential
//!   [`Backoff`] delay and the loop pauses as long; nothing is lost or skipped.
//! - Broker restarts: the client reconnects; the pull stream is rebuilt and the consumer
//!   fetched again when needed.
//! - [`Stats`] / [`consumer_lag`]: received, acked, dead letters, consumer lag.
//!
//! Several processes sharing one durable name split the work (each message goes to one).

mod backoff;
mod batch;
pub mod decode;
pub mod dlq;
mod handler;
mod lag;
mod options;
mod pull;

pub use backoff::Backoff;
pub use decode::{decode_event, Poison};
pub use handler::{BoxError, Delivered, Handler, HandlerError};
pub use lag::{consumer_lag, ConsumerLag, Stats};
pub use options::{ConsumeOptions, StartFrom};
pub use pull::{flush_acks, ConsumeError, Consumer};
