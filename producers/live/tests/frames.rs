//! Malformed frames from a hostile WebSocket server are counted and logged, never published,
//! and never stop the feed.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kline_live::{run_live, LiveStats, Settings};
use klinebus_binance::{RestClient, RestConfig, WeightLimiter};
use klinebus_schemas::streams::{Retention, KLINES_STREAM};
use klinebus_schemas::{bus, codec, Interval, KlineEvent, Source, Symbol};
use klinebus_testkit::NatsServer;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const RAW: &str = include_str!("../../binance/fixtures/ws_kline_raw.json");
const COMBINED: &str = include_str!("../../binance/fixtures/ws_kline_combined.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_counted_and_never_published() {
    let bad: Vec<String> = vec![
        "not json".into(),
        RAW.replace("\"kline\"", "\"trade\""),
        RAW.replace("\"n\": 412", "\"n\": \"412\""),
        COMBINED.replace("btcusdt@kline_1m", "btcusdt@kline_5m"),
        RAW.replace("BTCUSDT", "ETHUSDT"), // a stream this connection did not subscribe to
        RAW.replace("\"h\": \"105322.00000000\"", "\"h\": \"1.00000000\""),
    ];
    let frames: Vec<String> = bad
        .iter()
        .cloned()
        .chain([r#"{"result":null,"id":1}"#.to_owned(), COMBINED.to_owned()])
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_url = format!("ws://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        for f in frames {
            ws.send(Message::Text(f.into())).await.unwrap();
        }
        // Keep the connection open (and answer the client's close) until the test ends.
        while let Some(Ok(_)) = ws.next().await {}
    });

    let sim = binance_sim::spawn(binance_sim::Config::default())
        .await
        .unwrap();
    let nats = NatsServer::start();
    let client = bus::connect(&bus::BusOptions::new(nats.url(), "test"))
        .await
        .unwrap();
    let js = bus::jetstream(client, 100);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    let rest = RestClient::new(
        RestConfig {
            base_url: sim.base_url(),
            ..RestConfig::default()
        },
        Arc::new(WeightLimiter::default()),
    )
    .unwrap();
    let symbols: Vec<Symbol> = vec!["BTCUSDT".parse().unwrap()];
    let settings = Settings::new(symbols, vec![Interval::M1], ws_url);
    let stats = Arc::new(LiveStats::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_live(
        settings,
        rest,
        js.clone(),
        stats.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    server.abort();

    assert_eq!(stats.malformed.load(Relaxed), bad.len() as u64);
    assert_eq!(stats.ws_events.load(Relaxed), 1);
    assert_eq!(
        stats.reconnects.load(Relaxed),
        0,
        "bad frames do not cost the connection"
    );
    let stream = js.get_stream(KLINES_STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "klines.ws.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = consumer.messages().await.unwrap();
    let mut got: Vec<KlineEvent> = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), msgs.next()).await {
        got.push(codec::decode(&m.unwrap().payload).unwrap());
    }
    assert_eq!(got.len(), 1, "{got:?}");
    let ev = &got[0];
    assert_eq!(ev.source, Source::Ws);
    assert_eq!(ev.open_time, 1_749_038_760_000);
    assert_eq!(ev.open, "105318.41000000");
    assert_eq!(ev.event_time, 1_749_038_784_182);
    assert!(!ev.closed);
}
