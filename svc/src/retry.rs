//! Waiting out failures: one bounded exponential [`Backoff`] (plain for sinks' naks and
//! pauses, jittered for reconnects and requests many processes make at once).

use std::time::Duration;

use rand::Rng;

/// Doubles from `min` up to `max` on each consecutive failure; resets on success. Jittered
/// ([`Backoff::jittered`]), each delay is drawn uniformly from its upper half, so that clients
/// failing together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: bool,
    failures: u32,
}

impl Backoff {
    /// A backoff starting at `min` and never above `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            jitter: false,
            failures: 0,
        }
    }

    /// The same with full jitter: each delay uniformly in `[d/2, d]`.
    pub fn jittered(min: Duration, max: Duration) -> Self {
        Self {
            jitter: true,
            ..Self::new(min, max)
        }
    }

    /// The delay after `failures` (≥ 1) consecutive failures, without recording one.
    pub fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        let d = self
            .min
            .checked_mul(1u32 << shift)
            .map_or(self.max, |d| d.min(self.max));
        if !self.jitter {
            return d;
        }
        let ms = d.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    /// Records a failure and returns the delay to wait (and to ask the server to wait).
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay(self.failures)
    }

    /// Records a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_is_bounded() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..6).map(|_| b.fail().as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.failures(), 6);
        for _ in 0..100 {
            assert!(b.fail() <= Duration::from_secs(1));
        }
        b.reset();
        assert_eq!(b.fail(), Duration::from_millis(100));
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let b = Backoff::jittered(Duration::from_millis(100), Duration::from_secs(1));
        for failures in 1..10 {
            let full =
                Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).delay(failures);
            for _ in 0..50 {
                let d = b.delay(failures);
                assert!(d >= full / 2 && d <= full, "{d:?} vs {full:?}");
            }
        }
    }
}
