//! PostgreSQL failover without restarts: a primary and a synchronous streaming standby (two
//! private clusters, `pg_basebackup`), `kline-pg-sink` and `kline-signals` as processes given
//! both hosts in one URL (`postgres://…@127.0.0.1:P1,127.0.0.1:P2/klinebus`), `kline-live`
//! (a process too) feeding them live candles from the simulator at 120×. Mid-stream the primary is SIGKILLed (its
//! postmaster and every backend at once) and the standby promoted. Then:
//!
//! - the same service processes carry on (none exited): the sink's and kline-signals' pools
//!   turn to the new primary by themselves, kline-signals takes its ownership lock again there;
//! - the table on the new primary equals the simulator's candles exactly (nothing lost,
//!   nothing duplicated, nothing different), and `signals` holds exactly one row per closed
//!   candle (`--store-insufficient`: a row even before the indicators are warm);
//! - `klinectl status` works with the same URL list;
//! - the takeover time is printed: SIGKILL → promoted, and SIGKILL → the first row written on
//!   the new primary (by the sink, and by kline-signals), from the rows' `updated_at`.
//!
//! Synchronous replication is what makes "nothing lost" hold: the sink acks a message once
//! PostgreSQL confirmed the commit, and with asynchronous replication the last confirmed
//! commits may not have reached the standby when the primary dies.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use klinebus_schemas::streams::{Retention, CANDLES_STREAM, KLINES_STREAM};
use klinebus_schemas::{bus, Interval};
use klinebus_testkit::{NatsServer, PgServer};
use sqlx::PgPool;

mod support;
use support::{assert_table_equals_exchange, caught_up, wait_until, Proc};

/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;
/// A 1m candle closes every 500 ms of wall time.
const SPEED: &str = "120";
const SYMBOLS: [&str; 3] = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
/// Closed candles per series before the kill, and after it.
const BEFORE: usize = 8;
const AFTER: usize = 16;
/// What the test allows from the SIGKILL until the new primary is written to.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(20);

/// Open times of the closed 1m candles stored for `symbol`; empty while the database is away.
async fn closed(pool: &PgPool, symbol: &str) -> Vec<i64> {
    sqlx::query_scalar(
        r#"SELECT "timestamp" FROM ohlcv_candles
           WHERE symbol = $1 AND timeframe = '1m' AND is_closed ORDER BY 1"#,
    )
    .bind(symbol)
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

/// Open times of `symbol`'s 1m `signals` rows (one per candle by the primary key).
async fn signal_times(pool: &PgPool, symbol: &str) -> Vec<i64> {
    sqlx::query_scalar(
        r#"SELECT "timestamp" FROM signals WHERE symbol = $1 AND timeframe = '1m' ORDER BY 1"#,
    )
    .bind(symbol)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The first row `table` got after `after_ms` (Unix ms), as seconds after it; None yet.
async fn first_write_after(pool: &PgPool, table: &str, after_ms: i64) -> Option<f64> {
    let sql = format!(
        "SELECT extract(epoch FROM min(updated_at))::float8 * 1000 - $1 FROM {table} \
         WHERE updated_at > to_timestamp($1 / 1000.0)"
    );
    sqlx::query_scalar::<_, Option<f64>>(sqlx::AssertSqlSafe(sql))
        .bind(after_ms as f64)
        .fetch_one(pool)
        .await
        .ok()
        .flatten()
        .map(|ms| ms / 1000.0)
}

/// Every series holds at least `n` closed candles.
async fn at_least(pool: &PgPool, n: usize) -> bool {
    for s in SYMBOLS {
        if closed(pool, s).await.len() < n {
            return false;
        }
    }
    true
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_follow_a_promoted_standby_without_a_restart() {
    let started = Instant::now();
    let mark = |what: &str| eprintln!("[{:5.1}s] {what}", started.elapsed().as_secs_f64());
    let sim = support::sim(T0, &["--speed", SPEED, "--symbols", &SYMBOLS.join(",")]).await;
    let nats = NatsServer::start();
    let mut primary = PgServer::start();
    let admin = PgPool::connect(&primary.admin_url()).await.unwrap();
    sqlx::raw_sql("CREATE DATABASE klinebus")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    // Plain pools on each server for the test's own reads (they never fail over).
    let on = |port: u16| format!("postgres://postgres@127.0.0.1:{port}/klinebus?sslmode=disable");
    let old = PgPool::connect(&on(primary.port())).await.unwrap();
    klinebus_migrations::run(&old).await.unwrap();
    let mut standby = primary.standby(true);
    mark("primary, synchronous standby, nats-server and the simulator are up");

    let client = bus::connect(&bus::BusOptions::new(nats.url(), "e2e-pg-failover"))
        .await
        .unwrap();
    let js = bus::jetstream(client, 1024);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/klinebus?sslmode=disable&\
         target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let env = [
        ("NATS_URL", nats.url()),
        ("DATABASE_URL", url.clone()),
        ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("TRADING_PAIRS", SYMBOLS.join(",")),
        ("TIMEFRAMES", "1m".to_owned()),
        ("BINANCE_REST_URL", sim.base_url()),
        ("BINANCE_WS_URL", sim.ws_url()),
    ];
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut sink = Proc::start_with_env(
        "kline-pg-sink",
        env!("CARGO_BIN_EXE_e2e-kline-pg-sink"),
        &["--flush-interval-ms", "50", "--ack-wait-secs", "5"],
        &pairs,
    );
    let mut signals = Proc::start_with_env(
        "kline-signals",
        env!("CARGO_BIN_EXE_e2e-kline-signals"),
        &["--store-insufficient"],
        &pairs,
    );
    let live = Proc::start_with_env(
        "kline-live",
        env!("CARGO_BIN_EXE_e2e-kline-live"),
        &[],
        &pairs,
    );

    wait_until(
        "live candles on the primary",
        Duration::from_secs(60),
        || at_least(&old, BEFORE),
    )
    .await;
    mark("candles flowing; SIGKILL the primary");
    let killed_at = now_ms();
    let kill_started = Instant::now();
    primary.kill();
    standby.promote();
    let promoted = kill_started.elapsed();
    mark(&format!(
        "standby promoted {:.2} s after the kill",
        promoted.as_secs_f64()
    ));
    old.close().await;
    let new = PgPool::connect(&on(standby.port())).await.unwrap();
    let floor = {
        let mut n = usize::MAX;
        for s in SYMBOLS {
            n = n.min(closed(&new, s).await.len());
        }
        n
    };
    wait_until(
        "the first writes on the new primary",
        TAKEOVER_LIMIT,
        || async {
            first_write_after(&new, "ohlcv_candles", killed_at)
                .await
                .is_some()
                && first_write_after(&new, "signals", killed_at)
                    .await
                    .is_some()
        },
    )
    .await;
    let sink_took = first_write_after(&new, "ohlcv_candles", killed_at)
        .await
        .unwrap();
    let signals_took = first_write_after(&new, "signals", killed_at).await.unwrap();
    eprintln!(
        "TAKEOVER: SIGKILL → standby promoted {:.2} s; SIGKILL → first write on the new \
         primary: kline-pg-sink {sink_took:.2} s, kline-signals {signals_took:.2} s \
         (check interval 1 s)",
        promoted.as_secs_f64()
    );

    wait_until(
        "more live candles on the new primary",
        Duration::from_secs(60),
        || at_least(&new, floor + AFTER),
    )
    .await;
    // The processes started before the kill, never restarted.
    assert!(sink.is_running(), "kline-pg-sink exited");
    assert!(signals.is_running(), "kline-signals exited");
    mark("the same sink and kline-signals processes write to the new primary");
    let status = live.terminate().await;
    assert!(status.success(), "kline-live on SIGTERM: {status}");
    wait_until(
        "the sink and kline-signals to process everything",
        Duration::from_secs(60),
        || async {
            caught_up(&js, KLINES_STREAM, "pg-sink").await
                && caught_up(&js, CANDLES_STREAM, "signals").await
        },
    )
    .await;

    // klinectl with the same URL list finds the new primary.
    let out = Command::new(env!("CARGO_BIN_EXE_e2e-klinectl"))
        .args(["status", "--json"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "klinectl status: {}", out.status);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    for s in SYMBOLS {
        let stored = closed(&new, s).await;
        let (first, last) = (stored[0], *stored.last().unwrap());
        let n = assert_table_equals_exchange(&new, &sim, s, Interval::M1, first, last + 1).await;
        assert!(n >= floor + AFTER, "{s}: {n} candles");
        assert_eq!(
            signal_times(&new, s).await,
            stored,
            "{s}: one signal row per closed candle"
        );
        let row = status["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["symbol"] == s && r["timeframe"] == "1m")
            .unwrap_or_else(|| panic!("{s} not in klinectl status: {status}"));
        assert_eq!(row["last_closed_timestamp"], last, "{s}: klinectl status");
    }
    for (name, p) in [("kline-signals", signals), ("kline-pg-sink", sink)] {
        let status = p.terminate().await;
        assert!(status.success(), "{name} on SIGTERM: {status}");
    }
    mark("table equals the exchange; one signal per candle; klinectl status ok");
}

/// The pool itself: a standby listed first is skipped (it is read-only), no read-write host is
/// an error naming each host's state, and after a promotion the pool writes to the new
/// primary.
#[tokio::test]
async fn a_pool_takes_the_read_write_host_whatever_its_place_in_the_list() {
    let mut primary = PgServer::start();
    let mut standby = primary.standby(false);
    let url = |ports: [u16; 2]| {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?sslmode=disable",
            ports[0], ports[1]
        )
    };
    let standby_first = url([standby.port(), primary.port()]);
    let pool = klinebus_svc::db::connect(
        &standby_first,
        sqlx::postgres::PgPoolOptions::new().acquire_timeout(Duration::from_secs(5)),
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    assert_eq!(pool.connect_options().get_port(), primary.port());
    sqlx::raw_sql("CREATE TABLE t (n int)")
        .execute(&pool)
        .await
        .unwrap();

    primary.kill();
    let e = klinebus_svc::db::connect(
        &standby_first,
        sqlx::postgres::PgPoolOptions::new(),
        Duration::from_secs(1),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!("127.0.0.1:{}: read-only", standby.port())),
        "{e}"
    );
    standby.promote();
    wait_until(
        "the pool on the promoted standby",
        Duration::from_secs(10),
        || async {
            sqlx::query("INSERT INTO t VALUES (1)")
                .execute(&pool)
                .await
                .is_ok()
        },
    )
    .await;
    assert_eq!(pool.connect_options().get_port(), standby.port());
    pool.close().await;
}
