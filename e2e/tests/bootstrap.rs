//! Bootstrap end to end: `kline-backfill --verify` against the simulator, through NATS, into
//! PostgreSQL by two `kline-pg-sink` instances; the table must equal the simulator's candles.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use clap::Parser;
use klinebus_testkit::{NatsServer, TestDb};
use tokio_util::sync::CancellationToken;

/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bootstrap_lands_every_candle_exactly_and_verifies_ok() {
    let sim = binance_sim::spawn(binance_sim::Config::parse_from([
        "binance-sim",
        "--start-time",
        &T0.to_string(),
        "--symbols",
        "BTCUSDT,ETHUSDT",
    ]))
    .await
    .unwrap();
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let stop = CancellationToken::new();

    let mut sinks = Vec::new();
    for _ in 0..2 {
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
        sinks.push(tokio::spawn(kline_pg_sink::run(cfg, stop.child_token())));
    }
    // Let the sinks create their durable consumer before the producer starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cfg = kline_backfill::Config::parse_from([
        "kline-backfill",
        "--symbols",
        "BTCUSDT,ETHUSDT",
        "--timeframes",
        "15m,1h,4h,1d",
        "--days",
        "20",
        "--rest-url",
        &sim.base_url(),
        "--archive-url",
        &sim.base_url(),
        "--nats-url",
        &nats.url(),
        "--database-url",
        &db.url,
        "--progress",
        "quiet",
        "--verify",
        "--verify-timeout",
        "60s",
    ]);
    let result = kline_backfill::run(cfg, CancellationToken::new())
        .await
        .unwrap();
    let report = result.verification.as_ref().unwrap().as_ref().unwrap();
    assert!(report.is_ok(), "{}", report.render_text());
    assert_eq!(result.exit_code(), 0);
    // History from the archive (May's monthly file, 1-3 June's daily ones), today's closed
    // candles over REST (the day's 1d candle is still forming).
    for r in &result.summary.series {
        let today = r.interval != klinebus_schemas::Interval::D1;
        assert!(r.from_archive > 0 && (r.from_rest > 0) == today, "{r:?}");
        assert!(r.archive_faults.is_empty(), "{r:?}");
    }

    // Row for row, value for value, the simulator's closed candles of the window.
    let now = sim.clock().now_ms();
    for symbol in ["BTCUSDT", "ETHUSDT"] {
        for tf in ["15m", "1h", "4h", "1d"] {
            let interval: klinebus_schemas::Interval = tf.parse().unwrap();
            let (start, end) = klinebus_verify::window(interval, 20, T0);
            let expected: Vec<_> = sim
                .market()
                .klines(symbol, tf, start, end - 1, now)
                .unwrap()
                .into_iter()
                .filter(|k| k.closed)
                .collect();
            type Row = (
                i64,
                String,
                String,
                String,
                String,
                String,
                String,
                i64,
                String,
                String,
                i64,
                bool,
            );
            let rows: Vec<Row> = sqlx::query_as(
                r#"SELECT "timestamp", open::text, high::text, low::text, close::text, volume::text,
                          quote_volume::text, trades, taker_buy_base::text, taker_buy_quote::text,
                          close_time, is_closed
                   FROM ohlcv_candles WHERE symbol = $1 AND timeframe = $2 ORDER BY 1"#,
            )
            .bind(symbol)
            .bind(tf)
            .fetch_all(&db.pool)
            .await
            .unwrap();
            assert_eq!(rows.len(), expected.len(), "{symbol} {tf}");
            for (r, k) in rows.iter().zip(&expected) {
                let want = (
                    k.open_time,
                    k.open.clone(),
                    k.high.clone(),
                    k.low.clone(),
                    k.close.clone(),
                    k.volume.clone(),
                    k.quote_volume.clone(),
                    k.trades as i64,
                    k.taker_buy_base.clone(),
                    k.taker_buy_quote.clone(),
                    k.close_time,
                    true,
                );
                assert_eq!(r, &want, "{symbol} {tf}");
            }
            let mode: String = sqlx::query_scalar(
                "SELECT ingestion_mode::text FROM ingestion_status WHERE symbol = $1 AND timeframe = $2",
            )
            .bind(symbol)
            .bind(tf)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            assert_eq!(mode, "backfill");
        }
    }
    stop.cancel();
    for s in sinks {
        s.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exchange_gaps_are_recorded_and_not_counted_as_missing() {
    let gap_start = T0 - 2 * 86_400_000;
    let gap_end = gap_start + 3 * 3_600_000;
    let sim = binance_sim::spawn(binance_sim::Config::parse_from([
        "binance-sim",
        "--start-time",
        &T0.to_string(),
        "--symbols",
        "BTCUSDT",
        "--gap",
        &format!("BTCUSDT:{gap_start}..{gap_end}"),
    ]))
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
    ]);
    let sink = tokio::spawn(kline_pg_sink::run(cfg, stop.child_token()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cfg = kline_backfill::Config::parse_from([
        "kline-backfill",
        "--symbols",
        "BTCUSDT",
        "--timeframes",
        "15m,1h",
        "--days",
        "5",
        "--rest-url",
        &sim.base_url(),
        "--archive-url",
        &sim.base_url(),
        "--nats-url",
        &nats.url(),
        "--database-url",
        &db.url,
        "--progress",
        "quiet",
        "--verify",
    ]);
    let result = kline_backfill::run(cfg, CancellationToken::new())
        .await
        .unwrap();
    // The backfill says "complete, but the exchange has gaps"; verification knows them.
    assert_eq!(result.summary.exit_code(), 2);
    let report = result.verification.as_ref().unwrap().as_ref().unwrap();
    assert!(report.is_ok(), "{}", report.render_text());
    let known: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT timeframe::text, start_time, end_time, candles FROM exchange_gaps ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        known,
        [
            ("15m".to_owned(), gap_start, gap_end, 12),
            ("1h".to_owned(), gap_start, gap_end, 3)
        ]
    );
    // Without that knowledge the same data is incomplete, with exactly the gap listed.
    sqlx::query("DELETE FROM exchange_gaps")
        .execute(&db.pool)
        .await
        .unwrap();
    let req = klinebus_verify::VerifyRequest {
        symbols: vec!["BTCUSDT".parse().unwrap()],
        intervals: vec![klinebus_schemas::Interval::H1],
        span: klinebus_verify::Span::Days(Some(5)),
        now_ms: T0,
    };
    let again = klinebus_verify::verify(&db.pool, &req).await;
    let s = &again.results["BTCUSDT"]["1h"];
    assert_eq!(s.status, klinebus_verify::Status::Incomplete);
    assert_eq!(
        (s.gaps[0].start, s.gaps[0].end),
        (gap_start, gap_end - 3_600_000)
    );
    stop.cancel();
    sink.await.unwrap().unwrap();
}
