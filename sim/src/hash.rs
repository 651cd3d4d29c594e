//! Stateless integer hashing: every random-looking number in the market is a pure function of
//! (seed, symbol, stream tag, index), so any candle can be produced without generating history.

/// splitmix64 finaliser: cheap, and strong enough that neighbouring indices look independent.
#[inline]
pub(crate) fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of (key, tag, index); `key` already mixes seed and symbol.
#[inline]
pub(crate) fn h(key: u64, tag: u64, idx: i64) -> u64 {
    splitmix(splitmix(key ^ tag.wrapping_mul(0xD6E8_FEB8_6659_FD93)) ^ idx as u64)
}

/// Uniform in [0, 1) from the top 53 bits.
#[inline]
pub(crate) fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// FNV-1a: a stable symbol hash (std's hasher is randomised per process).
pub(crate) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |acc, b| {
        (acc ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_in_range_and_spread() {
        let mean: f64 = (0..10_000).map(|i| unit(h(1, 2, i))).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert!((0..1000).all(|i| (0.0..1.0).contains(&unit(h(3, 4, i)))));
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv(""), 0xCBF2_9CE4_8422_2325);
        assert_ne!(fnv("BTCUSDT"), fnv("ETHUSDT"));
    }
}
