//! klinectl commands against a fresh database and a private nats-server.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use klinebus_schemas::Interval;
use klinebus_testkit::{NatsServer, TestDb};
use klinectl::cli::Cli;

const H: i64 = 3_600_000;

async fn insert(db: &TestDb, symbol: &str, tf: Interval, opens: &[i64]) {
    for &t in opens {
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

async fn status_row(db: &TestDb, symbol: &str, tf: &str, ago: &str, errors: i32) {
    sqlx::query(
        "INSERT INTO ingestion_status (symbol, timeframe, last_ingested_at, ingestion_mode, status, error_count, error_message)
         VALUES ($1, $2, now() - $3::interval, 'websocket', CASE WHEN $4 > 0 THEN 'error' ELSE 'active' END, $4,
                 CASE WHEN $4 > 0 THEN 'connection refused' END)",
    )
    .bind(symbol)
    .bind(tf)
    .bind(ago)
    .bind(errors)
    .execute(&db.pool)
    .await
    .unwrap();
}

fn cli(db: &TestDb, args: &[&str]) -> Cli {
    let mut v = vec!["klinectl", "--database-url", db.url.as_str()];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).unwrap()
}

#[tokio::test]
async fn verify_exit_codes_and_json() {
    let db = TestDb::fresh().await;
    let now = chrono::Utc::now().timestamp_millis();
    let end = Interval::H1.align(now);
    let opens: Vec<i64> = (1..=48).map(|i| end - i * H).collect();
    insert(&db, "BTCUSDT", Interval::H1, &opens).await;
    let ok = klinectl::run(cli(
        &db,
        &[
            "verify",
            "--symbols",
            "BTCUSDT",
            "--timeframes",
            "1h",
            "--days",
            "2",
            "--json",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(ok.code, 0, "{}", ok.output);
    let v: serde_json::Value = serde_json::from_str(&ok.output).unwrap();
    assert_eq!(v["overall_status"], "ok");
    let r = &v["results"]["BTCUSDT"]["1h"];
    assert_eq!(r["count"], r["expected"]);
    assert_eq!(r["count"], 48);
    assert!(v["results"]["BTCUSDT"]["1h"]["latest_datetime"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    let bad = klinectl::run(cli(
        &db,
        &[
            "verify",
            "--symbols",
            "BTCUSDT,ETHUSDT",
            "--timeframes",
            "1h",
            "--days",
            "2",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(bad.code, 1);
    assert!(bad.output.contains("missing"), "{}", bad.output);
    assert!(bad.output.contains("No data available"));
}

#[test]
fn bad_flags_and_symbols_are_clear_errors() {
    let bin = env!("CARGO_BIN_EXE_klinectl");
    let run = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .env_remove("TRADING_PAIRS")
            .output()
            .unwrap()
    };
    let o = run(&["verify", "--symbols", "BTC.USDT", "--timeframes", "1h"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("symbol \"BTC.USDT\" contains '.'"));
    let o = run(&["verify", "--symbols", "BTCUSDT", "--timeframes", "2m"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown interval \"2m\""));
    let o = run(&["prune", "--older-than", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&[
        "replay",
        "--consumer",
        "pg-sink",
        "--from",
        "yesterday",
        "--nats-url",
        "nats://127.0.0.1:1",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected all, seq:N or an RFC 3339 time"));
    // An unreachable database is an `error` verdict with exit 1, not a crash.
    let o = run(&[
        "verify",
        "--symbols",
        "BTCUSDT",
        "--timeframes",
        "1h",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/x",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"overall_status\": \"error\""));
}

#[tokio::test]
async fn alerts_fire_per_rule() {
    let db = TestDb::fresh().await;
    // Nothing at all: the "no data" rule fires.
    let out = klinectl::run(cli(&db, &["alerts"])).await.unwrap();
    assert_eq!(out.code, 1);
    assert_eq!(
        out.output,
        "ALERT no_recent_data: No symbol has data in the last 2h\n"
    );

    let now = chrono::Utc::now().timestamp_millis();
    let fresh_end = Interval::H1.align(now);
    insert(&db, "BTCUSDT", Interval::H1, &[fresh_end - H]).await;
    insert(&db, "ETHUSDT", Interval::H1, &[fresh_end - 10 * H]).await;
    status_row(&db, "BTCUSDT", "1h", "1 minute", 0).await;
    status_row(&db, "ETHUSDT", "1h", "1 minute", 5).await;
    let out = klinectl::run(cli(&db, &["alerts", "--json"]))
        .await
        .unwrap();
    assert_eq!(out.code, 1);
    let v: serde_json::Value = serde_json::from_str(&out.output).unwrap();
    let rules: Vec<(&str, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap(),
                a["symbol"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [("stale", "ETHUSDT"), ("ingestion_errors", "ETHUSDT")]
    );

    sqlx::query("UPDATE ingestion_status SET error_count = 0")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM ingestion_status WHERE symbol = 'ETHUSDT'")
        .execute(&db.pool)
        .await
        .unwrap();
    let out = klinectl::run(cli(&db, &["alerts"])).await.unwrap();
    assert_eq!((out.code, out.output.as_str()), (0, ""));
}

#[tokio::test]
async fn prune_removes_exactly_what_it_says() {
    prune_removes_exactly_what_it_says_on(TestDb::fresh().await).await;
}

#[tokio::test]
async fn prune_removes_exactly_what_it_says_from_an_unpartitioned_table() {
    // The schema before migration 0007: ohlcv_candles one plain table.
    prune_removes_exactly_what_it_says_on(TestDb::fresh_up_to(6).await).await;
}

async fn prune_removes_exactly_what_it_says_on(db: TestDb) {
    let now = chrono::Utc::now().timestamp_millis();
    let day = 86_400_000;
    let end = Interval::D1.align(now);
    let opens: Vec<i64> = (1..=40).map(|i| end - i * day).collect();
    insert(&db, "BTCUSDT", Interval::D1, &opens).await;
    insert(&db, "ETHUSDT", Interval::D1, &opens[..5]).await;
    let count = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ohlcv_candles")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // Opens at 00:00 of each of the last 40 days; the cutoff (now − 30 d) lies inside the day
    // that opened 30 days ago, so days 30..=40 back (11 candles) are older.
    let dry = klinectl::run(cli(&db, &["prune", "--older-than", "30days", "--dry-run"]))
        .await
        .unwrap();
    assert!(
        dry.output.contains("BTCUSDT 1d: would delete 11 candles"),
        "{}",
        dry.output
    );
    assert!(dry
        .output
        .contains("Total: would delete 11 candles in 2 series"));
    assert_eq!(count(&db).await, 45);
    let real = klinectl::run(cli(
        &db,
        &["prune", "--older-than", "30days", "--batch-size", "3"],
    ))
    .await
    .unwrap();
    assert!(
        real.output.contains("Total: deleted 11 candles"),
        "{}",
        real.output
    );
    assert_eq!(count(&db).await, 34);
    let oldest: i64 = sqlx::query_scalar(r#"SELECT min("timestamp") FROM ohlcv_candles"#)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(oldest >= now - 30 * day);
}

#[tokio::test]
async fn replay_resets_a_consumer_and_status_shows_lag() {
    use klinebus_schemas::bus;
    use klinebus_schemas::streams::{ConsumerSpec, Retention};
    let db = TestDb::fresh().await;
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    for i in 0..5 {
        js.publish("klines.ws.binance.BTCUSDT.1m", format!("{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let stream = js.get_stream("KLINES").await.unwrap();
    let spec = ConsumerSpec::klines("pg-sink", "klines.>".into());
    let consumer = stream
        .create_consumer(bus::consumer_config(&spec, Default::default()))
        .await
        .unwrap();
    let mut msgs = consumer
        .fetch()
        .max_messages(5)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    while let Some(m) = msgs.next().await {
        m.unwrap().double_ack().await.unwrap();
    }
    let nats_flags = ["--nats-url", nats.url().leak()];
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(&nats_flags);
    let st = klinectl::run(cli(&db, &args)).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&st.output).unwrap();
    assert_eq!(v["consumers"][0]["consumer"], "pg-sink");
    assert_eq!(v["consumers"][0]["pending"], 0);

    let mut args = vec!["replay", "--consumer", "pg-sink", "--from", "all"];
    args.extend_from_slice(&nats_flags);
    let out = klinectl::run(cli(&db, &args)).await.unwrap();
    assert!(
        out.output.contains("5 messages to re-deliver"),
        "{}",
        out.output
    );
    let mut args = vec!["replay", "--consumer", "pg-sink", "--from", "seq:4"];
    args.extend_from_slice(&nats_flags);
    let out = klinectl::run(cli(&db, &args)).await.unwrap();
    assert!(
        out.output.contains("2 messages to re-deliver"),
        "{}",
        out.output
    );
    let mut args = vec!["replay", "--consumer", "nope", "--from", "all"];
    args.extend_from_slice(&nats_flags);
    assert!(klinectl::run(cli(&db, &args)).await.is_err());
}

/// The streams are the operator's: `streams apply` sets them and says what changed; a service
/// starting with its built-in defaults afterwards changes nothing (it only creates what is
/// missing).
#[tokio::test]
async fn streams_apply_sets_the_streams_and_services_leave_them_alone() {
    use klinebus_schemas::bus;
    use klinebus_schemas::streams::Retention;
    let nats = NatsServer::start();
    let url = nats.url();
    let apply = |extra: &[&str]| {
        let mut args = vec!["klinectl", "--nats-url", url.as_str(), "streams", "apply"];
        args.extend_from_slice(extra);
        klinectl::run(Cli::try_parse_from(args).unwrap())
    };
    let operator = ["--klines-max-age", "40d", "--klines-max-bytes", "1GiB"];
    let out = apply(&operator).await.unwrap();
    assert_eq!(out.code, 0);
    assert!(out.output.contains("KLINES   created"), "{}", out.output);
    assert!(
        out.output.contains("max_bytes 1073741824"),
        "{}",
        out.output
    );

    // A service starts with the defaults (30 days, 8 GiB): the operator's settings stay.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    let mut klines = js.get_stream("KLINES").await.unwrap();
    let config = klines.info().await.unwrap().config.clone();
    assert_eq!(config.max_bytes, 1 << 30);
    assert_eq!(config.max_age, Duration::from_secs(40 * 86_400));

    let again = apply(&operator).await.unwrap();
    assert!(
        again.output.contains("KLINES   unchanged"),
        "{}",
        again.output
    );
    let bigger = apply(&["--klines-max-bytes", "2GiB"]).await.unwrap();
    assert!(
        bigger.output.contains("KLINES   updated"),
        "{}",
        bigger.output
    );
    assert!(
        bigger.output.contains("CANDLES  unchanged"),
        "{}",
        bigger.output
    );
    let mut klines = js.get_stream("KLINES").await.unwrap();
    assert_eq!(klines.info().await.unwrap().config.max_bytes, 2 << 30);

    assert!(klinectl::cli::parse_bytes("500MB") == Ok(500_000_000));
    assert!(klinectl::cli::parse_bytes("8 parsecs").is_err());
}

#[tokio::test]
async fn prune_drops_months_of_the_partitioned_table_whole() {
    let db = TestDb::fresh().await;
    let now = chrono::Utc::now().timestamp_millis();
    let day = 86_400_000;
    // 1m candles every 6 hours over the last 150 days, their months' partitions made as the
    // sink makes them; 1h candles (one table, no months) over the same time.
    let end = Interval::H1.align(now);
    let opens: Vec<i64> = (1..=600).map(|i| end - i * 6 * H).collect();
    sqlx::query("SELECT klinebus_ensure_candle_partitions('1m', $1, $2)")
        .bind(opens[opens.len() - 1])
        .bind(end)
        .execute(&db.pool)
        .await
        .unwrap();
    insert(&db, "BTCUSDT", Interval::M1, &opens).await;
    insert(&db, "BTCUSDT", Interval::H1, &opens[..300]).await;
    // And one old 1m candle of a month without partition (2021-03-01): the default partition.
    insert(&db, "ETHUSDT", Interval::M1, &[1_614_556_800_000]).await;
    let cutoff = now - 60 * day;
    let older = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                r#"SELECT count(*) FROM ohlcv_candles WHERE "timestamp" < $1"#,
            )
            .bind(cutoff)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let total = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ohlcv_candles")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let (old, all) = (older(&db).await, total(&db).await);
    assert!(old > 300, "{old}");
    // Lines "<verb> partition <name> (<n> candles)".
    let partitions = |out: &str, verb: &str| -> Vec<(String, i64)> {
        out.lines()
            .filter_map(|l| l.strip_prefix(&format!("{verb} partition ")))
            .map(|l| {
                let (name, n) = l.split_once(" (").unwrap();
                let n = n.strip_suffix(" candles)").unwrap().parse().unwrap();
                (name.to_owned(), n)
            })
            .collect()
    };

    let dry = klinectl::run(cli(&db, &["prune", "--older-than", "60days", "--dry-run"]))
        .await
        .unwrap();
    let would = partitions(&dry.output, "would drop");
    assert!(would.len() >= 2, "{}", dry.output);
    assert!(
        would
            .iter()
            .all(|(p, _)| p.starts_with("ohlcv_candles_1m_20")),
        "{}",
        dry.output
    );
    assert!(
        dry.output
            .contains(&format!("Total: would delete {old} candles in 3 series")),
        "{}",
        dry.output
    );
    assert!(
        dry.output.contains("ETHUSDT 1m: would delete 1 candles"),
        "{}",
        dry.output
    );
    assert_eq!(total(&db).await, all);

    let real = klinectl::run(cli(
        &db,
        &["prune", "--older-than", "60days", "--batch-size", "7"],
    ))
    .await
    .unwrap();
    let dropped = partitions(&real.output, "dropped");
    assert_eq!(dropped, would, "{}", real.output);
    for (p, _) in &dropped {
        let gone: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NULL")
            .bind(p)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(gone, "{p} still there");
    }
    let in_partitions: i64 = dropped.iter().map(|p| p.1).sum();
    // The rest of the old rows went row by row: the 1m month holding the cutoff, the 1h table,
    // the default partition.
    assert!(
        real.output.contains("BTCUSDT 1h: deleted "),
        "{}",
        real.output
    );
    assert!(
        real.output.contains("ETHUSDT 1m: deleted 1 candles"),
        "{}",
        real.output
    );
    assert!(
        real.output.contains(&format!(
            "Total: deleted {old} candles in 3 series ({in_partitions} of them in {} dropped partitions)",
            dropped.len()
        )),
        "{}",
        real.output
    );
    assert_eq!(older(&db).await, 0);
    assert_eq!(total(&db).await, all - old);
}
