//! End to end against an in-process binance-sim and a private nats-server.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use binance_sim::{Gap, SimHandle};
use clap::Parser;
use futures::StreamExt;
use kline_backfill::{run_backfill, Plan, ProgressMode, RunOptions, Status, Summary, Window};
use klinebus_binance::{RestClient, RestConfig, RetryPolicy, WeightLimiter};
use klinebus_schemas::streams::{Retention, KLINES_STREAM};
use klinebus_schemas::{bus, codec, Interval, KlineEvent, Symbol};
use klinebus_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

const MIN: i64 = 60_000;

struct Env {
    sim: SimHandle,
    nats: Arc<std::sync::Mutex<NatsServer>>,
    js: Context,
    rest: RestClient,
}

async fn env(extra: &[&str]) -> Env {
    let mut args = vec![
        "binance-sim",
        "--symbols",
        "BTCUSDT,ETHUSDT",
        "--ban-seconds",
        "2",
    ];
    args.extend_from_slice(extra);
    let sim = binance_sim::spawn(binance_sim::Config::parse_from(args))
        .await
        .unwrap();
    let nats = NatsServer::start();
    let client = bus::connect(&bus::BusOptions::new(nats.url(), "test"))
        .await
        .unwrap();
    let js = bus::jetstream(client, 5_000);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    let rest = client_for(&sim);
    Env {
        sim,
        nats: Arc::new(std::sync::Mutex::new(nats)),
        js,
        rest,
    }
}

fn client_for(sim: &SimHandle) -> RestClient {
    let cfg = RestConfig {
        base_url: sim.base_url(),
        timeout: Duration::from_secs(10),
        retry: RetryPolicy {
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            ..RetryPolicy::default()
        },
    };
    RestClient::new(cfg, Arc::new(WeightLimiter::default())).unwrap()
}

fn syms(list: &str) -> Vec<Symbol> {
    Symbol::parse_list(list).unwrap()
}

/// The last `minutes` minutes (1m) and matching hours for the given symbols.
async fn plan(e: &Env, symbols: &str, intervals: &[Interval], minutes: i64) -> Plan {
    let now = e.rest.server_time().await.unwrap();
    let window = Window::Range {
        from_ms: now - minutes * MIN,
        to_ms: None,
    };
    Plan::build(&syms(symbols), intervals, window, now)
}

async fn backfill(e: &Env, plan: &Plan, cancel: &CancellationToken) -> Summary {
    let opts = RunOptions {
        concurrency: 4,
        progress: ProgressMode::Quiet,
        resume: true,
        fetch: kline_backfill::Fetch::Rest,
    };
    run_backfill(plan, &e.rest, &e.js, opts, cancel).await
}

/// Every candle stored on `subject`, in stream order (pages opened; a page's map has a
/// `candles` key, which an event's has not).
async fn stored(js: &Context, subject: &str) -> Vec<KlineEvent> {
    klinebus_testkit::stored_payloads(js, KLINES_STREAM, subject)
        .await
        .iter()
        .flat_map(|p| {
            codec::decode::<klinebus_schemas::ClosedCandles>(p)
                .map(|page| page.candles)
                .unwrap_or_else(|_| vec![codec::decode(p).unwrap()])
        })
        .collect()
}

/// The stream holds exactly the sim's closed candles of every series, once each, value for value
/// (in any order: republished candles come after later ones).
async fn assert_exact(e: &Env, plan: &Plan) {
    for s in &plan.series {
        let mut got = stored(&e.js, &s.subject()).await;
        got.sort_by_key(|g| g.open_time);
        let want: Vec<_> = e
            .sim
            .market()
            .klines(
                s.symbol.as_str(),
                s.interval.as_str(),
                s.from_ms,
                s.to_ms - 1,
                plan.server_now_ms,
            )
            .unwrap()
            .into_iter()
            .filter(|k| k.closed)
            .collect();
        assert!(!want.is_empty());
        assert_eq!(got.len(), want.len(), "{} {}", s.symbol, s.interval);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.open_time, w.open_time);
            assert_eq!(g.close_time, w.close_time);
            assert_eq!(
                (&g.open, &g.high, &g.low, &g.close),
                (&w.open, &w.high, &w.low, &w.close)
            );
            assert_eq!((&g.volume, &g.quote_volume), (&w.volume, &w.quote_volume));
            assert_eq!(
                (&g.taker_buy_base, &g.taker_buy_quote),
                (&w.taker_buy_base, &w.taker_buy_quote)
            );
            assert_eq!(g.trades, w.trades);
            assert!(g.closed);
            assert_eq!(g.event_time, w.close_time + 1);
            assert_eq!(g.source, klinebus_schemas::Source::Backfill);
        }
    }
}

/// Kills the private broker (SIGKILL) and starts it again after `away`, on the same port and
/// store, without blocking the runtime meanwhile.
async fn crash(e: &Env, away: Duration) {
    let nats = e.nats.clone();
    tokio::task::spawn_blocking(move || {
        let mut nats = nats.lock().unwrap();
        nats.stop();
        std::thread::sleep(away);
        nats.start_again();
    })
    .await
    .unwrap();
}

fn assert_complete(s: &Summary) {
    for r in &s.series {
        assert_eq!(r.status, Status::Complete, "{r:?}");
        assert_eq!(r.stored(), r.expected, "{r:?}");
    }
    assert_eq!(s.exit_code(), 0);
}

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
        crash(&e, Duration::from_secs(7)).await;
    };
    let cancel = CancellationToken::new();
    let both = async { tokio::join!(backfill(&e, &plan, &cancel), restart) };
    let (summary, ()) = tokio::time::timeout(Duration::from_secs(120), both)
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
