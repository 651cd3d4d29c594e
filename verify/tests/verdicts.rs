//! Each verdict from constructed tables in a fresh database.
#![allow(clippy::unwrap_used)]

use klinebus_schemas::{Interval, Symbol};
use klinebus_testkit::TestDb;
use klinebus_verify::{verify, Span, Status, VerifyRequest};

const H: i64 = 3_600_000;
/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;

async fn insert(db: &TestDb, symbol: &str, tf: Interval, opens: &[i64], closed: bool) {
    for &t in opens {
        sqlx::query(
            r#"INSERT INTO ohlcv_candles (symbol, timeframe, "timestamp", open, high, low, close,
                 volume, quote_volume, taker_buy_base, taker_buy_quote, trades, close_time,
                 is_closed, event_time, source)
               VALUES ($1, $2, $3, 1, 2, 1, 1.5, 10, 15, 5, 7.5, 3, $4, $5, $4 + 1, 'backfill')"#,
        )
        .bind(symbol)
        .bind(tf.as_str())
        .bind(t)
        .bind(tf.close_time(t))
        .bind(closed)
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

fn req(symbol: &str, tf: Interval, days: u32, now: i64) -> VerifyRequest {
    VerifyRequest {
        symbols: vec![symbol.parse::<Symbol>().unwrap()],
        intervals: vec![tf],
        span: Span::Days(Some(days)),
        now_ms: now,
    }
}

/// Every hourly open of the verification window.
fn hours(days: u32, now: i64) -> Vec<i64> {
    let (start, end) = klinebus_verify::window(Interval::H1, days, now);
    (start..end).step_by(H as usize).collect()
}

#[tokio::test]
async fn ok_when_complete_and_fresh() {
    let db = TestDb::fresh().await;
    let now = T0 + 10 * 60_000; // 12:10, the 11:00 candle closed 10 min ago
    insert(&db, "BTCUSDT", Interval::H1, &hours(2, now), true).await;
    // The forming candle is not counted and does not make anything worse.
    insert(&db, "BTCUSDT", Interval::H1, &[T0], false).await;
    let r = verify(&db.pool, &req("BTCUSDT", Interval::H1, 2, now)).await;
    let s = &r.results["BTCUSDT"]["1h"];
    assert_eq!(r.overall_status, Status::Ok, "{s:?}");
    // 12:10 minus two days: the window starts at the hour containing that instant.
    assert_eq!((s.count, s.expected), (48, 48));
    assert_eq!(s.latest_datetime.as_deref(), Some("2025-06-04T11:00:00Z"));
    assert!(s.gaps.is_empty() && s.issues.is_empty());
    assert!(r.is_ok());
}

#[tokio::test]
async fn missing_when_nothing_stored() {
    let db = TestDb::fresh().await;
    let r = verify(&db.pool, &req("ETHUSDT", Interval::H4, 30, T0)).await;
    let s = &r.results["ETHUSDT"]["4h"];
    assert_eq!(s.status, Status::Missing);
    assert_eq!(s.issues, ["No data available"]);
    assert_eq!(s.gaps.len(), 1, "the whole window is one gap");
    assert_eq!(s.gaps[0].missing, s.expected);
    assert!(!r.is_ok());
}

#[tokio::test]
async fn stale_when_newest_closed_candle_is_too_old() {
    let db = TestDb::fresh().await;
    let now = T0;
    let mut opens = hours(1, now);
    assert_eq!(opens.len(), 24, "an aligned `now` gives a full day");
    opens.truncate(24 - 6); // newest closed candle closed 6 h before now; limit for 1h is 2 h
    insert(&db, "BTCUSDT", Interval::H1, &opens, true).await;
    let r = verify(&db.pool, &req("BTCUSDT", Interval::H1, 1, now)).await;
    let s = &r.results["BTCUSDT"]["1h"];
    assert_eq!(s.status, Status::Stale);
    assert_eq!(s.issues[0], "Data is 6.0h old (expected < 2h)");
    // The missing tail is listed too.
    assert_eq!(s.gaps.last().unwrap().missing, 6);
}

#[tokio::test]
async fn incomplete_lists_exact_gaps() {
    let db = TestDb::fresh().await;
    let now = T0 + 60_000;
    let mut opens = hours(3, now);
    let first = opens[0];
    opens.retain(|&t| t != first && !(first + 10 * H..=first + 12 * H).contains(&t));
    insert(&db, "BTCUSDT", Interval::H1, &opens, true).await;
    let r = verify(&db.pool, &req("BTCUSDT", Interval::H1, 3, now)).await;
    let s = &r.results["BTCUSDT"]["1h"];
    assert_eq!(s.status, Status::Incomplete);
    assert_eq!((s.count, s.expected), (72 - 4, 72));
    let gaps: Vec<(i64, i64, i64)> = s.gaps.iter().map(|g| (g.start, g.end, g.missing)).collect();
    assert_eq!(
        gaps,
        [(first, first, 1), (first + 10 * H, first + 12 * H, 3)]
    );
    assert!(s
        .issues
        .contains(&"Only 68 candles (expected ~72)".to_owned()));
}

#[tokio::test]
async fn unclosed_rows_do_not_count_as_data() {
    let db = TestDb::fresh().await;
    let now = T0 + 60_000;
    let opens = hours(1, now);
    let last = opens.len() - 1;
    insert(&db, "BTCUSDT", Interval::H1, &opens[..last], true).await;
    // A candle whose final event never arrived is still a hole.
    insert(&db, "BTCUSDT", Interval::H1, &opens[last..], false).await;
    let r = verify(&db.pool, &req("BTCUSDT", Interval::H1, 1, now)).await;
    let s = &r.results["BTCUSDT"]["1h"];
    assert_eq!(s.status, Status::Incomplete);
    assert_eq!(s.gaps.len(), 1);
    assert_eq!(s.gaps[0].start, opens[last]);
}

#[tokio::test]
async fn calendar_months() {
    let db = TestDb::fresh().await;
    let iv = Interval::Mo1;
    let now = T0; // June 2025: May is the newest closed month
    let (mut t, end) = klinebus_verify::window(iv, 365, now);
    let mut opens = Vec::new();
    while t < end {
        opens.push(t);
        t = iv.next_open(t);
    }
    let hole = opens[5];
    opens.retain(|&o| o != hole);
    insert(&db, "BTCUSDT", iv, &opens, true).await;
    let r = verify(&db.pool, &req("BTCUSDT", iv, 365, now)).await;
    let s = &r.results["BTCUSDT"]["1M"];
    assert_eq!(s.status, Status::Incomplete, "{s:?}");
    assert_eq!(s.gaps.len(), 1);
    assert_eq!((s.gaps[0].start, s.gaps[0].end), (hole, hole));
}

#[tokio::test]
async fn error_when_the_database_cannot_be_read() {
    let db = TestDb::fresh().await;
    sqlx::query("DROP TABLE ohlcv_candles")
        .execute(&db.pool)
        .await
        .unwrap();
    let r = verify(&db.pool, &req("BTCUSDT", Interval::H1, 1, T0)).await;
    let s = &r.results["BTCUSDT"]["1h"];
    assert_eq!(s.status, Status::Error);
    assert!(s.issues[0].starts_with("Database error"), "{:?}", s.issues);
    assert_eq!(r.overall_status, Status::Error);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["overall_status"], "error");
}

#[tokio::test]
async fn an_explicit_range_counts_from_its_first_open_and_history_is_not_stale() {
    let db = TestDb::fresh().await;
    let now = T0 + 10 * 60_000;
    // Stored: 10:00 two days ago up to 05:00 yesterday, nothing after.
    let from = T0 - 2 * 24 * H - 2 * H;
    let to = T0 - 31 * H;
    insert(
        &db,
        "BTCUSDT",
        Interval::H1,
        &(from..to).step_by(H as usize).collect::<Vec<_>>(),
        true,
    )
    .await;
    let range = |from_ms, to_ms| VerifyRequest {
        span: Span::Range { from_ms, to_ms },
        ..req("BTCUSDT", Interval::H1, 0, now)
    };
    // `--from 10:20 --to 04:30`: the candles opening in it, 11:00 up to 04:00.
    let r = verify(&db.pool, &range(from + 1_200_000, Some(to - 1_800_000))).await;
    let s = &r.results["BTCUSDT"]["1h"];
    assert_eq!(s.status, Status::Ok, "{s:?}");
    assert_eq!((s.count, s.expected), (18, 18));
    assert_eq!(s.window_start, from + H);
    assert!(
        s.notes.iter().any(|n| n.contains("freshness not checked")),
        "{s:?}"
    );
    // Up to now, the same data is 30 hours behind: the hours after 05:00 are missing and the
    // newest candle is stale.
    let r = verify(&db.pool, &range(from, None)).await;
    let s = &r.results["BTCUSDT"]["1h"];
    assert_eq!(s.status, Status::Stale, "{s:?}");
    assert_eq!(s.expected, 50);
    assert_eq!(s.gaps.len(), 1);
    assert_eq!((s.gaps[0].start, s.gaps[0].missing), (to, 31));
}
