//! Shared test helpers: candles, publishing, running the sink in-process, reading the table.
#![allow(clippy::unwrap_used, dead_code)]

pub mod proxy;

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context};
use klinebus_consume::consumer_lag;
use klinebus_schemas::bus::{self, schema_headers};
use klinebus_schemas::streams::Retention;
use klinebus_schemas::{codec, subjects, Interval, KlineEvent, Source, Venue};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// First open time used by the tests (2025-06-04T12:00Z).
pub const T0: i64 = 1_749_038_400_000;

/// A valid 1m candle; `rev` makes versions of one key distinguishable (close price, event time).
pub fn candle(symbol: &str, minute: i64, closed: bool, rev: i64) -> KlineEvent {
    let open_time = T0 + minute * 60_000;
    KlineEvent {
        venue: Venue::binance(),
        symbol: symbol.parse().unwrap(),
        interval: Interval::M1,
        open_time,
        close_time: open_time + 59_999,
        open: "100.00000000".into(),
        high: "200.00000000".into(),
        low: "50.00000000".into(),
        close: format!("{}.{:08}", 100 + rev % 100, minute % 1000),
        volume: format!("{}.50000000", 10 + rev),
        quote_volume: "1000.12345678".into(),
        taker_buy_base: "5.00000000".into(),
        taker_buy_quote: "500.00000000".into(),
        trades: 7 + rev as u64,
        closed,
        event_time: if closed {
            open_time + 60_000 + rev
        } else {
            open_time + 1_000 * (rev + 1)
        },
        source: Source::Ws,
        received_at: open_time + 60_100,
    }
}

/// A private JetStream context with the klinebus streams.
pub async fn js_for(url: &str) -> Context {
    let client = async_nats::connect(url).await.unwrap();
    let js = bus::jetstream(client, 2048);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    js
}

/// Publishes with schema headers but WITHOUT a `Nats-Msg-Id`, so the server keeps duplicates
/// (what a redelivery or a re-publication outside the dedup window looks like to the sink).
pub async fn publish_no_id(js: &Context, events: &[KlineEvent]) {
    let mut acks = Vec::new();
    for e in events {
        let msg = jetstream::message::PublishMessage::build()
            .headers(schema_headers())
            .payload(codec::encode(e).unwrap().into());
        acks.push(js.send_publish(subjects::for_event(e), msg).await.unwrap());
        // The context holds at most its in-flight limit of unconfirmed publishes.
        if acks.len() >= 500 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// Publishes raw bytes on a subject (poison).
pub async fn publish_raw(
    js: &Context,
    subject: &str,
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
) {
    let msg = jetstream::message::PublishMessage::build()
        .headers(headers)
        .payload(payload.into());
    js.send_publish(subject.to_owned(), msg)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Config of a sink for tests: small batches (unless `extra` sets `--batch-size`), short
/// timers, telemetry off.
pub fn config(
    nats_url: &str,
    db_url: &str,
    consumer: &str,
    extra: &[&str],
) -> kline_pg_sink::Config {
    use clap::Parser;
    let mut args = vec![
        "kline-pg-sink",
        "--nats-url",
        nats_url,
        "--database-url",
        db_url,
        "--consumer",
        consumer,
    ];
    if !extra.contains(&"--batch-size") {
        args.extend(["--batch-size", "50"]);
    }
    args.extend([
        "--flush-interval-ms",
        "20",
        "--ack-wait-secs",
        "2",
        "--metrics-addr",
        "off",
    ]);
    args.extend_from_slice(extra);
    kline_pg_sink::Config::try_parse_from(args).unwrap()
}

/// Runs the sink library in this process until the returned token is cancelled.
pub fn spawn_sink(cfg: kline_pg_sink::Config) -> (CancellationToken, JoinHandle<()>) {
    let token = CancellationToken::new();
    let t = token.clone();
    let h = tokio::spawn(async move { kline_pg_sink::run(cfg, t).await.unwrap() });
    (token, h)
}

/// Polls `check` until it is true or `timeout` passes (then panics with `what`).
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
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

/// A stored row, every column the sink writes, as text.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Row {
    pub symbol: String,
    pub timeframe: String,
    pub timestamp: i64,
    pub open: String,
    pub high: String,
    pub low: String,
    pub close: String,
    pub volume: String,
    pub quote_volume: String,
    pub taker_buy_base: String,
    pub taker_buy_quote: String,
    pub trades: i64,
    pub close_time: i64,
    pub is_closed: bool,
    pub event_time: i64,
    pub source: String,
}

/// The table, in key order.
pub async fn table(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        r#"SELECT symbol::text AS symbol, timeframe::text AS timeframe, "timestamp",
                  open::text AS open, high::text AS high, low::text AS low, close::text AS close,
                  volume::text AS volume, quote_volume::text AS quote_volume,
                  taker_buy_base::text AS taker_buy_base, taker_buy_quote::text AS taker_buy_quote,
                  trades, close_time, is_closed, event_time, source::text AS source
           FROM ohlcv_candles ORDER BY symbol, timeframe, "timestamp""#,
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The row an event should produce.
pub fn row_of(e: &KlineEvent) -> Row {
    Row {
        symbol: e.symbol.to_string(),
        timeframe: e.interval.to_string(),
        timestamp: e.open_time,
        open: e.open.clone(),
        high: e.high.clone(),
        low: e.low.clone(),
        close: e.close.clone(),
        volume: e.volume.clone(),
        quote_volume: e.quote_volume.clone(),
        taker_buy_base: e.taker_buy_base.clone(),
        taker_buy_quote: e.taker_buy_quote.clone(),
        trades: e.trades as i64,
        close_time: e.close_time,
        is_closed: e.closed,
        event_time: e.event_time,
        source: e.source.as_str().to_owned(),
    }
}

/// The expected table for a set of final versions, in key order.
pub fn expected(finals: &[KlineEvent]) -> Vec<Row> {
    let mut rows: Vec<Row> = finals.iter().map(row_of).collect();
    rows.sort_by(|a, b| {
        (&a.symbol, &a.timeframe, a.timestamp).cmp(&(&b.symbol, &b.timeframe, b.timestamp))
    });
    rows
}

/// Row count.
pub async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// True once the durable consumer has delivered and settled everything.
pub async fn caught_up(js: &Context, durable: &str) -> bool {
    consumer_lag(js, "KLINES", durable)
        .await
        .is_ok_and(|l| l.is_caught_up())
}

/// Waits until the consumer is caught up and the table equals `want`; asserts it row for row.
pub async fn assert_converges(js: &Context, pool: &PgPool, durable: &str, want: &[Row]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = table(pool).await;
        if got == want && caught_up(js, durable).await {
            return;
        }
        if Instant::now() > deadline {
            assert_eq!(got.len(), want.len(), "row count");
            assert_eq!(got, want, "table differs from the expected candles");
            panic!("table is right but consumer {durable} never caught up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fixed pseudo-random permutation (xorshift), so failures reproduce.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut s = seed.max(1);
    for i in (1..v.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
}

/// How many times each candle key was announced on the CANDLES stream so far (reads it all).
pub async fn announced(js: &Context) -> std::collections::HashMap<String, usize> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use futures::StreamExt;
    let mut out = std::collections::HashMap::new();
    let mut stream = js.get_stream("CANDLES").await.unwrap();
    let n = stream.info().await.unwrap().state.messages;
    if n == 0 {
        return out;
    }
    let reader = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = reader.messages().await.unwrap();
    for _ in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .expect("CANDLES stream read stalled")
            .unwrap()
            .unwrap();
        let batch: klinebus_schemas::ClosedCandles = codec::decode(&m.payload).unwrap();
        for c in &batch.candles {
            *out.entry(c.candle_key()).or_insert(0) += 1;
        }
    }
    out
}

/// The keys of the closed candles in the table.
pub async fn closed_keys(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        r#"SELECT 'binance:' || symbol || ':' || timeframe || ':' || "timestamp"
           FROM ohlcv_candles WHERE is_closed ORDER BY 1"#,
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Asserts every closed candle in the table was announced at least once; returns how many
/// announcements were repeats.
pub async fn assert_all_announced(js: &Context, pool: &PgPool) -> usize {
    let seen = announced(js).await;
    let keys = closed_keys(pool).await;
    let missing: Vec<&String> = keys.iter().filter(|k| !seen.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} committed closed candles never announced, e.g. {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(5)]
    );
    seen.values().map(|n| n - 1).sum()
}

/// Closed candles of one series as a backfill has them: minutes `from..from + n`, source
/// `backfill`, `rev` as in [`candle`] (0: event time = close time + 1, as REST rows).
pub fn history(symbol: &str, from: i64, n: i64, rev: i64) -> Vec<KlineEvent> {
    (from..from + n)
        .map(|m| {
            let mut c = candle(symbol, m, true, rev);
            c.source = Source::Backfill;
            c
        })
        .collect()
}

/// The message of a page (`kline-page/1`) of `candles`, WITHOUT a `Nats-Msg-Id` (so the server
/// keeps a repeated page).
pub fn page_message(candles: &[KlineEvent]) -> (String, async_nats::HeaderMap, Vec<u8>) {
    let mut headers = schema_headers();
    headers.insert(
        codec::SCHEMA_HEADER,
        klinebus_schemas::page::PAGE_SCHEMA_VERSION,
    );
    let payload = codec::encode(&klinebus_schemas::closed::ClosedCandlesRef { candles }).unwrap();
    (subjects::for_event(&candles[0]), headers, payload)
}

/// Publishes `candles` (closed, one series, ascending) as pages of up to `per_page`, without
/// `Nats-Msg-Id`s.
pub async fn publish_pages_no_id(js: &Context, candles: &[KlineEvent], per_page: usize) {
    for page in candles.chunks(per_page) {
        let (subject, headers, payload) = page_message(page);
        publish_raw(js, &subject, headers, payload).await;
    }
}

/// A row of `ingestion_status` without its times of day and latency.
pub type StatusRow = (
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    String,
    i32,
    i64,
);

/// `ingestion_status` as the tests compare it, in key order.
pub async fn status_rows(pool: &PgPool) -> Vec<StatusRow> {
    sqlx::query_as(
        "SELECT symbol::text, timeframe::text, last_ingested_timestamp, last_closed_timestamp,
                ingestion_mode::text, status::text, error_count, candles_ingested
         FROM ingestion_status ORDER BY symbol, timeframe",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}
