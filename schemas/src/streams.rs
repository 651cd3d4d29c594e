//! JetStream stream and durable-consumer definitions, as plain data. The `nats` feature turns
//! them into server configs ([`crate::bus`]): the operator applies them (`klinectl streams
//! apply`), and a binary creates a missing one; they are stated once, here.

use std::time::Duration;

use crate::subjects::{CLOSED_PREFIX, DLQ_PREFIX, KLINES_PREFIX, SIGNALS_PREFIX};

/// Settings of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name.
    pub name: String,
    /// Subjects it captures.
    pub subjects: Vec<String>,
    /// Oldest message kept (older ones are discarded first).
    pub max_age: Duration,
    /// Byte budget (oldest discarded first).
    pub max_bytes: i64,
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
    pub duplicate_window: Duration,
    /// Replicas (1 on a single server; 3 in a cluster).
    pub replicas: usize,
    /// What the stream is for.
    pub description: String,
}

/// Stream of every producer event (`klines.>`).
pub const KLINES_STREAM: &str = "KLINES";
/// Stream of post-commit closed candles (`candles.closed.>`).
pub const CANDLES_STREAM: &str = "CANDLES";
/// Stream of computed signals (`signals.>`).
pub const SIGNALS_STREAM: &str = "SIGNALS";
/// Stream of dead letters (`dlq.>`).
pub const DLQ_STREAM: &str = "DLQ";

/// Default durable consumer of kline-pg-sink on `KLINES` (`--consumer`); also what a backfill
/// waits for (`--verify-consumer`). Its dead letters go to `dlq.pg-sink`.
pub const PG_SINK_DURABLE: &str = "pg-sink";
/// Default durable consumer of kline-signals on `CANDLES` (`--consumer`); also names its
/// dead-letter subject `dlq.signals` and its ownership lock.
pub const SIGNALS_DURABLE: &str = "signals";

const GIB: i64 = 1 << 30;
const DAY: Duration = Duration::from_secs(86_400);

/// Knobs an operator sets for the streams (env or flags in each binary).
///
/// JetStream reserves each stream's `max_bytes` against the server's storage limit (by default
/// 75 % of the free disk when the server starts), so the defaults stay modest: about 10 GiB for
/// all four streams. Raise them on a machine with the disk for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `KLINES` age limit.
    pub klines_max_age: Duration,
    /// `KLINES` byte limit.
    pub klines_max_bytes: i64,
    /// Dedup window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// Stream replicas.
    pub replicas: usize,
}

impl Default for Retention {
    /// 30 days or 8 GiB of producer events (whichever is hit first), a 2-minute dedup window
    /// (the NATS default: covers WebSocket/polling overlap and reconnect repair without holding
    /// millions of ids during a fast backfill), one replica.
    fn default() -> Self {
        Self {
            klines_max_age: 30 * DAY,
            klines_max_bytes: 8 * GIB,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

/// All streams klinebus uses.
pub fn all_streams(r: &Retention) -> Vec<StreamSpec> {
    vec![
        StreamSpec {
            name: KLINES_STREAM.into(),
            subjects: vec![format!("{KLINES_PREFIX}.>")],
            max_age: r.klines_max_age,
            max_bytes: r.klines_max_bytes,
            duplicate_window: r.duplicate_window,
            replicas: r.replicas,
            description: "klinebus: every kline event published by the producers".into(),
        },
        StreamSpec {
            name: CANDLES_STREAM.into(),
            subjects: vec![format!("{CLOSED_PREFIX}.>")],
            max_age: 7 * DAY,
            max_bytes: GIB,
            duplicate_window: r.duplicate_window,
            replicas: r.replicas,
            description: "klinebus: closed candles, published after they are committed".into(),
        },
        StreamSpec {
            name: SIGNALS_STREAM.into(),
            subjects: vec![format!("{SIGNALS_PREFIX}.>")],
            max_age: 30 * DAY,
            max_bytes: GIB,
            duplicate_window: r.duplicate_window,
            replicas: r.replicas,
            description: "klinebus: strategy signals per closed candle".into(),
        },
        StreamSpec {
            name: DLQ_STREAM.into(),
            subjects: vec![format!("{DLQ_PREFIX}.>")],
            max_age: 90 * DAY,
            max_bytes: GIB / 4,
            duplicate_window: r.duplicate_window,
            replicas: r.replicas,
            description: "klinebus: messages a sink could not use, with the reason".into(),
        },
    ]
}

/// Settings of a durable pull consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Stream it reads.
    pub stream: String,
    /// Durable name; instances sharing it split the work.
    pub durable: String,
    /// One filter subject (NATS 2.9 allows one per consumer).
    pub filter_subject: String,
    /// How long a delivered message may stay un-acked before redelivery.
    pub ack_wait: Duration,
    /// Most un-acked messages outstanding across all instances.
    pub max_ack_pending: i64,
}

impl ConsumerSpec {
    /// A durable consumer of `KLINES` with defaults sized for batched sinks. The ack wait is
    /// short (10 s) so that another instance gets a dead one's messages soon; a sink keeps the
    /// batches it still holds alive with progress acks.
    pub fn klines(durable: &str, filter_subject: String) -> Self {
        Self {
            stream: KLINES_STREAM.into(),
            durable: durable.into(),
            filter_subject,
            ack_wait: Duration::from_secs(10),
            max_ack_pending: 50_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_do_not_overlap() {
        let s = all_streams(&Retention::default());
        let prefixes: Vec<_> = s
            .iter()
            .map(|s| s.subjects[0].trim_end_matches(".>"))
            .collect();
        for (i, a) in prefixes.iter().enumerate() {
            for b in &prefixes[i + 1..] {
                assert!(!a.starts_with(b) && !b.starts_with(a), "{a} overlaps {b}");
            }
        }
    }
}
