//! The one simulated clock: `start + wall elapsed × speed`. REST, WS and candles all read it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct Inner {
    start_ms: i64,
    started: Instant,
    speed: f64,
}

/// Shared handle to the simulated clock.
#[derive(Clone, Debug)]
pub struct SimClock {
    inner: Arc<Inner>,
}

impl SimClock {
    /// A clock reading `start_ms` now and advancing `speed` times faster than wall time.
    pub fn new(start_ms: i64, speed: f64) -> Self {
        Self {
            inner: Arc::new(Inner {
                start_ms,
                started: Instant::now(),
                speed,
            }),
        }
    }

    /// Simulated epoch ms now.
    pub fn now_ms(&self) -> i64 {
        self.at(Instant::now())
    }

    /// Simulated epoch ms at wall instant `t`.
    pub fn at(&self, t: Instant) -> i64 {
        let wall = t
            .saturating_duration_since(self.inner.started)
            .as_secs_f64();
        self.inner.start_ms + (wall * 1000.0 * self.inner.speed) as i64
    }

    /// The wall instant at which the clock reads `sim_ms` (a millisecond late rather than early).
    pub fn wall_at(&self, sim_ms: i64) -> Instant {
        let ahead_ms = (sim_ms - self.inner.start_ms).max(0) as f64 / self.inner.speed;
        self.inner.started + Duration::from_secs_f64(ahead_ms / 1000.0) + Duration::from_millis(1)
    }

    /// Clock speed relative to wall time.
    pub fn speed(&self) -> f64 {
        self.inner.speed
    }

    /// Simulated time at start-up.
    pub fn start_ms(&self) -> i64 {
        self.inner.start_ms
    }
}

/// Real wall-clock epoch ms (rate limits and bans run on real time, not the simulated clock).
pub(crate) fn wall_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
