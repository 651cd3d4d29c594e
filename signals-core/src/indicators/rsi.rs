//! Relative strength index with Wilder smoothing.

use super::{finite, InvalidInput};

/// RSI over `period` price changes, Wilder-smoothed: the first average gain/loss is the simple
/// mean of the first `period` changes, then `avg = (avg·(period−1) + x) / period` (TA-Lib's
/// and Wilder's convention). The first value needs `period + 1` closes.
///
/// When there was no movement at all (both averages 0) the RSI is 50, not TA-Lib's 0: neither
/// side is stronger.
#[derive(Debug, Clone, PartialEq)]
pub struct Rsi {
    period: usize,
    prev_close: Option<f64>,
    changes: usize,
    avg_gain: f64,
    avg_loss: f64,
}

impl Rsi {
    /// An RSI over `period` changes (0 is treated as 1).
    pub fn new(period: usize) -> Self {
        Self {
            period: period.max(1),
            prev_close: None,
            changes: 0,
            avg_gain: 0.0,
            avg_loss: 0.0,
        }
    }

    /// Number of closes before the first value.
    pub fn warmup(&self) -> usize {
        self.period + 1
    }

    /// Adds a close; returns the RSI once warm.
    pub fn update(&mut self, close: f64) -> Result<Option<f64>, InvalidInput> {
        let close = finite(close)?;
        if let Some(prev) = self.prev_close {
            let change = close - prev;
            let (gain, loss) = if change > 0.0 {
                (change, 0.0)
            } else {
                (0.0, -change)
            };
            let n = self.period as f64;
            self.changes += 1;
            if self.changes <= self.period {
                self.avg_gain += gain;
                self.avg_loss += loss;
                if self.changes == self.period {
                    self.avg_gain /= n;
                    self.avg_loss /= n;
                }
            } else {
                self.avg_gain = (self.avg_gain * (n - 1.0) + gain) / n;
                self.avg_loss = (self.avg_loss * (n - 1.0) + loss) / n;
            }
        }
        self.prev_close = Some(close);
        Ok(self.value())
    }

    /// The current RSI in [0, 100].
    pub fn value(&self) -> Option<f64> {
        if self.changes < self.period {
            return None;
        }
        let total = self.avg_gain + self.avg_loss;
        Some(if total > 0.0 {
            100.0 * (self.avg_gain / total)
        } else {
            50.0
        })
    }

    /// Forgets all input.
    pub fn reset(&mut self) {
        *self = Self::new(self.period);
    }
}
