//! No secret in any output: every binary runs with canary secrets (a NATS token in the URL, a
//! NATS password, a PostgreSQL password in the URL and as a `password=` parameter) against
//! services that are not there, logging at debug level, and its `--help` is printed with the
//! same environment; nothing it prints may contain the canary.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CANARY: &str = "Canary5ecretXyz";

/// The environment every binary gets: secrets everywhere, nothing reachable (port 1).
fn env() -> Vec<(&'static str, String)> {
    vec![
        ("NATS_URL", format!("nats://{CANARY}@127.0.0.1:1")),
        ("NATS_USER", "klinebus".into()),
        ("NATS_PASSWORD", CANARY.into()),
        (
            "DATABASE_URL",
            format!("postgres://klinebus:{CANARY}@127.0.0.1:1/klinebus?sslmode=disable&password={CANARY}"),
        ),
        ("BINANCE_REST_URL", "http://127.0.0.1:1".into()),
        ("BINANCE_WS_URL", "ws://127.0.0.1:1".into()),
        ("BINANCE_ARCHIVE_URL", "http://127.0.0.1:1".into()),
        ("TRADING_PAIRS", "BTCUSDT".into()),
        ("TIMEFRAMES", "1m".into()),
        ("METRICS_ADDR", "off".into()),
        ("BACKFILL_PATIENCE", "2s".into()),
        ("RUST_LOG", "debug".into()),
        ("NO_COLOR", "1".into()),
    ]
}

/// Runs `path` with `args` for at most `secs` (then SIGTERM, then SIGKILL); all it printed.
fn output_of(path: &str, args: &[&str], secs: u64) -> String {
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env_remove("LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_secs(2));
        let _ = child.kill();
    }
    let _ = child.wait();
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

fn assert_clean(name: &str, text: &str) {
    assert!(
        !text.is_empty(),
        "{name} printed nothing: the test would prove nothing"
    );
    assert!(
        !text.contains(CANARY),
        "{name} printed a secret:\n{}",
        text.lines()
            .filter(|l| l.contains(CANARY))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn no_binary_prints_a_secret_in_its_logs_errors_or_help() {
    let bins = [
        ("kline-pg-sink", env!("CARGO_BIN_EXE_e2e-kline-pg-sink")),
        ("kline-live", env!("CARGO_BIN_EXE_e2e-kline-live")),
        ("kline-signals", env!("CARGO_BIN_EXE_e2e-kline-signals")),
        ("kline-backfill", env!("CARGO_BIN_EXE_e2e-kline-backfill")),
    ];
    for (name, path) in bins {
        let help = output_of(path, &["--help"], 10);
        assert!(help.contains("Usage"), "{name} --help: {help}");
        assert_clean(&format!("{name} --help"), &help);
        // Long enough for start-up, the first failed connections and their retries.
        let run = output_of(path, &[], 5);
        assert!(
            run.contains("127.0.0.1:1") || run.to_lowercase().contains("nats"),
            "{name} did not try to reach anything: {run}"
        );
        assert_clean(name, &run);
    }
}

#[tokio::test]
async fn klinectl_prints_no_secret_either() {
    use clap::Parser;
    let e = env();
    let get = |k: &str| e.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    let (db, nats) = (get("DATABASE_URL"), get("NATS_URL"));
    for args in [
        vec!["status"],
        vec!["verify", "--symbols", "BTCUSDT", "--timeframes", "1m"],
        vec!["replay", "--consumer", "pg-sink", "--from", "all"],
    ] {
        let mut argv = vec!["klinectl", "--database-url", &db, "--nats-url", &nats];
        argv.extend(args.iter().copied());
        let cli = klinectl::cli::Cli::try_parse_from(&argv).unwrap();
        let debug = format!("{cli:?}");
        assert_clean("klinectl's parsed flags (Debug)", &debug);
        let text = match tokio::time::timeout(Duration::from_secs(30), klinectl::run(cli)).await {
            Ok(Ok(out)) => out.output,
            Ok(Err(e)) => klinebus_svc::error_line(&e),
            Err(_) => panic!("klinectl {args:?} hung against unreachable services"),
        };
        assert_clean(&format!("klinectl {args:?}"), &text);
    }
}
