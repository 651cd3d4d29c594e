//! Simple moving average.

use super::window::Ring;
use super::{finite, InvalidInput};

/// Simple moving average of the last `period` values.
///
/// Keeps a running sum, re-summed from the window each time the window has turned over once,
/// so that rounding drift cannot build up over millions of updates (amortised O(1)).
#[derive(Debug, Clone, PartialEq)]
pub struct Sma {
    window: Ring<f64>,
    sum: f64,
    since_resum: usize,
}

impl Sma {
    /// An SMA over `period` values (0 is treated as 1).
    pub fn new(period: usize) -> Self {
        Self {
            window: Ring::new(period),
            sum: 0.0,
            since_resum: 0,
        }
    }

    /// Number of values before the first average.
    pub fn warmup(&self) -> usize {
        self.period()
    }

    /// The period.
    pub fn period(&self) -> usize {
        self.window.capacity()
    }

    /// Adds a value; returns the average once `period` values have been seen.
    pub fn update(&mut self, x: f64) -> Result<Option<f64>, InvalidInput> {
        let x = finite(x)?;
        match self.window.push(x) {
            Some(old) => {
                self.sum += x - old;
                self.since_resum += 1;
                if self.since_resum >= self.window.len() {
                    self.sum = self.window.iter().sum();
                    self.since_resum = 0;
                }
            }
            None => self.sum += x,
        }
        Ok(self.value())
    }

    /// The average of the last `period` values, once there are that many.
    pub fn value(&self) -> Option<f64> {
        self.window
            .is_full()
            .then(|| self.sum / self.window.len() as f64)
    }

    /// The values in the window, oldest first.
    pub fn window(&self) -> &Ring<f64> {
        &self.window
    }

    /// Forgets all input.
    pub fn reset(&mut self) {
        self.window.clear();
        self.sum = 0.0;
        self.since_resum = 0;
    }
}
