//! The REQUEST_WEIGHT limiter every concurrent request of a process shares (`Arc`).
//!
//! Binance counts weight per IP per wall-clock minute (6000 for spot). The limiter:
//! - reserves a request's weight before it is sent and waits for the next minute when the
//!   budget (a safe share of the limit) is used up;
//! - after each response, raises its count to the server's `X-MBX-USED-WEIGHT-1M` (plus what is
//!   still in flight): the server's count is authoritative, other processes may share the IP;
//! - on 429 pauses everyone for `Retry-After` and treats the minute as full; on 418 pauses
//!   everyone until the ban ends.
//!
//! Times are wall-clock epoch milliseconds passed in by the caller, so the rules are unit-tested
//! without waiting; [`WeightLimiter::acquire`] is the async wrapper using the system clock.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;

/// Binance's spot REQUEST_WEIGHT limit per minute.
pub const BINANCE_WEIGHT_LIMIT: u32 = 6000;
/// Default budget: 80 % of the limit, leaving room for other processes and clock skew.
pub const DEFAULT_BUDGET: u32 = BINANCE_WEIGHT_LIMIT * 4 / 5;

const MINUTE_MS: i64 = 60_000;
/// Our minute starts this much after the wall minute, so a server whose clock lags a little has
/// already reset its window when we start spending the new budget.
const SKEW_MS: i64 = 300;
/// Minutes of usage history kept for reports.
const HISTORY: usize = 120;

/// Weight reserved for one request; hand it back with [`WeightLimiter::on_response`].
#[derive(Debug)]
#[must_use = "report the response with on_response"]
pub struct Permit {
    weight: u32,
    minute: i64,
}

/// Usage of one wall-clock minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteUsage {
    /// Start of the minute (epoch ms).
    pub minute_start_ms: i64,
    /// Weight this process reserved in the minute.
    pub reserved: u32,
    /// Highest `X-MBX-USED-WEIGHT-1M` the server reported in the minute.
    pub server_used: u32,
}

/// Counters for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// 429 answers seen.
    pub rate_limited: u64,
    /// 418 answers seen.
    pub banned: u64,
    /// Times a request had to wait for the budget or a pause.
    pub waits: u64,
}

#[derive(Debug, Default)]
struct State {
    minute: i64,
    used: u32,
    inflight: u32,
    paused_until_ms: i64,
    history: VecDeque<MinuteUsage>,
    /// Start of the newest minute [`WeightLimiter::take_finished_minute`] handed out.
    reported_ms: i64,
    stats: LimiterStats,
}

/// Shared weight budget; see the module docs.
#[derive(Debug)]
pub struct WeightLimiter {
    budget: u32,
    state: Mutex<State>,
}

fn minute_of(now_ms: i64) -> i64 {
    (now_ms - SKEW_MS).div_euclid(MINUTE_MS)
}

/// The system clock in epoch milliseconds.
pub fn wall_now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Default for WeightLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_BUDGET)
    }
}

impl WeightLimiter {
    /// A limiter spending at most `budget` weight per minute (at least 1).
    pub fn new(budget: u32) -> Self {
        Self {
            budget: budget.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// The per-minute budget.
    pub fn budget(&self) -> u32 {
        self.budget
    }

    fn roll(&self, st: &mut State, now_ms: i64) {
        let m = minute_of(now_ms);
        if m != st.minute {
            st.minute = m;
            st.used = 0;
            st.inflight = 0;
        }
    }

    fn usage_mut(st: &mut State, now_ms: i64) -> &mut MinuteUsage {
        let start = now_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        if st.history.back().map(|u| u.minute_start_ms) != Some(start) {
            if st.history.len() == HISTORY {
                st.history.pop_front();
            }
            st.history.push_back(MinuteUsage {
                minute_start_ms: start,
                reserved: 0,
                server_used: 0,
            });
        }
        // Just pushed or matched above.
        let last = st.history.len() - 1;
        &mut st.history[last]
    }

    /// Reserves `weight` at `now_ms`, or says until when (epoch ms) to wait before trying again.
    pub fn try_reserve(&self, weight: u32, now_ms: i64) -> Result<Permit, i64> {
        let mut st = self.state.lock();
        if now_ms < st.paused_until_ms {
            return Err(st.paused_until_ms);
        }
        self.roll(&mut st, now_ms);
        // A request heavier than the whole budget may go alone at the start of a minute.
        if st.used > 0 && st.used.saturating_add(weight) > self.budget {
            return Err((st.minute + 1) * MINUTE_MS + SKEW_MS);
        }
        st.used = st.used.saturating_add(weight);
        st.inflight = st.inflight.saturating_add(weight);
        Self::usage_mut(&mut st, now_ms).reserved += weight;
        Ok(Permit {
            weight,
            minute: st.minute,
        })
    }

    /// Waits (sleeping) until `weight` can be reserved, then reserves it.
    pub async fn acquire(&self, weight: u32) -> Permit {
        loop {
            let now = wall_now_ms();
            match self.try_reserve(weight, now) {
                Ok(p) => return p,
                Err(until) => {
                    self.state.lock().stats.waits += 1;
                    let ms = (until - now).clamp(1, 3_600_000) as u64;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
        }
    }

    /// Reports the answer to a permitted request with the server's `X-MBX-USED-WEIGHT-1M`, if
    /// the response had one. Within the minute the request was sent in, the count becomes at
    /// least the server's figure plus what is still in flight.
    pub fn on_response(&self, permit: Permit, server_used: Option<u32>, now_ms: i64) {
        let mut st = self.state.lock();
        self.roll(&mut st, now_ms);
        let same_minute = permit.minute == st.minute;
        if same_minute {
            st.inflight = st.inflight.saturating_sub(permit.weight);
        }
        if let Some(used) = server_used {
            let u = Self::usage_mut(&mut st, now_ms);
            u.server_used = u.server_used.max(used);
            if same_minute {
                st.used = st.used.max(used.saturating_add(st.inflight));
            }
        }
    }

    /// A 429 with `Retry-After`: everyone pauses that long. (Binance's Retry-After runs to the
    /// end of its window; the server's weight header, already synced, says how full it is.)
    pub fn on_rate_limited(&self, retry_after: Duration, now_ms: i64) {
        let mut st = self.state.lock();
        st.stats.rate_limited += 1;
        let until = now_ms.saturating_add(retry_after.as_millis() as i64);
        st.paused_until_ms = st.paused_until_ms.max(until);
    }

    /// A 418: everyone pauses until the ban ends.
    pub fn on_banned(&self, retry_after: Duration, now_ms: i64) {
        let mut st = self.state.lock();
        st.stats.banned += 1;
        let until = now_ms.saturating_add(retry_after.as_millis() as i64);
        st.paused_until_ms = st.paused_until_ms.max(until);
    }

    /// The weight counted against the current minute (reserved or reported by the server).
    pub fn used(&self, now_ms: i64) -> u32 {
        let mut st = self.state.lock();
        self.roll(&mut st, now_ms);
        st.used
    }

    /// Until when (epoch ms) requests are paused by a 429/418; 0 if never.
    pub fn paused_until_ms(&self) -> i64 {
        self.state.lock().paused_until_ms
    }

    /// Per-minute usage, oldest first (the last two hours).
    pub fn history(&self) -> Vec<MinuteUsage> {
        self.state.lock().history.iter().copied().collect()
    }

    /// The usage of the last minute that ended before `now_ms`, once: the caller reports it
    /// (a log line a minute, while requests are made).
    pub fn take_finished_minute(&self, now_ms: i64) -> Option<MinuteUsage> {
        let mut st = self.state.lock();
        let current = now_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        let done = st
            .history
            .iter()
            .rev()
            .find(|u| u.minute_start_ms < current)
            .copied()?;
        if done.minute_start_ms <= st.reported_ms {
            return None;
        }
        st.reported_ms = done.minute_start_ms;
        Some(done)
    }

    /// Counters so far.
    pub fn stats(&self) -> LimiterStats {
        self.state.lock().stats
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// 10:00:05 on some day, well inside a minute.
    const T0: i64 = 1_749_038_405_000;

    #[test]
    fn spends_the_budget_then_waits_for_the_next_minute() {
        let l = WeightLimiter::new(10);
        let mut permits = Vec::new();
        for _ in 0..5 {
            permits.push(l.try_reserve(2, T0).unwrap());
        }
        let until = l.try_reserve(2, T0 + 1000).unwrap_err();
        assert_eq!(until, 1_749_038_460_000 + SKEW_MS);
        // Just before our minute turns: still full.
        assert!(l.try_reserve(2, until - 1).is_err());
        let p = l.try_reserve(2, until).unwrap();
        assert_eq!(l.used(until), 2);
        l.on_response(p, Some(2), until + 5);
        // Answers to last minute's requests do not count against this one.
        for p in permits {
            l.on_response(p, Some(10), until + 10);
        }
        assert_eq!(l.used(until + 10), 2);
    }

    #[test]
    fn server_count_is_authoritative() {
        let l = WeightLimiter::new(100);
        let a = l.try_reserve(2, T0).unwrap();
        let _b = l.try_reserve(2, T0).unwrap();
        // Another process on the IP used 90 already: 92 incl. a, and b is still in flight.
        l.on_response(a, Some(92), T0 + 10);
        assert_eq!(l.used(T0 + 10), 94);
        assert!(l.try_reserve(8, T0 + 20).is_err());
        assert!(l.try_reserve(6, T0 + 20).is_ok());
        // A lower server figure never lowers our own count.
        let c = l.try_reserve(0, T0 + 30).unwrap();
        l.on_response(c, Some(1), T0 + 40);
        assert_eq!(l.used(T0 + 40), 100);
        let h = l.history();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].server_used, 92);
        assert_eq!(h[0].reserved, 10);
    }

    #[test]
    fn retry_after_pauses_everyone() {
        let l = WeightLimiter::new(1000);
        let p = l.try_reserve(2, T0).unwrap();
        // The server counted 6002 (another process on the IP): our minute is full too.
        l.on_response(p, Some(6002), T0 + 1);
        l.on_rate_limited(Duration::from_secs(18), T0 + 1);
        assert_eq!(l.try_reserve(2, T0 + 2).unwrap_err(), T0 + 18_001);
        assert!(l.try_reserve(2, T0 + 18_000).is_err());
        // Paused time is over but the minute is full (SKEW: we wait for our next minute).
        let until = l.try_reserve(2, T0 + 18_001).unwrap_err();
        assert_eq!(until, 1_749_038_460_000 + SKEW_MS);
        assert!(l.try_reserve(2, until).is_ok());
        // A 429 while the count is low (a burst elsewhere) pauses only for Retry-After.
        let l = WeightLimiter::new(1000);
        l.on_rate_limited(Duration::from_secs(1), T0);
        assert!(l.try_reserve(2, T0 + 999).is_err());
        assert!(l.try_reserve(2, T0 + 1000).is_ok());
        assert_eq!(l.stats().rate_limited, 1);
    }

    #[test]
    fn ban_pauses_until_it_ends_even_across_minutes() {
        let l = WeightLimiter::new(1000);
        l.on_banned(Duration::from_secs(318), T0);
        assert_eq!(l.try_reserve(2, T0 + 200_000).unwrap_err(), T0 + 318_000);
        assert!(l.try_reserve(2, T0 + 318_000).is_ok());
        assert_eq!(l.stats().banned, 1);
    }

    #[test]
    fn oversized_request_goes_alone() {
        let l = WeightLimiter::new(10);
        assert!(l.try_reserve(20, T0).is_ok());
        assert!(l.try_reserve(1, T0).is_err());
    }

    #[test]
    fn each_finished_minute_is_handed_out_once() {
        let l = WeightLimiter::new(100);
        let p = l.try_reserve(2, T0).unwrap();
        l.on_response(p, Some(40), T0 + 10);
        assert_eq!(l.take_finished_minute(T0 + 20), None, "still running");
        let next = T0 + 60_000;
        let p = l.try_reserve(2, next).unwrap();
        let done = l.take_finished_minute(next).unwrap();
        assert_eq!((done.reserved, done.server_used), (2, 40));
        assert_eq!(done.minute_start_ms, 1_749_038_400_000);
        assert_eq!(l.take_finished_minute(next + 5), None);
        l.on_response(p, Some(2), next + 10);
        assert_eq!(
            l.take_finished_minute(next + 60_000)
                .unwrap()
                .minute_start_ms,
            1_749_038_460_000
        );
    }

    #[tokio::test]
    async fn acquire_returns_at_once_with_budget_left() {
        let l = WeightLimiter::new(100);
        let p = l.acquire(2).await;
        l.on_response(p, Some(2), wall_now_ms());
        assert_eq!(l.stats().waits, 0);
    }
}
