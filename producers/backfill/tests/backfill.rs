//! End to end against an in-process binance-sim and a private nats-server.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use binance_sim::Gap;
use clap::Parser;
use futures::StreamExt;
use kline_backfill::{run_backfill, ProgressMode, RunOptions, Status};
use klinebus_binance::{RestClient, RestConfig, RetryPolicy, WeightLimiter};
use klinebus_schemas::streams::KLINES_STREAM;
use klinebus_schemas::Interval;
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

#[tokio::test]
async fn full_ranges_land_exactly_and_a_rerun_adds_nothing() {
    let e = env(&[]).await;
    let plan = plan(&e, "BTCUSDT,ETHUSDT", &[Interval::M1, Interval::H1], 2500).await;
    let first = backfill(&e, &plan, &CancellationToken::new()).await;
    assert_complete(&first);
    assert_eq!(first.rate_limited, 0);
    assert!(first.render().contains("Success: 4/4"));
    assert_exact(&e, &plan).await;
    let msgs =
        e.js.get_stream(KLINES_STREAM)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages;

    let again = backfill(&e, &plan, &CancellationToken::new()).await;
    assert_complete(&again);
    assert_eq!(again.published(), 0);
    assert_eq!(again.rest_requests, 0, "nothing refetched");
    let after =
        e.js.get_stream(KLINES_STREAM)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages;
    assert_eq!(after, msgs);
}

#[tokio::test]
async fn throttling_and_server_errors_lose_nothing() {
    let e = env(&[]).await;
    let plan = plan(&e, "BTCUSDT", &[Interval::M1], 3000).await;
    e.sim.faults().fail_next_rest(3, 503);
    let started = Instant::now();
    // After the 5xx burst: two 429s with Retry-After 1 s.
    let faults = e.sim.faults();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        faults.throttle_next_rest(2, 1);
    });
    let s = backfill(&e, &plan, &CancellationToken::new()).await;
    assert_complete(&s);
    assert!(s.rate_limited >= 1, "{s:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert!(e.rest.stats().retries >= 4);
    assert_exact(&e, &plan).await;
}

#[tokio::test]
async fn interrupted_run_resumes_without_refetching() {
    let e = env(&["--delay-ms", "40"]).await;
    let plan = plan(&e, "BTCUSDT", &[Interval::M1], 6000).await;
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let js = e.js.clone();
    // Interrupt once the first page is stored (not after a fixed time: a loaded machine may
    // not have stored anything by then).
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let Ok(mut stream) = js.get_stream("KLINES").await else {
                continue;
            };
            if stream.info().await.is_ok_and(|i| i.state.messages > 0) {
                c2.cancel();
                return;
            }
        }
    });
    let first = backfill(&e, &plan, &cancel).await;
    assert_eq!(first.series[0].status, Status::Cancelled);
    assert_eq!(first.exit_code(), 1);
    let done = first.series[0].stored();
    let total = plan.series[0].expected();
    assert!(done > 0 && done < total, "stored {done} of {total}");

    let second = backfill(&e, &plan, &CancellationToken::new()).await;
    assert_complete(&second);
    let r = &second.series[0];
    assert_eq!(r.present, done);
    assert_eq!(r.published, total - done);
    assert_eq!(r.duplicates, 0);
    assert!(
        second.rest_requests <= (total - done).div_ceil(1000) + 1,
        "{second:?}"
    );
    assert_exact(&e, &plan).await;
}

#[tokio::test]
async fn exchange_gaps_are_reported_with_their_range() {
    let e = env(&[]).await;
    let plan = plan(&e, "BTCUSDT", &[Interval::M1], 2000).await;
    let s = &plan.series[0];
    let gap = Gap {
        symbol: Some("BTCUSDT".into()),
        start_ms: s.from_ms + 500 * MIN,
        end_ms: s.from_ms + 530 * MIN,
    };
    e.sim.faults().add_gap(gap.clone());
    let sum = backfill(&e, &plan, &CancellationToken::new()).await;
    let r = &sum.series[0];
    let s = &plan.series[0];
    assert_eq!(r.status, Status::Gaps);
    assert_eq!(r.gaps.len(), 1);
    assert_eq!(
        (r.gaps[0].start_ms, r.gaps[0].end_ms, r.gaps[0].candles),
        (gap.start_ms, gap.end_ms, 30)
    );
    assert_eq!(r.published, s.expected() - 30);
    assert_eq!(sum.succeeded(), 0);
    assert_eq!(sum.exit_code(), 2);
    assert!(sum.render().contains("Exchange gap BTCUSDT 1m"));
    assert_exact(&e, &plan).await;
}

#[tokio::test]
async fn unknown_symbol_is_reported_and_not_retried() {
    let e = env(&[]).await;
    let plan = plan(&e, "NOSUCHPAIR", &[Interval::M1], 100).await;
    let s = backfill(&e, &plan, &CancellationToken::new()).await;
    match &s.series[0].status {
        Status::Failed(m) => assert!(m.contains("-1121") && m.contains("NOSUCHPAIR"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.rest_requests, 1);
    assert_eq!(s.exit_code(), 1);
    assert!(s.render().contains("Errors: 1/1"));
}

#[tokio::test]
async fn invalid_input_is_rejected_before_any_request() {
    let e = env(&[]).await;
    for args in [
        ["--symbols", "BTC-USDT", "--timeframes", "1m"],
        ["--symbols", "BTCUSDT", "--timeframes", "1H"],
    ] {
        let err =
            kline_backfill::Config::try_parse_from(std::iter::once("kline-backfill").chain(args))
                .unwrap_err()
                .to_string();
        assert!(err.contains("BTC-USDT") || err.contains("\"1H\""), "{err}");
    }
    assert_eq!(e.rest.stats().requests, 0);
}

/// The broker crashes mid-run and is back 7 s later: publishes whose acks were lost, and those
/// the client could not even send meanwhile (its buffer full for longer than it waits), are
/// republished; the run completes and the stream holds every candle exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_run_loses_nothing() {
    broker_away_mid_run(Duration::from_secs(7)).await;
}

/// The same with the broker away for 40 s, longer than the 27 s stream leader election that
/// once made a run give up: the pages are republished for the run's patience (60 s here), not
/// a number of rounds (with 20 s of patience this run fails after 4 rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_away_longer_than_an_election_is_waited_for() {
    broker_away_mid_run(Duration::from_secs(40)).await;
}

async fn broker_away_mid_run(down: Duration) {
    let e = env(&["--delay-ms", "30"]).await;
    let plan = plan(&e, "BTCUSDT,ETHUSDT", &[Interval::M1], 40_000).await;
    let restart = async {
        let mut stream = e.js.get_stream(KLINES_STREAM).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Pages of 1000: 80 messages in all; crash once an eighth is in.
        while stream.info().await.unwrap().state.messages < 10 {
            assert!(Instant::now() < deadline, "nothing stored in 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        crash(&e, down).await;
    };
    let cancel = CancellationToken::new();
    let both = async { tokio::join!(backfill(&e, &plan, &cancel), restart) };
    let (summary, ()) = tokio::time::timeout(down + Duration::from_secs(120), both)
        .await
        .expect("the backfill did not finish within 2 minutes of a broker restart");
    assert_complete(&summary);
    let expected: u64 = plan.series.iter().map(|s| s.expected()).sum();
    assert_eq!(summary.series.iter().map(|r| r.present).sum::<u64>(), 0);
    assert_eq!(
        summary.series.iter().map(|r| r.stored()).sum::<u64>(),
        expected
    );
    assert_exact(&e, &plan).await;
}

/// `--verify`'s wait: a consumer that does not exist is named at once (with a hint); a broker
/// restart while waiting is ridden out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_wait_names_a_missing_consumer_and_rides_out_a_broker_restart() {
    use async_nats::jetstream::consumer::pull;
    use kline_backfill::verify::wait_until_consumed;

    let e = env(&[]).await;
    let cancel = CancellationToken::new();
    let poll = Duration::from_millis(50);
    let started = Instant::now();
    let err = wait_until_consumed(&e.js, "nobody", Duration::from_secs(30), poll, &cancel)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(
        err.to_string().contains("kline-pg-sink --consumer nobody"),
        "{err}"
    );

    let stream = e.js.get_stream(KLINES_STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("sink".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let subject = "klines.backfill.binance.BTCUSDT.1m";
    e.js.publish(subject, "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let restart_then_consume = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        crash(&e, Duration::from_secs(1)).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                Instant::now() < deadline,
                "could not consume after the restart"
            );
            let Ok(mut batch) = consumer.fetch().max_messages(1).messages().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if let Some(Ok(m)) = batch.next().await {
                m.double_ack().await.unwrap();
                return;
            }
        }
    };
    let (waited, ()) = tokio::join!(
        wait_until_consumed(&e.js, "sink", Duration::from_secs(30), poll, &cancel),
        restart_then_consume
    );
    waited.unwrap();
}

/// An exchange outage longer than `--max-attempts` cover is waited out with `patience`; without
/// it the same outage fails the series (so the first half can fail).
#[tokio::test]
async fn an_outage_of_5xx_answers_is_ridden_out_with_patience() {
    let e = env(&[]).await;
    let plan = plan(&e, "BTCUSDT,ETHUSDT", &[Interval::M1, Interval::H1], 3000).await;
    let outage = Duration::from_secs(8);
    let patient = |patience| {
        let cfg = RestConfig {
            base_url: e.sim.base_url(),
            timeout: Duration::from_secs(10),
            retry: RetryPolicy {
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(500),
                patience,
                ..RetryPolicy::default()
            },
        };
        RestClient::new(cfg, Arc::new(WeightLimiter::default())).unwrap()
    };
    let opts = RunOptions {
        concurrency: 4,
        progress: ProgressMode::Quiet,
        resume: true,
        fetch: kline_backfill::Fetch::Rest,
        flow: None,
        patience: std::time::Duration::from_secs(60),
    };
    let outage_for = |d: Duration| {
        let faults = e.sim.faults();
        faults.fail_next_rest(u64::MAX, 502);
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            faults.fail_next_rest(0, 502);
        })
    };

    let impatient = outage_for(outage);
    let s = run_backfill(
        &plan,
        &patient(None),
        &e.js,
        opts,
        &CancellationToken::new(),
    )
    .await;
    assert_ne!(
        s.exit_code(),
        0,
        "without patience the outage fails the run"
    );
    assert!(s.series.iter().any(|r| r.status != Status::Complete));
    impatient.await.unwrap();

    let started = Instant::now();
    let ends = outage_for(outage);
    let s = run_backfill(
        &plan,
        &patient(Some(Duration::from_secs(120))),
        &e.js,
        opts,
        &CancellationToken::new(),
    )
    .await;
    assert!(started.elapsed() >= outage, "the run spanned the outage");
    ends.await.unwrap();
    assert_complete(&s);
    assert_exact(&e, &plan).await;
}

/// A broker that is not up yet when kline-backfill starts (a restart, or a start-up order with
/// the job first) is waited for within --patience, not a failed run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_not_up_yet_at_start_is_waited_for() {
    use clap::Parser;
    let e = env(&[]).await;
    let url = e.nats.lock().unwrap().url();
    e.nats.lock().unwrap().stop();
    let sim_url = e.sim.base_url();
    let cfg = kline_backfill::Config::parse_from([
        "kline-backfill",
        "--symbols",
        "BTCUSDT",
        "--timeframes",
        "1h",
        "--days",
        "2",
        "--source",
        "rest",
        "--rest-url",
        &sim_url,
        "--nats-url",
        &url,
        "--progress",
        "quiet",
    ]);
    let nats = e.nats.clone();
    let back = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(2));
        nats.lock().unwrap().start_again();
    });
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        kline_backfill::run(cfg, CancellationToken::new()),
    )
    .await
    .expect("kline-backfill did not finish once the broker was up")
    .unwrap();
    back.await.unwrap();
    assert_eq!(result.exit_code(), 0, "{}", result.summary.render());
    assert_eq!(result.summary.published(), 48);
}

/// A backfill faster than its sink waits for it instead of pushing unread events out of a full
/// KLINES stream (which discards its oldest messages, read or not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_waits_for_a_slow_sink_instead_of_outrunning_the_stream() {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    use klinebus_schemas::streams::Retention;
    use klinebus_schemas::{bus, codec, ClosedCandles};
    let e = env(&[]).await;
    // 16 MB of KLINES; the run publishes about 26 MB.
    let small = Retention {
        klines_max_bytes: 16 << 20,
        ..Retention::default()
    };
    bus::apply_streams(&e.js, &small).await.unwrap();
    let stream = e.js.get_stream(KLINES_STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("pg-sink".into()),
            ack_policy: AckPolicy::Explicit,
            ..pull::Config::default()
        })
        .await
        .unwrap();
    let plan = plan(&e, "BTCUSDT,ETHUSDT", &[Interval::M1], 40_000).await;
    let expected: u64 = plan.series.iter().map(|s| s.expected()).sum();
    let guard = kline_backfill::FlowGuard::new(e.js.clone(), "pg-sink", 0.5);
    // The slow sink: away for the first 3 s, then reading and acknowledging.
    let sink = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut messages = consumer.messages().await.unwrap();
        let mut candles = 0u64;
        while candles < expected {
            let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
                .await
                .expect("the sink got nothing for 30 s")
                .unwrap()
                .unwrap();
            candles += codec::decode::<ClosedCandles>(&m.payload)
                .unwrap()
                .candles
                .len() as u64;
            m.ack().await.unwrap();
        }
        candles
    };
    let opts = RunOptions {
        concurrency: 4,
        progress: ProgressMode::Quiet,
        resume: true,
        fetch: kline_backfill::Fetch::Rest,
        flow: Some(&guard),
        patience: std::time::Duration::from_secs(60),
    };
    let cancel = CancellationToken::new();
    let (summary, read) = tokio::time::timeout(
        Duration::from_secs(120),
        futures::future::join(run_backfill(&plan, &e.rest, &e.js, opts, &cancel), sink),
    )
    .await
    .expect("the backfill and its sink did not finish in 2 minutes");
    assert_complete(&summary);
    // Every candle was read before the full stream discarded it (without the wait, the first
    // 10 MB are discarded unread and the sink never gets them).
    assert_eq!(read, expected, "the sink read every candle");
}
