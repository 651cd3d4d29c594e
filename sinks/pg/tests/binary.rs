//! The real `kline-pg-sink` binary as a child process: SIGKILL mid-run and restart, SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use klinebus_testkit::{NatsServer, TestDb};

fn start(nats: &str, db: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kline-pg-sink"))
        .args([
            "--nats-url",
            nats,
            "--database-url",
            db,
            "--consumer",
            "bin",
        ])
        .args([
            "--batch-size",
            "20",
            "--flush-interval-ms",
            "20",
            "--ack-wait-secs",
            "2",
        ])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn sigkill_mid_run_then_restart_is_exactly_once() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let mut all = Vec::new();
    let mut finals = Vec::new();
    for m in 0..1500 {
        all.push(candle("ATOMUSDT", m, false, 2));
        let c = candle("ATOMUSDT", m, true, 0);
        all.push(c.clone());
        finals.push(c);
    }
    publish_no_id(&js, &all).await;
    let mut child = start(&nats.url(), &db.url);
    wait_for("some rows", Duration::from_secs(15), || async {
        count(&db.pool).await > 100
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = count(&db.pool).await;
    assert!(
        partial < 1500,
        "killed too late to test anything ({partial} rows)"
    );
    let mut child = start(&nats.url(), &db.url);
    assert_converges(&js, &db.pool, "bin", &expected(&finals)).await;
    let n: i64 = sqlx::query_scalar("SELECT candles_ingested FROM ingestion_status")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(n >= 1500, "candles_ingested {n}");
    // Batches the killed instance committed but did not get to announce come back and are
    // announced by the new one.
    assert_all_announced(&js, &db.pool).await;
    // SIGTERM: graceful, exit status 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
}

/// With the broker gone there is nothing to ack or publish to: SIGTERM must not sit out the
/// ack-flush and post-commit timeouts (an orchestrator's grace period is often 10 s).
#[tokio::test]
async fn sigterm_with_the_broker_gone_exits_promptly() {
    let mut nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = js_for(&nats.url()).await;
    let finals: Vec<_> = (0..50).map(|m| candle("NEARUSDT", m, true, 0)).collect();
    publish_no_id(&js, &finals).await;
    let mut child = start(&nats.url(), &db.url);
    assert_converges(&js, &db.pool, "bin", &expected(&finals)).await;
    drop(js);
    nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let sent = std::time::Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(4),
            "still running {:?} after SIGTERM with NATS down",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
}
