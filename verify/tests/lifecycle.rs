//! Listing and exchange status: recorded in a fresh database, then reflected by the verdicts.
#![allow(clippy::unwrap_used)]

use klinebus_schemas::{Interval, Symbol};
use klinebus_testkit::TestDb;
use klinebus_verify::{
    listing, listings, record_listing, record_symbol_status, symbol_status, symbol_statuses,
    verify, Span, Status, VerifyRequest, DELISTED, TRADING,
};

const H: i64 = 3_600_000;
const D: i64 = 86_400_000;
/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;

async fn insert(db: &TestDb, symbol: &str, tf: Interval, opens: impl Iterator<Item = i64>) {
    for t in opens {
        sqlx::query(
            r#"INSERT INTO ohlcv_candles (symbol, timeframe, "timestamp", open, high, low, close,
                 volume, quote_volume, taker_buy_base, taker_buy_quote, trades, close_time,
                 is_closed, event_time, source)
               VALUES ($1, $2, $3, 1, 2, 1, 1.5, 10, 15, 5, 7.5, 3, $4, true, $4 + 1, 'backfill')"#,
        )
        .bind(symbol)
        .bind(tf.as_str())
        .bind(t)
        .bind(tf.close_time(t))
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

fn sym(s: &str) -> Symbol {
    s.parse().unwrap()
}

fn req(symbol: &str, tfs: &[Interval], days: u32, now: i64) -> VerifyRequest {
    VerifyRequest {
        symbols: vec![sym(symbol)],
        intervals: tfs.to_vec(),
        span: Span::Days(Some(days)),
        now_ms: now,
    }
}

#[tokio::test]
async fn a_new_listing_is_ok_from_its_first_candle_on() {
    let db = TestDb::fresh().await;
    let now = T0 + 10 * 60_000;
    let listed = T0 - 3 * D + 6 * H; // 2025-06-01T18:00:00Z
    let new = sym("NEWUSDT");
    insert(
        &db,
        "NEWUSDT",
        Interval::H1,
        (listed..T0).step_by(H as usize),
    )
    .await;
    let day0 = Interval::D1.align(listed);
    insert(
        &db,
        "NEWUSDT",
        Interval::D1,
        (day0..Interval::D1.align(now)).step_by(D as usize),
    )
    .await;

    // Without the listing, the days before it are missing.
    let r = verify(
        &db.pool,
        &req("NEWUSDT", &[Interval::H1, Interval::D1], 30, now),
    )
    .await;
    assert_eq!(r.overall_status, Status::Incomplete);
    assert!(!r.is_ok());

    record_listing(&db.pool, &new, Interval::H1, listed)
        .await
        .unwrap();
    record_listing(&db.pool, &new, Interval::H1, listed)
        .await
        .unwrap(); // idempotent
    record_listing(&db.pool, &new, Interval::D1, day0)
        .await
        .unwrap();
    assert_eq!(
        listing(&db.pool, &new, Interval::H1).await.unwrap(),
        Some(listed)
    );
    assert_eq!(
        listing(&db.pool, &sym("BTCUSDT"), Interval::H1)
            .await
            .unwrap(),
        None
    );
    assert_eq!(listings(&db.pool).await.unwrap().len(), 2);

    let r = verify(
        &db.pool,
        &req("NEWUSDT", &[Interval::H1, Interval::D1], 30, now),
    )
    .await;
    let h = &r.results["NEWUSDT"]["1h"];
    assert_eq!(r.overall_status, Status::Ok, "{}", r.render_text());
    assert_eq!((h.count, h.expected, h.window_start), (66, 66, listed));
    assert_eq!(h.notes, ["listed 2025-06-01T18:00:00Z"]);
    assert_eq!(h.listed_at, Some(listed));
    let d = &r.results["NEWUSDT"]["1d"];
    assert_eq!(d.notes, ["listed 2025-06-01"]);
    assert_eq!((d.count, d.expected), (3, 3));
    assert!(r.render_text().contains("· listed 2025-06-01\n"));

    // A hole after the listing still counts.
    sqlx::query(r#"DELETE FROM ohlcv_candles WHERE timeframe = '1h' AND "timestamp" = $1"#)
        .bind(listed + 5 * H)
        .execute(&db.pool)
        .await
        .unwrap();
    let r = verify(&db.pool, &req("NEWUSDT", &[Interval::H1], 30, now)).await;
    let h = &r.results["NEWUSDT"]["1h"];
    assert_eq!(h.status, Status::Incomplete);
    assert_eq!(h.gaps.len(), 1);
    assert_eq!((h.gaps[0].start, h.gaps[0].missing), (listed + 5 * H, 1));

    // A listing before the window changes nothing.
    let btc = sym("BTCUSDT");
    insert(
        &db,
        "BTCUSDT",
        Interval::H1,
        (T0 - 2 * D..T0).step_by(H as usize),
    )
    .await;
    record_listing(&db.pool, &btc, Interval::H1, T0 - 400 * D)
        .await
        .unwrap();
    let r = verify(&db.pool, &req("BTCUSDT", &[Interval::H1], 2, now)).await;
    let b = &r.results["BTCUSDT"]["1h"];
    assert_eq!((b.status, b.expected), (Status::Ok, 48));
    assert!(b.notes.is_empty());
}

#[tokio::test]
async fn a_halted_symbol_is_halted_not_stale_and_does_not_fail_the_check() {
    let db = TestDb::fresh().await;
    let eth = sym("ETHUSDT");
    let halt = T0 - 10 * H;
    // Complete up to the halt, nothing since: stale by age, but the exchange has nothing more.
    insert(
        &db,
        "ETHUSDT",
        Interval::H1,
        (T0 - 2 * D..halt).step_by(H as usize),
    )
    .await;
    let now = T0;
    let r = verify(&db.pool, &req("ETHUSDT", &[Interval::H1], 2, now)).await;
    assert_eq!(r.results["ETHUSDT"]["1h"].status, Status::Stale);

    record_symbol_status(&db.pool, &eth, TRADING, halt - H)
        .await
        .unwrap();
    record_symbol_status(&db.pool, &eth, "BREAK", halt + 60_000)
        .await
        .unwrap();
    record_symbol_status(&db.pool, &eth, "BREAK", halt + 2 * H)
        .await
        .unwrap();
    // An older observation arriving late changes nothing.
    record_symbol_status(&db.pool, &eth, TRADING, halt)
        .await
        .unwrap();
    let st = symbol_status(&db.pool, &eth).await.unwrap().unwrap();
    assert_eq!(
        (st.status.as_str(), st.since, st.observed_at),
        ("BREAK", halt + 60_000, halt + 2 * H)
    );
    assert!(!st.is_trading());

    let r = verify(&db.pool, &req("ETHUSDT", &[Interval::H1], 2, now)).await;
    let s = &r.results["ETHUSDT"]["1h"];
    assert_eq!(s.status, Status::Halted, "{}", r.render_text());
    assert_eq!(r.overall_status, Status::Halted);
    assert!(r.is_ok(), "halted and complete up to the halt passes");
    assert_eq!((s.count, s.expected), (38, 38));
    assert!(s.issues.is_empty() && s.gaps.is_empty());
    assert_eq!(s.exchange_status.as_deref(), Some("BREAK"));
    assert_eq!(s.notes, ["halted (BREAK) since 2025-06-04T02:01:00Z"]);
    let text = r.render_text();
    assert!(text.contains("halted") && text.contains("BREAK"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["results"]["ETHUSDT"]["1h"]["status"], "halted");
    assert_eq!(json["results"]["ETHUSDT"]["1h"]["exchange_status"], "BREAK");

    // Holes before the halt are still incomplete.
    sqlx::query(r#"DELETE FROM ohlcv_candles WHERE "timestamp" = $1"#)
        .bind(halt - 5 * H)
        .execute(&db.pool)
        .await
        .unwrap();
    let r = verify(&db.pool, &req("ETHUSDT", &[Interval::H1], 2, now)).await;
    assert_eq!(r.results["ETHUSDT"]["1h"].status, Status::Incomplete);
    assert!(!r.is_ok());

    // Delisted reads the same way, and trading again brings freshness back.
    record_symbol_status(&db.pool, &eth, DELISTED, now)
        .await
        .unwrap();
    let all = symbol_statuses(&db.pool).await.unwrap();
    assert_eq!((all.len(), all[0].since), (1, now));
    insert(&db, "ETHUSDT", Interval::H1, [halt - 5 * H].into_iter()).await;
    let r = verify(&db.pool, &req("ETHUSDT", &[Interval::H1], 2, now)).await;
    let s = &r.results["ETHUSDT"]["1h"];
    assert_eq!(s.status, Status::Halted);
    assert!(s.notes[0].starts_with("delisted"), "{:?}", s.notes);
    record_symbol_status(&db.pool, &eth, TRADING, now + 1)
        .await
        .unwrap();
    let r = verify(&db.pool, &req("ETHUSDT", &[Interval::H1], 2, now)).await;
    assert_eq!(r.results["ETHUSDT"]["1h"].status, Status::Stale);
}
