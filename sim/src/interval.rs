//! Binance kline intervals and their calendar alignment (UTC, optionally shifted by `timeZone`).

pub(crate) const SECOND: i64 = 1_000;
pub(crate) const MINUTE: i64 = 60 * SECOND;
pub(crate) const HOUR: i64 = 60 * MINUTE;
pub(crate) const DAY: i64 = 24 * HOUR;
/// 1970-01-05, the first Monday after the epoch (a Thursday): weeks open on Mondays.
const FIRST_MONDAY: i64 = 4 * DAY;

/// One of Binance's 16 kline intervals; names are case-sensitive (`1m` minute, `1M` month).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Interval {
    S1,
    M1,
    M3,
    M5,
    M15,
    M30,
    H1,
    H2,
    H4,
    H6,
    H8,
    H12,
    D1,
    D3,
    W1,
    Mo1,
}

impl Interval {
    /// Every interval, finest first.
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

    /// Parses Binance's name, exactly (no case folding).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.as_str() == s)
    }

    /// Binance's name.
    pub fn as_str(self) -> &'static str {
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

    /// Period in ms for fixed-length intervals (weeks included; months are not fixed).
    fn fixed_ms(self) -> Option<i64> {
        Some(match self {
            Self::S1 => SECOND,
            Self::M1 => MINUTE,
            Self::M3 => 3 * MINUTE,
            Self::M5 => 5 * MINUTE,
            Self::M15 => 15 * MINUTE,
            Self::M30 => 30 * MINUTE,
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

    /// The time-zone offset that applies to this interval: only intervals of an hour or more move.
    fn offset(self, tz_ms: i64) -> i64 {
        if self >= Self::H1 {
            tz_ms
        } else {
            0
        }
    }

    /// Open time of the candle containing `t` (ms, UTC).
    pub fn open_of(self, t: i64, tz_ms: i64) -> i64 {
        let off = self.offset(tz_ms);
        let local = t + off;
        let open_local = match (self, self.fixed_ms()) {
            (Self::W1, Some(p)) => (local - FIRST_MONDAY).div_euclid(p) * p + FIRST_MONDAY,
            (_, Some(p)) => local.div_euclid(p) * p,
            (_, None) => {
                let (y, m, _) = civil_from_days(local.div_euclid(DAY));
                days_from_civil(y, m, 1) * DAY
            }
        };
        open_local - off
    }

    /// Open time of the candle after the one opening at `open`.
    pub fn next_open(self, open: i64, tz_ms: i64) -> i64 {
        match self.fixed_ms() {
            Some(p) => open + p,
            None => {
                let off = self.offset(tz_ms);
                let (y, m, _) = civil_from_days((open + off).div_euclid(DAY));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * DAY - off
            }
        }
    }

    /// Open time of the candle before the one opening at `open`.
    pub fn prev_open(self, open: i64, tz_ms: i64) -> i64 {
        self.open_of(open - 1, tz_ms)
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses Binance's `timeZone` forms (`0`, `8`, `-1:00`, `05:45`, `+08:00`) into an offset in
/// ms; `None` when malformed or outside −12:00..=+14:00.
pub fn parse_time_zone(s: &str) -> Option<i64> {
    // A raw '+' in a query string decodes to a space; accept it as the sign it was meant to be.
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' | b' ' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => (1, s),
    };
    let (hh, mm) = match rest.split_once(':') {
        Some((h, m)) => (h, Some(m)),
        None => (rest, None),
    };
    let digits = |d: &str, max_len: usize| {
        !d.is_empty() && d.len() <= max_len && d.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(hh, 2) || mm.is_some_and(|m| !digits(m, 2) || m.len() != 2) {
        return None;
    }
    let hours: i64 = hh.parse().ok()?;
    let minutes: i64 = mm.map_or(Some(0), |m| m.parse().ok())?;
    if minutes >= 60 {
        return None;
    }
    let total = sign * (hours * 60 + minutes);
    (-12 * 60..=14 * 60)
        .contains(&total)
        .then_some(total * MINUTE)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month 1..=12, day 1..=31).
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Epoch ms of a UTC calendar instant.
pub(crate) fn utc_ms(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
    days_from_civil(y, mo, d) * DAY + h * HOUR + mi * MINUTE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for z in -800_000..800_000i64 {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(utc_ms(2025, 6, 4, 12, 0), 1_749_038_400_000);
    }

    #[test]
    fn alignment() {
        let t = utc_ms(2025, 6, 4, 12, 34) + 5_678; // a Wednesday
        assert_eq!(Interval::M1.open_of(t, 0), utc_ms(2025, 6, 4, 12, 34));
        assert_eq!(Interval::H4.open_of(t, 0), utc_ms(2025, 6, 4, 12, 0));
        assert_eq!(Interval::D1.open_of(t, 0), utc_ms(2025, 6, 4, 0, 0));
        assert_eq!(Interval::W1.open_of(t, 0), utc_ms(2025, 6, 2, 0, 0));
        assert_eq!(Interval::Mo1.open_of(t, 0), utc_ms(2025, 6, 1, 0, 0));
        assert_eq!(
            Interval::Mo1.next_open(utc_ms(2024, 12, 1, 0, 0), 0),
            utc_ms(2025, 1, 1, 0, 0)
        );
        assert_eq!(Interval::D3.open_of(0, 0), 0);
        // timeZone moves only intervals of an hour or more.
        let tz = parse_time_zone("8").unwrap_or(0);
        assert_eq!(Interval::D1.open_of(t, tz), utc_ms(2025, 6, 3, 16, 0));
        assert_eq!(Interval::M15.open_of(t, tz), utc_ms(2025, 6, 4, 12, 30));
    }

    #[test]
    fn time_zones() {
        assert_eq!(parse_time_zone("0"), Some(0));
        assert_eq!(parse_time_zone("-1:00"), Some(-HOUR));
        assert_eq!(parse_time_zone("05:45"), Some(5 * HOUR + 45 * MINUTE));
        assert_eq!(parse_time_zone("+14:00"), Some(14 * HOUR));
        assert_eq!(parse_time_zone("-12"), Some(-12 * HOUR));
        for bad in ["", "15", "-13", "+14:01", "1:5", "abc", "8:60", "123"] {
            assert_eq!(parse_time_zone(bad), None, "{bad}");
        }
    }
}
