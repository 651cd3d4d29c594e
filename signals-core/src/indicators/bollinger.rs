//! Bollinger Bands.

use serde::{Deserialize, Serialize};

use super::{InvalidInput, Sma};

/// One Bollinger reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BollingerValue {
    /// Middle + k·σ.
    pub upper: f64,
    /// SMA of the closes.
    pub middle: f64,
    /// Middle − k·σ.
    pub lower: f64,
}

/// Bollinger Bands (default 20, 2σ): SMA ± k·σ where σ is the **population** standard
/// deviation (divide by `period`, not `period − 1`), as Bollinger defines it and TA-Lib computes.
///
/// σ is computed in two passes over the window (mean, then squared deviations): O(period)
/// per update over a fixed small window, and free of the cancellation a running sum of
/// squares suffers at prices like 100 000.
#[derive(Debug, Clone, PartialEq)]
pub struct Bollinger {
    sma: Sma,
    k: f64,
    value: Option<BollingerValue>,
}

impl Bollinger {
    /// Bands over `period` closes at `k` standard deviations.
    pub fn new(period: usize, k: f64) -> Self {
        Self {
            sma: Sma::new(period),
            k,
            value: None,
        }
    }

    /// Closes before the first value.
    pub fn warmup(&self) -> usize {
        self.sma.warmup()
    }

    /// Adds a close; returns the bands once warm.
    pub fn update(&mut self, close: f64) -> Result<Option<BollingerValue>, InvalidInput> {
        if let Some(middle) = self.sma.update(close)? {
            let window = self.sma.window();
            let n = window.len() as f64;
            let mean = window.iter().sum::<f64>() / n;
            let var = window.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            let width = self.k * var.max(0.0).sqrt();
            self.value = Some(BollingerValue {
                upper: middle + width,
                middle,
                lower: middle - width,
            });
        }
        Ok(self.value)
    }

    /// The current bands.
    pub fn value(&self) -> Option<BollingerValue> {
        self.value
    }

    /// Forgets all input.
    pub fn reset(&mut self) {
        self.sma.reset();
        self.value = None;
    }
}
