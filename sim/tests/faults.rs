//! Each fault observed over the real protocol, switched in-process and via the admin API.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use binance_sim::Gap;
use common::*;
use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const Q: &str = "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=2";

#[tokio::test]
async fn rest_5xx_429_and_delay() {
    let sim = sim(&[]).await;
    sim.faults().fail_next_rest(2, 503);
    for _ in 0..2 {
        let r = get(&sim, Q).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["code"], -1008);
        assert_eq!(
            r.header("content-type").unwrap(),
            "application/json;charset=UTF-8"
        );
    }
    assert_eq!(get(&sim, Q).await.status, 200);

    let snap = post(
        &sim,
        "/_sim/faults",
        json!({"rest_fail_next": 1, "rest_fail_status": 500}),
    )
    .await;
    assert_eq!(snap["rest_fail_remaining"], 1);
    let r = get(&sim, "/api/v3/time").await;
    assert_eq!((r.status, r.json()["code"].as_i64()), (500, Some(-1001)));

    post(
        &sim,
        "/_sim/faults",
        json!({"rest_throttle_next": 2, "rest_throttle_retry_after_secs": 7}),
    )
    .await;
    for _ in 0..2 {
        let r = get(&sim, Q).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after").unwrap(), "7");
        assert_eq!(r.json()["code"], -1003);
    }
    assert_eq!(get(&sim, Q).await.status, 200);

    sim.faults().set_rest_delay_ms(300);
    let t = std::time::Instant::now();
    assert_eq!(get(&sim, "/api/v3/ping").await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let snap = reqwest::get(format!("{}/_sim/faults", sim.base_url()))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(snap["rest_delay_ms"], 300);
}

#[tokio::test]
async fn ws_refuse_drop_and_stall() {
    let sim = sim(&["--speed", "600", "--ws-ping-secs", "1"]).await;
    let url = format!("{}/ws/btcusdt@kline_1m", sim.ws_url());

    post(&sim, "/_sim/faults", json!({"ws_refuse": true})).await;
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 503),
        other => panic!("expected a refused upgrade, got {:?}", other.map(|_| ())),
    }
    sim.faults().set_ws_refuse(false);

    // Drop: the connection ends at once, without a close frame.
    let mut a = ws(&sim, "/ws/btcusdt@kline_1m").await;
    assert!(next_text(&mut a, Duration::from_secs(3)).await.is_some());
    let snap = post(&sim, "/_sim/ws/drop", json!({})).await;
    assert_eq!(snap["ws_drops"], 1);
    let end = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut ended = false;
    while let Ok(m) = tokio::time::timeout_at(end, a.next()).await {
        match m {
            Some(Ok(Message::Close(_))) => panic!("a drop sends no close frame"),
            Some(Ok(_)) => continue,
            _ => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "dropped connection must end");

    // Stall: open, pinged, but no klines; events resume afterwards.
    let mut b = ws(&sim, "/ws/btcusdt@kline_1m").await;
    assert!(next_text(&mut b, Duration::from_secs(3)).await.is_some());
    sim.faults().set_ws_stall(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    while tokio::time::timeout(Duration::from_millis(10), b.next())
        .await
        .is_ok()
    {} // drain in-flight
    let end = tokio::time::Instant::now() + Duration::from_millis(2500);
    let (mut pings, mut texts) = (0, 0);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(end, b.next()).await {
        match m {
            Message::Ping(_) => pings += 1,
            Message::Text(_) => texts += 1,
            _ => {}
        }
    }
    assert_eq!(texts, 0, "stalled stream sent klines");
    assert!(pings >= 1, "stalled stream must still ping");
    let snap = reqwest::get(format!("{}/_sim/faults", sim.base_url()))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(snap["ws_stall"], true);
    assert_eq!(snap["ws_connections"], 1);
    sim.faults().set_ws_stall(false);
    assert!(next_text(&mut b, Duration::from_secs(3)).await.is_some());
}

#[tokio::test]
async fn gaps_apply_to_rest_and_ws() {
    let sim = sim(&["--speed", "600"]).await;
    let now = sim.clock().now_ms();
    let h = now - now % 3_600_000 - 3_600_000;
    let snap = post(
        &sim,
        "/_sim/faults",
        json!({"add_gaps": [{"symbol": "BTCUSDT", "start_ms": h, "end_ms": h + 1_800_000}]}),
    )
    .await;
    assert_eq!(snap["gaps"][0]["start_ms"], h);
    let rows = get(
        &sim,
        &format!(
            "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={}&limit=3",
            h - 60_000
        ),
    )
    .await
    .json();
    let opens: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_i64().unwrap())
        .collect();
    assert_eq!(opens, [h - 60_000, h + 1_800_000, h + 1_860_000]);
    let eth = get(
        &sim,
        &format!("/api/v3/klines?symbol=ETHUSDT&interval=1m&startTime={h}&limit=1"),
    )
    .await
    .json();
    assert_eq!(eth[0][0], h);

    // A gap over "now" and the next hour: the stream goes quiet but stays connected.
    let mut ws = ws(&sim, "/ws/btcusdt@kline_1m").await;
    assert!(next_text(&mut ws, Duration::from_secs(3)).await.is_some());
    let now = sim.clock().now_ms();
    let gap = Gap {
        symbol: None,
        start_ms: now - 120_000,
        end_ms: now + 24 * 3_600_000,
    };
    sim.faults().add_gap(gap.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    while tokio::time::timeout(Duration::from_millis(10), ws.next())
        .await
        .is_ok()
    {}
    assert!(
        next_text(&mut ws, Duration::from_secs(1)).await.is_none(),
        "no candles inside a gap"
    );
    assert!(sim.faults().remove_gap(&gap));
    assert!(next_text(&mut ws, Duration::from_secs(3)).await.is_some());
    assert_eq!(sim.faults().snapshot().gaps.len(), 1);
}

#[tokio::test]
async fn start_up_flags_set_faults() {
    let sim = sim(&[
        "--gap",
        "*:2025-06-01T00:00:00Z..2025-06-01T01:00:00Z",
        "--refuse-ws",
        "--fail-next",
        "1",
        "--fail-status",
        "504",
        "--delay-ms",
        "5",
    ])
    .await;
    let snap = sim.faults().snapshot();
    assert!(snap.ws_refuse);
    assert_eq!(
        (
            snap.rest_fail_remaining,
            snap.rest_fail_status,
            snap.rest_delay_ms
        ),
        (1, 504, 5)
    );
    assert_eq!(
        snap.gaps,
        [Gap {
            symbol: None,
            start_ms: 1_748_736_000_000,
            end_ms: 1_748_739_600_000
        }]
    );
    assert_eq!(get(&sim, Q).await.status, 504);
    let r = get(
        &sim,
        "/api/v3/klines?symbol=XRPUSDT&interval=1h&startTime=1748736000000&limit=1",
    )
    .await
    .json();
    assert_eq!(r[0][0], 1_748_739_600_000i64);
}
