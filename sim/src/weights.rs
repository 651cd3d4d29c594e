//! REQUEST_WEIGHT accounting per client IP on real wall-clock minutes, with 429s and 418 bans.

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;

/// Longest ban, 3 days (Binance: "2 minutes to 3 days").
const MAX_BAN_SECS: u64 = 259_200;
const MINUTE_MS: i64 = 60_000;

#[derive(Default)]
struct IpState {
    minute: i64,
    used: u32,
    over: u32,
    ban_until_ms: i64,
    offences: u32,
}

/// The outcome of charging a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Ok {
        used: u32,
    },
    Limited {
        used: u32,
        retry_after_secs: u64,
    },
    Banned {
        used: u32,
        until_ms: i64,
        retry_after_secs: u64,
    },
}

/// Per-IP weight windows and bans.
pub(crate) struct Limiter {
    limit: u32,
    enforce: bool,
    ban_after: u32,
    ban_secs: u64,
    ips: Mutex<HashMap<IpAddr, IpState>>,
}

fn ceil_secs(ms: i64) -> u64 {
    (ms.max(0) as u64).div_ceil(1000)
}

impl Limiter {
    pub fn new(limit: u32, enforce: bool, ban_after: u32, ban_secs: u64) -> Self {
        Self {
            limit,
            enforce,
            ban_after,
            ban_secs,
            ips: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Charges `weight` to `ip` at wall time `now_ms`. The rejected request's weight counts too,
    /// as Binance's 429 shows (6002 against 6000).
    pub fn charge(&self, ip: IpAddr, weight: u32, now_ms: i64) -> Verdict {
        let mut ips = self.ips.lock();
        let st = ips.entry(ip).or_default();
        let minute = now_ms.div_euclid(MINUTE_MS);
        if st.minute != minute {
            st.minute = minute;
            st.used = 0;
            st.over = 0;
        }
        if self.enforce && now_ms < st.ban_until_ms {
            return Verdict::Banned {
                used: st.used,
                until_ms: st.ban_until_ms,
                retry_after_secs: ceil_secs(st.ban_until_ms - now_ms),
            };
        }
        st.used = st.used.saturating_add(weight);
        if !self.enforce || st.used <= self.limit {
            return Verdict::Ok { used: st.used };
        }
        st.over += 1;
        if st.over > self.ban_after {
            let secs = self
                .ban_secs
                .saturating_mul(1 << st.offences.min(20))
                .min(MAX_BAN_SECS);
            st.offences += 1;
            st.over = 0;
            st.ban_until_ms = now_ms + secs as i64 * 1000;
            return Verdict::Banned {
                used: st.used,
                until_ms: st.ban_until_ms,
                retry_after_secs: secs,
            };
        }
        Verdict::Limited {
            used: st.used,
            retry_after_secs: ceil_secs((minute + 1) * MINUTE_MS - now_ms),
        }
    }

    /// Weight used by `ip` in the current minute (for responses that charge nothing).
    pub fn used(&self, ip: IpAddr, now_ms: i64) -> u32 {
        let ips = self.ips.lock();
        ips.get(&ip)
            .filter(|s| s.minute == now_ms.div_euclid(MINUTE_MS))
            .map_or(0, |s| s.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn limit_then_ban_then_longer_ban() {
        let l = Limiter::new(10, true, 2, 120);
        let t = 1_749_038_802_000; // 12:06:42
        for i in 1..=5 {
            assert_eq!(l.charge(IP, 2, t), Verdict::Ok { used: 2 * i });
        }
        assert_eq!(
            l.charge(IP, 2, t),
            Verdict::Limited {
                used: 12,
                retry_after_secs: 18
            }
        );
        assert!(matches!(l.charge(IP, 2, t), Verdict::Limited { .. }));
        let v = l.charge(IP, 2, t);
        assert_eq!(
            v,
            Verdict::Banned {
                used: 16,
                until_ms: t + 120_000,
                retry_after_secs: 120
            }
        );
        // Still banned after the minute turns.
        assert!(matches!(
            l.charge(IP, 1, t + 60_000),
            Verdict::Banned {
                retry_after_secs: 60,
                ..
            }
        ));
        // Second offence doubles.
        let t2 = t + 180_000;
        for _ in 0..5 {
            l.charge(IP, 2, t2);
        }
        l.charge(IP, 2, t2);
        l.charge(IP, 2, t2);
        assert!(matches!(
            l.charge(IP, 2, t2),
            Verdict::Banned {
                retry_after_secs: 240,
                ..
            }
        ));
    }

    #[test]
    fn disabled_only_counts() {
        let l = Limiter::new(1, false, 0, 120);
        for _ in 0..100 {
            assert!(matches!(l.charge(IP, 2, 0), Verdict::Ok { .. }));
        }
        assert_eq!(l.used(IP, 0), 200);
    }
}
