//! End to end against an in-process binance-sim (clock ×600: a 1m candle closes every 100 ms)
//! and a private nats-server. Every test reads the KLINES stream back and compares the closed
//! candles with the simulator's market, value for value.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::{start, stored, Env};
use kline_live::{Mode, Settings};
use klinebus_schemas::{Interval, KlineEvent, Source, Symbol};

const TFS: [Interval; 2] = [Interval::M1, Interval::M3];

async fn env(extra: &[&str]) -> Env {
    common::env("BTCUSDT,ETHUSDT", extra).await
}

fn symbols() -> Vec<Symbol> {
    Symbol::parse_list("BTCUSDT,ETHUSDT").unwrap()
}

/// Settings scaled to the ×600 clock, polling (in fallback) every 60 ms.
fn settings(e: &Env) -> Settings {
    let mut s = common::settings(e, "BTCUSDT,ETHUSDT", &TFS);
    s.poll_intervals = TFS
        .iter()
        .map(|i| (*i, Duration::from_millis(60)))
        .collect();
    s
}

/// Closed candles of every series: each stored exactly once, none missing between the first
/// and the last, each equal to the simulator's, and recent. Returns them by source.
async fn assert_exact(e: &Env, min_per_1m: usize) -> BTreeMap<&'static str, usize> {
    let now = e.sim.clock().now_ms();
    let mut by_source = BTreeMap::new();
    for sym in symbols() {
        for iv in TFS {
            let subject = format!("klines.*.binance.{sym}.{iv}");
            let mut closed: Vec<KlineEvent> = stored(&e.js, &subject)
                .await
                .into_iter()
                .filter(|ev| ev.closed)
                .collect();
            closed.sort_by_key(|ev| ev.open_time);
            let opens: Vec<i64> = closed.iter().map(|ev| ev.open_time).collect();
            let mut unique = opens.clone();
            unique.dedup();
            assert_eq!(
                unique.len(),
                opens.len(),
                "{subject}: a closed candle stored twice"
            );
            let (Some(first), Some(last)) = (opens.first(), opens.last()) else {
                panic!("{subject}: no closed candle stored");
            };
            let want = e
                .sim
                .market()
                .klines(sym.as_str(), iv.as_str(), *first, *last, now)
                .unwrap();
            let got: Vec<_> = closed
                .iter()
                .map(|ev| {
                    (
                        ev.open_time,
                        ev.close_time,
                        ev.open.as_str(),
                        ev.high.as_str(),
                        ev.low.as_str(),
                        ev.close.as_str(),
                        ev.volume.as_str(),
                        ev.quote_volume.as_str(),
                        ev.trades,
                        ev.taker_buy_base.as_str(),
                        ev.taker_buy_quote.as_str(),
                    )
                })
                .collect();
            let want: Vec<_> = want
                .iter()
                .map(|k| {
                    assert!(k.closed);
                    (
                        k.open_time,
                        k.close_time,
                        k.open.as_str(),
                        k.high.as_str(),
                        k.low.as_str(),
                        k.close.as_str(),
                        k.volume.as_str(),
                        k.quote_volume.as_str(),
                        k.trades,
                        k.taker_buy_base.as_str(),
                        k.taker_buy_quote.as_str(),
                    )
                })
                .collect();
            assert_eq!(got.len(), want.len(), "{subject}: missing closed candles");
            assert_eq!(
                got, want,
                "{subject}: stored candles differ from the exchange's"
            );
            let period = iv.nominal_ms();
            assert!(
                *last >= iv.align(now) - 4 * period,
                "{subject}: newest closed candle {last} is stale (now {now})"
            );
            if iv == Interval::M1 {
                assert!(
                    closed.len() >= min_per_1m,
                    "{subject}: only {} closed candles",
                    closed.len()
                );
            }
            for ev in &closed {
                *by_source.entry(ev.source.as_str()).or_insert(0) += 1;
            }
        }
    }
    by_source
}

/// Waits (up to 20 s) until every series' closed candles are contiguous and recent. Repairs run
/// asynchronously after an outage, and a loaded machine needs longer than any fixed sleep; the
/// strict checks of [`assert_exact`] follow.
async fn settle(e: &Env) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !complete(e).await {
        sleep_ms(200).await;
    }
}

async fn complete(e: &Env) -> bool {
    let now = e.sim.clock().now_ms();
    for sym in symbols() {
        for iv in TFS {
            let subject = format!("klines.*.binance.{sym}.{iv}");
            let mut opens: Vec<i64> = stored(&e.js, &subject)
                .await
                .into_iter()
                .filter(|ev| ev.closed)
                .map(|ev| ev.open_time)
                .collect();
            opens.sort_unstable();
            opens.dedup();
            let (Some(first), Some(last)) = (opens.first(), opens.last()) else {
                return false;
            };
            let contiguous = iv.count_between(*first, *last + 1) == opens.len() as i64;
            if !contiguous || *last < iv.align(now) - 2 * iv.nominal_ms() {
                return false;
            }
        }
    }
    true
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_every_closed_candle_exactly_and_answers_pings() {
    // Pings every second, dropped without a pong within 2 s: only answered pings keep it open.
    let e = env(&["--ws-ping-secs", "1", "--ws-pong-timeout-secs", "2"]).await;
    let live = start(&e, settings(&e));
    sleep_ms(3_500).await;
    settle(&e).await;
    let stats = live.finish().await;
    let sources = assert_exact(&e, 25).await;
    assert!(sources.get("ws").copied().unwrap_or(0) >= 60, "{sources:?}");
    assert_eq!(
        stats.reconnects.load(Relaxed),
        0,
        "pongs must keep the connection"
    );
    assert_eq!(stats.malformed.load(Relaxed), 0);
    let forming = stored(&e.js, "klines.ws.>").await;
    assert!(
        forming.iter().any(|ev| !ev.closed),
        "forming updates are published too"
    );
    assert!(forming.iter().all(|ev| ev.source == Source::Ws));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_repaired() {
    let e = env(&[]).await;
    let live = start(&e, settings(&e));
    sleep_ms(800).await;
    let faults = e.sim.faults();
    for _ in 0..2 {
        // Down for ~6 candles each time.
        faults.set_ws_refuse(true);
        faults.drop_ws();
        sleep_ms(600).await;
        faults.set_ws_refuse(false);
        sleep_ms(700).await;
    }
    settle(&e).await;
    let stats = live.finish().await;
    assert_exact(&e, 25).await;
    assert!(stats.reconnects.load(Relaxed) >= 2);
    assert!(stats.repaired.load(Relaxed) >= 8, "{stats:?}");
    assert_eq!(stats.fallbacks.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_trip_the_watchdog() {
    let e = env(&[]).await;
    let mut s = settings(&e);
    s.watchdog = Duration::from_millis(400);
    let live = start(&e, s);
    sleep_ms(700).await;
    e.sim.faults().set_ws_stall(true);
    sleep_ms(1_000).await;
    e.sim.faults().set_ws_stall(false);
    sleep_ms(1_000).await;
    settle(&e).await;
    let stats = live.finish().await;
    assert_exact(&e, 20).await;
    assert!(stats.watchdog_trips.load(Relaxed) >= 1, "{stats:?}");
    assert!(stats.repaired.load(Relaxed) >= 5, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reconnects_fall_back_to_polling_and_back() {
    let e = env(&[]).await;
    let mut s = settings(&e);
    s.fallback_after = 3;
    let live = start(&e, s);
    sleep_ms(600).await;
    let faults = e.sim.faults();
    faults.set_ws_refuse(true);
    faults.drop_ws();
    sleep_ms(1_500).await;
    assert_eq!(
        live.stats.polling_shards.load(Relaxed),
        1,
        "polling while refused"
    );
    assert!(live.stats.polled.load(Relaxed) > 0);
    faults.set_ws_refuse(false);
    sleep_ms(700).await;
    assert_eq!(
        live.stats.polling_shards.load(Relaxed),
        0,
        "back on WebSocket"
    );
    let ws_before = live.stats.ws_events.load(Relaxed);
    sleep_ms(800).await;
    assert!(live.stats.ws_events.load(Relaxed) > ws_before + 10);
    settle(&e).await;
    let stats = live.finish().await;
    let sources = assert_exact(&e, 25).await;
    assert!(
        sources.get("poll").copied().unwrap_or(0) >= 5,
        "{sources:?}"
    );
    assert!(sources.get("ws").copied().unwrap_or(0) >= 5, "{sources:?}");
    assert_eq!(stats.fallbacks.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_before_the_lifetime_limit_loses_nothing() {
    // The server closes connections after 2 s; we rotate every 700 ms, before it does.
    let e = env(&["--ws-max-lifetime-secs", "2"]).await;
    let mut s = settings(&e);
    s.rotate_after = Duration::from_millis(700);
    let live = start(&e, s);
    sleep_ms(3_500).await;
    settle(&e).await;
    let stats = live.finish().await;
    assert_exact(&e, 25).await;
    assert!(stats.rotations.load(Relaxed) >= 3, "{stats:?}");
    assert_eq!(
        stats.reconnects.load(Relaxed),
        0,
        "the server never had to close one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_streams_over_connections() {
    let e = env(&[]).await;
    let mut s = settings(&e);
    s.streams_per_connection = 2;
    let live = start(&e, s);
    sleep_ms(1_000).await;
    assert_eq!(e.sim.faults().snapshot().ws_connections, 2);
    sleep_ms(1_500).await;
    settle(&e).await;
    live.finish().await;
    assert_exact(&e, 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_publishes_closed_candles_only() {
    let e = env(&[]).await;
    let mut s = settings(&e);
    s.mode = Mode::Polling;
    let live = start(&e, s);
    sleep_ms(2_500).await;
    settle(&e).await;
    let stats = live.finish().await;
    let sources = assert_exact(&e, 15).await;
    assert_eq!(sources.keys().copied().collect::<Vec<_>>(), vec!["poll"]);
    assert_eq!(stats.ws_events.load(Relaxed), 0);
    assert!(stored(&e.js, "klines.>").await.iter().all(|ev| ev.closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_is_buffered_and_republished() {
    let mut e = env(&[]).await;
    let mut s = settings(&e);
    s.ack_timeout = Duration::from_millis(300);
    let live = start(&e, s);
    sleep_ms(800).await;
    e.nats.stop();
    sleep_ms(1_200).await;
    e.nats.restart();
    sleep_ms(2_500).await;
    settle(&e).await;
    let stats = live.finish().await;
    assert_exact(&e, 25).await;
    assert!(stats.publish_retries.load(Relaxed) > 0, "{stats:?}");
    assert_eq!(stats.dropped.load(Relaxed), 0);
}

// A repair longer than the whole buffer must not drop what it fetched (and re-fetch it, forever):
// REST repair waits for room instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_longer_than_the_buffer_completes() {
    let mut e = env(&[]).await;
    let mut s = settings(&e);
    s.ack_timeout = Duration::from_millis(300);
    // About 30 closed 1m candles per symbol are lost during the outage: 10× the buffer.
    s.max_buffered = 3;
    let live = start(&e, s);
    sleep_ms(800).await;
    e.nats.stop();
    sleep_ms(3_000).await;
    e.nats.restart();
    sleep_ms(2_500).await;
    settle(&e).await;
    let stats = live.finish().await;
    assert_exact(&e, 25).await;
    assert!(stats.dropped.load(Relaxed) > 0, "{stats:?}");
    assert!(stats.repaired.load(Relaxed) > 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_drops_but_repair_refetches_closed_candles() {
    let mut e = env(&[]).await;
    let mut s = settings(&e);
    s.ack_timeout = Duration::from_millis(300);
    // Smaller than one outage's worth of events (≈ 50/s), so closed candles are dropped too.
    s.max_buffered = 12;
    let live = start(&e, s);
    sleep_ms(800).await;
    e.nats.stop();
    sleep_ms(1_500).await;
    e.nats.restart();
    sleep_ms(2_500).await;
    settle(&e).await;
    let stats = live.finish().await;
    assert_exact(&e, 25).await;
    assert!(stats.dropped.load(Relaxed) > 0, "{stats:?}");
    assert!(stats.repaired.load(Relaxed) > 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_that_meets_a_rest_outage_is_retried_until_it_succeeds() {
    let e = env(&[]).await;
    let live = start(&e, settings(&e));
    sleep_ms(800).await;
    let faults = e.sim.faults();
    // Down for ~6 candles; the reconnect's repair then finds REST failing (`/time` included).
    faults.set_ws_refuse(true);
    faults.drop_ws();
    sleep_ms(600).await;
    faults.fail_next_rest(u64::MAX, 503);
    faults.set_ws_refuse(false);
    // Once the connection is back (later on a loaded machine), the gauge shows the candles the
    // failing repair still awaits, for as long as REST fails (at least 1.5 s here).
    let failing_since = Instant::now();
    let deadline = failing_since + Duration::from_secs(15);
    while live.stats.repair_pending.load(Relaxed) <= 0 {
        assert!(
            Instant::now() < deadline,
            "the gauge never showed the candles awaiting repair: {:?}",
            live.stats
        );
        sleep_ms(50).await;
    }
    tokio::time::sleep_until((failing_since + Duration::from_millis(1_500)).into()).await;
    assert!(
        live.stats.repair_pending.load(Relaxed) > 0,
        "still awaited while REST fails"
    );
    faults.fail_next_rest(0, 503);
    settle(&e).await;
    let stats = live.finish().await;
    assert_exact(&e, 25).await;
    assert_eq!(stats.repair_pending.load(Relaxed), 0);
    assert!(stats.repaired.load(Relaxed) >= 5, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_where_the_stream_left_off() {
    let e = env(&[]).await;
    let live = start(&e, settings(&e));
    sleep_ms(1_000).await;
    live.finish().await;
    // Down for ~10 candles; the new process knows nothing but what the stream holds.
    sleep_ms(1_000).await;
    let live = start(&e, settings(&e));
    sleep_ms(800).await;
    settle(&e).await;
    let stats = live.finish().await;
    assert_exact(&e, 25).await;
    assert!(stats.repaired.load(Relaxed) >= 2 * 8, "{stats:?}");
}
