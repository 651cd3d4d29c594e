//! Data verification over stored candles, shared by `klinectl verify` and `kline-backfill --verify`.
//!
//! For each (symbol, interval) it reports `ok`, `halted`, `incomplete`, `stale`, `missing` or
//! `error`:
//! - the window ([`Span`]) is the last `days` (default [`Interval::default_days`]): from the
//!   candle containing `now − days` up to the newest candle closed by `now` ([`window`]); or an
//!   explicit range, as `kline-backfill --from/--to` fetched it;
//! - freshness is the age of the newest **closed** candle's close time, against
//!   [`Interval::freshness_limit`] (not checked for a range that ends before the newest closed
//!   candle: that is history, not the live edge);
//! - completeness counts closed candles in the window against the expected number, and the
//!   missing ranges are found in SQL with a window function over the primary-key index (nothing
//!   is loaded into memory but the gaps themselves);
//! - ranges the exchange itself has no candles for (`exchange_gaps`, recorded by
//!   `kline-backfill --verify` and `klinectl verify --repair`) are neither expected nor missing;
//! - a series' history starts at the symbol's listing, its first candle on the exchange
//!   (`symbol_listings`, see [`record_listing`]): the window starts at the later of `now − days`
//!   and the listing, and the report notes `listed 2026-11-28`;
//! - a symbol whose latest recorded exchange status (`symbol_status`, see
//!   [`record_symbol_status`]) is not `TRADING` (halted: `BREAK`, `HALT`, …; delisted: gone
//!   from exchangeInfo) forms no new candles, so its window ends at its newest stored candle,
//!   freshness does not apply, and a series complete up to there is `halted`;
//! - a database that cannot be read is `error`, never disguised as `missing`.
//!
//! `halted` does not fail the check ([`Report::is_ok`]): the data is as complete as the exchange
//! allows, and no repair can add to it. A halted series with holes before its halt is
//! `incomplete` like any other.

mod exchange;
mod format;
mod known;
mod series;

use std::collections::BTreeMap;

use klinebus_schemas::{Interval, Symbol};
use serde::Serialize;
use sqlx::PgPool;

pub use exchange::{
    listing, listings, record_listing, record_symbol_status, symbol_status, symbol_statuses,
    ExchangeStatus, Listing, DELISTED, TRADING,
};
pub use format::{datetime, human_age, human_limit};
pub use known::{record_exchange_gaps, KnownGap};
pub use series::{window, Gap, SeriesReport};

/// Verdict for one series, and for the whole report (the worst of its series). Ordered from
/// best to worst; [`Status::is_ok`] holds for `ok` and `halted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Complete and fresh.
    Ok,
    /// The symbol is not trading (halted or delisted) and the series is complete up to its
    /// newest candle: nothing more exists to fetch.
    Halted,
    /// Complete enough to be current but with holes, or fewer candles than the window needs.
    Incomplete,
    /// The newest closed candle is older than the freshness limit.
    Stale,
    /// No closed candle stored at all.
    Missing,
    /// The database could not be read.
    Error,
}

impl Status {
    /// The word printed and put in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Halted => "halted",
            Self::Incomplete => "incomplete",
            Self::Stale => "stale",
            Self::Missing => "missing",
            Self::Error => "error",
        }
    }

    /// True for `ok` and `halted`: everything the exchange has is stored.
    pub const fn is_ok(self) -> bool {
        matches!(self, Self::Ok | Self::Halted)
    }
}

/// Which candles of each series a verification covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The last `days` ([`window`]); `None` takes each interval's default.
    Days(Option<u32>),
    /// Candles opening in `[from_ms, to_ms)`; `to_ms` `None` goes up to the newest closed candle.
    Range { from_ms: i64, to_ms: Option<i64> },
}

impl Span {
    /// `[start, end)` of `interval`'s open times at `now_ms`, never past the candle forming then.
    pub fn bounds(self, interval: Interval, now_ms: i64) -> (i64, i64) {
        match self {
            Self::Days(days) => window(interval, days.unwrap_or(interval.default_days()), now_ms),
            Self::Range { from_ms, to_ms } => {
                let forming = interval.align(now_ms);
                let end = to_ms.map_or(forming, |t| interval.align_up(t).min(forming));
                (interval.align_up(from_ms).min(end), end)
            }
        }
    }
}

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    /// Symbols.
    pub symbols: Vec<Symbol>,
    /// Intervals.
    pub intervals: Vec<Interval>,
    /// The candles of each series that are checked.
    pub span: Span,
    /// The instant to verify at (epoch ms), normally the current time.
    pub now_ms: i64,
}

/// The whole verification, keyed by symbol then interval.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When (UTC, ISO 8601) the check applies.
    pub checked_at: String,
    /// Worst status of all series.
    pub overall_status: Status,
    /// Per symbol, per interval.
    pub results: BTreeMap<String, BTreeMap<String, SeriesReport>>,
}

impl Report {
    /// True when every series is `ok` or `halted` (the exit-code rule for cron).
    pub fn is_ok(&self) -> bool {
        self.overall_status.is_ok()
    }

    /// A human-readable table, one line per series plus its issues and gaps.
    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "Data verification at {}", self.checked_at);
        for (symbol, series) in &self.results {
            for (tf, r) in series {
                let latest = r.latest_datetime.as_deref().unwrap_or("-");
                let _ = writeln!(
                    out,
                    "{symbol:<12} {tf:>4}  {:<10} {:>8} / {:<8} latest {latest}",
                    r.status.as_str(),
                    r.count,
                    r.expected
                );
                for issue in &r.issues {
                    let _ = writeln!(out, "{:20}- {issue}", "");
                }
                for note in &r.notes {
                    let _ = writeln!(out, "{:20}· {note}", "");
                }
                for g in r.gaps.iter().take(10) {
                    let _ = writeln!(
                        out,
                        "{:20}  gap {} .. {} ({} candles)",
                        "", g.start_datetime, g.end_datetime, g.missing
                    );
                }
                if r.gaps.len() > 10 {
                    let _ = writeln!(out, "{:20}  … {} more gaps", "", r.gaps.len() - 10);
                }
            }
        }
        let _ = writeln!(out, "Overall: {}", self.overall_status.as_str());
        out
    }
}

/// The report when the database cannot be reached at all: every series is `error`.
pub fn unreadable(req: &VerifyRequest, why: &str) -> Report {
    let mut results: BTreeMap<String, BTreeMap<String, SeriesReport>> = BTreeMap::new();
    for symbol in &req.symbols {
        for &interval in &req.intervals {
            let r = series::error_report(interval, req.span, req.now_ms, why);
            results
                .entry(symbol.to_string())
                .or_default()
                .insert(interval.to_string(), r);
        }
    }
    Report {
        checked_at: datetime(req.now_ms),
        overall_status: Status::Error,
        results,
    }
}

/// Verifies every requested series. Never fails as a whole: a series whose queries fail is
/// reported with status `error`.
pub async fn verify(pool: &PgPool, req: &VerifyRequest) -> Report {
    let mut results: BTreeMap<String, BTreeMap<String, SeriesReport>> = BTreeMap::new();
    let mut overall = Status::Ok;
    for symbol in &req.symbols {
        for &interval in &req.intervals {
            let r = series::verify_series(pool, symbol, interval, req.span, req.now_ms).await;
            overall = overall.max(r.status);
            results
                .entry(symbol.to_string())
                .or_default()
                .insert(interval.to_string(), r);
        }
    }
    if req.symbols.is_empty() || req.intervals.is_empty() {
        overall = Status::Missing;
    }
    Report {
        checked_at: datetime(req.now_ms),
        overall_status: overall,
        results,
    }
}
