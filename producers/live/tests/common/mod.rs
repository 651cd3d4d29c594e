//! What the kline-live tests share: an in-process binance-sim at ×600 (a 1m candle closes
//! every 100 ms), a private nats-server with the klinebus streams, settings scaled to that
//! clock, `run_live` as a task, and the stream read back.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use binance_sim::SimHandle;
use clap::Parser;
use kline_live::{run_live, LiveStats, Settings};
use klinebus_binance::{RestClient, RestConfig, RetryPolicy, WeightLimiter};
use klinebus_schemas::streams::{Retention, KLINES_STREAM};
use klinebus_schemas::{bus, codec, Interval, KlineEvent, Symbol};
use klinebus_testkit::NatsServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Env {
    pub sim: SimHandle,
    pub nats: NatsServer,
    pub js: Context,
}

/// The simulator serving `symbols` at ×600 with `extra` flags, and a fresh bus.
pub async fn env(symbols: &str, extra: &[&str]) -> Env {
    let mut args = vec!["binance-sim", "--symbols", symbols, "--speed", "600"];
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
    Env { sim, nats, js }
}

/// Settings for `symbols` × `tfs` scaled to the ×600 clock.
pub fn settings(e: &Env, symbols: &str, tfs: &[Interval]) -> Settings {
    let mut s = Settings::new(
        Symbol::parse_list(symbols).unwrap(),
        tfs.to_vec(),
        e.sim.ws_url(),
    );
    s.watchdog = Duration::from_millis(800);
    s.backoff_min = Duration::from_millis(20);
    s.backoff_max = Duration::from_millis(100);
    s.connect_timeout = Duration::from_secs(2);
    s.fallback_after = 1000;
    s.flush_timeout = Duration::from_secs(5);
    s
}

pub struct Running {
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
    pub stats: Arc<LiveStats>,
}

/// `run_live` as a task, with a REST client that retries quickly.
pub fn start(e: &Env, s: Settings) -> Running {
    let rest = RestClient::new(
        RestConfig {
            base_url: e.sim.base_url(),
            timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(100),
                ..RetryPolicy::default()
            },
        },
        Arc::new(WeightLimiter::default()),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let stats = Arc::new(LiveStats::default());
    let task = tokio::spawn(run_live(s, rest, e.js.clone(), stats.clone(), stop.clone()));
    Running { stop, task, stats }
}

impl Running {
    /// Stops it (within 10 s) and returns its counters.
    pub async fn finish(self) -> Arc<LiveStats> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("run_live stops within 10 s of shutdown")
            .unwrap();
        self.stats
    }
}

/// Every event stored on `subject`, in stream order.
pub async fn stored(js: &Context, subject: &str) -> Vec<KlineEvent> {
    klinebus_testkit::stored_payloads(js, KLINES_STREAM, subject)
        .await
        .iter()
        .map(|p| codec::decode(p).unwrap())
        .collect()
}
