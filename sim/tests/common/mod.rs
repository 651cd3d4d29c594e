//! Helpers shared by the integration tests: fixtures, a simulator per test, plain clients.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use binance_sim::{Config, SimHandle};
use clap::Parser;
use futures::StreamExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Shared Binance fixtures, beside the repository.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/binance");

/// 2025-06-04T12:06:24Z: the instant of the fixtures' WS event.
pub const T0_MS: i64 = 1_749_038_784_000;

pub fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

pub fn fixture(name: &str) -> Value {
    serde_json::from_str(&fixture_text(name)).unwrap()
}

pub fn config(args: &[&str]) -> Config {
    let mut v = vec!["binance-sim"];
    v.extend_from_slice(args);
    Config::parse_from(v)
}

/// A simulator started at [`T0_MS`] plus `args`.
pub async fn sim(args: &[&str]) -> SimHandle {
    let t0 = T0_MS.to_string();
    let mut v = vec!["--start-time", t0.as_str()];
    v.extend_from_slice(args);
    binance_sim::spawn(config(&v)).await.unwrap()
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

/// GET `path_and_query` from the simulator with a plain HTTP client.
pub async fn get(sim: &SimHandle, path_and_query: &str) -> Reply {
    let r = reqwest::get(format!("{}{path_and_query}", sim.base_url()))
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Reply {
        status,
        headers,
        text: r.text().await.unwrap(),
    }
}

pub async fn post(sim: &SimHandle, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

pub async fn ws(sim: &SimHandle, path: &str) -> Ws {
    tokio_tungstenite::connect_async(format!("{}{path}", sim.ws_url()))
        .await
        .unwrap()
        .0
}

/// Next text frame within `wait` (pings are answered by the client library and skipped).
pub async fn next_text(ws: &mut Ws, wait: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.as_str().to_owned()),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// Next text frame that is not a kline event (i.e. a control reply).
pub async fn next_reply(ws: &mut Ws) -> Value {
    loop {
        let t = next_text(ws, Duration::from_secs(5))
            .await
            .expect("a reply");
        let v: Value = serde_json::from_str(&t).unwrap();
        if v.get("e").is_none() && v.get("stream").is_none() {
            return v;
        }
    }
}

/// Object keys in document order, depth first (serde_json's Map sorts keys, so scan the text).
pub fn keys_in_order(json: &str) -> Vec<String> {
    let b = json.as_bytes();
    let mut keys = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let start = i + 1;
            i += 1;
            while b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            let s = &json[start..i];
            let mut j = i + 1;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < b.len() && b[j] == b':' {
                keys.push(s.to_owned());
            }
        }
        i += 1;
    }
    keys
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Same keys and the same JSON type at every path (arrays of equal length element by
/// element, others against the first expected element).
pub fn assert_same_shape(expected: &Value, got: &Value, path: &str) {
    assert_eq!(
        kind(expected),
        kind(got),
        "type at {path}: {expected} vs {got}"
    );
    match (expected, got) {
        (Value::Object(a), Value::Object(b)) => {
            let ka: Vec<_> = a.keys().collect();
            let kb: Vec<_> = b.keys().collect();
            assert_eq!(ka, kb, "keys at {path}");
            for (k, v) in a {
                assert_same_shape(v, &b[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same_shape(x, y, &format!("{path}[{i}]"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if let Some(x) = a.first() {
                for (i, y) in b.iter().enumerate() {
                    assert_same_shape(x, y, &format!("{path}[{i}]"));
                }
            }
        }
        _ => {}
    }
}

/// An 8-decimal Binance number string.
pub fn is_decimal8(s: &str) -> bool {
    match s.split_once('.') {
        Some((i, f)) => {
            !i.is_empty()
                && i.bytes().all(|b| b.is_ascii_digit())
                && f.len() == 8
                && f.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// Decimal string → integer units of 1e-8 (test-side arithmetic for aggregation checks).
pub fn units(s: &str) -> u128 {
    let (i, f) = s.split_once('.').unwrap();
    i.parse::<u128>().unwrap() * 100_000_000 + f.parse::<u128>().unwrap()
}

/// Waits until the wall clock is at least `margin` seconds away from a minute boundary, so
/// rate-limit windows do not reset mid-test.
pub async fn away_from_minute_boundary(margin: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = now.as_millis() % 60_000;
    if into > (60 - margin) as u128 * 1000 {
        tokio::time::sleep(Duration::from_millis((60_000 - into) as u64 + 200)).await;
    }
}
