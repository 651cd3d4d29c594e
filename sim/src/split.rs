//! Top-down 1s candles: a 1m candle split into 60 seconds whose aggregate is exactly that minute.
//!
//! The high is reached in one hashed second and the low in another; volumes, quote volumes and
//! trades are split by hashed weights with the remainder on the last second, so sums are exact.

use crate::agg::Agg;
use crate::gen::{Gen, TAG_SPLIT};
use crate::hash::{h, splitmix, unit};

/// Splits `x` by `weights` (floor each share, remainder on the last), exact by construction.
fn shares(x: u128, weights: &[u64; 60], total: u64) -> [u128; 60] {
    let mut out = [0u128; 60];
    let mut used = 0u128;
    for (o, &w) in out.iter_mut().zip(weights).take(59) {
        *o = x * u128::from(w) / u128::from(total);
        used += *o;
    }
    out[59] = x - used;
    out
}

/// The 60 one-second candles of minute `m`, whose 1m candle is `min`.
pub(crate) fn split_minute(g: &Gen, m: i64, min: &Agg) -> [Agg; 60] {
    let key = h(g.key, TAG_SPLIT, m);
    let r = |i: u64| splitmix(key ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let tick = g.tick;
    let (lo, hi) = (min.low, min.high);

    // Boundary prices p[0] = open … p[60] = close: a noisy line clamped to [low, high].
    let mut p = [0u64; 61];
    p[0] = min.open;
    p[60] = min.close;
    let (o, c, span) = (min.open as f64, min.close as f64, (hi - lo) as f64);
    for (s, ps) in p.iter_mut().enumerate().take(60).skip(1) {
        let line = o + (c - o) * s as f64 / 60.0;
        let v = line + span * 0.35 * (2.0 * unit(r(s as u64)) - 1.0);
        let ticks = (v / tick as f64).round().max(1.0) as u64;
        *ps = (ticks * tick).clamp(lo, hi);
    }
    let s_high = (r(100) % 60) as usize;
    let mut s_low = (r(101) % 60) as usize;
    if s_low == s_high {
        s_low = (s_high + 1 + (r(102) % 59) as usize) % 60;
    }

    let mut weights = [0u64; 60];
    for (i, w) in weights.iter_mut().enumerate() {
        *w = 1 + r(200 + i as u64) % 1000;
    }
    let total: u64 = weights.iter().sum();
    let step = u128::from(g.step);
    let vol = shares(min.volume / step, &weights, total);
    let quote = shares(min.quote, &weights, total);
    let tb = shares(min.taker_base / step, &weights, total);
    let tq = shares(min.taker_quote, &weights, total);
    let trades = shares(u128::from(min.trades), &weights, total);

    let mut next_id = min.first_id;
    std::array::from_fn(|s| {
        let (open, close) = (p[s], p[s + 1]);
        let bump = |i: u64| if r(i) % 3 == 0 { tick } else { 0 };
        let high = if s == s_high {
            hi
        } else {
            (open.max(close) + bump(300 + s as u64)).min(hi)
        };
        let low = if s == s_low {
            lo
        } else {
            open.min(close).saturating_sub(bump(400 + s as u64)).max(lo)
        };
        let n = trades[s] as u64;
        let first_id = next_id;
        next_id += n as i64;
        Agg {
            open,
            high,
            low,
            close,
            volume: vol[s] * step,
            quote: quote[s],
            taker_base: tb[s] * step,
            taker_quote: tq[s],
            trades: n,
            first_id,
            last_id: first_id + n as i64 - 1,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agg::merge;
    use crate::symbols::SymbolSpec;

    #[test]
    fn seconds_aggregate_to_the_minute() {
        for name in ["BTCUSDT", "DOGEUSDT", "XRPUSDT"] {
            let g = Gen::new(7, &SymbolSpec::for_name(name));
            for m in 29_150_640..29_150_700 {
                let min = g.minute(m);
                let secs = split_minute(&g, m, &min);
                let mut acc = None;
                for s in &secs {
                    assert!(s.low <= s.open.min(s.close) && s.high >= s.open.max(s.close));
                    merge(&mut acc, Some(*s));
                }
                assert_eq!(acc, Some(min), "{name} {m}");
            }
        }
    }
}
