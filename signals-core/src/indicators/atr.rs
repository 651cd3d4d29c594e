//! Average true range with Wilder smoothing.

use crate::Candle;

/// True range: the largest of high − low, |high − previous close|, |low − previous close|.
pub fn true_range(candle: &Candle, prev_close: f64) -> f64 {
    (candle.high() - candle.low())
        .max((candle.high() - prev_close).abs())
        .max((candle.low() - prev_close).abs())
}

/// ATR (default 14), as TA-Lib and Wilder: true range needs a previous close, so the first
/// candle only provides that; the first ATR is the mean of the next `period` true ranges, then
/// `atr = (atr·(period−1) + tr) / period`. First value on candle `period + 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Atr {
    period: usize,
    prev_close: Option<f64>,
    ranges: usize,
    atr: f64,
}

impl Atr {
    /// An ATR over `period` true ranges (0 is treated as 1).
    pub fn new(period: usize) -> Self {
        Self {
            period: period.max(1),
            prev_close: None,
            ranges: 0,
            atr: 0.0,
        }
    }

    /// Candles before the first value.
    pub fn warmup(&self) -> usize {
        self.period + 1
    }

    /// Adds a candle; returns the ATR once warm.
    pub fn update(&mut self, candle: &Candle) -> Option<f64> {
        if let Some(prev) = self.prev_close {
            let tr = true_range(candle, prev);
            let n = self.period as f64;
            self.ranges += 1;
            if self.ranges < self.period {
                self.atr += tr;
            } else if self.ranges == self.period {
                self.atr = (self.atr + tr) / n;
            } else {
                self.atr = (self.atr * (n - 1.0) + tr) / n;
            }
        }
        self.prev_close = Some(candle.close());
        self.value()
    }

    /// The current ATR.
    pub fn value(&self) -> Option<f64> {
        (self.ranges >= self.period).then_some(self.atr)
    }

    /// Forgets all input.
    pub fn reset(&mut self) {
        *self = Self::new(self.period);
    }
}
