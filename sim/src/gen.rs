//! The base series: one 1m candle as a pure function of (seed, symbol, minute index).
//!
//! Price at a minute boundary is `base × exp(Σ octaves of smooth value noise)`, quantised to the
//! tick; a candle opens at P(m) and closes at P(m+1), so each open equals the previous close.

use crate::agg::Agg;
use crate::hash::{fnv, h, splitmix, unit};
use crate::symbols::{SymbolSpec, UNIT};

/// Knot spacings in minutes: 2m, 8m, 32m, ~2h, ~8.5h, ~1.4d, ~5.7d, ~23d, ~91d, ~364d.
const OCTAVES: [i64; 10] = [2, 8, 32, 128, 512, 2048, 8192, 32_768, 131_072, 524_288];

/// Largest log-amplitude of one octave.
const MAX_AMP: f64 = 0.12;

const TAG_PRICE: u64 = 1;
const TAG_HIGH: u64 = 2;
const TAG_LOW: u64 = 3;
const TAG_VOL: u64 = 4;
const TAG_VWAP: u64 = 5;
const TAG_TAKER: u64 = 6;
const TAG_TRADES: u64 = 7;
pub(crate) const TAG_SPLIT: u64 = 8;

/// Precomputed per-symbol generator.
#[derive(Clone, Debug)]
pub(crate) struct Gen {
    pub key: u64,
    pub tick: u64,
    pub step: u64,
    base_price: f64,
    /// Per-minute volatility (daily / sqrt(1440)).
    sigma_min: f64,
    amps: [f64; 10],
    volume_per_min: f64,
    trades_per_min: u64,
    pub listed_min: i64,
    /// Trade-id offset so the listing minute's first id is 0, as on Binance.
    trade_base: i64,
}

impl Gen {
    pub fn new(seed: u64, spec: &SymbolSpec) -> Self {
        let key = splitmix(seed ^ splitmix(fnv(&spec.name)));
        let sigma_min = spec.daily_vol / (1440f64).sqrt();
        // Capped so slow octaves keep prices near today's level (within roughly ±40 %).
        let amps = OCTAVES.map(|t| (1.2 * sigma_min * (t as f64).sqrt()).min(MAX_AMP));
        let listed_min = spec.listed_ms.div_euclid(60_000);
        let mut g = Self {
            key,
            tick: spec.tick.max(1),
            step: spec.step.max(1),
            base_price: spec.base_price as f64,
            sigma_min,
            amps,
            volume_per_min: spec.volume_per_min as f64,
            trades_per_min: spec.trades_per_min.max(1),
            listed_min,
            trade_base: 0,
        };
        g.trade_base = g.trade_hash(listed_min);
        g
    }

    /// Price at the start of minute `m`, on the tick grid, at least one tick.
    pub fn price(&self, m: i64) -> u64 {
        let mut noise = 0.0;
        for (o, (&t, &amp)) in OCTAVES.iter().zip(&self.amps).enumerate() {
            let k = m.div_euclid(t);
            let f = (m - k * t) as f64 / t as f64;
            let s = f * f * (3.0 - 2.0 * f);
            let tag = TAG_PRICE + ((o as u64) << 8);
            let a = 2.0 * unit(h(self.key, tag, k)) - 1.0;
            let b = 2.0 * unit(h(self.key, tag, k + 1)) - 1.0;
            noise += amp * (a + (b - a) * s);
        }
        let ticks = (self.base_price * noise.exp() / self.tick as f64).round();
        (ticks.max(1.0) as u64) * self.tick
    }

    fn trade_hash(&self, m: i64) -> i64 {
        (h(self.key, TAG_TRADES, m) % self.trades_per_min) as i64
    }

    /// Trades before minute `m` since listing, closed-form so any candle knows its ids.
    fn trades_before(&self, m: i64) -> i64 {
        self.trades_per_min as i64 * (m - self.listed_min) + self.trade_hash(m) - self.trade_base
    }

    /// The 1m candle of minute `m` (no listing or gap checks: callers do those).
    pub fn minute(&self, m: i64) -> Agg {
        let (open, close) = (self.price(m), self.price(m + 1));
        let tick = self.tick;
        let (top, bottom) = (open.max(close), open.min(close));
        let max_ex = (top as f64 * self.sigma_min * 1.5 / tick as f64).max(1.0);
        let ex = |tag| {
            let u = unit(h(self.key, tag, m));
            (u * u * max_ex) as u64 * tick
        };
        let high = top + ex(TAG_HIGH);
        let low = bottom.saturating_sub(ex(TAG_LOW)).max(tick);

        // Volume: intraday seasonality (peak ~14:30 UTC) × lognormal-ish noise × size of the move.
        let minute_of_day = m.rem_euclid(1440) as f64;
        let season = 1.0 + 0.4 * (std::f64::consts::TAU * (minute_of_day - 870.0) / 1440.0).cos();
        let hv = h(self.key, TAG_VOL, m);
        let z = unit(hv) + unit(splitmix(hv)) + unit(splitmix(hv ^ 1)) - 1.5;
        let moved = (close as f64 - open as f64).abs() / open as f64;
        let v = self.volume_per_min * season * (0.8 * z).exp() * (1.0 + 40.0 * moved);
        let steps = ((v / self.step as f64) as u64).max(1);
        let volume = steps * self.step;

        // VWAP inside [low, high]; quote volume truncated per 1m candle, coarser ones are sums.
        let hw = h(self.key, TAG_VWAP, m);
        let vwap =
            low + ((high - low) as u128 * (300_000 + (hw % 400_001) as u128) / 1_000_000) as u64;
        let quote = volume as u128 * vwap as u128 / UNIT as u128;
        let taker_steps = steps * (350 + h(self.key, TAG_TAKER, m) % 301) / 1000;
        let taker_base = taker_steps * self.step;
        let taker_quote = taker_base as u128 * vwap as u128 / UNIT as u128;

        let first_id = self.trades_before(m);
        let trades = (self.trades_before(m + 1) - first_id) as u64;
        Agg {
            open,
            high,
            low,
            close,
            volume: volume.into(),
            quote,
            taker_base: taker_base.into(),
            taker_quote,
            trades,
            first_id,
            last_id: first_id + trades as i64 - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_is_consistent() {
        let spec = SymbolSpec::for_name("BTCUSDT");
        let g = Gen::new(42, &spec);
        let first = g.minute(g.listed_min);
        assert_eq!(first.first_id, 0);
        let start = 29_150_640; // 2025-06-04 12:00
        let mut prev: Option<Agg> = None;
        for m in start..start + 2000 {
            let c = g.minute(m);
            assert!(c.low <= c.open.min(c.close) && c.high >= c.open.max(c.close));
            assert!(c.trades >= 1 && c.volume > 0 && c.taker_base <= c.volume);
            assert!(c.taker_quote <= c.quote);
            assert_eq!(c.open % spec.tick, 0);
            assert_eq!(c.volume % u128::from(spec.step), 0);
            if let Some(p) = prev {
                assert_eq!(p.close, c.open);
                assert_eq!(p.last_id + 1, c.first_id);
            }
            prev = Some(c);
        }
        // Plausible level: near the base price.
        let p = g.price(start) as f64 / spec.base_price as f64;
        assert!((0.5..2.0).contains(&p), "{p}");
    }
}
