//! Fast takeover: two `kline-pg-sink` processes (the real binary's `main`, see Cargo.toml) share
//! the durable consumer `pg-sink` — created beforehand with the old 60 s ack wait, which they
//! must update to their 10 s default — while a backfill's worth of closed candles is in the
//! KLINES stream. One is SIGKILLed mid-run; the other must store what the dead one held within
//! about the ack wait, not a minute: the table equals the published candles exactly, well
//! under 20 s after the kill, and every committed closed candle was announced on CANDLES.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::Context;
use futures::StreamExt;
use klinebus_schemas::streams::{ConsumerSpec, Retention, KLINES_STREAM};
use klinebus_schemas::{bus, codec, ClosedCandles, Interval, KlineEvent, Source, Venue};
use klinebus_testkit::{NatsServer, TestDb};
use sqlx::PgPool;

mod support;
use support::Proc;

/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;
const SYMBOLS: usize = 30;
const PER_SYMBOL: usize = 2_000;
/// What the test allows from the SIGKILL until everything is stored (the old ack wait alone
/// was 60 s).
const TAKEOVER_LIMIT: Duration = Duration::from_secs(20);

/// A `kline-pg-sink` process with its defaults (ack wait included), SIGKILLed on drop.
fn sink(nats_url: &str, db_url: &str) -> Proc {
    Proc::start(
        "kline-pg-sink",
        env!("CARGO_BIN_EXE_e2e-kline-pg-sink"),
        &[
            "--nats-url",
            nats_url,
            "--database-url",
            db_url,
            "--metrics-addr",
            "off",
        ],
    )
}

fn candle(s: usize, i: usize) -> KlineEvent {
    let open_time = T0 + i as i64 * 60_000;
    KlineEvent {
        venue: Venue::binance(),
        symbol: format!("TK{s}USDT").parse().unwrap(),
        interval: Interval::M1,
        open_time,
        close_time: open_time + 59_999,
        open: "100.00000000".into(),
        high: "120.00000000".into(),
        low: "90.00000000".into(),
        close: format!("100.{:08}", s * 10_000 + i),
        volume: format!("{}.50000000", 10 + i),
        quote_volume: "1000.12345678".into(),
        taker_buy_base: "5.00000000".into(),
        taker_buy_quote: "500.00000000".into(),
        trades: i as u64,
        closed: true,
        event_time: open_time + 60_000,
        source: Source::Backfill,
        received_at: open_time + 60_100,
    }
}

/// A stored row, as compared.
type Row = (String, i64, String, String, i64, i64, bool, i64, String);

fn row_of(e: &KlineEvent) -> Row {
    (
        e.symbol.to_string(),
        e.open_time,
        e.close.clone(),
        e.volume.clone(),
        e.trades as i64,
        e.close_time,
        e.closed,
        e.event_time,
        e.source.as_str().to_owned(),
    )
}

async fn table(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        r#"SELECT symbol::text, "timestamp", close::text, volume::text, trades, close_time,
                  is_closed, event_time, source::text
           FROM ohlcv_candles ORDER BY symbol, timeframe, "timestamp""#,
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

async fn info(js: &Context) -> async_nats::jetstream::consumer::Info {
    let stream = js.get_stream(KLINES_STREAM).await.unwrap();
    stream.consumer_info("pg-sink").await.unwrap()
}

/// Publishes like a backfill: dedup ids, many acks in flight.
async fn publish(js: &Context, events: &[KlineEvent]) {
    let mut acks = Vec::new();
    for e in events {
        acks.push(bus::publish_event(js, e).await.unwrap());
        if acks.len() >= 1000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// Every candle key announced on CANDLES.
async fn announced(js: &Context) -> HashSet<String> {
    let mut stream = js.get_stream("CANDLES").await.unwrap();
    let n = stream.info().await.unwrap().state.messages;
    let reader = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = reader.messages().await.unwrap();
    let mut keys = HashSet::new();
    for _ in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .expect("CANDLES read stalled")
            .unwrap()
            .unwrap();
        let batch: ClosedCandles = codec::decode(&m.payload).unwrap();
        keys.extend(batch.candles.iter().map(KlineEvent::candle_key));
    }
    keys
}

#[tokio::test]
async fn a_killed_sinks_batches_are_stored_by_the_other_within_seconds() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = bus::jetstream(client, 4096);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    // A durable from before: created with the old 60 s ack wait.
    let mut old = ConsumerSpec::klines("pg-sink", String::new());
    old.ack_wait = Duration::from_secs(60);
    js.get_stream(KLINES_STREAM)
        .await
        .unwrap()
        .create_consumer(bus::consumer_config(&old, DeliverPolicy::All))
        .await
        .unwrap();
    let events: Vec<KlineEvent> = (0..PER_SYMBOL)
        .flat_map(|i| (0..SYMBOLS).map(move |s| candle(s, i)))
        .collect();
    let n = events.len() as u64;
    let started = Instant::now();
    publish(&js, &events).await;
    eprintln!(
        "published {n} closed candles in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut a = sink(&nats.url(), &db.url);
    let b = sink(&nats.url(), &db.url);
    // Both have started (each updates the durable at start-up): the ack wait is the new one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while info(&js).await.config.ack_wait != Duration::from_secs(10) {
        assert!(
            Instant::now() < deadline,
            "the 60 s durable was not updated to the sinks' 10 s ack wait"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Mid-run: a third of the candles acked.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let i = info(&js).await;
        if i.ack_floor.stream_sequence >= n / 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sinks make no progress: {i:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();
    let killed = Instant::now();
    let at_kill = info(&js).await;
    let stored_at_kill = count(&db.pool).await;
    eprintln!(
        "SIGKILLed one sink: {stored_at_kill} of {n} rows stored, {} delivered un-acked, {} \
         not yet delivered",
        at_kill.num_ack_pending, at_kill.num_pending
    );
    assert!(
        at_kill.num_ack_pending > 0 && (stored_at_kill as u64) < n,
        "killed too late to test anything"
    );

    // Converged: every candle stored, the consumer settled.
    loop {
        let i = info(&js).await;
        if i.num_pending == 0 && i.num_ack_pending == 0 && count(&db.pool).await == n as i64 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "not converged 90 s after the kill: {} of {n} rows, {i:?}",
            count(&db.pool).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    eprintln!(
        "takeover: converged {:.1} s after the SIGKILL (limit {} s; the ack wait is 10 s)",
        took.as_secs_f64(),
        TAKEOVER_LIMIT.as_secs()
    );
    let mut want: Vec<Row> = events.iter().map(row_of).collect();
    want.sort();
    let got = table(&db.pool).await;
    assert_eq!(got.len(), want.len(), "row count");
    assert!(got == want, "the table differs from the published candles");
    assert!(
        took < TAKEOVER_LIMIT,
        "took {took:?} after the kill, limit {TAKEOVER_LIMIT:?}"
    );
    // The killed instance may have committed batches it never announced: the redelivery
    // announces them.
    let seen = announced(&js).await;
    let missing = events
        .iter()
        .filter(|e| !seen.contains(&e.candle_key()))
        .count();
    assert_eq!(missing, 0, "committed closed candles never announced");
    drop(b);
}
