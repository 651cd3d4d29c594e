//! Average directional index with the directional indicators.

use serde::{Deserialize, Serialize};

use super::true_range;
use crate::Candle;

/// One ADX reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdxValue {
    /// Trend strength in [0, 100].
    pub adx: f64,
    /// +DI in [0, 100].
    pub plus_di: f64,
    /// −DI in [0, 100].
    pub minus_di: f64,
}

/// ADX (default 14) with Wilder smoothing, as Wilder and TradingView define it:
/// +DM/−DM/TR from the second candle on; their first smoothed value is the **sum of the first
/// `period`** values, then `s = s − s/period + x`; DI = 100·sDM/sTR; DX = 100·|+DI − −DI| /
/// (+DI + −DI); the first ADX is the mean of the first `period` DX, then Wilder-smoothed.
/// DI appears on candle `period + 1`, ADX on candle `2·period`.
///
/// TA-Lib seeds the sums with `period − 1` values and smooths once more at the first output,
/// so its early values differ; the difference shrinks by (1 − 1/period) per candle and the
/// tests compare with TA-Lib after it is below 1e-9. A zero range gives DI 0 and DX 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Adx {
    period: usize,
    prev: Option<(f64, f64, f64)>,
    moves: usize,
    tr: f64,
    plus_dm: f64,
    minus_dm: f64,
    dxs: usize,
    adx: f64,
    di: Option<(f64, f64)>,
}

impl Adx {
    /// An ADX over `period` (0 is treated as 1).
    pub fn new(period: usize) -> Self {
        Self {
            period: period.max(1),
            prev: None,
            moves: 0,
            tr: 0.0,
            plus_dm: 0.0,
            minus_dm: 0.0,
            dxs: 0,
            adx: 0.0,
            di: None,
        }
    }

    /// Candles before the first full value.
    pub fn warmup(&self) -> usize {
        2 * self.period
    }

    /// Adds a candle; returns the reading once warm.
    pub fn update(&mut self, candle: &Candle) -> Option<AdxValue> {
        let (high, low, close) = (candle.high(), candle.low(), candle.close());
        if let Some((ph, pl, pc)) = self.prev {
            let up = high - ph;
            let down = pl - low;
            let plus = if up > down && up > 0.0 { up } else { 0.0 };
            let minus = if down > up && down > 0.0 { down } else { 0.0 };
            let tr = true_range(candle, pc);
            let n = self.period as f64;
            self.moves += 1;
            if self.moves <= self.period {
                self.tr += tr;
                self.plus_dm += plus;
                self.minus_dm += minus;
            } else {
                self.tr = self.tr - self.tr / n + tr;
                self.plus_dm = self.plus_dm - self.plus_dm / n + plus;
                self.minus_dm = self.minus_dm - self.minus_dm / n + minus;
            }
            if self.moves >= self.period {
                let (pdi, mdi) = if self.tr > 0.0 {
                    (
                        100.0 * self.plus_dm / self.tr,
                        100.0 * self.minus_dm / self.tr,
                    )
                } else {
                    (0.0, 0.0)
                };
                let sum = pdi + mdi;
                let dx = if sum > 0.0 {
                    100.0 * (pdi - mdi).abs() / sum
                } else {
                    0.0
                };
                self.dxs += 1;
                if self.dxs < self.period {
                    self.adx += dx;
                } else if self.dxs == self.period {
                    self.adx = (self.adx + dx) / n;
                } else {
                    self.adx = (self.adx * (n - 1.0) + dx) / n;
                }
                self.di = Some((pdi, mdi));
            }
        }
        self.prev = Some((high, low, close));
        self.value()
    }

    /// +DI and −DI, available `period − 1` candles before the ADX.
    pub fn di(&self) -> Option<(f64, f64)> {
        self.di
    }

    /// The current reading.
    pub fn value(&self) -> Option<AdxValue> {
        if self.dxs < self.period {
            return None;
        }
        let (plus_di, minus_di) = self.di?;
        Some(AdxValue {
            adx: self.adx,
            plus_di,
            minus_di,
        })
    }

    /// Forgets all input.
    pub fn reset(&mut self) {
        *self = Self::new(self.period);
    }
}
