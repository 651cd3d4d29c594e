//! Exactly-once effect against real NATS (private servers) and PostgreSQL (fresh databases):
//! each test asserts the final table equals the expected candle set row for row.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use kline_pg_sink::PgSink;
use klinebus_consume::{ConsumeOptions, Consumer};
use klinebus_schemas::streams::ConsumerSpec;
use klinebus_schemas::Source;
use klinebus_svc::Health;
use klinebus_testkit::{NatsServer, TestDb};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn duplicates_are_stored_once_and_counted_once() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let finals: Vec<_> = (0..40)
        .flat_map(|m| [candle("BTCUSDT", m, true, 0), candle("ETHUSDT", m, true, 0)])
        .collect();
    // Three copies of everything, without dedup ids: the server keeps all of them.
    for _ in 0..3 {
        publish_no_id(&js, &finals).await;
    }
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "dup", &[]));
    assert_converges(&js, &db.pool, "dup", &expected(&finals)).await;
    let status: Vec<(String, i64, Option<i64>, String, i32, i64, String)> = sqlx::query_as(
        "SELECT symbol::text, candles_ingested, last_closed_timestamp, status::text, error_count,
                last_ingested_timestamp, ingestion_mode::text
         FROM ingestion_status ORDER BY symbol",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let last = T0 + 39 * 60_000;
    for (sym, s) in ["BTCUSDT", "ETHUSDT"].iter().zip(&status) {
        assert_eq!(
            s,
            &(
                sym.to_string(),
                40,
                Some(last),
                "active".into(),
                0,
                last,
                "websocket".into()
            )
        );
    }
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn out_of_order_versions_converge_on_the_winner() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let mut all = Vec::new();
    let mut finals = Vec::new();
    for m in 0..30 {
        // Forming revisions 1..=3, then the closed candle (keys 0..20); keys 20..30 stay forming.
        for rev in 1..=3 {
            all.push(candle("SOLUSDT", m, false, rev));
        }
        if m < 20 {
            let closed = candle("SOLUSDT", m, true, 0);
            all.push(closed.clone());
            finals.push(closed);
        } else {
            finals.push(candle("SOLUSDT", m, false, 3));
        }
    }
    shuffle(&mut all, 7);
    publish_no_id(&js, &all).await;
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "ooo", &[]));
    assert_converges(&js, &db.pool, "ooo", &expected(&finals)).await;
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn unclosed_then_closed_and_late_unclosed_never_reopens() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "seq", &[]));
    // Forming updates, then the close: each in its own flush.
    for rev in 1..=3 {
        let f = candle("BNBUSDT", 0, false, rev);
        publish_no_id(&js, std::slice::from_ref(&f)).await;
        assert_converges(&js, &db.pool, "seq", &expected(&[f])).await;
    }
    let closed = candle("BNBUSDT", 0, true, 0);
    publish_no_id(&js, std::slice::from_ref(&closed)).await;
    assert_converges(
        &js,
        &db.pool,
        "seq",
        &expected(std::slice::from_ref(&closed)),
    )
    .await;
    // A late forming update with a newer event time, and an older closed duplicate from
    // backfill: neither changes the stored closed candle.
    let late = candle("BNBUSDT", 0, false, 500);
    assert!(late.event_time > closed.event_time);
    let mut backfill = closed.clone();
    backfill.source = Source::Backfill;
    backfill.event_time = closed.close_time + 1;
    backfill.close = "999.00000000".into(); // would show if it overwrote
    publish_no_id(&js, &[late, backfill]).await;
    assert_converges(
        &js,
        &db.pool,
        "seq",
        &expected(std::slice::from_ref(&closed)),
    )
    .await;
    // The backfilled version first, the live one second: the live one replaces it.
    let mut bf = candle("BNBUSDT", 1, true, 0);
    bf.source = Source::Backfill;
    bf.event_time = bf.close_time + 1;
    let live = candle("BNBUSDT", 1, true, 5);
    let mut live_same = live.clone();
    live_same.close = bf.close.clone();
    live_same.volume = bf.volume.clone();
    live_same.trades = bf.trades;
    publish_no_id(&js, std::slice::from_ref(&bf)).await;
    assert_converges(
        &js,
        &db.pool,
        "seq",
        &expected(&[closed.clone(), bf.clone()]),
    )
    .await;
    publish_no_id(&js, std::slice::from_ref(&live_same)).await;
    assert_converges(&js, &db.pool, "seq", &expected(&[closed, live_same])).await;
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn two_instances_split_the_work_and_match_one() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let mut all = Vec::new();
    let mut finals = Vec::new();
    for sym in ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT"] {
        for m in 0..300 {
            all.push(candle(sym, m, false, 1));
            let c = candle(sym, m, true, 0);
            all.push(c.clone());
            finals.push(c);
        }
    }
    shuffle(&mut all, 99);
    let mut spec = ConsumerSpec::klines("pair", "klines.>".into());
    spec.ack_wait = Duration::from_secs(2);
    let stop = CancellationToken::new();
    let mut handles = Vec::new();
    let mut stats = Vec::new();
    for _ in 0..2 {
        let mut o = ConsumeOptions::new(spec.clone());
        o.batch_size = 64;
        o.flush_interval = Duration::from_millis(20);
        let consumer = Consumer::new(js.clone(), o);
        // Create the durable before publishing, so both instances pull from the start.
        consumer
            .prepare(&klinebus_consume::StartFrom::Resume)
            .await
            .unwrap();
        stats.push(consumer.stats());
        let mut sink = PgSink::new(
            db.pool.clone(),
            Some(js.clone()),
            Health::default(),
            Default::default(),
        );
        let t = stop.clone();
        handles.push(tokio::spawn(async move {
            consumer.run(&mut sink, t).await.unwrap();
        }));
    }
    // Watch the post-commit events while publishing.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut closed_sub = client.subscribe("candles.closed.>").await.unwrap();
    client.flush().await.unwrap();
    publish_no_id(&js, &all).await;
    assert_converges(&js, &db.pool, "pair", &expected(&finals)).await;
    for s in &stats {
        assert!(
            s.acked.load(Ordering::Relaxed) > 0,
            "an instance got no work"
        );
    }
    let total: u64 = stats.iter().map(|s| s.acked.load(Ordering::Relaxed)).sum();
    assert!(total >= all.len() as u64);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < finals.len() {
        let m = tokio::time::timeout(Duration::from_secs(5), closed_sub.next())
            .await
            .expect("missing post-commit events")
            .unwrap();
        let batch: klinebus_schemas::ClosedCandles =
            klinebus_schemas::codec::decode(&m.payload).unwrap();
        batch.validate().unwrap();
        let first = &batch.candles[0];
        assert_eq!(
            m.subject.as_str(),
            klinebus_schemas::subjects::closed(&first.venue, &first.symbol, first.interval)
        );
        let refs: Vec<_> = batch.candles.iter().collect();
        assert_eq!(
            m.headers
                .as_ref()
                .unwrap()
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned()),
            klinebus_schemas::ClosedCandles::msg_id(&refs)
        );
        seen.extend(batch.candles.iter().map(|e| e.candle_key()));
    }
    stop.cancel();
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test]
async fn replay_from_all_rewrites_a_wiped_table() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let finals: Vec<_> = (0..25).map(|m| candle("XRPUSDT", m, true, 0)).collect();
    publish_no_id(&js, &finals).await;
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "rp", &[]));
    assert_converges(&js, &db.pool, "rp", &expected(&finals)).await;
    stop.cancel();
    h.await.unwrap();
    sqlx::query("DELETE FROM ohlcv_candles")
        .execute(&db.pool)
        .await
        .unwrap();
    // Resuming delivers nothing new; a replay from sequence 11 restores rows 10..25.
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "rp", &["--replay-from", "11"]));
    assert_converges(&js, &db.pool, "rp", &expected(&finals[10..])).await;
    stop.cancel();
    h.await.unwrap();
    let (stop, h) = spawn_sink(config(
        &nats.url(),
        &db.url,
        "rp",
        &["--replay-from", "all"],
    ));
    assert_converges(&js, &db.pool, "rp", &expected(&finals)).await;
    stop.cancel();
    h.await.unwrap();
}

/// GET `path` from `addr` (HTTP/1.0, enough for the telemetry endpoint).
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn metrics_show_ingest_and_freshness_per_series_and_health_turns_ready() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let finals: Vec<_> = (0..30).map(|m| candle("NEARUSDT", m, true, 0)).collect();
    // A forming update of a later candle must not count as fresh data.
    let mut all = finals.clone();
    all.push(candle("NEARUSDT", 30, false, 1));
    publish_no_id(&js, &all).await;
    let mut cfg = config(&nats.url(), &db.url, "metrics", &[]);
    cfg.metrics_addr = addr.clone();
    let (stop, h) = spawn_sink(cfg);
    assert_converges(&js, &db.pool, "metrics", &expected(&all)).await;
    let health = http_get(&addr, "/health").await;
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    let text = http_get(&addr, "/metrics").await;
    let newest = finals.last().unwrap().close_time + 1;
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("klinebus_sink_newest_candle_close_seconds")
                && l.contains("symbol=\"NEARUSDT\"")
                && l.contains("interval=\"1m\"")
        })
        .unwrap_or_else(|| panic!("no freshness gauge in:\n{text}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, newest as f64 / 1000.0, "{line}");
    assert!(text.contains("klinebus_sink_rows_upserted_total"), "{text}");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_candle_of_a_month_without_partition_gets_its_partition() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    // A candle three years from now: no partition exists for its month until the sink makes it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ahead = candle(
        "BTCUSDT",
        (now + 3 * 365 * 86_400_000 - T0) / 60_000,
        true,
        0,
    );
    let open = ahead.open_time;
    let month = |offset: &str| {
        let pool = db.pool.clone();
        let sql = format!(
            "SELECT 'ohlcv_candles_1m_' || to_char(to_timestamp($1 / 1000.0) AT TIME ZONE 'UTC' \
             + interval '{offset}', 'YYYY_MM')"
        );
        async move {
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                .bind(open)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let (this, next) = (month("0 months").await, month("1 month").await);
    let exists = |name: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                .bind(name)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(!exists(this.clone()).await);
    publish_no_id(&js, std::slice::from_ref(&ahead)).await;
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "ahead", &[]));
    assert_converges(
        &js,
        &db.pool,
        "ahead",
        &expected(std::slice::from_ref(&ahead)),
    )
    .await;
    stop.cancel();
    h.await.unwrap();
    // In the month's own partition (not the default one), and the next month made ahead.
    let part: String = sqlx::query_scalar("SELECT tableoid::regclass::text FROM ohlcv_candles")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(part, this);
    assert!(exists(next).await);
}
