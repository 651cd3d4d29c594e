//! Shared set-up of the backfill tests: an in-process binance-sim, a private nats-server, and
//! the stream compared with the simulator's candles.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use binance_sim::SimHandle;
use clap::Parser;
use kline_backfill::{run_backfill, Plan, ProgressMode, RunOptions, Status, Summary, Window};
use klinebus_binance::{RestClient, RestConfig, RetryPolicy, WeightLimiter};
use klinebus_schemas::streams::{Retention, KLINES_STREAM};
use klinebus_schemas::{bus, codec, Interval, KlineEvent, Symbol};
use klinebus_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

pub const MIN: i64 = 60_000;

pub struct Env {
    pub sim: SimHandle,
    pub nats: Arc<std::sync::Mutex<NatsServer>>,
    pub js: Context,
    pub rest: RestClient,
}

pub async fn env(extra: &[&str]) -> Env {
    let mut args = vec![
        "binance-sim",
        "--symbols",
        "BTCUSDT,ETHUSDT",
        "--ban-seconds",
        "2",
    ];
    args.extend_from_slice(extra);
    let sim = binance_sim::spawn(binance_sim::Config::parse_from(args))
        .await
        .unwrap();
    let nats = NatsServer::start();
    let client = bus::connect(&bus::BusOptions::new(nats.url(), "test"))
        .await
        .unwrap();
    let js = bus::jetstream(client, 5_000);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    let rest = client_for(&sim);
    Env {
        sim,
        nats: Arc::new(std::sync::Mutex::new(nats)),
        js,
        rest,
    }
}

pub fn client_for(sim: &SimHandle) -> RestClient {
    let cfg = RestConfig {
        base_url: sim.base_url(),
        timeout: Duration::from_secs(10),
        retry: RetryPolicy {
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            ..RetryPolicy::default()
        },
    };
    RestClient::new(cfg, Arc::new(WeightLimiter::default())).unwrap()
}

pub fn syms(list: &str) -> Vec<Symbol> {
    Symbol::parse_list(list).unwrap()
}

/// The last `minutes` minutes (1m) and matching hours for the given symbols.
pub async fn plan(e: &Env, symbols: &str, intervals: &[Interval], minutes: i64) -> Plan {
    let now = e.rest.server_time().await.unwrap();
    let window = Window::Range {
        from_ms: now - minutes * MIN,
        to_ms: None,
    };
    Plan::build(&syms(symbols), intervals, window, now)
}

pub async fn backfill(e: &Env, plan: &Plan, cancel: &CancellationToken) -> Summary {
    let opts = RunOptions {
        concurrency: 4,
        progress: ProgressMode::Quiet,
        resume: true,
        fetch: kline_backfill::Fetch::Rest,
        flow: None,
        patience: std::time::Duration::from_secs(60),
    };
    run_backfill(plan, &e.rest, &e.js, opts, cancel).await
}

/// Every candle stored on `subject`, in stream order (pages opened; a page's map has a
/// `candles` key, which an event's has not).
pub async fn stored(js: &Context, subject: &str) -> Vec<KlineEvent> {
    klinebus_testkit::stored_payloads(js, KLINES_STREAM, subject)
        .await
        .iter()
        .flat_map(|p| {
            codec::decode::<klinebus_schemas::ClosedCandles>(p)
                .map(|page| page.candles)
                .unwrap_or_else(|_| vec![codec::decode(p).unwrap()])
        })
        .collect()
}

/// The stream holds exactly the sim's closed candles of every series, once each, value for value
/// (in any order: republished candles come after later ones).
pub async fn assert_exact(e: &Env, plan: &Plan) {
    for s in &plan.series {
        let mut got = stored(&e.js, &s.subject()).await;
        got.sort_by_key(|g| g.open_time);
        let want: Vec<_> = e
            .sim
            .market()
            .klines(
                s.symbol.as_str(),
                s.interval.as_str(),
                s.from_ms,
                s.to_ms - 1,
                plan.server_now_ms,
            )
            .unwrap()
            .into_iter()
            .filter(|k| k.closed)
            .collect();
        assert!(!want.is_empty());
        assert_eq!(got.len(), want.len(), "{} {}", s.symbol, s.interval);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.open_time, w.open_time);
            assert_eq!(g.close_time, w.close_time);
            assert_eq!(
                (&g.open, &g.high, &g.low, &g.close),
                (&w.open, &w.high, &w.low, &w.close)
            );
            assert_eq!((&g.volume, &g.quote_volume), (&w.volume, &w.quote_volume));
            assert_eq!(
                (&g.taker_buy_base, &g.taker_buy_quote),
                (&w.taker_buy_base, &w.taker_buy_quote)
            );
            assert_eq!(g.trades, w.trades);
            assert!(g.closed);
            assert_eq!(g.event_time, w.close_time + 1);
            assert_eq!(g.source, klinebus_schemas::Source::Backfill);
        }
    }
}

/// Kills the private broker (SIGKILL) and starts it again after `away`, on the same port and
/// store, without blocking the runtime meanwhile.
pub async fn crash(e: &Env, away: Duration) {
    let nats = e.nats.clone();
    tokio::task::spawn_blocking(move || {
        let mut nats = nats.lock().unwrap();
        nats.stop();
        std::thread::sleep(away);
        nats.start_again();
    })
    .await
    .unwrap();
}

pub fn assert_complete(s: &Summary) {
    for r in &s.series {
        assert_eq!(r.status, Status::Complete, "{r:?}");
        assert_eq!(r.stored(), r.expected, "{r:?}");
    }
    assert_eq!(s.exit_code(), 0);
}
