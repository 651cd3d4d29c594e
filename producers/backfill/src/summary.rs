//! The outcome of a run: per series, and the final `Success: X/Y` / `Errors: Z/Y` summary.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use klinebus_schemas::{Interval, Symbol};

/// A range of open times `[start_ms, end_ms)` the exchange has no candles for, although the
/// symbol was listed before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeGap {
    /// First missing open time.
    pub start_ms: i64,
    /// Exclusive end: the next open time that exists (or the window's end).
    pub end_ms: i64,
    /// Candles missing.
    pub candles: u64,
}

/// An archive file that did not deliver all of its candles, and what stood in for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFault {
    /// The file's name (`BTCUSDT-1m-2024-06.zip`).
    pub file: String,
    /// `missing`, `checksum`, `corrupt`, `invalid rows`, `unavailable`, `holes` or `duplicates`.
    pub fault: &'static str,
    /// What exactly.
    pub detail: String,
    /// Candles REST delivered for the file's range instead.
    pub rest_candles: u64,
}

/// How a series ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Every candle of the window is in the stream.
    Complete,
    /// Everything the exchange has is in the stream, but the exchange has gaps.
    Gaps,
    /// Stopped by an error (message says which).
    Failed(String),
    /// Stopped by SIGINT/SIGTERM.
    Cancelled,
}

/// One series' outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesReport {
    /// Symbol.
    pub symbol: Symbol,
    /// Timeframe.
    pub interval: Interval,
    /// Candles in the window.
    pub expected: u64,
    /// Already in the stream before this run (resume).
    pub present: u64,
    /// Published and acknowledged by this run (new in the stream).
    pub published: u64,
    /// Published but dropped by the stream as duplicates (`Nats-Msg-Id`).
    pub duplicates: u64,
    /// Exchange-side gaps met.
    pub gaps: Vec<ExchangeGap>,
    /// Open times before the symbol's listing (not gaps).
    pub before_listing: u64,
    /// Open time of the series' first candle on the exchange, when the window started before
    /// it (`GET /api/v3/klines?startTime=0&limit=1`); recorded in `symbol_listings` with
    /// `--verify`.
    pub listed_ms: Option<i64>,
    /// Open times at the end of the window without candles because the symbol is not trading
    /// (halted or delisted): its halt, not an exchange gap.
    pub since_halt: u64,
    /// REST requests this series made.
    pub requests: u64,
    /// Candles stored from REST responses (published or duplicates).
    pub from_rest: u64,
    /// Candles stored from archive files.
    pub from_archive: u64,
    /// Archive files read (checksum verified).
    pub archive_files: u64,
    /// Archive files that did not deliver all their candles, in order.
    pub archive_faults: Vec<FileFault>,
    /// `--source archive`: candles of published files the archive did not deliver.
    pub not_in_archive: u64,
    /// `--source archive`: candles the archive cannot hold yet (today, unpublished days).
    pub not_published: u64,
    /// The end state.
    pub status: Status,
}

impl SeriesReport {
    /// Candles of the window that are now in the stream.
    pub fn stored(&self) -> u64 {
        self.present + self.published + self.duplicates
    }
}

/// The outcome of a whole run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// Per series, in plan order.
    pub series: Vec<SeriesReport>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// REST requests sent (retries included).
    pub rest_requests: u64,
    /// 429 answers received.
    pub rate_limited: u64,
    /// 418 answers received.
    pub banned: u64,
}

pub(crate) fn ts(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

impl Summary {
    /// For symbols that are not trading (`not_trading`), a run without candles that reaches the
    /// end of the series' window (`window_end` per series, in order) is the halt still going
    /// on, not an exchange gap: it is moved to [`SeriesReport::since_halt`], and a series with
    /// no other gap is complete.
    pub fn settle_halts(&mut self, not_trading: &[Symbol], window_end: &[i64]) {
        for (s, &end) in self.series.iter_mut().zip(window_end) {
            if !not_trading.contains(&s.symbol) {
                continue;
            }
            if let Some(i) = s.gaps.iter().position(|g| g.end_ms >= end) {
                s.since_halt += s.gaps.remove(i).candles;
            }
            if s.status == Status::Gaps && s.gaps.is_empty() {
                s.status = Status::Complete;
            }
        }
    }

    /// Series that completed without gaps.
    pub fn succeeded(&self) -> usize {
        self.count(|s| *s == Status::Complete)
    }

    /// Series with exchange gaps (complete otherwise).
    pub fn with_gaps(&self) -> usize {
        self.count(|s| *s == Status::Gaps)
    }

    /// Series that failed or were cancelled.
    pub fn errors(&self) -> usize {
        self.count(|s| matches!(s, Status::Failed(_) | Status::Cancelled))
    }

    fn count(&self, f: impl Fn(&Status) -> bool) -> usize {
        self.series.iter().filter(|s| f(&s.status)).count()
    }

    /// Candles published (new) by the run.
    pub fn published(&self) -> u64 {
        self.series.iter().map(|s| s.published).sum()
    }

    /// Process exit code: 0 all complete, 2 complete but with exchange gaps, 1 any failure or
    /// interruption.
    pub fn exit_code(&self) -> i32 {
        if self.errors() > 0 {
            1
        } else if self.with_gaps() > 0 {
            2
        } else {
            0
        }
    }

    /// The final text: gap lines, failures, `Success: X/Y`, `Errors: Z/Y`.
    pub fn render(&self) -> String {
        let n = self.series.len();
        let mut out = String::new();
        let _ = writeln!(out, "\n{}", "=".repeat(60));
        for s in &self.series {
            for f in &s.archive_faults {
                let _ = writeln!(
                    out,
                    "Archive fault {} {}: {} {} ({}); {} candles from REST instead",
                    s.symbol, s.interval, f.file, f.fault, f.detail, f.rest_candles
                );
            }
            if s.not_published > 0 {
                let _ = writeln!(
                    out,
                    "Not in the archive yet {} {}: {} candles (today, unpublished days): left for REST",
                    s.symbol, s.interval, s.not_published
                );
            }
            for g in &s.gaps {
                let _ = writeln!(
                    out,
                    "Exchange gap {} {}: {} → {} ({} candles missing on the exchange)",
                    s.symbol,
                    s.interval,
                    ts(g.start_ms),
                    ts(g.end_ms),
                    g.candles
                );
            }
            match &s.status {
                Status::Failed(e) => {
                    let _ = writeln!(out, "✗ Failed {} {}: {e}", s.symbol, s.interval);
                }
                Status::Cancelled => {
                    let _ = writeln!(
                        out,
                        "✗ Interrupted {} {}: {}/{} candles stored",
                        s.symbol,
                        s.interval,
                        s.stored(),
                        s.expected
                    );
                }
                _ => {}
            }
        }
        let secs = self.elapsed.as_secs_f64().max(1e-3);
        let _ = writeln!(
            out,
            "Published {} candles in {:.1}s ({:.0} candles/s), {} REST requests, {} × 429, {} × 418",
            self.published(),
            secs,
            self.published() as f64 / secs,
            self.rest_requests,
            self.rate_limited,
            self.banned
        );
        let (archive, rest): (u64, u64) = self
            .series
            .iter()
            .fold((0, 0), |(a, r), s| (a + s.from_archive, r + s.from_rest));
        let files: u64 = self.series.iter().map(|s| s.archive_files).sum();
        let faults: usize = self.series.iter().map(|s| s.archive_faults.len()).sum();
        let _ = writeln!(
            out,
            "Sources: archive {archive} candles from {files} files ({faults} faults), REST {rest} candles"
        );
        let _ = writeln!(out, "Success: {}/{n}", self.succeeded());
        if self.with_gaps() > 0 {
            let _ = writeln!(out, "Exchange gaps: {}/{n}", self.with_gaps());
        }
        let _ = writeln!(out, "Errors: {}/{n}", self.errors());
        out
    }
}

/// The `✓ Completed BTCUSDT 1h: N candles` line of a finished series.
pub fn completion_line(s: &SeriesReport) -> String {
    match &s.status {
        Status::Complete => format!(
            "✓ Completed {} {}: {} candles ({} new)",
            s.symbol,
            s.interval,
            s.stored(),
            s.published
        ),
        Status::Gaps => format!(
            "⚠ Completed {} {} with exchange gaps: {} candles ({} new), {} missing on the exchange",
            s.symbol,
            s.interval,
            s.stored(),
            s.published,
            s.gaps.iter().map(|g| g.candles).sum::<u64>()
        ),
        Status::Failed(e) => format!("✗ Failed {} {}: {e}", s.symbol, s.interval),
        Status::Cancelled => format!("✗ Interrupted {} {}", s.symbol, s.interval),
    }
}
