//! The WebSocket connection-attempt budget every connection of a process shares (`Arc`).
//!
//! Binance allows 300 connection attempts per 5 minutes per IP and answers more with 429 (and
//! bans repeat offenders). Backoff alone does not keep under it: 24 shards failing together at
//! 500 ms … 30 s backoff make about 14 attempts each within 5 minutes, 336 in all. So every
//! attempt, reconnects and rotations alike, first takes a slot of a sliding 5-minute window;
//! with none left it waits for the oldest slot to leave the window. Binance sends no header
//! telling how many attempts an IP made, so processes sharing an IP each get a share
//! (`--ws-connect-budget`), the default leaving half of the IP's limit for restarts and others.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Binance's WebSocket connection attempts per IP per [`CONNECT_WINDOW`].
pub const BINANCE_CONNECT_LIMIT: u32 = 300;
/// The window of Binance's attempt limit.
pub const CONNECT_WINDOW: Duration = Duration::from_secs(300);
/// Default budget of one process: half the IP's limit.
pub const DEFAULT_CONNECT_BUDGET: u32 = BINANCE_CONNECT_LIMIT / 2;

/// A sliding-window budget of connection attempts; see the module docs.
#[derive(Debug)]
pub struct ConnectBudget {
    budget: u32,
    window: Duration,
    attempts: Mutex<VecDeque<Instant>>,
}

impl Default for ConnectBudget {
    fn default() -> Self {
        Self::new(DEFAULT_CONNECT_BUDGET)
    }
}

impl ConnectBudget {
    /// At most `budget` attempts (at least 1) per [`CONNECT_WINDOW`].
    pub fn new(budget: u32) -> Self {
        Self::with_window(budget, CONNECT_WINDOW)
    }

    /// At most `budget` attempts per `window`.
    pub fn with_window(budget: u32, window: Duration) -> Self {
        Self {
            budget: budget.max(1),
            window,
            attempts: Mutex::new(VecDeque::new()),
        }
    }

    /// Attempts allowed per window.
    pub fn budget(&self) -> u32 {
        self.budget
    }

    /// Takes a slot at `now`, or says when the next one frees up.
    pub fn try_take_at(&self, now: Instant) -> Result<(), Instant> {
        let mut a = self.attempts.lock();
        while a
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            a.pop_front();
        }
        if a.len() < self.budget as usize {
            a.push_back(now);
            return Ok(());
        }
        // Full: the front entry is inside the window.
        Err(a.front().map_or(now, |t| *t + self.window))
    }

    /// Takes a slot now, or says when the next one frees up.
    pub fn try_take(&self) -> Result<(), Instant> {
        self.try_take_at(Instant::now())
    }

    /// Waits until a slot is free and takes it.
    pub async fn take(&self) {
        while let Err(until) = self.try_take() {
            let wait = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Attempts taken within the window ending at `now`.
    #[cfg(test)]
    fn used_at(&self, now: Instant) -> u32 {
        let a = self.attempts.lock();
        a.iter()
            .filter(|t| now.saturating_duration_since(**t) < self.window)
            .count() as u32
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_window_frees_its_oldest_slot_first() {
        let b = ConnectBudget::with_window(3, Duration::from_secs(300));
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        b.try_take_at(at(0)).unwrap();
        b.try_take_at(at(10)).unwrap();
        b.try_take_at(at(20)).unwrap();
        assert_eq!(b.try_take_at(at(30)).unwrap_err(), at(300));
        assert_eq!(b.used_at(at(30)), 3);
        // The refused attempt took nothing.
        b.try_take_at(at(300)).unwrap();
        assert_eq!(b.try_take_at(at(305)).unwrap_err(), at(310));
        assert_eq!(b.used_at(at(305)), 3);
    }

    #[tokio::test]
    async fn take_waits_for_the_window() {
        let b = ConnectBudget::with_window(2, Duration::from_millis(200));
        let start = Instant::now();
        b.take().await;
        b.take().await;
        assert!(start.elapsed() < Duration::from_millis(200));
        b.take().await;
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
