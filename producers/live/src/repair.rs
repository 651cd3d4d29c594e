//! REST work shared by gap repair and polling: publish the closed candles a series lacks, up to
//! the exchange's "now", a page (1000 candles) at a time from the newest.
//!
//! - [`fetch_closed`]: one series at once (polling).
//! - [`Repairs`]: the process' queue of gap repairs. Every (re)connect, rotation and
//!   lost-candle mark submits its series; [`REPAIR_WORKERS`] workers take, a page at a time,
//!   the series whose newest missing candle is newest (shorter timeframes first on a tie). After
//!   a mass reconnect every series thus gets its latest candles before any gets older ones, and
//!   the repairs queue on the shared weight budget a few requests at a time instead of every
//!   connection firing at once. A page that fails stays queued and is retried with backoff,
//!   never forgotten, until shutdown; `klinebus_live_repair_pending_candles` counts what is
//!   still awaited.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use klinebus_binance::limiter::wall_now_ms;
use klinebus_binance::{BinanceError, MAX_KLINES_LIMIT};
use klinebus_schemas::{Interval, Source, Symbol};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::Ctx;

/// Repair requests in flight at once, whatever the number of connections.
pub(crate) const REPAIR_WORKERS: usize = 4;
/// Longest a read of the exchange's clock is reused for other spans.
const SERVER_TIME_REUSE: Duration = Duration::from_secs(5);

type Key = (Symbol, Interval);

/// Open times still to fetch for one series: from `lo` (`None`: nothing known, the last
/// `initial_candles`) up to before `hi` (`None`: up to the exchange's now, read when a worker
/// takes it; every candle before a known `hi` is closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    lo: Option<i64>,
    hi: Option<i64>,
    /// When it was asked for: an exchange time read after this covers it.
    since: Instant,
}

impl Span {
    fn top(&self) -> i64 {
        self.hi.unwrap_or(i64::MAX)
    }
}

/// Why [`fetch_closed`] stopped: the error, and where a retry resumes (as `after`: the open
/// time of the candle before the first one still unfetched).
pub(crate) struct FetchFailed {
    pub error: BinanceError,
    pub resume_after: Option<i64>,
}

/// Open time of the candle `n` candles before the one opening at `current`.
fn candles_back(interval: Interval, current: i64, n: u32) -> i64 {
    match interval.fixed_ms() {
        Some(ms) => current - i64::from(n) * ms,
        None => (0..n).fold(current, |t, _| interval.align(t - 1)),
    }
}

/// The open times `[lo, hi)` of `span` at exchange time `server_now`, bounded by
/// `--max-repair-candles`; `None` when nothing is left.
fn resolve(ctx: &Ctx, key: &Key, span: Span, server_now: i64) -> Option<(i64, i64)> {
    let (symbol, interval) = (&key.0, key.1);
    let current = interval.align(server_now);
    let hi = span.hi.map_or(current, |h| h.min(current));
    let lo = match span.lo {
        Some(l) => l,
        None => {
            let t = candles_back(interval, current, ctx.settings.initial_candles);
            if t == current {
                // Nothing wanted from the past: start from the candle that closed last.
                ctx.tracker
                    .observe(symbol, interval, interval.align(current - 1));
                return None;
            }
            t
        }
    };
    let earliest = candles_back(interval, current, ctx.settings.max_repair_candles);
    let lo = if lo < earliest {
        let skipped = interval.count_between(lo, earliest.min(hi));
        tracing::warn!(%symbol, %interval, skipped, from = lo, to = earliest,
            max = ctx.settings.max_repair_candles,
            "more closed candles to repair than --max-repair-candles; the oldest are left to the auditor");
        metrics::counter!("klinebus_live_repair_skipped_candles_total").increment(skipped as u64);
        earliest
    } else {
        lo
    };
    (lo < hi).then_some((lo, hi))
}

/// Fetches the newest page of `[lo, hi)` and publishes its closed candles as `source`.
/// Returns how many were published and where the page started (the next page ends there).
async fn fetch_page(
    ctx: &Ctx,
    key: &Key,
    source: Source,
    (lo, hi): (i64, i64),
    server_now: i64,
) -> Result<(u64, i64), BinanceError> {
    let (symbol, interval) = (&key.0, key.1);
    let start = candles_back(interval, hi, u32::from(MAX_KLINES_LIMIT)).max(lo);
    let rows = ctx
        .rest
        .klines(
            symbol,
            interval,
            Some(start),
            Some(hi - 1),
            MAX_KLINES_LIMIT,
        )
        .await?;
    let mut published = 0;
    for row in rows
        .iter()
        .filter(|r| r.open_time >= start && r.open_time < hi)
    {
        if !row.is_closed(server_now) {
            break;
        }
        let event = row.to_event(symbol, interval, source, server_now, wall_now_ms())?;
        ctx.tracker.observe(symbol, interval, row.open_time);
        ctx.publisher.push_when_room(event).await;
        published += 1;
    }
    count(ctx, source, published);
    Ok((published, start))
}

fn count(ctx: &Ctx, source: Source, published: u64) {
    if published == 0 {
        return;
    }
    if source == Source::Repair {
        ctx.stats.repaired.fetch_add(published, Relaxed);
        metrics::counter!("klinebus_live_gaps_repaired_total").increment(published);
    } else {
        ctx.stats.polled.fetch_add(published, Relaxed);
    }
}

/// Fetches and publishes (as `source`) the closed candles of `symbol`/`interval` after `after`
/// (open time of the last closed candle known), at exchange time `server_now`, newest page
/// first. With nothing known, the last `initial_candles` closed candles. At most
/// `max_repair_candles` are fetched: older ones are counted and left to the auditor
/// (`klinectl audit`). Returns how many were published.
pub(crate) async fn fetch_closed(
    ctx: &Ctx,
    symbol: &Symbol,
    interval: Interval,
    source: Source,
    after: Option<i64>,
    server_now: i64,
) -> Result<u64, FetchFailed> {
    let key = (symbol.clone(), interval);
    let span = Span {
        lo: after.map(|a| interval.next_open(a)),
        hi: None,
        since: Instant::now(),
    };
    let Some((lo, mut hi)) = resolve(ctx, &key, span, server_now) else {
        return Ok(0);
    };
    let mut published = 0;
    while lo < hi {
        match fetch_page(ctx, &key, source, (lo, hi), server_now).await {
            Ok((n, start)) => {
                published += n;
                hi = start;
            }
            Err(error) => {
                return Err(FetchFailed {
                    error,
                    resume_after: Some(interval.align(lo - 1)),
                })
            }
        }
    }
    Ok(published)
}

/// Where each series' repair starts: the last closed candle seen *before* a connection opened.
/// Taken when it opens, because the new connection's own closed candles move the tracker
/// forward before the repair runs, and the gap would be skipped.
pub(crate) type RepairFrom = Vec<(Symbol, Interval, Option<i64>)>;

/// The repair starting points of `series` now.
pub(crate) fn repair_from(ctx: &Ctx, series: &[(Symbol, Interval)]) -> RepairFrom {
    series
        .iter()
        .map(|(s, i)| (s.clone(), *i, ctx.tracker.repair_start(s, *i)))
        .collect()
}

#[derive(Default)]
struct Queue {
    /// What each series still lacks, with the candles each span was counted as.
    spans: HashMap<Key, Vec<(Span, i64)>>,
    /// One entry per series with spans: its newest span's end, newest first.
    order: BTreeSet<(Reverse<i64>, Interval, Symbol)>,
    /// The exchange's time as last read, and when.
    server_time: Option<(i64, Instant)>,
}

impl Queue {
    fn top(&self, key: &Key) -> Option<i64> {
        self.spans
            .get(key)
            .and_then(|v| v.iter().map(|(s, _)| s.top()).max())
    }

    fn unindex(&mut self, key: &Key) {
        if let Some(t) = self.top(key) {
            self.order.remove(&(Reverse(t), key.1, key.0.clone()));
        }
    }

    fn index(&mut self, key: &Key) {
        if let Some(t) = self.top(key) {
            self.order.insert((Reverse(t), key.1, key.0.clone()));
        }
    }
}

/// The gap repairs of the process; see the module docs.
#[derive(Default)]
pub(crate) struct Repairs {
    queue: Mutex<Queue>,
    work: Notify,
}

impl Repairs {
    /// Queues the repair of every series of `from`.
    pub(crate) fn submit(&self, ctx: &Ctx, from: RepairFrom) {
        let mut added = 0;
        {
            let mut q = self.queue.lock();
            for (symbol, interval, after) in from {
                let span = Span {
                    lo: after.map(|a| interval.next_open(a)),
                    hi: None,
                    since: Instant::now(),
                };
                added += self.put_locked(ctx, &mut q, (symbol, interval), span);
            }
        }
        ctx.stats.add_repair_pending(added);
        self.work.notify_waiters();
    }

    /// Adds `span` to the series' spans and returns the change of the candles counted. Spans
    /// up to now merge (a flapping connection asks for the same repair again and again).
    fn put_locked(&self, ctx: &Ctx, q: &mut Queue, key: Key, span: Span) -> i64 {
        let estimate = estimate(ctx, &key, span);
        q.unindex(&key);
        let spans = q.spans.entry(key.clone()).or_default();
        let mut delta = estimate;
        match spans
            .iter_mut()
            .find(|(s, _)| s.hi.is_none() && span.hi.is_none())
        {
            Some((open, counted)) => {
                // A known start beats "nothing known"; the earlier start covers both.
                open.lo = match (open.lo, span.lo) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                open.since = open.since.max(span.since);
                let merged = estimate_open(ctx, &key, open.lo);
                delta = merged - *counted;
                *counted = merged;
            }
            None => spans.push((span, estimate)),
        }
        q.index(&key);
        delta
    }

    /// Gives back what remains (if anything) of a span a worker took, counted as `counted`
    /// candles when it was taken: the gauge keeps counting a span while a worker holds it.
    fn put(&self, ctx: &Ctx, key: Key, rest: Option<Span>, counted: i64) {
        let added = match rest {
            Some(span) => {
                let mut q = self.queue.lock();
                self.put_locked(ctx, &mut q, key, span)
            }
            None => 0,
        };
        ctx.stats.add_repair_pending(added - counted);
        self.work.notify_waiters();
    }

    /// The span whose newest missing candle is newest, once there is one, with the candles it
    /// was counted as (hand them to [`Repairs::put`]).
    async fn take(&self, ctx: &Ctx) -> Option<(Key, Span, i64)> {
        loop {
            if ctx.shutdown.is_cancelled() {
                return None;
            }
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken = {
                let mut q = self.queue.lock();
                match q.order.first().cloned() {
                    None => None,
                    Some((_, interval, symbol)) => {
                        let key = (symbol, interval);
                        q.unindex(&key);
                        let spans = q.spans.entry(key.clone()).or_default();
                        let i = spans
                            .iter()
                            .enumerate()
                            .max_by_key(|(_, (s, _))| s.top())
                            .map(|(i, _)| i);
                        let taken = i.map(|i| spans.swap_remove(i));
                        if spans.is_empty() {
                            q.spans.remove(&key);
                        }
                        q.index(&key);
                        taken.map(|(span, counted)| (key, span, counted))
                    }
                }
            };
            if taken.is_some() {
                return taken;
            }
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return None,
                _ = notified => {}
            }
        }
    }

    /// The exchange's time for a span asked for at `since`: the last read if it was made after
    /// that (and is at most [`SERVER_TIME_REUSE`] old), else a new one. Not advanced locally: an
    /// older time only ends the span earlier, and everything after `since` is the live
    /// connection's. One read thus serves the thousands of spans a mass reconnect asks for.
    async fn server_now(&self, ctx: &Ctx, since: Instant) -> Result<i64, BinanceError> {
        if let Some((t, at)) = self.queue.lock().server_time {
            if at >= since && at.elapsed() < SERVER_TIME_REUSE {
                return Ok(t);
            }
        }
        let t = ctx.rest.server_time().await?;
        self.queue.lock().server_time = Some((t, Instant::now()));
        Ok(t)
    }

    /// Forgets what is queued (shutdown): nothing is awaited any more.
    fn clear(&self, ctx: &Ctx) {
        let counted: i64 = {
            let mut q = self.queue.lock();
            q.order.clear();
            q.spans
                .drain()
                .flat_map(|(_, v)| v.into_iter().map(|(_, c)| c))
                .sum()
        };
        ctx.stats.add_repair_pending(-counted);
    }
}

/// Candles a span up to now is expected to bring, before the exchange's clock is read: up to
/// the newest closed candle the live connection delivered, within the repair bound.
fn estimate_open(ctx: &Ctx, key: &Key, lo: Option<i64>) -> i64 {
    let (symbol, interval) = (&key.0, key.1);
    let bound = i64::from(ctx.settings.max_repair_candles);
    let Some(lo) = lo else {
        return i64::from(ctx.settings.initial_candles).min(bound);
    };
    match ctx.tracker.last_closed(symbol, interval) {
        Some(l) => interval
            .count_between(lo, interval.next_open(l))
            .clamp(0, bound),
        None => 0,
    }
}

fn estimate(ctx: &Ctx, key: &Key, span: Span) -> i64 {
    match (span.lo, span.hi) {
        (Some(lo), Some(hi)) => key.1.count_between(lo, hi).max(0),
        (lo, _) => estimate_open(ctx, key, lo),
    }
}

/// One repair worker: takes the most urgent span, fetches its newest page, gives back the rest;
/// on a failure gives the span back whole and waits (jittered backoff) before taking again.
pub(crate) async fn repair_worker(ctx: Arc<Ctx>) {
    let mut failures = 0u32;
    while let Some((key, span, counted)) = ctx.repairs.take(&ctx).await {
        let step = async {
            // A known end needs no clock: every candle before it is closed.
            let now = match span.hi {
                Some(hi) => hi,
                None => ctx.repairs.server_now(&ctx, span.since).await?,
            };
            let Some(range) = resolve(&ctx, &key, span, now) else {
                return Ok(None);
            };
            let (n, start) = fetch_page(&ctx, &key, Source::Repair, range, now).await?;
            if n > 0 {
                tracing::info!(symbol = %key.0, interval = %key.1, candles = n, "gap repaired");
            }
            Ok::<_, BinanceError>((range.0 < start).then_some(Span {
                lo: Some(range.0),
                hi: Some(start),
                since: span.since,
            }))
        };
        match step.await {
            Ok(rest) => {
                failures = 0;
                ctx.repairs.put(&ctx, key, rest, counted);
            }
            Err(e) => {
                tracing::warn!(symbol = %key.0, interval = %key.1, error = %e,
                    "gap repair failed; it will be retried");
                ctx.repairs.put(&ctx, key, Some(span), counted);
                failures += 1;
                let wait = crate::feed::backoff(&ctx.settings, failures);
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    ctx.repairs.clear(&ctx);
}
