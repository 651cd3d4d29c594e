//! Binance's public kline archive (`https://data.binance.vision`): zipped CSV files of closed
//! candles, one per (symbol, interval, month) and, for intervals up to `1d`, per day, each with
//! a `.CHECKSUM` file (`sha256sum` format). No request weight, no key.
//!
//! - [`ArchiveFile`]: which file holds a period, and its path (`1M` is `1mo` there).
//! - [`ArchiveClient::fetch`]: the checksum, then the zip streamed to a temporary file while
//!   its SHA-256 is computed; a file whose hash differs is never read.
//! - [`read_rows`] (blocking): the CSV inside the zip as a stream of [`RestKline`]s, with the
//!   archive's quirks handled: a header row (futures files have one in some periods),
//!   microsecond times (spot files from 2025-01-01), rows repeated verbatim (counted and
//!   skipped). A row that is not a candle of the file's period, out of order, or a repeated open
//!   time with other values stops the read with [`ArchiveError::Row`]: the rows before it
//!   were good, the rest of the file is not to be trusted.
//!
//! Memory is bounded whatever the file size: the zip is on disk, decompression and parsing are
//! streamed, and rows are handed out one at a time.

use std::fmt;
use std::io::{Seek, Write};
use std::time::Duration;

use chrono::{Datelike, NaiveDate};
use klinebus_schemas::{Interval, Symbol};
use sha2::{Digest, Sha256};

use crate::kline::RestKline;

/// Binance's archive.
pub const DEFAULT_ARCHIVE_URL: &str = "https://data.binance.vision";

/// Tries per archive request on 5xx and transport errors.
const ATTEMPTS: u32 = 4;

/// A month or a day of the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    /// A calendar month (UTC).
    Month(NaiveDate),
    /// A calendar day (UTC).
    Day(NaiveDate),
}

fn ms(d: NaiveDate) -> i64 {
    d.and_time(chrono::NaiveTime::MIN)
        .and_utc()
        .timestamp_millis()
}

/// The UTC date of epoch milliseconds.
pub fn date_of(t_ms: i64) -> NaiveDate {
    chrono::DateTime::from_timestamp_millis(t_ms)
        .map(|t| t.date_naive())
        .unwrap_or(NaiveDate::MIN)
}

impl Period {
    /// The month containing `t_ms`.
    pub fn month_of(t_ms: i64) -> Self {
        let d = date_of(t_ms);
        Self::Month(d.with_day(1).unwrap_or(d))
    }

    /// The day containing `t_ms`.
    pub fn day_of(t_ms: i64) -> Self {
        Self::Day(date_of(t_ms))
    }

    /// First instant (epoch ms).
    pub fn start_ms(self) -> i64 {
        match self {
            Self::Month(d) | Self::Day(d) => ms(d),
        }
    }

    /// The instant after the period (epoch ms, exclusive).
    pub fn end_ms(self) -> i64 {
        self.next().start_ms()
    }

    /// The period after this one, of the same kind.
    pub fn next(self) -> Self {
        match self {
            Self::Month(d) => Self::Month(
                d.checked_add_months(chrono::Months::new(1))
                    .unwrap_or(NaiveDate::MAX),
            ),
            Self::Day(d) => Self::Day(d.succ_opt().unwrap_or(NaiveDate::MAX)),
        }
    }

    /// `monthly` or `daily`, as in the archive's paths.
    pub const fn kind(self) -> &'static str {
        match self {
            Self::Month(_) => "monthly",
            Self::Day(_) => "daily",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Month(d) => write!(f, "{}", d.format("%Y-%m")),
            Self::Day(d) => write!(f, "{}", d.format("%Y-%m-%d")),
        }
    }
}

/// The archive's name of an interval: the API's, except the month (`1M` → `1mo`).
pub const fn interval_name(iv: Interval) -> &'static str {
    match iv {
        Interval::Mo1 => "1mo",
        other => other.as_str(),
    }
}

/// Whether daily files exist for `iv` (intervals up to `1d`).
pub fn has_daily_files(iv: Interval) -> bool {
    iv.fixed_ms().is_some_and(|d| d <= 86_400_000)
}

/// One archive file: a series' candles opening in one period.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArchiveFile {
    /// The symbol.
    pub symbol: Symbol,
    /// The interval.
    pub interval: Interval,
    /// The month or day.
    pub period: Period,
}

impl ArchiveFile {
    /// `BTCUSDT-1m-2024-06.zip`.
    pub fn name(&self) -> String {
        format!(
            "{}-{}-{}.zip",
            self.symbol,
            interval_name(self.interval),
            self.period
        )
    }

    /// `data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-06.zip`.
    pub fn path(&self) -> String {
        format!(
            "data/spot/{}/klines/{}/{}/{}",
            self.period.kind(),
            self.symbol,
            interval_name(self.interval),
            self.name()
        )
    }
}

impl fmt::Display for ArchiveFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Why an archive file could not be used. [`ArchiveError::kind`] names the fault for
/// summaries and metrics.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// 404: not published (yet), or never.
    #[error("not in the archive (HTTP 404)")]
    Missing,
    /// The zip's SHA-256 is not the one its `.CHECKSUM` names.
    #[error("checksum mismatch: .CHECKSUM says {expected}, the file hashes to {actual}")]
    Checksum {
        /// From the `.CHECKSUM` file.
        expected: String,
        /// Of the bytes received.
        actual: String,
    },
    /// The `.CHECKSUM` file is not `<64 hex>  <name>`.
    #[error("unreadable .CHECKSUM file: {0:?}")]
    ChecksumFile(String),
    /// Another HTTP status, after retries for 5xx.
    #[error("HTTP {0}")]
    Status(u16),
    /// Connection, timeout or a body cut short, after retries.
    #[error("transport")]
    Transport(#[source] reqwest::Error),
    /// Writing or reading the temporary copy.
    #[error("temporary file")]
    Io(#[source] std::io::Error),
    /// Not a readable zip (truncated, corrupt), or no CSV inside.
    #[error("corrupt zip")]
    Zip(#[source] zip::result::ZipError),
    /// A row that is not a candle of this file (see the module docs); rows before it are good.
    #[error("row {line}: {reason}")]
    Row {
        /// 1-based line in the CSV.
        line: u64,
        /// Open time (ms) of the last good row, if any.
        last_good: Option<i64>,
        /// What is wrong.
        reason: String,
    },
}

impl ArchiveError {
    /// A short name of the fault: `missing`, `checksum`, `corrupt`, `invalid rows`,
    /// `unavailable`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Checksum { .. } | Self::ChecksumFile(_) => "checksum",
            Self::Zip(_) => "corrupt",
            Self::Row { .. } => "invalid rows",
            Self::Status(_) | Self::Transport(_) | Self::Io(_) => "unavailable",
        }
    }
}

/// A file that passed its checksum: the zip on disk (deleted when dropped).
#[derive(Debug)]
pub struct Verified {
    /// The file it is.
    pub file: ArchiveFile,
    /// Its SHA-256 (lowercase hex), as verified.
    pub sha256: String,
    /// Bytes downloaded.
    pub bytes: u64,
    data: std::fs::File,
}

/// HTTP client of the archive.
#[derive(Debug, Clone)]
pub struct ArchiveClient {
    http: reqwest::Client,
    base: String,
}

impl ArchiveClient {
    /// A client of the archive at `base_url` (no trailing path), with a per-request timeout.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, ArchiveError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("klinebus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ArchiveError::Transport)?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Downloads `file` and its checksum and verifies it; see the module docs.
    pub async fn fetch(&self, file: &ArchiveFile) -> Result<Verified, ArchiveError> {
        let url = format!("{}/{}", self.base, file.path());
        let checksum = self.with_retries(|| self.checksum(&url)).await?;
        let expected = parse_checksum(&checksum, &file.name())?;
        let (data, actual, bytes) = self.with_retries(|| self.download(&url)).await?;
        if actual != expected {
            return Err(ArchiveError::Checksum { expected, actual });
        }
        Ok(Verified {
            file: file.clone(),
            sha256: actual,
            bytes,
            data,
        })
    }

    async fn with_retries<T, F, Fut>(&self, mut f: F) -> Result<T, ArchiveError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ArchiveError>>,
    {
        let mut backoff =
            klinebus_svc::Backoff::jittered(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match f().await {
                Err(e @ (ArchiveError::Transport(_) | ArchiveError::Status(500..=599)))
                    if backoff.failures() + 1 < ATTEMPTS =>
                {
                    let wait = backoff.fail();
                    tracing::debug!(error = %klinebus_svc::error_line(&e), ?wait, "archive request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    async fn get(&self, url: &str) -> Result<reqwest::Response, ArchiveError> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(ArchiveError::Transport)?;
        match resp.status().as_u16() {
            200 => Ok(resp),
            // Binance's storage answers 404 for a file that does not exist (403 on some
            // buckets): both mean "not published".
            403 | 404 => Err(ArchiveError::Missing),
            s => Err(ArchiveError::Status(s)),
        }
    }

    async fn checksum(&self, url: &str) -> Result<String, ArchiveError> {
        let resp = self.get(&format!("{url}.CHECKSUM")).await?;
        let body = resp.bytes().await.map_err(ArchiveError::Transport)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    async fn download(&self, url: &str) -> Result<(std::fs::File, String, u64), ArchiveError> {
        let mut resp = self.get(url).await?;
        let mut data = tempfile::tempfile().map_err(ArchiveError::Io)?;
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(ArchiveError::Transport)? {
            hash.update(&chunk);
            bytes += chunk.len() as u64;
            data.write_all(&chunk).map_err(ArchiveError::Io)?;
        }
        data.rewind().map_err(ArchiveError::Io)?;
        Ok((data, hex(&hash.finalize()), bytes))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of `name` in a `sha256sum` line: `<64 hex>  <name>` (`*name` in binary mode).
pub fn parse_checksum(text: &str, name: &str) -> Result<String, ArchiveError> {
    let bad = || ArchiveError::ChecksumFile(text.chars().take(200).collect());
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(bad)?;
    let (hash, rest) = line
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(bad)?;
    let listed = rest.trim().trim_start_matches('*');
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || listed != name {
        return Err(bad());
    }
    Ok(hash.to_ascii_lowercase())
}

/// What reading a file found besides its rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Rows handed out.
    pub rows: u64,
    /// Rows repeated verbatim, skipped.
    pub duplicates: u64,
    /// The file started with a header row.
    pub header: bool,
    /// Times were in microseconds.
    pub micros: bool,
}

/// Microseconds are told from milliseconds by size: epoch ms stay below 1e14 until the year
/// 5138, epoch µs are above it since 1973.
const MICROS_ABOVE: i64 = 100_000_000_000_000;

fn to_ms(v: i64, close: bool, micros: &mut bool) -> Option<i64> {
    if v < MICROS_ABOVE {
        return Some(v);
    }
    *micros = true;
    let (ms, rest) = (v.div_euclid(1000), v.rem_euclid(1000));
    // A close time in µs ends in 999 999: the ms close time's 999 plus 999 µs.
    let ok = if close { rest == 999 } else { rest == 0 };
    ok.then_some(ms)
}

/// Reads the rows of a verified file in order (blocking: call it from a blocking thread),
/// handing each to `on_row`; `on_row` returning `false` stops early. See the module docs for
/// what is checked.
pub fn read_rows(
    verified: Verified,
    mut on_row: impl FnMut(RestKline) -> bool,
) -> Result<ReadStats, ArchiveError> {
    let Verified { file, data, .. } = verified;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(data)).map_err(ArchiveError::Zip)?;
    let index = (0..zip.len())
        .find(|&i| {
            zip.name_for_index(i)
                .is_some_and(|n| n.is_ok_and(|n| n.to_ascii_lowercase().ends_with(".csv")))
        })
        .ok_or(ArchiveError::Zip(zip::result::ZipError::FileNotFound))?;
    let entry = zip.by_index(index).map_err(ArchiveError::Zip)?;
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(entry);
    let (start, end) = (file.period.start_ms(), file.period.end_ms());
    let iv = file.interval;
    let mut stats = ReadStats::default();
    let mut last: Option<RestKline> = None;
    let mut record = csv::StringRecord::new();
    let mut line = 0u64;
    loop {
        let more = csv.read_record(&mut record).map_err(|e| {
            // A CSV error mid-stream is a damaged file (deflate errors surface here too).
            ArchiveError::Row {
                line: line + 1,
                last_good: last.as_ref().map(|k| k.open_time),
                reason: e.to_string(),
            }
        })?;
        if !more {
            break;
        }
        line += 1;
        let row_err = |reason: String| ArchiveError::Row {
            line,
            last_good: last.as_ref().map(|k| k.open_time),
            reason,
        };
        if line == 1
            && !record
                .get(0)
                .is_some_and(|f| f.starts_with(|c: char| c.is_ascii_digit()))
        {
            stats.header = true;
            continue;
        }
        let k = parse_row(&record, &mut stats.micros).map_err(&row_err)?;
        if k.open_time < start || k.open_time >= end {
            return Err(row_err(format!(
                "open time {} outside the file's period {}",
                k.open_time, file.period
            )));
        }
        if iv.align(k.open_time) != k.open_time || iv.close_time(k.open_time) != k.close_time {
            return Err(row_err(format!(
                "open {} / close {} are not a {iv} candle",
                k.open_time, k.close_time
            )));
        }
        if let Some(prev) = &last {
            if k.open_time == prev.open_time {
                if k == *prev {
                    stats.duplicates += 1;
                    continue;
                }
                return Err(row_err(format!(
                    "open time {} repeated with other values",
                    k.open_time
                )));
            }
            if k.open_time < prev.open_time {
                return Err(row_err(format!(
                    "open time {} after {}: not ascending",
                    k.open_time, prev.open_time
                )));
            }
        }
        stats.rows += 1;
        last = Some(k.clone());
        if !on_row(k) {
            break;
        }
    }
    Ok(stats)
}

fn parse_row(r: &csv::StringRecord, micros: &mut bool) -> Result<RestKline, String> {
    if r.len() != 12 {
        return Err(format!("{} columns, expected 12", r.len()));
    }
    let field = |i: usize| r.get(i).unwrap_or_default();
    let int = |i: usize, name: &str| -> Result<i64, String> {
        field(i)
            .parse::<i64>()
            .map_err(|_| format!("{name} {:?} is not an integer", field(i)))
    };
    let open_raw = int(0, "open time")?;
    let close_raw = int(6, "close time")?;
    let open_time = to_ms(open_raw, false, micros)
        .ok_or_else(|| format!("open time {open_raw} µs is not a whole ms"))?;
    let close_time = to_ms(close_raw, true, micros)
        .ok_or_else(|| format!("close time {close_raw} µs does not end in 999999"))?;
    let trades = field(8)
        .parse::<u64>()
        .map_err(|_| format!("trades {:?} is not a count", field(8)))?;
    Ok(RestKline {
        open_time,
        open: field(1).to_owned(),
        high: field(2).to_owned(),
        low: field(3).to_owned(),
        close: field(4).to_owned(),
        volume: field(5).to_owned(),
        close_time,
        quote_volume: field(7).to_owned(),
        trades,
        taker_buy_base: field(9).to_owned(),
        taker_buy_quote: field(10).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    fn file(iv: Interval, period: Period) -> ArchiveFile {
        ArchiveFile {
            symbol: "BTCUSDT".parse().unwrap(),
            interval: iv,
            period,
        }
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn paths_as_binance_lays_them_out() {
        let f = file(Interval::M1, Period::Month(date(2024, 6, 1)));
        assert_eq!(
            f.path(),
            "data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-06.zip"
        );
        let f = file(Interval::H1, Period::Day(date(2025, 1, 9)));
        assert_eq!(
            f.path(),
            "data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2025-01-09.zip"
        );
        let f = file(Interval::Mo1, Period::Month(date(2023, 12, 1)));
        assert_eq!(f.name(), "BTCUSDT-1mo-2023-12.zip");
        assert!(has_daily_files(Interval::D1));
        assert!(has_daily_files(Interval::S1));
        assert!(!has_daily_files(Interval::D3));
        assert!(!has_daily_files(Interval::W1));
        assert!(!has_daily_files(Interval::Mo1));
    }

    #[test]
    fn periods() {
        let dec = Period::month_of(ms(date(2024, 12, 17)) + 5);
        assert_eq!(dec, Period::Month(date(2024, 12, 1)));
        assert_eq!(dec.next(), Period::Month(date(2025, 1, 1)));
        assert_eq!(dec.end_ms() - dec.start_ms(), 31 * 86_400_000);
        assert_eq!(
            Period::day_of(ms(date(2024, 2, 29))).to_string(),
            "2024-02-29"
        );
    }

    #[test]
    fn checksum_lines() {
        let h = "a".repeat(64);
        let name = "BTCUSDT-1m-2024-06.zip";
        assert_eq!(parse_checksum(&format!("{h}  {name}\n"), name).unwrap(), h);
        assert_eq!(parse_checksum(&format!("{h} *{name}"), name).unwrap(), h);
        assert!(parse_checksum(&format!("{h}  other.zip"), name).is_err());
        assert!(parse_checksum("abc  x", name).is_err());
        assert!(parse_checksum("", name).is_err());
        assert!(parse_checksum("<Error>NoSuchKey</Error>", name).is_err());
    }

    /// A zip of `csv` the way the archive ships it.
    fn verified(f: &ArchiveFile, csv: &str) -> Verified {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            w.start_file(
                f.name().replace(".zip", ".csv"),
                zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated),
            )
            .unwrap();
            w.write_all(csv.as_bytes()).unwrap();
            w.finish().unwrap();
        }
        let mut data = tempfile::tempfile().unwrap();
        data.write_all(buf.get_ref()).unwrap();
        data.rewind().unwrap();
        Verified {
            file: f.clone(),
            sha256: String::new(),
            bytes: 0,
            data,
        }
    }

    fn row(open_ms: i64, micros: bool, close: &str) -> String {
        let (o, c) = if micros {
            (open_ms * 1000, (open_ms + 59_999) * 1000 + 999)
        } else {
            (open_ms, open_ms + 59_999)
        };
        format!("{o},100.00000000,101.00000000,99.00000000,{close},2.00000000,{c},200.00000000,7,1.00000000,100.00000000,0\n")
    }

    fn read(f: &ArchiveFile, csv: &str) -> (Result<ReadStats, ArchiveError>, Vec<RestKline>) {
        let mut rows = Vec::new();
        let r = read_rows(verified(f, csv), |k| {
            rows.push(k);
            true
        });
        (r, rows)
    }

    #[test]
    fn reads_milliseconds_microseconds_headers_and_duplicates() {
        let day = Period::Day(date(2025, 1, 2));
        let f = file(Interval::M1, day);
        let t = day.start_ms();
        let csv = [
            row(t, true, "100.50000000"),
            row(t, true, "100.50000000"),
            row(t + 60_000, true, "100.10000000"),
        ]
        .concat();
        let (r, rows) = read(&f, &csv);
        let stats = r.unwrap();
        assert_eq!(stats.rows, 2);
        assert_eq!(stats.duplicates, 1);
        assert!(stats.micros);
        assert_eq!(rows[0].open_time, t);
        assert_eq!(rows[0].close_time, t + 59_999);
        assert_eq!(rows[1].close, "100.10000000");

        let old = Period::Day(date(2024, 12, 31));
        let f = file(Interval::M1, old);
        let t = old.start_ms();
        let header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n";
        let (r, rows) = read(&f, &format!("{header}{}", row(t, false, "100.00000000")));
        let stats = r.unwrap();
        assert!(stats.header && !stats.micros);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].open, "100.00000000");
        assert_eq!(rows[0].trades, 7);
    }

    #[test]
    fn stops_at_rows_that_are_not_candles_of_the_file() {
        let day = Period::Day(date(2024, 3, 1));
        let f = file(Interval::M1, day);
        let t = day.start_ms();
        let cases = [
            (row(t - 60_000, false, "100.00000000"), "outside"),
            (row(t + 1, false, "100.00000000"), "not a 1m candle"),
            ("1,2,3\n".to_owned(), "columns"),
            (
                row(t, false, "100.00000000").replace(",7,", ",x,"),
                "trades",
            ),
        ];
        for (bad, what) in cases {
            let csv = format!("{}{bad}", row(t + 60_000, false, "100.00000000"));
            let (r, rows) = read(&f, &csv);
            let err = r.unwrap_err();
            assert_eq!(err.kind(), "invalid rows", "{what}");
            assert!(err.to_string().contains(what), "{what}: {err}");
            let ArchiveError::Row {
                last_good, line, ..
            } = err
            else {
                panic!()
            };
            assert_eq!((last_good, line), (Some(t + 60_000), 2), "{what}");
            assert_eq!(rows.len(), 1);
        }
        // The same open time with other values is not a harmless duplicate.
        let csv = [row(t, false, "100.00000000"), row(t, false, "100.20000000")].concat();
        assert_eq!(read(&f, &csv).0.unwrap_err().kind(), "invalid rows");
        // Descending.
        let csv = [
            row(t + 60_000, false, "100.00000000"),
            row(t, false, "100.00000000"),
        ]
        .concat();
        assert_eq!(read(&f, &csv).0.unwrap_err().kind(), "invalid rows");
    }

    #[test]
    fn a_broken_zip_is_corrupt_not_a_panic() {
        let f = file(Interval::M1, Period::Day(date(2024, 3, 1)));
        let mut v = verified(&f, &row(f.period.start_ms(), false, "100.00000000"));
        let mut bytes = Vec::new();
        v.data.read_to_end(&mut bytes).unwrap();
        bytes.truncate(bytes.len() / 2);
        let mut data = tempfile::tempfile().unwrap();
        data.write_all(&bytes).unwrap();
        data.rewind().unwrap();
        v.data = data;
        let err = read_rows(v, |_| true).unwrap_err();
        assert_eq!(err.kind(), "corrupt", "{err}");
    }
}
