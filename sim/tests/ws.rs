//! WebSocket protocol checked against the fixtures with tokio-tungstenite as a plain client.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
    // Stay under Binance's 5 incoming messages per second.
    tokio::time::sleep(Duration::from_millis(250)).await;
}

/// The next kline event (raw form) with `x == closed`.
async fn next_event(ws: &mut Ws, closed: Option<bool>) -> (String, Value) {
    loop {
        let t = next_text(ws, Duration::from_secs(10))
            .await
            .expect("a kline event");
        let v: Value = serde_json::from_str(&t).unwrap();
        let k = v.get("data").unwrap_or(&v)["k"].clone();
        if closed.is_none_or(|c| k["x"] == c) {
            return (t, v);
        }
    }
}

#[tokio::test]
async fn raw_and_combined_payloads_match_the_fixtures() {
    let sim = sim(&["--ws-update-ms", "100"]).await;
    for (path, name) in [
        ("/ws/btcusdt@kline_1m", "ws_kline_raw.json"),
        ("/stream?streams=btcusdt@kline_1m", "ws_kline_combined.json"),
    ] {
        let mut ws = ws(&sim, path).await;
        let (text, got) = next_event(&mut ws, Some(false)).await;
        let want_text = fixture_text(name);
        assert_eq!(keys_in_order(&text), keys_in_order(&want_text), "{name}");
        assert_same_shape(&fixture(name), &got, name);
        let data = got.get("data").unwrap_or(&got);
        assert_eq!(data["s"], "BTCUSDT");
        assert_eq!(data["k"]["i"], "1m");
        assert_eq!(data["k"]["B"], "0");
        let k = &data["k"];
        let (f, l, n) = (
            k["f"].as_i64().unwrap(),
            k["L"].as_i64().unwrap(),
            k["n"].as_i64().unwrap(),
        );
        assert_eq!(n, l - f + 1);
        assert_eq!(k["T"].as_i64().unwrap() - k["t"].as_i64().unwrap(), 59_999);
        // The forming candle, as REST shows it at (nearly) the same instant.
        assert_eq!(k["t"].as_i64().unwrap(), T0_MS - T0_MS % 60_000);
        if name.contains("combined") {
            assert_eq!(got["stream"], "btcusdt@kline_1m");
        }
    }
}

#[tokio::test]
async fn control_methods_reply_as_documented() {
    let sim = sim(&[]).await;
    let fx = fixture("ws_methods.json");
    let mut ws = ws(&sim, "/ws").await;
    for m in [
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "LIST_SUBSCRIPTIONS",
        "SET_PROPERTY",
        "GET_PROPERTY",
    ] {
        send(&mut ws, &fx["methods"][m]["request"].to_string()).await;
        assert_eq!(
            next_reply(&mut ws).await,
            fx["methods"][m]["response"],
            "{m}"
        );
    }
    // Each documented error, in its wire form.
    for case in fx["errors"].as_array().unwrap() {
        send(&mut ws, case["request_text"].as_str().unwrap()).await;
        assert_eq!(
            next_reply(&mut ws).await,
            case["wire_example"],
            "{}",
            case["case"]
        );
    }
    // Combined mode switched on above: events now arrive wrapped.
    let (_, v) = next_event(&mut ws, None).await;
    assert_eq!(v["stream"], "btcusdt@kline_1m");
}

#[tokio::test]
async fn final_event_equals_the_rest_candle_and_none_are_skipped() {
    let sim = sim(&["--speed", "600"]).await;
    let mut ws = ws(&sim, "/ws/ethusdt@kline_1m").await;
    let mut finals: Vec<Value> = Vec::new();
    while finals.len() < 15 {
        let (_, v) = next_event(&mut ws, Some(true)).await;
        finals.push(v["k"].clone());
    }
    for w in finals.windows(2) {
        assert_eq!(
            w[1]["t"].as_i64().unwrap() - w[0]["t"].as_i64().unwrap(),
            60_000,
            "a close was skipped"
        );
        assert_eq!(w[0]["c"], w[1]["o"]);
    }
    let (first, last) = (
        finals[0]["t"].as_i64().unwrap(),
        finals.last().unwrap()["t"].as_i64().unwrap(),
    );
    let rest = get(
        &sim,
        &format!("/api/v3/klines?symbol=ETHUSDT&interval=1m&startTime={first}&endTime={last}"),
    )
    .await
    .json();
    let rows = rest.as_array().unwrap();
    assert_eq!(rows.len(), finals.len());
    for (k, r) in finals.iter().zip(rows) {
        let pairs = [
            ("t", 0),
            ("o", 1),
            ("h", 2),
            ("l", 3),
            ("c", 4),
            ("v", 5),
            ("T", 6),
            ("q", 7),
            ("n", 8),
            ("V", 9),
            ("Q", 10),
        ];
        for (key, i) in pairs {
            assert_eq!(k[key], r[i], "{key} of candle {}", k["t"]);
        }
    }
    let ids = sim
        .market()
        .klines("ETHUSDT", "1m", first, first, sim.clock().now_ms())
        .unwrap();
    assert_eq!(finals[0]["f"].as_i64().unwrap(), ids[0].first_trade_id);
    assert_eq!(finals[0]["L"].as_i64().unwrap(), ids[0].last_trade_id);
}

#[tokio::test]
async fn coarse_streams_close_on_calendar_boundaries() {
    // 3600x: an hour per second, so a 1h close is seen quickly.
    let sim = sim(&["--speed", "3600"]).await;
    let mut ws = ws(&sim, "/stream?streams=solusdt@kline_1h/btcusdt@kline_1s").await;
    let mut seen_1h = None;
    while seen_1h.is_none() {
        let (_, v) = next_event(&mut ws, Some(true)).await;
        if v["data"]["k"]["i"] == "1h" {
            seen_1h = Some(v["data"]["k"].clone());
        }
    }
    let k = seen_1h.unwrap();
    assert_eq!(k["t"].as_i64().unwrap() % 3_600_000, 0);
    let t = k["t"].as_i64().unwrap();
    let rest = get(
        &sim,
        &format!("/api/v3/klines?symbol=SOLUSDT&interval=1h&startTime={t}&limit=1"),
    )
    .await
    .json();
    assert_eq!(k["c"], rest[0][4]);
    assert_eq!(k["v"], rest[0][5]);
}

#[tokio::test]
async fn pings_arrive_and_silent_clients_are_dropped() {
    let sim = sim(&["--ws-ping-secs", "1", "--ws-pong-timeout-secs", "2"]).await;
    let mut live = ws(&sim, "/ws/btcusdt@kline_1m").await;
    let mut silent = ws(&sim, "/ws/btcusdt@kline_1m").await;
    // The live client reads (so its library answers pings) for 4 s and sees pings.
    let mut pings = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(4);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(end, live.next()).await {
        if let Message::Ping(p) = m {
            assert!(!p.is_empty(), "pings carry a payload");
            pings += 1;
        }
    }
    assert!(pings >= 3, "{pings} pings");
    // The silent one never answered: it has been dropped by now.
    let mut closed = false;
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(end, silent.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                closed = true;
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Err(_) => break,
        }
    }
    assert!(closed, "a client that never pongs must be dropped");
    // The live one is still served.
    assert!(next_text(&mut live, Duration::from_secs(5)).await.is_some());
}

async fn ends_within(ws: &mut Ws, wait: Duration) -> bool {
    let end = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => return true,
            Ok(Some(Ok(_))) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn lifetime_message_rate_and_limits_are_enforced() {
    let sim = sim(&["--ws-max-lifetime-secs", "1", "--ws-connect-limit", "3"]).await;
    let mut a = ws(&sim, "/ws/btcusdt@kline_1m").await;
    assert!(
        ends_within(&mut a, Duration::from_secs(3)).await,
        "lifetime"
    );

    // More than 5 incoming messages in a second: dropped.
    let mut b = ws(&sim, "/ws").await;
    for i in 0..7 {
        let _ = b
            .send(Message::Text(
                json!({"method": "LIST_SUBSCRIPTIONS", "id": i})
                    .to_string()
                    .into(),
            ))
            .await;
    }
    assert!(
        ends_within(&mut b, Duration::from_secs(1)).await,
        "message rate"
    );

    // More than 1024 streams on a connection: refused.
    let mut c = ws(&sim, "/ws").await;
    let names: Vec<String> = (0..1025).map(|i| format!("sym{i}usdt@kline_1m")).collect();
    c.send(Message::Text(
        json!({"method": "SUBSCRIBE", "params": names, "id": 1})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let reply = next_reply(&mut c).await;
    assert_eq!(reply["error"]["code"], 2);
    assert_eq!(reply["id"], 1);

    // Connection attempts per IP: the 4th within the window is rejected.
    let url = format!("{}/ws", sim.ws_url());
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 429),
        other => panic!("expected HTTP 429, got {:?}", other.map(|_| ())),
    }
}
