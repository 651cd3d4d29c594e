//! One unit of REST work shared by gap repair and polling: publish every closed candle of a
//! series after the last one seen, up to the exchange's "now".

use std::sync::atomic::Ordering::Relaxed;

use klinebus_binance::limiter::wall_now_ms;
use klinebus_binance::{BinanceError, MAX_KLINES_LIMIT};
use klinebus_schemas::{Interval, Source, Symbol};

use crate::Ctx;

/// Why [`fetch_closed`] stopped: the error, and where a retry resumes (the open time of the
/// last closed candle published, as `after`).
pub(crate) struct FetchFailed {
    pub error: BinanceError,
    pub resume_after: Option<i64>,
}

/// Fetches and publishes (as `source`) the closed candles of `symbol`/`interval` after
/// `after` (open time of the last closed candle known), at exchange time `server_now`. With
/// nothing known, the last `initial_candles` closed candles. At most `max_repair_candles` are
/// fetched: older ones are counted and left to the auditor (`klinectl audit`). Returns how many
/// were published.
pub(crate) async fn fetch_closed(
    ctx: &Ctx,
    symbol: &Symbol,
    interval: Interval,
    source: Source,
    after: Option<i64>,
    server_now: i64,
) -> Result<u64, FetchFailed> {
    let current = interval.align(server_now);
    let mut start = match after {
        Some(t) => interval.next_open(t),
        None => {
            let t = candles_back(interval, current, ctx.settings.initial_candles);
            if t == current {
                // Nothing wanted from the past: start from the candle that closed last.
                ctx.tracker
                    .observe(symbol, interval, interval.align(current - 1));
                return Ok(0);
            }
            t
        }
    };
    let earliest = candles_back(interval, current, ctx.settings.max_repair_candles);
    if start < earliest {
        let skipped = interval.count_between(start, earliest);
        tracing::warn!(%symbol, %interval, skipped, from = start, to = earliest,
            max = ctx.settings.max_repair_candles,
            "more closed candles to repair than --max-repair-candles; the oldest are left to the auditor");
        metrics::counter!("klinebus_live_repair_skipped_candles_total").increment(skipped as u64);
        start = earliest;
    }
    let mut published = 0;
    let mut last_published = after;
    let fail = |error, resume_after| FetchFailed {
        error,
        resume_after,
    };
    while start < current {
        let rows = match ctx
            .rest
            .klines(symbol, interval, Some(start), None, MAX_KLINES_LIMIT)
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(fail(e, last_published.or(Some(interval.align(start - 1))))),
        };
        let full = rows.len() == usize::from(MAX_KLINES_LIMIT);
        let mut next = None;
        for row in rows.iter().filter(|r| r.open_time >= start) {
            if !row.is_closed(server_now) {
                next = None;
                break;
            }
            let event = match row.to_event(symbol, interval, source, server_now, wall_now_ms()) {
                Ok(e) => e,
                Err(e) => return Err(fail(e, Some(interval.align(row.open_time - 1)))),
            };
            ctx.tracker.observe(symbol, interval, row.open_time);
            ctx.publisher.push_when_room(event).await;
            published += 1;
            last_published = Some(row.open_time);
            next = Some(interval.next_open(row.open_time));
        }
        match next {
            Some(n) if full && n > start => start = n,
            _ => break,
        }
    }
    let counter = match source {
        Source::Repair => &ctx.stats.repaired,
        _ => &ctx.stats.polled,
    };
    counter.fetch_add(published, Relaxed);
    if source == Source::Repair && published > 0 {
        metrics::counter!("klinebus_live_gaps_repaired_total").increment(published);
    }
    Ok(published)
}

/// Open time of the candle `n` candles before the one opening at `current`.
fn candles_back(interval: Interval, current: i64, n: u32) -> i64 {
    match interval.fixed_ms() {
        Some(ms) => current - i64::from(n) * ms,
        None => (0..n).fold(current, |t, _| interval.align(t - 1)),
    }
}

/// Closed candles a repair of `symbol`/`interval` from `after` still has to fetch, up to the
/// exchange's `server_now` or, while that cannot be read, up to the newest closed candle the
/// live connection has delivered since (an estimate within the repair bound, for the gauge).
fn awaiting(
    ctx: &Ctx,
    symbol: &Symbol,
    interval: Interval,
    after: Option<i64>,
    server_now: Option<i64>,
) -> i64 {
    let current = match server_now {
        Some(t) => interval.align(t),
        None => match ctx.tracker.last_closed(symbol, interval) {
            Some(l) => interval.next_open(l),
            None => return 0,
        },
    };
    let Some(after) = after else {
        return i64::from(
            ctx.settings
                .initial_candles
                .min(ctx.settings.max_repair_candles),
        );
    };
    let from = interval.next_open(after).max(candles_back(
        interval,
        current,
        ctx.settings.max_repair_candles,
    ));
    interval.count_between(from, current).max(0)
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

/// Repairs every series of a connection after a (re)connect. Never forgets: a series whose
/// repair cannot run (REST failing, 429/418, `/time` failing) keeps its starting point and is
/// retried with backoff until it succeeds or the process stops; meanwhile
/// `klinebus_live_repair_pending_candles` counts the candles still awaited.
pub(crate) async fn repair_all(ctx: &Ctx, series: &RepairFrom) {
    let mut pending: Vec<_> = series.clone();
    let mut counted: i64 = pending
        .iter()
        .map(|(s, iv, after)| awaiting(ctx, s, *iv, *after, None))
        .sum();
    ctx.stats.add_repair_pending(counted);
    let mut failures = 0u32;
    loop {
        let server_now = match ctx.rest.server_time().await {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, series = pending.len(),
                    "gap repair waits: cannot read the exchange time");
                None
            }
        };
        if let Some(now) = server_now {
            let mut left = Vec::new();
            for (symbol, interval, after) in pending {
                match fetch_closed(ctx, &symbol, interval, Source::Repair, after, now).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(%symbol, %interval, candles = n, "gap repaired"),
                    Err(f) => {
                        tracing::warn!(%symbol, %interval, error = %f.error,
                            "gap repair failed; it will be retried");
                        left.push((symbol, interval, f.resume_after));
                    }
                }
            }
            pending = left;
        }
        let still: i64 = pending
            .iter()
            .map(|(s, iv, after)| awaiting(ctx, s, *iv, *after, server_now))
            .sum();
        ctx.stats.add_repair_pending(still - counted);
        counted = still;
        if pending.is_empty() {
            return;
        }
        failures += 1;
        let wait = crate::feed::backoff(&ctx.settings, failures);
        tokio::select! {
            _ = ctx.shutdown.cancelled() => {
                ctx.stats.add_repair_pending(-counted);
                return;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
