//! Symbol lifecycle at run time (`POST /_sim/symbols`: list, halt, resume, delist) and the
//! `serverShutdown` announcement (`POST /_sim/ws/shutdown`), observed over REST and WebSocket.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const MIN: i64 = 60_000;

/// POST a JSON body; (status, body).
async fn post_any(sim: &binance_sim::SimHandle, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn status_in_info(info: &Value, symbol: &str) -> Option<String> {
    info["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["symbol"] == symbol)
        .map(|s| s["status"].as_str().unwrap().to_owned())
}

/// Open times of `symbol`'s 1m candles from `start` on (up to 1000).
async fn opens(sim: &binance_sim::SimHandle, symbol: &str, start: i64) -> Vec<i64> {
    let r = get(
        sim,
        &format!("/api/v3/klines?symbol={symbol}&interval=1m&startTime={start}&limit=1000"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn list_a_symbol_at_run_time_in_the_past_and_now() {
    let sim = sim(&["--symbols", "BTCUSDT"]).await;
    let now = sim.clock().now_ms();
    // Listed three days ago (mid-minute: the listing minute is its first candle).
    let listed = (now - 3 * 86_400_000) / MIN * MIN;
    let (st, body) = post_any(
        &sim,
        "/_sim/symbols",
        json!({"action": "list", "symbol": "NEWUSDT", "listed_ms": listed + 12_345}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["listed_ms"].as_i64()),
        (Some("TRADING"), Some(listed))
    );
    let info = get(&sim, "/api/v3/exchangeInfo").await.json();
    assert_eq!(status_in_info(&info, "NEWUSDT").as_deref(), Some("TRADING"));
    // Binance's "first candle ever": startTime=0&limit=1.
    for (iv, first) in [("1m", listed), ("1h", listed / 3_600_000 * 3_600_000)] {
        let r = get(
            &sim,
            &format!("/api/v3/klines?symbol=NEWUSDT&interval={iv}&startTime=0&limit=1"),
        )
        .await;
        assert_eq!(r.json()[0][0].as_i64(), Some(first), "{iv}");
    }
    // Nothing before the listing: endTime just before it is an empty page.
    let r = get(
        &sim,
        &format!(
            "/api/v3/klines?symbol=NEWUSDT&interval=1m&endTime={}",
            listed - 1
        ),
    )
    .await;
    assert_eq!(r.json(), json!([]));

    // Listed now: its first candle is the next minute boundary.
    let (st, body) = post_any(
        &sim,
        "/_sim/symbols",
        json!({"action": "list", "symbol": "FRESHUSDT"}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let first = body["listed_ms"].as_i64().unwrap();
    assert!(first >= now && first < now + 2 * MIN && first % MIN == 0);

    // Refusals: existing name 409, bad name 400, unknown action 422 (axum's JSON rejection).
    let (st, _) = post_any(
        &sim,
        "/_sim/symbols",
        json!({"action": "list", "symbol": "NEWUSDT"}),
    )
    .await;
    assert_eq!(st, 409);
    let (st, _) = post_any(
        &sim,
        "/_sim/symbols",
        json!({"action": "list", "symbol": "newusdt"}),
    )
    .await;
    assert_eq!(st, 400);
    let (st, _) = post_any(
        &sim,
        "/_sim/symbols",
        json!({"action": "halt", "symbol": "NOSUCHUSDT"}),
    )
    .await;
    assert_eq!(st, 404);
    let all: Value = reqwest::get(format!("{}/_sim/symbols", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<_> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["symbol"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["BTCUSDT", "NEWUSDT", "FRESHUSDT"]);
}

/// Kline events per symbol seen on `ws` within `wait` (stream names are lower-case).
async fn events_per_symbol(ws: &mut Ws, wait: Duration) -> (usize, usize) {
    let (mut btc, mut eth) = (0, 0);
    let end = tokio::time::Instant::now() + wait;
    while let Some(t) = next_text(
        ws,
        end.saturating_duration_since(tokio::time::Instant::now()),
    )
    .await
    {
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["data"]["s"].as_str() {
            Some("BTCUSDT") => btc += 1,
            Some("ETHUSDT") => eth += 1,
            _ => {}
        }
    }
    (btc, eth)
}

#[tokio::test]
async fn halt_and_resume_stop_candles_rest_and_ws_without_disturbing_other_streams() {
    // 600×: a simulated minute every 100 ms of wall time.
    let sim = sim(&["--speed", "600", "--symbols", "BTCUSDT,ETHUSDT"]).await;
    let mut ws = ws(&sim, "/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m").await;
    let (btc, eth) = events_per_symbol(&mut ws, Duration::from_millis(600)).await;
    assert!(btc > 0 && eth > 0, "both streams run: {btc} {eth}");

    let (st, body) = post_any(
        &sim,
        "/_sim/symbols",
        json!({"action": "halt", "symbol": "ETHUSDT"}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let halt_start = body["halts"][0]["start_ms"].as_i64().unwrap();
    assert_eq!(body["halts"][0]["end_ms"], Value::Null);
    let info = get(&sim, "/api/v3/exchangeInfo?symbol=ETHUSDT")
        .await
        .json();
    assert_eq!(status_in_info(&info, "ETHUSDT").as_deref(), Some("BREAK"));
    let (st, _) = post_any(
        &sim,
        "/_sim/symbols",
        json!({"action": "halt", "symbol": "ETHUSDT"}),
    )
    .await;
    assert_eq!(st, 409, "halting a halted symbol");

    // Past the halt's minute boundary (plus what was in flight), ETHUSDT is silent; BTCUSDT is not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while tokio::time::timeout(Duration::from_millis(20), ws.next())
        .await
        .is_ok()
    {}
    let (btc, eth) = events_per_symbol(&mut ws, Duration::from_millis(1000)).await;
    assert!(btc >= 5, "BTCUSDT keeps streaming: {btc}");
    assert_eq!(eth, 0, "a halted symbol sends no klines");
    // REST: no ETHUSDT candle opens at or after the halt.
    let during = opens(&sim, "ETHUSDT", halt_start - 5 * MIN).await;
    assert_eq!(during.last().copied(), Some(halt_start - MIN));

    let (st, body) = post_any(
        &sim,
        "/_sim/symbols",
        json!({"action": "resume", "symbol": "ETHUSDT"}),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let resumed = body["halts"][0]["end_ms"].as_i64().unwrap();
    assert!(resumed > halt_start + 5 * MIN);
    let info = get(&sim, "/api/v3/exchangeInfo?symbol=ETHUSDT")
        .await
        .json();
    assert_eq!(status_in_info(&info, "ETHUSDT").as_deref(), Some("TRADING"));
    let (btc, eth) = events_per_symbol(&mut ws, Duration::from_millis(600)).await;
    assert!(btc > 0 && eth > 0, "ETHUSDT streams again: {btc} {eth}");
    // The halt is a hole in the history: candles up to it, none inside, candles again after.
    let all = opens(&sim, "ETHUSDT", halt_start - 2 * MIN).await;
    assert_eq!(
        &all[..3],
        &[halt_start - 2 * MIN, halt_start - MIN, resumed]
    );
    // Expected candles computed in-process agree.
    let m = sim.market();
    let k = m
        .klines(
            "ETHUSDT",
            "1m",
            halt_start,
            resumed - 1,
            sim.clock().now_ms(),
        )
        .unwrap();
    assert!(k.is_empty());
}

#[tokio::test]
async fn delisted_symbol_disappears_and_answers_invalid_symbol() {
    let sim = sim(&["--speed", "600", "--symbols", "BTCUSDT,ETHUSDT"]).await;
    let mut ws = ws(&sim, "/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m").await;
    let (st, body) = post_any(
        &sim,
        "/_sim/symbols",
        json!({"action": "delist", "symbol": "ETHUSDT"}),
    )
    .await;
    assert_eq!((st, body["status"].as_str()), (200, Some("DELISTED")));
    let info = get(&sim, "/api/v3/exchangeInfo").await.json();
    assert_eq!(
        status_in_info(&info, "ETHUSDT"),
        None,
        "gone from exchangeInfo"
    );
    assert!(status_in_info(&info, "BTCUSDT").is_some());
    let expected = &fixture("errors.json")["invalid_symbol"];
    for q in [
        "/api/v3/klines?symbol=ETHUSDT&interval=1m",
        "/api/v3/exchangeInfo?symbol=ETHUSDT",
    ] {
        let r = get(&sim, q).await;
        assert_eq!(r.status, expected["http_status"].as_u64().unwrap() as u16);
        assert_eq!(r.json(), expected["body"], "{q}");
    }
    while tokio::time::timeout(Duration::from_millis(50), ws.next())
        .await
        .is_ok()
    {}
    let (btc, eth) = events_per_symbol(&mut ws, Duration::from_millis(800)).await;
    assert!(btc >= 4, "the other stream goes on: {btc}");
    assert_eq!(eth, 0);
    let (st, _) = post_any(
        &sim,
        "/_sim/symbols",
        json!({"action": "resume", "symbol": "ETHUSDT"}),
    )
    .await;
    assert_eq!(st, 409);
}

#[tokio::test]
async fn server_shutdown_event_then_close() {
    let sim = sim(&["--speed", "60"]).await;
    let mut raw = ws(&sim, "/ws/btcusdt@kline_1m").await;
    let mut comb = ws(&sim, "/stream?streams=btcusdt@kline_1m").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = sim.clock().now_ms();
    let snap = post(&sim, "/_sim/ws/shutdown", json!({"close_after_ms": 1500})).await;
    assert_eq!(snap["ws_shutdowns"], 1);
    let fx = &fixture("ws_methods.json")["connection_rules"]["server_shutdown_event"];
    for (ws, form) in [(&mut raw, "raw"), (&mut comb, "combined")] {
        let ev = loop {
            let t = next_text(ws, Duration::from_secs(2))
                .await
                .expect("an event");
            if t.contains("serverShutdown") {
                break t;
            }
        };
        let v: Value = serde_json::from_str(&ev).unwrap();
        assert_same_shape(&fx[form], &v, form);
        // Binance's order (the fixture's text): e before E.
        let order: &[&str] = if form == "raw" {
            &["e", "E"]
        } else {
            &["stream", "data", "e", "E"]
        };
        assert_eq!(keys_in_order(&ev), order, "{form}");
        let data = if form == "raw" { &v } else { &v["data"] };
        let e = data["E"].as_i64().unwrap();
        assert!(
            e >= t0 && e < t0 + 60_000,
            "{form}: E is the server's clock"
        );
        if form == "combined" {
            assert_eq!(v["stream"], "!serverShutdown");
        }
    }
    // Klines go on until the close, which comes with a close frame about 1.5 s later.
    let start = tokio::time::Instant::now();
    let mut klines_after = 0;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(4), raw.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => klines_after += 1,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break true,
            Ok(Some(Ok(_))) => {}
            Err(_) => break false,
        }
    };
    let took = start.elapsed();
    assert!(closed, "the announced connection closes");
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    assert!(klines_after > 0, "klines keep flowing until the close");
    // A connection opened afterwards is not affected by the old announcement.
    let mut later = ws(&sim, "/ws/btcusdt@kline_1m").await;
    let t = next_text(&mut later, Duration::from_secs(3)).await.unwrap();
    assert!(t.contains("\"kline\""), "{t}");
}
