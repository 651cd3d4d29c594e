//! Turning one JetStream message into validated candles, or saying why it is poison: a
//! producer's message on `klines.…` ([`decode_klines`]: one [`KlineEvent`] or a page of them)
//! or a sink's closed-candle announcement ([`decode_closed`]); and what a producer message
//! weighs in a batch before it is decoded ([`klines_weight`]).

use async_nats::HeaderMap;
use klinebus_schemas::bus::schema_of;
use klinebus_schemas::closed::{InvalidClosed, CLOSED_SCHEMA_VERSION};
use klinebus_schemas::codec::{self, DecodeError};
use klinebus_schemas::page::{self, KlinesError, MAX_PER_PAGE, PAGE_SCHEMA_VERSION};
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
    /// A page (`kline-page/1`) whose candles are not one closed, ascending series, or none.
    #[error("page: {0}")]
    Page(String),
}

impl Poison {
    /// Short label for metrics and the first word of the DLQ reason header.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Version(_) => "version",
            Self::Undecodable(_) => "undecodable",
            Self::Invalid(_) => "invalid",
            Self::Subject(_) => "subject",
            Self::Page(_) => "page",
        }
    }
}

/// Decodes and validates a message on a producer subject into its candles, oldest first: a
/// single [`KlineEvent`] (header `kline/1` or none) or a page (`kline-page/1`, up to
/// [`MAX_PER_PAGE`] closed candles of one series). Checks the schema header, the MessagePack
/// payload, every candle's `validate()`, a page's shape, and the subject tokens
/// (`klines.<source>.<venue>.<symbol>.<interval>`) against every candle. A page with one bad
/// candle is poison as a whole: it is dead-lettered as it came, never partly written.
pub fn decode_klines(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Vec<KlineEvent>, Poison> {
    let version = schema_of(headers);
    let is_page = version == Some(PAGE_SCHEMA_VERSION);
    let candles = page::decode_klines(version, payload).map_err(|e| match &e {
        KlinesError::Decode(DecodeError::Version(_)) => Poison::Version(error_line(&e)),
        KlinesError::Decode(_) => Poison::Undecodable(error_line(&e)),
        // A page's shape check validates every candle on the way.
        KlinesError::Page(p @ InvalidClosed::Candle { .. }) => Poison::Invalid(error_line(p)),
        KlinesError::Page(p) => Poison::Page(error_line(p)),
        KlinesError::TooLarge(_) => Poison::Page(error_line(&e)),
    })?;
    if !is_page {
        for c in &candles {
            c.validate().map_err(|e| Poison::Invalid(error_line(&e)))?;
        }
    }
    let Some(parsed) = subjects::parse_kline(subject) else {
        return Err(Poison::Subject(format!(
            "{subject:?} is not a klines.<source>.<venue>.<symbol>.<interval> subject"
        )));
    };
    if let Some(c) = candles.iter().find(|c| {
        parsed.source != c.source
            || parsed.venue != c.venue
            || parsed.symbol != c.symbol
            || parsed.interval != c.interval
    }) {
        return Err(Poison::Subject(format!(
            "subject {subject:?} does not match payload {} (candle at {})",
            subjects::for_event(c),
            c.open_time
        )));
    }
    Ok(candles)
}

/// How many candles a message on a producer subject carries, read without decoding it: a
/// page's array length from the head of its MessagePack map, 1 for a single event. Only for
/// bounding batches in candles before they are decoded: a page whose head cannot be read
/// weighs [`MAX_PER_PAGE`] (it is poison, or another writer's layout), and decoding decides
/// what the message really is.
pub fn klines_weight(headers: Option<&HeaderMap>, payload: &[u8]) -> usize {
    if schema_of(headers) != Some(PAGE_SCHEMA_VERSION) {
        return 1;
    }
    page_len(payload).unwrap_or(MAX_PER_PAGE).max(1)
}

/// The length of the `candles` array when it is the map's first key, as every klinebus writer
/// puts it (MessagePack heads only: map, key string, array).
fn page_len(payload: &[u8]) -> Option<usize> {
    fn take<'a>(rd: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = rd.split_at_checked(n)?;
        *rd = rest;
        Some(head)
    }
    fn uint(rd: &mut &[u8], n: usize) -> Option<usize> {
        Some(
            take(rd, n)?
                .iter()
                .fold(0, |v, &b| (v << 8) | usize::from(b)),
        )
    }
    let rd = &mut &payload[..];
    let entries = match *take(rd, 1)?.first()? {
        m @ 0x80..=0x8f => usize::from(m & 0x0f),
        0xde => uint(rd, 2)?,
        0xdf => uint(rd, 4)?,
        _ => return None,
    };
    let key_len = match *take(rd, 1)?.first()? {
        s @ 0xa0..=0xbf => usize::from(s & 0x1f),
        0xd9 => uint(rd, 1)?,
        0xda => uint(rd, 2)?,
        0xdb => uint(rd, 4)?,
        _ => return None,
    };
    if entries == 0 || take(rd, key_len)? != b"candles" {
        return None;
    }
    match *take(rd, 1)?.first()? {
        a @ 0x90..=0x9f => Some(usize::from(a & 0x0f)),
        0xdc => uint(rd, 2),
        0xdd => uint(rd, 4),
        _ => None,
    }
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
    let version = schema_of(headers);
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
    use klinebus_schemas::closed::ClosedCandlesRef;
    use klinebus_schemas::codec::SCHEMA_HEADER;
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

    /// `n` consecutive closed candles of the sample's series.
    fn series(n: i64) -> Vec<KlineEvent> {
        (0..n)
            .map(|i| {
                let mut c = sample();
                c.open_time += i * 60_000;
                c.close_time += i * 60_000;
                c.event_time += i * 60_000;
                c
            })
            .collect()
    }

    fn page_bytes(candles: &[KlineEvent]) -> Vec<u8> {
        codec::encode(&ClosedCandlesRef { candles }).unwrap()
    }

    fn page_headers() -> HeaderMap {
        let mut h = schema_headers();
        h.insert(SCHEMA_HEADER, PAGE_SCHEMA_VERSION);
        h
    }

    fn kind(subject: &str, h: Option<&HeaderMap>, payload: &[u8]) -> &'static str {
        decode_klines(subject, h, payload).unwrap_err().kind()
    }

    #[test]
    fn accepts_a_good_event() {
        let bytes = codec::encode(&sample()).unwrap();
        let e = decode_klines(SUBJECT, Some(&schema_headers()), &bytes).unwrap();
        assert_eq!(e, vec![sample()]);
        // No header at all is accepted too (older producers).
        assert_eq!(
            decode_klines(SUBJECT, None, &bytes).unwrap(),
            vec![sample()]
        );
        assert_eq!(klines_weight(Some(&schema_headers()), &bytes), 1);
        assert_eq!(klines_weight(None, &bytes), 1);
    }

    #[test]
    fn classifies_poison() {
        let good = codec::encode(&sample()).unwrap();
        let mut h = HeaderMap::new();
        h.insert(SCHEMA_HEADER, "kline/2");
        assert_eq!(kind(SUBJECT, Some(&h), &good), "version");
        assert_eq!(kind(SUBJECT, None, b"\xff\x00garbage"), "undecodable");
        let mut nan = sample();
        nan.close = "NaN".into();
        let bytes = codec::encode(&nan).unwrap();
        assert_eq!(kind(SUBJECT, None, &bytes), "invalid");
        assert_eq!(kind("klines.ws.binance.ETHUSDT.1m", None, &good), "subject");
        assert_eq!(
            kind("klines.poll.binance.BTCUSDT.1m", None, &good),
            "subject"
        );
        assert_eq!(kind("other", None, &good), "subject");
        // A forming single event is fine; only pages must be closed.
        let mut forming = sample();
        forming.closed = false;
        let bytes = codec::encode(&forming).unwrap();
        assert!(decode_klines(SUBJECT, None, &bytes).is_ok());
    }

    #[test]
    fn accepts_a_good_page_and_weighs_it() {
        let candles = series(3);
        let bytes = page_bytes(&candles);
        let h = page_headers();
        assert_eq!(decode_klines(SUBJECT, Some(&h), &bytes).unwrap(), candles);
        assert_eq!(klines_weight(Some(&h), &bytes), 3);
        let full = series(MAX_PER_PAGE as i64);
        assert_eq!(klines_weight(Some(&h), &page_bytes(&full)), MAX_PER_PAGE);
        // The same bytes without the page header are not a page (and not an event either).
        assert_eq!(klines_weight(None, &bytes), 1);
        assert_eq!(kind(SUBJECT, None, &bytes), "undecodable");
    }

    #[test]
    fn classifies_poison_pages() {
        let h = page_headers();
        let good = series(3);
        // Another page version.
        let mut v2 = page_headers();
        v2.insert(SCHEMA_HEADER, "kline-page/2");
        assert_eq!(kind(SUBJECT, Some(&v2), &page_bytes(&good)), "version");
        // Garbage, a truncated page, a single event under the page header.
        assert_eq!(
            kind(SUBJECT, Some(&h), b"\x81\xa7candles\xdc\x00"),
            "undecodable"
        );
        let bytes = page_bytes(&good);
        assert_eq!(
            kind(SUBJECT, Some(&h), &bytes[..bytes.len() - 5]),
            "undecodable"
        );
        let single = codec::encode(&sample()).unwrap();
        assert_eq!(kind(SUBJECT, Some(&h), &single), "undecodable");
        // One unbelievable candle spoils the page.
        let mut nan = good.clone();
        nan[1].high = "NaN".into();
        assert_eq!(kind(SUBJECT, Some(&h), &page_bytes(&nan)), "invalid");
        // Shape: empty, a forming candle, two series, not ascending, a repeated candle.
        assert_eq!(kind(SUBJECT, Some(&h), &page_bytes(&[])), "page");
        let mut forming = good.clone();
        forming[2].closed = false;
        assert_eq!(kind(SUBJECT, Some(&h), &page_bytes(&forming)), "page");
        let mut mixed = good.clone();
        mixed[1].symbol = "ETHUSDT".parse().unwrap();
        assert_eq!(kind(SUBJECT, Some(&h), &page_bytes(&mixed)), "page");
        let mut backwards = good.clone();
        backwards.reverse();
        assert_eq!(kind(SUBJECT, Some(&h), &page_bytes(&backwards)), "page");
        let twice = vec![good[0].clone(), good[0].clone()];
        assert_eq!(kind(SUBJECT, Some(&h), &page_bytes(&twice)), "page");
        // Subject: another series, another source (on one candle or all), not a subject.
        assert_eq!(
            kind("klines.ws.binance.ETHUSDT.1m", Some(&h), &bytes),
            "subject"
        );
        assert_eq!(
            kind("klines.ws.binance.BTCUSDT.5m", Some(&h), &bytes),
            "subject"
        );
        assert_eq!(
            kind("klines.backfill.binance.BTCUSDT.1m", Some(&h), &bytes),
            "subject"
        );
        let mut one_source = good.clone();
        one_source[2].source = Source::Backfill;
        assert_eq!(kind(SUBJECT, Some(&h), &page_bytes(&one_source)), "subject");
        assert_eq!(
            kind("candles.closed.binance.BTCUSDT.1m", Some(&h), &bytes),
            "subject"
        );
        // Whatever it is, a poison page still weighs something (its claim, or a full page).
        assert_eq!(klines_weight(Some(&h), &page_bytes(&nan)), 3);
        assert_eq!(klines_weight(Some(&h), b"\xff\x00garbage"), MAX_PER_PAGE);
        assert_eq!(klines_weight(Some(&h), &page_bytes(&[])), 1);
    }

    #[test]
    fn poison_reasons_name_the_candle() {
        let h = page_headers();
        let mut forming = series(3);
        forming[2].closed = false;
        let p = decode_klines(SUBJECT, Some(&h), &page_bytes(&forming)).unwrap_err();
        assert_eq!(
            p.to_string(),
            format!("page: candle at {}: not closed", forming[2].open_time)
        );
        let mut nan = series(2);
        nan[1].close = "NaN".into();
        let p = decode_klines(SUBJECT, Some(&h), &page_bytes(&nan)).unwrap_err();
        assert!(
            p.to_string().starts_with(&format!(
                "invalid: candle at {}: field close",
                nan[1].open_time
            )),
            "{p}"
        );
    }
}
