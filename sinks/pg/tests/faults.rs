//! Faults: the database going away, the broker restarting, poison messages, failing flushes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::proxy::Proxy;
use common::*;
use futures::StreamExt;
use klinebus_consume::consumer_lag;
use klinebus_schemas::bus::{self, schema_headers};
use klinebus_schemas::codec;
use klinebus_schemas::streams::Retention;
use klinebus_testkit::{NatsServer, TestDb};

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let host = rest.split_once('/').unwrap().0;
    host.rsplit_once('@').map_or(host, |(_, h)| h).to_owned()
}

#[tokio::test]
async fn database_outage_loses_nothing() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let proxy = Proxy::start(host_port(&db.url)).await;
    let (stop, h) = spawn_sink(config(&nats.url(), &proxy.url_for(&db.url), "dbdown", &[]));
    let first: Vec<_> = (0..30).map(|m| candle("ADAUSDT", m, true, 0)).collect();
    publish_no_id(&js, &first).await;
    assert_converges(&js, &db.pool, "dbdown", &expected(&first)).await;
    proxy.cut();
    let second: Vec<_> = (30..90).map(|m| candle("ADAUSDT", m, true, 0)).collect();
    publish_no_id(&js, &second).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count(&db.pool).await,
        30,
        "nothing can be written while cut"
    );
    proxy.restore();
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    assert_converges(&js, &db.pool, "dbdown", &expected(&all)).await;
    let (status, errors): (String, i32) =
        sqlx::query_as("SELECT status::text, error_count FROM ingestion_status")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), errors), ("active", 0));
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn failing_flush_is_recorded_retried_and_recovers() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    // The database is up but rejects this batch (a constraint the candle violates).
    sqlx::query("ALTER TABLE ohlcv_candles ADD CONSTRAINT test_block CHECK (trades < 1000)")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut big = candle("DOTUSDT", 0, true, 0);
    big.trades = 5000;
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "fail", &[]));
    publish_no_id(&js, std::slice::from_ref(&big)).await;
    wait_for("the error status", Duration::from_secs(10), || async {
        let r: Option<(String, i32, Option<String>)> =
            sqlx::query_as("SELECT status::text, error_count, error_message FROM ingestion_status")
                .fetch_optional(&db.pool)
                .await
                .unwrap();
        r.is_some_and(|(s, n, m)| {
            s == "error" && n >= 2 && m.is_some_and(|m| m.contains("test_block"))
        })
    })
    .await;
    assert_eq!(count(&db.pool).await, 0);
    sqlx::query("ALTER TABLE ohlcv_candles DROP CONSTRAINT test_block")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_converges(&js, &db.pool, "fail", &expected(&[big])).await;
    let (status, errors, msg): (String, i32, Option<String>) =
        sqlx::query_as("SELECT status::text, error_count, error_message FROM ingestion_status")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), errors, msg), ("active", 0, None));
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn broker_restart_loses_nothing() {
    let mut nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "restart", &[]));
    let first: Vec<_> = (0..40).map(|m| candle("LTCUSDT", m, true, 0)).collect();
    publish_no_id(&js, &first).await;
    assert_converges(&js, &db.pool, "restart", &expected(&first)).await;
    nats.restart();
    // A fresh publisher (the old one reconnects on its own schedule).
    let js2 = js_for(&nats.url()).await;
    let second: Vec<_> = (40..100).map(|m| candle("LTCUSDT", m, true, 0)).collect();
    publish_no_id(&js2, &second).await;
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();
    assert_converges(&js2, &db.pool, "restart", &expected(&all)).await;
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn poison_goes_to_the_dlq_and_nothing_else_is_lost() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut dlq = client.subscribe("dlq.poison").await.unwrap();
    client.flush().await.unwrap();
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "poison", &[]));
    let good: Vec<_> = (0..30).map(|m| candle("TRXUSDT", m, true, 0)).collect();
    let subject = "klines.ws.binance.TRXUSDT.1m";
    let mut bad_symbol = codec::encode(&candle("TRXUSDT", 31, true, 0)).unwrap();
    let pos = bad_symbol.windows(7).position(|w| w == b"TRXUSDT").unwrap();
    bad_symbol[pos..pos + 7].copy_from_slice(b"trx-usd");
    let mut nan = candle("TRXUSDT", 32, true, 0);
    nan.close = "NaN".into();
    let mut v2 = schema_headers();
    v2.insert("Klinebus-Schema", "kline/2");
    let poison: Vec<(&str, async_nats::HeaderMap, Vec<u8>, &str)> = vec![
        (
            subject,
            schema_headers(),
            b"\x00\xffgarbage".to_vec(),
            "undecodable",
        ),
        (subject, schema_headers(), bad_symbol, "undecodable"),
        (
            subject,
            schema_headers(),
            codec::encode(&nan).unwrap(),
            "invalid",
        ),
        (subject, v2, codec::encode(&good[0]).unwrap(), "version"),
        (
            "klines.ws.binance.ETHUSDT.1m",
            schema_headers(),
            codec::encode(&good[1]).unwrap(),
            "subject",
        ),
    ];
    for (i, g) in good.iter().enumerate() {
        publish_no_id(&js, std::slice::from_ref(g)).await;
        if let Some((s, hd, p, _)) = poison.get(i / 5) {
            if i % 5 == 0 {
                publish_raw(&js, s, hd.clone(), p.clone()).await;
            }
        }
    }
    assert_converges(&js, &db.pool, "poison", &expected(&good)).await;
    for (s, _, payload, kind) in &poison {
        let m = tokio::time::timeout(Duration::from_secs(5), dlq.next())
            .await
            .expect("dead letter missing")
            .unwrap();
        let hd = m.headers.as_ref().unwrap();
        assert!(
            hd.get("Klinebus-Dlq-Reason")
                .unwrap()
                .as_str()
                .starts_with(kind),
            "{:?}",
            hd.get("Klinebus-Dlq-Reason")
        );
        assert_eq!(hd.get("Klinebus-Dlq-Subject").unwrap().as_str(), *s);
        assert_eq!(hd.get("Klinebus-Dlq-Consumer").unwrap().as_str(), "poison");
        assert_eq!(&m.payload[..], &payload[..]);
    }
    let dlq_count = js
        .get_stream("DLQ")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(dlq_count, poison.len() as u64);
    stop.cancel();
    h.await.unwrap();
}

/// The CANDLES stream refuses the announcements for a while (deleted, then created again):
/// the candles are committed all the same, but their input stays un-acked until JetStream has
/// stored every announcement of their batch; the redeliveries change nothing in the table and
/// are announced anyway, so in the end every committed closed candle was announced.
#[tokio::test]
async fn refused_announcements_are_announced_once_the_stream_takes_them() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "announce", &[]));
    // The sink checks the streams at start-up only: wait for it, then take CANDLES away.
    wait_for("the sink's consumer", Duration::from_secs(10), || async {
        consumer_lag(&js, "KLINES", "announce").await.is_ok()
    })
    .await;
    js.delete_stream("CANDLES").await.unwrap();
    let mut all = Vec::new();
    let mut finals = Vec::new();
    for sym in ["AAVEUSDT", "UNIUSDT", "LINKUSDT"] {
        for m in 0..120 {
            all.push(candle(sym, m, false, 1));
            let c = candle(sym, m, true, 0);
            all.push(c.clone());
            finals.push(c);
        }
    }
    shuffle(&mut all, 7);
    publish_no_id(&js, &all).await;
    // Committed although nothing could be announced …
    // (Every refused announcement naks its batch for redelivery, and JetStream hands the
    // redeliveries out before new messages: 6 s on a quiet machine, over 60 s under the load
    // of the cluster tests beside it.)
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    loop {
        let now = table(&db.pool).await;
        let want = expected(&finals);
        if now == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the committed table: {} rows of {} ({}); first difference (stored, expected): {:?}",
            now.len(),
            want.len(),
            klinebus_testkit::leaf_counts(&db.pool).await,
            now.iter().zip(&want).find(|(a, b)| a != b)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // … and held un-acked (then naked and redelivered) meanwhile, not acked and forgotten.
    let lag = consumer_lag(&js, "KLINES", "announce").await.unwrap();
    assert!(
        lag.ack_pending > 0,
        "input acked although its announcements were refused: {lag:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    wait_for(
        "the consumer to settle",
        Duration::from_secs(30),
        || async { caught_up(&js, "announce").await },
    )
    .await;
    let now = table(&db.pool).await;
    if now != expected(&finals) {
        panic!(
            "table changed: {} rows instead of {} ({})",
            now.len(),
            finals.len(),
            klinebus_testkit::leaf_counts(&db.pool).await
        );
    }
    let repeats = assert_all_announced(&js, &db.pool).await;
    eprintln!("every committed closed candle announced ({repeats} repeats)");
    stop.cancel();
    h.await.unwrap();
}

/// A commit slower than several ack waits (the table locked by another transaction) is kept
/// alive with progress acks: nothing is redelivered meanwhile, and it commits once unlocked.
#[tokio::test]
async fn a_slow_commit_is_not_redelivered_mid_flight() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "slow", &[]));
    wait_for("the sink's consumer", Duration::from_secs(10), || async {
        consumer_lag(&js, "KLINES", "slow").await.is_ok()
    })
    .await;
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE ohlcv_candles IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    // At most three batches of 50: one in the transaction, one queued, one being handed over.
    let finals: Vec<_> = (0..120).map(|m| candle("NEARUSDT", m, true, 0)).collect();
    publish_no_id(&js, &finals).await;
    // Three times the tests' 2 s ack wait.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let info = js
        .get_stream("KLINES")
        .await
        .unwrap()
        .consumer_info("slow")
        .await
        .unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(2));
    assert!(info.num_ack_pending > 0, "nothing held: {info:?}");
    assert_eq!(
        info.num_redelivered, 0,
        "held batches redelivered after 3 ack waits: {info:?}"
    );
    assert_eq!(count(&db.pool).await, 0);
    lock.commit().await.unwrap();
    assert_converges(&js, &db.pool, "slow", &expected(&finals)).await;
    stop.cancel();
    h.await.unwrap();
}
