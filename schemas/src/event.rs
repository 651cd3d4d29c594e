//! The kline event every producer publishes and every sink consumes.

use serde::{Deserialize, Serialize};

use crate::decimal::{parse_units, DecimalError};
use crate::{Interval, Symbol, Venue};

/// Where an event came from. It is part of the subject, so a consumer can pick live only,
/// backfill only, and so on, and it becomes `ingestion_status.ingestion_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The exchange's WebSocket kline stream (forming and closed candles).
    Ws,
    /// REST polling of recently closed candles (the fallback live mode).
    Poll,
    /// Historical REST fetch (bootstrap, `klinectl verify --repair`).
    Backfill,
    /// REST fetch of candles missed while a live connection was down.
    Repair,
}

impl Source {
    /// All sources.
    pub const ALL: [Source; 4] = [Self::Ws, Self::Poll, Self::Backfill, Self::Repair];

    /// The subject token and wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Poll => "poll",
            Self::Backfill => "backfill",
            Self::Repair => "repair",
        }
    }

    /// The `ingestion_status.ingestion_mode` value this source reports.
    pub const fn ingestion_mode(self) -> &'static str {
        match self {
            Self::Ws => "websocket",
            Self::Poll => "polling",
            Self::Backfill => "backfill",
            Self::Repair => "repair",
        }
    }

    /// Parses a subject token.
    pub fn parse(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == token)
    }
}

/// One kline (candlestick) as the exchange reported it.
///
/// Prices and volumes are the exchange's exact decimal text (`"105312.44000000"`), never
/// floating point, so what is stored is what was sent. Times are Unix epoch milliseconds (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KlineEvent {
    /// Exchange, e.g. `binance`.
    pub venue: Venue,
    /// Exchange symbol, e.g. `BTCUSDT`.
    pub symbol: Symbol,
    /// Candle interval, e.g. `1m`.
    pub interval: Interval,
    /// Candle open time (ms); the candle's key together with venue, symbol and interval.
    pub open_time: i64,
    /// Candle close time (ms), as the exchange reports it (next open − 1).
    pub close_time: i64,
    /// Open price.
    pub open: String,
    /// High price.
    pub high: String,
    /// Low price.
    pub low: String,
    /// Close (or latest, while forming) price.
    pub close: String,
    /// Base-asset volume.
    pub volume: String,
    /// Quote-asset volume.
    pub quote_volume: String,
    /// Taker buy base-asset volume.
    pub taker_buy_base: String,
    /// Taker buy quote-asset volume.
    pub taker_buy_quote: String,
    /// Number of trades.
    pub trades: u64,
    /// True once the candle is final; forming updates are false.
    pub closed: bool,
    /// Exchange event time (ms): `E` of a WebSocket event; for REST rows of closed candles,
    /// `close_time + 1`, the instant the candle became final. Later events win over earlier ones.
    pub event_time: i64,
    /// Which producer path delivered it.
    pub source: Source,
    /// Producer's clock (ms) when the exchange data was received.
    pub received_at: i64,
}

/// Why an event is not a believable candle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    /// A price or volume field is not a valid decimal.
    #[error("field {field}")]
    Number {
        /// The field name.
        field: &'static str,
        /// What is wrong.
        source: DecimalError,
    },
    /// The open time is not on the interval's boundary.
    #[error("open_time {open_time} is not aligned to {interval}")]
    Misaligned {
        /// The open time.
        open_time: i64,
        /// The interval.
        interval: Interval,
    },
    /// The close time does not match the interval.
    #[error("close_time {close_time} does not match open_time {open_time} for {interval} (expected {expected})")]
    CloseTime {
        /// The open time.
        open_time: i64,
        /// The close time sent.
        close_time: i64,
        /// The interval.
        interval: Interval,
        /// The close time the interval implies.
        expected: i64,
    },
    /// High below low, or open/close outside [low, high], or a zero price.
    #[error("inconsistent prices: {0}")]
    Prices(String),
    /// Taker volume above total volume.
    #[error("taker buy volume {taker} exceeds volume {volume}")]
    Taker {
        /// Taker buy base volume.
        taker: String,
        /// Total base volume.
        volume: String,
    },
    /// A time before 2009 or after 2200: a unit mix-up (seconds or microseconds).
    #[error("{field} {value} is not a plausible epoch-milliseconds time")]
    Time {
        /// The field name.
        field: &'static str,
        /// The value.
        value: i64,
    },
}

/// Integer digits allowed in price columns (`NUMERIC(20,8)`).
pub const PRICE_INT_DIGITS: u32 = 12;
/// Integer digits allowed in volume columns (`NUMERIC(30,8)`).
pub const VOLUME_INT_DIGITS: u32 = 22;

const MIN_PLAUSIBLE_MS: i64 = 1_230_768_000_000; // 2009-01-01
const MAX_PLAUSIBLE_MS: i64 = 7_258_118_400_000; // 2200-01-01

impl KlineEvent {
    /// The dedup key of a candle: identical for every publication of the same final candle,
    /// whichever path (WebSocket, polling, backfill, repair) delivered it.
    pub fn candle_key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.venue,
            self.symbol,
            self.interval.as_str(),
            self.open_time
        )
    }

    /// `Nats-Msg-Id` for this event: only closed candles get one (they are immutable, so a second
    /// publication inside the stream's duplicate window is dropped by the server). Forming updates
    /// are all distinct and carry none.
    pub fn msg_id(&self) -> Option<String> {
        self.closed.then(|| self.candle_key())
    }

    /// Checks everything a sink relies on before it writes the event.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        for (field, value) in [
            ("open_time", self.open_time),
            ("close_time", self.close_time),
            ("event_time", self.event_time),
        ] {
            if !(MIN_PLAUSIBLE_MS..MAX_PLAUSIBLE_MS).contains(&value) {
                return Err(InvalidEvent::Time { field, value });
            }
        }
        if self.interval.align(self.open_time) != self.open_time {
            return Err(InvalidEvent::Misaligned {
                open_time: self.open_time,
                interval: self.interval,
            });
        }
        let expected = self.interval.close_time(self.open_time);
        if self.close_time != expected {
            return Err(InvalidEvent::CloseTime {
                open_time: self.open_time,
                close_time: self.close_time,
                interval: self.interval,
                expected,
            });
        }
        let num = |field: &'static str, text: &str, digits: u32| {
            parse_units(text, digits).map_err(|source| InvalidEvent::Number { field, source })
        };
        let open = num("open", &self.open, PRICE_INT_DIGITS)?;
        let high = num("high", &self.high, PRICE_INT_DIGITS)?;
        let low = num("low", &self.low, PRICE_INT_DIGITS)?;
        let close = num("close", &self.close, PRICE_INT_DIGITS)?;
        let volume = num("volume", &self.volume, VOLUME_INT_DIGITS)?;
        num("quote_volume", &self.quote_volume, VOLUME_INT_DIGITS)?;
        let taker = num("taker_buy_base", &self.taker_buy_base, VOLUME_INT_DIGITS)?;
        num("taker_buy_quote", &self.taker_buy_quote, VOLUME_INT_DIGITS)?;
        if low == 0 || low > high || !(low..=high).contains(&open) || !(low..=high).contains(&close)
        {
            return Err(InvalidEvent::Prices(format!(
                "open {} high {} low {} close {}",
                self.open, self.high, self.low, self.close
            )));
        }
        if taker > volume {
            return Err(InvalidEvent::Taker {
                taker: self.taker_buy_base.clone(),
                volume: self.volume.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The first row of the shared `klines_rest.json` fixture as an event.
    pub(crate) fn sample() -> KlineEvent {
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
            source: Source::Backfill,
            received_at: 1_749_038_460_120,
        }
    }

    #[test]
    fn sample_is_valid() {
        sample().validate().unwrap();
    }

    #[test]
    fn msg_id_only_for_closed_and_same_across_sources() {
        let mut a = sample();
        let mut b = sample();
        b.source = Source::Ws;
        b.event_time += 5;
        assert_eq!(a.msg_id(), b.msg_id());
        assert_eq!(a.msg_id().unwrap(), "binance:BTCUSDT:1m:1749038400000");
        a.closed = false;
        assert_eq!(a.msg_id(), None);
    }

    #[test]
    fn rejects_bad_candles() {
        type Mutation = Box<dyn Fn(&mut KlineEvent)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("misaligned", Box::new(|e| e.open_time += 1)),
            ("close time", Box::new(|e| e.close_time += 1)),
            ("seconds not ms", Box::new(|e| e.event_time = 1_749_038_460)),
            ("nan", Box::new(|e| e.close = "NaN".into())),
            ("negative", Box::new(|e| e.volume = "-1".into())),
            ("high<low", Box::new(|e| e.high = "1.0".into())),
            ("zero low", Box::new(|e| e.low = "0".into())),
            ("taker", Box::new(|e| e.taker_buy_base = "9.0".into())),
            (
                "too big",
                Box::new(|e| e.high = "1000000000000.00000000".into()),
            ),
        ];
        for (name, f) in cases {
            let mut e = sample();
            f(&mut e);
            assert!(e.validate().is_err(), "{name} accepted");
        }
    }
}
