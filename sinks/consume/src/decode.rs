//! Turning one JetStream message into validated candles, or saying why it is poison: a
//! producer's [`KlineEvent`] ([`decode_event`]) or a sink's closed-candle announcement
//! ([`decode_closed`]).

use async_nats::HeaderMap;
use klinebus_schemas::closed::CLOSED_SCHEMA_VERSION;
use klinebus_schemas::codec::{self, SCHEMA_HEADER};
use klinebus_schemas::{subjects, ClosedCandles, KlineEvent};
use klinebus_svc::error_line;

/// Why a message cannot be used. Poison is dead-lettered and terminated, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    /// A `Klinebus-Schema` header of a version this build does not read.
    #[error("version: {0}")]
    Version(String),
    /// Not a MessagePack `KlineEvent` (garbage, truncated, invalid symbol/venue/interval text…).
    #[error("undecodable: {0}")]
    Undecodable(String),
    /// Decoded, but not a believable candle (`KlineEvent::validate`: NaN, misaligned times…).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The subject is not a producer subject or disagrees with the payload.
    #[error("subject: {0}")]
    Subject(String),
}

impl Poison {
    /// Short label for metrics and the first word of the DLQ reason header.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Version(_) => "version",
            Self::Undecodable(_) => "undecodable",
            Self::Invalid(_) => "invalid",
            Self::Subject(_) => "subject",
        }
    }
}

/// Decodes and validates a message: schema header, MessagePack payload, `validate()`, and the
/// subject tokens (`klines.<source>.<venue>.<symbol>.<interval>`) matching the payload.
pub fn decode_event(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<KlineEvent, Poison> {
    let version = headers
        .and_then(|h| h.get(SCHEMA_HEADER))
        .map(|v| v.as_str());
    codec::check_version(version).map_err(|e| Poison::Version(error_line(&e)))?;
    let event: KlineEvent =
        codec::decode(payload).map_err(|e| Poison::Undecodable(error_line(&e)))?;
    event
        .validate()
        .map_err(|e| Poison::Invalid(error_line(&e)))?;
    let Some(parsed) = subjects::parse_kline(subject) else {
        return Err(Poison::Subject(format!(
            "{subject:?} is not a klines.<source>.<venue>.<symbol>.<interval> subject"
        )));
    };
    if parsed.source != event.source
        || parsed.venue != event.venue
        || parsed.symbol != event.symbol
        || parsed.interval != event.interval
    {
        return Err(Poison::Subject(format!(
            "subject {subject:?} does not match payload {}",
            subjects::for_event(&event)
        )));
    }
    Ok(event)
}

/// Decodes a `candles.closed.<venue>.<symbol>.<interval>` message (stream `CANDLES`) into its
/// closed candles, in order: a [`ClosedCandles`] payload (header `Klinebus-Schema: closed/1`,
/// what kline-pg-sink publishes) or a single `KlineEvent` (header `kline/1` or none); every
/// candle valid and closed, all of the subject's series.
pub fn decode_closed(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Vec<KlineEvent>, Poison> {
    let version = headers
        .and_then(|h| h.get(SCHEMA_HEADER))
        .map(|v| v.as_str());
    let batch = if version == Some(CLOSED_SCHEMA_VERSION) {
        codec::decode::<ClosedCandles>(payload).map_err(|e| Poison::Undecodable(error_line(&e)))?
    } else {
        codec::check_version(version).map_err(|e| Poison::Version(error_line(&e)))?;
        let event: KlineEvent =
            codec::decode(payload).map_err(|e| Poison::Undecodable(error_line(&e)))?;
        ClosedCandles {
            candles: vec![event],
        }
    };
    batch
        .validate()
        .map_err(|e| Poison::Invalid(error_line(&e)))?;
    // `validate` refuses an empty message, so there is a first candle.
    let Some(first) = batch.candles.first() else {
        return Err(Poison::Invalid("no candles".into()));
    };
    let expected = subjects::closed(&first.venue, &first.symbol, first.interval);
    if subject != expected {
        return Err(Poison::Subject(format!(
            "{subject:?} does not match payload {expected}"
        )));
    }
    Ok(batch.candles)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use klinebus_schemas::bus::schema_headers;
    use klinebus_schemas::{Interval, Source, Venue};

    fn sample() -> KlineEvent {
        KlineEvent {
            venue: Venue::binance(),
            symbol: "BTCUSDT".parse().unwrap(),
            interval: Interval::M1,
            open_time: 1_749_038_400_000,
            close_time: 1_749_038_459_999,
            open: "105312.44000000".into(),
            high: "105340.00000000".into(),
            low: "105298.10000000".into(),
            close: "105330.01000000".into(),
            volume: "8.41236000".into(),
            quote_volume: "885990.91189950".into(),
            trades: 1264,
            taker_buy_base: "4.56875000".into(),
            taker_buy_quote: "481181.37820313".into(),
            closed: true,
            event_time: 1_749_038_460_000,
            source: Source::Ws,
            received_at: 1_749_038_460_120,
        }
    }

    const SUBJECT: &str = "klines.ws.binance.BTCUSDT.1m";

    #[test]
    fn accepts_a_good_event() {
        let bytes = codec::encode(&sample()).unwrap();
        let e = decode_event(SUBJECT, Some(&schema_headers()), &bytes).unwrap();
        assert_eq!(e, sample());
        // No header at all is accepted too (older producers).
        assert!(decode_event(SUBJECT, None, &bytes).is_ok());
    }

    #[test]
    fn classifies_poison() {
        let good = codec::encode(&sample()).unwrap();
        let mut h = HeaderMap::new();
        h.insert(SCHEMA_HEADER, "kline/2");
        assert_eq!(
            decode_event(SUBJECT, Some(&h), &good).unwrap_err().kind(),
            "version"
        );
        assert_eq!(
            decode_event(SUBJECT, None, b"\xff\x00garbage")
                .unwrap_err()
                .kind(),
            "undecodable"
        );
        let mut nan = sample();
        nan.close = "NaN".into();
        let bytes = codec::encode(&nan).unwrap();
        assert_eq!(
            decode_event(SUBJECT, None, &bytes).unwrap_err().kind(),
            "invalid"
        );
        assert_eq!(
            decode_event("klines.ws.binance.ETHUSDT.1m", None, &good)
                .unwrap_err()
                .kind(),
            "subject"
        );
        assert_eq!(
            decode_event("klines.poll.binance.BTCUSDT.1m", None, &good)
                .unwrap_err()
                .kind(),
            "subject"
        );
        assert_eq!(
            decode_event("other", None, &good).unwrap_err().kind(),
            "subject"
        );
    }
}
