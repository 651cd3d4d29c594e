//! Exponential moving average.

use super::{finite, InvalidInput};

/// Exponential moving average with `k = 2 / (period + 1)`, seeded (as TA-Lib does) with the
/// simple average of the first `period` values, so the first value appears on the
/// `period`-th input.
#[derive(Debug, Clone, PartialEq)]
pub struct Ema {
    period: usize,
    k: f64,
    seen: usize,
    seed_sum: f64,
    value: Option<f64>,
}

impl Ema {
    /// An EMA over `period` values (0 is treated as 1).
    pub fn new(period: usize) -> Self {
        let period = period.max(1);
        Self {
            period,
            k: 2.0 / (period as f64 + 1.0),
            seen: 0,
            seed_sum: 0.0,
            value: None,
        }
    }

    /// Number of values before the first average.
    pub fn warmup(&self) -> usize {
        self.period
    }

    /// Adds a value; returns the average once warm.
    pub fn update(&mut self, x: f64) -> Result<Option<f64>, InvalidInput> {
        let x = finite(x)?;
        self.value = match self.value {
            // Same operation order as TA-Lib, so reference values match to the last bits.
            Some(prev) => Some((x - prev) * self.k + prev),
            None => {
                self.seen += 1;
                self.seed_sum += x;
                (self.seen == self.period).then(|| self.seed_sum / self.period as f64)
            }
        };
        Ok(self.value)
    }

    /// The current average.
    pub fn value(&self) -> Option<f64> {
        self.value
    }

    /// Forgets all input.
    pub fn reset(&mut self) {
        *self = Self::new(self.period);
    }
}
