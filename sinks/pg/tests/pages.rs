//! Pages (`kline-page/1`: up to 1000 closed candles of one series in one message) through the
//! sink, against real NATS and PostgreSQL: stored exactly, converging with single events of the
//! same keys in any order, dead-lettered whole when bad, announced again when redelivered,
//! bounded batches; and the COPY and UNNEST ways in giving the same table and result.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::Message;

use common::*;
use futures::StreamExt;
use kline_pg_sink::upsert::write_batch;
use kline_pg_sink::PgSink;
use klinebus_consume::{
    consumer_lag, Confirmation, ConsumeOptions, Consumer, Delivered, Handler, HandlerError, Poison,
    StartFrom,
};
use klinebus_schemas::bus::{self, schema_headers};
use klinebus_schemas::codec;
use klinebus_schemas::streams::{ConsumerSpec, Retention};
use klinebus_schemas::KlineEvent;
use klinebus_svc::Health;
use klinebus_testkit::{NatsServer, TestDb};
use tokio_util::sync::CancellationToken;

/// `--copy-min-rows` of each way in: COPY for every flush, and never.
const PATHS: [(&str, &str); 2] = [("copy", "1"), ("unnest", "0")];

/// Candles whose every field is at an edge of what the table stores.
fn extremes() -> Vec<KlineEvent> {
    let mut out = history("EDGEUSDT", 0, 4, 0);
    let e = &mut out[0];
    e.low = "0.00000001".into();
    e.open = "0.00000001".into();
    e.close = "999999999999.99999999".into();
    e.high = "999999999999.99999999".into();
    e.volume = "9999999999999999999999.99999999".into();
    e.quote_volume = "0.00000000".into();
    e.taker_buy_base = "9999999999999999999999.99999999".into();
    e.taker_buy_quote = "1234567890123456789012.12345678".into();
    e.trades = 9_007_199_254_740_993; // 2^53 + 1: no float on the way
    let e = &mut out[1];
    e.trades = 0;
    e.volume = "0.00000000".into();
    e.taker_buy_base = "0.00000000".into();
    out
}

#[tokio::test]
async fn pages_are_stored_exactly_and_announced() {
    for (path, copy_min) in PATHS {
        let nats = NatsServer::start();
        let db = TestDb::fresh().await;
        let js = js_for(&nats.url()).await;
        let mut finals = extremes();
        finals.extend(history("PAGEUSDT", 0, 2500, 0));
        finals.extend(history("ONEUSDT", 7, 1, 0));
        let mut h1 = history("PAGEUSDT", 0, 30, 0);
        for c in &mut h1 {
            c.interval = klinebus_schemas::Interval::H1;
            c.open_time = T0 + (c.open_time - T0) * 60;
            c.close_time = c.open_time + 3_599_999;
            c.event_time = c.close_time + 1;
        }
        finals.extend(h1);
        let mut series: Vec<Vec<KlineEvent>> = Vec::new();
        for c in &finals {
            match series.last_mut() {
                Some(s) if s[0].symbol == c.symbol && s[0].interval == c.interval => {
                    s.push(c.clone())
                }
                _ => series.push(vec![c.clone()]),
            }
        }
        for s in &series {
            publish_pages_no_id(&js, s, 1000).await;
        }
        let cfg = config(
            &nats.url(),
            &db.url,
            "pages",
            &["--batch-size", "3000", "--copy-min-rows", copy_min],
        );
        let (stop, h) = spawn_sink(cfg);
        assert_converges(&js, &db.pool, "pages", &expected(&finals)).await;
        assert_all_announced(&js, &db.pool).await;
        let status = status_rows(&db.pool).await;
        let of = |sym: &str, tf: &str| {
            status
                .iter()
                .find(|s| s.0 == sym && s.1 == tf)
                .cloned()
                .unwrap()
        };
        let last = T0 + 2499 * 60_000;
        assert_eq!(
            of("PAGEUSDT", "1m"),
            (
                "PAGEUSDT".into(),
                "1m".into(),
                Some(last),
                Some(last),
                Some("backfill".into()),
                "active".into(),
                0,
                2500
            ),
            "{path}"
        );
        assert_eq!(of("PAGEUSDT", "1h").7, 30, "{path}");
        stop.cancel();
        h.await.unwrap();
    }
}

/// What the table must hold for keys that both a backfill (pages) and live (single events)
/// delivered: a live closed candle (later event time) beats the backfilled one, which beats
/// every forming update.
struct Mixed {
    pages: Vec<KlineEvent>,
    singles: Vec<KlineEvent>,
    finals: Vec<KlineEvent>,
}

fn mixed() -> Mixed {
    let pages = history("MIXUSDT", 0, 600, 0);
    let mut singles = Vec::new();
    let mut finals = Vec::new();
    for (m, page) in (0..600).zip(&pages) {
        singles.push(candle("MIXUSDT", m, false, 1));
        if m % 3 == 0 {
            let live = candle("MIXUSDT", m, true, 5);
            assert!(live.event_time > page.event_time);
            singles.push(live.clone());
            finals.push(live);
        } else {
            finals.push(page.clone());
        }
        if m % 7 == 0 {
            singles.push(candle("MIXUSDT", m, false, 9));
        }
    }
    // Keys only live knows, forming at the end.
    for m in 600..620 {
        singles.push(candle("MIXUSDT", m, false, 2));
        finals.push(candle("MIXUSDT", m, false, 2));
    }
    shuffle(&mut singles, 3);
    Mixed {
        pages,
        singles,
        finals,
    }
}

#[tokio::test]
async fn pages_and_single_events_converge_whichever_comes_first() {
    let m = mixed();
    for (path, copy_min) in PATHS {
        for pages_first in [true, false] {
            let nats = NatsServer::start();
            let db = TestDb::fresh().await;
            let js = js_for(&nats.url()).await;
            // Published before the sink runs (whole batches), or while it runs (the other
            // half in flushes of its own).
            if pages_first {
                publish_pages_no_id(&js, &m.pages, 250).await;
            } else {
                publish_no_id(&js, &m.singles).await;
            }
            let extra = ["--batch-size", "400", "--copy-min-rows", copy_min];
            let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "mix", &extra));
            wait_for("the first half", Duration::from_secs(20), || async {
                caught_up(&js, "mix").await && count(&db.pool).await > 0
            })
            .await;
            if pages_first {
                publish_no_id(&js, &m.singles).await;
            } else {
                publish_pages_no_id(&js, &m.pages, 250).await;
            }
            assert_converges(&js, &db.pool, "mix", &expected(&m.finals)).await;
            eprintln!("{path}, pages first: {pages_first}: converged");
            stop.cancel();
            h.await.unwrap();
        }
    }
}

/// Announcements refused while a page is committed: the page stays un-acked, comes back (a
/// redelivery), changes nothing the second time and is announced then.
#[tokio::test]
async fn a_redelivered_page_is_announced_again() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let (stop, h) = spawn_sink(config(
        &nats.url(),
        &db.url,
        "again",
        &["--batch-size", "2000"],
    ));
    wait_for("the sink's consumer", Duration::from_secs(10), || async {
        consumer_lag(&js, "KLINES", "again").await.is_ok()
    })
    .await;
    js.delete_stream("CANDLES").await.unwrap();
    let finals = history("REDOUSDT", 0, 1800, 0);
    publish_pages_no_id(&js, &finals, 1000).await;
    wait_for("the committed table", Duration::from_secs(20), || async {
        table(&db.pool).await == expected(&finals)
    })
    .await;
    let lag = consumer_lag(&js, "KLINES", "again").await.unwrap();
    assert!(lag.ack_pending > 0, "pages acked unannounced: {lag:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    wait_for(
        "the consumer to settle",
        Duration::from_secs(30),
        || async { caught_up(&js, "again").await },
    )
    .await;
    assert_eq!(table(&db.pool).await, expected(&finals));
    let info = js
        .get_stream("KLINES")
        .await
        .unwrap()
        .consumer_info("again")
        .await
        .unwrap();
    // More deliveries than messages.
    assert!(
        info.delivered.consumer_sequence > info.delivered.stream_sequence,
        "nothing redelivered: {info:?}"
    );
    // Every candle of both pages, although the redelivery changed no row.
    assert_all_announced(&js, &db.pool).await;
    let n: i64 = sqlx::query_scalar("SELECT candles_ingested FROM ingestion_status")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1800, "rows counted again on the redelivery");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_poison_page_is_dead_lettered_whole() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut dlq = client.subscribe("dlq.badpage").await.unwrap();
    client.flush().await.unwrap();
    let good = history("GOODUSDT", 0, 300, 0);
    let base = history("BADUSDT", 0, 10, 0);
    let mut nan = base.clone();
    nan[9].close = "NaN".into();
    let mut forming = base.clone();
    forming[4].closed = false;
    let mut mixed = base.clone();
    mixed[5].symbol = "GOODUSDT".parse().unwrap();
    let mut backwards = base.clone();
    backwards.swap(2, 3);
    let (subject, headers, _) = page_message(&base);
    let mut v2 = headers.clone();
    v2.insert(codec::SCHEMA_HEADER, "kline-page/2");
    let page = |c: &[KlineEvent]| {
        codec::encode(&klinebus_schemas::closed::ClosedCandlesRef { candles: c }).unwrap()
    };
    let poison: Vec<(String, async_nats::HeaderMap, Vec<u8>, &str)> = vec![
        (subject.clone(), headers.clone(), page(&nan), "invalid"),
        (subject.clone(), headers.clone(), page(&forming), "page"),
        (subject.clone(), headers.clone(), page(&mixed), "page"),
        (subject.clone(), headers.clone(), page(&backwards), "page"),
        (subject.clone(), headers.clone(), page(&[]), "page"),
        (subject.clone(), v2, page(&base), "version"),
        (
            subject.clone(),
            headers.clone(),
            b"\x81\xa7candles\x93garbage".to_vec(),
            "undecodable",
        ),
        // A single event under the page header, and a page under the single one.
        (
            subject.clone(),
            headers.clone(),
            codec::encode(&base[0]).unwrap(),
            "undecodable",
        ),
        (
            subject.clone(),
            schema_headers(),
            page(&base),
            "undecodable",
        ),
        (
            "klines.ws.binance.BADUSDT.1m".into(),
            headers.clone(),
            page(&base),
            "subject",
        ),
    ];
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "badpage", &[]));
    for (i, chunk) in good.chunks(30).enumerate() {
        publish_pages_no_id(&js, chunk, 30).await;
        if let Some((s, hd, p, _)) = poison.get(i) {
            publish_raw(&js, s, hd.clone(), p.clone()).await;
        }
    }
    assert_converges(&js, &db.pool, "badpage", &expected(&good)).await;
    // Two workers: the dead letters may come in any order.
    let mut letters = Vec::new();
    for _ in &poison {
        let m = tokio::time::timeout(Duration::from_secs(5), dlq.next())
            .await
            .expect("dead letter missing")
            .unwrap();
        let hd = m.headers.as_ref().unwrap();
        let header = |name: &str| hd.get(name).unwrap().as_str().to_owned();
        letters.push((
            header("Klinebus-Dlq-Subject"),
            header("Klinebus-Dlq-Reason"),
            m.payload.to_vec(),
        ));
    }
    for (s, _, payload, kind) in &poison {
        let found = letters.iter().position(|(subject, reason, p)| {
            subject == s && reason.starts_with(kind) && p == payload
        });
        let Some(i) = found else {
            panic!("no {kind} dead letter with the original payload among {letters:?}");
        };
        letters.swap_remove(i);
    }
    // Not one candle of a bad page, not even its good ones.
    let bad: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles WHERE symbol = 'BADUSDT'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(bad, 0);
    stop.cancel();
    h.await.unwrap();
}

/// The sink, recording each batch's messages and candles.
struct Recording {
    sink: PgSink,
    batches: Arc<Mutex<Vec<(usize, usize)>>>,
}

impl Handler for Recording {
    type Item = Vec<KlineEvent>;
    type Committed = Vec<KlineEvent>;

    fn decode(&self, msg: &Message) -> Result<Self::Item, Poison> {
        self.sink.decode(msg)
    }

    fn weight(msg: &Message) -> usize {
        PgSink::weight(msg)
    }

    async fn handle(
        &mut self,
        batch: &[Delivered<Self::Item>],
    ) -> Result<Self::Committed, HandlerError> {
        let candles = batch.iter().map(|d| d.event.len()).sum();
        self.batches.lock().unwrap().push((batch.len(), candles));
        self.sink.handle(batch).await
    }

    async fn after_commit(&mut self, committed: Self::Committed) -> Option<Confirmation> {
        self.sink.after_commit(committed).await
    }
}

/// `--batch-size` counts candles: a page larger than it is a batch alone, and no batch holds
/// more candles than it otherwise.
#[tokio::test]
async fn a_page_larger_than_the_batch_size_is_a_batch_alone() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let big = history("BIGUSDT", 0, 3000, 0);
    let small = history("SMALLUSDT", 0, 120, 0);
    let singles = history("ONEUSDT", 0, 60, 0);
    let mut spec = ConsumerSpec::klines("big", String::new());
    spec.ack_wait = Duration::from_secs(2);
    let mut o = ConsumeOptions::new(spec);
    o.batch_size = 50;
    o.flush_interval = Duration::from_millis(20);
    let consumer = Consumer::new(js.clone(), o);
    consumer.prepare(&StartFrom::Resume).await.unwrap();
    publish_pages_no_id(&js, &big, 1000).await;
    publish_pages_no_id(&js, &small, 40).await;
    publish_no_id(&js, &singles).await;
    let batches = Arc::new(Mutex::new(Vec::new()));
    let mut sink = Recording {
        sink: PgSink::new(
            db.pool.clone(),
            Some(js.clone()),
            Health::default(),
            Default::default(),
        ),
        batches: batches.clone(),
    };
    let stop = CancellationToken::new();
    let t = stop.clone();
    let run = tokio::spawn(async move { consumer.run(&mut sink, t).await.unwrap() });
    let mut finals = big.clone();
    finals.extend(singles);
    finals.extend(small);
    assert_converges(&js, &db.pool, "big", &expected(&finals)).await;
    stop.cancel();
    run.await.unwrap();
    let batches = batches.lock().unwrap().clone();
    for &(messages, candles) in &batches {
        assert!(
            candles <= 50 || messages == 1,
            "a batch of {messages} messages, {candles} candles: {batches:?}"
        );
    }
    assert_eq!(
        batches.iter().filter(|b| b.1 == 1000).count(),
        3,
        "{batches:?}"
    );
    assert_eq!(batches.iter().map(|b| b.1).sum::<usize>(), 3180);
}

/// The two ways in, one flush at a time on the same table contents: the same rows changed,
/// the same rows found already there, the same table and status.
#[tokio::test]
async fn copy_and_unnest_write_the_same() {
    let unnest = TestDb::fresh().await;
    let copy = TestDb::fresh().await;
    // Flush 1: history. Flush 2: some of it again (unchanged, some rechecked), older and newer
    // versions, forming updates of stored and of new keys. Flush 3: all of flush 2 again.
    let first = history("SAMEUSDT", 0, 1500, 0);
    let mut second: Vec<KlineEvent> = Vec::new();
    for m in 0..2000 {
        let v = match m % 5 {
            0 => candle("SAMEUSDT", m, true, 0),  // same (or new past 1500)
            1 => candle("SAMEUSDT", m, true, 4),  // newer closed
            2 => candle("SAMEUSDT", m, false, 3), // forming: loses to a stored closed
            3 => candle("OTHRUSDT", m, false, 1), // another series, forming
            _ => {
                let mut older = candle("SAMEUSDT", m, true, 0);
                older.event_time -= 1; // older closed: loses
                older.close = "77.00000000".into();
                older
            }
        };
        second.push(v);
    }
    for c in &mut second {
        if c.closed && c.event_time == c.close_time + 1 {
            c.source = klinebus_schemas::Source::Backfill;
        }
    }
    let flushes = [first.clone(), second.clone(), second];
    for (i, flush) in flushes.iter().enumerate() {
        let rows = kline_pg_sink::dedup::winners(flush);
        let recheck: Vec<bool> = rows
            .iter()
            .map(|r| r.closed && (r.open_time / 60_000) % 2 == 0)
            .collect();
        let a = write_batch(&unnest.pool, &rows, &recheck, 0).await.unwrap();
        let b = write_batch(&copy.pool, &rows, &recheck, 1).await.unwrap();
        assert_eq!(a.changed, b.changed, "flush {i}: changed");
        assert_eq!(a.already, b.already, "flush {i}: already");
        assert_eq!(
            table(&unnest.pool).await,
            table(&copy.pool).await,
            "flush {i}"
        );
        assert_eq!(
            status_rows(&unnest.pool).await,
            status_rows(&copy.pool).await,
            "flush {i}: status"
        );
        let changed = a.changed_count();
        eprintln!(
            "flush {i}: {} rows, {changed} changed, {} already",
            a.rows(),
            a.already_count()
        );
        match i {
            0 => assert_eq!(changed, 1500),
            1 => assert!(changed > 0 && changed < a.rows() && a.already_count() > 0),
            _ => assert_eq!(changed, 0),
        }
    }
}

/// The same stream into two databases, one sink writing every flush with COPY, the other with
/// UNNEST: the same table.
#[tokio::test]
async fn copy_and_unnest_sinks_build_the_same_table() {
    let m = mixed();
    let mut tables = Vec::new();
    for (_, copy_min) in PATHS {
        let nats = NatsServer::start();
        let db = TestDb::fresh().await;
        let js = js_for(&nats.url()).await;
        publish_no_id(&js, &m.singles[..m.singles.len() / 2]).await;
        publish_pages_no_id(&js, &m.pages, 333).await;
        publish_no_id(&js, &m.singles[m.singles.len() / 2..]).await;
        let extra = ["--batch-size", "700", "--copy-min-rows", copy_min];
        let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "same", &extra));
        assert_converges(&js, &db.pool, "same", &expected(&m.finals)).await;
        tables.push(table(&db.pool).await);
        stop.cancel();
        h.await.unwrap();
    }
    assert_eq!(tables[0], tables[1]);
}

/// A fresh range checked, then one of its keys stored by another writer before the COPY (its
/// transaction still open while the COPY waits for it): the flush is done again with the
/// upsert, which applies the winning rule to that key.
#[tokio::test]
async fn a_key_stored_meanwhile_is_upserted_by_the_rule() {
    for other_wins in [false, true] {
        let db = TestDb::fresh().await;
        let ours = history("RACEUSDT", 0, 1200, 0);
        let k = 600;
        let mut theirs = candle(
            "RACEUSDT",
            k as i64,
            other_wins,
            if other_wins { 9 } else { 1 },
        );
        theirs.close = "123.45678900".into();
        let mut other = db.pool.begin().await.unwrap();
        let single = [&theirs];
        kline_pg_sink::upsert::upsert_candles(&mut other, &single)
            .await
            .unwrap();
        let pool = db.pool.clone();
        let rows = ours.clone();
        let write = tokio::spawn(async move {
            let refs: Vec<&KlineEvent> = rows.iter().collect();
            write_batch(&pool, &refs, &[], 1).await.unwrap()
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !write.is_finished(),
            "the COPY did not wait for the other writer"
        );
        other.commit().await.unwrap();
        let written = write.await.unwrap();
        let mut finals = ours.clone();
        if other_wins {
            finals[k] = theirs.clone();
        }
        assert_eq!(
            table(&db.pool).await,
            expected(&finals),
            "other wins: {other_wins}"
        );
        let mut changed = vec![true; ours.len()];
        changed[k] = !other_wins;
        assert_eq!(written.changed, changed, "other wins: {other_wins}");
    }
}

/// A bulk flush the database refuses (a constraint one candle of the page violates) is
/// recorded in `ingestion_status`, retried, and written once the database takes it, as a small
/// one is.
#[tokio::test]
async fn a_refused_bulk_flush_is_recorded_and_retried() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    sqlx::query("ALTER TABLE ohlcv_candles ADD CONSTRAINT test_block CHECK (trades < 1000)")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut finals = history("BLOCKUSDT", 0, 1000, 0);
    finals[700].trades = 5000;
    let extra = ["--batch-size", "1000", "--copy-min-rows", "1"];
    let (stop, h) = spawn_sink(config(&nats.url(), &db.url, "refused", &extra));
    publish_pages_no_id(&js, &finals, 1000).await;
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
    assert_eq!(count(&db.pool).await, 0, "part of a refused page stored");
    sqlx::query("ALTER TABLE ohlcv_candles DROP CONSTRAINT test_block")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_converges(&js, &db.pool, "refused", &expected(&finals)).await;
    let (status, errors): (String, i32) =
        sqlx::query_as("SELECT status::text, error_count FROM ingestion_status")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), errors), ("active", 0));
    stop.cancel();
    h.await.unwrap();
}
