//! Verification of one (symbol, interval) series.

use std::time::Duration;

use klinebus_schemas::{Interval, Symbol};
use serde::Serialize;
use sqlx::PgPool;

use crate::format::{datetime, human_age, human_limit};
use crate::{exchange, known, Span, Status};

/// A run of missing candles inside the window (open times, both ends inclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// Open time of the first missing candle (ms).
    pub start: i64,
    /// Open time of the last missing candle (ms).
    pub end: i64,
    /// `start` as UTC ISO 8601.
    pub start_datetime: String,
    /// `end` as UTC ISO 8601.
    pub end_datetime: String,
    /// Number of missing candles.
    pub missing: i64,
}

/// The verdict for one series. Keys follow the old bootstrap report.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesReport {
    /// Verdict.
    pub status: Status,
    /// Closed candles stored inside the window.
    pub count: i64,
    /// Closed candles the window should hold.
    pub expected: i64,
    /// Open time of the newest closed candle stored (ms), if any.
    pub latest_timestamp: Option<i64>,
    /// `latest_timestamp` as UTC ISO 8601 with `Z`.
    pub latest_datetime: Option<String>,
    /// Seconds since the newest closed candle closed.
    pub age_seconds: Option<i64>,
    /// First open time of the window (ms): the later of `now − days` and the listing.
    pub window_start: i64,
    /// Open time of the series' first candle on the exchange, when recorded
    /// (`symbol_listings`).
    pub listed_at: Option<i64>,
    /// The symbol's latest recorded exchange status (`TRADING`, `BREAK`, `DELISTED`, …), if any
    /// (`symbol_status`).
    pub exchange_status: Option<String>,
    /// When that status was first seen (ms, the exchange's clock).
    pub exchange_status_since: Option<i64>,
    /// Human sentences describing each problem.
    pub issues: Vec<String>,
    /// Facts that explain the verdict without being problems (`listed 2026-11-28`, a halt).
    pub notes: Vec<String>,
    /// Missing ranges inside the window.
    pub gaps: Vec<Gap>,
}

/// Most gaps listed per series; the count of missing candles stays exact beyond it.
const MAX_GAPS: i64 = 1000;

fn gap(interval: Interval, start: i64, end: i64) -> Gap {
    Gap {
        start,
        end,
        start_datetime: datetime(start),
        end_datetime: datetime(end),
        missing: interval.count_between(start, end + 1),
    }
}

/// The window `[start, end)`: from the candle containing `now − days` (so `--days N` of a
/// fixed interval spans exactly N days of candles, the rule `kline-backfill --days` fetches by)
/// to the open of the candle containing `now` (still forming, so not expected).
pub fn window(interval: Interval, days: u32, now_ms: i64) -> (i64, i64) {
    let start = interval.align(now_ms - i64::from(days) * 86_400_000);
    (start, interval.align(now_ms))
}

pub(crate) async fn verify_series(
    pool: &PgPool,
    symbol: &Symbol,
    interval: Interval,
    span: Span,
    now_ms: i64,
) -> SeriesReport {
    match query(pool, symbol, interval, span, now_ms).await {
        Ok(r) => r,
        Err(e) => error_report(interval, span, now_ms, &e.to_string()),
    }
}

/// The verdict when the series could not be read.
pub(crate) fn error_report(interval: Interval, span: Span, now_ms: i64, why: &str) -> SeriesReport {
    let (start, end) = span.bounds(interval, now_ms);
    SeriesReport {
        status: Status::Error,
        count: 0,
        expected: interval.count_between(start, end),
        latest_timestamp: None,
        latest_datetime: None,
        age_seconds: None,
        window_start: start,
        listed_at: None,
        exchange_status: None,
        exchange_status_since: None,
        issues: vec![format!("Database error: {why}")],
        notes: Vec::new(),
        gaps: Vec::new(),
    }
}

/// `2026-11-28` for a midnight, the full UTC time otherwise.
fn day_or_datetime(ms: i64) -> String {
    let d = datetime(ms);
    d.strip_suffix("T00:00:00Z")
        .map_or(d.clone(), str::to_owned)
}

async fn query(
    pool: &PgPool,
    symbol: &Symbol,
    interval: Interval,
    span: Span,
    now_ms: i64,
) -> Result<SeriesReport, sqlx::Error> {
    let (sym, tf) = (symbol.as_str(), interval.as_str());
    let (mut start, mut end) = span.bounds(interval, now_ms);
    // A range ending before the candle forming now is history: its newest candle is old by
    // design, so freshness is not checked.
    let history = end < interval.align(now_ms);
    let latest: Option<(i64, i64)> = sqlx::query_as(
        r#"SELECT "timestamp", close_time FROM ohlcv_candles
           WHERE symbol = $1 AND timeframe = $2 AND is_closed
           ORDER BY "timestamp" DESC LIMIT 1"#,
    )
    .bind(sym)
    .bind(tf)
    .fetch_optional(pool)
    .await?;
    let listed_at = exchange::listing_of(pool, sym, interval).await?;
    let exchange_status = exchange::status_of(pool, sym).await?;
    let mut notes = Vec::new();
    if history {
        notes.push(format!(
            "range ends {}: freshness not checked",
            day_or_datetime(end)
        ));
    }
    // History starts at the listing: open times before it are neither expected nor missing.
    if let Some(first) = listed_at.filter(|&f| f > start) {
        start = first.min(end);
        notes.push(format!("listed {}", day_or_datetime(first)));
    }
    // Not trading: no candle forms after the newest one stored, so the window ends there
    // and freshness does not apply. Holes before it still count.
    let halted = exchange_status.as_ref().filter(|s| !s.is_trading());
    if let Some(h) = halted {
        let word = if h.status == exchange::DELISTED {
            "delisted (gone from exchangeInfo)".to_owned()
        } else {
            format!("halted ({})", h.status)
        };
        notes.push(format!("{word} since {}", datetime(h.since)));
        if let Some((last, _)) = latest {
            end = end.min(interval.next_open(last)).max(start);
        }
    }
    let expected = interval.count_between(start, end);
    let (count, first, last): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
        r#"SELECT count(*), min("timestamp"), max("timestamp") FROM ohlcv_candles
           WHERE symbol = $1 AND timeframe = $2 AND is_closed
             AND "timestamp" >= $3 AND "timestamp" < $4"#,
    )
    .bind(sym)
    .bind(tf)
    .bind(start)
    .bind(end)
    .fetch_one(pool)
    .await?;

    let mut gaps = Vec::new();
    match (first, last) {
        (Some(first), Some(last)) => {
            if first > start {
                gaps.push(gap(interval, start, first - 1));
            }
            // Every open time from the first to the last is present: no hole between them, and
            // no need for the window-function scan (most series, most of the time).
            if count < interval.count_between(first, interval.next_open(last)) {
                gaps.extend(inner_gaps(pool, sym, interval, start, end).await?);
            }
            let next = interval.next_open(last);
            if next < end {
                gaps.push(gap(interval, next, end - 1));
            }
        }
        _ if expected > 0 => gaps.push(gap(interval, start, end - 1)),
        _ => {}
    }
    // Gap ends are open times: turn the "before the next present candle" bound into the
    // open time of the last missing candle.
    for g in &mut gaps {
        let last_open = interval.align(g.end);
        g.end = last_open;
        g.end_datetime = datetime(last_open);
    }
    // Ranges the exchange itself has no candles for are neither expected nor missing.
    let known = known::load(pool, sym, interval, start, end).await?;
    let expected = expected - known::known_candles(interval, &known, start, end);
    if !known.is_empty() {
        gaps = gaps
            .iter()
            .flat_map(|g| known::subtract(g.start, interval.next_open(g.end), &known))
            .map(|(s, e)| {
                let mut g = gap(interval, s, e - 1);
                g.end = interval.align(e - 1);
                g.end_datetime = datetime(g.end);
                g
            })
            .collect();
    }

    let mut issues = Vec::new();
    let age =
        latest.map(|(_, close_time)| Duration::from_millis((now_ms - close_time).max(0) as u64));
    let status = match age {
        None => {
            issues.push("No data available".to_owned());
            Status::Missing
        }
        Some(age) => {
            let limit = interval.freshness_limit();
            let stale = age > limit && halted.is_none() && !history;
            if stale {
                issues.push(format!(
                    "Data is {} old (expected < {})",
                    human_age(age),
                    human_limit(limit)
                ));
            }
            let incomplete = count < expected || !gaps.is_empty();
            if incomplete {
                issues.push(format!("Only {count} candles (expected ~{expected})"));
                let missing: i64 = gaps.iter().map(|g| g.missing).sum();
                if !gaps.is_empty() {
                    issues.push(format!(
                        "{} gap{} inside the window, {missing} candles missing",
                        gaps.len(),
                        if gaps.len() == 1 { "" } else { "s" }
                    ));
                }
            }
            if stale {
                Status::Stale
            } else if incomplete {
                Status::Incomplete
            } else if halted.is_some() {
                Status::Halted
            } else {
                Status::Ok
            }
        }
    };
    Ok(SeriesReport {
        status,
        count,
        expected,
        latest_timestamp: latest.map(|l| l.0),
        latest_datetime: latest.map(|l| datetime(l.0)),
        age_seconds: age.map(|a| a.as_secs() as i64),
        window_start: start,
        listed_at,
        exchange_status: exchange_status.as_ref().map(|s| s.status.clone()),
        exchange_status_since: exchange_status.as_ref().map(|s| s.since),
        issues,
        notes,
        gaps,
    })
}

/// Holes between stored candles, found by the database: each row is (first missing open,
/// next present open − 1).
async fn inner_gaps(
    pool: &PgPool,
    sym: &str,
    interval: Interval,
    start: i64,
    end: i64,
) -> Result<Vec<Gap>, sqlx::Error> {
    let rows: Vec<(i64, i64)> = match interval.fixed_ms() {
        Some(period) => {
            sqlx::query_as(
                r#"SELECT prev + $5, ts - 1 FROM (
                     SELECT "timestamp" AS ts, lag("timestamp") OVER (ORDER BY "timestamp") AS prev
                     FROM ohlcv_candles
                     WHERE symbol = $1 AND timeframe = $2 AND is_closed
                       AND "timestamp" >= $3 AND "timestamp" < $4) s
                   WHERE ts - prev > $5
                   ORDER BY ts LIMIT $6"#,
            )
            .bind(sym)
            .bind(interval.as_str())
            .bind(start)
            .bind(end)
            .bind(period)
            .bind(MAX_GAPS)
            .fetch_all(pool)
            .await?
        }
        None => {
            // Calendar months: at most a few dozen rows in any window, compared in Rust.
            let opens: Vec<i64> = sqlx::query_scalar(
                r#"SELECT "timestamp" FROM ohlcv_candles
                   WHERE symbol = $1 AND timeframe = $2 AND is_closed
                     AND "timestamp" >= $3 AND "timestamp" < $4 ORDER BY 1"#,
            )
            .bind(sym)
            .bind(interval.as_str())
            .bind(start)
            .bind(end)
            .fetch_all(pool)
            .await?;
            opens
                .windows(2)
                .filter(|w| interval.next_open(w[0]) < w[1])
                .map(|w| (interval.next_open(w[0]), w[1] - 1))
                .collect()
        }
    };
    Ok(rows.into_iter().map(|(s, e)| gap(interval, s, e)).collect())
}
