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
