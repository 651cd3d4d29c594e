//! The WebSocket side: one task per connection (shard of at most `streams_per_connection`
//! streams). Each task connects, reads, publishes, and handles what goes wrong:
//!
//! | event | reaction |
//! |---|---|
//! | connection lost or refused | reconnect after jittered exponential backoff |
//! | no kline for `watchdog` | the connection is treated as dead and replaced |
//! | `rotate_after` reached (staggered by shard, see [`first_rotation`]) | a new connection is opened, then the old one closed (overlap is deduplicated by msg id) |
//! | connect-attempt budget used up | connects wait for a slot; a rotation is put off until one frees up |
//! | first kline on a connection | REST gap repair of the shard's series from the last closed candle seen |
//! | `fallback_after` failures in a row | `Falling back to polling`; WebSocket retried in the background; back when a connection delivers data |
//! | malformed frame | logged and counted, never published |

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use klinebus_binance::limiter::wall_now_ms;
use klinebus_binance::ws::{combined_url, stream_name};
use klinebus_binance::{Frame, FrameError, KlineSocket, WsItem};
use klinebus_schemas::{Interval, Symbol};
use klinebus_svc::Backoff;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::poll::run_poller;
use crate::repair::repair_from;
use crate::Ctx;

fn interval_bit(interval: Interval) -> u32 {
    Interval::ALL
        .iter()
        .position(|i| *i == interval)
        .map_or(0, |p| 1 << p)
}

/// Jittered exponential backoff after `failures` (≥ 1) failures in a row.
pub(crate) fn backoff(s: &Settings, failures: u32) -> Duration {
    Backoff::jittered(s.backoff_min, s.backoff_max).delay(failures)
}

/// A shard's number among the process's shards, for staggering.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    pub id: usize,
    pub of: usize,
}

/// When a new connection of the shard at `place` first rotates: `rotate_after`, less the
/// shard's share of a twelfth of it (23 h: from 23 h down to about 21 h). Shards that connected
/// together (start-up, a mass reconnect) thus rotate apart, each rotation a short burst of
/// connects and repairs of its own.
pub(crate) fn first_rotation(rotate_after: Duration, place: Place) -> Duration {
    let spread = rotate_after / 12;
    let share = spread.mul_f64(place.id as f64 / place.of.max(1) as f64);
    rotate_after.saturating_sub(share)
}

/// How a connection ended.
enum Ended {
    Shutdown,
    Lost {
        reason: &'static str,
        got_data: bool,
    },
}

struct Shard {
    id: usize,
    place: Place,
    series: Vec<(Symbol, Interval)>,
    /// The intervals subscribed per symbol (bit i: `Interval::ALL[i]`), looked up without
    /// building a key for every frame.
    known: HashMap<Symbol, u32>,
    url: String,
    /// The polling fallback, while active.
    fallback: Option<(CancellationToken, JoinHandle<()>)>,
}

/// Runs one shard until `shutdown`.
pub(crate) async fn run_shard(
    ctx: Arc<Ctx>,
    place: Place,
    series: Vec<(Symbol, Interval)>,
    shutdown: CancellationToken,
) {
    let names: Vec<String> = series.iter().map(|(s, i)| stream_name(s, *i)).collect();
    let id = place.id;
    let mut shard = Shard {
        id,
        place,
        known: series.iter().fold(HashMap::new(), |mut m, (s, i)| {
            *m.entry(s.clone()).or_insert(0) |= interval_bit(*i);
            m
        }),
        series,
        url: combined_url(&ctx.settings.ws_url, &names),
        fallback: None,
    };
    let mut failures = 0u32;
    loop {
        if ctx.connects.try_take().is_err() {
            ctx.stats.connect_waits.fetch_add(1, Relaxed);
            metrics::counter!("klinebus_live_connect_budget_waits_total").increment(1);
            tracing::info!(
                shard = id,
                budget = ctx.connects.budget(),
                "WebSocket connect budget (attempts per 5 minutes) used up; waiting"
            );
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ctx.connects.take() => {}
            }
        }
        ctx.stats.connect_attempts.fetch_add(1, Relaxed);
        let connected = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = KlineSocket::connect(&shard.url, ctx.settings.connect_timeout) => r,
        };
        // `kind` labels the metric; `reason` says exactly what happened in the log.
        let (kind, reason) = match connected {
            Ok(socket) => {
                tracing::info!(
                    shard = id,
                    streams = shard.series.len(),
                    "WebSocket connected"
                );
                match session(&ctx, &mut shard, socket, &shutdown).await {
                    Ended::Shutdown => break,
                    Ended::Lost { reason, got_data } => {
                        if got_data {
                            failures = 0;
                        }
                        (reason, format!("connection {reason}"))
                    }
                }
            }
            Err(e) => {
                tracing::warn!(shard = id, error = %e, "WebSocket connect failed");
                ("connect_failed", e.to_string())
            }
        };
        failures += 1;
        ctx.stats.reconnects.fetch_add(1, Relaxed);
        metrics::counter!("klinebus_live_reconnects_total", "reason" => kind).increment(1);
        if failures >= ctx.settings.fallback_after && shard.fallback.is_none() {
            tracing::warn!(shard = id, %reason, failures, "Falling back to polling");
            start_fallback(&ctx, &mut shard);
        }
        let wait = backoff(&ctx.settings, failures);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    stop_fallback(&ctx, &mut shard).await;
}

fn start_fallback(ctx: &Arc<Ctx>, shard: &mut Shard) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_poller(ctx.clone(), shard.series.clone(), stop.clone()));
    shard.fallback = Some((stop, task));
    ctx.stats.fallbacks.fetch_add(1, Relaxed);
    let n = ctx.stats.polling_shards.fetch_add(1, Relaxed) + 1;
    metrics::gauge!("klinebus_live_polling_connections").set(n as f64);
    metrics::gauge!("klinebus_live_mode").set(1.0);
}

async fn stop_fallback(ctx: &Ctx, shard: &mut Shard) {
    let Some((stop, task)) = shard.fallback.take() else {
        return;
    };
    stop.cancel();
    let _ = task.await;
    let n = ctx.stats.polling_shards.fetch_sub(1, Relaxed) - 1;
    metrics::gauge!("klinebus_live_polling_connections").set(n as f64);
    if n == 0 {
        metrics::gauge!("klinebus_live_mode").set(0.0);
    }
}

/// Reads one connection until it is lost, rotated away for good, or shutdown.
async fn session(
    ctx: &Arc<Ctx>,
    shard: &mut Shard,
    mut socket: KlineSocket,
    shutdown: &CancellationToken,
) -> Ended {
    let s = &ctx.settings;
    let mut got_data = false;
    let mut last_data = Instant::now();
    let mut rotate_at = Instant::now() + first_rotation(s.rotate_after, shard.place);
    let mut rotate_failures = 0u32;
    // Repair starts where things stood before this connection delivered anything (and so
    // covers any repair requested before now).
    let mut repairs_seen = ctx.stats.repair_requests.load(Relaxed);
    let mut from = Some(repair_from(ctx, &shard.series));
    // Last closed candle per series on this connection.
    let mut seen = HashMap::new();
    loop {
        // Created before the counter is read: a request after the read wakes it, one before is
        // seen in the counter, even if this loop was busy elsewhere when it fired.
        let repair_wanted = ctx.stats.repair_wanted.notified();
        let requests = ctx.stats.repair_requests.load(Relaxed);
        if requests != repairs_seen {
            repairs_seen = requests;
            ctx.repairs.submit(ctx, repair_from(ctx, &shard.series));
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                socket.close().await;
                return Ended::Shutdown;
            }
            _ = sleep_until(last_data + s.watchdog) => {
                tracing::warn!(shard = shard.id, watchdog = ?s.watchdog, "no kline in time; replacing the connection");
                ctx.stats.watchdog_trips.fetch_add(1, Relaxed);
                return Ended::Lost { reason: "watchdog", got_data };
            }
            _ = sleep_until(rotate_at) => {
                if let Err(free) = ctx.connects.try_take() {
                    // Never wait here: the old connection must keep being read meanwhile.
                    ctx.stats.connect_waits.fetch_add(1, Relaxed);
                    metrics::counter!("klinebus_live_connect_budget_waits_total").increment(1);
                    tracing::info!(shard = shard.id, "rotation put off: WebSocket connect budget used up");
                    rotate_at = Instant::now() + free.saturating_duration_since(std::time::Instant::now());
                    continue;
                }
                ctx.stats.connect_attempts.fetch_add(1, Relaxed);
                // The new connection is open before the old one closes: no moment without one.
                match KlineSocket::connect(&shard.url, s.connect_timeout).await {
                    Ok(new) => {
                        let before = repair_from(ctx, &shard.series);
                        let old = std::mem::replace(&mut socket, new);
                        tokio::spawn(old.close());
                        ctx.stats.rotations.fetch_add(1, Relaxed);
                        metrics::counter!("klinebus_live_rotations_total").increment(1);
                        tracing::info!(shard = shard.id, "WebSocket connection rotated");
                        rotate_failures = 0;
                        rotate_at = Instant::now() + s.rotate_after;
                        last_data = Instant::now();
                        ctx.repairs.submit(ctx, before);
                    }
                    Err(e) => {
                        rotate_failures += 1;
                        tracing::warn!(shard = shard.id, error = %e, "rotation connect failed; keeping the old connection");
                        rotate_at = Instant::now() + backoff(s, rotate_failures);
                    }
                }
            }
            _ = repair_wanted => {}
            item = socket.next() => match item {
                None => return Ended::Lost { reason: "closed", got_data },
                Some(WsItem::Other) => {}
                Some(WsItem::Frame(Ok(Frame::ServerShutdown { .. }))) => {
                    tracing::info!(shard = shard.id, "server announced its shutdown; rotating now");
                    rotate_at = Instant::now();
                }
                Some(WsItem::Frame(frame)) => {
                    if handle_frame(ctx, shard, &mut seen, frame) {
                        last_data = Instant::now();
                        if !got_data {
                            got_data = true;
                            if shard.fallback.is_some() {
                                tracing::info!(shard = shard.id, "WebSocket holds again; leaving polling");
                                stop_fallback(ctx, shard).await;
                            }
                            if let Some(from) = from.take() {
                                ctx.repairs.submit(ctx, from);
                            }
                        }
                    }
                }
            },
        }
    }
}

/// Publishes a kline frame; true when it was one. Anything malformed is counted and logged.
fn handle_frame(
    ctx: &Arc<Ctx>,
    shard: &Shard,
    seen: &mut HashMap<(Symbol, Interval), i64>,
    frame: Result<Frame, FrameError>,
) -> bool {
    let result = frame.and_then(|f| match f {
        Frame::Control(_) | Frame::ServerShutdown { .. } => Ok(None),
        Frame::Kline(k) => {
            let subscribed = shard
                .known
                .get(&k.symbol)
                .is_some_and(|bits| bits & interval_bit(k.interval) != 0);
            if !subscribed {
                return Err(FrameError::Inconsistent(format!(
                    "{} {} was not subscribed on this connection",
                    k.symbol, k.interval
                )));
            }
            k.into_event(wall_now_ms()).map(Some)
        }
    });
    match result {
        Ok(Some(event)) => {
            if event.closed {
                let key = (event.symbol.clone(), event.interval);
                // A closed candle skipped on this very connection (should not happen): repair.
                // Gaps from before the connection are the connect-time repair's job.
                let prev = seen.get(&key).copied();
                if let Some(l) = prev.filter(|l| event.interval.next_open(*l) < event.open_time) {
                    tracing::warn!(shard = shard.id, symbol = %event.symbol,
                        interval = %event.interval, "the stream skipped closed candles; repairing");
                    ctx.repairs
                        .submit(ctx, vec![(event.symbol.clone(), event.interval, Some(l))]);
                }
                if prev.is_none_or(|l| event.open_time > l) {
                    seen.insert(key, event.open_time);
                }
                ctx.tracker
                    .observe(&event.symbol, event.interval, event.open_time);
            }
            ctx.stats.ws_events.fetch_add(1, Relaxed);
            ctx.ws_messages.increment(1);
            ctx.publisher.push(event);
            true
        }
        Ok(None) => false,
        Err(e) => {
            ctx.stats.malformed.fetch_add(1, Relaxed);
            metrics::counter!("klinebus_live_malformed_frames_total", "kind" => e.kind())
                .increment(1);
            tracing::warn!(shard = shard.id, error = %e, "malformed WebSocket frame ignored");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_of_shards_are_spread_over_a_twelfth() {
        let day = Duration::from_secs(23 * 3600);
        let at: Vec<_> = (0..4)
            .map(|id| first_rotation(day, Place { id, of: 4 }))
            .collect();
        assert_eq!(at[0], day);
        // 23 h / 12 / 4 apart: 28 min 45 s.
        for w in at.windows(2) {
            assert_eq!(w[0] - w[1], Duration::from_secs(1725));
        }
        assert!(at[3] > day - day / 12);
        assert_eq!(first_rotation(day, Place { id: 0, of: 1 }), day);
    }
}
