//! Strict parsing of Binance kline stream frames, raw (`/ws/…`) or combined (`/stream?…`,
//! `{"stream":…,"data":…}`), into a [`WsKline`] and then a validated [`KlineEvent`].
//!
//! Nothing a server (or a man in the middle) sends can panic here: every deviation from the
//! documented shape is a [`FrameError`] with a short `kind()` for metrics labels.

use klinebus_schemas::{Interval, KlineEvent, Source, Symbol, Venue};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

/// Why a text frame is not a usable kline event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The text is not JSON.
    #[error("frame is not JSON: {0}")]
    NotJson(String),
    /// JSON, but an event type other than `kline` (or none at all).
    #[error("unexpected event type {0:?}")]
    UnknownEvent(String),
    /// A field is missing or has the wrong type.
    #[error("malformed kline frame: {0}")]
    Shape(String),
    /// Fields that must agree do not (symbol vs stream name, interval, …).
    #[error("inconsistent kline frame: {0}")]
    Inconsistent(String),
    /// The values are not a believable candle (`KlineEvent::validate`).
    #[error("implausible kline: {0}")]
    Invalid(String),
}

impl FrameError {
    /// A low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "not_json",
            Self::UnknownEvent(_) => "unknown_event",
            Self::Shape(_) => "shape",
            Self::Inconsistent(_) => "inconsistent",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// One kline event as Binance sent it; prices and volumes are the exchange's exact text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsKline {
    /// Event time `E` (ms).
    pub event_time: i64,
    /// Symbol (upper-case).
    pub symbol: Symbol,
    /// Interval, from `k.i`.
    pub interval: Interval,
    /// `k.t`.
    pub open_time: i64,
    /// `k.T`.
    pub close_time: i64,
    /// `k.o`.
    pub open: String,
    /// `k.h`.
    pub high: String,
    /// `k.l`.
    pub low: String,
    /// `k.c`.
    pub close: String,
    /// `k.v`.
    pub volume: String,
    /// `k.q`.
    pub quote_volume: String,
    /// `k.V`.
    pub taker_buy_base: String,
    /// `k.Q`.
    pub taker_buy_quote: String,
    /// `k.n`.
    pub trades: u64,
    /// `k.x`: the candle is final.
    pub closed: bool,
}

/// What a text frame turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A kline event (boxed: it is most of a frame's size).
    Kline(Box<WsKline>),
    /// `serverShutdown`: the server will close this connection soon; reconnect elsewhere now.
    ServerShutdown {
        /// `E` (ms).
        event_time: i64,
    },
    /// A reply to a control request (`{"result":…,"id":…}` or `{"error":…}`): not data.
    Control(Value),
}

// Unknown extra fields are tolerated: Binance adds fields over time; types are strict.
#[derive(Deserialize)]
struct RawEvent<'a> {
    e: &'a str,
    #[serde(rename = "E")]
    event_time: i64,
    s: &'a str,
    #[serde(borrow)]
    k: RawK<'a>,
}

/// The combined-stream envelope, exactly its two keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Combined<'a> {
    stream: &'a str,
    #[serde(borrow)]
    data: RawEvent<'a>,
}

// Field names follow Binance's one-letter keys; `f`, `L` and `B` are read for their type only.
#[derive(Deserialize)]
#[allow(non_snake_case)]
struct RawK<'a> {
    t: i64,
    T: i64,
    s: &'a str,
    i: &'a str,
    f: i64,
    L: i64,
    o: &'a str,
    c: &'a str,
    h: &'a str,
    l: &'a str,
    v: &'a str,
    n: u64,
    x: bool,
    q: &'a str,
    V: &'a str,
    Q: &'a str,
    #[serde(default)]
    B: Option<IgnoredAny>,
}

/// Parses one text frame (raw or combined).
pub fn parse_frame(text: &str) -> Result<Frame, FrameError> {
    // Fast path, the frames that matter: a kline event, combined or raw, read straight into
    // borrowed fields. Anything else (control replies, serverShutdown, escapes in strings,
    // malformed frames) takes the general path below, which gives the exact error.
    if let Ok(c) = serde_json::from_str::<Combined<'_>>(text) {
        if c.data.e == "kline" {
            return kline_frame(c.data, Some(c.stream));
        }
    } else if let Ok(raw) = serde_json::from_str::<RawEvent<'_>>(text) {
        if raw.e == "kline" {
            return kline_frame(raw, None);
        }
    }
    let v: Value = serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    let Value::Object(obj) = &v else {
        return Err(FrameError::Shape("frame is not a JSON object".into()));
    };
    if obj.contains_key("result") || obj.contains_key("error") {
        return Ok(Frame::Control(v));
    }
    let (stream, data) = match (obj.get("stream"), obj.get("data")) {
        (Some(Value::String(s)), Some(d)) if obj.len() == 2 => (Some(s.as_str()), d),
        (None, None) => (None, &v),
        _ => return Err(FrameError::Shape("bad combined-stream envelope".into())),
    };
    match data.get("e") {
        Some(Value::String(e)) if e == "kline" => {}
        Some(Value::String(e)) if e == "serverShutdown" => {
            return match data.get("E").and_then(Value::as_i64) {
                Some(event_time) => Ok(Frame::ServerShutdown { event_time }),
                None => Err(FrameError::Shape("serverShutdown without E".into())),
            };
        }
        Some(Value::String(e)) => return Err(FrameError::UnknownEvent(e.clone())),
        Some(other) => return Err(FrameError::UnknownEvent(other.to_string())),
        None => return Err(FrameError::UnknownEvent(String::new())),
    }
    let raw = RawEvent::deserialize(data).map_err(|e| FrameError::Shape(e.to_string()))?;
    kline_frame(raw, stream)
}

/// The checks every kline frame passes, whichever path read it.
fn kline_frame(raw: RawEvent<'_>, stream: Option<&str>) -> Result<Frame, FrameError> {
    let k = raw.k;
    let _ = (k.f, k.L, k.B);
    if k.s != raw.s {
        return Err(FrameError::Inconsistent(format!(
            "event symbol {} but kline symbol {}",
            raw.s, k.s
        )));
    }
    let symbol: Symbol = raw
        .s
        .parse()
        .map_err(|e| FrameError::Shape(format!("symbol: {e}")))?;
    let interval: Interval =
        k.i.parse()
            .map_err(|e| FrameError::Shape(format!("interval: {e}")))?;
    if let Some(name) = stream {
        if !is_stream_of(name, &symbol, interval) {
            return Err(FrameError::Inconsistent(format!(
                "stream {name} carries {}",
                crate::ws::stream_name(&symbol, interval)
            )));
        }
    }
    Ok(Frame::Kline(Box::new(WsKline {
        event_time: raw.event_time,
        symbol,
        interval,
        open_time: k.t,
        close_time: k.T,
        open: k.o.to_owned(),
        high: k.h.to_owned(),
        low: k.l.to_owned(),
        close: k.c.to_owned(),
        volume: k.v.to_owned(),
        quote_volume: k.q.to_owned(),
        taker_buy_base: k.V.to_owned(),
        taker_buy_quote: k.Q.to_owned(),
        trades: k.n,
        closed: k.x,
    })))
}

/// `name == ws::stream_name(symbol, interval)` without building the name for every frame.
fn is_stream_of(name: &str, symbol: &Symbol, interval: Interval) -> bool {
    let (n, sym, iv) = (
        name.as_bytes(),
        symbol.as_str().as_bytes(),
        interval.as_str(),
    );
    const MID: &[u8] = b"@kline_";
    n.len() == sym.len() + MID.len() + iv.len()
        && n[..sym.len()]
            .iter()
            .zip(sym)
            .all(|(a, b)| *a == b.to_ascii_lowercase())
        && &n[sym.len()..sym.len() + MID.len()] == MID
        && &n[sym.len() + MID.len()..] == iv.as_bytes()
}

impl WsKline {
    /// The validated event, received at `received_at_ms` (wall clock).
    pub fn to_event(&self, received_at_ms: i64) -> Result<KlineEvent, FrameError> {
        self.clone().into_event(received_at_ms)
    }

    /// [`WsKline::to_event`], moving the decimal strings instead of copying them.
    pub fn into_event(self, received_at_ms: i64) -> Result<KlineEvent, FrameError> {
        let event = KlineEvent {
            venue: Venue::binance(),
            symbol: self.symbol,
            interval: self.interval,
            open_time: self.open_time,
            close_time: self.close_time,
            open: self.open,
            high: self.high,
            low: self.low,
            close: self.close,
            volume: self.volume,
            quote_volume: self.quote_volume,
            taker_buy_base: self.taker_buy_base,
            taker_buy_quote: self.taker_buy_quote,
            trades: self.trades,
            closed: self.closed,
            event_time: self.event_time,
            source: Source::Ws,
            received_at: received_at_ms,
        };
        event
            .validate()
            .map_err(|e| FrameError::Invalid(klinebus_svc::error_line(&e)))?;
        Ok(event)
    }
}

#[cfg(test)]
fn parse_event(text: &str, received_at_ms: i64) -> Result<Option<KlineEvent>, FrameError> {
    match parse_frame(text)? {
        Frame::Kline(k) => k.to_event(received_at_ms).map(Some),
        Frame::Control(_) | Frame::ServerShutdown { .. } => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const RAW: &str = include_str!("../fixtures/ws_kline_raw.json");
    const COMBINED: &str = include_str!("../fixtures/ws_kline_combined.json");

    fn expect_kline(text: &str) -> WsKline {
        match parse_frame(text).unwrap() {
            Frame::Kline(k) => *k,
            other => panic!("not a kline: {other:?}"),
        }
    }

    #[test]
    fn fixtures_parse_exactly() {
        for text in [RAW, COMBINED] {
            let k = expect_kline(text);
            assert_eq!(k.event_time, 1_749_038_784_182);
            assert_eq!(k.symbol.as_str(), "BTCUSDT");
            assert_eq!(k.interval, Interval::M1);
            assert_eq!(k.open_time, 1_749_038_760_000);
            assert_eq!(k.close_time, 1_749_038_819_999);
            assert_eq!(k.open, "105318.41000000");
            assert_eq!(k.close, "105309.77000000");
            assert_eq!(k.high, "105322.00000000");
            assert_eq!(k.low, "105301.15000000");
            assert_eq!(k.volume, "2.13884000");
            assert_eq!(k.trades, 412);
            assert!(!k.closed);
            assert_eq!(k.quote_volume, "225245.73196400");
            assert_eq!(k.taker_buy_base, "1.05217000");
            assert_eq!(k.taker_buy_quote, "110808.12616300");
            let ev = k.to_event(5).unwrap();
            assert_eq!(ev.source, Source::Ws);
            assert_eq!(ev.msg_id(), None);
            assert_eq!(ev.received_at, 5);
        }
    }

    #[test]
    fn control_replies_are_not_data() {
        assert!(matches!(
            parse_frame(r#"{"result":null,"id":1}"#).unwrap(),
            Frame::Control(_)
        ));
        assert!(matches!(
            parse_frame(r#"{"error":{"code":2,"msg":"Invalid request"},"id":7}"#).unwrap(),
            Frame::Control(_)
        ));
        assert_eq!(parse_event(r#"{"result":null,"id":1}"#, 0).unwrap(), None);
    }

    #[test]
    fn server_shutdown_notice_raw_and_combined() {
        for text in [
            r#"{"e":"serverShutdown","E":1749038795000}"#,
            r#"{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1749038795000}}"#,
        ] {
            assert_eq!(
                parse_frame(text).unwrap(),
                Frame::ServerShutdown {
                    event_time: 1_749_038_795_000
                }
            );
        }
        assert!(parse_frame(r#"{"e":"serverShutdown"}"#).is_err());
    }

    fn replace(text: &str, from: &str, to: &str) -> String {
        assert!(text.contains(from), "{from} not in fixture");
        text.replacen(from, to, 1)
    }

    #[test]
    fn broken_frames_are_errors_of_the_right_kind() {
        let cases: Vec<(String, &str)> = vec![
            ("not json at all".into(), "not_json"),
            (COMBINED[..COMBINED.len() / 2].into(), "not_json"),
            ("[1,2,3]".into(), "shape"),
            ("42".into(), "shape"),
            (replace(RAW, "\"kline\"", "\"trade\""), "unknown_event"),
            (replace(RAW, "\"e\": \"kline\",", ""), "unknown_event"),
            (
                replace(RAW, "\"t\": 1749038760000", "\"t\": \"1749038760000\""),
                "shape",
            ),
            (replace(RAW, "\"n\": 412", "\"n\": -412"), "shape"),
            (replace(RAW, "\"x\": false", "\"x\": \"false\""), "shape"),
            (
                replace(RAW, "\"o\": \"105318.41000000\"", "\"o\": 105318.41"),
                "shape",
            ),
            (replace(RAW, "\"i\": \"1m\"", "\"i\": \"2m\""), "shape"),
            (replace(RAW, "\"c\": \"105309.77000000\",", ""), "shape"),
            (
                replace(
                    RAW,
                    "\"s\": \"BTCUSDT\",\n  \"k\"",
                    "\"s\": \"ETHUSDT\",\n  \"k\"",
                ),
                "inconsistent",
            ),
            (
                replace(COMBINED, "btcusdt@kline_1m", "btcusdt@kline_5m"),
                "inconsistent",
            ),
            (replace(COMBINED, "\"stream\"", "\"strem\""), "shape"),
            (
                replace(RAW, "\"h\": \"105322.00000000\"", "\"h\": \"1.0\""),
                "invalid",
            ),
            (
                replace(RAW, "\"c\": \"105309.77000000\"", "\"c\": \"NaN\""),
                "invalid",
            ),
            (
                replace(RAW, "\"t\": 1749038760000", "\"t\": 1749038760001"),
                "invalid",
            ),
            (
                replace(RAW, "\"T\": 1749038819999", "\"T\": 1749038819"),
                "invalid",
            ),
            (
                replace(RAW, "\"E\": 1749038784182", "\"E\": 1749038784"),
                "invalid",
            ),
            (
                replace(RAW, "\"v\": \"2.13884000\"", "\"v\": \"-2\""),
                "invalid",
            ),
        ];
        for (text, kind) in cases {
            let err = parse_event(&text, 0).expect_err(&text);
            assert_eq!(err.kind(), kind, "{text}: {err}");
        }
    }

    #[test]
    fn ignore_field_may_hold_anything() {
        let k = expect_kline(&replace(RAW, "\"B\": \"0\"", "\"B\": \"123456\""));
        assert_eq!(k.trades, 412);
        expect_kline(&replace(RAW, ",\n    \"B\": \"0\"", ""));
    }
}
