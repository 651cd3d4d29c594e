//! Batched processing (`--max-ack-pending` > 1): a failure in the middle of a batch, and an
//! owner that dies with many messages un-acked, still give exactly the signals of one clean
//! run — every row, and every SIGNALS event once, in order.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use clap::Parser;
use kline_signals::{Candle, Config, Outcome, SeriesState, SignalReport, StrategyConfig};
use klinebus_schemas::bus;
use klinebus_schemas::streams::{Retention, CANDLES_STREAM, SIGNALS_STREAM};
use klinebus_schemas::{Interval, KlineEvent, Source};
use klinebus_testkit::{NatsServer, TestDb};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use common::{commit, fixture_events};

async fn setup(n: usize) -> (NatsServer, TestDb, Context, Vec<KlineEvent>) {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = bus::jetstream(client, 1024);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    let events = fixture_events(n, Source::Backfill);
    commit(&db.pool, &events).await;
    let mut acks = Vec::new();
    for e in &events {
        acks.extend(bus::publish_closed(&js, &[e]).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    (nats, db, js, events)
}

fn expected(events: &[KlineEvent]) -> Vec<SignalReport> {
    let mut s = SeriesState::new(
        &StrategyConfig::default(),
        events[0].symbol.clone(),
        Interval::H1,
    );
    events
        .iter()
        .filter_map(|e| match s.apply(&Candle::from_event(e).unwrap()) {
            Outcome::Signal(r) => Some(*r),
            _ => None,
        })
        .collect()
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
        "--max-ack-pending",
        "1000",
        "--batch-size",
        "64",
    ];
    args.extend_from_slice(extra);
    Config::try_parse_from(args).unwrap()
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
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

async fn wait_caught_up(js: &Context, stream_last: u64) {
    wait_for(
        "the consumer to catch up",
        Duration::from_secs(60),
        || async {
            let Ok(stream) = js.get_stream(CANDLES_STREAM).await else {
                return false;
            };
            let Ok(info) = stream.consumer_info("signals").await else {
                return false;
            };
            info.num_pending == 0
                && info.num_ack_pending == 0
                && info.ack_floor.stream_sequence >= stream_last
        },
    )
    .await;
}

async fn row_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM signals")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The rows and the SIGNALS stream, message by message, are exactly the reports.
async fn assert_exactly(js: &Context, pool: &PgPool, want: &[SignalReport]) {
    let rows: Vec<(i64, String, f64, sqlx::types::Json<serde_json::Value>)> = sqlx::query_as(
        r#"SELECT "timestamp", action, confidence, details FROM signals ORDER BY "timestamp""#,
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), want.len(), "one row per signal");
    for (row, r) in rows.iter().zip(want) {
        assert_eq!(row.0, r.open_time);
        assert_eq!(
            row.1,
            serde_json::to_value(r.action).unwrap().as_str().unwrap()
        );
        assert_eq!(row.2, r.confidence, "confidence at {}", r.open_time);
        let details: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
        assert_eq!(row.3 .0, details, "details at {}", r.open_time);
    }
    let stream = js.get_stream(SIGNALS_STREAM).await.unwrap();
    let state = stream.get_info().await.unwrap().state;
    assert_eq!(state.messages, want.len() as u64, "each signal event once");
    for (i, r) in want.iter().enumerate() {
        let m = stream
            .get_raw_message(state.first_sequence + i as u64)
            .await
            .unwrap();
        assert_eq!(
            m.payload.as_ref(),
            serde_json::to_vec(r).unwrap().as_slice(),
            "SIGNALS message {i} (open time {})",
            r.open_time
        );
    }
}

#[tokio::test]
async fn a_database_failure_mid_batch_gives_exactly_the_clean_signals() {
    let (_nats, db, js, events) = setup(200).await;
    let want = expected(&events);
    // Writing the signal of candle 150 fails (in the middle of whatever batch holds it) until
    // the fault is lifted; every attempt is counted by a sequence (not rolled back).
    sqlx::raw_sql(
        r#"CREATE TABLE fault (at BIGINT);
           CREATE SEQUENCE fault_hits;
           CREATE FUNCTION fault_check() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF EXISTS (SELECT 1 FROM fault WHERE at = NEW."timestamp") THEN
               PERFORM nextval('fault_hits');
               RAISE EXCEPTION 'injected fault at %', NEW."timestamp";
             END IF;
             RETURN NEW;
           END $$;
           CREATE TRIGGER fault BEFORE INSERT OR UPDATE ON signals
             FOR EACH ROW EXECUTE FUNCTION fault_check();"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO fault VALUES ($1)")
        .bind(events[150].open_time)
        .execute(&db.pool)
        .await
        .unwrap();

    let token = CancellationToken::new();
    let t = token.clone();
    let cfg = config(&_nats.url(), &db.url, &[]);
    let h = tokio::spawn(async move { kline_signals::run(cfg, t).await.unwrap() });
    let pool = db.pool.clone();
    wait_for("three failed attempts", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let (hits, called): (i64, bool) =
                sqlx::query_as("SELECT last_value, is_called FROM fault_hits")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            called && hits >= 3
        }
    })
    .await;
    // Nothing of the failing batch is committed or published, nothing after it either.
    let committed = row_count(&db.pool).await;
    assert!(committed < want.len() as i64 - 49, "{committed} rows");
    let stream = js.get_stream(SIGNALS_STREAM).await.unwrap();
    let published = stream.get_info().await.unwrap().state.messages;
    assert_eq!(published, committed as u64, "events only after their rows");

    sqlx::query("DELETE FROM fault")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_caught_up(&js, 200).await;
    token.cancel();
    h.await.unwrap();
    assert_exactly(&js, &db.pool, &want).await;
}

#[tokio::test]
async fn an_owner_dying_with_many_unacked_messages_loses_no_signal() {
    let (nats, db, js, events) = setup(400).await;
    let want = expected(&events);
    // Slow every write down so that the owner dies in the middle of the stream.
    sqlx::raw_sql(
        r#"CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$;
           CREATE TRIGGER slow BEFORE INSERT ON signals FOR EACH ROW EXECUTE FUNCTION slow();"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let cfg = config(&nats.url(), &db.url, &[]);
    let h = tokio::spawn(async move {
        let _ = kline_signals::run(cfg, CancellationToken::new()).await;
    });
    let pool = db.pool.clone();
    wait_for("some signals", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move { row_count(&pool).await >= 60 }
    })
    .await;
    // Killed: no nak, no clean-up; its delivered messages stay un-acked.
    h.abort();
    let _ = h.await;
    let stream = js.get_stream(CANDLES_STREAM).await.unwrap();
    let left = stream.consumer_info("signals").await.unwrap();
    assert!(left.num_ack_pending > 0, "the test needs un-acked messages");
    assert!(row_count(&db.pool).await < want.len() as i64);

    let token = CancellationToken::new();
    let t = token.clone();
    let cfg = config(&nats.url(), &db.url, &[]);
    let h = tokio::spawn(async move { kline_signals::run(cfg, t).await.unwrap() });
    wait_caught_up(&js, 400).await;
    token.cancel();
    h.await.unwrap();
    assert_exactly(&js, &db.pool, &want).await;
}
