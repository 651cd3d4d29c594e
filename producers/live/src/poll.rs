//! Polling: each series is asked for its closed candles just after each candle close
//! (exchange clock + `poll_delay`), or every `POLLING_INTERVAL_<tf>` when configured, from the
//! last closed candle forward. Closed candles only, source `poll`, through the shared limiter.

use std::sync::Arc;
use std::time::Duration;

use klinebus_schemas::{Interval, Source, Symbol};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::repair::fetch_closed;
use crate::Ctx;

/// Polls `series` until `stop` fires.
pub(crate) async fn run_poller(
    ctx: Arc<Ctx>,
    series: Vec<(Symbol, Interval)>,
    stop: CancellationToken,
) {
    let mut tasks = JoinSet::new();
    for (symbol, interval) in series {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = poll_series(&ctx, &symbol, interval) => {}
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn poll_series(ctx: &Ctx, symbol: &Symbol, interval: Interval) {
    let fixed = ctx.settings.poll_intervals.get(&interval).copied();
    let mut failures = 0u32;
    loop {
        let wait = match poll_once(ctx, symbol, interval).await {
            Ok(server_now) => {
                failures = 0;
                fixed.unwrap_or_else(|| {
                    let until_close = interval.next_open(server_now) - server_now;
                    Duration::from_millis(until_close.max(0) as u64) + ctx.settings.poll_delay
                })
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(%symbol, %interval, error = %e, "poll failed");
                crate::feed::backoff(&ctx.settings, failures)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn poll_once(
    ctx: &Ctx,
    symbol: &Symbol,
    interval: Interval,
) -> Result<i64, klinebus_binance::BinanceError> {
    let server_now = ctx.rest.server_time().await?;
    let after = ctx.tracker.repair_start(symbol, interval);
    if let Err(f) = fetch_closed(ctx, symbol, interval, Source::Poll, after, server_now).await {
        // repair_start consumed the series' lost-candle mark: put back what is still
        // unfetched, so the next poll does not skip it.
        if let Some(a) = f.resume_after {
            ctx.tracker.lost(symbol, interval, interval.next_open(a));
        }
        return Err(f.error);
    }
    Ok(server_now)
}
