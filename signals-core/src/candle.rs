//! The one place prices become floating point: a closed candle, checked once at the edge.

use klinebus_schemas::KlineEvent;

/// Why a candle cannot be fed to the indicators.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CandleError {
    /// A field is not a decimal number.
    #[error("field {field}: {text:?} is not a number")]
    Parse {
        /// The field name.
        field: &'static str,
        /// The text received.
        text: String,
    },
    /// A field is NaN or infinite.
    #[error("field {field} is not finite")]
    NonFinite {
        /// The field name.
        field: &'static str,
    },
    /// A price is zero or negative, or the volume is negative.
    #[error("field {field} is {value}, which is not allowed")]
    NonPositive {
        /// The field name.
        field: &'static str,
        /// The value.
        value: f64,
    },
    /// Open or close lies outside [low, high].
    #[error("inconsistent prices: low {low}, high {high}, open {open}, close {close}")]
    Inconsistent {
        /// Open.
        open: f64,
        /// High.
        high: f64,
        /// Low.
        low: f64,
        /// Close.
        close: f64,
    },
    /// The event is a forming candle; signals are computed on closed candles only.
    #[error("candle at {open_time} is not closed")]
    NotClosed {
        /// Its open time.
        open_time: i64,
    },
}

/// A closed candle as the indicators see it: finite, positive prices with
/// `low <= open, close <= high`, and a finite volume `>= 0`.
///
/// The fields are private so that every `Candle` in existence has passed these checks; that is
/// what lets the indicators assume well-formed input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candle {
    open_time: i64,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: f64,
}

impl Candle {
    /// Checks and builds a candle.
    pub fn new(
        open_time: i64,
        open: f64,
        high: f64,
        low: f64,
        close: f64,
        volume: f64,
    ) -> Result<Self, CandleError> {
        for (field, value) in [
            ("open", open),
            ("high", high),
            ("low", low),
            ("close", close),
            ("volume", volume),
        ] {
            if !value.is_finite() {
                return Err(CandleError::NonFinite { field });
            }
            let bad = if field == "volume" {
                value < 0.0
            } else {
                value <= 0.0
            };
            if bad {
                return Err(CandleError::NonPositive { field, value });
            }
        }
        if !(low <= open && open <= high && low <= close && close <= high) {
            return Err(CandleError::Inconsistent {
                open,
                high,
                low,
                close,
            });
        }
        Ok(Self {
            open_time,
            open,
            high,
            low,
            close,
            volume,
        })
    }

    /// Converts a closed kline event; the exact decimal text is read as f64 here and only here.
    pub fn from_event(event: &KlineEvent) -> Result<Self, CandleError> {
        if !event.closed {
            return Err(CandleError::NotClosed {
                open_time: event.open_time,
            });
        }
        Self::from_text(
            event.open_time,
            &event.open,
            &event.high,
            &event.low,
            &event.close,
            &event.volume,
        )
    }

    /// Builds a candle from decimal text (exchange style, e.g. `"105312.44000000"`).
    pub fn from_text(
        open_time: i64,
        open: &str,
        high: &str,
        low: &str,
        close: &str,
        volume: &str,
    ) -> Result<Self, CandleError> {
        Self::new(
            open_time,
            parse("open", open)?,
            parse("high", high)?,
            parse("low", low)?,
            parse("close", close)?,
            parse("volume", volume)?,
        )
    }

    /// Open time, Unix epoch milliseconds.
    pub fn open_time(&self) -> i64 {
        self.open_time
    }
    /// Open price.
    pub fn open(&self) -> f64 {
        self.open
    }
    /// High price.
    pub fn high(&self) -> f64 {
        self.high
    }
    /// Low price.
    pub fn low(&self) -> f64 {
        self.low
    }
    /// Close price.
    pub fn close(&self) -> f64 {
        self.close
    }
    /// Base-asset volume.
    pub fn volume(&self) -> f64 {
        self.volume
    }
}

fn parse(field: &'static str, text: &str) -> Result<f64, CandleError> {
    text.trim().parse::<f64>().map_err(|_| CandleError::Parse {
        field,
        text: text.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rejects_bad_input() {
        assert!(Candle::new(0, 1.0, 2.0, 0.5, 1.5, 0.0).is_ok());
        assert!(matches!(
            Candle::new(0, 1.0, f64::NAN, 0.5, 1.5, 1.0),
            Err(CandleError::NonFinite { field: "high" })
        ));
        assert!(matches!(
            Candle::new(0, 1.0, 2.0, 0.0, 1.5, 1.0),
            Err(CandleError::NonPositive { field: "low", .. })
        ));
        assert!(matches!(
            Candle::new(0, 1.0, 2.0, 0.5, 1.5, -1.0),
            Err(CandleError::NonPositive {
                field: "volume",
                ..
            })
        ));
        assert!(matches!(
            Candle::new(0, 1.0, 2.0, 0.5, 2.5, 1.0),
            Err(CandleError::Inconsistent { .. })
        ));
        assert!(matches!(
            Candle::from_text(0, "1", "2", "0.5", "x", "1"),
            Err(CandleError::Parse { field: "close", .. })
        ));
        assert!(matches!(
            Candle::from_text(0, "1", "inf", "0.5", "1", "1"),
            Err(CandleError::NonFinite { field: "high" })
        ));
        let c = Candle::from_text(7, "1.5", "2.25", "0.5", "1.0", "10").unwrap();
        assert_eq!((c.open_time(), c.high(), c.close()), (7, 2.25, 1.0));
    }
}
