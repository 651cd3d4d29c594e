//! `--source auto|archive` against the simulator's archive (same port and paths as Binance's
//! data.binance.vision) and a private nats-server: files where published, REST for the tail and
//! for whatever a file lacks, every fault ending with exactly the exchange's candles.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use binance_sim::{ArchiveFault, ArchiveFaultKind};
use common::*;
use kline_backfill::{
    run_backfill, ArchiveSource, Fetch, Plan, ProgressMode, RunOptions, Status, Summary, Window,
};
use klinebus_binance::ArchiveClient;
use klinebus_schemas::Interval;
use tokio_util::sync::CancellationToken;

/// The sim's clock starts here: months up to February 2025 are published (monthly lag 3 days),
/// daily files up to 8 March (daily lag 8 h 30), REST has the rest.
const NOW: &str = "2025-03-10T06:00:00Z";
const HOUR: i64 = 60 * MIN;

async fn archive_env(extra: &[&str]) -> Env {
    let mut args = vec!["--start-time", NOW];
    args.extend_from_slice(extra);
    env(&args).await
}

fn source(e: &Env) -> ArchiveSource {
    ArchiveSource::new(
        ArchiveClient::new(&e.sim.base_url(), Duration::from_secs(10)).unwrap(),
        4,
    )
}

async fn plan_from(e: &Env, symbols: &str, intervals: &[Interval], from: &str) -> Plan {
    let now = e.rest.server_time().await.unwrap();
    let window = Window::Range {
        from_ms: kline_backfill::config::parse_time(from).unwrap(),
        to_ms: None,
    };
    Plan::build(&syms(symbols), intervals, window, now)
}

async fn run(e: &Env, plan: &Plan, fetch: Fetch<'_>) -> Summary {
    let opts = RunOptions {
        concurrency: 4,
        progress: ProgressMode::Quiet,
        resume: true,
        fetch,
        flow: None,
        patience: std::time::Duration::from_secs(60),
    };
    run_backfill(plan, &e.rest, &e.js, opts, &CancellationToken::new()).await
}

fn fault(file: &str, kind: ArchiveFaultKind) -> ArchiveFault {
    ArchiveFault {
        file: binance_sim::ArchiveFile::try_from(file.to_owned()).unwrap(),
        kind,
    }
}

fn faults(s: &Summary) -> Vec<(String, &'static str, u64)> {
    s.series
        .iter()
        .flat_map(|r| &r.archive_faults)
        .map(|f| (f.file.clone(), f.fault, f.rest_candles))
        .collect()
}

#[tokio::test]
async fn a_multi_month_auto_run_stores_exactly_the_exchange_with_a_rest_tail() {
    let e = archive_env(&[]).await;
    let a = source(&e);
    // December 2024 files are in milliseconds, 2025 files in microseconds: both in one run.
    let plan = plan_from(
        &e,
        "BTCUSDT,ETHUSDT",
        &[Interval::M15, Interval::H1],
        "2024-12-20",
    )
    .await;
    let s = run(&e, &plan, Fetch::Auto(&a)).await;
    assert_complete(&s);
    assert_exact(&e, &plan).await;
    assert!(faults(&s).is_empty(), "{:?}", faults(&s));
    for r in &s.series {
        // Monthly Dec, Jan, Feb; daily 1-8 March; 9 March is not published yet at 06:00.
        assert_eq!(r.archive_files, 11, "{r:?}");
        let per_hour = HOUR / r.interval.fixed_ms().unwrap();
        assert_eq!(r.from_rest as i64, 30 * per_hour, "{r:?}");
        assert_eq!(r.from_archive + r.from_rest, r.expected, "{r:?}");
    }
    let text = s.render();
    assert!(text.contains("Sources: archive"), "{text}");

    // A re-run finds everything in the stream (pages included) and fetches nothing.
    let again = run(&e, &plan, Fetch::Auto(&a)).await;
    assert_complete(&again);
    assert_eq!(again.published(), 0);
    assert_eq!(again.rest_requests, 0);
    assert!(again
        .series
        .iter()
        .all(|r| r.archive_files == 0 && r.present == r.expected));
}

#[tokio::test]
async fn every_archive_fault_ends_exact_and_is_named() {
    let e = archive_env(&[
        "--archive-fault",
        "BTCUSDT-1h-2024-12.zip=bad_checksum",
        "--archive-fault",
        "BTCUSDT-1h-2025-01.zip=missing",
        "--archive-fault",
        "BTCUSDT-1h-2025-02.zip=truncated_zip",
    ])
    .await;
    // And two set while the simulator runs.
    for (file, kind) in [
        (
            "BTCUSDT-1h-2025-03-02.zip",
            ArchiveFaultKind::MissingRows {
                keep_rows: Some(10),
            },
        ),
        (
            "BTCUSDT-1h-2025-03-03.zip",
            ArchiveFaultKind::DuplicateRows {
                copies: None,
                rows: None,
            },
        ),
    ] {
        e.sim.archive().add_fault(fault(file, kind));
    }
    let a = source(&e);
    let plan = plan_from(&e, "BTCUSDT", &[Interval::H1], "2024-12-20").await;
    let s = run(&e, &plan, Fetch::Auto(&a)).await;
    assert_complete(&s);
    assert_exact(&e, &plan).await;
    let got = faults(&s);
    let want = [
        ("BTCUSDT-1h-2024-12.zip", "checksum", 12 * 24),
        ("BTCUSDT-1h-2025-01.zip", "missing", 31 * 24),
        ("BTCUSDT-1h-2025-02.zip", "corrupt", 28 * 24),
        ("BTCUSDT-1h-2025-03-02.zip", "holes", 14),
        ("BTCUSDT-1h-2025-03-03.zip", "duplicates", 0),
    ];
    assert_eq!(
        got,
        want.map(|(f, k, n)| (f.to_owned(), k, n)),
        "{}",
        s.render()
    );
    let text = s.render();
    assert!(
        text.contains("Archive fault BTCUSDT 1h: BTCUSDT-1h-2024-12.zip checksum"),
        "{text}"
    );
}

/// A monthly file not published yet (early in the next month) is replaced by its daily files;
/// one missing long after its month is a fault.
#[tokio::test]
async fn archive_only_fetches_no_rest_and_fails_on_what_the_archive_lacks() {
    let e = archive_env(&[]).await;
    let a = source(&e);
    // February's monthly file is not there on 10 March: its 28 daily files stand in.
    e.sim
        .archive()
        .add_fault(fault("BTCUSDT-1h-2025-02.zip", ArchiveFaultKind::Missing));
    let plan = plan_from(&e, "BTCUSDT", &[Interval::H1], "2025-02-01").await;
    let s = run(&e, &plan, Fetch::Archive(&a)).await;
    assert_eq!(s.rest_requests, 0);
    let r = &s.series[0];
    assert_eq!(r.status, Status::Complete, "{r:?}");
    assert_eq!(r.archive_files, 28 + 8, "{r:?}");
    assert!(r.archive_faults.is_empty(), "{r:?}");
    // 9 March and today until 06:00 are not in the archive yet: reported, left for REST.
    assert_eq!(r.not_published, 30, "{r:?}");
    assert_eq!(r.from_archive, r.expected - 30);
    assert!(s
        .render()
        .contains("Not in the archive yet BTCUSDT 1h: 30 candles"));

    e.sim
        .archive()
        .add_fault(fault("ETHUSDT-1h-2025-01.zip", ArchiveFaultKind::Missing));
    let plan = plan_from(&e, "ETHUSDT", &[Interval::H1], "2025-01-01").await;
    let s = run(&e, &plan, Fetch::Archive(&a)).await;
    assert_eq!(s.rest_requests, 0);
    assert_eq!(
        faults(&s),
        [("ETHUSDT-1h-2025-01.zip".to_owned(), "missing", 0)]
    );
    match &s.series[0].status {
        Status::Failed(m) => assert!(m.contains("744 candles not in the archive"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// An archive run interrupted mid-way resumes with what the stream lacks, file by file, and
/// ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_archive_run_resumes_exactly() {
    use klinebus_schemas::streams::KLINES_STREAM;
    let e = archive_env(&[]).await;
    let a = source(&e);
    let plan = plan_from(&e, "BTCUSDT,ETHUSDT", &[Interval::M1], "2025-01-20").await;
    let cancel = CancellationToken::new();
    let stop = async {
        let mut stream = e.js.get_stream(KLINES_STREAM).await.unwrap();
        while stream.info().await.unwrap().state.messages < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
    };
    let opts = RunOptions {
        concurrency: 2,
        progress: ProgressMode::Quiet,
        resume: true,
        fetch: Fetch::Auto(&a),
        flow: None,
        patience: std::time::Duration::from_secs(60),
    };
    let (first, ()) = tokio::join!(run_backfill(&plan, &e.rest, &e.js, opts, &cancel), stop);
    assert!(
        first.series.iter().any(|r| r.status == Status::Cancelled),
        "{}",
        first.render()
    );
    let stored_first: u64 = first.series.iter().map(|r| r.stored()).sum();
    let expected: u64 = plan.series.iter().map(|s| s.expected()).sum();
    assert!(stored_first > 0 && stored_first < expected);

    let second = run(&e, &plan, Fetch::Auto(&a)).await;
    assert_complete(&second);
    assert_exact(&e, &plan).await;
    let present: u64 = second.series.iter().map(|r| r.present).sum();
    assert!(present >= stored_first, "{present} < {stored_first}");
}
