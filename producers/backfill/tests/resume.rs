//! The resume rule read through message gets only: a NATS user that may read `KLINES`
//! (`STREAM.INFO`, `STREAM.MSG.GET`) and nothing else, in particular no consumer, finds exactly
//! the open times the stream lacks on the series' subject: holes between stored pages, what a
//! purge took from the head of the stream (its first sequence no longer 1), and the tail after
//! the newest candle; messages of other subjects in between do not count.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use async_nats::jetstream::Context;
use kline_backfill::resume::{self, Missing};
use kline_backfill::SeriesPlan;
use klinebus_schemas::bus::{self, BusOptions};
use klinebus_schemas::streams::{Retention, KLINES_STREAM};
use klinebus_schemas::{subjects, Interval, KlineEvent, Source, Symbol, Venue};
use klinebus_testkit::NatsServer;

/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;
const MIN: i64 = 60_000;

/// `writer` may do anything; `reader` only what resume needs.
const CONFIG: &str = r#"
jetstream {
  store_dir: "/tmp"
}
authorization {
  users = [
    { user: writer, password: w }
    { user: reader, password: r, permissions: {
        publish: { allow: ["$JS.API.STREAM.INFO.KLINES", "$JS.API.STREAM.MSG.GET.KLINES"] }
        subscribe: { allow: ["_INBOX.>"] }
    } }
  ]
}
"#;

async fn connect(nats: &NatsServer, user: &str, password: &str) -> Context {
    let mut o = BusOptions::new(nats.url(), "resume-test");
    o.user = Some(user.into());
    o.password = Some(password.into());
    bus::jetstream(bus::connect(&o).await.unwrap(), 1024)
}

fn candle(symbol: &str, iv: Interval, open_time: i64, source: Source) -> KlineEvent {
    KlineEvent {
        venue: Venue::binance(),
        symbol: symbol.parse().unwrap(),
        interval: iv,
        open_time,
        close_time: iv.next_open(open_time) - 1,
        open: "100.00000000".into(),
        high: "101.00000000".into(),
        low: "99.00000000".into(),
        close: "100.50000000".into(),
        volume: "1.00000000".into(),
        quote_volume: "100.25000000".into(),
        taker_buy_base: "0.50000000".into(),
        taker_buy_quote: "50.12000000".into(),
        trades: 10,
        closed: true,
        event_time: iv.next_open(open_time),
        source,
        received_at: iv.next_open(open_time) + 10,
    }
}

/// Publishes `symbol`'s 1m candles of minutes `[from, to)` after T0 on its `source` subject as
/// pages of at most 1000; returns the stream sequence of the last page.
async fn publish_minutes(js: &Context, symbol: &str, source: Source, from: i64, to: i64) -> u64 {
    let candles: Vec<_> = (from..to)
        .map(|m| candle(symbol, Interval::M1, T0 + m * MIN, source))
        .collect();
    let subject = subjects::kline(
        source,
        &Venue::binance(),
        &symbol.parse::<Symbol>().unwrap(),
        Interval::M1,
    );
    let mut seq = 0;
    for page in candles.chunks(1000) {
        let ack = bus::publish_page(js, subject.clone(), page)
            .await
            .unwrap()
            .unwrap();
        seq = ack.await.unwrap().sequence;
    }
    seq
}

fn minutes(ranges: &[(i64, i64)]) -> Vec<(i64, i64)> {
    ranges
        .iter()
        .map(|(a, b)| ((a - T0) / MIN, (b - T0) / MIN))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_reads_the_stream_without_a_consumer() {
    let nats = NatsServer::start_with_config(CONFIG, &[], &[]);
    let writer = connect(&nats, "writer", "w").await;
    bus::ensure_streams(&writer, &Retention::default())
        .await
        .unwrap();
    // What an interrupted run with lost publishes leaves: [0, 2000) and [3000, 3500) as pages,
    // two single events at 3600 and 3601; other series' messages in between.
    let head = publish_minutes(&writer, "BTCUSDT", Source::Backfill, 0, 1000).await;
    publish_minutes(&writer, "ETHUSDT", Source::Backfill, 0, 3000).await;
    publish_minutes(&writer, "BTCUSDT", Source::Backfill, 1000, 2000).await;
    publish_minutes(&writer, "BTCUSDT", Source::Ws, 2000, 3000).await;
    publish_minutes(&writer, "BTCUSDT", Source::Backfill, 3000, 3500).await;
    for m in [3600, 3601] {
        let ev = candle("BTCUSDT", Interval::M1, T0 + m * MIN, Source::Backfill);
        bus::publish_event(&writer, &ev)
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let reader = connect(&nats, "reader", "r").await;
    let plan = SeriesPlan {
        symbol: "BTCUSDT".parse().unwrap(),
        interval: Interval::M1,
        from_ms: T0,
        to_ms: T0 + 5000 * MIN,
    };
    let Missing { ranges, present } = resume::missing(&reader, &plan).await.unwrap();
    assert_eq!(minutes(&ranges), [(2000, 3000), (3500, 3600), (3602, 5000)]);
    assert_eq!(present, 2000 + 500 + 2);

    // The head of the stream is purged: its first sequence is now past the first page.
    writer
        .get_stream(KLINES_STREAM)
        .await
        .unwrap()
        .purge()
        .sequence(head + 1)
        .await
        .unwrap();
    let info = writer
        .get_stream(KLINES_STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.first_sequence, head + 1);
    let Missing { ranges, present } = resume::missing(&reader, &plan).await.unwrap();
    assert_eq!(
        minutes(&ranges),
        [(0, 1000), (2000, 3000), (3500, 3600), (3602, 5000)]
    );
    assert_eq!(present, 1000 + 500 + 2);

    // A window after the newest stored candle is missing whole, without a scan.
    let later = SeriesPlan {
        from_ms: T0 + 4000 * MIN,
        ..plan.clone()
    };
    let m = resume::missing(&reader, &later).await.unwrap();
    assert_eq!(minutes(&m.ranges), [(4000, 5000)]);
    assert_eq!(m.present, 0);

    // The reader never needed more than its two subjects.
    let violations: Vec<_> = nats
        .output()
        .lines()
        .filter(|l| l.contains("Violation"))
        .map(str::to_owned)
        .collect();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// Many small messages: one get each, in order; the count and the time it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_are_read_one_get_each() {
    let nats = NatsServer::start();
    let js = bus::jetstream(
        bus::connect(&BusOptions::new(nats.url(), "resume-test"))
            .await
            .unwrap(),
        4096,
    );
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    // 600 hours as 600 single events, every tenth missing.
    let mut acks = Vec::new();
    for h in (0..600).filter(|h| h % 10 != 5) {
        let ev = candle(
            "BTCUSDT",
            Interval::H1,
            T0 + h * 3_600_000,
            Source::Backfill,
        );
        acks.push(bus::publish_event(&js, &ev).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    let plan = SeriesPlan {
        symbol: "BTCUSDT".parse().unwrap(),
        interval: Interval::H1,
        from_ms: T0,
        to_ms: T0 + 600 * 3_600_000,
    };
    let started = Instant::now();
    let m = resume::missing(&js, &plan).await.unwrap();
    eprintln!("540 messages read in {:?}", started.elapsed());
    assert_eq!(m.present, 540);
    let holes: Vec<_> = (0..60)
        .map(|i| {
            let h = T0 + (i * 10 + 5) * 3_600_000;
            (h, h + 3_600_000)
        })
        .collect();
    assert_eq!(m.ranges, holes);
}
