//! Exchange reality in verification, end to end: `kline-backfill --verify` against the simulator,
//! through NATS, into PostgreSQL by `kline-pg-sink`, for a symbol listed inside the window, for
//! a halted one, and for an explicit `--from`/`--to` range.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use clap::Parser;
use klinebus_schemas::{Interval, Symbol};
use klinebus_testkit::{NatsServer, TestDb};
use tokio_util::sync::CancellationToken;

/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;
const H: i64 = 3_600_000;
const D: i64 = 86_400_000;

struct Env {
    sim: binance_sim::SimHandle,
    nats: NatsServer,
    db: TestDb,
    stop: CancellationToken,
    sink: tokio::task::JoinHandle<Result<(), kline_pg_sink::SinkError>>,
}

async fn env(sim_args: &[&str]) -> Env {
    let mut args = vec!["binance-sim", "--start-time"];
    let t0 = T0.to_string();
    args.push(&t0);
    args.extend_from_slice(sim_args);
    let sim = binance_sim::spawn(binance_sim::Config::parse_from(args))
        .await
        .unwrap();
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let stop = CancellationToken::new();
    let cfg = kline_pg_sink::Config::parse_from([
        "kline-pg-sink",
        "--nats-url",
        &nats.url(),
        "--database-url",
        &db.url,
        "--metrics-addr",
        "off",
        "--flush-interval-ms",
        "50",
    ]);
    let sink = tokio::spawn(kline_pg_sink::run(cfg, stop.child_token()));
    // Let the sink create its durable consumer before the producer starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Env {
        sim,
        nats,
        db,
        stop,
        sink,
    }
}

/// `window`: `["--days", "30"]`, or `--from`/`--to`.
async fn backfill(e: &Env, symbols: &str, tfs: &str, window: &[&str]) -> kline_backfill::RunResult {
    let (sim, nats) = (e.sim.base_url(), e.nats.url());
    let mut args = vec![
        "kline-backfill",
        "--symbols",
        symbols,
        "--timeframes",
        tfs,
        "--rest-url",
        &sim,
        "--archive-url",
        &sim,
        "--nats-url",
        &nats,
        "--database-url",
        &e.db.url,
        "--progress",
        "quiet",
        "--verify",
        "--verify-timeout",
        "60s",
    ];
    args.extend_from_slice(window);
    let cfg = kline_backfill::Config::parse_from(args);
    kline_backfill::run(cfg, CancellationToken::new())
        .await
        .unwrap()
}

/// (open time, close, volume, trades) of every closed row of a series.
async fn rows(db: &TestDb, symbol: &str, tf: &str) -> Vec<(i64, String, String, i64)> {
    sqlx::query_as(
        r#"SELECT "timestamp", close::text, volume::text, trades FROM ohlcv_candles
           WHERE symbol = $1 AND timeframe = $2 AND is_closed ORDER BY 1"#,
    )
    .bind(symbol)
    .bind(tf)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_symbol_listed_inside_the_window_verifies_ok_from_its_listing() {
    let e = env(&["--symbols", "BTCUSDT"]).await;
    // Listed three days ago at 18:17: its first 1h candle opens 18:00, its first 1d at 00:00.
    let listed = T0 - 3 * D + 6 * H + 17 * 60_000;
    e.sim.market().list_symbol("NEWUSDT", listed).unwrap();

    let result = backfill(&e, "BTCUSDT,NEWUSDT", "1h,1d", &["--days", "30"]).await;
    let report = result.verification.as_ref().unwrap().as_ref().unwrap();
    let text = report.render_text();
    assert!(report.is_ok(), "{text}");
    assert_eq!(result.exit_code(), 0, "{text}");
    let new_1h = &report.results["NEWUSDT"]["1h"];
    assert_eq!(new_1h.status, klinebus_verify::Status::Ok);
    assert_eq!(new_1h.notes, ["listed 2025-06-01T18:00:00Z"], "{text}");
    assert_eq!(report.results["NEWUSDT"]["1d"].notes, ["listed 2025-06-01"]);
    assert!(report.results["BTCUSDT"]["1h"].notes.is_empty());
    let s = result
        .summary
        .series
        .iter()
        .find(|s| s.symbol.as_str() == "NEWUSDT" && s.interval == Interval::H1)
        .unwrap();
    assert!(s.gaps.is_empty() && s.before_listing > 0, "{s:?}");

    // The recorded first candles are the exchange's, and only the new symbol has any.
    let listings = klinebus_verify::listings(&e.db.pool).await.unwrap();
    let got: Vec<_> = listings
        .iter()
        .map(|l| (l.symbol.as_str(), l.timeframe.as_str(), l.first_open_time))
        .collect();
    assert_eq!(
        got,
        [
            ("NEWUSDT", "1d", Interval::D1.align(listed)),
            ("NEWUSDT", "1h", Interval::H1.align(listed)),
        ]
    );
    // Statuses: one exchangeInfo call at start-up.
    let statuses = klinebus_verify::symbol_statuses(&e.db.pool).await.unwrap();
    assert!(statuses.iter().all(|s| s.status == "TRADING") && statuses.len() == 2);

    // The table equals the simulator's closed candles of the window, row for row.
    let now = e.sim.clock().now_ms();
    for tf in ["1h", "1d"] {
        let interval: Interval = tf.parse().unwrap();
        let (start, end) = klinebus_verify::window(interval, 30, now);
        let want: Vec<_> = e
            .sim
            .market()
            .klines("NEWUSDT", tf, start, end - 1, now)
            .unwrap()
            .into_iter()
            .filter(|k| k.closed)
            .map(|k| (k.open_time, k.close, k.volume, k.trades as i64))
            .collect();
        assert_eq!(want[0].0, interval.align(listed), "{tf}");
        assert_eq!(rows(&e.db, "NEWUSDT", tf).await, want, "{tf}");
    }

    // A re-verification reads the same from PostgreSQL alone.
    let again = klinebus_verify::verify(
        &e.db.pool,
        &klinebus_verify::VerifyRequest {
            symbols: vec!["NEWUSDT".parse::<Symbol>().unwrap()],
            intervals: vec![Interval::H1],
            span: klinebus_verify::Span::Days(Some(30)),
            now_ms: e.sim.clock().now_ms(),
        },
    )
    .await;
    assert!(again.is_ok(), "{}", again.render_text());
    e.stop.cancel();
    e.sink.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_explicit_range_verifies_exactly_what_it_fetched() {
    let e = env(&["--symbols", "BTCUSDT"]).await;
    // Neither end on an hour, a day or a 15m open; the range ends two days before now.
    let result = backfill(
        &e,
        "BTCUSDT",
        "15m,1h,1d",
        &[
            "--from",
            "2025-05-20T09:10:00Z",
            "--to",
            "2025-06-02T13:50:00Z",
        ],
    )
    .await;
    let report = result.verification.as_ref().unwrap().as_ref().unwrap();
    let text = report.render_text();
    assert!(report.is_ok(), "{text}");
    assert_eq!(result.exit_code(), 0, "{text}");
    let (from, to) = (
        T0 - 15 * D - 2 * H - 50 * 60_000,
        T0 - 2 * D + H + 50 * 60_000,
    );
    for tf in ["15m", "1h", "1d"] {
        let interval: Interval = tf.parse().unwrap();
        let s = &report.results["BTCUSDT"][tf];
        let (first, end) = (interval.align_up(from), interval.align_up(to));
        assert_eq!(s.window_start, first, "{tf}: {text}");
        assert_eq!(s.count, interval.count_between(first, end), "{tf}: {text}");
        let stored = rows(&e.db, "BTCUSDT", tf).await;
        assert_eq!(stored.len() as i64, s.count, "{tf}");
        assert_eq!(stored[0].0, first, "{tf}");
    }
    e.stop.cancel();
    e.sink.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_halted_symbol_is_halted_not_stale_and_passes() {
    // An hour of simulated time per wall second: the halt is hours old by the backfill.
    let e = env(&["--symbols", "BTCUSDT,ETHUSDT", "--speed", "3600"]).await;
    e.sim.market().halt("ETHUSDT", T0).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let result = backfill(&e, "BTCUSDT,ETHUSDT", "1h", &["--days", "2"]).await;
    let report = result.verification.as_ref().unwrap().as_ref().unwrap();
    let text = report.render_text();
    let eth = &report.results["ETHUSDT"]["1h"];
    assert_eq!(eth.status, klinebus_verify::Status::Halted, "{text}");
    assert_eq!(eth.exchange_status.as_deref(), Some("BREAK"));
    assert_eq!(
        eth.latest_timestamp,
        Some(T0 - H),
        "complete up to the halt"
    );
    assert!(eth.issues.is_empty() && eth.gaps.is_empty(), "{text}");
    assert_eq!(
        report.results["BTCUSDT"]["1h"].status,
        klinebus_verify::Status::Ok
    );
    assert!(report.is_ok(), "{text}");
    // The hours since the halt are the halt, not an exchange gap.
    assert_eq!(result.exit_code(), 0, "{text}");
    let s = result
        .summary
        .series
        .iter()
        .find(|s| s.symbol.as_str() == "ETHUSDT")
        .unwrap();
    assert!(s.gaps.is_empty() && s.since_halt >= 2, "{s:?}");
    let st = klinebus_verify::symbol_status(&e.db.pool, &"ETHUSDT".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.status, "BREAK");
    e.stop.cancel();
    e.sink.await.unwrap().unwrap();
}
