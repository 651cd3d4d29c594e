//! Moving average convergence/divergence.

use serde::{Deserialize, Serialize};

use super::{Ema, InvalidInput};

/// One MACD reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MacdValue {
    /// Fast EMA − slow EMA.
    pub line: f64,
    /// EMA of the line.
    pub signal: f64,
    /// Line − signal.
    pub histogram: f64,
}

/// MACD (default 12/26/9): two independent close EMAs, each seeded with the SMA of its own
/// first values, and a signal EMA over the line starting when the slow EMA does.
///
/// TA-Lib's `MACD` function instead seeds the fast EMA from the closes ending where the slow
/// one starts; the two agree once that seed has decayed (~150 candles at 1e-9). The tests
/// compare exactly with TA-Lib's `EMA`-built MACD and, after convergence, with its `MACD`.
#[derive(Debug, Clone, PartialEq)]
pub struct Macd {
    fast: Ema,
    slow: Ema,
    signal: Ema,
    value: Option<MacdValue>,
}

impl Macd {
    /// A MACD with the given periods (each at least 1).
    pub fn new(fast: usize, slow: usize, signal: usize) -> Self {
        Self {
            fast: Ema::new(fast),
            slow: Ema::new(slow),
            signal: Ema::new(signal),
            value: None,
        }
    }

    /// Closes before the first full value (line, signal and histogram).
    pub fn warmup(&self) -> usize {
        self.fast.warmup().max(self.slow.warmup()) + self.signal.warmup() - 1
    }

    /// Adds a close; returns the reading once warm.
    pub fn update(&mut self, close: f64) -> Result<Option<MacdValue>, InvalidInput> {
        let fast = self.fast.update(close)?;
        let slow = self.slow.update(close)?;
        if let (Some(f), Some(s)) = (fast, slow) {
            let line = f - s;
            if let Some(signal) = self.signal.update(line)? {
                self.value = Some(MacdValue {
                    line,
                    signal,
                    histogram: line - signal,
                });
            }
        }
        Ok(self.value)
    }

    /// The MACD line alone, available before the signal is.
    pub fn line(&self) -> Option<f64> {
        Some(self.fast.value()? - self.slow.value()?)
    }

    /// The current reading.
    pub fn value(&self) -> Option<MacdValue> {
        self.value
    }

    /// Forgets all input.
    pub fn reset(&mut self) {
        self.fast.reset();
        self.slow.reset();
        self.signal.reset();
        self.value = None;
    }
}
