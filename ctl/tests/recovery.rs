//! Recovery paths end to end, with the Postgres sink running in-process throughout: `replay`
//! rebuilds a lost table from the stream, `verify --repair` backfills gaps from the exchange, and
//! one `audit` run repairs a table left as a crashed live producer leaves it (on the `ws`
//! subject, with holes and forming rows whose close has long passed).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use clap::Parser;
use kline_backfill::{run_backfill, Plan, ProgressMode, RunOptions, Window};
use klinebus_binance::{RestClient, RestConfig, WeightLimiter};
use klinebus_schemas::bus::{self, BusOptions};
use klinebus_schemas::streams::Retention;
use klinebus_schemas::{Interval, KlineEvent, Source, Symbol, Venue};
use klinebus_testkit::{NatsServer, TestDb};
use klinectl::cli::{Cli, Cmd};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const MIN: i64 = 60_000;

/// Every stored candle as one comparable line, in key order (bookkeeping times left out).
const ROWS: &str = r#"SELECT concat_ws('|', symbol, timeframe, "timestamp", open, high, low, close,
        volume, quote_volume, taker_buy_base, taker_buy_quote, trades, close_time)
    FROM ohlcv_candles ORDER BY symbol, timeframe, "timestamp""#;

async fn rows(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar(ROWS).fetch_all(&db.pool).await.unwrap()
}

async fn count(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Polls until the table holds `n` candles.
async fn wait_for_rows(db: &TestDb, n: i64) {
    let started = Instant::now();
    loop {
        let c = count(db).await;
        if c == n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "table holds {c} candles, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bus with the klinebus streams, as every binary would leave it.
async fn bus_for(nats: &NatsServer) -> Context {
    let client = bus::connect(&BusOptions::new(nats.url(), "test"))
        .await
        .unwrap();
    let js = bus::jetstream(client, 5_000);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    js
}

/// The Postgres sink, in-process, consuming as `pg-sink`.
fn start_sink(
    nats: &NatsServer,
    db: &TestDb,
    stop: &CancellationToken,
) -> JoinHandle<Result<(), kline_pg_sink::SinkError>> {
    let config = kline_pg_sink::Config::parse_from([
        "kline-pg-sink",
        "--nats-url",
        nats.url().as_str(),
        "--database-url",
        db.url.as_str(),
        "--consumer",
        "pg-sink",
        "--flush-interval-ms",
        "20",
        "--metrics-addr",
        "off",
    ]);
    tokio::spawn(kline_pg_sink::run(config, stop.clone()))
}

fn cli(db: &TestDb, nats: &NatsServer, args: &[&str]) -> Cli {
    let url = nats.url();
    let mut v = vec![
        "klinectl",
        "--database-url",
        db.url.as_str(),
        "--nats-url",
        url.as_str(),
    ];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).unwrap()
}

fn candle(symbol: &str, interval: Interval, open_time: i64, i: i64) -> KlineEvent {
    KlineEvent {
        venue: Venue::binance(),
        symbol: symbol.parse().unwrap(),
        interval,
        open_time,
        close_time: interval.close_time(open_time),
        open: format!("{}.00000000", 100 + i),
        high: format!("{}.50000000", 110 + i),
        low: format!("{}.25000000", 90 + i),
        close: format!("{}.12345678", 105 + i),
        volume: format!("{}.00000001", 10 + i),
        quote_volume: "1000.12345678".into(),
        taker_buy_base: "5.00000000".into(),
        taker_buy_quote: "500.00000000".into(),
        trades: 7 + i as u64,
        closed: true,
        event_time: interval.close_time(open_time) + 1,
        source: if i % 3 == 0 {
            Source::Backfill
        } else {
            Source::Ws
        },
        received_at: interval.close_time(open_time) + 50,
    }
}

#[tokio::test]
async fn replay_rebuilds_a_lost_table_while_the_sink_runs() {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = bus_for(&nats).await;
    let stop = CancellationToken::new();
    let sink = start_sink(&nats, &db, &stop);

    let t0 = Interval::H1.align(1_749_038_400_000);
    let mut acks = Vec::new();
    for (s, symbol) in ["BTCUSDT", "ETHUSDT"].into_iter().enumerate() {
        for i in 0..40 {
            let ev = candle(symbol, Interval::M1, t0 + i * MIN, i + s as i64);
            acks.push(bus::publish_event(&js, &ev).await.unwrap());
        }
        for i in 0..10 {
            let ev = candle(symbol, Interval::H1, t0 + i * 60 * MIN, i);
            acks.push(bus::publish_event(&js, &ev).await.unwrap());
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    wait_for_rows(&db, 100).await;
    let before = rows(&db).await;
    assert_eq!(before.len(), 100);

    // The table is lost; the sink keeps running.
    sqlx::query("TRUNCATE ohlcv_candles")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(count(&db).await, 0);

    let out = klinectl::run(cli(
        &db,
        &nats,
        &["replay", "--consumer", "pg-sink", "--from", "all"],
    ))
    .await
    .unwrap();
    assert_eq!(out.code, 0);
    assert!(
        out.output.contains("100 messages to re-deliver"),
        "{}",
        out.output
    );
    wait_for_rows(&db, 100).await;
    assert_eq!(rows(&db).await, before, "rebuilt row for row");

    stop.cancel();
    sink.await.unwrap().unwrap();
}

/// The simulator's closed 1m candles of `symbol` in `[from, to)`, as [`ROWS`] prints them.
fn sim_rows(sim: &binance_sim::SimHandle, symbol: &str, from: i64, to: i64) -> Vec<String> {
    sim.market()
        .klines(symbol, "1m", from, to - 1, sim.clock().now_ms())
        .unwrap()
        .into_iter()
        .filter(|k| k.closed)
        .map(|k| {
            format!(
                "{symbol}|1m|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
                k.open_time,
                k.open,
                k.high,
                k.low,
                k.close,
                k.volume,
                k.quote_volume,
                k.taker_buy_base,
                k.taker_buy_quote,
                k.trades,
                k.close_time
            )
        })
        .collect()
}

/// Stored 1m rows of `symbol` with open times in `[from, to)`.
async fn stored_rows(db: &TestDb, symbol: &str, from: i64, to: i64) -> Vec<String> {
    sqlx::query_scalar(
        r#"SELECT concat_ws('|', symbol, timeframe, "timestamp", open, high, low, close,
               volume, quote_volume, taker_buy_base, taker_buy_quote, trades, close_time)
           FROM ohlcv_candles
           WHERE symbol = $1 AND timeframe = '1m' AND "timestamp" >= $2 AND "timestamp" < $3
           ORDER BY "timestamp""#,
    )
    .bind(symbol)
    .bind(from)
    .bind(to)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// The simulator (clock from `start`, `symbols`), a private broker with the streams, a fresh
/// database, the sink consuming in-process, and a REST client of the simulator.
struct Site {
    sim: binance_sim::SimHandle,
    nats: NatsServer,
    db: TestDb,
    js: Context,
    rest: RestClient,
    stop: CancellationToken,
    sink: JoinHandle<Result<(), kline_pg_sink::SinkError>>,
}

async fn site(start: &str, symbols: &str) -> Site {
    let sim = binance_sim::spawn(binance_sim::Config::parse_from([
        "binance-sim",
        "--start-time",
        start,
        "--symbols",
        symbols,
    ]))
    .await
    .unwrap();
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = bus_for(&nats).await;
    let stop = CancellationToken::new();
    let sink = start_sink(&nats, &db, &stop);
    let rest = RestClient::new(
        RestConfig {
            base_url: sim.base_url(),
            ..RestConfig::default()
        },
        Arc::new(WeightLimiter::default()),
    )
    .unwrap();
    Site {
        sim,
        nats,
        db,
        js,
        rest,
        stop,
        sink,
    }
}

#[tokio::test]
async fn verify_repair_backfills_the_gaps_through_the_backfill_code() {
    let Site {
        sim,
        nats,
        db,
        js,
        rest,
        stop,
        sink,
    } = site("2025-06-04T12:00:00Z", "BTCUSDT,ETHUSDT").await;

    // Verify as of the simulator's clock: the window is the last day of 1m candles.
    let at = sim.clock().now_ms();
    let at_text = klinebus_verify::datetime(Interval::M1.align(at));
    let (from, to) = klinebus_verify::window(Interval::M1, 1, Interval::M1.align(at));
    // The producer was down for two stretches: BTCUSDT misses 3 hours, ETHUSDT 17 minutes
    // (never fetched, never published: the stream does not hold them either).
    let now = rest.server_time().await.unwrap();
    let opts = RunOptions {
        concurrency: 4,
        progress: ProgressMode::Quiet,
        resume: true,
        fetch: kline_backfill::Fetch::Rest,
        flow: None,
        patience: std::time::Duration::from_secs(60),
    };
    let holes = [
        ("BTCUSDT", from + 300 * MIN, from + 480 * MIN),
        ("ETHUSDT", to - 30 * MIN, to - 13 * MIN),
    ];
    let mut published = 0;
    for (symbol, a, b) in holes {
        let symbols: Vec<Symbol> = vec![symbol.parse().unwrap()];
        for window in [
            Window::Range {
                from_ms: from,
                to_ms: Some(a),
            },
            Window::Range {
                from_ms: b,
                to_ms: Some(to),
            },
        ] {
            let plan = Plan::build(&symbols, &[Interval::M1], window, now);
            let s = run_backfill(&plan, &rest, &js, opts, &CancellationToken::new()).await;
            assert_eq!(s.errors(), 0, "{}", s.render());
            published += s.published();
        }
    }
    assert_eq!(published as i64, 2 * 1440 - 180 - 17);
    wait_for_rows(&db, published as i64).await;

    let verify = |extra: &'static [&'static str]| {
        let mut args = vec![
            "verify",
            "--symbols",
            "BTCUSDT,ETHUSDT",
            "--timeframes",
            "1m",
            "--days",
            "1",
            "--at",
            at_text.as_str(),
        ];
        args.extend_from_slice(extra);
        klinectl::run(cli(&db, &nats, &args))
    };
    let plain = verify(&[]).await.unwrap();
    assert_eq!(plain.code, 1, "{}", plain.output);
    assert!(plain.output.contains("gap"), "{}", plain.output);

    let sim_url: &'static str = sim.base_url().leak();
    let repair_flags: &'static [&'static str] =
        vec!["--repair", "--rest-url", sim_url, "--repair-wait", "30s"].leak();
    let out = verify(repair_flags).await.unwrap();
    assert_eq!(out.code, 0, "{}", out.output);
    assert!(
        out.output.contains(
            "BTCUSDT 1m gap 2025-06-03T17:00:00Z .. 2025-06-03T19:59:00Z (180 candles): \
             published 180, already in the stream 0; complete"
        ),
        "{}",
        out.output
    );
    assert!(
        out.output
            .contains("(17 candles): published 17, already in the stream 0; complete"),
        "{}",
        out.output
    );
    assert!(
        out.output.contains("Repair published 197 candles"),
        "{}",
        out.output
    );
    assert!(out.output.contains("After repair:"), "{}", out.output);
    assert!(out.output.ends_with("Overall: ok\n"), "{}", out.output);
    for symbol in ["BTCUSDT", "ETHUSDT"] {
        let want = sim_rows(&sim, symbol, from, to);
        assert_eq!(want.len(), 1440);
        assert_eq!(stored_rows(&db, symbol, from, to).await, want, "{symbol}");
    }

    // Rows lost from the table only: the stream holds them, so the repair publishes nothing
    // (same dedup keys), says so, and the final verification still fails...
    sqlx::query(
        r#"DELETE FROM ohlcv_candles WHERE symbol = 'ETHUSDT'
           AND "timestamp" >= $1 AND "timestamp" < $2"#,
    )
    .bind(from + 100 * MIN)
    .bind(from + 110 * MIN)
    .execute(&db.pool)
    .await
    .unwrap();
    let out = verify(repair_flags).await.unwrap();
    assert_eq!(out.code, 1, "{}", out.output);
    assert!(
        out.output
            .contains("(10 candles): published 0, already in the stream 10; complete"),
        "{}",
        out.output
    );
    assert!(
        out.output.contains("klinectl replay --consumer pg-sink"),
        "{}",
        out.output
    );
    // ... until the sink re-applies the stream.
    let r = klinectl::run(cli(
        &db,
        &nats,
        &["replay", "--consumer", "pg-sink", "--from", "all"],
    ))
    .await
    .unwrap();
    assert_eq!(r.code, 0);
    let stored_before = count(&db).await;
    assert!(stored_before < published as i64 + 197);
    wait_for_rows(&db, published as i64 + 197).await;
    let ok = verify(&[]).await.unwrap();
    assert_eq!(ok.code, 0, "{}", ok.output);
    assert_eq!(
        stored_rows(&db, "ETHUSDT", from, to).await,
        sim_rows(&sim, "ETHUSDT", from, to)
    );

    stop.cancel();
    sink.await.unwrap().unwrap();
}

/// `verify --deep` finds values changed in the table (counts alone cannot), names the fields,
/// and with `--repair` stores the exchange's version of exactly those candles.
#[tokio::test]
async fn verify_deep_finds_changed_values_and_repairs_them() {
    let Site {
        sim,
        nats,
        db,
        js,
        rest,
        stop,
        sink,
    } = site("2025-06-04T12:00:00Z", "BTCUSDT").await;
    let at = sim.clock().now_ms();
    let at_text = klinebus_verify::datetime(Interval::M1.align(at));
    let (from, to) = klinebus_verify::window(Interval::M1, 1, Interval::M1.align(at));
    let plan = Plan::build(
        &["BTCUSDT".parse().unwrap()],
        &[Interval::M1],
        Window::Range {
            from_ms: from,
            to_ms: Some(to),
        },
        rest.server_time().await.unwrap(),
    );
    let opts = RunOptions {
        concurrency: 1,
        progress: ProgressMode::Quiet,
        resume: true,
        fetch: kline_backfill::Fetch::Rest,
        flow: None,
        patience: std::time::Duration::from_secs(60),
    };
    let s = run_backfill(&plan, &rest, &js, opts, &CancellationToken::new()).await;
    assert_eq!(s.published(), 1440, "{}", s.render());
    wait_for_rows(&db, 1440).await;
    let want = sim_rows(&sim, "BTCUSDT", from, to);
    assert_eq!(stored_rows(&db, "BTCUSDT", from, to).await, want);

    // Two stored candles go wrong (the counts stay right).
    let (a, b) = (from + 100 * MIN, from + 1_300 * MIN);
    sqlx::query(r#"UPDATE ohlcv_candles SET close = low WHERE "timestamp" = $1"#)
        .bind(a)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(r#"UPDATE ohlcv_candles SET trades = trades + 1 WHERE "timestamp" = $1"#)
        .bind(b)
        .execute(&db.pool)
        .await
        .unwrap();
    let sim_url = sim.base_url();
    let deep = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--symbols",
            "BTCUSDT",
            "--timeframes",
            "1m",
            "--days",
            "1",
            "--at",
            at_text.as_str(),
            "--deep",
            "--rest-url",
            sim_url.as_str(),
        ];
        args.extend_from_slice(extra);
        klinectl::run(cli(&db, &nats, &args))
    };
    let plain = klinectl::run(cli(
        &db,
        &nats,
        &[
            "verify",
            "--symbols",
            "BTCUSDT",
            "--timeframes",
            "1m",
            "--days",
            "1",
            "--at",
            at_text.as_str(),
        ],
    ))
    .await
    .unwrap();
    assert_eq!(plain.code, 0, "counts alone see nothing: {}", plain.output);

    let out = deep(&[]).await.unwrap();
    assert_eq!(out.code, 1, "{}", out.output);
    assert!(
        out.output
            .contains("Deep BTCUSDT 1m: 1440 candles compared, 2 differ"),
        "{}",
        out.output
    );
    assert!(
        out.output
            .contains(&format!("{}: close: ", klinebus_verify::datetime(a))),
        "{}",
        out.output
    );
    assert!(
        out.output
            .contains(&format!("{}: trades: ", klinebus_verify::datetime(b))),
        "{}",
        out.output
    );

    let out = deep(&["--repair", "--repair-wait", "30s"]).await.unwrap();
    assert_eq!(out.code, 0, "{}", out.output);
    assert!(
        out.output.contains("published 2 corrections"),
        "{}",
        out.output
    );
    assert!(
        out.output.contains("After repair: 0 candles differ"),
        "{}",
        out.output
    );
    assert_eq!(stored_rows(&db, "BTCUSDT", from, to).await, want);
    let again = deep(&["--sample", "3"]).await.unwrap();
    assert_eq!(again.code, 0, "{}", again.output);

    stop.cancel();
    sink.await.unwrap().unwrap();
}

/// An archive file published with wrong values (a real Binance incident) lands in the table;
/// once it is re-published corrected, `verify --deep --repair` finds every changed candle and
/// stores the exchange's version.
#[tokio::test]
async fn a_republished_archive_file_corrects_the_table() {
    use binance_sim::{ArchiveFault, ArchiveFaultKind, ArchiveFile};
    let Site {
        sim,
        nats,
        db,
        js,
        rest,
        stop,
        sink,
    } = site("2025-03-10T06:00:00Z", "BTCUSDT").await;
    let bad = ArchiveFile::try_from("BTCUSDT-1h-2025-02.zip".to_owned()).unwrap();
    sim.archive().add_fault(ArchiveFault {
        file: bad.clone(),
        kind: ArchiveFaultKind::WrongValues { rows: Some(5) },
    });
    let at = sim.clock().now_ms();
    let at_text = klinebus_verify::datetime(Interval::H1.align(at));
    let (from, to) = klinebus_verify::window(Interval::H1, 40, Interval::H1.align(at));
    let plan = Plan::build(
        &["BTCUSDT".parse().unwrap()],
        &[Interval::H1],
        Window::Range {
            from_ms: from,
            to_ms: Some(to),
        },
        rest.server_time().await.unwrap(),
    );
    let archive = kline_backfill::ArchiveSource::new(
        klinebus_binance::ArchiveClient::new(&sim.base_url(), Duration::from_secs(10)).unwrap(),
        2,
    );
    let opts = RunOptions {
        concurrency: 1,
        progress: ProgressMode::Quiet,
        resume: true,
        fetch: kline_backfill::Fetch::Auto(&archive),
        flow: None,
        patience: std::time::Duration::from_secs(60),
    };
    let s = run_backfill(&plan, &rest, &js, opts, &CancellationToken::new()).await;
    assert_eq!(s.errors(), 0, "{}", s.render());
    assert!(s.series[0].from_archive > 0);
    let n = s.published() as i64;
    wait_for_rows(&db, n).await;
    let want: Vec<String> = sim
        .market()
        .klines("BTCUSDT", "1h", from, to - 1, at)
        .unwrap()
        .into_iter()
        .filter(|k| k.closed)
        .map(|k| {
            format!(
                "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|t",
                k.open_time,
                k.open,
                k.high,
                k.low,
                k.close,
                k.volume,
                k.quote_volume,
                k.taker_buy_base,
                k.taker_buy_quote,
                k.trades,
                k.close_time
            )
        })
        .collect();
    let before = table(&db, "BTCUSDT", Interval::H1, from, to).await;
    let wrong = before.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(wrong, 5, "the faulty file's 5 changed candles are stored");

    // Binance re-publishes the file corrected.
    assert!(sim.archive().remove_fault(&bad));
    let sim_url = sim.base_url();
    let args = [
        "verify",
        "--symbols",
        "BTCUSDT",
        "--timeframes",
        "1h",
        "--days",
        "40",
        "--at",
        at_text.as_str(),
        "--deep",
        "--rest-url",
        sim_url.as_str(),
        "--repair",
        "--repair-wait",
        "30s",
    ];
    let out = klinectl::run(cli(&db, &nats, &args)).await.unwrap();
    assert_eq!(out.code, 0, "{}", out.output);
    assert!(out.output.contains("5 differ"), "{}", out.output);
    assert!(
        out.output.contains("published 5 corrections"),
        "{}",
        out.output
    );
    assert_eq!(table(&db, "BTCUSDT", Interval::H1, from, to).await, want);

    stop.cancel();
    sink.await.unwrap().unwrap();
}

#[test]
fn repair_flags() {
    let parse = |args: &[&str]| Cli::try_parse_from([&["klinectl", "verify"], args].concat());
    let c = parse(&["--repair"]).unwrap();
    let klinectl::cli::Cmd::Verify(v) = c.cmd else {
        panic!("not verify")
    };
    assert!(v.repair.enabled);
    assert_eq!(v.repair.repair_consumer, "pg-sink");
    assert_eq!(
        Duration::from(v.repair.repair_wait),
        Duration::from_secs(300)
    );
    assert_eq!(v.repair.weight_budget, klinebus_binance::DEFAULT_BUDGET);
    // The report is text then (it is printed twice, around the repair).
    assert!(parse(&["--repair", "--json"]).is_err());
}

const AUDIT_SYMBOLS: [&str; 2] = ["BTCUSDT", "ETHUSDT"];
const AUDIT_TFS: [Interval; 2] = [Interval::M1, Interval::H1];
/// 2025-06-04T12:00:00Z
const AUDIT_T0: i64 = 1_749_038_400_000;

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
    sim.market()
        .klines(symbol, tf.as_str(), from, to - 1, sim.clock().now_ms())
        .unwrap()
        .into_iter()
        .map(|k| {
            [
                k.open_time.to_string(),
                k.open.clone(),
                k.high.clone(),
                k.low.clone(),
                k.close.clone(),
                k.volume.clone(),
                k.quote_volume.clone(),
                k.taker_buy_base.clone(),
                k.taker_buy_quote.clone(),
                k.trades.to_string(),
                k.close_time.to_string(),
                (if k.closed { "t" } else { "f" }).to_owned(),
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
        &AUDIT_T0.to_string(),
        "--symbols",
        &AUDIT_SYMBOLS.join(","),
    ]))
    .await
    .unwrap();
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let js = bus_for(&nats).await;
    let stop = CancellationToken::new();
    let sink = start_sink(&nats, &db, &stop);

    // What a crashed live producer leaves: the last two days on `ws`, with every 7th candle
    // missing and every 11th stored as a half-formed update.
    let now = sim.clock().now_ms();
    let from = now - 2 * 86_400_000;
    let mut acks = Vec::new();
    let (mut stored, mut damaged) = (0usize, 0usize);
    for symbol in AUDIT_SYMBOLS {
        for tf in AUDIT_TFS {
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
    wait_for_rows(&db, stored as i64).await;

    let rest = sim.base_url();
    let cli = cli(
        &db,
        &nats,
        &[
            "audit",
            "--symbols",
            &AUDIT_SYMBOLS.join(","),
            "--timeframes",
            "1m,1h",
            "--window",
            "1d",
            "--rest-url",
            rest.as_str(),
            "--metrics-addr",
            "off",
        ],
    );
    let Cmd::Audit(args) = &cli.cmd else {
        panic!("not audit")
    };
    let pool = db.pool.clone();
    let symbols = klinebus_schemas::Symbol::parse_list(&AUDIT_SYMBOLS.join(",")).unwrap();
    let client = klinectl::audit::rest_client(args).unwrap();
    let run = klinectl::audit::audit_once(&pool, &js, &client, &symbols, &AUDIT_TFS, args, &stop)
        .await
        .unwrap();
    eprintln!("{}", run.line());
    assert!(run.missing > 0 && run.missing < damaged as u64, "{run:?}");
    assert_eq!(run.repaired, run.missing, "{run:?}");
    assert_eq!(run.unrepaired(), 0, "{run:?}");

    // The window the auditor checks (one day, less the grace) is now exactly the exchange's.
    let at = sim.clock().now_ms() - 120_000;
    let started = Instant::now();
    for symbol in AUDIT_SYMBOLS {
        for tf in AUDIT_TFS {
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
    let again = klinectl::audit::audit_once(&pool, &js, &client, &symbols, &AUDIT_TFS, args, &stop)
        .await
        .unwrap();
    assert_eq!(again.missing, 0, "{again:?}");
    // No klines were fetched the second time: one /time and one exchangeInfo.
    assert_eq!(again.rest_requests, 2, "{again:?}");
    stop.cancel();
    sink.await.unwrap().unwrap();
}
