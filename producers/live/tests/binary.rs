//! The `kline-live` binary as deployed: env configuration, /metrics, the fallback log line, and
//! a clean exit 0 on SIGTERM after flushing.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use klinebus_schemas::streams::{Retention, KLINES_STREAM};
use klinebus_schemas::{bus, codec, KlineEvent, Source};
use klinebus_testkit::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_logs_serves_metrics_and_exits_zero_on_sigterm() {
    let sim = binance_sim::spawn(binance_sim::Config::parse_from([
        "binance-sim",
        "--symbols",
        "BTCUSDT",
        "--speed",
        "600",
        "--refuse-ws",
    ]))
    .await
    .unwrap();
    let nats = NatsServer::start();
    let metrics_addr = free_addr();
    let log = tempfile_path();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kline-live"))
        .env("TRADING_PAIRS", "BTCUSDT")
        .env("TIMEFRAMES", "1m")
        .env("BINANCE_WS_URL", sim.ws_url())
        .env("BINANCE_REST_URL", sim.base_url())
        .env("NATS_URL", nats.url())
        .env("METRICS_ADDR", &metrics_addr)
        .env("LIVE_FALLBACK_AFTER", "2")
        .env("LIVE_BACKOFF_MIN", "20ms")
        .env("LIVE_BACKOFF_MAX", "50ms")
        .env("POLLING_INTERVAL_1m", "0.05")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Until it polls: the endpoint comes up at start-up, the fallback after two refusals (a
    // loaded machine takes longer than an idle one for either).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        if tokio::net::TcpStream::connect(&metrics_addr).await.is_ok() {
            let m = http_get(&metrics_addr, "/metrics").await;
            if m.contains("klinebus_live_mode 1")
                && m.contains("klinebus_live_published_total{source=\"poll\"}")
            {
                break m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not polling in 30 s: {m}"
            );
        } else {
            assert!(std::time::Instant::now() < deadline, "no /metrics in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metrics.contains("klinebus_live_published_total{source=\"poll\"}"),
        "{metrics}"
    );
    assert!(http_get(&metrics_addr, "/health")
        .await
        .starts_with("HTTP/1.1 200"));

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within 15 s of SIGTERM")
        .unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit {status:?}\n{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("Falling back to polling"))
        .unwrap_or_else(|| panic!("no fallback line in\n{stderr}"));
    assert!(line.contains("reason="), "{line}");
    assert!(stderr.contains("all publishes flushed"), "{stderr}");

    let client = bus::connect(&bus::BusOptions::new(nats.url(), "test"))
        .await
        .unwrap();
    let js = bus::jetstream(client, 100);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    let stream = js.get_stream(KLINES_STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "klines.poll.binance.BTCUSDT.1m".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = consumer.messages().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(2), msgs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ev: KlineEvent = codec::decode(&m.payload).unwrap();
    assert_eq!(ev.source, Source::Poll);
    assert!(ev.closed);
    let _ = std::fs::remove_file(&log);
}

fn tempfile_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kline-live-test-{}.log", std::process::id()))
}
