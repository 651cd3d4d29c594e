//! The stream definitions and publishing against a real (private) nats-server.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt;
use klinebus_schemas::bus::{self, BusOptions};
use klinebus_schemas::codec;
use klinebus_schemas::streams::{ConsumerSpec, Retention, KLINES_STREAM};
use klinebus_schemas::subjects::KlineFilter;
use klinebus_schemas::{Interval, KlineEvent, Source, Venue};
use klinebus_testkit::NatsServer;

fn event(open_time: i64, closed: bool, source: Source) -> KlineEvent {
    KlineEvent {
        venue: Venue::binance(),
        symbol: "BTCUSDT".parse().unwrap(),
        interval: Interval::M1,
        open_time,
        close_time: open_time + 59_999,
        open: "100.00000000".into(),
        high: "101.00000000".into(),
        low: "99.00000000".into(),
        close: "100.50000000".into(),
        volume: "1.00000000".into(),
        quote_volume: "100.25000000".into(),
        taker_buy_base: "0.50000000".into(),
        taker_buy_quote: "50.12000000".into(),
        trades: 10,
        closed,
        event_time: open_time + 60_000,
        source,
        received_at: open_time + 60_010,
    }
}

#[tokio::test]
async fn streams_are_idempotent_and_closed_candles_dedup() {
    let nats = NatsServer::start();
    let client = bus::connect(&BusOptions::new(nats.url(), "test"))
        .await
        .unwrap();
    let js = bus::jetstream(client, 1024);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    // Second call (another binary starting) is a no-op, not an error.
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();

    let t = 1_749_038_400_000;
    // The same closed candle from WebSocket and from backfill: one stored message.
    let a = bus::publish_event(&js, &event(t, true, Source::Ws))
        .await
        .unwrap()
        .await
        .unwrap();
    let b = bus::publish_event(&js, &event(t, true, Source::Backfill))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!a.duplicate);
    assert!(
        b.duplicate,
        "second publication of a closed candle must be a server-side duplicate"
    );
    // Forming updates are never deduplicated.
    for _ in 0..2 {
        let f = bus::publish_event(&js, &event(t + 60_000, false, Source::Ws))
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(!f.duplicate);
    }
    let mut stream = js.get_stream(KLINES_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 3);

    // A consumer filtered on one source sees only that source, with headers and a decodable body.
    let spec = ConsumerSpec::klines(
        "only-ws",
        KlineFilter {
            source: Some(Source::Ws),
            ..Default::default()
        }
        .subject(),
    );
    let consumer = stream
        .create_consumer(bus::consumer_config(&spec, Default::default()))
        .await
        .unwrap();
    let mut msgs = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut n = 0;
    while let Some(m) = msgs.next().await {
        let m = m.unwrap();
        let h = m.headers.as_ref().unwrap();
        assert_eq!(
            h.get(codec::SCHEMA_HEADER).unwrap().as_str(),
            codec::SCHEMA_VERSION
        );
        let e: KlineEvent = codec::decode(&m.payload).unwrap();
        assert_eq!(e.source, Source::Ws);
        m.ack().await.unwrap();
        n += 1;
    }
    assert_eq!(n, 3);
}

#[tokio::test]
async fn a_seed_list_of_urls_connects_and_bad_urls_are_clear_errors() {
    let nats = NatsServer::start();
    // A cluster seed list whose first server is down: the client still connects.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let list = format!("nats://127.0.0.1:{dead}, {}", nats.url());
    let client = bus::connect(&BusOptions::new(list, "test")).await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(
        bus::server_addrs("nats://a:4222,nats://b:4222")
            .unwrap()
            .len(),
        2
    );
    let e = bus::server_addrs("nats://u:hunter2@h:notaport")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("invalid NATS URL") && !e.contains("hunter2"),
        "{e}"
    );
    assert!(bus::server_addrs(" , ").is_err());
}

/// Acks that never come (a subscriber that does not answer, like a broker that lost them in a
/// restart) all fail by the one deadline instead of one publish timeout each; acks that come
/// are kept, in order.
#[tokio::test]
async fn lost_acks_fail_by_one_deadline() {
    let nats = NatsServer::start();
    let client = bus::connect(&BusOptions::new(nats.url(), "test"))
        .await
        .unwrap();
    let _silent = client.subscribe("void.>").await.unwrap();
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "OKAY".into(),
        subjects: vec!["okay.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut acks = Vec::new();
    for i in 0..20 {
        let subject = if i < 5 { "okay" } else { "void" };
        acks.push(
            js.publish(format!("{subject}.{i}"), "x".into())
                .await
                .unwrap(),
        );
    }
    let started = tokio::time::Instant::now();
    let results = bus::await_acks(acks, started + Duration::from_millis(500)).await;
    let took = started.elapsed();
    assert_eq!(results.len(), 20);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(ack) => assert!(i < 5 && ack.sequence == i as u64 + 1, "{i}: {ack:?}"),
            Err(e) => assert!(
                i >= 5 && e.kind() == async_nats::jetstream::context::PublishErrorKind::TimedOut,
                "{i}: {e}"
            ),
        }
    }
    // One by one they would take 15 × 2 s.
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

/// A user that may read the streams but not create them (compose's services): a missing stream
/// is an error naming it and the operator's step; `apply_streams` by that user says whom it
/// needs; a user with the right creates them as before.
#[tokio::test]
async fn a_missing_stream_this_user_may_not_create_names_streams_apply() {
    let config = r#"
jetstream {
  store_dir: "/tmp"
}
authorization {
  users = [
    { user: root, password: r }
    { user: svc, password: s, permissions: {
        publish: { allow: ["$JS.API.STREAM.INFO.*"] }
        subscribe: { allow: ["_INBOX.>"] }
    } }
  ]
}
"#;
    let nats = NatsServer::start_with_config(config, &[], &[]);
    let js = |user: &str, password: &str| {
        let mut o = BusOptions::new(nats.url(), "test");
        o.user = Some(user.into());
        o.password = Some(password.into());
        async move {
            // A denied request is never answered: give up quickly.
            async_nats::jetstream::ContextBuilder::new()
                .timeout(Duration::from_secs(1))
                .build(bus::connect(&o).await.unwrap())
        }
    };
    let svc = js("svc", "s").await;
    match bus::ensure_streams(&svc, &Retention::default()).await {
        Err(e @ bus::BusError::Missing { .. }) => {
            let text = e.to_string();
            assert!(text.contains("stream KLINES does not exist"), "{text}");
            assert!(text.contains("`klinectl streams apply`"), "{text}");
        }
        other => panic!("expected BusError::Missing, got {other:?}"),
    }
    match bus::apply_streams(&svc, &Retention::default()).await {
        Err(e @ bus::BusError::ApplyRefused { .. }) => {
            assert!(e.to_string().contains("admin user"), "{e}");
        }
        other => panic!("expected BusError::ApplyRefused, got {other:?}"),
    }
    assert!(
        nats.output()
            .contains("Subject \"$JS.API.STREAM.CREATE.KLINES\""),
        "{}",
        nats.output()
    );

    let root = js("root", "r").await;
    bus::ensure_streams(&root, &Retention::default())
        .await
        .unwrap();
    // Now they exist, the reader starts.
    bus::ensure_streams(&svc, &Retention::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn forming_updates_without_acks_are_stored_in_order_with_the_schema_header() {
    let nats = NatsServer::start();
    let client = bus::connect(&BusOptions::new(nats.url(), "test"))
        .await
        .unwrap();
    let js = bus::jetstream(client.clone(), 5_000);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    let t = 1_749_038_400_000;
    for i in 0..3 {
        let mut e = event(t, false, Source::Ws);
        e.event_time = t + i;
        bus::publish_forming(&client, &e).await.unwrap();
    }
    // A closed candle after them, with its ack: everything before it is stored too.
    bus::publish_event(&js, &event(t, true, Source::Ws))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut stream = js.get_stream(KLINES_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 4);
    let subject = "klines.ws.binance.BTCUSDT.1m";
    let mut seen = Vec::new();
    for seq in 1..=4 {
        let m = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(m.subject.as_str(), subject);
        let h = m.headers.clone();
        assert_eq!(
            h.get(codec::SCHEMA_HEADER).map(|v| v.as_str()),
            Some(codec::SCHEMA_VERSION)
        );
        let ev: KlineEvent = codec::decode(&m.payload).unwrap();
        seen.push((ev.closed, ev.event_time));
    }
    assert_eq!(
        seen,
        vec![
            (false, t),
            (false, t + 1),
            (false, t + 2),
            (true, t + 60_000)
        ]
    );
}
