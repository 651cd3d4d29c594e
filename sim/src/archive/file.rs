//! Archive file names and paths: `data/spot/{monthly,daily}/klines/<SYM>/<iv>/<SYM>-<iv>-<date>.zip`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::interval::{civil_from_days, days_from_civil, Interval, DAY};

/// First instant whose files carry microseconds (spot, from 2025-01-01 on).
pub(crate) const MICROS_FROM_MS: i64 = 1_735_689_600_000;

/// The period one archive file covers: a calendar month or a UTC day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    /// `YYYY-MM`, a monthly file.
    Month { year: i32, month: u32 },
    /// `YYYY-MM-DD`, a daily file.
    Day { year: i32, month: u32, day: u32 },
}

impl Period {
    /// Parses `YYYY-MM` (month) or `YYYY-MM-DD` (day); `None` for a date that does not exist.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
        let p = match b.len() {
            7 if digits(0..4) && b[4] == b'-' && digits(5..7) => Self::Month {
                year: num(0..4)? as i32,
                month: num(5..7)?,
            },
            10 if digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10) => {
                Self::Day {
                    year: num(0..4)? as i32,
                    month: num(5..7)?,
                    day: num(8..10)?,
                }
            }
            _ => return None,
        };
        p.valid().then_some(p)
    }

    fn valid(self) -> bool {
        let (y, m, d) = self.ymd();
        if !(1..=12).contains(&m) || d == 0 {
            return false;
        }
        civil_from_days(days_from_civil(y.into(), m.into(), d.into()))
            == (y.into(), m.into(), d.into())
    }

    fn ymd(self) -> (i32, u32, u32) {
        match self {
            Self::Month { year, month } => (year, month, 1),
            Self::Day { year, month, day } => (year, month, day),
        }
    }

    /// The month or day containing `ms` (UTC).
    pub fn month_of(ms: i64) -> Self {
        let (y, m, _) = civil_from_days(ms.div_euclid(DAY));
        Self::Month {
            year: y as i32,
            month: m as u32,
        }
    }

    /// The UTC day containing `ms`.
    pub fn day_of(ms: i64) -> Self {
        let (y, m, d) = civil_from_days(ms.div_euclid(DAY));
        Self::Day {
            year: y as i32,
            month: m as u32,
            day: d as u32,
        }
    }

    /// True for a daily file's period.
    pub fn is_day(self) -> bool {
        matches!(self, Self::Day { .. })
    }

    /// `[start, end)` in epoch ms.
    pub fn range_ms(self) -> (i64, i64) {
        let (y, m, d) = self.ymd();
        let start = days_from_civil(y.into(), m.into(), d.into()) * DAY;
        let end = match self {
            Self::Day { .. } => start + DAY,
            Self::Month { year, month } => {
                let (y, m) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                days_from_civil(y.into(), m.into(), 1) * DAY
            }
        };
        (start, end)
    }

    /// The period after this one.
    pub fn next(self) -> Self {
        let end = self.range_ms().1;
        match self {
            Self::Day { .. } => Self::day_of(end),
            Self::Month { .. } => Self::month_of(end),
        }
    }

    /// Whether the file's times are microseconds (periods from 2025-01-01 on).
    pub(crate) fn micros(self) -> bool {
        self.range_ms().0 >= MICROS_FROM_MS
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Month { year, month } => write!(f, "{year:04}-{month:02}"),
            Self::Day { year, month, day } => write!(f, "{year:04}-{month:02}-{day:02}"),
        }
    }
}

/// The archive's interval name: the API's, except `1mo` for the month (`1M`).
pub fn archive_interval_name(iv: Interval) -> &'static str {
    match iv {
        Interval::Mo1 => "1mo",
        other => other.as_str(),
    }
}

/// Parses an archive interval name exactly (`1mo`, never `1M`).
pub fn parse_archive_interval(s: &str) -> Option<Interval> {
    match s {
        "1mo" => Some(Interval::Mo1),
        "1M" => None,
        other => Interval::parse(other),
    }
}

/// Daily files exist only for intervals up to `1d` (not 3d, 1w, 1mo).
pub fn has_daily(iv: Interval) -> bool {
    iv <= Interval::D1
}

/// One archive file: symbol, interval and period (monthly or daily by the period's kind).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArchiveFile {
    pub symbol: String,
    pub interval: Interval,
    pub period: Period,
}

/// What an archive URL asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Zip,
    Checksum,
}

impl ArchiveFile {
    /// A file; `None` when the interval has no files of that kind (daily 3d/1w/1mo).
    pub fn new(symbol: &str, interval: Interval, period: Period) -> Option<Self> {
        (!period.is_day() || has_daily(interval)).then(|| Self {
            symbol: symbol.to_owned(),
            interval,
            period,
        })
    }

    /// `BTCUSDT-1m-2024-06.zip`.
    pub fn zip_name(&self) -> String {
        format!(
            "{}-{}-{}.zip",
            self.symbol,
            archive_interval_name(self.interval),
            self.period
        )
    }

    /// `BTCUSDT-1m-2024-06.csv`, the one entry of the zip.
    pub fn csv_name(&self) -> String {
        format!(
            "{}-{}-{}.csv",
            self.symbol,
            archive_interval_name(self.interval),
            self.period
        )
    }

    /// `data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-06.zip` (no leading slash).
    pub fn path(&self) -> String {
        format!(
            "data/spot/{}/klines/{}/{}/{}",
            if self.period.is_day() {
                "daily"
            } else {
                "monthly"
            },
            self.symbol,
            archive_interval_name(self.interval),
            self.zip_name()
        )
    }

    /// Parses a file name `SYM-iv-YYYY-MM[-DD].zip[.CHECKSUM]` (`.zip` may be left out), or a
    /// whole path (`[/]data/spot/…`), whose directories must then agree with the name.
    pub(crate) fn parse_any(s: &str) -> Option<(Self, Part)> {
        let s = s.strip_prefix('/').unwrap_or(s);
        if let Some(rest) = s.strip_prefix("data/spot/") {
            let mut it = rest.split('/');
            let (kind, k, sym, iv, name) =
                (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
            if it.next().is_some() || k != "klines" {
                return None;
            }
            return Self::from_url(kind == "daily", sym, iv, name);
        }
        let (name, part) = match s.strip_suffix(".zip.CHECKSUM") {
            Some(n) => (n, Part::Checksum),
            None => (s.strip_suffix(".zip").unwrap_or(s), Part::Zip),
        };
        // Symbols may hold '-': the date and interval are taken from the right.
        let f = Self::split_name(name, true).or_else(|| Self::split_name(name, false))?;
        Some((f, part))
    }

    /// The file a URL's parts name: `kind` daily or monthly, the two directories and the name.
    pub(crate) fn from_url(daily: bool, sym: &str, iv: &str, name: &str) -> Option<(Self, Part)> {
        let (stem, part) = match name.strip_suffix(".zip.CHECKSUM") {
            Some(n) => (n, Part::Checksum),
            None => (name.strip_suffix(".zip")?, Part::Zip),
        };
        let f = Self::split_name(stem, daily)?;
        (f.symbol == sym && archive_interval_name(f.interval) == iv).then_some((f, part))
    }

    fn split_name(stem: &str, daily: bool) -> Option<Self> {
        let date_len = if daily { 10 } else { 7 };
        let cut = stem.len().checked_sub(date_len + 1)?;
        let (head, date) = (stem.get(..cut)?, stem.get(cut + 1..)?);
        if stem.as_bytes()[cut] != b'-' {
            return None;
        }
        let period = Period::parse(date)?;
        let (sym, iv) = head.rsplit_once('-')?;
        if !crate::rest::params::symbol_ok(sym) {
            return None;
        }
        Self::new(sym, parse_archive_interval(iv)?, period)
    }
}

impl fmt::Display for ArchiveFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

impl TryFrom<String> for ArchiveFile {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match Self::parse_any(&s) {
            Some((f, Part::Zip)) => Ok(f),
            _ => Err(format!(
                "expected an archive file name (BTCUSDT-1m-2024-06.zip) or path \
                 (data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-06.zip), got {s:?}"
            )),
        }
    }
}

impl From<ArchiveFile> for String {
    fn from(f: ArchiveFile) -> Self {
        f.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let (f, part) =
            ArchiveFile::parse_any("BTCUSDT-1mo-2024-06.zip").unwrap_or_else(|| panic!());
        assert_eq!(part, Part::Zip);
        assert_eq!(f.interval, Interval::Mo1);
        assert_eq!(
            f.path(),
            "data/spot/monthly/klines/BTCUSDT/1mo/BTCUSDT-1mo-2024-06.zip"
        );
        let d = ArchiveFile::parse_any(
            "/data/spot/daily/klines/ETHUSDT/1s/ETHUSDT-1s-2025-02-28.zip.CHECKSUM",
        );
        assert!(
            matches!(d, Some((ref f, Part::Checksum)) if f.period == Period::Day { year: 2025, month: 2, day: 28 })
        );
        for bad in [
            "BTCUSDT-1M-2024-06.zip",
            "BTCUSDT-1w-2024-06-03.zip",
            "BTCUSDT-1m-2024-13.zip",
            "BTCUSDT-1m-2025-02-29.zip",
            "data/spot/daily/klines/ETHUSDT/1m/BTCUSDT-1m-2025-02-28.zip",
            "data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2025-02-28.zip",
        ] {
            assert!(ArchiveFile::parse_any(bad).is_none(), "{bad}");
        }
        assert_eq!(
            ArchiveFile::parse_any("BTCUSDT-1m-2024-06").map(|f| f.0.zip_name()),
            Some("BTCUSDT-1m-2024-06.zip".into())
        );
        let p = Period::parse("2024-12").unwrap_or_else(|| panic!());
        assert_eq!(p.range_ms(), (1_733_011_200_000, MICROS_FROM_MS));
        assert!(!p.micros() && p.next().micros());
        assert_eq!(p.next().to_string(), "2025-01");
    }
}
