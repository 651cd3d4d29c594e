//! The auditor's per-series metrics against a real database: the newest closed candle's close
//! time, the freshness limit, the last ingestion, consecutive errors and halts, read by
//! `klinectl::freshness` and served on the `klinectl audit` daemon's /metrics.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use clap::Parser;
use klinebus_schemas::bus;
use klinebus_schemas::streams::Retention;
use klinebus_schemas::{Interval, Symbol};
use klinebus_testkit::{NatsServer, TestDb};
use klinectl::cli::Cli;
use klinectl::freshness::{self, SeriesHealth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const M: i64 = 60_000;
const H: i64 = 3_600_000;

async fn insert(db: &TestDb, symbol: &str, tf: Interval, open: i64, closed: bool) {
    sqlx::query(
        r#"INSERT INTO ohlcv_candles (symbol, timeframe, "timestamp", open, high, low, close,
             volume, quote_volume, taker_buy_base, taker_buy_quote, trades, close_time,
             is_closed, event_time, source)
           VALUES ($1, $2, $3, 1, 2, 1, 1.5, 10, 15, 5, 7.5, 3, $4, $5, $3 + 1, 'ws')"#,
    )
    .bind(symbol)
    .bind(tf.as_str())
    .bind(open)
    .bind(tf.close_time(open))
    .bind(closed)
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn status_row(db: &TestDb, symbol: &str, tf: &str, ago_ms: i64, errors: i32) {
    sqlx::query(
        "INSERT INTO ingestion_status (symbol, timeframe, last_ingested_at, ingestion_mode, status, error_count)
         VALUES ($1, $2, now() - make_interval(secs => $3::double precision / 1000), 'websocket',
                 CASE WHEN $4 > 0 THEN 'error' ELSE 'active' END, $4)",
    )
    .bind(symbol)
    .bind(tf)
    .bind(ago_ms)
    .bind(errors)
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn exchange_status(db: &TestDb, symbol: &str, status: &str) {
    sqlx::query(
        "INSERT INTO symbol_status (symbol, status, observed_at, since) VALUES ($1, $2, 0, 0)",
    )
    .bind(symbol)
    .bind(status)
    .execute(&db.pool)
    .await
    .unwrap();
}

/// The value of the series `name` with exactly these labels in the Prometheus text.
fn gauge(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    text.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        let mut got: Vec<String> = rest
            .strip_suffix('}')?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        got.sort();
        (n == name && got == want).then(|| value.parse().unwrap())
    })
}

fn series_gauge(text: &str, metric: &str, symbol: &str, tf: &str) -> Option<f64> {
    let name = format!("klinebus_audit_series_{metric}");
    gauge(text, &name, &[("symbol", symbol), ("interval", tf)])
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test]
async fn series_health_is_read_from_the_database_and_exported() {
    let db = TestDb::fresh().await;
    let now = now_ms();
    // BTCUSDT 1m: fresh, and its forming candle is not the newest closed one.
    let m_open = Interval::M1.align(now) - 2 * M;
    insert(&db, "BTCUSDT", Interval::M1, m_open - M, true).await;
    insert(&db, "BTCUSDT", Interval::M1, m_open, true).await;
    insert(&db, "BTCUSDT", Interval::M1, m_open + M, false).await;
    status_row(&db, "BTCUSDT", "1m", 60_000, 0).await;
    exchange_status(&db, "BTCUSDT", "TRADING").await;
    // ETHUSDT 1h: ten hours old, failing, and halted on the exchange.
    let h_open = Interval::H1.align(now) - 10 * H;
    insert(&db, "ETHUSDT", Interval::H1, h_open, true).await;
    status_row(&db, "ETHUSDT", "1h", 3 * H, 5).await;
    exchange_status(&db, "ETHUSDT", "BREAK").await;
    // A series nobody configured: not exported.
    insert(&db, "XRPUSDT", Interval::M1, m_open, true).await;
    status_row(&db, "XRPUSDT", "1m", 0, 9).await;

    let symbols = Symbol::parse_list("BTCUSDT,ETHUSDT,SOLUSDT").unwrap();
    let intervals = [Interval::M1, Interval::H1];
    let handle = klinebus_svc::metrics_recorder().unwrap();
    let series = freshness::refresh(&db.pool, &symbols, &intervals)
        .await
        .unwrap();
    assert_eq!(series.len(), 6);
    let of = |sym: &str, iv: Interval| -> &SeriesHealth {
        series
            .iter()
            .find(|s| s.symbol.as_str() == sym && s.interval == iv)
            .unwrap()
    };
    let btc = of("BTCUSDT", Interval::M1);
    assert_eq!(btc.newest_close_ms, Some(Interval::M1.close_time(m_open)));
    let ingested = btc.last_ingested_ms.unwrap();
    assert!(
        (ingested - (now - 60_000)).abs() < 5_000,
        "{ingested} vs {now}"
    );
    assert_eq!((btc.consecutive_errors, btc.halted), (0, false));
    let eth = of("ETHUSDT", Interval::H1);
    assert_eq!(eth.newest_close_ms, Some(Interval::H1.close_time(h_open)));
    assert_eq!((eth.consecutive_errors, eth.halted), (5, true));
    assert_eq!(eth.freshness_limit(), Duration::from_secs(2 * 3600));
    // Nothing stored, no status: nothing known, not halted.
    for s in [of("SOLUSDT", Interval::M1), of("BTCUSDT", Interval::H1)] {
        assert_eq!(
            (s.newest_close_ms, s.last_ingested_ms),
            (None, None),
            "{s:?}"
        );
        assert_eq!((s.consecutive_errors, s.halted), (0, false), "{s:?}");
    }

    let text = handle.render();
    let g = |metric: &str, sym: &str, tf: &str| series_gauge(&text, metric, sym, tf);
    let close_s = Interval::M1.close_time(m_open) as f64 / 1000.0;
    assert_eq!(
        g("newest_close_timestamp_seconds", "BTCUSDT", "1m"),
        Some(close_s)
    );
    assert_eq!(g("freshness_limit_seconds", "BTCUSDT", "1m"), Some(360.0));
    assert_eq!(g("freshness_limit_seconds", "ETHUSDT", "1h"), Some(7200.0));
    assert_eq!(g("freshness_limit_seconds", "SOLUSDT", "1h"), Some(7200.0));
    let at = g("last_ingested_timestamp_seconds", "BTCUSDT", "1m").unwrap();
    assert!((at - ingested as f64 / 1000.0).abs() < 0.001, "{at}");
    assert_eq!(g("consecutive_errors", "ETHUSDT", "1h"), Some(5.0));
    assert_eq!(g("consecutive_errors", "BTCUSDT", "1m"), Some(0.0));
    assert_eq!(g("halted", "ETHUSDT", "1h"), Some(1.0));
    assert_eq!(g("halted", "BTCUSDT", "1m"), Some(0.0));
    // Never stored: 0, which an age rule (`time() - …`) sees as very old.
    assert_eq!(
        g("newest_close_timestamp_seconds", "SOLUSDT", "1m"),
        Some(0.0)
    );
    assert_eq!(
        g("last_ingested_timestamp_seconds", "SOLUSDT", "1m"),
        Some(0.0)
    );
    assert!(!text.contains("XRPUSDT"), "{text}");
    // Only symbol and interval label them.
    for l in text
        .lines()
        .filter(|l| l.starts_with("klinebus_audit_series_") && l.contains('{'))
    {
        let labels = &l[l.find('{').unwrap()..l.find('}').unwrap()];
        assert_eq!(labels.matches('=').count(), 2, "{l}");
    }
    let refreshed = gauge(
        &text,
        "klinebus_audit_series_refreshed_timestamp_seconds",
        &[],
    )
    .unwrap();
    assert!(
        (refreshed - now as f64 / 1000.0).abs() < 30.0,
        "{refreshed}"
    );
}

/// GET `path` from `port` on 127.0.0.1 (HTTP/1.0: the server closes after the answer).
async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    Some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_daemon_serves_them_on_metrics_and_refreshes_them() {
    let sim = binance_sim::spawn(binance_sim::Config::parse_from([
        "binance-sim",
        "--symbols",
        "BTCUSDT",
    ]))
    .await
    .unwrap();
    let mut nats = NatsServer::start();
    // The streams the repairs publish to (the operator's, `klinectl streams apply`).
    let client = async_nats::connect(nats.url()).await.unwrap();
    bus::ensure_streams(&bus::jetstream(client, 100), &Retention::default())
        .await
        .unwrap();
    // The daemon starts before NATS is back up, and waits for it.
    nats.stop();
    let db = TestDb::fresh().await;
    let now = now_ms();
    let open = Interval::H1.align(now) - 3 * H;
    insert(&db, "BTCUSDT", Interval::H1, open, true).await;
    status_row(&db, "BTCUSDT", "1h", 0, 2).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (rest, url, addr) = (sim.base_url(), nats.url(), format!("127.0.0.1:{port}"));
    let cli = Cli::try_parse_from([
        "klinectl",
        "--database-url",
        db.url.as_str(),
        "--nats-url",
        url.as_str(),
        "audit",
        "--symbols",
        "BTCUSDT",
        "--timeframes",
        "1h",
        "--every",
        "1s",
        "--rest-url",
        rest.as_str(),
        "--metrics-addr",
        addr.as_str(),
    ])
    .unwrap();
    // The daemon runs until the checks are done (it stops on SIGTERM only).
    let checks = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let health = http_get(port, "/health").await.unwrap_or_default();
        assert!(
            health.contains(" 503 "),
            "ready before NATS is up:\n{health}"
        );
        nats.start_again();
        let scrape = |want: f64| async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let text = http_get(port, "/metrics").await.unwrap_or_default();
                if series_gauge(&text, "consecutive_errors", "BTCUSDT", "1h") == Some(want) {
                    return text;
                }
                assert!(Instant::now() < deadline, "no errors = {want} in:\n{text}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let text = scrape(2.0).await;
        assert_eq!(
            series_gauge(&text, "newest_close_timestamp_seconds", "BTCUSDT", "1h"),
            Some(Interval::H1.close_time(open) as f64 / 1000.0)
        );
        assert_eq!(
            series_gauge(&text, "freshness_limit_seconds", "BTCUSDT", "1h"),
            Some(7200.0)
        );
        // Not halted: the simulator lists BTCUSDT as trading, and the audit records that.
        assert_eq!(series_gauge(&text, "halted", "BTCUSDT", "1h"), Some(0.0));
        // The next run reads the table again.
        sqlx::query("UPDATE ingestion_status SET error_count = 7")
            .execute(&db.pool)
            .await
            .unwrap();
        scrape(7.0).await;
    };
    tokio::select! {
        r = klinectl::run(cli) => panic!("the auditor stopped: {r:?}"),
        () = checks => {}
    }
}
