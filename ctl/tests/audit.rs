//! `klinectl audit` end to end: binance-sim, a private nats-server, a fresh database and the
//! Postgres sink in-process. The table is filled the way a crashed live producer leaves it (on
//! the `ws` subject, with holes and with forming rows whose close has long passed); one audit
//! run must leave it equal to the exchange's closed candles, and a second finds nothing.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use clap::Parser;
use klinebus_schemas::bus::{self, BusOptions};
use klinebus_schemas::streams::Retention;
use klinebus_schemas::{Interval, KlineEvent, Source, Venue};
use klinebus_testkit::{NatsServer, TestDb};
use klinectl::cli::{Cli, Cmd};
use tokio_util::sync::CancellationToken;

const SYMBOLS: [&str; 2] = ["BTCUSDT", "ETHUSDT"];
const TFS: [Interval; 2] = [Interval::M1, Interval::H1];
/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;

/// Every stored candle of a series as comparable lines, closed flag included.
async fn table(db: &TestDb, symbol: &str, tf: Interval, from: i64, to: i64) -> Vec<String> {
    sqlx::query_scalar(
        r#"SELECT concat_ws('|', "timestamp", open, high, low, close, volume, quote_volume,
                  taker_buy_base, taker_buy_quote, trades, close_time, is_closed)
           FROM ohlcv_candles WHERE symbol = $1 AND timeframe = $2
             AND "timestamp" >= $3 AND "timestamp" < $4 ORDER BY "timestamp""#,
    )
    .bind(symbol)
    .bind(tf.as_str())
    .bind(from)
    .bind(to)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

fn exchange(
    sim: &binance_sim::SimHandle,
    symbol: &str,
    tf: Interval,
    from: i64,
    to: i64,
) -> Vec<String> {
    let trim = |s: &str| {
        // NUMERIC prints without trailing zeros only when the value has none; the sim's strings
        // have 8 decimals, as the table's NUMERIC does.
        s.to_owned()
    };
    sim.market()
        .klines(symbol, tf.as_str(), from, to - 1, sim.clock().now_ms())
        .unwrap()
        .into_iter()
        .map(|k| {
            [
                k.open_time.to_string(),
                trim(&k.open),
                trim(&k.high),
                trim(&k.low),
                trim(&k.close),
                trim(&k.volume),
                trim(&k.quote_volume),
                trim(&k.taker_buy_base),
                trim(&k.taker_buy_quote),
                k.trades.to_string(),
                k.close_time.to_string(),
                k.closed.to_string().chars().next().unwrap().to_string(),
            ]
            .join("|")
        })
        .collect()
}

fn event(k: &binance_sim::Kline, symbol: &str, tf: Interval, closed: bool) -> KlineEvent {
    KlineEvent {
        venue: Venue::binance(),
        symbol: symbol.parse().unwrap(),
        interval: tf,
        open_time: k.open_time,
        close_time: k.close_time,
        open: k.open.clone(),
        high: k.high.clone(),
        low: k.low.clone(),
        close: k.close.clone(),
        volume: k.volume.clone(),
        quote_volume: k.quote_volume.clone(),
        taker_buy_base: k.taker_buy_base.clone(),
        taker_buy_quote: k.taker_buy_quote.clone(),
        trades: k.trades,
        closed,
        event_time: if closed {
            k.close_time + 1
        } else {
            k.open_time + 1
        },
        source: Source::Ws,
        received_at: k.close_time + 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_audit_run_repairs_holes_and_expired_forming_rows() {
    let sim = binance_sim::spawn(binance_sim::Config::parse_from([
        "binance-sim",
        "--start-time",
        &T0.to_string(),
        "--symbols",
        &SYMBOLS.join(","),
    ]))
    .await
    .unwrap();
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let client = bus::connect(&BusOptions::new(nats.url(), "test"))
        .await
        .unwrap();
    let js = bus::jetstream(client, 5_000);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let sink = tokio::spawn(kline_pg_sink::run(
        kline_pg_sink::Config::parse_from([
            "kline-pg-sink",
            "--nats-url",
            nats.url().as_str(),
            "--database-url",
            db.url.as_str(),
            "--flush-interval-ms",
            "20",
            "--metrics-addr",
            "off",
        ]),
        stop.clone(),
    ));

    // What a crashed live producer leaves: the last two days on `ws`, with every 7th candle
    // missing and every 11th stored as a half-formed update.
    let now = sim.clock().now_ms();
    let from = now - 2 * 86_400_000;
    let mut acks = Vec::new();
    let (mut stored, mut damaged) = (0usize, 0usize);
    for symbol in SYMBOLS {
        for tf in TFS {
            let closed: Vec<_> = sim
                .market()
                .klines(symbol, tf.as_str(), tf.align(from), now, now)
                .unwrap()
                .into_iter()
                .filter(|k| k.closed)
                .collect();
            for (i, k) in closed.iter().enumerate() {
                if i % 7 == 3 {
                    damaged += 1;
                    continue;
                }
                let mut ev = event(k, symbol, tf, i % 11 != 5);
                if !ev.closed {
                    damaged += 1;
                    ev.volume = ev.taker_buy_base.clone();
                    ev.trades /= 2;
                }
                acks.push(bus::publish_event(&js, &ev).await.unwrap());
                stored += 1;
                // An ack future holds its in-flight permit until awaited.
                if acks.len() == 1000 {
                    for a in acks.drain(..) {
                        a.await.unwrap();
                    }
                }
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    let started = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if n == stored as i64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{n} of {stored} stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (url, rest) = (nats.url(), sim.base_url());
    let cli = Cli::try_parse_from([
        "klinectl",
        "--database-url",
        db.url.as_str(),
        "--nats-url",
        url.as_str(),
        "audit",
        "--symbols",
        &SYMBOLS.join(","),
        "--timeframes",
        "1m,1h",
        "--window",
        "1d",
        "--rest-url",
        rest.as_str(),
        "--metrics-addr",
        "off",
    ])
    .unwrap();
    let Cmd::Audit(args) = &cli.cmd else {
        panic!("not audit")
    };
    let pool = db.pool.clone();
    let symbols = klinebus_schemas::Symbol::parse_list(&SYMBOLS.join(",")).unwrap();
    let client = klinectl::audit::rest_client(args).unwrap();
    let run = klinectl::audit::audit_once(&pool, &js, &client, &symbols, &TFS, args, &stop)
        .await
        .unwrap();
    eprintln!("{}", run.line());
    assert!(run.missing > 0 && run.missing < damaged as u64, "{run:?}");
    assert_eq!(run.repaired, run.missing, "{run:?}");
    assert_eq!(run.unrepaired(), 0, "{run:?}");

    // The window the auditor checks (one day, less the grace) is now exactly the exchange's.
    let at = sim.clock().now_ms() - 120_000;
    let started = Instant::now();
    for symbol in SYMBOLS {
        for tf in TFS {
            let (start, end) = klinebus_verify::window(tf, 1, at);
            let want = exchange(&sim, symbol, tf, start, end);
            loop {
                let got = table(&db, symbol, tf, start, end).await;
                if got == want {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{symbol} {tf}: table differs from the exchange after the audit"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let again = klinectl::audit::audit_once(&pool, &js, &client, &symbols, &TFS, args, &stop)
        .await
        .unwrap();
    assert_eq!(again.missing, 0, "{again:?}");
    // No klines were fetched the second time: one /time and one exchangeInfo.
    assert_eq!(again.rest_requests, 2, "{again:?}");
    stop.cancel();
    sink.await.unwrap().unwrap();
}
