//! An operator restarts kline-live: the binaries as processes (`kline-live`, `kline-pg-sink`),
//! `binance-sim` at 60× (a 1m candle closes every second), a private nats-server and a fresh
//! database. kline-live runs, is stopped (SIGTERM, or SIGKILL), stays down for
//! ten simulated minutes and is started again with its defaults. The new process resumes each
//! series after the newest closed candle the stream holds, so every candle that closed while it
//! was down is stored, and the one the old process last saw forming is replaced by the closed
//! candle: the table equals the simulator's closed candles exactly, with no forming row left
//! behind.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use klinebus_schemas::Interval;
use klinebus_testkit::{NatsServer, TestDb};

mod support;
use support::{assert_table_equals_exchange, closed_count, sleep_ms, wait_until, Proc};

/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;
const SYMBOLS: [&str; 3] = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
const TFS: [Interval; 2] = [Interval::M1, Interval::M5];

fn live(sim: &binance_sim::SimHandle, nats_url: &str) -> Proc {
    let (symbols, tfs) = (SYMBOLS.join(","), TFS.map(|i| i.as_str()).join(","));
    let (ws, rest) = (sim.ws_url(), sim.base_url());
    Proc::start(
        "kline-live",
        env!("CARGO_BIN_EXE_e2e-kline-live"),
        &[
            "--symbols",
            &symbols,
            "--timeframes",
            &tfs,
            "--ws-url",
            &ws,
            "--rest-url",
            &rest,
            "--nats-url",
            nats_url,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_kline_live_leaves_no_hole_and_no_forming_row() {
    restart_after(Stop::Term).await;
}

/// SIGKILL: no flush, so what was buffered or unacknowledged is lost with the process; the
/// new one refetches it from where the stream left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_kline_live_leaves_no_hole_and_no_forming_row() {
    restart_after(Stop::Kill).await;
}

enum Stop {
    Term,
    Kill,
}

async fn restart_after(stop: Stop) {
    let sim = support::sim(T0, &["--speed", "60", "--symbols", &SYMBOLS.join(",")]).await;
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let _sink = Proc::pg_sink(&nats.url(), &db.url, &[]);

    let mut first = live(&sim, &nats.url());
    sleep_ms(8_000).await;
    match stop {
        Stop::Term => {
            let status = first.terminate().await;
            assert!(status.success(), "kline-live exits 0 on SIGTERM: {status}");
        }
        Stop::Kill => first.kill(),
    }
    let stopped = sim.clock().now_ms();
    // Ten simulated minutes down: ten 1m and two 5m candles close meanwhile.
    sleep_ms(10_000).await;
    let second = live(&sim, &nats.url());

    // Wait until every series holds every closed candle from its first stored one up to a
    // minute after the restart, then a little more.
    let pool = &db.pool;
    let target = sim.clock().now_ms() + 60_000;
    wait_until("the restarted kline-live to fill the outage", Duration::from_secs(60), || async {
        if sim.clock().now_ms() < target {
            return false;
        }
        for symbol in SYMBOLS {
            for tf in TFS {
                let first: Option<i64> = sqlx::query_scalar(
                    r#"SELECT min("timestamp") FROM ohlcv_candles WHERE symbol = $1 AND timeframe = $2"#,
                )
                .bind(symbol)
                .bind(tf.as_str())
                .fetch_one(pool)
                .await
                .unwrap();
                let Some(first) = first else { return false };
                let end = tf.align(target);
                if closed_count(pool, symbol, tf, first, end) .await != tf.count_between(first, end) {
                    return false;
                }
            }
        }
        true
    })
    .await;
    let status = second.terminate().await;
    assert!(status.success(), "kline-live exits 0 on SIGTERM: {status}");

    for symbol in SYMBOLS {
        for tf in TFS {
            let end = tf.align(target);
            // The outage lies inside what is compared: the first run stored candles before it.
            let compared =
                assert_table_equals_exchange(pool, &sim, symbol, tf, tf.align(stopped), end).await;
            assert!(compared as i64 >= tf.count_between(tf.align(stopped), end));
        }
    }
}
