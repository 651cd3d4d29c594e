//! Deep history from the archive with the real binaries, stopped the way operators stop them:
//! kline-backfill SIGKILLed, then SIGTERMed, mid-run, the sink SIGKILLed and restarted in
//! between; a last run completes with `--verify`, and the table equals the simulator's candles.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use klinebus_schemas::bus;
use klinebus_schemas::streams::KLINES_STREAM;
use klinebus_schemas::Interval;
use klinebus_testkit::{NatsServer, TestDb};
use support::{assert_table_equals_exchange, wait_until, Proc};

/// 2025-03-10T06:00:00Z: monthly files up to February, daily ones up to 8 March.
const T0: i64 = 1_741_586_400_000;

fn backfill(sim_url: &str, nats_url: &str, db_url: &str, verify: bool) -> Proc {
    let mut args = vec![
        "--symbols",
        "BTCUSDT,ETHUSDT",
        "--timeframes",
        "1m,1h",
        "--days",
        "60",
        "--rest-url",
        sim_url,
        "--archive-url",
        sim_url,
        "--nats-url",
        nats_url,
        "--database-url",
        db_url,
        "--progress",
        "quiet",
    ];
    if verify {
        args.extend(["--verify", "--verify-timeout", "120s"]);
    }
    Proc::start(
        "kline-backfill",
        env!("CARGO_BIN_EXE_e2e-kline-backfill"),
        &args,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_backfill_killed_and_stopped_mid_run_ends_exact() {
    let sim = support::sim(T0, &["--symbols", "BTCUSDT,ETHUSDT"]).await;
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let (sim_url, nats_url) = (sim.base_url(), nats.url());
    let client = bus::connect(&bus::BusOptions::new(nats_url.clone(), "test"))
        .await
        .unwrap();
    let js = bus::jetstream(client, 100);
    let stored = || {
        let js = js.clone();
        async move {
            match js.get_stream(KLINES_STREAM).await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
                Err(_) => 0,
            }
        }
    };
    let mut sink = Proc::pg_sink(&nats_url, &db.url, &[]);

    // 1. SIGKILL a few pages in.
    let mut run = backfill(&sim_url, &nats_url, &db.url, false);
    wait_until("20 pages stored", Duration::from_secs(60), || async {
        stored().await >= 20
    })
    .await;
    run.kill();
    // 2. The sink dies too, and comes back; the next run is stopped with SIGTERM.
    sink.kill();
    let mut sink = Proc::pg_sink(&nats_url, &db.url, &[]);
    let before = stored().await;
    let run = backfill(&sim_url, &nats_url, &db.url, false);
    wait_until("more pages stored", Duration::from_secs(60), || async {
        stored().await >= before + 20
    })
    .await;
    run.terminate().await;
    // 3. A last run finishes and verifies.
    let now = sim.clock().now_ms();
    let (from_1m, end_1m) = klinebus_verify::window(Interval::M1, 60, now);
    let (from_1h, end_1h) = klinebus_verify::window(Interval::H1, 60, now);
    let mut last = backfill(&sim_url, &nats_url, &db.url, true);
    let status = last.wait(Duration::from_secs(180)).await;
    assert!(status.success(), "the last kline-backfill run: {status}");
    for symbol in ["BTCUSDT", "ETHUSDT"] {
        let n = assert_table_equals_exchange(&db.pool, &sim, symbol, Interval::M1, from_1m, end_1m)
            .await;
        assert!(n >= 60 * 1440, "{symbol} 1m: {n} rows");
        assert_table_equals_exchange(&db.pool, &sim, symbol, Interval::H1, from_1h, end_1h).await;
    }
    sink.kill();
}
