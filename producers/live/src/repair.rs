//! One unit of REST work shared by gap repair and polling: publish every closed candle of a
//! series after the last one seen, up to the exchange's "now".

use std::sync::atomic::Ordering::Relaxed;

use klinebus_binance::limiter::wall_now_ms;
use klinebus_binance::{BinanceError, MAX_KLINES_LIMIT};
use klinebus_schemas::{Interval, Source, Symbol};

use crate::Ctx;

/// Fetches and publishes (as `source`) the closed candles of `symbol`/`interval` after
/// `after` (open time of the last closed candle known), at exchange time `server_now`. With
/// nothing known, the last `initial_candles` closed candles. Returns how many were published.
pub(crate) async fn fetch_closed(
    ctx: &Ctx,
    symbol: &Symbol,
    interval: Interval,
    source: Source,
    after: Option<i64>,
    server_now: i64,
) -> Result<u64, BinanceError> {
    let current = interval.align(server_now);
    let mut start = match after {
        Some(t) => interval.next_open(t),
        None => {
            let mut t = current;
            for _ in 0..ctx.settings.initial_candles {
                t = interval.align(t - 1);
            }
            if t == current {
                // Nothing wanted from the past: start from the candle that closed last.
                ctx.tracker
                    .observe(symbol, interval, interval.align(current - 1));
                return Ok(0);
            }
            t
        }
    };
    let mut published = 0;
    while start < current {
        let rows = match ctx
            .rest
            .klines(symbol, interval, Some(start), None, MAX_KLINES_LIMIT)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                // The caller consumed the series' lost-candle mark: put back what is still
                // unfetched, so the next repair or poll does not skip it.
                ctx.tracker.lost(symbol, interval, start);
                return Err(e);
            }
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
                Err(e) => {
                    ctx.tracker.lost(symbol, interval, row.open_time);
                    return Err(e);
                }
            };
            ctx.tracker.observe(symbol, interval, row.open_time);
            ctx.publisher.push_when_room(event).await;
            published += 1;
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

/// Repairs every series of a connection after a (re)connect, logging instead of failing.
pub(crate) async fn repair_all(ctx: &Ctx, series: &RepairFrom) {
    let server_now = match ctx.rest.server_time().await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "gap repair skipped: cannot read the exchange time");
            return;
        }
    };
    for (symbol, interval, after) in series {
        match fetch_closed(ctx, symbol, *interval, Source::Repair, *after, server_now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(%symbol, %interval, candles = n, "gap repaired"),
            Err(e) => tracing::warn!(%symbol, %interval, error = %e, "gap repair failed"),
        }
    }
}
