//! The post-commit event on `candles.closed.<venue>.<symbol>.<interval>` (stream `CANDLES`):
//! closed candles of ONE series that a sink has committed to PostgreSQL, in open-time order.
//!
//! A live series commits one closed candle at a time, so its messages carry one candle; a
//! backfill or replay commits thousands per flush, and one message per series and flush (at most
//! [`MAX_PER_MESSAGE`] candles) keeps the broker's work per candle small — a message per candle
//! doubled JetStream's load and halved the sink's throughput.

use std::borrow::Borrow;

use serde::{Deserialize, Serialize};

use crate::event::InvalidEvent;
use crate::KlineEvent;

/// `Klinebus-Schema` of a [`ClosedCandles`] message.
pub const CLOSED_SCHEMA_VERSION: &str = "closed/1";

/// Most candles in one message (about 170 KB, well under NATS's default 1 MB payload limit).
pub const MAX_PER_MESSAGE: usize = 500;

/// Closed, committed candles of one series, oldest first: a MessagePack map `{"candles": [...]}`
/// whose elements are [`KlineEvent`] maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedCandles {
    /// The candles, ascending open time, all of one (venue, symbol, interval), all closed.
    pub candles: Vec<KlineEvent>,
}

/// The same map, serialized from a slice of events or of references to them.
#[derive(Serialize)]
pub struct ClosedCandlesRef<'a, T: Serialize = &'a KlineEvent> {
    /// See [`ClosedCandles::candles`].
    pub candles: &'a [T],
}

/// Why a decoded [`ClosedCandles`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidClosed {
    /// No candle at all.
    #[error("no candles")]
    Empty,
    /// A candle fails [`KlineEvent::validate`].
    #[error("candle at {open_time}")]
    Candle {
        /// Its open time.
        open_time: i64,
        /// Why.
        source: InvalidEvent,
    },
    /// A forming candle, another series than the first candle's, or not ascending.
    #[error("candle at {open_time}: {reason}")]
    Shape {
        /// Its open time.
        open_time: i64,
        /// Why.
        reason: &'static str,
    },
}

impl ClosedCandles {
    /// Checks every candle and that they form one series in ascending order, all closed.
    pub fn validate(&self) -> Result<(), InvalidClosed> {
        let first = self.candles.first().ok_or(InvalidClosed::Empty)?;
        let mut previous: Option<i64> = None;
        for c in &self.candles {
            c.validate().map_err(|source| InvalidClosed::Candle {
                open_time: c.open_time,
                source,
            })?;
            let shape = |reason| InvalidClosed::Shape {
                open_time: c.open_time,
                reason,
            };
            if !c.closed {
                return Err(shape("not closed"));
            }
            if c.venue != first.venue || c.symbol != first.symbol || c.interval != first.interval {
                return Err(shape("another series than the first candle's"));
            }
            if previous.is_some_and(|p| p >= c.open_time) {
                return Err(shape("not after the previous candle"));
            }
            previous = Some(c.open_time);
        }
        Ok(())
    }

    /// `Nats-Msg-Id` of a message carrying `candles` (non-empty, one series, ascending):
    /// `<venue>:<symbol>:<interval>:<first open_time>` for one candle (the candle's own key),
    /// `…:<first>-<last>` for several.
    pub fn msg_id<E: Borrow<KlineEvent>>(candles: &[E]) -> Option<String> {
        let (first, last) = (candles.first()?.borrow(), candles.last()?.borrow());
        Some(if candles.len() == 1 {
            first.candle_key()
        } else {
            format!("{}-{}", first.candle_key(), last.open_time)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec;
    use crate::event::tests::sample;

    fn next(e: &KlineEvent) -> KlineEvent {
        let mut n = e.clone();
        n.open_time += 60_000;
        n.close_time += 60_000;
        n.event_time += 60_000;
        n.received_at += 60_000;
        n
    }

    #[test]
    fn wire_form_is_a_map_of_kline_event_maps() {
        let a = sample();
        let b = next(&a);
        let bytes = codec::encode(&ClosedCandlesRef { candles: &[&a, &b] }).unwrap();
        // fixmap(1), fixstr "candles", fixarray(2), then each event exactly as alone.
        let mut expected = vec![0x81, 0xa7];
        expected.extend_from_slice(b"candles");
        expected.push(0x92);
        expected.extend(codec::encode(&a).unwrap());
        expected.extend(codec::encode(&b).unwrap());
        assert_eq!(bytes, expected);
        let back: ClosedCandles = codec::decode(&bytes).unwrap();
        assert_eq!(back.candles, vec![a, b]);
        assert_eq!(back.validate(), Ok(()));
    }

    #[test]
    fn rejects_what_is_not_one_closed_ascending_series() {
        let a = sample();
        let b = next(&a);
        assert_eq!(
            ClosedCandles { candles: vec![] }.validate(),
            Err(InvalidClosed::Empty)
        );
        let backwards = ClosedCandles {
            candles: vec![b.clone(), a.clone()],
        };
        assert!(matches!(
            backwards.validate(),
            Err(InvalidClosed::Shape { .. })
        ));
        let mut other = b.clone();
        other.symbol = "ETHUSDT".parse().unwrap();
        let mixed = ClosedCandles {
            candles: vec![a.clone(), other],
        };
        assert!(mixed.validate().is_err());
        let mut forming = b.clone();
        forming.closed = false;
        assert!(ClosedCandles {
            candles: vec![a.clone(), forming]
        }
        .validate()
        .is_err());
        let mut nan = b;
        nan.close = "NaN".into();
        assert!(matches!(
            ClosedCandles {
                candles: vec![a, nan]
            }
            .validate(),
            Err(InvalidClosed::Candle { .. })
        ));
    }

    #[test]
    fn msg_id_of_one_candle_is_its_key() {
        let a = sample();
        let b = next(&a);
        assert_eq!(ClosedCandles::msg_id(&[&a]), Some(a.candle_key()));
        assert_eq!(
            ClosedCandles::msg_id(&[&a, &b]).unwrap(),
            format!("binance:BTCUSDT:1m:1749038400000-{}", b.open_time)
        );
        assert_eq!(ClosedCandles::msg_id::<&KlineEvent>(&[]), None);
    }
}
