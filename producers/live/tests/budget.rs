//! The WebSocket connect budget against an in-process binance-sim that counts every attempt per
//! IP (`/_sim/usage`): however many shards fail at once, the process stays within its budget.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::start;
use klinebus_schemas::{Interval, KlineEvent, Source};

const SYMBOLS: &str = "BTCUSDT,ETHUSDT,BNBUSDT,SOLUSDT,XRPUSDT";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_failing_at_once_stays_within_the_connect_budget() {
    let e = common::env(SYMBOLS, &[]).await;
    // Ten connections of one stream each, every attempt refused; backoff 20–100 ms would make
    // about 40 attempts per connection in these 3 s.
    let mut s = common::settings(&e, SYMBOLS, &[Interval::M1, Interval::M3]);
    s.streams_per_connection = 1;
    s.ws_connect_budget = 25;
    e.sim.faults().set_ws_refuse(true);
    let live = start(&e, s);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = live.finish().await;
    let usage = e.sim.usage();
    let ip = usage.ip("127.0.0.1").expect("the sim saw the attempts");
    assert_eq!(ip.ws_attempts, 25, "{ip:?}");
    assert_eq!(ip.ws_attempts_max_5min, 25);
    assert_eq!(
        ip.ws_refused_by_limit, 0,
        "Binance's own limit never reached"
    );
    assert_eq!(stats.connect_attempts.load(Relaxed), 25);
    assert!(stats.connect_waits.load(Relaxed) >= 10, "{stats:?}");
}

/// Eight connections open at once, each with a series 2500 closed candles behind (three pages):
/// every series' newest page is stored before any series' oldest one, and each series ends with
/// exactly the simulator's candles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_after_a_mass_connect_go_newest_candles_first() {
    const EIGHT: &str = "BTCUSDT,ETHUSDT,BNBUSDT,SOLUSDT,XRPUSDT,ADAUSDT,DOGEUSDT,TRXUSDT";
    const BEHIND: u32 = 2500;
    let e = common::env(EIGHT, &[]).await;
    let mut s = common::settings(&e, EIGHT, &[Interval::M1]);
    s.streams_per_connection = 1;
    s.initial_candles = BEHIND;
    let live = start(&e, s);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while live.stats.repaired.load(Relaxed) < 8 * u64::from(BEHIND) {
        assert!(std::time::Instant::now() < deadline, "{:?}", live.stats);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = live.finish().await;
    assert_eq!(stats.repair_pending.load(Relaxed), 0);
    // In stream order; a candle the WebSocket delivered first is not stored again by repair.
    let stored = common::stored(&e.js, "klines.*.binance.*.1m").await;
    let market = e.sim.market();
    let now = e.sim.clock().now_ms();
    let (mut newest_page_done, mut oldest_page_begun) = (0usize, usize::MAX);
    for symbol in EIGHT.split(',') {
        let mine: Vec<(usize, &KlineEvent)> = stored
            .iter()
            .enumerate()
            .filter(|(_, ev)| ev.symbol.as_str() == symbol && ev.closed)
            .collect();
        let mut times: Vec<i64> = mine.iter().map(|(_, ev)| ev.open_time).collect();
        times.sort_unstable();
        let n = times.len();
        times.dedup();
        assert_eq!(n, times.len(), "{symbol}: a closed candle stored twice");
        assert!(n >= BEHIND as usize, "{symbol}: {n} closed candles");
        let (first, last) = (times[0], times[n - 1]);
        let want = market.klines(symbol, "1m", first, last, now).unwrap();
        assert_eq!(
            want.iter().map(|k| k.open_time).collect::<Vec<_>>(),
            times,
            "{symbol}: the stored candles are the exchange's, none missing"
        );
        // The first BEHIND are the start-up repair's three pages: 500, 1000, 1000 candles.
        let newest_page = times[BEHIND as usize - 1000]..=times[BEHIND as usize - 1];
        let oldest_page = first..first + 500 * 60_000;
        for (i, ev) in mine.iter().filter(|(_, ev)| ev.source == Source::Repair) {
            if newest_page.contains(&ev.open_time) {
                newest_page_done = newest_page_done.max(*i);
            }
            if oldest_page.contains(&ev.open_time) {
                oldest_page_begun = oldest_page_begun.min(*i);
            }
        }
    }
    assert!(
        newest_page_done < oldest_page_begun,
        "every series' newest page (done at message {newest_page_done}) comes before any \
         series' oldest page (begun at message {oldest_page_begun})"
    );
    let usage = e.sim.usage();
    let ip = usage.ip("127.0.0.1").unwrap();
    assert!(ip
        .minutes
        .iter()
        .all(|m| m.rate_limited == 0 && m.banned == 0));
}
