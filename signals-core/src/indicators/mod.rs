//! Incremental indicators: each is a small state machine fed one closed candle (or value) at a
//! time, O(1) (amortised, or O(period) over a fixed small window) per update. `value()` is
//! `None` until the indicator has seen enough input ("warm"), never NaN.
//!
//! Single-series indicators take an `f64` and reject non-finite input with [`InvalidInput`]
//! (state unchanged); candle indicators take a [`Candle`](crate::Candle), which is checked
//! when built. Conventions follow TA-Lib except where a file says otherwise.

mod adx;
mod atr;
mod bollinger;
mod ema;
mod ichimoku;
mod keltner;
mod macd;
mod rsi;
mod sma;
mod stochastic;
pub mod window;

pub use adx::{Adx, AdxValue};
pub use atr::{true_range, Atr};
pub use bollinger::{Bollinger, BollingerValue};
pub use ema::Ema;
pub use ichimoku::{Ichimoku, IchimokuConfig, IchimokuPartial, IchimokuValue};
pub use keltner::{Keltner, KeltnerValue};
pub use macd::{Macd, MacdValue};
pub use rsi::Rsi;
pub use sma::Sma;
pub use stochastic::{Stochastic, StochasticValue};

/// A value an indicator cannot use.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("indicator input {0} is not finite")]
pub struct InvalidInput(pub f64);

/// Passes finite values through.
pub(crate) fn finite(x: f64) -> Result<f64, InvalidInput> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(InvalidInput(x))
    }
}
