//! A JetStream node lost while candles flow, on the three-node cluster of `compose/nats/` (the
//! real config files and roles, local processes), every service a process with its own role and
//! all three node URLs, the streams at three replicas as compose's migrate job applies them.
//!
//! The README's start order with the simulator at an accelerated clock: the sinks, kline-live,
//! then kline-backfill for 30 days of 1m history. 4 s into the backfill the KLINES leader is
//! SIGKILLed and started again 10 s later (the two left elect a leader meanwhile); once the backfill is done (it must succeed, with
//! `--verify`), another node is SIGKILLed during live ingestion alone and brought back the
//! same way. No process may stop; the table must end equal to the simulator's candles over the
//! whole window, and `signals` hold one row per live candle. The test prints how long it took
//! from each kill until KLINES stored candles again and until the sink wrote again.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use klinebus_schemas::streams::{CANDLES_STREAM, KLINES_STREAM};
use klinebus_schemas::Interval;
use klinebus_testkit::TestDb;
use sqlx::PgPool;

mod support;
use support::cluster::{stream_leader, Cluster, ADMIN, PG_SINK, PRODUCER, SIGNALS};
use support::{
    assert_one_signal_per_candle, assert_table_equals_exchange, caught_up, closed, table_state,
    wait_until_or_explain, Proc,
};

/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;
/// A 1m candle closes every second of wall time.
const SPEED: &str = "60";
const SYMBOLS: [&str; 4] = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"];
const DAYS: i64 = 30;
/// Live candles per series that close after the second node is back, before the check.
const LIVE_AFTER: usize = 15;
/// How long a killed node stays down.
const DOWN: Duration = Duration::from_secs(10);

/// What every service process gets, as an operator's shell (or compose) would set it.
fn service_env(
    sim: &binance_sim::SimHandle,
    cluster: &Cluster,
    db: &TestDb,
) -> Vec<(&'static str, String)> {
    vec![
        ("NATS_URL", cluster.urls()),
        ("NATS_STREAM_REPLICAS", "3".into()),
        ("DATABASE_URL", db.url.clone()),
        ("METRICS_ADDR", "127.0.0.1:0".into()),
        ("TRADING_PAIRS", SYMBOLS.join(",")),
        ("TIMEFRAMES", "1m".into()),
        ("BINANCE_REST_URL", sim.base_url()),
        ("BINANCE_ARCHIVE_URL", sim.base_url()),
        ("BINANCE_WS_URL", sim.ws_url()),
    ]
}

/// `common` plus `role`'s credentials, for one process.
fn with_role<'a>(
    common: &'a [(&'static str, String)],
    role: (&'a str, &'a str),
) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<(&str, &str)> = common.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([("NATS_USER", role.0), ("NATS_PASSWORD", role.1)]);
    env
}

/// The time from `killed` until KLINES stored a message again, and until the sink wrote a row
/// again; watched on the surviving nodes, every 100 ms.
struct Recovery {
    /// Until KLINES had a leader again: another node, or the killed one once it is back (the
    /// two left do not always elect one without it).
    elected: Duration,
    stored: Duration,
    written: Duration,
}

/// Where the flow stood just before a kill: KLINES's last sequence and the database's clock.
struct BeforeKill {
    at: Instant,
    /// The killed node's name.
    victim: String,
    sequence: u64,
    db_now: f64,
}

async fn before_kill(
    js: &async_nats::jetstream::Context,
    pool: &PgPool,
    victim: usize,
) -> BeforeKill {
    BeforeKill {
        victim: format!("nats-{}", victim + 1),
        sequence: last_sequence(js)
            .await
            .expect("KLINES has a leader before the kill"),
        db_now: sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
            .fetch_one(pool)
            .await
            .unwrap(),
        at: Instant::now(),
    }
}

async fn watch_recovery(
    js: &async_nats::jetstream::Context,
    pool: &PgPool,
    before: BeforeKill,
    back: &AtomicBool,
) -> Recovery {
    let killed = before.at;
    let (mut elected, mut stored, mut written) = (None, None, None);
    while elected.is_none() || stored.is_none() || written.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "candles did not flow again within 120 s of the kill (stored {stored:?}, written {written:?})"
        );
        if elected.is_none()
            && probe(stream_leader(js, KLINES_STREAM))
                .await
                .is_some_and(|l| l != before.victim || back.load(Ordering::Relaxed))
        {
            elected = Some(killed.elapsed());
        }
        if stored.is_none() && last_sequence(js).await.is_some_and(|n| n > before.sequence) {
            stored = Some(killed.elapsed());
        }
        if written.is_none() {
            let wrote: Option<bool> = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM ohlcv_candles
                                WHERE updated_at > to_timestamp($1))",
            )
            .bind(before.db_now)
            .fetch_one(pool)
            .await
            .ok();
            if wrote == Some(true) {
                written = Some(killed.elapsed());
            }
        }
        support::sleep_ms(100).await;
    }
    Recovery {
        elected: elected.unwrap(),
        stored: stored.unwrap(),
        written: written.unwrap(),
    }
}

/// A probe of the cluster, given up after 300 ms so that a request timing out (5 s) during the
/// election does not blur the times measured.
async fn probe<T>(f: impl std::future::Future<Output = Option<T>>) -> Option<T> {
    tokio::time::timeout(Duration::from_millis(300), f)
        .await
        .ok()
        .flatten()
}

/// KLINES's last sequence, `None` while no node can tell (no leader).
async fn last_sequence(js: &async_nats::jetstream::Context) -> Option<u64> {
    probe(async {
        let mut s = js.get_stream(KLINES_STREAM).await.ok()?;
        Some(s.info().await.ok()?.state.last_sequence)
    })
    .await
}

/// Waits until `stream` has a leader; its name.
async fn leader_of(js: &async_nats::jetstream::Context, stream: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = stream_leader(js, stream).await {
            return l;
        }
        assert!(Instant::now() < deadline, "{stream} has no leader");
        support::sleep_ms(100).await;
    }
}

/// SIGKILLs node `victim`, starts it again [`DOWN`] later, and waits until candles flow
/// again: how long that took, and whether it was only after the node was back.
async fn lose_node(
    cluster: &mut Cluster,
    victim: usize,
    js: &async_nats::jetstream::Context,
    pool: &PgPool,
) -> (Recovery, bool) {
    let before = before_kill(js, pool, victim).await;
    cluster.nodes[victim].stop();
    let back = Arc::new(AtomicBool::new(false));
    let recovery = {
        let (js, pool, back) = (js.clone(), pool.clone(), back.clone());
        tokio::spawn(async move {
            let r = watch_recovery(&js, &pool, before, &back).await;
            (r, back.load(Ordering::Relaxed))
        })
    };
    tokio::time::sleep(DOWN).await;
    cluster.nodes[victim].start_again();
    back.store(true, Ordering::Relaxed);
    eprintln!("nats-{} started again", victim + 1);
    recovery.await.unwrap()
}

/// Panics naming the first service that is not running.
fn all_running(procs: &mut [(&str, &mut Proc)]) {
    for (name, p) in procs.iter_mut() {
        assert!(p.is_running(), "{name} stopped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_jetstream_node_loses_no_candle_and_stops_no_process() {
    let started = Instant::now();
    let at = || started.elapsed().as_secs_f64();
    let mut cluster = Cluster::start().await;
    // The operator's part, as compose's migrate job: the streams at three replicas, as admin.
    let mut apply = Proc::start(
        "klinectl",
        env!("CARGO_BIN_EXE_e2e-klinectl"),
        &[
            "--nats-url",
            &cluster.urls(),
            "--nats-user",
            ADMIN.0,
            "--nats-password",
            ADMIN.1,
            "--stream-replicas",
            "3",
            "streams",
            "apply",
        ],
    );
    let status = apply.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "klinectl streams apply: {status}");
    let js = cluster.jetstream(ADMIN).await;

    let sim = support::sim(T0, &["--speed", SPEED, "--symbols", &SYMBOLS.join(",")]).await;
    let db = TestDb::fresh().await;
    let common = service_env(&sim, &cluster, &db);
    let mut sink = Proc::start_with_env(
        "kline-pg-sink",
        env!("CARGO_BIN_EXE_e2e-kline-pg-sink"),
        &["--flush-interval-ms", "50"],
        &with_role(&common, PG_SINK),
    );
    let mut signals_proc = Proc::start_with_env(
        "kline-signals",
        env!("CARGO_BIN_EXE_e2e-kline-signals"),
        &[],
        &with_role(&common, SIGNALS),
    );
    let mut live = Proc::start_with_env(
        "kline-live",
        env!("CARGO_BIN_EXE_e2e-kline-live"),
        &[],
        &with_role(&common, PRODUCER),
    );
    let pool = db.pool.clone();
    wait_until_or_explain(
        "the first live candles",
        Duration::from_secs(60),
        || {
            let pool = pool.clone();
            async move {
                for s in SYMBOLS {
                    if closed(&pool, s, 0).await.len() < 3 {
                        return false;
                    }
                }
                true
            }
        },
        || async { format!("{}\n{}", table_state(&pool).await, cluster.state(&js).await) },
    )
    .await;
    eprintln!("[{:5.1}s] the first live candles are stored", at());
    let mut first_live = Vec::new();
    for s in SYMBOLS {
        first_live.push(closed(&pool, s, 0).await[0]);
    }

    // The bootstrap, and the KLINES leader lost 4 s into it.
    let window_start = Interval::M1.align(sim.clock().now_ms() - DAYS * 86_400_000);
    let days = DAYS.to_string();
    let mut backfill = Proc::start_with_env(
        "kline-backfill",
        env!("CARGO_BIN_EXE_e2e-kline-backfill"),
        &["--days", &days, "--verify", "--progress", "quiet"],
        &with_role(&common, PRODUCER),
    );
    let backfill_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(backfill.is_running(), "the backfill ended before the kill");
    let first_victim = cluster.index_of(&leader_of(&js, KLINES_STREAM).await);
    eprintln!(
        "[{:5.1}s] SIGKILL nats-{} (KLINES leader) during the backfill",
        at(),
        first_victim + 1
    );
    let (first, first_after_back) = lose_node(&mut cluster, first_victim, &js, &pool).await;
    let status = backfill.wait(Duration::from_secs(240)).await;
    assert!(status.success(), "kline-backfill (with --verify): {status}");
    eprintln!(
        "[{:5.1}s] backfill done in {:.1} s",
        at(),
        backfill_started.elapsed().as_secs_f64()
    );
    all_running(&mut [
        ("kline-pg-sink", &mut sink),
        ("kline-signals", &mut signals_proc),
        ("kline-live", &mut live),
    ]);

    // Another node lost while only kline-live publishes.
    let klines_leader = cluster.index_of(&leader_of(&js, KLINES_STREAM).await);
    let second_victim = if klines_leader == first_victim {
        cluster.index_of(&leader_of(&js, CANDLES_STREAM).await)
    } else {
        klines_leader
    };
    let second_victim = if second_victim == first_victim {
        (first_victim + 1) % 3
    } else {
        second_victim
    };
    eprintln!(
        "[{:5.1}s] SIGKILL nats-{} during live ingestion",
        at(),
        second_victim + 1
    );
    let (second, second_after_back) = lose_node(&mut cluster, second_victim, &js, &pool).await;
    let back_at = Interval::M1.next_open(sim.clock().now_ms());
    wait_until_or_explain(
        "live candles after the node is back",
        Duration::from_secs(90),
        || {
            let pool = pool.clone();
            async move {
                for s in SYMBOLS {
                    if closed(&pool, s, back_at).await.len() < LIVE_AFTER {
                        return false;
                    }
                }
                true
            }
        },
        || async { format!("{}\n{}", table_state(&pool).await, cluster.state(&js).await) },
    )
    .await;
    all_running(&mut [
        ("kline-pg-sink", &mut sink),
        ("kline-signals", &mut signals_proc),
        ("kline-live", &mut live),
    ]);

    // Stop as an operator does: the producer, then the sinks once they caught up.
    let end = Interval::M1.align(sim.clock().now_ms()) - 60_000;
    let status = live.terminate().await;
    assert!(status.success(), "kline-live on SIGTERM: {status}");
    wait_until_or_explain(
        "the sink and kline-signals to catch up",
        Duration::from_secs(90),
        || {
            let js = js.clone();
            async move {
                caught_up(&js, KLINES_STREAM, "pg-sink").await
                    && caught_up(&js, CANDLES_STREAM, "signals").await
            }
        },
        || async { format!("{}\n{}", table_state(&pool).await, cluster.state(&js).await) },
    )
    .await;
    let status = signals_proc.terminate().await;
    assert!(status.success(), "kline-signals on SIGTERM: {status}");
    let status = sink.terminate().await;
    assert!(status.success(), "kline-pg-sink on SIGTERM: {status}");

    let mut rows = 0;
    for s in SYMBOLS {
        rows +=
            assert_table_equals_exchange(&pool, &sim, s, Interval::M1, window_start + 300_000, end)
                .await;
    }
    let signals = assert_one_signal_per_candle(&pool, &js, &SYMBOLS, &first_live).await;
    let say = |what: &str, r: &Recovery, after_back: bool| {
        eprintln!(
            "{what}: KLINES had a leader again {:.1} s after the kill, stored again after {:.1} s, the sink wrote again after {:.1} s ({} the node was back)",
            r.elected.as_secs_f64(),
            r.stored.as_secs_f64(),
            r.written.as_secs_f64(),
            if after_back { "after" } else { "before" }
        );
    };
    say(
        "KLINES leader lost during the backfill",
        &first,
        first_after_back,
    );
    say(
        "another node lost during live ingestion",
        &second,
        second_after_back,
    );
    eprintln!(
        "[{:5.1}s] {rows} candles equal the exchange's, {signals} signals one per live candle",
        at()
    );
}
