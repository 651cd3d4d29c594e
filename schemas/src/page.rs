//! A page of history on a producer subject: many closed candles of ONE series in one message.
//!
//! Backfill publishes history a page at a time (a REST page, or a slice of an archive file)
//! instead of a message per candle: the broker's work is per message, and at a million
//! candles a message each cost nats-server more CPU than the sink and PostgreSQL together.
//! Live events stay one per update (`kline/1`): they are latency-bound, not throughput-bound.
//!
//! The payload is the map of [`ClosedCandles`] (`{"candles": [KlineEvent, …]}`), header
//! `Klinebus-Schema: kline-page/1`, on `klines.<source>.<venue>.<symbol>.<interval>`; every
//! candle closed, of the subject's series and source, ascending, at most [`MAX_PER_PAGE`].
//! `Nats-Msg-Id` is [`ClosedCandles::msg_id`]: the candle key for one candle,
//! `<key of the first>-<open_time of the last>` for several.

use crate::closed::InvalidClosed;
use crate::codec::{self, DecodeError, SCHEMA_VERSION};
use crate::{ClosedCandles, KlineEvent};

/// `Klinebus-Schema` of a page message.
pub const PAGE_SCHEMA_VERSION: &str = "kline-page/1";

/// Most candles in one page (a REST page; about 330 KB, under NATS's default 1 MB payload).
pub const MAX_PER_PAGE: usize = 1000;

/// Why a message on a producer subject cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KlinesError {
    /// Not the MessagePack shape its header names, or an unknown version.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A page that is not one closed, ascending series of valid candles.
    #[error("page")]
    Page(#[source] InvalidClosed),
    /// More candles than a page may carry.
    #[error("page of {0} candles (at most {MAX_PER_PAGE})")]
    TooLarge(usize),
}

/// Decodes any message on a `klines.…` subject into its candles, oldest first: a single
/// [`KlineEvent`] (header `kline/1`, or none; its fields are the caller's to
/// [`validate`](KlineEvent::validate)) or a page (header `kline-page/1`: at most
/// [`MAX_PER_PAGE`] candles, each valid, one closed ascending series).
pub fn decode_klines(
    version: Option<&str>,
    payload: &[u8],
) -> Result<Vec<KlineEvent>, KlinesError> {
    match version {
        Some(PAGE_SCHEMA_VERSION) => {
            let page: ClosedCandles = codec::decode(payload)?;
            if page.candles.len() > MAX_PER_PAGE {
                return Err(KlinesError::TooLarge(page.candles.len()));
            }
            page.validate().map_err(KlinesError::Page)?;
            Ok(page.candles)
        }
        None | Some(SCHEMA_VERSION) => Ok(vec![codec::decode(payload)?]),
        Some(other) => Err(DecodeError::Version(other.to_owned()).into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::closed::ClosedCandlesRef;
    use crate::event::tests::sample;

    const GOLDEN_MSGPACK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/kline_page.msgpack");
    const GOLDEN_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/kline_page.json");

    fn page() -> Vec<KlineEvent> {
        let a = sample();
        let mut b = a.clone();
        b.open_time += 60_000;
        b.close_time += 60_000;
        b.event_time += 60_000;
        b.open = a.close.clone();
        b.high = "105351.02000000".into();
        b.low = "105320.00000000".into();
        b.close = "105344.10000000".into();
        b.volume = "3.10000000".into();
        b.quote_volume = "326534.00000000".into();
        b.taker_buy_base = "1.00000000".into();
        b.taker_buy_quote = "105333.00000000".into();
        b.trades = 412;
        vec![a, b]
    }

    #[test]
    fn golden_page_matches() {
        // The committed bytes are the contract for other languages (regenerate with
        // KLINEBUS_BLESS=1 only together with a version bump).
        let candles = page();
        let bytes = codec::encode(&ClosedCandlesRef {
            candles: candles.as_slice(),
        })
        .unwrap();
        let json = serde_json::to_string_pretty(&ClosedCandles {
            candles: candles.clone(),
        })
        .unwrap()
            + "\n";
        if std::env::var_os("KLINEBUS_BLESS").is_some() {
            std::fs::write(GOLDEN_MSGPACK, &bytes).unwrap();
            std::fs::write(GOLDEN_JSON, &json).unwrap();
        }
        assert_eq!(bytes, std::fs::read(GOLDEN_MSGPACK).unwrap());
        let from_json: ClosedCandles =
            serde_json::from_str(&std::fs::read_to_string(GOLDEN_JSON).unwrap()).unwrap();
        assert_eq!(from_json.candles, candles);
        assert_eq!(
            decode_klines(Some(PAGE_SCHEMA_VERSION), &bytes).unwrap(),
            candles
        );
        assert_eq!(
            ClosedCandles::msg_id(&candles).unwrap(),
            "binance:BTCUSDT:1m:1749038400000-1749038460000"
        );
    }

    #[test]
    fn single_events_and_versions() {
        let one = codec::encode(&sample()).unwrap();
        assert_eq!(decode_klines(None, &one).unwrap(), vec![sample()]);
        assert_eq!(
            decode_klines(Some(SCHEMA_VERSION), &one).unwrap(),
            vec![sample()]
        );
        assert!(matches!(
            decode_klines(Some("kline-page/2"), &one),
            Err(KlinesError::Decode(DecodeError::Version(_)))
        ));
        // A page header on a single event is not a page.
        assert!(decode_klines(Some(PAGE_SCHEMA_VERSION), &one).is_err());
    }

    #[test]
    fn a_page_must_be_one_closed_ascending_series() {
        let mut candles = page();
        candles.reverse();
        let bytes = codec::encode(&ClosedCandlesRef {
            candles: candles.as_slice(),
        })
        .unwrap();
        assert!(matches!(
            decode_klines(Some(PAGE_SCHEMA_VERSION), &bytes),
            Err(KlinesError::Page(_))
        ));
        let big: Vec<KlineEvent> = (0..=MAX_PER_PAGE as i64)
            .map(|i| {
                let mut c = sample();
                c.open_time += i * 60_000;
                c.close_time += i * 60_000;
                c
            })
            .collect();
        let bytes = codec::encode(&ClosedCandlesRef {
            candles: big.as_slice(),
        })
        .unwrap();
        assert!(matches!(
            decode_klines(Some(PAGE_SCHEMA_VERSION), &bytes),
            Err(KlinesError::TooLarge(1001))
        ));
        let empty: &[KlineEvent] = &[];
        let bytes = codec::encode(&ClosedCandlesRef { candles: empty }).unwrap();
        assert!(decode_klines(Some(PAGE_SCHEMA_VERSION), &bytes).is_err());
    }
}
