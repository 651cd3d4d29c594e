//! Request-weight limits: counting, 429 with Retry-After, 418 bans, --no-limits.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const Q: &str = "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1";

fn secs_to_next_minute() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    (60_000 - ms % 60_000).div_ceil(1000)
}

#[tokio::test]
async fn over_the_limit_is_429_then_418() {
    let sim = sim(&[
        "--weight-limit",
        "10",
        "--ban-after",
        "2",
        "--ban-seconds",
        "120",
    ])
    .await;
    away_from_minute_boundary(5).await;
    for i in 1..=5 {
        let r = get(&sim, Q).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-mbx-used-weight-1m").unwrap(),
            (2 * i).to_string()
        );
    }
    let fx = fixture("errors.json");
    let want_msg = fx["too_many_requests_weight"]["body"]["msg"]
        .as_str()
        .unwrap()
        .replace("6000", "10");
    for used in [12, 14] {
        let r = get(&sim, Q).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.json()["code"], -1003);
        assert_eq!(r.json()["msg"], want_msg.as_str());
        assert_eq!(r.header("x-mbx-used-weight-1m").unwrap(), used.to_string());
        assert_eq!(r.header("x-mbx-used-weight").unwrap(), used.to_string());
        assert_eq!(
            r.header("content-type").unwrap(),
            "application/json;charset=UTF-8"
        );
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        let expect = secs_to_next_minute();
        assert!(
            retry.abs_diff(expect) <= 1,
            "Retry-After {retry}, expected about {expect}"
        );
    }
    // Kept sending after 429s: banned.
    let r = get(&sim, Q).await;
    assert_eq!(r.status, 418);
    let body = r.json();
    assert_eq!(body["code"], -1003);
    let msg = body["msg"].as_str().unwrap();
    let until: i64 = msg
        .strip_prefix("Way too much request weight used; IP banned until ")
        .and_then(|s| {
            s.strip_suffix(". Please use WebSocket Streams for live updates to avoid bans.")
        })
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((until - now - 120_000).abs() < 2_000);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((119..=120).contains(&retry));
    // Every request during the ban gets 418, whatever its weight.
    for path in ["/api/v3/ping", "/api/v3/time", Q] {
        assert_eq!(get(&sim, path).await.status, 418);
    }
    // The admin API is not rate limited.
    assert_eq!(
        reqwest::get(format!("{}/_sim/faults", sim.base_url()))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

#[tokio::test]
async fn no_limits_still_counts() {
    let sim = sim(&["--weight-limit", "10", "--no-limits"]).await;
    away_from_minute_boundary(3).await;
    for i in 1..=30 {
        let r = get(&sim, Q).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-mbx-used-weight-1m").unwrap(),
            (2 * i).to_string()
        );
    }
}
