//! What each client IP spent, as the exchange sees it: REST weight per wall-clock minute (with
//! the 429s and 418s it earned) and WebSocket connection attempts. Served at `GET /_sim/usage`
//! so a test of several processes on one IP can check what they spent *together*.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::weights::Verdict;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Minutes of REST history kept per IP.
const MINUTES_KEPT: usize = 180;
/// Binance's WebSocket attempt window.
const ATTEMPT_WINDOW: Duration = Duration::from_secs(300);
const MINUTE_MS: i64 = 60_000;

/// One wall-clock minute of an IP's REST usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteUsage {
    /// Start of the minute (epoch ms).
    pub minute_start_ms: i64,
    /// Weight charged in the minute (what `X-MBX-USED-WEIGHT-1M` said last), rejected
    /// requests included as Binance counts them.
    pub weight: u32,
    /// Requests answered 429 for exceeding the limit (injected throttle faults not included).
    pub rate_limited: u32,
    /// Requests answered 418 (banned).
    pub banned: u32,
}

/// One IP's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpUsage {
    /// The client IP.
    pub ip: String,
    /// REST usage per minute, oldest first (minutes without requests are absent).
    pub minutes: Vec<MinuteUsage>,
    /// WebSocket connection attempts, refused ones included.
    pub ws_attempts: u64,
    /// Most attempts within any 5 minutes (sliding), the figure Binance's limit bounds.
    pub ws_attempts_max_5min: u32,
    /// Attempts refused for exceeding the per-IP attempt limit.
    pub ws_refused_by_limit: u64,
}

/// `GET /_sim/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// REQUEST_WEIGHT per minute per IP.
    pub weight_limit: u32,
    /// WebSocket connection attempts per 5 minutes per IP.
    pub ws_connect_limit: u32,
    /// Every IP seen, in no particular order.
    pub ips: Vec<IpUsage>,
}

impl UsageReport {
    /// The usage of `ip` (e.g. `"127.0.0.1"`), if it sent anything.
    pub fn ip(&self, ip: &str) -> Option<&IpUsage> {
        self.ips.iter().find(|u| u.ip == ip)
    }
}

#[derive(Default)]
struct Record {
    minutes: VecDeque<MinuteUsage>,
    ws_attempts: u64,
    ws_recent: VecDeque<Instant>,
    ws_max_5min: u32,
    ws_refused_by_limit: u64,
}

/// Shared usage records (cheap to clone).
#[derive(Clone, Default)]
pub struct Usage(Arc<Mutex<HashMap<IpAddr, Record>>>);

impl Usage {
    /// Records the outcome of charging a REST request at wall time `now_ms`.
    pub(crate) fn rest(&self, ip: IpAddr, now_ms: i64, verdict: Verdict) {
        let start = now_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        let mut all = self.0.lock();
        let r = all.entry(ip).or_default();
        if r.minutes.back().map(|m| m.minute_start_ms) != Some(start) {
            if r.minutes.len() == MINUTES_KEPT {
                r.minutes.pop_front();
            }
            r.minutes.push_back(MinuteUsage {
                minute_start_ms: start,
                weight: 0,
                rate_limited: 0,
                banned: 0,
            });
        }
        let Some(m) = r.minutes.back_mut() else {
            return;
        };
        match verdict {
            Verdict::Ok { used } => m.weight = m.weight.max(used),
            Verdict::Limited { used, .. } => {
                m.weight = m.weight.max(used);
                m.rate_limited += 1;
            }
            Verdict::Banned { used, .. } => {
                m.weight = m.weight.max(used);
                m.banned += 1;
            }
        }
    }

    /// Records a WebSocket connection attempt; `refused_by_limit` when the attempt limit
    /// turned it away.
    pub(crate) fn ws_attempt(&self, ip: IpAddr, refused_by_limit: bool) {
        self.ws_attempt_at(ip, refused_by_limit, Instant::now());
    }

    fn ws_attempt_at(&self, ip: IpAddr, refused_by_limit: bool, now: Instant) {
        let mut all = self.0.lock();
        let r = all.entry(ip).or_default();
        r.ws_attempts += 1;
        if refused_by_limit {
            r.ws_refused_by_limit += 1;
        }
        while r
            .ws_recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= ATTEMPT_WINDOW)
        {
            r.ws_recent.pop_front();
        }
        r.ws_recent.push_back(now);
        r.ws_max_5min = r.ws_max_5min.max(r.ws_recent.len() as u32);
    }

    /// Everything recorded so far.
    pub fn report(&self, weight_limit: u32, ws_connect_limit: u32) -> UsageReport {
        let all = self.0.lock();
        UsageReport {
            weight_limit,
            ws_connect_limit,
            ips: all
                .iter()
                .map(|(ip, r)| IpUsage {
                    ip: ip.to_string(),
                    minutes: r.minutes.iter().copied().collect(),
                    ws_attempts: r.ws_attempts,
                    ws_attempts_max_5min: r.ws_max_5min,
                    ws_refused_by_limit: r.ws_refused_by_limit,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn minutes_keep_the_peak_and_the_refusals() {
        let u = Usage::default();
        let t = 1_749_038_802_000; // 12:06:42
        u.rest(IP, t, Verdict::Ok { used: 2 });
        u.rest(IP, t + 1, Verdict::Ok { used: 4 });
        u.rest(
            IP,
            t + 2,
            Verdict::Limited {
                used: 6,
                retry_after_secs: 18,
            },
        );
        u.rest(IP, t + 60_000, Verdict::Ok { used: 2 });
        let r = u.report(4, 300);
        let m = &r.ip("127.0.0.1").unwrap().minutes;
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].minute_start_ms, m[0].weight), (1_749_038_760_000, 6));
        assert_eq!((m[0].rate_limited, m[0].banned), (1, 0));
        assert_eq!((m[1].weight, m[1].rate_limited), (2, 0));
    }

    #[test]
    fn ws_attempts_peak_over_a_sliding_five_minutes() {
        let u = Usage::default();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        for _ in 0..3 {
            u.ws_attempt_at(IP, false, at(0));
        }
        u.ws_attempt_at(IP, true, at(200));
        // The first three leave the window before these come.
        u.ws_attempt_at(IP, false, at(350));
        u.ws_attempt_at(IP, false, at(350));
        let r = u.report(6000, 300);
        let ip = r.ip("127.0.0.1").unwrap();
        assert_eq!(ip.ws_attempts, 6);
        assert_eq!(ip.ws_refused_by_limit, 1);
        assert_eq!(ip.ws_attempts_max_5min, 4);
    }
}
