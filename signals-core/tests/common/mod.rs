//! The committed candle fixture, shared by the integration tests.

#![allow(clippy::unwrap_used, dead_code)]

use klinebus_signals_core::Candle;
use serde::Deserialize;

#[derive(Deserialize)]
struct Row {
    open_time: i64,
    open: String,
    high: String,
    low: String,
    close: String,
    volume: String,
}

/// The 600 one-hour candles of `fixtures/candles.json` (from `make_reference.py`).
pub fn candles() -> Vec<Candle> {
    let rows: Vec<Row> = serde_json::from_str(include_str!("../fixtures/candles.json")).unwrap();
    rows.iter()
        .map(|r| {
            Candle::from_text(r.open_time, &r.open, &r.high, &r.low, &r.close, &r.volume).unwrap()
        })
        .collect()
}
