//! REST answers checked against the Binance fixtures with a plain HTTP client.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;

const KLINES_Q: &str = "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=1749038400000&limit=6";

#[tokio::test]
async fn klines_rows_have_the_fixture_shape_and_market_values() {
    let sim = sim(&[]).await;
    let r = get(&sim, KLINES_Q).await;
    assert_eq!(r.status, 200);
    let want = fixture("klines_rest.json");
    let got = r.json();
    assert_eq!(got.as_array().unwrap().len(), 6);
    assert_same_shape(&want, &got, "klines");
    let market = sim.market();
    let expected = market
        .klines(
            "BTCUSDT",
            "1m",
            1_749_038_400_000,
            1_749_038_700_000,
            sim.clock().now_ms(),
        )
        .unwrap();
    for (fx, (row, k)) in want
        .as_array()
        .unwrap()
        .iter()
        .zip(got.as_array().unwrap().iter().zip(&expected))
    {
        let (fx, row) = (fx.as_array().unwrap(), row.as_array().unwrap());
        assert_eq!(row.len(), 12);
        // Same close-time rule as the fixture: open + 59999.
        assert_eq!(
            row[6].as_i64().unwrap() - row[0].as_i64().unwrap(),
            fx[6].as_i64().unwrap() - fx[0].as_i64().unwrap()
        );
        for i in [1, 2, 3, 4, 5, 7, 9, 10] {
            assert!(is_decimal8(row[i].as_str().unwrap()), "{row:?}");
        }
        assert_eq!(row[11], fx[11]);
        assert_eq!(row[0].as_i64().unwrap(), k.open_time);
        let strings = [&k.open, &k.high, &k.low, &k.close, &k.volume];
        for (i, s) in strings.iter().enumerate() {
            assert_eq!(row[i + 1].as_str().unwrap(), s.as_str());
        }
        assert_eq!(row[7].as_str().unwrap(), k.quote_volume);
        assert_eq!(row[8].as_u64().unwrap(), k.trades);
        assert_eq!(row[9].as_str().unwrap(), k.taker_buy_base);
        assert_eq!(row[10].as_str().unwrap(), k.taker_buy_quote);
        assert!(k.closed);
        assert_eq!((k.last_trade_id - k.first_trade_id + 1) as u64, k.trades);
    }
    // Rows are consecutive: each open equals the previous close.
    for w in got.as_array().unwrap().windows(2) {
        assert_eq!(w[0][4], w[1][1]);
    }
}

#[tokio::test]
async fn headers_match_the_fixture_and_count_weight() {
    let sim = sim(&[]).await;
    away_from_minute_boundary(3).await;
    let ex = &fixture("headers.json")["examples"]["ok_klines"]["headers"];
    for call in 1..=7u32 {
        let r = get(&sim, KLINES_Q).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type").unwrap(),
            ex["Content-Type"].as_str().unwrap()
        );
        let w = (2 * call).to_string();
        assert_eq!(r.header("x-mbx-used-weight").unwrap(), w);
        assert_eq!(r.header("x-mbx-used-weight-1m").unwrap(), w);
    }
    // The fixture's example is the seventh weight-2 call: 14.
    assert_eq!(ex["X-MBX-USED-WEIGHT-1M"], "14");
    let r = get(&sim, "/api/v3/ping").await;
    assert_eq!((r.status, r.text.as_str()), (200, "{}"));
    assert_eq!(r.header("x-mbx-used-weight-1m").unwrap(), "15");
    // Errors carry the headers too.
    let r = get(&sim, "/api/v3/klines?symbol=BTCUSDT").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.header("content-type").unwrap(),
        "application/json;charset=UTF-8"
    );
    assert_eq!(r.header("x-mbx-used-weight").unwrap(), "17");
}

#[tokio::test]
async fn every_fixture_error_case() {
    let sim = sim(&[]).await;
    let errors = fixture("errors.json");
    let mut checked = 0;
    for (name, case) in errors.as_object().unwrap() {
        let Some(path) = case["request"]
            .as_str()
            .and_then(|r| r.strip_prefix("GET "))
        else {
            continue;
        };
        let r = get(&sim, path).await;
        assert_eq!(
            r.status as u64,
            case["http_status"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(r.json(), case["body"], "{name}");
        assert_eq!(
            r.header("content-type").unwrap(),
            "application/json;charset=UTF-8"
        );
        checked += 1;
    }
    assert_eq!(checked, 9);
    // Not in the fixtures: Binance answers -1130 for a limit out of range.
    for bad in ["1001", "0"] {
        let r = get(
            &sim,
            &format!("/api/v3/klines?symbol=BTCUSDT&interval=1m&limit={bad}"),
        )
        .await;
        assert_eq!(r.status, 400);
        assert_eq!(
            r.text,
            r#"{"code":-1130,"msg":"Data sent for parameter 'limit' is not valid."}"#
        );
    }
    let r = get(
        &sim,
        "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=abc",
    )
    .await;
    assert_eq!(
        r.json()["msg"],
        "Illegal characters found in parameter 'startTime'; legal range is '^[0-9]{1,20}$'."
    );
    let r = get(
        &sim,
        "/api/v3/klines?symbol=BTCUSDT&interval=1d&timeZone=15:00",
    )
    .await;
    assert_eq!(r.json()["code"], -1130);
    let r = get(&sim, "/api/v3/no/such/path").await;
    assert_eq!(r.status, 404);
    assert!(r.header("x-mbx-used-weight-1m").is_some());
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn exchange_info_has_the_fixture_keys() {
    let sim = sim(&["--weight-limit", "1234"]).await;
    let want = fixture("exchange_info_excerpt.json");
    let r = get(&sim, "/api/v3/exchangeInfo").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-mbx-used-weight-1m").unwrap(), "20");
    let got = r.json();
    assert_eq!(keys(&got), keys(&want));
    assert_same_shape(&want["rateLimits"], &got["rateLimits"], "rateLimits");
    assert_eq!(got["rateLimits"][0]["rateLimitType"], "REQUEST_WEIGHT");
    assert_eq!(got["rateLimits"][0]["limit"], 1234);
    assert_eq!(
        got["rateLimits"].as_array().unwrap()[1..],
        want["rateLimits"].as_array().unwrap()[1..]
    );
    assert_eq!(got["timezone"], "UTC");
    let syms = got["symbols"].as_array().unwrap();
    assert_eq!(syms.len(), 8);
    for s in syms {
        assert_same_shape(&want["symbols"][0], s, "symbol");
        assert_eq!(s["status"], "TRADING");
    }
    let btc = syms.iter().find(|s| s["symbol"] == "BTCUSDT").unwrap();
    assert_eq!(btc["filters"][0]["tickSize"], "0.01000000");
    assert_eq!(btc["filters"][1]["stepSize"], "0.00001000");
    assert_eq!(btc["baseAsset"], "BTC");
    assert_eq!(btc["quoteAsset"], "USDT");
    let in_order: Vec<_> = keys_in_order(&r.text).into_iter().take(5).collect();
    assert_eq!(
        in_order,
        [
            "timezone",
            "serverTime",
            "rateLimits",
            "rateLimitType",
            "interval"
        ]
    );

    let one = get(&sim, "/api/v3/exchangeInfo?symbol=ETHUSDT")
        .await
        .json();
    assert_eq!(one["symbols"].as_array().unwrap().len(), 1);
    let two = get(
        &sim,
        "/api/v3/exchangeInfo?symbols=%5B%22BTCUSDT%22,%22SOLUSDT%22%5D",
    )
    .await
    .json();
    assert_eq!(two["symbols"][1]["symbol"], "SOLUSDT");
    let bad = get(&sim, "/api/v3/exchangeInfo?symbol=NOSUCHPAIR").await;
    assert_eq!(
        (bad.status, bad.json()),
        (
            400,
            fixture("errors.json")["invalid_symbol"]["body"].clone()
        )
    );
}

#[tokio::test]
async fn time_selection_follows_binance_rules() {
    let sim = sim(&[]).await;
    let now = sim.clock().now_ms();
    let rows = |v: Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r[0].as_i64().unwrap())
            .collect()
    };
    let base = "/api/v3/klines?symbol=ETHUSDT&interval=1m";

    // Newest 500 by default; the last row is the forming candle containing now.
    let newest = rows(get(&sim, base).await.json());
    assert_eq!(newest.len(), 500);
    let forming = now - now % 60_000;
    assert_eq!(*newest.last().unwrap(), forming);
    assert!(newest.windows(2).all(|w| w[1] - w[0] == 60_000));
    let last = get(&sim, &format!("{base}&limit=1")).await.json();
    assert!(
        last[0][6].as_i64().unwrap() >= sim.clock().now_ms(),
        "forming close_time is in the future"
    );

    // startTime only: oldest from start (a mid-candle start begins with the next candle).
    let s: i64 = 1_749_000_000_000 + 30_000;
    let from = rows(
        get(&sim, &format!("{base}&startTime={s}&limit=3"))
            .await
            .json(),
    );
    assert_eq!(
        from,
        [1_749_000_060_000, 1_749_000_120_000, 1_749_000_180_000]
    );
    // endTime only: newest up to end (open_time <= end).
    let to = rows(
        get(&sim, &format!("{base}&endTime=1749000120000&limit=3"))
            .await
            .json(),
    );
    assert_eq!(
        to,
        [1_749_000_000_000, 1_749_000_060_000, 1_749_000_120_000]
    );
    // Both: from start, not past end.
    let both = rows(
        get(
            &sim,
            &format!("{base}&startTime=1749000000000&endTime=1749000120000"),
        )
        .await
        .json(),
    );
    assert_eq!(both.len(), 3);
    // Nothing after now, nothing before listing.
    let future = rows(
        get(&sim, &format!("{base}&startTime={}", now + 3_600_000))
            .await
            .json(),
    );
    assert!(future.is_empty());
    let early = rows(
        get(
            &sim,
            "/api/v3/klines?symbol=SOLUSDT&interval=1d&endTime=1500000000000",
        )
        .await
        .json(),
    );
    assert!(early.is_empty());
    let first = rows(
        get(
            &sim,
            "/api/v3/klines?symbol=SOLUSDT&interval=1m&startTime=0&limit=1",
        )
        .await
        .json(),
    );
    assert_eq!(first, [1_597_125_600_000]); // 2020-08-11 06:00 UTC listing

    // uiKlines: same rows.
    let a = get(&sim, &format!("{base}&startTime=1749000000000&limit=5"))
        .await
        .text;
    let b = get(
        &sim,
        "/api/v3/uiKlines?symbol=ETHUSDT&interval=1m&startTime=1749000000000&limit=5",
    )
    .await
    .text;
    assert_eq!(a, b);

    // timeZone moves day boundaries, start/end stay UTC.
    let tz = rows(
        get(
            &sim,
            "/api/v3/klines?symbol=BTCUSDT&interval=1d&timeZone=8&limit=2",
        )
        .await
        .json(),
    );
    assert!(tz
        .iter()
        .all(|t| t.rem_euclid(86_400_000) == 16 * 3_600_000));
    let tz = rows(
        get(
            &sim,
            "/api/v3/klines?symbol=BTCUSDT&interval=1h&timeZone=05:45&limit=2",
        )
        .await
        .json(),
    );
    assert!(tz.iter().all(|t| t.rem_euclid(3_600_000) == 15 * 60_000));
}

#[tokio::test]
async fn ping_and_time_follow_the_clock() {
    let sim = sim(&["--speed", "60"]).await;
    let t = get(&sim, "/api/v3/time").await;
    assert_eq!(t.status, 200);
    let v = t.json();
    assert_eq!(keys(&v), ["serverTime"]);
    let server = v["serverTime"].as_i64().unwrap();
    assert!((server - sim.clock().now_ms()).abs() < 5_000);
    assert!(server >= T0_MS);
}
