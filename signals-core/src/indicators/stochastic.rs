//! Slow stochastic oscillator.

use serde::{Deserialize, Serialize};

use super::window::{Extreme, RollingExtremum};
use super::Sma;
use crate::Candle;

/// One stochastic reading, both in [0, 100].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StochasticValue {
    /// Slow %K: SMA(`k_smooth`) of the raw %K.
    pub k: f64,
    /// %D: SMA(`d`) of slow %K.
    pub d: f64,
}

/// Slow stochastic (default 14, 3, 3), TA-Lib's `STOCH` with SMA smoothing:
/// raw %K = 100·(close − lowest low) / (highest high − lowest low) over `k` candles,
/// %K = SMA(`k_smooth`) of raw %K, %D = SMA(`d`) of %K. First value on candle
/// `k + k_smooth + d − 2`. A flat window (high = low) gives raw %K = 50 (TA-Lib: 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Stochastic {
    highest: RollingExtremum<()>,
    lowest: RollingExtremum<()>,
    k_period: usize,
    slow_k: Sma,
    d: Sma,
    value: Option<StochasticValue>,
}

impl Stochastic {
    /// A stochastic with the given periods (each at least 1).
    pub fn new(k: usize, k_smooth: usize, d: usize) -> Self {
        Self {
            highest: RollingExtremum::new(k, Extreme::Max),
            lowest: RollingExtremum::new(k, Extreme::Min),
            k_period: k.max(1),
            slow_k: Sma::new(k_smooth),
            d: Sma::new(d),
            value: None,
        }
    }

    /// Candles before the first value.
    pub fn warmup(&self) -> usize {
        self.k_period + self.slow_k.warmup() + self.d.warmup() - 2
    }

    /// Adds a candle; returns the reading once warm.
    pub fn update(&mut self, candle: &Candle) -> Option<StochasticValue> {
        self.highest.push(candle.high(), ());
        self.lowest.push(candle.low(), ());
        if let (Some((hh, ())), Some((ll, ()))) = (self.highest.get(), self.lowest.get()) {
            let range = hh - ll;
            let raw = if range > 0.0 {
                100.0 * (candle.close() - ll) / range
            } else {
                50.0
            };
            // Inputs are finite (checked candles), so these cannot fail; a failure would
            // leave the reading unchanged rather than panic.
            if let Ok(Some(k)) = self.slow_k.update(raw) {
                if let Ok(Some(d)) = self.d.update(k) {
                    self.value = Some(StochasticValue { k, d });
                }
            }
        }
        self.value
    }

    /// The current reading.
    pub fn value(&self) -> Option<StochasticValue> {
        self.value
    }

    /// Forgets all input.
    pub fn reset(&mut self) {
        self.highest.clear();
        self.lowest.clear();
        self.slow_k.reset();
        self.d.reset();
        self.value = None;
    }
}
