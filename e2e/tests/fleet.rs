//! One IP, three processes spending Binance's request weight at once, as the real binaries:
//! kline-backfill (REST history), kline-live (polling every 3 s) and the auditor (`klinectl
//! audit`, repairing what the table lacks) against one simulator that counts weight per IP per
//! minute and answers 429 past its limit. Each process' limiter follows the server's
//! `X-MBX-USED-WEIGHT-1M`, so the IP's total stays under the highest budget: no 429, no ban,
//! and the backfill completes with `--verify`, the table equal to the exchange.
//!
//! The limit is scaled down (300 per minute, budgets 240 and 120) so that the demand exceeds
//! it within a minute of real time; the weight windows are real wall-clock minutes.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use klinebus_schemas::Interval;
use klinebus_testkit::{NatsServer, TestDb};
use support::{assert_table_equals_exchange, Proc};

const SYMBOLS: &str = "BTCUSDT,ETHUSDT,BNBUSDT,SOLUSDT";
const LIMIT: u32 = 300;
const DAYS: u32 = 40;

/// Each process logs the weight it and the IP used per minute.
const LOG: (&str, &str) = ("RUST_LOG", "warn,klinebus_binance=info");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_live_and_audit_on_one_ip_stay_under_the_weight_limit_together() {
    let limit = LIMIT.to_string();
    // The simulator's clock starts at the wall clock's now: kline-live streams the present.
    let sim = binance_sim::spawn(<binance_sim::Config as clap::Parser>::parse_from([
        "binance-sim",
        "--symbols",
        SYMBOLS,
        "--weight-limit",
        &limit,
    ]))
    .await
    .unwrap();
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let (sim_url, ws_url, nats_url) = (sim.base_url(), sim.ws_url(), nats.url());
    let _sink = Proc::pg_sink(&nats_url, &db.url, &[]);

    let live = Proc::start_with_env(
        "kline-live",
        env!("CARGO_BIN_EXE_e2e-kline-live"),
        &[
            "--symbols",
            SYMBOLS,
            "--timeframes",
            "1m",
            "--mode",
            "polling",
            "--rest-url",
            &sim_url,
            "--ws-url",
            &ws_url,
            "--nats-url",
            &nats_url,
            "--weight-budget",
            "240",
            "--metrics-addr",
            "off",
        ],
        &[LOG, ("POLLING_INTERVAL_1m", "3")],
    );
    let mut audit = Proc::start_with_env(
        "klinectl audit",
        env!("CARGO_BIN_EXE_e2e-klinectl"),
        &[
            "--database-url",
            &db.url,
            "--nats-url",
            &nats_url,
            "audit",
            "--symbols",
            SYMBOLS,
            "--timeframes",
            "1m",
            "--every",
            "5s",
            "--window",
            "20d",
            "--rest-url",
            &sim_url,
            "--weight-budget",
            "120",
            "--metrics-addr",
            "off",
        ],
        &[LOG],
    );
    let days = DAYS.to_string();
    let mut backfill = Proc::start_with_env(
        "kline-backfill",
        env!("CARGO_BIN_EXE_e2e-kline-backfill"),
        &[
            "--symbols",
            SYMBOLS,
            "--timeframes",
            "1m",
            "--days",
            &days,
            "--source",
            "rest",
            "--rest-url",
            &sim_url,
            "--nats-url",
            &nats_url,
            "--database-url",
            &db.url,
            "--weight-budget",
            "240",
            "--progress",
            "quiet",
            "--verify",
            "--verify-timeout",
            "120s",
        ],
        &[LOG],
    );
    let status = backfill.wait(Duration::from_secs(420)).await;
    let usage = sim.usage();
    let ip = usage
        .ip("127.0.0.1")
        .expect("the simulator saw the requests");
    eprintln!("REST weight of 127.0.0.1 per minute (limit {LIMIT}), as the simulator counted it:");
    for m in &ip.minutes {
        eprintln!(
            "  {}  weight {:>4}  429s {}  418s {}",
            m.minute_start_ms, m.weight, m.rate_limited, m.banned
        );
    }
    assert!(status.success(), "kline-backfill --verify: {status}");
    let over: Vec<_> = ip
        .minutes
        .iter()
        .filter(|m| m.weight > LIMIT || m.rate_limited > 0 || m.banned > 0)
        .collect();
    assert!(over.is_empty(), "minutes over the limit: {over:?}");
    // The three together wanted more than the budget: it was used, minute after minute.
    let busy = ip.minutes.iter().filter(|m| m.weight >= 200).count();
    assert!(busy >= 2, "the processes never competed: {:?}", ip.minutes);

    let status = live.terminate().await;
    assert!(status.success(), "kline-live after SIGTERM: {status}");
    audit.kill();
    let now = sim.clock().now_ms();
    // The last candles kline-live published (the minute that closed just now) reach the table
    // once the sink has read everything.
    let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
    support::wait_until("the sink to catch up", Duration::from_secs(60), || {
        let js = js.clone();
        async move { support::caught_up(&js, "KLINES", "pg-sink").await }
    })
    .await;
    let (from, end) = klinebus_verify::window(Interval::M1, DAYS, now);
    for symbol in SYMBOLS.split(',') {
        let n = assert_table_equals_exchange(&db.pool, &sim, symbol, Interval::M1, from, end).await;
        assert!(n >= (DAYS * 1440) as usize, "{symbol}: {n} rows");
    }
}
