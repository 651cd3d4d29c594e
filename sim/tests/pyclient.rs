//! An unmodified, off-the-shelf Binance client (Binance's official `binance-connector` from
//! PyPI) against the simulator, changing nothing but its base URLs. `scripts/services` installs
//! it into `target/pyclient`; `PYCLIENT_PYTHON` points elsewhere if wanted.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use serde_json::Value;

fn python() -> String {
    std::env::var("PYCLIENT_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/pyclient/bin/python").to_owned()
    })
}

/// One REST row as the client received it vs the simulator's own model.
fn assert_row(row: &Value, k: &binance_sim::Kline) {
    let expected = serde_json::json!([
        k.open_time,
        k.open,
        k.high,
        k.low,
        k.close,
        k.volume,
        k.close_time,
        k.quote_volume,
        k.trades,
        k.taker_buy_base,
        k.taker_buy_quote,
        "0"
    ]);
    assert_eq!(row, &expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn official_python_connector_works_unchanged() {
    // 1 m of market time per wall second, so the WS client sees a close within a few seconds.
    let sim = common::sim(&["--speed", "60"]).await;
    let py = python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/pyclient/check.py");
    let (base, ws) = (sim.base_url(), sim.ws_url());
    let out =
        tokio::task::spawn_blocking(move || Command::new(&py).args([script, &base, &ws]).output())
            .await
            .unwrap()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; run scripts/services to install the Python client",
                    python()
                )
            });
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let market = sim.market();

    assert_eq!(got["ping"], serde_json::json!({}));
    assert!(got["time"]["serverTime"].as_i64().unwrap() >= common::T0_MS);
    assert_eq!(got["exchange_info_symbols"], serde_json::json!(["BTCUSDT"]));

    // Newest 5 1m candles: all but the forming last one equal the model exactly.
    let rows = got["klines"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    for row in &rows[..4] {
        let t = row[0].as_i64().unwrap();
        let k = market.klines("BTCUSDT", "1m", t, t, i64::MAX).unwrap();
        assert_row(row, &k[0]);
    }

    // A historical 1h range, every field.
    let rows = got["klines_1h_range"].as_array().unwrap();
    let expected = market
        .klines(
            "ETHUSDT",
            "1h",
            1_700_000_000_000,
            1_700_036_000_000,
            i64::MAX,
        )
        .unwrap();
    assert_eq!(rows.len(), expected.len());
    assert!(rows.len() >= 10);
    for (row, k) in rows.iter().zip(&expected) {
        assert_row(row, k);
    }

    assert_eq!(
        got["bad_symbol"],
        serde_json::json!({"status": 400, "code": -1121, "msg": "Invalid symbol."})
    );
    assert_eq!(
        got["bad_interval"],
        serde_json::json!({"status": 400, "code": -1120, "msg": "Invalid interval."})
    );

    // WebSocket (SUBSCRIBE over /ws): a final event equal to the model's closed candle.
    let events = got["ws_events"].as_array().unwrap();
    let closed = events
        .iter()
        .find(|e| e["k"]["x"] == Value::Bool(true))
        .expect("no closed kline event received");
    let t = closed["k"]["t"].as_i64().unwrap();
    let k = &market.klines("BTCUSDT", "1m", t, t, i64::MAX).unwrap()[0];
    let ck = &closed["k"];
    assert_eq!(ck["o"], k.open.as_str());
    assert_eq!(ck["h"], k.high.as_str());
    assert_eq!(ck["l"], k.low.as_str());
    assert_eq!(ck["c"], k.close.as_str());
    assert_eq!(ck["v"], k.volume.as_str());
    assert_eq!(ck["q"], k.quote_volume.as_str());
    assert_eq!(ck["n"].as_u64().unwrap(), k.trades);
    assert_eq!(ck["T"].as_i64().unwrap(), k.close_time);
}
