//! # klinebus-consume: the pull loop every klinebus sink shares
//!
//! A sink implements [`Handler`] (persist a batch durably and idempotently) and runs a
//! [`Consumer`] on a durable JetStream pull consumer. Delivery is **at-least-once with an
//! idempotent effect**:
//!
//! - [`batch`](crate::ConsumeOptions): messages are collected until they weigh `batch_size`
//!   ([`Handler::weight`]: 1 a message by default, the candles of a page for kline-pg-sink),
//!   until `flush_interval` after the first one, or until the stream is quiet for `idle_gap` —
//!   whichever comes first, so a single candle never waits for the next message.
//! - [`Handler::decode`]: the sink's decoder, e.g. [`decode_klines`] (schema header,
//!   MessagePack, `KlineEvent::validate`, a page's shape, subject ↔ every candle) for
//!   producer messages or [`decode_closed`] for the closed-candle announcements on `CANDLES`.
//! - [`dlq`]: poison is copied to `dlq.<consumer>` with `Klinebus-Dlq-Reason`/`-Subject`/
//!   `-Consumer` headers, the copy's ack awaited, then the original terminated (`AckKind::Term`):
//!   never dropped silently, never blocking, never redelivered forever.
//! - [`Handler::handle`] `Ok` → [`Handler::after_commit`] may start a follow-up that must
//!   succeed first (a [`Confirmation`], e.g. post-commit publishes awaiting their stream acks),
//!   awaited in the background while the next batch goes on; then every message of the batch
//!   is acked (explicitly, one by one — never ack-all, which would ack other instances'
//!   messages). A failed confirmation naks them with a backoff delay: the batch comes back
//!   (`delivered` > 1) and the follow-up is done again.
//!   [`HandlerError::Retryable`] → every message is naked with a bounded exponential
//!   [`Backoff`](klinebus_svc::Backoff) delay and the loop pauses as long; nothing is lost or skipped. With
//!   [`Retry::InOrder`] the same batch is handed to the handler again after each pause
//!   instead, so nothing overtakes it (a sink that needs stream order).
//!   [`Handler::rejected`] may name messages of a committed batch that proved unusable: they
//!   are dead-lettered instead of acked.
//! - Progress acks: every batch held (queued for the handler, in its transaction, awaiting its
//!   confirmation) longer than a quarter of the consumer's ack wait is kept alive with
//!   `AckKind::Progress`, so a short ack wait redelivers only what a dead instance held, never
//!   a slow batch mid-flight. [`ConsumeOptions::update_ack_wait`] brings an existing durable's
//!   ack wait to the configured one at start-up.
//! - Broker restarts: the client reconnects; the pull stream is rebuilt and the consumer
//!   fetched again when needed.
//! - [`Stats`] / [`consumer_lag`]: received, acked, dead letters, consumer lag.
//! - [`consumer_backlog`] / [`RetentionHeadroom`]: how close the durable's oldest unacked
//!   message is to the stream's `max_age` and `max_bytes` (JetStream discards it there, read or
//!   not), refreshed with the lag every `lag_interval` and exported as
//!   `klinebus_sink_retention_headroom_ratio{stream,consumer,limit}` (and `_seconds`, `_bytes`).
//! - [`db::is_fatal`]: which PostgreSQL errors a handler reports as
//!   [`HandlerError::Fatal`] rather than retryable.
//!
//! Several processes sharing one durable name split the work (each message goes to one).

mod batch;
pub mod db;
pub mod decode;
pub mod dlq;
mod handler;
mod lag;
mod options;
mod progress;
mod pull;

pub use decode::{decode_closed, decode_klines, klines_weight, Poison};
pub use handler::{BoxError, Confirmation, Delivered, Handler, HandlerError};
pub use lag::{
    consumer_backlog, consumer_lag, Backlog, ConsumerLag, ProbeError, RetentionHeadroom, Stats,
};
pub use options::{ConsumeOptions, Retry, StartFrom};
pub use pull::{flush_acks, ConsumeError, Consumer};
