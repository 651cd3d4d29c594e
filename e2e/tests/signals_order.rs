//! The README's start order, every service a process: `binance-sim` with an accelerated clock
//! (in this process, for its clock), a private nats-server, a fresh database, `kline-pg-sink`
//! and `kline-signals` running, then `kline-live` started first and `kline-backfill` for two
//! days of history after it. The live candles that close before the bootstrap lands have no
//! history; the bootstrap's older candles reach kline-signals after them. Then, with more live
//! candles closed, `signals` must hold exactly one row for every closed candle from the first
//! live one on (none missing, none for the history, no `insufficient_data`) and the SIGNALS
//! stream exactly one event per row.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use klinebus_schemas::streams::{Retention, CANDLES_STREAM, KLINES_STREAM};
use klinebus_schemas::{bus, Interval};
use klinebus_testkit::{NatsServer, TestDb};

mod support;
use support::{
    assert_one_signal_per_candle, assert_table_equals_exchange, caught_up, closed, signals,
    wait_until, Proc,
};

/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;
/// A 1m candle closes every 500 ms of wall time.
const SPEED: &str = "120";
const SYMBOLS: [&str; 2] = ["BTCUSDT", "ETHUSDT"];
/// Live candles per series that must close before the backfill starts (they have no history).
const BEFORE_BOOTSTRAP: i64 = 3;
/// Live candles per series closed in all before the check.
const LIVE: i64 = 40;

/// True once the `signals` consumer has acked everything the CANDLES stream holds.
async fn signals_caught_up(js: &async_nats::jetstream::Context) -> bool {
    caught_up(js, CANDLES_STREAM, "signals").await
}

/// The simulator (accelerated clock), a private nats-server and a fresh database.
struct Setup {
    sim: binance_sim::SimHandle,
    nats: NatsServer,
    db: TestDb,
}

async fn setup() -> Setup {
    Setup {
        sim: support::sim(T0, &["--speed", SPEED, "--symbols", &SYMBOLS.join(",")]).await,
        nats: NatsServer::start(),
        db: TestDb::fresh().await,
    }
}

/// The environment every service process gets: as an operator's shell would set it.
fn service_env(
    sim: &binance_sim::SimHandle,
    nats: &NatsServer,
    db: &TestDb,
) -> Vec<(&'static str, String)> {
    vec![
        ("NATS_URL", nats.url()),
        ("DATABASE_URL", db.url.clone()),
        ("METRICS_ADDR", "127.0.0.1:0".into()),
        ("TRADING_PAIRS", SYMBOLS.join(",")),
        ("TIMEFRAMES", "1m".into()),
        ("BINANCE_REST_URL", sim.base_url()),
        ("BINANCE_ARCHIVE_URL", sim.base_url()),
        ("BINANCE_WS_URL", sim.ws_url()),
    ]
}

fn as_pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn start_pg_sink(env: &[(&str, &str)]) -> Proc {
    let bin = env!("CARGO_BIN_EXE_e2e-kline-pg-sink");
    Proc::start_with_env("kline-pg-sink", bin, &["--flush-interval-ms", "50"], env)
}

fn start_signals(env: &[(&str, &str)]) -> Proc {
    let bin = env!("CARGO_BIN_EXE_e2e-kline-signals");
    Proc::start_with_env("kline-signals", bin, &[], env)
}

fn start_live(env: &[(&str, &str)]) -> Proc {
    Proc::start_with_env("kline-live", env!("CARGO_BIN_EXE_e2e-kline-live"), &[], env)
}

fn start_backfill(env: &[(&str, &str)]) -> Proc {
    let bin = env!("CARGO_BIN_EXE_e2e-kline-backfill");
    Proc::start_with_env(
        "kline-backfill",
        bin,
        &["--days", "2", "--progress", "quiet"],
        env,
    )
}

/// Waits until the sink, then kline-signals, have processed everything the streams hold, then
/// stops kline-signals and the sink with SIGTERM: both must exit cleanly.
async fn drain_then_stop(
    js: &async_nats::jetstream::Context,
    timeout: Duration,
    signals: Proc,
    sink: Proc,
) {
    wait_until(
        "the sink, then kline-signals, to process everything",
        timeout,
        || {
            let js = js.clone();
            async move {
                caught_up(&js, KLINES_STREAM, "pg-sink").await && signals_caught_up(&js).await
            }
        },
    )
    .await;
    let status = signals.terminate().await;
    assert!(status.success(), "kline-signals on SIGTERM: {status}");
    let status = sink.terminate().await;
    assert!(status.success(), "kline-pg-sink on SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_live_candle_gets_one_signal_with_the_readme_start_order() {
    let started = Instant::now();
    let Setup { sim, nats, db } = setup().await;
    let client = bus::connect(&bus::BusOptions::new(nats.url(), "e2e-signals-order"))
        .await
        .unwrap();
    let js = bus::jetstream(client, 1024);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    let env = service_env(&sim, &nats, &db);
    let common = as_pairs(&env);

    // The sinks run first, as in the README.
    let sink = start_pg_sink(&common);
    let signals_proc = start_signals(&common);
    // kline-live first: it covers from now on …
    let live = start_live(&common);
    let pool = db.pool.clone();
    wait_until(
        "the first live candles, announced and processed",
        Duration::from_secs(30),
        || {
            let (pool, js) = (pool.clone(), js.clone());
            async move {
                for s in SYMBOLS {
                    if (closed(&pool, s, 0).await.len() as i64) < BEFORE_BOOTSTRAP {
                        return false;
                    }
                }
                signals_caught_up(&js).await
            }
        },
    )
    .await;
    let mut first_live = Vec::new();
    for s in SYMBOLS {
        let stored = closed(&db.pool, s, 0).await;
        assert!(
            signals(&db.pool, s).await.is_empty(),
            "{s}: no signal without history"
        );
        first_live.push(stored[0]);
    }
    eprintln!(
        "[{:5.1}s] live candles stored before the bootstrap: first {:?}",
        started.elapsed().as_secs_f64(),
        first_live
    );

    // … and the bootstrap everything before.
    let mut backfill = start_backfill(&common);
    let status = backfill.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "kline-backfill: {status:?}");
    eprintln!("[{:5.1}s] backfill done", started.elapsed().as_secs_f64());

    // More live candles close.
    wait_until("more live candles", Duration::from_secs(60), || {
        let pool = pool.clone();
        let first = first_live.clone();
        async move {
            for (s, f) in SYMBOLS.iter().zip(&first) {
                if (closed(&pool, s, *f).await.len() as i64) < LIVE {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let status = live.terminate().await;
    assert!(status.success(), "live on SIGTERM: {status}");
    drain_then_stop(&js, Duration::from_secs(30), signals_proc, sink).await;
    eprintln!(
        "[{:5.1}s] pipeline stopped",
        started.elapsed().as_secs_f64()
    );

    // The history really is there (the series were warm), and older than the live candles.
    let day = Interval::M1.count_between(0, 86_400_000) as usize;
    for (s, first) in SYMBOLS.iter().zip(&first_live) {
        let history = closed(&db.pool, s, 0).await;
        assert!(
            history.len() > 2 * day - 10,
            "{s}: {} candles",
            history.len()
        );
        let live = closed(&db.pool, s, *first).await;
        // Every closed candle from the first live one on: contiguous, so none went unseen.
        for w in live.windows(2) {
            assert_eq!(
                Interval::M1.next_open(w[0]),
                w[1],
                "{s}: the table has a hole"
            );
        }
    }
    let total = assert_one_signal_per_candle(&db.pool, &js, &SYMBOLS, &first_live).await;
    eprintln!(
        "[{:5.1}s] {total} signals, one per live candle",
        started.elapsed().as_secs_f64()
    );
}

/// The reverse of the README's order: the producers first (the bootstrap, then kline-live),
/// the sink and kline-signals only after them, so everything reaches them from the streams'
/// retained history. The table must then equal the simulator's candles over the whole window,
/// and every candle that closed while kline-signals ran must have exactly one signal (the
/// candles before it started, live or not, may only warm the series).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reverse_start_order_ends_with_the_exchange_candles_and_a_signal_each() {
    let Setup { sim, nats, db } = setup().await;
    let env = service_env(&sim, &nats, &db);
    let common = as_pairs(&env);
    let mut backfill = start_backfill(&common);
    let window_start = Interval::M1.align(sim.clock().now_ms() - 2 * 86_400_000);
    let status = backfill.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "kline-backfill: {status:?}");
    let live_from = Interval::M1.next_open(sim.clock().now_ms());
    let live = start_live(&common);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sink = start_pg_sink(&common);
    // The contract: a signal for every candle that closes while kline-signals runs.
    let signals_from = Interval::M1.next_open(sim.clock().now_ms());
    let signals_proc = start_signals(&common);
    let pool = db.pool.clone();
    wait_until("live candles stored", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            for s in SYMBOLS {
                if (closed(&pool, s, live_from).await.len() as i64) < LIVE / 2 {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let status = live.terminate().await;
    assert!(status.success(), "kline-live on SIGTERM: {status}");
    let client = bus::connect(&bus::BusOptions::new(nats.url(), "e2e-reverse-order"))
        .await
        .unwrap();
    let js = bus::jetstream(client, 1024);
    drain_then_stop(&js, Duration::from_secs(60), signals_proc, sink).await;

    for s in SYMBOLS {
        let stored = closed(&db.pool, s, live_from).await;
        let end = Interval::M1.next_open(*stored.last().unwrap());
        // The bootstrap's window began when it read the exchange clock, a moment after ours.
        let first = closed(&db.pool, s, 0).await[0];
        assert!(
            first <= window_start + 2 * 60_000,
            "{s}: history from {first}"
        );
        assert_table_equals_exchange(&db.pool, &sim, s, Interval::M1, first, end).await;
        let rows = signals(&db.pool, s).await;
        let live_rows: Vec<_> = rows.iter().filter(|r| r.0 >= signals_from).collect();
        let at: Vec<i64> = live_rows.iter().map(|r| r.0).collect();
        let want: Vec<i64> = stored.into_iter().filter(|t| *t >= signals_from).collect();
        assert!(
            want.len() as i64 >= LIVE / 4,
            "{s}: {} live candles",
            want.len()
        );
        assert_eq!(
            at, want,
            "{s}: exactly one signal per candle closed while kline-signals ran"
        );
        assert!(
            live_rows.iter().all(|r| r.1 != "insufficient_data"),
            "{s}: {live_rows:?}"
        );
    }
}
