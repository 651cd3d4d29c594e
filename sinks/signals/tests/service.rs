//! The `kline-signals` service against a private NATS server and a fresh PostgreSQL database:
//! closed-candle events in, `signals` rows and SIGNALS events out, equal to computing
//! `SeriesState` directly.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use clap::Parser;
use kline_signals::service::store::OwnerLock;
use kline_signals::{Candle, Config, Outcome, SeriesState, SignalReport, StrategyConfig};
use klinebus_consume::consumer_lag;
use klinebus_schemas::bus;
use klinebus_schemas::streams::{Retention, CANDLES_STREAM, SIGNALS_STREAM};
use klinebus_schemas::{KlineEvent, Source};
use klinebus_testkit::{NatsServer, TestDb};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::{commit, fixture_events};

async fn js_for(url: &str) -> Context {
    let client = async_nats::connect(url).await.unwrap();
    let js = bus::jetstream(client, 1024);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    js
}

/// Publishes as kline-pg-sink does after its commits, `per_message` candles a message (1 for
/// live candles, up to 500 for a backfill's flush).
async fn publish_closed_in(js: &Context, events: &[KlineEvent], per_message: usize) {
    let refs: Vec<&KlineEvent> = events.iter().collect();
    let mut acks = Vec::new();
    for chunk in refs.chunks(per_message) {
        acks.extend(bus::publish_closed(js, chunk).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// Publishes one candle a message, as kline-pg-sink does for live candles.
async fn publish_closed(js: &Context, events: &[KlineEvent]) {
    publish_closed_in(js, events, 1).await;
}

/// Outcomes of feeding the events to one `SeriesState` directly, by open time.
fn direct(events: &[KlineEvent]) -> Vec<(i64, Outcome)> {
    let e0 = &events[0];
    let mut s = SeriesState::new(&StrategyConfig::default(), e0.symbol.clone(), e0.interval);
    events
        .iter()
        .map(|e| (e.open_time, s.apply(&Candle::from_event(e).unwrap())))
        .collect()
}

fn reports(outcomes: &[(i64, Outcome)]) -> Vec<SignalReport> {
    outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Signal(r) => Some(r.as_ref().clone()),
            _ => None,
        })
        .collect()
}

type SignalRowT = (i64, String, f64, String, serde_json::Value);

async fn rows(pool: &PgPool) -> Vec<SignalRowT> {
    sqlx::query_as::<
        _,
        (
            i64,
            String,
            f64,
            String,
            sqlx::types::Json<serde_json::Value>,
        ),
    >(
        r#"SELECT "timestamp", action, confidence, regime, details FROM signals
           WHERE symbol = 'BTCUSDT' AND timeframe = '1h' ORDER BY "timestamp""#,
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(t, a, c, r, d)| (t, a, c, r, d.0))
    .collect()
}

async fn updated(pool: &PgPool) -> Vec<(i64, String)> {
    sqlx::query_as(r#"SELECT "timestamp", updated_at::text FROM signals ORDER BY "timestamp""#)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Rows must be exactly the reports (action, confidence, regime, details).
fn assert_rows_are(rows: &[SignalRowT], expected: &[SignalReport]) {
    assert_eq!(rows.len(), expected.len(), "one row per signal");
    for (row, r) in rows.iter().zip(expected) {
        let want_action = serde_json::to_value(r.action).unwrap();
        assert_eq!(row.0, r.open_time);
        assert_eq!(
            row.1,
            want_action.as_str().unwrap(),
            "action at {}",
            r.open_time
        );
        assert_eq!(row.2, r.confidence, "confidence at {}", r.open_time);
        assert_eq!(
            serde_json::to_value(r.regime).unwrap().as_str().unwrap(),
            row.3
        );
        // JSONB keeps the decimal digits serde_json wrote; compare through the same parser
        // (serde_json's default float parsing may be off by an ulp, both sides alike).
        let want: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
        assert_eq!(row.4, want, "details at {}", r.open_time);
    }
}

fn config(nats: &str, db: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "kline-signals",
        "--nats-url",
        nats,
        "--database-url",
        db,
        "--metrics-addr",
        "off",
        "--ack-wait-secs",
        "5",
    ];
    args.extend_from_slice(extra);
    Config::try_parse_from(args).unwrap()
}

fn spawn(cfg: Config) -> (CancellationToken, JoinHandle<()>) {
    let token = CancellationToken::new();
    let t = token.clone();
    let h = tokio::spawn(async move { kline_signals::run(cfg, t).await.unwrap() });
    (token, h)
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Waits until the durable has delivered and settled everything (and has seen `at_least`
/// deliveries, so a just-recreated consumer is not mistaken for a finished one).
async fn wait_caught_up(js: &Context, durable: &str, stream_last: u64) {
    wait_for(
        "the consumer to catch up",
        Duration::from_secs(60),
        || async {
            let Ok(lag) = consumer_lag(js, CANDLES_STREAM, durable).await else {
                return false;
            };
            let Ok(mut stream) = js.get_stream(CANDLES_STREAM).await else {
                return false;
            };
            let Ok(c) = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable)
                .await
            else {
                return false;
            };
            let _ = stream.info().await;
            lag.is_caught_up() && c.cached_info().ack_floor.stream_sequence >= stream_last
        },
    )
    .await;
}

async fn stream_messages(js: &Context, name: &str) -> u64 {
    js.get_stream(name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

#[tokio::test]
async fn signals_equal_direct_computation_and_replays_change_nothing() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let events = fixture_events(200, Source::Backfill);
    commit(&db.pool, &events).await;
    publish_closed(&js, &events).await;
    let expected = reports(&direct(&events));
    assert_eq!(
        expected.len(),
        200 - kline_signals::lookback(&StrategyConfig::default()) + 1
    );

    let (stop, h) = spawn(config(&nats.url(), &db.url, &[]));
    wait_caught_up(&js, "signals", 200).await;
    stop.cancel();
    h.await.unwrap();
    let first = rows(&db.pool).await;
    assert_rows_are(&first, &expected);

    // Every signal is on the SIGNALS stream once; the last one is the last report.
    assert_eq!(
        stream_messages(&js, SIGNALS_STREAM).await,
        expected.len() as u64
    );
    let stream = js.get_stream(SIGNALS_STREAM).await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject("signals.binance.BTCUSDT.1h")
        .await
        .unwrap();
    assert_eq!(
        last.payload.as_ref(),
        serde_json::to_vec(expected.last().unwrap())
            .unwrap()
            .as_slice()
    );
    let msg_id = last
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_owned());
    assert_eq!(
        msg_id.as_deref(),
        Some(format!("binance:BTCUSDT:1h:{}", events[199].open_time).as_str())
    );

    // Replaying every event (new process, recreated consumer) changes nothing at all.
    let before = updated(&db.pool).await;
    let (stop, h) = spawn(config(&nats.url(), &db.url, &["--replay-from", "all"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_caught_up(&js, "signals", 200).await;
    stop.cancel();
    h.await.unwrap();
    assert_eq!(rows(&db.pool).await, first);
    assert_eq!(
        updated(&db.pool).await,
        before,
        "identical rows are not rewritten"
    );
    assert_eq!(
        stream_messages(&js, SIGNALS_STREAM).await,
        expected.len() as u64
    );

    // Deleting the results and replaying reproduces them exactly.
    sqlx::query("DELETE FROM signals")
        .execute(&db.pool)
        .await
        .unwrap();
    let (stop, h) = spawn(config(&nats.url(), &db.url, &["--replay-from", "all"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_caught_up(&js, "signals", 200).await;
    stop.cancel();
    h.await.unwrap();
    assert_eq!(rows(&db.pool).await, first);
}

#[tokio::test]
async fn multi_candle_messages_give_the_same_signals() {
    // A backfill's flush reaches the sink's CANDLES output as one message per series.
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let events = fixture_events(200, Source::Backfill);
    commit(&db.pool, &events).await;
    publish_closed_in(&js, &events, 37).await;
    let (stop, h) = spawn(config(&nats.url(), &db.url, &[]));
    wait_caught_up(&js, "signals", 200_u64.div_ceil(37)).await;
    stop.cancel();
    h.await.unwrap();
    assert_rows_are(&rows(&db.pool).await, &reports(&direct(&events)));
}

#[tokio::test]
async fn warms_from_postgres_at_first_sight() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let events = fixture_events(200, Source::Backfill);
    commit(&db.pool, &events).await;
    // Only the last five candles arrive as events; the history is in the table.
    publish_closed(&js, &events[195..]).await;
    let expected: Vec<SignalReport> = reports(&direct(&events))
        .into_iter()
        .filter(|r| r.open_time >= events[195].open_time)
        .collect();
    assert_eq!(expected.len(), 5);

    let (stop, h) = spawn(config(&nats.url(), &db.url, &[]));
    wait_caught_up(&js, "signals", 5).await;
    stop.cancel();
    h.await.unwrap();
    assert_rows_are(&rows(&db.pool).await, &expected);
}

#[tokio::test]
async fn a_gap_gives_insufficient_data_not_a_panic() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    // Candle 100 is missing from the table and from the events.
    let mut events = fixture_events(200, Source::Backfill);
    events.remove(100);
    commit(&db.pool, &events).await;
    publish_closed(&js, &events).await;
    let outcomes = direct(&events);

    let (stop, h) = spawn(config(&nats.url(), &db.url, &["--store-insufficient"]));
    wait_caught_up(&js, "signals", events.len() as u64).await;
    stop.cancel();
    h.await.unwrap();
    let got = rows(&db.pool).await;
    assert_eq!(got.len(), events.len(), "every candle has a row");
    let after_gap = events[100].open_time;
    for ((t, outcome), row) in outcomes.iter().zip(&got) {
        assert_eq!(*t, row.0);
        match outcome {
            Outcome::Signal(r) => {
                assert_eq!(row.2, r.confidence);
                assert_ne!(row.1, "insufficient_data");
            }
            Outcome::InsufficientData { reason, .. } => {
                assert_eq!(row.1, "insufficient_data", "at {t}");
                assert_eq!((row.2, row.3.as_str()), (0.0, "unknown"));
                assert_eq!(row.4["reason"].as_str(), Some(reason.as_str()));
                if *t == after_gap {
                    assert!(reason.starts_with("gap"), "{reason}");
                }
            }
            Outcome::Replay { .. } => panic!("no replays here"),
        }
    }
    // Signals resume once the lookback has refilled after the gap.
    let lookback = kline_signals::lookback(&StrategyConfig::default());
    assert_eq!(got[100 + lookback - 2].1, "insufficient_data");
    assert_ne!(got[100 + lookback - 1].1, "insufficient_data");
}

#[tokio::test]
async fn a_second_instance_waits_for_the_owner_lock() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let events = fixture_events(100, Source::Backfill);
    commit(&db.pool, &events).await;
    publish_closed(&js, &events).await;
    let owner = OwnerLock::try_acquire(&db.url, "signals")
        .await
        .unwrap()
        .unwrap();
    assert!(OwnerLock::try_acquire(&db.url, "signals")
        .await
        .unwrap()
        .is_none());

    let (stop, h) = spawn(config(&nats.url(), &db.url, &[]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(rows(&db.pool).await.is_empty(), "waiting, not consuming");
    // The owner goes away: the waiting instance takes over.
    owner.release().await;
    wait_caught_up(&js, "signals", 100).await;
    stop.cancel();
    h.await.unwrap();
    assert_eq!(rows(&db.pool).await.len(), reports(&direct(&events)).len());
}

/// A fresh database holding 200 candles, the service running and caught up on the first 120 of
/// them as events: the database, the test's context, the candles, and the service's stop handles.
async fn caught_up_on_120_of_200(
    nats: &NatsServer,
) -> (
    TestDb,
    Context,
    Vec<KlineEvent>,
    CancellationToken,
    JoinHandle<()>,
) {
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let events = fixture_events(200, Source::Backfill);
    commit(&db.pool, &events).await;
    publish_closed(&js, &events[..120]).await;
    let (stop, h) = spawn(config(&nats.url(), &db.url, &[]));
    wait_caught_up(&js, "signals", 120).await;
    (db, js, events, stop, h)
}

#[tokio::test]
async fn a_restart_mid_stream_gives_the_same_signals_as_one_run() {
    let nats = NatsServer::start();
    let (db, js, events, stop, h) = caught_up_on_120_of_200(&nats).await;
    stop.cancel();
    h.await.unwrap();
    // The new process warms the series from the table, then continues with the events.
    publish_closed(&js, &events[120..]).await;
    let (stop, h) = spawn(config(&nats.url(), &db.url, &[]));
    wait_caught_up(&js, "signals", 200).await;
    stop.cancel();
    h.await.unwrap();
    assert_rows_are(&rows(&db.pool).await, &reports(&direct(&events)));
}

#[tokio::test]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let mut nats = NatsServer::start();
    let (db, js, events, stop, h) = caught_up_on_120_of_200(&nats).await;
    // Crashed and back a second later, while the service waits for more.
    nats.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.start_again();
    wait_for(
        "the test's client to reconnect",
        Duration::from_secs(20),
        || async { js.get_stream(CANDLES_STREAM).await.is_ok() },
    )
    .await;
    publish_closed(&js, &events[120..]).await;
    wait_caught_up(&js, "signals", 200).await;
    stop.cancel();
    h.await.unwrap();
    let expected = reports(&direct(&events));
    assert_rows_are(&rows(&db.pool).await, &expected);
    assert_eq!(
        stream_messages(&js, SIGNALS_STREAM).await,
        expected.len() as u64
    );
}

#[tokio::test]
async fn poison_is_dead_lettered_and_the_rest_processed() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let events = fixture_events(100, Source::Backfill);
    commit(&db.pool, &events).await;
    publish_closed(&js, &events[..50]).await;
    // Redelivered old candles (no Nats-Msg-Id, so the stream keeps them): replays, no change.
    for e in &events[40..45] {
        let payload = klinebus_schemas::codec::encode(e).unwrap();
        js.publish_with_headers(
            "candles.closed.binance.BTCUSDT.1h",
            bus::schema_headers(),
            payload.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // Garbage, and a good payload on the wrong series' subject.
    js.publish("candles.closed.binance.BTCUSDT.1h", "garbage".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let wrong = klinebus_schemas::codec::encode(&events[50]).unwrap();
    js.publish("candles.closed.binance.ETHUSDT.1h", wrong.into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish_closed(&js, &events[50..]).await;
    let (stop, h) = spawn(config(&nats.url(), &db.url, &[]));
    wait_caught_up(&js, "signals", 107).await;
    stop.cancel();
    h.await.unwrap();
    assert_eq!(stream_messages(&js, "DLQ").await, 2);
    assert_rows_are(&rows(&db.pool).await, &reports(&direct(&events)));
}

#[tokio::test]
async fn the_binary_stops_cleanly_on_sigterm() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let events = fixture_events(100, Source::Backfill);
    commit(&db.pool, &events).await;
    publish_closed(&js, &events).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kline-signals"))
        .args(["--metrics-addr", "127.0.0.1:0", "--no-migrate"])
        .env("NATS_URL", nats.url())
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_caught_up(&js, "signals", 100).await;
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(rows(&db.pool).await.len(), reports(&direct(&events)).len());
}

#[tokio::test]
async fn a_bad_strategy_config_fails_at_start() {
    let path = std::env::temp_dir().join(format!("kline-signals-{}.toml", std::process::id()));
    std::fs::write(&path, "[indicators]\nema_fast = 50\nema_slow = 20\n").unwrap();
    let cfg = config(
        "nats://127.0.0.1:1",
        "postgres://nobody@127.0.0.1:1/none",
        &["--config", path.to_str().unwrap()],
    );
    let err = kline_signals::run(cfg, CancellationToken::new())
        .await
        .unwrap_err();
    let _ = std::fs::remove_file(&path);
    assert!(err.to_string().contains("ema_fast"), "{err}");
    // The committed example file is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/signals.example.toml");
    assert_eq!(
        StrategyConfig::load(example).unwrap(),
        StrategyConfig::default()
    );
}
