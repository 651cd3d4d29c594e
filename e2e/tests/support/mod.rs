//! What several end-to-end tests share: the binaries as child processes, polling for a
//! condition, and the table compared with the simulator row for row. Each test file that uses
//! it says `mod support;` (not every file uses every item).
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use binance_sim::SimHandle;
use klinebus_schemas::Interval;
use sqlx::PgPool;

pub mod cluster;

/// A service binary built by this package (`e2e-<name>`, see Cargo.toml) run as a child
/// process; SIGKILLed on drop.
pub struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    /// Starts `path` (an `env!("CARGO_BIN_EXE_…")`) with `args`, warnings on stderr.
    pub fn start(name: &'static str, path: &str, args: &[&str]) -> Self {
        Self::start_with_env(name, path, args, &[])
    }

    /// [`start`](Self::start) with environment variables set.
    pub fn start_with_env(
        name: &'static str,
        path: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(path);
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .env_remove("LOG_FORMAT")
            // The ack wait is what takeover tests measure: a developer's shell must not set it.
            .env_remove("SINK_ACK_WAIT_SECS")
            // The failover tests time the pools' checks at their default.
            .env_remove("DATABASE_CHECK_INTERVAL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({path}): {e}"));
        Self { name, child }
    }

    /// `kline-pg-sink` on `nats_url` and `db_url`, flushing every 50 ms, plus `extra` flags.
    pub fn pg_sink(nats_url: &str, db_url: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--nats-url", nats_url, "--database-url", db_url];
        args.extend(["--metrics-addr", "off", "--flush-interval-ms", "50"]);
        args.extend_from_slice(extra);
        Self::start(
            "kline-pg-sink",
            env!("CARGO_BIN_EXE_e2e-kline-pg-sink"),
            &args,
        )
    }

    /// Whether it has not exited (yet).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL: no flush, no ack, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (within 20 s).
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        self.wait(Duration::from_secs(20)).await
    }

    /// Its exit status, once it exits (within `timeout`).
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {timeout:?}",
                self.name
            );
            sleep_ms(50).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `binance-sim` in this process, its clock starting at `start_ms`, with more flags.
pub async fn sim(start_ms: i64, args: &[&str]) -> SimHandle {
    let start = start_ms.to_string();
    let mut all = vec!["binance-sim", "--start-time", start.as_str()];
    all.extend_from_slice(args);
    binance_sim::spawn(<binance_sim::Config as clap::Parser>::parse_from(all))
        .await
        .unwrap()
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Polls `cond` every 100 ms until it holds; panics after `timeout` saying `what`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep_ms(100).await;
    }
}

/// [`wait_until`], and on timeout the panic also says what `explain` finds (the state of what
/// stalled).
pub async fn wait_until_or_explain<F, Fut, E, EFut>(
    what: &str,
    timeout: Duration,
    mut cond: F,
    explain: E,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
    E: FnOnce() -> EFut,
    EFut: Future<Output = String>,
{
    let started = Instant::now();
    let mut checks = 0;
    loop {
        let check = Instant::now();
        checks += 1;
        if cond().await {
            return;
        }
        if started.elapsed() >= timeout {
            panic!(
                "timed out waiting for {what} ({checks} checks, the last took {:?})\n{}",
                check.elapsed(),
                explain().await
            );
        }
        sleep_ms(100).await;
    }
}

/// Per series of `ohlcv_candles`: closed rows, all rows and the newest open time; or why they
/// cannot be read.
pub async fn table_state(pool: &PgPool) -> String {
    type Series = (String, String, i64, i64, Option<i64>);
    let rows: Result<Vec<Series>, _> = sqlx::query_as(
        r#"SELECT symbol, timeframe, count(*) FILTER (WHERE is_closed), count(*), max("timestamp")
           FROM ohlcv_candles GROUP BY 1, 2 ORDER BY 1, 2"#,
    )
    .fetch_all(pool)
    .await;
    let direct = format!(
        "leaves counted directly: {}",
        klinebus_testkit::leaf_counts(pool).await
    );
    let rows = match rows {
        Ok(rows) if rows.is_empty() => "ohlcv_candles: empty".into(),
        Ok(rows) => rows
            .iter()
            .map(|(s, tf, closed, all, newest)| {
                format!("ohlcv_candles {s} {tf}: {closed} closed of {all}, newest {newest:?}")
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("ohlcv_candles: cannot read: {e}"),
    };
    format!("{rows}\n{direct}")
}

/// Closed candles stored per series inside `[start, end)`; -1 while the database is away.
pub async fn closed_count(pool: &PgPool, symbol: &str, tf: Interval, start: i64, end: i64) -> i64 {
    sqlx::query_scalar(
        r#"SELECT count(*) FROM ohlcv_candles
           WHERE symbol = $1 AND timeframe = $2 AND is_closed
             AND "timestamp" >= $3 AND "timestamp" < $4"#,
    )
    .bind(symbol)
    .bind(tf.as_str())
    .bind(start)
    .bind(end)
    .fetch_one(pool)
    .await
    .unwrap_or(-1)
}

/// Open times of the closed 1m candles stored for `symbol`, from `from` on.
pub async fn closed(pool: &PgPool, symbol: &str, from: i64) -> Vec<i64> {
    sqlx::query_scalar(
        r#"SELECT "timestamp" FROM ohlcv_candles
           WHERE symbol = $1 AND timeframe = '1m' AND is_closed AND "timestamp" >= $2
           ORDER BY 1"#,
    )
    .bind(symbol)
    .bind(from)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// `(open time, action)` of every `signals` row of `symbol` 1m.
pub async fn signals(pool: &PgPool, symbol: &str) -> Vec<(i64, String)> {
    sqlx::query_as(
        r#"SELECT "timestamp", action FROM signals WHERE symbol = $1 AND timeframe = '1m'
           ORDER BY 1"#,
    )
    .bind(symbol)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// True once `durable` has acked everything `stream` holds.
pub async fn caught_up(js: &async_nats::jetstream::Context, stream: &str, durable: &str) -> bool {
    let Ok(mut stream) = js.get_stream(stream).await else {
        return false;
    };
    let Ok(info) = stream.info().await else {
        return false;
    };
    let last = info.state.last_sequence;
    let Ok(c) = stream.consumer_info(durable).await else {
        return false;
    };
    c.num_pending == 0 && c.num_ack_pending == 0 && c.ack_floor.stream_sequence >= last
}

/// Per symbol: `signals` holds exactly one row for every closed 1m candle stored from
/// `from[i]` on (none before it, none missing, none `insufficient_data`), and the SIGNALS
/// stream exactly one event per row. Returns the rows.
pub async fn assert_one_signal_per_candle(
    pool: &PgPool,
    js: &async_nats::jetstream::Context,
    symbols: &[&str],
    from: &[i64],
) -> usize {
    use futures::StreamExt as _;
    let stream = js
        .get_stream(klinebus_schemas::streams::SIGNALS_STREAM)
        .await
        .unwrap();
    let mut subjects = stream.info_with_subjects("signals.>").await.unwrap();
    let mut per_subject = Vec::new();
    while let Some(entry) = subjects.next().await {
        per_subject.push(entry.unwrap());
    }
    let mut total = 0;
    for (s, first) in symbols.iter().zip(from) {
        let rows = signals(pool, s).await;
        let at: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let want = closed(pool, s, *first).await;
        if at != want {
            // Which side lost them: the sink's announcements (CANDLES) or kline-signals.
            let mut announced = std::collections::BTreeMap::<i64, usize>::new();
            let subject = format!("candles.closed.binance.{s}.1m");
            let stream = klinebus_schemas::streams::CANDLES_STREAM;
            for p in klinebus_testkit::stored_payloads(js, stream, &subject).await {
                let msg: klinebus_schemas::closed::ClosedCandles =
                    klinebus_schemas::codec::decode(&p).unwrap();
                for c in msg.candles {
                    *announced.entry(c.open_time).or_default() += 1;
                }
            }
            let missing: Vec<_> = want
                .iter()
                .filter(|t| at.binary_search(t).is_err())
                .map(|t| (*t, announced.get(t).copied().unwrap_or(0)))
                .collect();
            panic!(
                "{s}: not exactly one signal per candle from {first} on: {} rows for {} candles; \
                 missing (open time, times announced in CANDLES): {missing:?}; rows {at:?}",
                at.len(),
                want.len()
            );
        }
        assert!(
            rows.iter().all(|r| r.1 != "insufficient_data"),
            "{s}: {rows:?}"
        );
        let subject = format!("signals.binance.{s}.1m");
        let events = per_subject
            .iter()
            .find(|(sub, _)| *sub == subject)
            .map_or(0, |(_, n)| *n);
        assert_eq!(events, rows.len(), "{subject}: one event per signal row");
        total += rows.len();
    }
    total
}

/// One stored candle, as text where the table holds NUMERIC.
pub type Row = (
    i64,
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
    bool,
);

/// Row for row, value for value: everything stored before `end` equals the simulator's closed
/// candles from the first stored one (which must be at or before `start`) up to `end`. A
/// forming row before `end` fails it too. Returns the rows compared.
pub async fn assert_table_equals_exchange(
    pool: &PgPool,
    sim: &SimHandle,
    symbol: &str,
    tf: Interval,
    start: i64,
    end: i64,
) -> usize {
    let rows: Vec<Row> = sqlx::query_as(
        r#"SELECT "timestamp", close_time, open::text, high::text, low::text, close::text,
                  volume::text, quote_volume::text, trades, taker_buy_base::text,
                  taker_buy_quote::text, is_closed
           FROM ohlcv_candles WHERE symbol = $1 AND timeframe = $2 AND "timestamp" < $3
           ORDER BY 1"#,
    )
    .bind(symbol)
    .bind(tf.as_str())
    .bind(end)
    .fetch_all(pool)
    .await
    .unwrap();
    let first = rows.first().map(|r| r.0).unwrap_or(i64::MAX);
    assert!(
        first <= start,
        "{symbol} {tf}: the first stored candle {first} is after the window's start {start}"
    );
    let want: Vec<Row> = sim
        .market()
        .klines(symbol, tf.as_str(), first, end - 1, sim.clock().now_ms())
        .unwrap()
        .into_iter()
        .map(|k| {
            (
                k.open_time,
                k.close_time,
                k.open,
                k.high,
                k.low,
                k.close,
                k.volume,
                k.quote_volume,
                k.trades as i64,
                k.taker_buy_base,
                k.taker_buy_quote,
                k.closed,
            )
        })
        .collect();
    let got_opens: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let want_opens: Vec<i64> = want.iter().map(|r| r.0).collect();
    let missing: Vec<_> = want_opens
        .iter()
        .filter(|t| got_opens.binary_search(t).is_err())
        .collect();
    let extra: Vec<_> = got_opens
        .iter()
        .filter(|t| want_opens.binary_search(t).is_err())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{symbol} {tf}: {} candles missing {missing:?}, {} not on the exchange {extra:?}",
        missing.len(),
        extra.len()
    );
    assert_eq!(rows.len(), want.len(), "{symbol} {tf}: row count");
    for (got, want) in rows.iter().zip(&want) {
        assert!(
            want.11,
            "{symbol} {tf}: the exchange's candle {} is not closed",
            want.0
        );
        assert_eq!(
            got, want,
            "{symbol} {tf}: stored candle differs from the exchange's"
        );
    }
    rows.len()
}

/// The repository's root.
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A file of the repository as text; panics naming it.
pub fn read(path: &std::path::Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

/// Metric names the code registers (`counter!`/`gauge!`/`histogram!` in any crate's `src/`),
/// with their kind: what compose's dashboards and alert rules may use.
pub fn registered_metrics() -> std::collections::BTreeMap<String, String> {
    let re =
        regex::Regex::new(r#"(counter|gauge|histogram)!\(\s*"(klinebus_[a-z0-9_]+)""#).unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![repo()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !["target", ".git", "tests", "compose", "e2e"].contains(&name.as_str()) {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") && p.components().any(|c| c.as_os_str() == "src") {
                for c in re.captures_iter(&read(&p)) {
                    out.insert(c[2].to_owned(), c[1].to_owned());
                }
            }
        }
    }
    out
}
