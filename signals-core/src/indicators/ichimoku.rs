//! Ichimoku Kinko Hyo.

use serde::{Deserialize, Serialize};

use super::window::{Extreme, Ring, RollingExtremum};
use crate::Candle;

/// Ichimoku periods (defaults 9 / 26 / 52, displacement 26).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IchimokuConfig {
    /// Tenkan-sen (conversion line) period.
    pub tenkan: usize,
    /// Kijun-sen (base line) period.
    pub kijun: usize,
    /// Senkou span B period.
    pub senkou_b: usize,
    /// How far the spans lead and the chikou lags, in candles.
    pub displacement: usize,
}

impl Default for IchimokuConfig {
    fn default() -> Self {
        Self {
            tenkan: 9,
            kijun: 26,
            senkou_b: 52,
            displacement: 26,
        }
    }
}

/// One Ichimoku reading, for the candle just closed ("now").
///
/// Displacement is handled by keeping history instead of plotting: the spans computed now
/// (`senkou_a`, `senkou_b`) belong `displacement` candles in the future, and the cloud under
/// the current candle is the spans computed `displacement` candles ago (`cloud_a`, `cloud_b`).
/// The chikou span is the current close plotted `displacement` candles back, so it is reported
/// with the close it is compared against (`chikou_ref`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IchimokuValue {
    /// (highest high + lowest low) / 2 over `tenkan` candles.
    pub tenkan: f64,
    /// (highest high + lowest low) / 2 over `kijun` candles.
    pub kijun: f64,
    /// (tenkan + kijun) / 2 computed now (leads by `displacement`).
    pub senkou_a: f64,
    /// (highest high + lowest low) / 2 over `senkou_b` candles, computed now (leads).
    pub senkou_b: f64,
    /// Senkou A computed `displacement` candles ago: the cloud edge at this candle.
    pub cloud_a: f64,
    /// Senkou B computed `displacement` candles ago: the other cloud edge at this candle.
    pub cloud_b: f64,
    /// The chikou span: this close (plotted `displacement` candles back).
    pub chikou: f64,
    /// The close `displacement` candles ago, which the chikou is compared against.
    pub chikou_ref: f64,
}

/// The components of [`IchimokuValue`] each as soon as it exists: tenkan after `tenkan`
/// candles, kijun and senkou A after `kijun`, senkou B after `senkou_b`, the displaced ones
/// `displacement` candles later.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IchimokuPartial {
    /// Tenkan-sen.
    pub tenkan: Option<f64>,
    /// Kijun-sen.
    pub kijun: Option<f64>,
    /// Senkou A computed now.
    pub senkou_a: Option<f64>,
    /// Senkou B computed now.
    pub senkou_b: Option<f64>,
    /// Cloud edge A under the current candle.
    pub cloud_a: Option<f64>,
    /// Cloud edge B under the current candle.
    pub cloud_b: Option<f64>,
    /// The close `displacement` candles ago.
    pub chikou_ref: Option<f64>,
}

impl IchimokuPartial {
    fn complete(&self, close: f64) -> Option<IchimokuValue> {
        Some(IchimokuValue {
            tenkan: self.tenkan?,
            kijun: self.kijun?,
            senkou_a: self.senkou_a?,
            senkou_b: self.senkou_b?,
            cloud_a: self.cloud_a?,
            cloud_b: self.cloud_b?,
            chikou: close,
            chikou_ref: self.chikou_ref?,
        })
    }
}

/// Incremental Ichimoku: rolling max/min deques for the three ranges, rings for the
/// displacement. Complete on candle `senkou_b + displacement` (78 by default).
#[derive(Debug, Clone, PartialEq)]
pub struct Ichimoku {
    cfg: IchimokuConfig,
    tenkan_hi: RollingExtremum<()>,
    tenkan_lo: RollingExtremum<()>,
    kijun_hi: RollingExtremum<()>,
    kijun_lo: RollingExtremum<()>,
    span_b_hi: RollingExtremum<()>,
    span_b_lo: RollingExtremum<()>,
    /// (senkou A, senkou B) of the last `displacement` candles, oldest first.
    spans: Ring<(Option<f64>, Option<f64>)>,
    closes: Ring<f64>,
    partial: IchimokuPartial,
    value: Option<IchimokuValue>,
}

fn mid(hi: &RollingExtremum<()>, lo: &RollingExtremum<()>) -> Option<f64> {
    Some((hi.get()?.0 + lo.get()?.0) / 2.0)
}

impl Ichimoku {
    /// An Ichimoku with the given periods (each at least 1).
    pub fn new(cfg: IchimokuConfig) -> Self {
        let d = cfg.displacement.max(1);
        Self {
            cfg: IchimokuConfig {
                displacement: d,
                ..cfg
            },
            tenkan_hi: RollingExtremum::new(cfg.tenkan, Extreme::Max),
            tenkan_lo: RollingExtremum::new(cfg.tenkan, Extreme::Min),
            kijun_hi: RollingExtremum::new(cfg.kijun, Extreme::Max),
            kijun_lo: RollingExtremum::new(cfg.kijun, Extreme::Min),
            span_b_hi: RollingExtremum::new(cfg.senkou_b, Extreme::Max),
            span_b_lo: RollingExtremum::new(cfg.senkou_b, Extreme::Min),
            spans: Ring::new(d),
            closes: Ring::new(d),
            partial: IchimokuPartial::default(),
            value: None,
        }
    }

    /// Candles before the first complete value.
    pub fn warmup(&self) -> usize {
        let c = self.cfg;
        c.tenkan.max(c.kijun).max(c.senkou_b).max(1) + c.displacement
    }

    /// Adds a candle; returns the reading once complete.
    pub fn update(&mut self, candle: &Candle) -> Option<IchimokuValue> {
        let (h, l) = (candle.high(), candle.low());
        for w in [&mut self.tenkan_hi, &mut self.kijun_hi, &mut self.span_b_hi] {
            w.push(h, ());
        }
        for w in [&mut self.tenkan_lo, &mut self.kijun_lo, &mut self.span_b_lo] {
            w.push(l, ());
        }
        let tenkan = mid(&self.tenkan_hi, &self.tenkan_lo);
        let kijun = mid(&self.kijun_hi, &self.kijun_lo);
        let senkou_a = tenkan.zip(kijun).map(|(t, k)| (t + k) / 2.0);
        let senkou_b = mid(&self.span_b_hi, &self.span_b_lo);

        // Before pushing "now", a full ring's oldest entry is from `displacement` candles ago.
        let past = if self.spans.is_full() {
            self.spans.oldest().copied()
        } else {
            None
        };
        let chikou_ref = if self.closes.is_full() {
            self.closes.oldest().copied()
        } else {
            None
        };
        self.spans.push((senkou_a, senkou_b));
        self.closes.push(candle.close());

        self.partial = IchimokuPartial {
            tenkan,
            kijun,
            senkou_a,
            senkou_b,
            cloud_a: past.and_then(|p| p.0),
            cloud_b: past.and_then(|p| p.1),
            chikou_ref,
        };
        self.value = self.partial.complete(candle.close());
        self.value
    }

    /// Each component as soon as it is available (for inspection and the reference tests).
    pub fn partial(&self) -> IchimokuPartial {
        self.partial
    }

    /// The current reading.
    pub fn value(&self) -> Option<IchimokuValue> {
        self.value
    }

    /// Forgets all input.
    pub fn reset(&mut self) {
        *self = Self::new(self.cfg);
    }
}
