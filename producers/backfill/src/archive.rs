//! History from Binance's public archive (`data.binance.vision`), REST only for the rest.
//!
//! A series' missing range is cut into [`Segment`]s ([`segments`]):
//! - every month that is over: its monthly file;
//! - the current month, for intervals with daily files (up to `1d`): the daily file of each day
//!   before today;
//! - REST: today, and the current month of coarser intervals (`3d`, `1w`, `1M`).
//!
//! Each file is downloaded ahead (up to [`ArchiveSource`]'s limit for the whole process, a few
//! files per series), checked against its `.CHECKSUM` before a row is read, then read as a
//! stream, published a page of [`MAX_PER_PAGE`] at a time. Never a silent hole: whatever a file
//! does not deliver goes to REST for exactly that range, under the weight limiter:
//! - the file is missing (404), fails its checksum, is not a zip, or is unreachable: its range;
//! - a row is not a candle of the file (bad numbers, times outside its period, out of order):
//!   the range after the last good row;
//! - rows are absent (a truncated file, or an exchange outage): the hole; REST then either
//!   returns the candles (the file had a hole: counted as a fault) or confirms the exchange gap.
//!
//! A monthly file not published yet (the previous month, in the first days of a month) is
//! replaced by that month's daily files. Rows repeated verbatim are dropped and counted.
//! With `--source archive` nothing goes to REST: what the archive did not deliver is counted and
//! fails the series, and what it cannot hold yet (today) is reported and left alone.

use std::collections::VecDeque;
use std::sync::Arc;

use klinebus_binance::archive::{self, read_rows, ArchiveClient, ArchiveError, Verified};
use klinebus_binance::{ArchiveFile, Period, RestKline};
use klinebus_schemas::page::MAX_PER_PAGE;
use klinebus_schemas::{Interval, Source, Symbol};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::series::{Origin, Run, Stop};
use crate::summary::FileFault;

/// A monthly file missing less than this long after its month ended may simply not be
/// published yet (Binance publishes them in the first days of the next month): the month's
/// daily files are used instead.
const MONTHLY_LAG_MS: i64 = 10 * 86_400_000;
/// A daily file missing less than this long after its day ended is not published yet
/// (Binance: the next morning), not a fault.
const DAILY_LAG_MS: i64 = 2 * 86_400_000;
/// Files downloaded ahead of the one being read, per series.
const PREFETCH: usize = 3;
/// Rows handed from the reading thread to the publisher at once.
const ROW_CHUNK: usize = 1000;

/// How history is fetched.
#[derive(Debug, Clone, Copy)]
pub enum Fetch<'a> {
    /// REST only (weight-limited).
    Rest,
    /// Archive files where published, REST for the rest and for anything a file lacks.
    Auto(&'a ArchiveSource),
    /// Archive files only.
    Archive(&'a ArchiveSource),
}

/// The archive client and the process-wide download limit.
#[derive(Debug, Clone)]
pub struct ArchiveSource {
    client: ArchiveClient,
    downloads: Arc<Semaphore>,
}

impl ArchiveSource {
    /// Downloads through `client`, at most `concurrency` files at once in the whole process.
    pub fn new(client: ArchiveClient, concurrency: usize) -> Self {
        Self {
            client,
            downloads: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// The archive's base URL.
    pub fn base_url(&self) -> &str {
        self.client.base_url()
    }

    fn spawn_fetch(&self, file: ArchiveFile) -> JoinHandle<Result<Verified, ArchiveError>> {
        let (client, downloads) = (self.client.clone(), self.downloads.clone());
        tokio::spawn(async move {
            // Never closed: acquiring cannot fail.
            let _permit = downloads.acquire_owned().await;
            client.fetch(&file).await
        })
    }
}

/// A part of a series' range and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Open times `[lo, hi)` from `file` (the file may cover more).
    File {
        /// The file.
        file: ArchiveFile,
        /// First open time wanted.
        lo: i64,
        /// Exclusive end.
        hi: i64,
    },
    /// Open times `[lo, hi)` over REST (the archive cannot have them yet).
    Rest {
        /// First open time.
        lo: i64,
        /// Exclusive end.
        hi: i64,
    },
}

fn file_segment(symbol: &Symbol, interval: Interval, period: Period, lo: i64, hi: i64) -> Segment {
    Segment::File {
        file: ArchiveFile {
            symbol: symbol.clone(),
            interval,
            period,
        },
        lo: lo.max(period.start_ms()),
        hi: hi.min(period.end_ms()),
    }
}

/// The segments of `[start, end)` as of exchange time `now_ms` (see the module docs), ascending.
pub fn segments(
    symbol: &Symbol,
    interval: Interval,
    start: i64,
    end: i64,
    now_ms: i64,
) -> Vec<Segment> {
    let mut out = Vec::new();
    if start >= end {
        return out;
    }
    let this_month = Period::month_of(now_ms).start_ms();
    let today = Period::day_of(now_ms).start_ms();
    let mut month = Period::month_of(start);
    while month.start_ms() < end && month.start_ms() < this_month {
        out.push(file_segment(symbol, interval, month, start, end));
        month = month.next();
    }
    let mut rest_from = start.max(this_month);
    if archive::has_daily_files(interval) {
        let mut day = Period::day_of(rest_from);
        while day.start_ms() < end && day.start_ms() < today {
            out.push(file_segment(symbol, interval, day, start, end));
            day = day.next();
        }
        rest_from = rest_from.max(today);
    }
    if rest_from < end {
        out.push(Segment::Rest {
            lo: rest_from,
            hi: end,
        });
    }
    out
}

/// Why a range did not come from the archive.
enum Lack<'f> {
    /// The archive cannot hold it yet (today, a day not published yet).
    NotPublished,
    /// Its file could not be used.
    Fault(FileFault),
    /// Its file has no rows there: a hole of the file, or an exchange gap.
    Hole(&'f ArchiveFile),
}

/// The daily files replacing a month's file.
fn daily_segments(file: &ArchiveFile, lo: i64, hi: i64) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut day = Period::day_of(lo);
    while day.start_ms() < hi {
        out.push(file_segment(&file.symbol, file.interval, day, lo, hi));
        day = day.next();
    }
    out
}

/// One line describing a series' segments, for the printed plan.
pub fn describe(segments: &[Segment]) -> String {
    let (mut monthly, mut daily, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    for s in segments {
        match s {
            Segment::File { file, .. } => match file.period {
                Period::Month(_) => monthly.push(file.period.to_string()),
                Period::Day(_) => daily.push(file.period.to_string()),
            },
            Segment::Rest { lo, hi } => rest.push((*lo, *hi)),
        }
    }
    let span = |v: &[String], what: &str| match (v.first(), v.last()) {
        (Some(a), Some(b)) if a == b => format!("{} {what} file ({a})", v.len()),
        (Some(a), Some(b)) => format!("{} {what} files ({a} … {b})", v.len()),
        _ => String::new(),
    };
    let mut parts = vec![span(&monthly, "monthly"), span(&daily, "daily")];
    for (lo, hi) in rest {
        parts.push(format!(
            "REST {} → {}",
            crate::summary::ts(lo),
            crate::summary::ts(hi)
        ));
    }
    parts.retain(|p| !p.is_empty());
    parts.join(", ")
}

impl Run<'_> {
    /// Fetches `[start, end)` from the archive where it can, REST for the rest (module docs).
    pub(crate) async fn fetch_archived(
        &mut self,
        source: &ArchiveSource,
        start: i64,
        end: i64,
    ) -> Result<(), Stop> {
        let (symbol, iv) = (self.plan.symbol.clone(), self.plan.interval);
        let plan = segments(&symbol, iv, start, end, self.server_now_ms);
        self.progress
            .note(&format!("Plan {symbol} {iv}: {}", describe(&plan)));
        let mut queue: VecDeque<Segment> = plan.into();
        // Downloads run ahead of the reading, in segment order.
        let mut ahead: VecDeque<JoinHandle<Result<Verified, ArchiveError>>> = VecDeque::new();
        let mut spawned = 0; // files of `queue` (from its front) with a download in `ahead`
        loop {
            for seg in queue.iter().skip(spawned) {
                if ahead.len() >= PREFETCH {
                    break;
                }
                if let Segment::File { file, .. } = seg {
                    ahead.push_back(source.spawn_fetch(file.clone()));
                }
                spawned += 1;
            }
            let Some(seg) = queue.pop_front() else { break };
            spawned = spawned.saturating_sub(1);
            if self.cancel.is_cancelled() {
                ahead.iter().for_each(|h| h.abort());
                return Err(Stop::Cancelled);
            }
            match seg {
                Segment::Rest { lo, hi } => self.over_rest(lo, hi, Lack::NotPublished).await?,
                Segment::File { file, lo, hi } => {
                    let Some(handle) = ahead.pop_front() else {
                        continue; // unreachable: every file segment got a download
                    };
                    let fetched = match handle.await {
                        Ok(r) => r,
                        Err(e) => Err(ArchiveError::Io(std::io::Error::other(e))),
                    };
                    match fetched {
                        Ok(verified) => self.read_file(verified, lo, hi).await?,
                        Err(ArchiveError::Missing) => {
                            let age = self.server_now_ms - file.period.end_ms();
                            match file.period {
                                Period::Month(_)
                                    if age < MONTHLY_LAG_MS
                                        && archive::has_daily_files(file.interval) =>
                                {
                                    // Not published yet: the month's daily files instead.
                                    ahead.iter().for_each(|h| h.abort());
                                    ahead.clear();
                                    spawned = 0;
                                    for d in daily_segments(&file, lo, hi).into_iter().rev() {
                                        queue.push_front(d);
                                    }
                                }
                                Period::Day(_) if age < DAILY_LAG_MS => {
                                    self.over_rest(lo, hi, Lack::NotPublished).await?;
                                }
                                _ => {
                                    self.file_failed(&file, &ArchiveError::Missing, lo, hi)
                                        .await?
                                }
                            }
                        }
                        Err(e) => self.file_failed(&file, &e, lo, hi).await?,
                    }
                }
            }
        }
        Ok(())
    }

    /// A file that cannot be used: REST for its range (`--source auto`), the fault recorded.
    async fn file_failed(
        &mut self,
        file: &ArchiveFile,
        e: &ArchiveError,
        lo: i64,
        hi: i64,
    ) -> Result<(), Stop> {
        tracing::warn!(file = %file.path(), fault = e.kind(), error = %klinebus_svc::error_line(e),
            "archive file unusable; its range goes to REST");
        metrics::counter!("klinebus_backfill_archive_faults_total", "fault" => e.kind())
            .increment(1);
        let fault = FileFault {
            file: file.name(),
            fault: e.kind(),
            detail: klinebus_svc::error_line(e),
            rest_candles: 0,
        };
        self.over_rest(lo, hi, Lack::Fault(fault)).await
    }

    /// `[lo, hi)` did not come from the archive (see [`Lack`]): over REST (`auto`), or counted
    /// (`archive`, where REST cannot tell a file's hole from an exchange gap).
    async fn over_rest(&mut self, lo: i64, hi: i64, lack: Lack<'_>) -> Result<(), Stop> {
        if lo >= hi {
            return Ok(());
        }
        if matches!(self.fetch, crate::Fetch::Archive(_)) {
            let n = self.plan.interval.count_between(lo, hi).max(0) as u64;
            match lack {
                Lack::NotPublished => self.report.not_published += n,
                Lack::Fault(f) => {
                    self.report.not_in_archive += n;
                    self.report.archive_faults.push(f);
                }
                Lack::Hole(_) => self.report.not_in_archive += n,
            }
            self.progress.inc(n);
            return Ok(());
        }
        let before = self.rest_sent;
        self.fetch_range(lo, hi).await?;
        let filled = self.rest_sent - before;
        match lack {
            Lack::NotPublished => {}
            Lack::Fault(mut f) => {
                f.rest_candles = filled;
                self.report.archive_faults.push(f);
            }
            // No candles from REST either: an exchange gap, which fetch_range recorded.
            Lack::Hole(_) if filled == 0 => {}
            Lack::Hole(file) => {
                tracing::warn!(file = %file.path(), candles = filled, "archive file lacks candles REST has");
                metrics::counter!("klinebus_backfill_archive_faults_total", "fault" => "holes")
                    .increment(1);
                self.report.archive_faults.push(FileFault {
                    file: file.name(),
                    fault: "holes",
                    detail: format!(
                        "no rows from {} to {}",
                        crate::summary::ts(lo),
                        crate::summary::ts(hi)
                    ),
                    rest_candles: filled,
                });
            }
        }
        Ok(())
    }

    /// Publishes the rows of `[lo, hi)` of a verified file, REST for whatever it lacks.
    async fn read_file(&mut self, verified: Verified, lo: i64, hi: i64) -> Result<(), Stop> {
        let file = verified.file.clone();
        self.report.archive_files += 1;
        metrics::counter!("klinebus_backfill_archive_bytes_total").increment(verified.bytes);
        let (tx, mut rx) = mpsc::channel::<Vec<RestKline>>(2);
        let reader = tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(ROW_CHUNK);
            let stats = read_rows(verified, |k| {
                chunk.push(k);
                if chunk.len() < ROW_CHUNK {
                    return true;
                }
                tx.blocking_send(std::mem::replace(&mut chunk, Vec::with_capacity(ROW_CHUNK)))
                    .is_ok()
            });
            if !chunk.is_empty() {
                let _ = tx.blocking_send(chunk);
            }
            stats
        });
        let iv = self.plan.interval;
        let mut expect = lo;
        let mut page: Vec<klinebus_schemas::KlineEvent> = Vec::with_capacity(MAX_PER_PAGE);
        let mut bad_row = None;
        'rows: while let Some(rows) = rx.recv().await {
            let received_at = klinebus_binance::limiter::wall_now_ms();
            for k in rows {
                if k.open_time < expect || k.open_time >= hi {
                    continue; // before the range (resume), or after it
                }
                if !k.is_closed(self.server_now_ms) {
                    break 'rows; // cannot be in a published file; REST decides
                }
                if k.open_time > expect {
                    // A hole: REST says whether the file lacks candles or the exchange has none.
                    let page_now = std::mem::take(&mut page);
                    self.publish(page_now, Origin::Archive).await?;
                    self.over_rest(expect, k.open_time, Lack::Hole(&file))
                        .await?;
                }
                let open_time = k.open_time;
                match k.into_event(
                    &self.plan.symbol,
                    iv,
                    Source::Backfill,
                    self.server_now_ms,
                    received_at,
                ) {
                    Ok(ev) => page.push(ev),
                    Err(e) => {
                        bad_row = Some(ArchiveError::Row {
                            line: 0,
                            last_good: None,
                            reason: format!("{open_time}: {}", klinebus_svc::error_line(&e)),
                        });
                        break 'rows;
                    }
                }
                self.listed = true;
                expect = iv.next_open(open_time);
                if page.len() >= MAX_PER_PAGE {
                    let full = std::mem::replace(&mut page, Vec::with_capacity(MAX_PER_PAGE));
                    self.publish(full, Origin::Archive).await?;
                }
            }
        }
        drop(rx); // stops the reader if it is still going
        self.publish(page, Origin::Archive).await?;
        let read = match reader.await {
            Ok(r) => r,
            Err(e) => Err(ArchiveError::Io(std::io::Error::other(e))),
        };
        let fault = match (bad_row, read) {
            (Some(e), _) | (None, Err(e)) => Some(e),
            (None, Ok(stats)) => {
                if stats.duplicates > 0 {
                    tracing::warn!(file = %file.path(), rows = stats.duplicates, "archive file repeats rows; dropped");
                    metrics::counter!("klinebus_backfill_archive_faults_total", "fault" => "duplicates").increment(1);
                    self.report.archive_faults.push(FileFault {
                        file: file.name(),
                        fault: "duplicates",
                        detail: format!("{} rows repeated, dropped", stats.duplicates),
                        rest_candles: 0,
                    });
                }
                None
            }
        };
        match fault {
            Some(e) => self.file_failed(&file, &e, expect, hi).await,
            None => self.over_rest(expect, hi, Lack::Hole(&file)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(s: &str) -> i64 {
        crate::config::parse_time(s).unwrap()
    }

    fn names(segs: &[Segment]) -> Vec<String> {
        segs.iter()
            .map(|s| match s {
                Segment::File { file, lo, hi } => format!(
                    "{}:{}:{}",
                    file.period,
                    lo - file.period.start_ms(),
                    file.period.end_ms() - hi
                ),
                Segment::Rest { lo, hi } => format!(
                    "rest {} {}",
                    crate::summary::ts(*lo),
                    crate::summary::ts(*hi)
                ),
            })
            .collect()
    }

    #[test]
    fn months_then_days_then_rest() {
        let sym: Symbol = "BTCUSDT".parse().unwrap();
        let now = t("2026-12-03T10:30:00Z");
        let segs = segments(
            &sym,
            Interval::M1,
            t("2026-10-15"),
            t("2026-12-03T10:29:00Z"),
            now,
        );
        assert_eq!(
            names(&segs),
            [
                format!("2026-10:{}:0", 14 * 86_400_000),
                "2026-11:0:0".into(),
                "2026-12-01:0:0".into(),
                "2026-12-02:0:0".into(),
                "rest 2026-12-03 00:00:00Z 2026-12-03 10:29:00Z".into(),
            ]
        );
        // Coarser than a day: no daily files, REST for the current month.
        let segs = segments(&sym, Interval::W1, t("2026-10-05"), t("2026-11-30"), now);
        assert_eq!(names(&segs), ["2026-10:345600000:0", "2026-11:0:86400000"]);
        let segs = segments(&sym, Interval::W1, t("2026-11-02"), t("2026-12-07"), now);
        assert_eq!(
            names(&segs),
            [
                "2026-11:86400000:0",
                "rest 2026-12-01 00:00:00Z 2026-12-07 00:00:00Z"
            ]
        );
        // Only today.
        let segs = segments(
            &sym,
            Interval::M1,
            t("2026-12-03T01:00:00Z"),
            t("2026-12-03T02:00:00Z"),
            now,
        );
        assert_eq!(
            names(&segs),
            ["rest 2026-12-03 01:00:00Z 2026-12-03 02:00:00Z"]
        );
        assert!(segments(&sym, Interval::M1, 5, 5, now).is_empty());
    }

    #[test]
    fn a_late_month_becomes_days() {
        let file = ArchiveFile {
            symbol: "BTCUSDT".parse().unwrap(),
            interval: Interval::H1,
            period: Period::month_of(t("2026-11-01")),
        };
        let d = daily_segments(&file, t("2026-11-28T05:00:00Z"), t("2026-12-01"));
        assert_eq!(
            names(&d),
            ["2026-11-28:18000000:0", "2026-11-29:0:0", "2026-11-30:0:0"]
        );
    }
}
