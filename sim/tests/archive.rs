//! The kline archive (data.binance.vision's layout) over real HTTP: paths, 404s, CHECKSUMs,
//! rows against REST field by field, time units, publication lag, weight, every fault (at
//! start-up and at run time, and cleared), determinism, the cache and prewarming.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::time::Duration;

use binance_sim::SimHandle;
use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const M: &str = "/data/spot/monthly/klines";
const D: &str = "/data/spot/daily/klines";

fn monthly(sym: &str, iv: &str, period: &str) -> String {
    format!("{M}/{sym}/{iv}/{sym}-{iv}-{period}.zip")
}

fn daily(sym: &str, iv: &str, day: &str) -> String {
    format!("{D}/{sym}/{iv}/{sym}-{iv}-{day}.zip")
}

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

async fn fetch(sim: &SimHandle, path: &str) -> Got {
    let r = reqwest::get(format!("{}{path}", sim.base_url()))
        .await
        .unwrap();
    Got {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.bytes().await.unwrap().to_vec(),
    }
}

async fn status(sim: &SimHandle, path: &str) -> u16 {
    fetch(sim, path).await.status
}

async fn post_raw(sim: &SimHandle, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

async fn snapshot(sim: &SimHandle) -> Value {
    get(sim, "/_sim/faults").await.json()
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A served file: zip bytes, the CHECKSUM's hash (checked for its format and name).
struct File {
    zip: Vec<u8>,
    named_hash: String,
}

impl File {
    fn checksum_ok(&self) -> bool {
        sha256_hex(&self.zip) == self.named_hash
    }

    /// The one CSV entry: (its name, its text).
    fn csv(&self) -> (String, String) {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&self.zip)).unwrap();
        assert_eq!(z.len(), 1, "one entry per zip");
        let mut e = z.by_index(0).unwrap();
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        (e.name().unwrap().into_owned(), s)
    }

    fn rows(&self) -> Vec<Vec<String>> {
        csv_rows(&self.csv().1)
    }
}

/// Fetches a zip and its CHECKSUM (both must be 200).
async fn file(sim: &SimHandle, path: &str) -> File {
    let z = fetch(sim, path).await;
    assert_eq!(z.status, 200, "{path}");
    assert_eq!(z.headers["content-type"], "application/zip");
    let c = fetch(sim, &format!("{path}.CHECKSUM")).await;
    assert_eq!(c.status, 200, "{path}.CHECKSUM");
    let text = String::from_utf8(c.body).unwrap();
    // sha256sum's format: 64 lower-case hex, two spaces, the zip's name, a newline.
    let name = path.rsplit('/').next().unwrap();
    let (hash, rest) = text.split_at(64);
    assert!(
        hash.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{text}"
    );
    assert_eq!(rest, format!("  {name}\n"));
    File {
        zip: z.body,
        named_hash: hash.to_owned(),
    }
}

/// CSV text → rows of fields; no header row, `\n` line endings, twelve columns.
fn csv_rows(csv: &str) -> Vec<Vec<String>> {
    assert!(!csv.contains('\r'));
    if csv.is_empty() {
        return Vec::new();
    }
    assert!(csv.ends_with('\n'));
    csv.lines()
        .map(|l| {
            let f: Vec<String> = l.split(',').map(str::to_owned).collect();
            assert_eq!(f.len(), 12, "{l}");
            assert!(
                f[0].bytes().all(|b| b.is_ascii_digit()),
                "header or junk: {l}"
            );
            f
        })
        .collect()
}

/// REST rows of `[start, end)` (paged by 1000), each as twelve strings.
async fn rest_rows(sim: &SimHandle, sym: &str, iv: &str, start: i64, end: i64) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut from = start;
    loop {
        let r = get(
            sim,
            &format!(
                "/api/v3/klines?symbol={sym}&interval={iv}&startTime={from}&endTime={}&limit=1000",
                end - 1
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let page = r.json();
        let page = page.as_array().unwrap();
        for row in page {
            out.push(
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect(),
            );
        }
        if page.len() < 1000 {
            return out;
        }
        from = out.last().unwrap()[0].parse::<i64>().unwrap() + 1;
    }
}

/// Archive rows equal REST rows field by field, times converted from µs when `micros`.
fn assert_rows_equal(archive: &[Vec<String>], rest: &[Vec<String>], micros: bool) {
    assert_eq!(archive.len(), rest.len());
    for (a, r) in archive.iter().zip(rest) {
        let (open, close): (i64, i64) = (r[0].parse().unwrap(), r[6].parse().unwrap());
        if micros {
            assert_eq!(a[0], (open * 1000).to_string());
            assert_eq!(a[6], (close * 1000 + 999).to_string());
            assert!(a[6].ends_with("999999"));
        } else {
            assert_eq!(a[0], r[0]);
            assert_eq!(a[6], r[6]);
            assert_eq!(a[0].len(), 13);
        }
        for i in [1, 2, 3, 4, 5, 7, 8, 9, 10, 11] {
            assert_eq!(a[i], r[i], "field {i} of row {}", a[0]);
        }
        assert_eq!(a[11], "0");
    }
}

fn ms(rfc3339: &str) -> i64 {
    binance_sim::config::parse_time(rfc3339).unwrap()
}

#[tokio::test]
async fn paths_names_and_404s() {
    let sim = sim(&[]).await; // 2025-06-04T12:06:24Z

    let f = file(&sim, &monthly("BTCUSDT", "1d", "2024-06")).await;
    assert!(f.checksum_ok());
    let (name, csv) = f.csv();
    assert_eq!(name, "BTCUSDT-1d-2024-06.csv");
    assert!(
        csv.starts_with("1717200000000,"),
        "no header, first row first"
    );
    assert_eq!(csv_rows(&csv).len(), 30);

    // The month is `1mo` in the archive (the API's `1M`), and only monthly.
    let f = file(&sim, &monthly("BTCUSDT", "1mo", "2024-06")).await;
    assert_eq!(f.csv().0, "BTCUSDT-1mo-2024-06.csv");
    assert_eq!(f.rows().len(), 1);
    for iv in ["1w", "3d"] {
        assert_eq!(
            file(&sim, &monthly("ETHUSDT", iv, "2024-06"))
                .await
                .rows()
                .len(),
            if iv == "1w" { 4 } else { 10 }
        );
        assert_eq!(status(&sim, &daily("ETHUSDT", iv, "2024-06-03")).await, 404);
    }
    assert_eq!(
        file(&sim, &daily("ETHUSDT", "1s", "2025-06-01"))
            .await
            .rows()
            .len(),
        86_400
    );

    let not_found = [
        monthly("BTCUSDT", "1M", "2024-06"),
        daily("BTCUSDT", "1mo", "2024-06-01"),
        monthly("NOPEUSDT", "1d", "2024-06"),
        monthly("btcusdt", "1d", "2024-06"),
        monthly("BTCUSDT", "1d", "2024-13"),
        daily("BTCUSDT", "1d", "2025-02-29"),
        daily("BTCUSDT", "1d", "2024-06"),
        monthly("BTCUSDT", "1d", "2024-06-01"),
        format!("{M}/BTCUSDT/1d/ETHUSDT-1d-2024-06.zip"),
        format!("{M}/BTCUSDT/1h/BTCUSDT-1d-2024-06.zip"),
        format!("{M}/BTCUSDT/1d/BTCUSDT-1d-2024-06.csv"),
        format!("{M}/BTCUSDT/1d/BTCUSDT-1d-2024-06.zip.sha256"),
        format!("{M}/BTCUSDT/1d/"),
        "/data/futures/um/monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2024-06.zip".into(),
        // Before the listing (2017-08-17), the running month, the future.
        monthly("BTCUSDT", "1d", "2017-07"),
        monthly("BTCUSDT", "1d", "2025-06"),
        daily("BTCUSDT", "1m", "2025-06-04"),
        monthly("BTCUSDT", "1d", "2031-01"),
    ];
    for p in &not_found {
        let g = fetch(&sim, p).await;
        assert_eq!(g.status, 404, "{p}");
        assert!(
            String::from_utf8_lossy(&g.body).contains("<Code>NoSuchKey</Code>"),
            "{p}"
        );
        assert_eq!(
            status(&sim, &format!("{p}.CHECKSUM")).await,
            404,
            "{p}.CHECKSUM"
        );
    }

    // The listing month starts at the first candle.
    let rows = file(&sim, &monthly("BTCUSDT", "1h", "2017-08"))
        .await
        .rows();
    assert_eq!(rows[0][0], ms("2017-08-17T04:00:00Z").to_string());
    assert_eq!(rows.len(), 15 * 24 - 4);

    // A delisted symbol is gone here as in REST.
    post(
        &sim,
        "/_sim/symbols",
        json!({"action": "delist", "symbol": "LTCUSDT"}),
    )
    .await;
    assert_eq!(
        status(&sim, &monthly("LTCUSDT", "1d", "2024-06")).await,
        404
    );
}

#[tokio::test]
async fn rows_equal_rest_with_milliseconds_then_microseconds() {
    let sim = sim(&[]).await;
    for (sym, iv, period, micros) in [
        ("BTCUSDT", "1m", "2024-12-31", false),
        ("BTCUSDT", "1m", "2025-01-01", true),
        ("ETHUSDT", "1h", "2024-12", false),
        ("ETHUSDT", "1h", "2025-01", true),
        ("DOGEUSDT", "1d", "2024-12", false),
        ("DOGEUSDT", "1d", "2025-01", true),
        ("SOLUSDT", "15m", "2025-02-28", true),
        ("XRPUSDT", "1w", "2024-12", false),
        ("XRPUSDT", "1mo", "2025-01", true),
    ] {
        let path = if period.len() == 10 {
            daily(sym, iv, period)
        } else {
            monthly(sym, iv, period)
        };
        let f = file(&sim, &path).await;
        assert!(f.checksum_ok(), "{path}");
        let start = ms(&if period.len() == 10 {
            format!("{period}T00:00:00Z")
        } else {
            format!("{period}-01T00:00:00Z")
        });
        let end = if period.len() == 10 {
            start + 86_400_000
        } else {
            let (y, m): (i64, i64) = (period[..4].parse().unwrap(), period[5..].parse().unwrap());
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            ms(&format!("{y:04}-{m:02}-01T00:00:00Z"))
        };
        let api_iv = if iv == "1mo" { "1M" } else { iv };
        let rest = rest_rows(&sim, sym, api_iv, start, end).await;
        assert!(!rest.is_empty());
        assert_rows_equal(&f.rows(), &rest, micros);
    }
}

#[tokio::test]
async fn exchange_gaps_are_absent_rows_and_never_stale() {
    let sim = sim(&[
        "--gap",
        "BTCUSDT:2025-05-10T10:00:00Z..2025-05-10T11:00:00Z",
    ])
    .await;
    let p = daily("BTCUSDT", "1m", "2025-05-10");
    let day = ms("2025-05-10T00:00:00Z");
    let first = file(&sim, &p).await;
    assert_eq!(first.rows().len(), 1380);
    assert_rows_equal(
        &first.rows(),
        &rest_rows(&sim, "BTCUSDT", "1m", day, day + 86_400_000).await,
        true,
    );

    // The gap removed at run time: the file has every minute again, not the cached bytes.
    post(&sim, "/_sim/faults", json!({"clear_gaps": true})).await;
    let full = file(&sim, &p).await;
    assert_eq!(full.rows().len(), 1440);
    assert!(full.checksum_ok() && full.zip != first.zip);
    // A whole day without candles is a missing file, like an outage day on Binance.
    post(
        &sim,
        "/_sim/faults",
        json!({"add_gaps": [{"symbol": "BTCUSDT", "start_ms": day, "end_ms": day + 86_400_000}]}),
    )
    .await;
    assert_eq!(status(&sim, &p).await, 404);
    assert_eq!(
        file(&sim, &daily("ETHUSDT", "1m", "2025-05-10"))
            .await
            .rows()
            .len(),
        1440
    );
}

#[tokio::test]
async fn publication_lag_on_the_sim_clock() {
    // 08:29:30 on 2025-06-04 at 60×: day 06-03 appears at 08:30 (half a wall second away).
    let sim = binance_sim::spawn(config(&[
        "--start-time",
        "2025-06-04T08:29:30Z",
        "--speed",
        "60",
    ]))
    .await
    .unwrap();
    let p = daily("BTCUSDT", "1m", "2025-06-03");
    assert_eq!(status(&sim, &p).await, 404);
    assert_eq!(status(&sim, &format!("{p}.CHECKSUM")).await, 404);
    assert_eq!(
        status(&sim, &daily("BTCUSDT", "1m", "2025-06-02")).await,
        200
    );
    let published = ms("2025-06-04T08:30:00Z");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The clock runs on while a request is served: only an answer wholly before (after)
        // the instant must be 404 (200); one straddling it may be either.
        let before = sim.clock().now_ms();
        let answer = status(&sim, &p).await;
        let after = sim.clock().now_ms();
        if after < published {
            assert_eq!(answer, 404);
        } else if before >= published {
            assert_eq!(answer, 200);
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Monthly: May is out since 06-04 00:00 (1st + 3 days); a longer lag set at run time hides it.
    let may = monthly("BTCUSDT", "1h", "2025-05");
    assert_eq!(status(&sim, &may).await, 200);
    let snap = post(
        &sim,
        "/_sim/faults",
        json!({"archive_monthly_lag_ms": 4 * 86_400_000}),
    )
    .await;
    assert_eq!(snap["archive_monthly_lag_ms"], 4 * 86_400_000);
    assert_eq!(snap["archive_daily_lag_ms"], 8 * 3_600_000 + 1_800_000);
    assert_eq!(status(&sim, &may).await, 404);
    sim.archive().set_monthly_lag(Duration::ZERO);
    assert_eq!(status(&sim, &may).await, 200);
    sim.archive().set_daily_lag(Duration::from_secs(86_400));
    assert_eq!(status(&sim, &p).await, 404);

    // Flags: no daily lag, so yesterday is out from midnight on; a month is never out early.
    let sim = binance_sim::spawn(config(&[
        "--start-time",
        "2025-06-01T00:00:30Z",
        "--archive-daily-lag",
        "0s",
        "--archive-monthly-lag",
        "1h",
    ]))
    .await
    .unwrap();
    assert_eq!(
        status(&sim, &daily("BTCUSDT", "1m", "2025-05-31")).await,
        200
    );
    assert_eq!(
        status(&sim, &monthly("BTCUSDT", "1m", "2025-05")).await,
        404
    );
    // A week running past the month's end is published once it closed: April's last week
    // (from 04-28) closed on 05-05, May's (from 05-26) closes on 06-02 00:00.
    assert_eq!(
        status(&sim, &monthly("BTCUSDT", "1w", "2025-04")).await,
        200
    );
    sim.archive().set_monthly_lag(Duration::ZERO);
    assert_eq!(
        status(&sim, &monthly("BTCUSDT", "1h", "2025-05")).await,
        200
    );
    assert_eq!(
        status(&sim, &monthly("BTCUSDT", "1w", "2025-05")).await,
        404
    );
    sim.archive().set_monthly_lag(Duration::from_secs(3600));
    let snap = snapshot(&sim).await;
    assert_eq!(
        (
            snap["archive_daily_lag_ms"].as_i64(),
            snap["archive_monthly_lag_ms"].as_i64()
        ),
        (Some(0), Some(3_600_000))
    );
}

#[tokio::test]
async fn archive_requests_charge_no_weight_and_skip_rest_faults() {
    away_from_minute_boundary(15).await;
    let sim = sim(&["--weight-limit", "10"]).await;
    let used = |r: &Reply| {
        r.header("x-mbx-used-weight-1m")
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let before = used(&get(&sim, "/api/v3/ping").await);
    for d in 1..=20 {
        let g = fetch(&sim, &daily("BTCUSDT", "1h", &format!("2025-05-{d:02}"))).await;
        assert_eq!(g.status, 200);
        assert!(g.headers.get("x-mbx-used-weight-1m").is_none());
    }
    assert_eq!(
        status(&sim, &daily("BTCUSDT", "1h", "2031-05-01")).await,
        404
    );
    assert_eq!(
        used(&get(&sim, "/api/v3/ping").await),
        before + 1,
        "only the pings count"
    );

    // REST faults are the API's, not the static host's.
    sim.faults().fail_next_rest(1, 503);
    sim.faults().set_rest_delay_ms(2_000);
    let t = std::time::Instant::now();
    assert_eq!(
        status(&sim, &daily("BTCUSDT", "1h", "2025-05-21")).await,
        200
    );
    assert!(t.elapsed() < Duration::from_millis(1_500));
    assert_eq!(snapshot(&sim).await["rest_fail_remaining"], 1);
}

/// One file's expected REST rows (the 1h day 2025-05-10, 24 rows).
async fn truth(sim: &SimHandle) -> Vec<Vec<String>> {
    let day = ms("2025-05-10T00:00:00Z");
    rest_rows(sim, "BTCUSDT", "1h", day, day + 86_400_000).await
}

/// Checks each fault's effect on the 1h day of 2025-05-10 and the 1m month 2024-03.
async fn check_faulty(sim: &SimHandle) {
    let good = truth(sim).await;
    // missing
    let p = daily("BTCUSDT", "1h", "2025-05-10");
    assert_eq!(status(sim, &p).await, 404);
    assert_eq!(status(sim, &format!("{p}.CHECKSUM")).await, 404);
    // bad checksum: the zip is fine, the CHECKSUM names another hash.
    let f = file(sim, &daily("BTCUSDT", "1h", "2025-05-11")).await;
    assert!(!f.checksum_ok());
    assert_eq!(f.rows().len(), 24);
    // truncated zip, published with the checksum of its bytes
    let f = file(sim, &daily("BTCUSDT", "1h", "2025-05-12")).await;
    assert!(f.checksum_ok());
    assert_eq!(f.zip.len(), 300);
    assert!(
        zip::ZipArchive::new(std::io::Cursor::new(&f.zip)).is_err(),
        "a broken zip"
    );
    // missing rows (a valid zip with the day's first rows only)
    let f = file(sim, &daily("BTCUSDT", "1h", "2025-05-13")).await;
    assert!(f.checksum_ok());
    let day13 = ms("2025-05-13T00:00:00Z");
    let good13 = rest_rows(sim, "BTCUSDT", "1h", day13, day13 + 86_400_000).await;
    assert_rows_equal(&f.rows(), &good13[..10], true);
    // duplicate rows, each three times (the JUVUSDT 1d file)
    let f = file(sim, &monthly("BTCUSDT", "1d", "2024-03")).await;
    assert!(f.checksum_ok());
    let rows = f.rows();
    assert_eq!(rows.len(), 93);
    let mut once = rows.clone();
    once.dedup();
    let m = ms("2024-03-01T00:00:00Z");
    assert_rows_equal(
        &once,
        &rest_rows(sim, "BTCUSDT", "1d", m, ms("2024-04-01T00:00:00Z")).await,
        false,
    );
    // wrong values: two candles with another close, still consistent, checksum valid.
    let f = file(
        sim,
        &daily("BTCUSDT", "1h", "2025-05-10").replace("BTCUSDT", "ETHUSDT"),
    )
    .await;
    assert!(f.checksum_ok());
    let day = ms("2025-05-10T00:00:00Z");
    let eth = rest_rows(sim, "ETHUSDT", "1h", day, day + 86_400_000).await;
    let rows = f.rows();
    assert_eq!(rows.len(), eth.len());
    let differing: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i][4] != eth[i][4])
        .collect();
    assert_eq!(differing.len(), 2);
    for &i in &differing {
        let n = |s: &str| units(s);
        let (o, h, l, c) = (
            n(&rows[i][1]),
            n(&rows[i][2]),
            n(&rows[i][3]),
            n(&rows[i][4]),
        );
        assert!(l <= o.min(c) && o.max(c) <= h, "{:?}", rows[i]);
        assert_eq!(rows[i][1], eth[i][1]);
        assert_eq!((&rows[i][5], &rows[i][7..]), (&eth[i][5], &eth[i][7..]));
    }
    assert_eq!(good.len(), 24);
}

fn fault_list() -> Value {
    json!([
        {"file": "BTCUSDT-1h-2025-05-10.zip", "kind": "missing"},
        {"file": "data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2025-05-11.zip", "kind": "bad_checksum"},
        {"symbol": "BTCUSDT", "interval": "1h", "period": "2025-05-12", "kind": "truncated_zip", "keep_bytes": 300},
        {"file": "BTCUSDT-1h-2025-05-13.zip", "kind": "missing_rows", "keep_rows": 10},
        {"symbol": "BTCUSDT", "interval": "1d", "period": "2024-03", "kind": "duplicate_rows", "copies": 3},
        {"file": "ETHUSDT-1h-2025-05-10.zip", "kind": "wrong_values", "rows": 2},
    ])
}

/// Every file of [`fault_list`] served correct: equal to REST, checksum valid.
async fn check_correct(sim: &SimHandle) {
    for (sym, iv, period, n) in [
        ("BTCUSDT", "1h", "2025-05-10", 24),
        ("BTCUSDT", "1h", "2025-05-11", 24),
        ("BTCUSDT", "1h", "2025-05-12", 24),
        ("BTCUSDT", "1h", "2025-05-13", 24),
        ("ETHUSDT", "1h", "2025-05-10", 24),
    ] {
        let f = file(sim, &daily(sym, iv, period)).await;
        assert!(f.checksum_ok(), "{period}");
        let day = ms(&format!("{period}T00:00:00Z"));
        let rest = rest_rows(sim, sym, iv, day, day + 86_400_000).await;
        assert_eq!(rest.len(), n);
        assert_rows_equal(&f.rows(), &rest, true);
    }
    let f = file(sim, &monthly("BTCUSDT", "1d", "2024-03")).await;
    assert!(f.checksum_ok());
    assert_eq!(f.rows().len(), 31);
}

#[tokio::test]
async fn every_fault_at_run_time_then_cleared() {
    let sim = sim(&[]).await;
    check_correct(&sim).await; // fills the cache with the correct files first
    let wrong_path = daily("ETHUSDT", "1h", "2025-05-10");
    let before = file(&sim, &wrong_path).await;

    let snap = post(
        &sim,
        "/_sim/faults",
        json!({"add_archive_faults": fault_list()}),
    )
    .await;
    let shown = snap["archive_faults"].as_array().unwrap();
    assert_eq!(shown.len(), 6);
    let trunc = shown.iter().find(|f| f["kind"] == "truncated_zip").unwrap();
    assert_eq!(
        trunc["file"],
        "data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2025-05-12.zip"
    );
    assert_eq!(
        (
            trunc["symbol"].as_str(),
            trunc["interval"].as_str(),
            trunc["period"].as_str()
        ),
        (Some("BTCUSDT"), Some("1h"), Some("2025-05-12"))
    );
    assert_eq!(trunc["keep_bytes"], 300);
    check_faulty(&sim).await;
    let wrong = file(&sim, &wrong_path).await;

    // Re-publication: clearing one fault serves the correct file with its new checksum.
    let snap = post(
        &sim,
        "/_sim/faults",
        json!({"remove_archive_faults": ["ETHUSDT-1h-2025-05-10.zip", {"symbol": "BTCUSDT", "interval": "1h", "period": "2025-05-10"}]}),
    )
    .await;
    assert_eq!(snap["archive_faults"].as_array().unwrap().len(), 4);
    let fixed = file(&sim, &wrong_path).await;
    assert_eq!(fixed.zip, before.zip);
    assert_ne!(fixed.named_hash, wrong.named_hash);
    assert_eq!(
        status(&sim, &daily("BTCUSDT", "1h", "2025-05-10")).await,
        200
    );

    let snap = post(&sim, "/_sim/faults", json!({"clear_archive_faults": true})).await;
    assert_eq!(snap["archive_faults"], json!([]));
    check_correct(&sim).await;

    // Bad requests are refused, naming the problem.
    for bad in [
        json!({"add_archive_faults": [{"file": "BTCUSDT-1w-2025-05-10.zip", "kind": "missing"}]}),
        json!({"add_archive_faults": [{"file": "BTCUSDT-1h-2025-05-10.zip", "kind": "lost"}]}),
        json!({"add_archive_faults": [{"file": "BTCUSDT-1h-2025-05-10.zip", "kind": "missing", "rows": 2}]}),
        json!({"add_archive_faults": [{"symbol": "BTCUSDT", "kind": "missing"}]}),
    ] {
        let (st, _) = post_raw(&sim, "/_sim/faults", bad.clone()).await;
        assert!((400..500).contains(&st), "{bad}: {st}");
    }
}

#[tokio::test]
async fn every_fault_from_start_up_flags() {
    let flags = [
        "BTCUSDT-1h-2025-05-10.zip=missing",
        "data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2025-05-11.zip=bad_checksum",
        "BTCUSDT-1h-2025-05-12=truncated_zip:300",
        "BTCUSDT-1h-2025-05-13.zip=missing_rows:10",
        "BTCUSDT-1d-2024-03.zip=duplicate_rows:3",
        "ETHUSDT-1h-2025-05-10.zip=wrong_values:2",
    ];
    let mut args = Vec::new();
    for f in &flags {
        args.extend(["--archive-fault", f]);
    }
    let sim = sim(&args).await;
    let shown = snapshot(&sim).await["archive_faults"].clone();
    // Flags and JSON name the same faults.
    let mut expected: Vec<Value> = Vec::new();
    for f in fault_list().as_array().unwrap() {
        let one: binance_sim::ArchiveFault = serde_json::from_value(f.clone()).unwrap();
        expected.push(serde_json::to_value(one).unwrap());
    }
    let mut shown = shown.as_array().unwrap().clone();
    let key = |v: &Value| v["file"].as_str().unwrap().to_owned();
    shown.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(shown, expected);
    check_faulty(&sim).await;
    sim.faults().clear_archive_faults();
    check_correct(&sim).await;
    assert!(snapshot(&sim).await["archive_faults"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn same_seed_same_bytes_and_a_second_request_is_cached() {
    let (a, b, c) = (sim(&[]).await, sim(&[]).await, sim(&["--seed", "43"]).await);
    for p in [
        daily("BTCUSDT", "1m", "2025-05-10"),
        monthly("ETHUSDT", "1h", "2024-02"),
        monthly("SOLUSDT", "1mo", "2024-02"),
    ] {
        let (x, y, z) = (file(&a, &p).await, file(&b, &p).await, file(&c, &p).await);
        assert_eq!(x.zip, y.zip, "{p}");
        assert_eq!(x.named_hash, y.named_hash);
        assert_ne!(x.zip, z.zip);
    }
    let stats = |s: &SimHandle| s.archive().stats();
    let builds = stats(&a).builds;
    let hits = stats(&a).cache_hits;
    let again = file(&a, &daily("BTCUSDT", "1m", "2025-05-10")).await;
    assert_eq!(
        again.zip,
        file(&b, &daily("BTCUSDT", "1m", "2025-05-10")).await.zip
    );
    assert_eq!(stats(&a).builds, builds, "served from the cache");
    assert!(stats(&a).cache_hits >= hits + 2);
    let api = get(&a, "/_sim/archive").await.json();
    assert_eq!(api["builds"], builds);
    assert!(api["cache_bytes"].as_u64().unwrap() > 0);
    assert_eq!(api["cache_limit_bytes"], 1024u64 << 20);

    // No cache: every request builds, the bytes stay the same.
    let d = sim(&["--archive-cache-mb", "0"]).await;
    let p = daily("BTCUSDT", "1m", "2025-05-10");
    assert_eq!(file(&d, &p).await.zip, again.zip);
    assert_eq!(file(&d, &p).await.zip, again.zip);
    assert_eq!(d.archive().stats().cache_entries, 0);
}

#[tokio::test]
async fn prewarm_builds_ahead_so_requests_only_hit_the_cache() {
    let sim = sim(&[]).await;
    let req = json!({"symbols": ["BTCUSDT", "ETHUSDT"], "intervals": ["1h", "1mo"], "kind": "monthly", "from": "2024-01", "to": "2024-06"});
    let (st, rep) = post_raw(&sim, "/_sim/archive/prewarm", req.clone()).await;
    assert_eq!(st, 200, "{rep}");
    assert_eq!(
        (
            rep["files"].as_u64(),
            rep["built"].as_u64(),
            rep["cached"].as_u64()
        ),
        (Some(24), Some(24), Some(0))
    );
    assert_eq!(
        (rep["evicted"].as_u64(), rep["not_found"].as_u64()),
        (Some(0), Some(0))
    );
    let (_, rep) = post_raw(&sim, "/_sim/archive/prewarm", req).await;
    assert_eq!(
        (rep["built"].as_u64(), rep["cached"].as_u64()),
        (Some(0), Some(24))
    );

    let builds = sim.archive().stats().builds;
    for m in 1..=6 {
        let f = file(&sim, &monthly("ETHUSDT", "1h", &format!("2024-{m:02}"))).await;
        assert!(f.checksum_ok());
    }
    assert_eq!(sim.archive().stats().builds, builds);

    // Daily, the default symbols (all), a range reaching the unpublished present.
    let (st, rep) = post_raw(
        &sim,
        "/_sim/archive/prewarm",
        json!({"intervals": ["1h"], "kind": "daily", "from": "2025-06-01", "to": "2025-06-05"}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        (
            rep["files"].as_u64(),
            rep["built"].as_u64(),
            rep["unpublished"].as_u64()
        ),
        (Some(40), Some(24), Some(16))
    );

    for bad in [
        json!({"symbols": ["NOPE"], "from": "2024-01"}),
        json!({"intervals": ["1M"], "from": "2024-01"}),
        json!({"intervals": ["1w"], "kind": "daily", "from": "2024-01-01"}),
        json!({"from": "January"}),
    ] {
        assert_eq!(
            post_raw(&sim, "/_sim/archive/prewarm", bad.clone()).await.0,
            400,
            "{bad}"
        );
    }
}
