//! Consumer lag (how far the durable is behind the stream) and retention headroom (how close
//! its oldest unacknowledged message is to being discarded by the stream's limits).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{ConsumerInfoError, GetStreamError};
use async_nats::jetstream::stream::{RawMessageError, RawMessageErrorKind, Stream};
use async_nats::jetstream::{consumer, Context};

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
    Ok(look(js, stream, durable).await?.lag())
}

/// How close the oldest message a durable has not acknowledged is to its stream's discard
/// limits (age and bytes, the two klinebus streams set): JetStream discards the oldest messages
/// once either is exceeded, read or not, so an unacked message that reaches one is lost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetentionHeadroom {
    /// The stream's `max_age` (`None`: unlimited).
    pub max_age: Option<Duration>,
    /// The stream's `max_bytes` (`None`: unlimited).
    pub max_bytes: Option<u64>,
    /// Age of the oldest message the durable has not acknowledged, by the stream's timestamp
    /// of it and this host's clock (`None`: everything acknowledged).
    pub oldest_unacked_age: Option<Duration>,
    /// Bytes the stream holds from that message on, which must fit in `max_bytes` for it to
    /// stay: an estimate, the stream's mean message size × the messages from there to the
    /// last (JetStream reports no byte count per range). Exact when the oldest unacked message
    /// is the stream's first (nothing acked left in it) or the messages are of one size.
    pub unacked_bytes: u64,
}

impl RetentionHeadroom {
    /// 1 − oldest unacked age / `max_age`, in [0, 1]: 1 when nothing is unacked or the age is
    /// unlimited, 0 when the next expiry discards an unacked message.
    pub fn age_ratio(&self) -> f64 {
        match (self.max_age, self.oldest_unacked_age) {
            (Some(max), Some(age)) => ratio_left(age.as_secs_f64(), max.as_secs_f64()),
            _ => 1.0,
        }
    }

    /// 1 − unacked bytes / `max_bytes`, in [0, 1]: 1 when nothing is unacked or the bytes are
    /// unlimited, 0 when the next publish discards an unacked message.
    pub fn bytes_ratio(&self) -> f64 {
        self.max_bytes
            .map_or(1.0, |max| ratio_left(self.unacked_bytes as f64, max as f64))
    }

    /// Time left before the oldest unacked message expires (`max_age` when nothing is
    /// unacked; `None` when the age is unlimited).
    pub fn age_left(&self) -> Option<Duration> {
        self.max_age
            .map(|max| max.saturating_sub(self.oldest_unacked_age.unwrap_or_default()))
    }

    /// Bytes that may still be stored before an unacked message is discarded (`None` when
    /// the bytes are unlimited).
    pub fn bytes_left(&self) -> Option<u64> {
        self.max_bytes
            .map(|max| max.saturating_sub(self.unacked_bytes))
    }
}

fn ratio_left(used: f64, limit: f64) -> f64 {
    if limit <= 0.0 {
        return 1.0;
    }
    (1.0 - used / limit).clamp(0.0, 1.0)
}

/// Why the backlog could not be read from the server.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Stream info failed.
    #[error("stream {stream}: info")]
    Stream {
        /// Stream name.
        stream: String,
        /// Why.
        #[source]
        source: GetStreamError,
    },
    /// Consumer info failed.
    #[error("consumer {durable}: info")]
    Consumer {
        /// Durable name.
        durable: String,
        /// Why.
        #[source]
        source: ConsumerInfoError,
    },
    /// The oldest unacknowledged message could not be read (`$JS.API.STREAM.MSG.GET.<stream>`).
    #[error("stream {stream}: message at or after {sequence}")]
    Message {
        /// Stream name.
        stream: String,
        /// First sequence asked for.
        sequence: u64,
        /// Why.
        #[source]
        source: RawMessageError,
    },
}

/// A durable's lag and retention headroom, as one look at the server gives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// Messages not yet delivered or not yet acked.
    pub lag: ConsumerLag,
    /// How close the oldest unacked message is to the stream's limits.
    pub headroom: RetentionHeadroom,
}

/// The oldest unacked message last read: (first sequence asked for, its sequence, its time).
/// The ack floor stays put while a sink is stuck, so the message need not be read again.
pub(crate) type OldestCache = Option<(u64, u64, async_nats::datetime::DateTime)>;

/// Asks the server for a durable consumer's lag and retention headroom: stream info, consumer
/// info and, when something is unacked, the first message after the ack floor that matches
/// the durable's filter (its stream timestamp).
pub async fn consumer_backlog(
    js: &Context,
    stream: &str,
    durable: &str,
) -> Result<Backlog, ProbeError> {
    let l = look(js, stream, durable).await?;
    let headroom = l.headroom(&mut None).await?;
    Ok(Backlog {
        lag: l.lag(),
        headroom,
    })
}

/// One look at a durable: its stream's info and its own.
pub(crate) struct Look {
    stream: Stream,
    info: consumer::Info,
}

pub(crate) async fn look(js: &Context, stream: &str, durable: &str) -> Result<Look, ProbeError> {
    let s = js
        .get_stream(stream)
        .await
        .map_err(|source| ProbeError::Stream {
            stream: stream.to_owned(),
            source,
        })?;
    let info = s
        .consumer_info(durable)
        .await
        .map_err(|source| ProbeError::Consumer {
            durable: durable.to_owned(),
            source,
        })?;
    Ok(Look { stream: s, info })
}

impl Look {
    pub(crate) fn lag(&self) -> ConsumerLag {
        ConsumerLag {
            pending: self.info.num_pending,
            ack_pending: self.info.num_ack_pending as u64,
        }
    }

    /// The headroom; reads the oldest unacked message unless `cache` holds it.
    pub(crate) async fn headroom(
        &self,
        cache: &mut OldestCache,
    ) -> Result<RetentionHeadroom, ProbeError> {
        let config = &self.stream.cached_info().config;
        let state = &self.stream.cached_info().state;
        let mut headroom = RetentionHeadroom {
            max_age: Some(config.max_age).filter(|d| !d.is_zero()),
            max_bytes: u64::try_from(config.max_bytes).ok().filter(|&b| b > 0),
            oldest_unacked_age: None,
            unacked_bytes: 0,
        };
        if self.lag().is_caught_up() {
            *cache = None;
            return Ok(headroom);
        }
        let from = self.info.ack_floor.stream_sequence + 1;
        let oldest = match *cache {
            // Still in the stream: the same message, no need to fetch it again.
            Some((f, seq, time)) if f == from && seq >= state.first_sequence => Some((seq, time)),
            _ => self.first_from(from).await?,
        };
        *cache = oldest.map(|(seq, time)| (from, seq, time));
        if let Some((seq, time)) = oldest {
            let age = async_nats::datetime::now() - time;
            headroom.oldest_unacked_age = Some(Duration::try_from(age).unwrap_or_default());
            let from_oldest = state
                .last_sequence
                .saturating_sub(seq)
                .saturating_add(1)
                .min(state.messages);
            headroom.unacked_bytes = if state.messages == 0 {
                0
            } else {
                (u128::from(state.bytes) * u128::from(from_oldest) / u128::from(state.messages))
                    as u64
            };
        }
        Ok(headroom)
    }

    /// Sequence and time of the first message at or after `from` that the durable reads.
    async fn first_from(
        &self,
        from: u64,
    ) -> Result<Option<(u64, async_nats::datetime::DateTime)>, ProbeError> {
        // A consumer without a filter (or with 2.10's several) reads every subject: the first
        // message after the floor is then the oldest candidate, which errs towards less headroom.
        let filter = Some(self.info.config.filter_subject.as_str())
            .filter(|f| !f.is_empty())
            .unwrap_or(">");
        match self
            .stream
            .get_first_raw_message_by_subject(filter, from)
            .await
        {
            Ok(m) => Ok(Some((m.sequence, m.time))),
            // Nothing left after the floor (discarded, or none matching): nothing to lose.
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(source) => Err(ProbeError::Message {
                stream: self.info.stream_name.clone(),
                sequence: from,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headroom(age: Option<u64>, unacked: u64) -> RetentionHeadroom {
        RetentionHeadroom {
            max_age: Some(Duration::from_secs(100)),
            max_bytes: Some(1000),
            oldest_unacked_age: age.map(Duration::from_secs),
            unacked_bytes: unacked,
        }
    }

    #[test]
    fn headroom_is_what_is_left_of_each_limit() {
        let h = headroom(Some(25), 750);
        assert_eq!((h.age_ratio(), h.bytes_ratio()), (0.75, 0.25));
        assert_eq!(h.age_left(), Some(Duration::from_secs(75)));
        assert_eq!(h.bytes_left(), Some(250));
        // Past a limit (the server discards a little after it): 0, never negative.
        let h = headroom(Some(130), 1200);
        assert_eq!((h.age_ratio(), h.bytes_ratio()), (0.0, 0.0));
        assert_eq!(
            (h.age_left(), h.bytes_left()),
            (Some(Duration::ZERO), Some(0))
        );
        // Nothing unacked: the whole budget.
        let h = headroom(None, 0);
        assert_eq!((h.age_ratio(), h.bytes_ratio()), (1.0, 1.0));
        assert_eq!(h.age_left(), Some(Duration::from_secs(100)));
    }

    #[test]
    fn unlimited_limits_leave_the_headroom_at_1() {
        let h = RetentionHeadroom {
            max_age: None,
            max_bytes: None,
            oldest_unacked_age: Some(Duration::from_secs(1 << 30)),
            unacked_bytes: u64::MAX,
        };
        assert_eq!((h.age_ratio(), h.bytes_ratio()), (1.0, 1.0));
        assert_eq!((h.age_left(), h.bytes_left()), (None, None));
    }
}
