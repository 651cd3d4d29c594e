//! Binance kline intervals, their calendar alignment and the per-interval defaults
//! (history depth, freshness limit, polling period) that producers and operators share.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};

const SEC: i64 = 1_000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
/// 1970-01-01 was a Thursday; Binance weeks open on Monday 00:00 UTC, four days later.
const WEEK_OFFSET: i64 = 4 * DAY;

/// Every kline interval Binance serves. Names are case-sensitive: `1m` is a minute, `1M` a month.
///
/// ```
/// use klinebus_schemas::Interval;
/// let i: Interval = "4h".parse().unwrap();
/// assert_eq!(i.as_str(), "4h");
/// assert_eq!(i.align(1_749_038_790_123), 1_749_038_400_000); // 12:00 UTC
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Interval {
    /// One second.
    S1,
    /// One minute.
    M1,
    /// Three minutes.
    M3,
    /// Five minutes.
    M5,
    /// Fifteen minutes.
    M15,
    /// Thirty minutes.
    M30,
    /// One hour.
    H1,
    /// Two hours.
    H2,
    /// Four hours.
    H4,
    /// Six hours.
    H6,
    /// Eight hours.
    H8,
    /// Twelve hours.
    H12,
    /// One day (00:00 UTC).
    D1,
    /// Three days (aligned to the Unix epoch, as Binance does).
    D3,
    /// One week (Monday 00:00 UTC).
    W1,
    /// One calendar month (the 1st, 00:00 UTC).
    Mo1,
}

/// An interval name Binance does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown interval {0:?}; expected one of 1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M"
)]
pub struct IntervalError(pub String);

impl Interval {
    /// All intervals, shortest first.
    pub const ALL: [Interval; 16] = [
        Self::S1,
        Self::M1,
        Self::M3,
        Self::M5,
        Self::M15,
        Self::M30,
        Self::H1,
        Self::H2,
        Self::H4,
        Self::H6,
        Self::H8,
        Self::H12,
        Self::D1,
        Self::D3,
        Self::W1,
        Self::Mo1,
    ];

    /// Binance's name for the interval.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::S1 => "1s",
            Self::M1 => "1m",
            Self::M3 => "3m",
            Self::M5 => "5m",
            Self::M15 => "15m",
            Self::M30 => "30m",
            Self::H1 => "1h",
            Self::H2 => "2h",
            Self::H4 => "4h",
            Self::H6 => "6h",
            Self::H8 => "8h",
            Self::H12 => "12h",
            Self::D1 => "1d",
            Self::D3 => "3d",
            Self::W1 => "1w",
            Self::Mo1 => "1M",
        }
    }

    /// Parses a comma-separated list such as `15m,1h,4h` (duplicates removed, order kept).
    pub fn parse_list(list: &str) -> Result<Vec<Self>, IntervalError> {
        let mut out: Vec<Self> = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let i: Self = item.parse()?;
            if !out.contains(&i) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Fixed length in milliseconds; `None` for `1M`, whose length depends on the month.
    pub const fn fixed_ms(self) -> Option<i64> {
        Some(match self {
            Self::S1 => SEC,
            Self::M1 => MIN,
            Self::M3 => 3 * MIN,
            Self::M5 => 5 * MIN,
            Self::M15 => 15 * MIN,
            Self::M30 => 30 * MIN,
            Self::H1 => HOUR,
            Self::H2 => 2 * HOUR,
            Self::H4 => 4 * HOUR,
            Self::H6 => 6 * HOUR,
            Self::H8 => 8 * HOUR,
            Self::H12 => 12 * HOUR,
            Self::D1 => DAY,
            Self::D3 => 3 * DAY,
            Self::W1 => 7 * DAY,
            Self::Mo1 => return None,
        })
    }

    /// Nominal length (a month counts as 30 days); for estimates such as expected counts.
    pub const fn nominal_ms(self) -> i64 {
        match self.fixed_ms() {
            Some(ms) => ms,
            None => 30 * DAY,
        }
    }

    /// Nominal length as a [`Duration`].
    pub const fn period(self) -> Duration {
        Duration::from_millis(self.nominal_ms() as u64)
    }

    /// Open time (ms) of the candle that contains `t_ms`, aligned as Binance aligns (UTC).
    pub fn align(self, t_ms: i64) -> i64 {
        match self {
            Self::W1 => (t_ms - WEEK_OFFSET).div_euclid(7 * DAY) * 7 * DAY + WEEK_OFFSET,
            Self::Mo1 => month_start(t_ms),
            _ => {
                let p = self.nominal_ms();
                t_ms.div_euclid(p) * p
            }
        }
    }

    /// The first open time at or after `t_ms`: `t_ms` itself when it is one.
    pub fn align_up(self, t_ms: i64) -> i64 {
        let a = self.align(t_ms);
        if a == t_ms {
            t_ms
        } else {
            self.next_open(a)
        }
    }

    /// Open time of the candle after the one opening at (or containing) `open_ms`.
    pub fn next_open(self, open_ms: i64) -> i64 {
        match self {
            Self::Mo1 => month_start(month_start(open_ms) + 32 * DAY),
            _ => self.align(open_ms) + self.nominal_ms(),
        }
    }

    /// Close time of the candle opening at `open_ms`: next open − 1 ms, as Binance reports it.
    pub fn close_time(self, open_ms: i64) -> i64 {
        self.next_open(open_ms) - 1
    }

    /// Number of candles whose open time lies in `[from_ms, to_ms)`.
    pub fn count_between(self, from_ms: i64, to_ms: i64) -> i64 {
        if to_ms <= from_ms {
            return 0;
        }
        let first = self.align_up(from_ms);
        match self.fixed_ms() {
            Some(p) => {
                if first >= to_ms {
                    0
                } else {
                    (to_ms - 1 - first) / p + 1
                }
            }
            None => {
                let mut n = 0;
                let mut t = first;
                while t < to_ms {
                    n += 1;
                    t = self.next_open(t);
                }
                n
            }
        }
    }

    /// Days of history a backfill fetches when `--days` is not given.
    ///
    /// The documented defaults are 1m 7, 5m 14, 15m 30, 1h 90, 4h 180, 1d 365, 1w 730; the other
    /// intervals follow the same shape (about a few thousand candles, never more than five years):
    /// 1s 1, 3m 14, 30m 60, 2h 120, 6h 180, 8h 365, 12h 365, 3d 730, 1M 1825.
    pub const fn default_days(self) -> u32 {
        match self {
            Self::S1 => 1,
            Self::M1 => 7,
            Self::M3 | Self::M5 => 14,
            Self::M15 => 30,
            Self::M30 => 60,
            Self::H1 => 90,
            Self::H2 => 120,
            Self::H4 | Self::H6 => 180,
            Self::H8 | Self::H12 | Self::D1 => 365,
            Self::D3 | Self::W1 => 730,
            Self::Mo1 => 1825,
        }
    }

    /// How old the newest closed candle's close may be before the series counts as stale.
    ///
    /// Documented: 1m 6 min, 5m 30 min, 15m 1 h, 1h 2 h, 4h 5 h, 1d 25 h, 1w 7 d. Others: 1s 1 min,
    /// 3m 15 min, 30m 1 h, 2h 3 h, 6h 7 h, 8h 9 h, 12h 13 h, 3d 73 h, 1M 32 d.
    pub const fn freshness_limit(self) -> Duration {
        let ms = match self {
            Self::S1 => MIN,
            Self::M1 => 6 * MIN,
            Self::M3 => 15 * MIN,
            Self::M5 => 30 * MIN,
            Self::M15 | Self::M30 => HOUR,
            Self::H1 => 2 * HOUR,
            Self::H2 => 3 * HOUR,
            Self::H4 => 5 * HOUR,
            Self::H6 => 7 * HOUR,
            Self::H8 => 9 * HOUR,
            Self::H12 => 13 * HOUR,
            Self::D1 => 25 * HOUR,
            Self::D3 => 73 * HOUR,
            Self::W1 => 7 * DAY,
            Self::Mo1 => 32 * DAY,
        };
        Duration::from_millis(ms as u64)
    }
}

fn month_start(t_ms: i64) -> i64 {
    let dt: DateTime<Utc> = DateTime::from_timestamp_millis(t_ms).unwrap_or_default();
    Utc.with_ymd_and_hms(dt.year(), dt.month(), 1, 0, 0, 0)
        .single()
        .map_or(0, |d| d.timestamp_millis())
}

impl FromStr for Interval {
    type Err = IntervalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|i| i.as_str() == s)
            .ok_or_else(|| IntervalError(s.to_owned()))
    }
}

impl TryFrom<String> for Interval {
    type Error = IntervalError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Interval> for String {
    fn from(i: Interval) -> Self {
        i.as_str().to_owned()
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for i in Interval::ALL {
            assert_eq!(i.as_str().parse::<Interval>().unwrap(), i);
        }
        assert_eq!("1M".parse::<Interval>().unwrap(), Interval::Mo1);
        assert_eq!("1m".parse::<Interval>().unwrap(), Interval::M1);
        for bad in ["1H", "1D", "2m", "", "1mo", "60"] {
            assert!(bad.parse::<Interval>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fixture_times_align() {
        // klines_rest.json: 1m candle opening 1749038400000 closes 1749038459999.
        assert_eq!(
            Interval::M1.close_time(1_749_038_400_000),
            1_749_038_459_999
        );
        assert_eq!(Interval::M1.align(1_749_038_784_182), 1_749_038_760_000);
    }

    #[test]
    fn weeks_open_on_monday() {
        let t = ms("2025-06-04T12:00:00Z"); // a Wednesday
        assert_eq!(Interval::W1.align(t), ms("2025-06-02T00:00:00Z"));
        assert_eq!(
            Interval::W1.next_open(ms("2025-06-02T00:00:00Z")),
            ms("2025-06-09T00:00:00Z")
        );
    }

    #[test]
    fn months_follow_the_calendar() {
        let t = ms("2024-02-29T23:59:59Z");
        assert_eq!(Interval::Mo1.align(t), ms("2024-02-01T00:00:00Z"));
        assert_eq!(Interval::Mo1.next_open(t), ms("2024-03-01T00:00:00Z"));
        assert_eq!(
            Interval::Mo1.close_time(ms("2024-12-01T00:00:00Z")),
            ms("2025-01-01T00:00:00Z") - 1
        );
    }

    #[test]
    fn counts() {
        let d = ms("2025-01-01T00:00:00Z");
        assert_eq!(Interval::H1.count_between(d, d + DAY), 24);
        assert_eq!(Interval::H1.count_between(d + 1, d + DAY), 23);
        assert_eq!(Interval::M1.count_between(d, d), 0);
        assert_eq!(
            Interval::Mo1.count_between(d, ms("2026-01-01T00:00:00Z")),
            12
        );
    }

    #[test]
    fn documented_defaults() {
        let days: Vec<_> = ["1m", "5m", "15m", "1h", "4h", "1d", "1w"]
            .iter()
            .map(|s| s.parse::<Interval>().unwrap().default_days())
            .collect();
        assert_eq!(days, [7, 14, 30, 90, 180, 365, 730]);
        let mins: Vec<_> = ["1m", "5m", "15m", "1h", "4h", "1d", "1w"]
            .iter()
            .map(|s| s.parse::<Interval>().unwrap().freshness_limit().as_secs() / 60)
            .collect();
        assert_eq!(mins, [6, 30, 60, 120, 300, 25 * 60, 7 * 24 * 60]);
    }
}
