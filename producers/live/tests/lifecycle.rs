//! kline-live against the exchange's life events, with an in-process binance-sim (clock ×600: a
//! 1m candle closes every 100 ms) and a private nats-server: a `serverShutdown` announcement is
//! ridden out without a missing candle, and a symbol halted or delisted mid-run does not stop
//! the other series of the same connection.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use common::{start, stored, Env};
use kline_live::Settings;
use klinebus_schemas::{Interval, KlineEvent};

const TFS: [Interval; 2] = [Interval::M1, Interval::M3];

async fn env(symbols: &str) -> Env {
    common::env(symbols, &[]).await
}

fn settings(e: &Env, symbols: &str) -> Settings {
    common::settings(e, symbols, &TFS)
}

/// Closed candles stored for one series, by open time, each once.
async fn closed(js: &Context, sym: &str, iv: Interval) -> Vec<KlineEvent> {
    let mut out: Vec<KlineEvent> = stored(js, &format!("klines.*.binance.{sym}.{iv}"))
        .await
        .into_iter()
        .filter(|ev| ev.closed)
        .collect();
    out.sort_by_key(|ev| ev.open_time);
    out
}

/// The series' closed candles are contiguous, stored once each and equal to the simulator's
/// (value for value); returns their open times.
async fn assert_exact(e: &Env, sym: &str, iv: Interval) -> Vec<i64> {
    let got = closed(&e.js, sym, iv).await;
    let opens: Vec<i64> = got.iter().map(|ev| ev.open_time).collect();
    let mut unique = opens.clone();
    unique.dedup();
    assert_eq!(unique.len(), opens.len(), "{sym} {iv}: stored twice");
    let (Some(&first), Some(&last)) = (opens.first(), opens.last()) else {
        panic!("{sym} {iv}: no closed candle stored");
    };
    let want = e
        .sim
        .market()
        .klines(sym, iv.as_str(), first, last, e.sim.clock().now_ms())
        .unwrap();
    let got: Vec<_> = got
        .iter()
        .map(|ev| {
            let v = (ev.close.as_str(), ev.volume.as_str(), ev.trades);
            (
                ev.open_time,
                ev.close_time,
                v.0.to_owned(),
                v.1.to_owned(),
                v.2,
            )
        })
        .collect();
    let want: Vec<_> = want
        .iter()
        .map(|k| {
            (
                k.open_time,
                k.close_time,
                k.close.clone(),
                k.volume.clone(),
                k.trades,
            )
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{sym} {iv}: missing closed candles");
    assert_eq!(got, want, "{sym} {iv}: differs from the exchange");
    opens
}

/// Waits (up to 20 s) until `sym`'s series reach the candle before the one forming now.
async fn settle(e: &Env, syms: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    'wait: while Instant::now() < deadline {
        let now = e.sim.clock().now_ms();
        for sym in syms {
            for iv in TFS {
                let opens: Vec<i64> = closed(&e.js, sym, iv)
                    .await
                    .iter()
                    .map(|ev| ev.open_time)
                    .collect();
                let ok = match (opens.first(), opens.last()) {
                    (Some(f), Some(l)) => {
                        iv.count_between(*f, *l + 1) == opens.len() as i64
                            && *l >= iv.align(now) - 2 * iv.nominal_ms()
                    }
                    _ => false,
                };
                if !ok {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'wait;
                }
            }
        }
        return;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shutdown_announcement_is_ridden_out_without_a_missing_candle() {
    let syms = "BTCUSDT,ETHUSDT";
    let e = env(syms).await;
    let live = start(&e, settings(&e, syms));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let since = e.sim.clock().now_ms();
    // Binance's warning: the connection closes 1 s later (wall), 10 simulated minutes.
    for _ in 0..2 {
        e.sim
            .faults()
            .announce_shutdown(Duration::from_millis(1_000));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    assert_eq!(e.sim.faults().snapshot().ws_shutdowns, 2);
    settle(&e, &["BTCUSDT", "ETHUSDT"]).await;
    let stats = live.finish().await;
    for sym in ["BTCUSDT", "ETHUSDT"] {
        for iv in TFS {
            let opens = assert_exact(&e, sym, iv).await;
            assert!(
                opens[0] < since,
                "{sym} {iv}: covers from before the first announcement"
            );
        }
    }
    // Each announcement was a rotation (new connection first), never a lost connection.
    assert!(stats.rotations.load(Relaxed) >= 2, "{stats:?}");
    assert_eq!(stats.reconnects.load(Relaxed), 0, "{stats:?}");
    assert_eq!(stats.malformed.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halted_and_delisted_symbols_do_not_stop_the_other_series_of_the_connection() {
    let syms = "BTCUSDT,ETHUSDT,SOLUSDT";
    let e = env(syms).await;
    let live = start(&e, settings(&e, syms));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let now = e.sim.clock().now_ms();
    let m = e.sim.market();
    m.halt("ETHUSDT", now).unwrap();
    m.delist("SOLUSDT").unwrap();
    let halt_start = m.lifecycle()[1].halts[0].start_ms;
    // 30 simulated minutes with two of the three symbols silent.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    settle(&e, &["BTCUSDT"]).await;
    let stats = live.finish().await;

    for iv in TFS {
        let btc = assert_exact(&e, "BTCUSDT", iv).await;
        assert!(
            *btc.last().unwrap() >= iv.align(e.sim.clock().now_ms()) - 4 * iv.nominal_ms(),
            "BTCUSDT {iv} is current"
        );
        // The silent ones: what was stored is the exchange's, and nothing after the halt.
        let eth = assert_exact(&e, "ETHUSDT", iv).await;
        assert!(
            *eth.last().unwrap() < halt_start,
            "ETHUSDT {iv}: nothing after the halt"
        );
        assert_exact(&e, "SOLUSDT", iv).await;
    }
    let btc_1m = closed(&e.js, "BTCUSDT", Interval::M1).await;
    let after_halt = btc_1m
        .iter()
        .filter(|ev| ev.open_time >= halt_start)
        .count();
    assert!(after_halt >= 20, "BTCUSDT kept streaming: {after_halt}");
    assert_eq!(stats.watchdog_trips.load(Relaxed), 0, "{stats:?}");
    assert_eq!(stats.reconnects.load(Relaxed), 0, "{stats:?}");
    assert_eq!(stats.malformed.load(Relaxed), 0);
}
