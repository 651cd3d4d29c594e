//! Keltner channel.

use serde::{Deserialize, Serialize};

use super::{Atr, Ema, InvalidInput};
use crate::Candle;

/// One Keltner reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KeltnerValue {
    /// Middle + mult·ATR.
    pub upper: f64,
    /// EMA of the closes.
    pub middle: f64,
    /// Middle − mult·ATR.
    pub lower: f64,
}

/// Keltner channel, the modern (Raschke) form: EMA(`ema`, default 20) of the close ±
/// `mult` (default 1.5) × ATR(`atr`, default 14). Same EMA and ATR conventions as [`Ema`] and
/// [`Atr`].
#[derive(Debug, Clone, PartialEq)]
pub struct Keltner {
    ema: Ema,
    atr: Atr,
    mult: f64,
}

impl Keltner {
    /// A channel with the given periods and multiplier.
    pub fn new(ema: usize, atr: usize, mult: f64) -> Self {
        Self {
            ema: Ema::new(ema),
            atr: Atr::new(atr),
            mult,
        }
    }

    /// Candles before the first value.
    pub fn warmup(&self) -> usize {
        self.ema.warmup().max(self.atr.warmup())
    }

    /// Adds a candle; returns the channel once warm.
    pub fn update(&mut self, candle: &Candle) -> Result<Option<KeltnerValue>, InvalidInput> {
        self.ema.update(candle.close())?;
        self.atr.update(candle);
        Ok(self.value())
    }

    /// The current channel.
    pub fn value(&self) -> Option<KeltnerValue> {
        let middle = self.ema.value()?;
        let width = self.mult * self.atr.value()?;
        Some(KeltnerValue {
            upper: middle + width,
            middle,
            lower: middle - width,
        })
    }

    /// Forgets all input.
    pub fn reset(&mut self) {
        self.ema.reset();
        self.atr.reset();
    }
}
