//! What a sink tells the pull loop: which durable consumer, how to batch, how to back off.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use klinebus_schemas::streams::ConsumerSpec;

/// Where the durable consumer starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFrom {
    /// Normal operation: reuse the durable consumer (created to deliver everything if missing).
    Resume,
    /// Replay: delete and recreate the consumer from the first message in the stream.
    All,
    /// Replay: delete and recreate the consumer from the first message at or after this time.
    Time(async_nats::datetime::DateTime),
    /// Replay: delete and recreate the consumer from this stream sequence.
    Sequence(u64),
}

impl StartFrom {
    /// Parses `all`, an RFC 3339 time, or a stream sequence number.
    pub fn parse_replay(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        if let Ok(seq) = t.parse::<u64>() {
            return if seq == 0 {
                Err("sequence numbers start at 1".into())
            } else {
                Ok(Self::Sequence(seq))
            };
        }
        async_nats::datetime::parse_rfc3339(t)
            .map(Self::Time)
            .map_err(|e| {
                format!("expected `all`, an RFC 3339 time or a stream sequence, got {t:?}: {e}")
            })
    }

    /// The deliver policy of a (re)created consumer.
    pub fn deliver_policy(&self) -> DeliverPolicy {
        match self {
            Self::Resume | Self::All => DeliverPolicy::All,
            Self::Time(start_time) => DeliverPolicy::ByStartTime {
                start_time: *start_time,
            },
            Self::Sequence(start_sequence) => DeliverPolicy::ByStartSequence {
                start_sequence: *start_sequence,
            },
        }
    }

    /// True for the replay variants, which delete the durable first.
    pub fn is_replay(&self) -> bool {
        !matches!(self, Self::Resume)
    }
}

/// What happens to a batch after a retryable handler error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nak its messages with a backoff delay and pause as long (the default); the batch comes
    /// back later, and other messages may be handled before it.
    Nak,
    /// Keep it and hand it to the handler again after each backoff pause, its messages kept
    /// alive with progress acks meanwhile, so nothing after it is handled first. For a handler
    /// that needs stream order (indicator state). On shutdown, the batch being retried and
    /// every message pulled but not yet handled are naked at once, in stream order, so that
    /// the next owner gets them before anything newer.
    InOrder,
}

/// Settings of the pull loop.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// The durable consumer (stream, durable name, filter, ack wait, max ack pending).
    pub spec: ConsumerSpec,
    /// Flush when this many messages are collected.
    pub batch_size: usize,
    /// Flush at the latest this long after the first message of a batch arrived.
    pub flush_interval: Duration,
    /// Flush early when no further message arrives within this gap (an idle bus never holds a
    /// lone candle for the whole `flush_interval`; under load batches fill up to `batch_size`).
    pub idle_gap: Duration,
    /// First retry delay after a retryable handler error (nak delay and pause).
    pub backoff_min: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Where to start.
    pub start: StartFrom,
    /// How often the consumer lag and the retention headroom are refreshed from the server
    /// while running.
    pub lag_interval: Duration,
    /// On [`StartFrom::Resume`], update an existing durable whose ack wait differs from
    /// `spec.ack_wait` to it (nats-server 2.9 lets a durable's ack wait change in place;
    /// messages pending keep their delivery). Off by default: the consumer is left as it is.
    pub update_ack_wait: bool,
    /// How a batch is retried after a retryable handler error.
    pub retry: Retry,
}

impl ConsumeOptions {
    /// Defaults: batches of 1000, flushed after at most 200 ms (or a 2 ms gap), retries from
    /// 100 ms up to 5 s (naked, [`Retry::Nak`]), resume where the durable left off, an existing
    /// durable left as it is.
    pub fn new(spec: ConsumerSpec) -> Self {
        Self {
            spec,
            batch_size: 1000,
            flush_interval: Duration::from_millis(200),
            idle_gap: Duration::from_millis(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            start: StartFrom::Resume,
            lag_interval: Duration::from_secs(5),
            update_ack_wait: false,
            retry: Retry::Nak,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_replay_targets() {
        assert_eq!(StartFrom::parse_replay("all").unwrap(), StartFrom::All);
        assert_eq!(
            StartFrom::parse_replay("42").unwrap(),
            StartFrom::Sequence(42)
        );
        assert!(StartFrom::parse_replay("0").is_err());
        let t = StartFrom::parse_replay("2025-06-04T12:00:00Z").unwrap();
        assert!(matches!(
            t.deliver_policy(),
            DeliverPolicy::ByStartTime { .. }
        ));
        assert!(StartFrom::parse_replay("yesterday").is_err());
        assert!(!StartFrom::Resume.is_replay());
    }
}
