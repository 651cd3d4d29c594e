//! NATS authorization of the compose deployment, tested on a private nats-server started from the
//! real `compose/nats/nats.conf` (+ `auth.conf`): only its JetStream store directory is replaced
//! and its listen/monitoring ports overridden on the command line; the passwords come from the
//! environment exactly as in compose.
//!
//! - a client without (or with wrong) credentials is refused;
//! - each role may do its part and nothing else: the producer publishes `klines.>` and creates
//!   or updates the streams, but cannot publish the sinks' subjects, delete streams, or pull from
//!   (or reset) the sinks' durable consumers; the sinks cannot publish `klines.>`; nobody can
//!   snoop on the event subjects with a plain subscription;
//! - the real binaries work with only their own role's permissions: kline-backfill (publishing,
//!   resuming and `--verify`) and kline-live as `producer`, kline-pg-sink as `pg-sink` (password
//!   from a file), kline-signals as `signals`, `klinectl status` as `ops`, with no permission
//!   violation logged by the server, and the candles land in PostgreSQL.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use clap::Parser;
use futures::StreamExt;
use klinebus_schemas::bus::{self, BusOptions};
use klinebus_schemas::streams::{ConsumerSpec, Retention};
use klinebus_testkit::{NatsServer, TestDb};
use tokio_util::sync::CancellationToken;

const NATS_CONF: &str = include_str!("../../compose/nats/nats.conf");
const AUTH_CONF: &str = include_str!("../../compose/nats/auth.conf");

/// (user, password) of each role in compose/nats/auth.conf; the passwords are the test's own.
const PRODUCER: (&str, &str) = ("producer", "producer-test-password");
const PG_SINK: (&str, &str) = ("pg-sink", "pg-sink-test-password");
const SIGNALS: (&str, &str) = ("signals", "signals-test-password");
const OPS: (&str, &str) = ("ops", "ops-test-password");

/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;

fn start_authorized_nats() -> NatsServer {
    NatsServer::start_with_config(
        NATS_CONF,
        &[("auth.conf", AUTH_CONF)],
        &[
            ("KLINEBUS_NATS_PRODUCER_PASSWORD", PRODUCER.1),
            ("KLINEBUS_NATS_PG_SINK_PASSWORD", PG_SINK.1),
            ("KLINEBUS_NATS_SIGNALS_PASSWORD", SIGNALS.1),
            ("KLINEBUS_NATS_OPS_PASSWORD", OPS.1),
        ],
    )
}

fn options(nats: &NatsServer, user: Option<(&str, &str)>) -> BusOptions {
    let mut o = BusOptions::new(nats.url(), "security-test");
    if let Some((u, p)) = user {
        o.user = Some(u.to_owned());
        o.password = Some(p.into());
    }
    o
}

async fn connect_as(nats: &NatsServer, role: (&str, &str)) -> async_nats::Client {
    match bus::connect(&options(nats, Some(role))).await {
        Ok(c) => c,
        Err(e) => panic!("{} cannot connect: {e}\n{}", role.0, nats.output()),
    }
}

/// A JetStream context that gives up quickly: a denied request gets no answer at all.
fn js(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client)
}

async fn messages_in(ops: &jetstream::Context, stream: &str) -> u64 {
    let mut s = ops.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.messages
}

/// Publishes with an ack: true when the stream stored it.
async fn js_publish_ok(js: &jetstream::Context, subject: &str) -> bool {
    match js.publish(subject.to_owned(), "x".into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

/// A plain publish (no ack asked), flushed: a denied one is dropped by the server.
async fn core_publish(client: &async_nats::Client, subject: &str) {
    client
        .publish(subject.to_owned(), "x".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
}

fn violations(nats: &NatsServer) -> Vec<String> {
    nats.output()
        .lines()
        .filter(|l| l.contains("Violation"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn clients_without_valid_credentials_are_refused() {
    let nats = start_authorized_nats();
    let e = bus::connect(&options(&nats, None)).await.unwrap_err();
    // The cause is the error's source, printed as operators see it.
    let e = klinebus_svc::error_line(&e);
    assert!(
        e.to_lowercase().contains("authorization"),
        "expected an authorization error, got: {e}"
    );
    assert!(bus::connect(&options(&nats, Some(("producer", "wrong"))))
        .await
        .is_err());
    assert!(bus::connect(&options(&nats, Some(("nobody", PRODUCER.1))))
        .await
        .is_err());
    // A valid user gets in.
    connect_as(&nats, OPS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_do_only_its_part() {
    let nats = start_authorized_nats();
    let ops = js(connect_as(&nats, OPS).await);
    let producer_client = connect_as(&nats, PRODUCER).await;
    let producer = js(producer_client.clone());
    let sink_client = connect_as(&nats, PG_SINK).await;
    let sink = js(sink_client.clone());
    let signals_client = connect_as(&nats, SIGNALS).await;
    let signals = js(signals_client.clone());

    // Every binary creates or updates the streams at start-up: each role may.
    for (who, ctx) in [
        ("producer", &producer),
        ("pg-sink", &sink),
        ("signals", &signals),
        ("ops", &ops),
    ] {
        for round in ["create", "update"] {
            if let Err(e) = bus::ensure_streams(ctx, &Retention::default()).await {
                panic!("{who} cannot {round} the streams: {e}\n{}", nats.output());
            }
        }
    }

    // Producer: klines.> yes; the sinks' subjects no.
    assert!(js_publish_ok(&producer, "klines.backfill.binance.BTCUSDT.1m").await);
    for subject in [
        "candles.closed.binance.BTCUSDT.1m",
        "signals.binance.BTCUSDT.1m",
        "dlq.pg-sink",
    ] {
        assert!(
            !js_publish_ok(&producer, subject).await,
            "producer published {subject}"
        );
        core_publish(&producer_client, subject).await;
    }
    // Nor delete or purge a stream.
    assert!(producer.delete_stream("KLINES").await.is_err());
    let klines = producer.get_stream("KLINES").await.unwrap();
    assert!(klines.purge().await.is_err());

    // The sink's durable consumer (created by the sink user, as kline-pg-sink does).
    let spec = ConsumerSpec::klines("pg-sink", String::new());
    let created = sink
        .get_stream("KLINES")
        .await
        .unwrap()
        .create_consumer(bus::consumer_config(&spec, DeliverPolicy::All))
        .await;
    if let Err(e) = created {
        panic!("pg-sink cannot create its consumer: {e}\n{}", nats.output());
    }

    // The producer cannot steal, reset or delete it.
    let stolen = producer
        .get_stream("KLINES")
        .await
        .unwrap()
        .get_consumer::<pull::Config>("pg-sink")
        .await;
    if let Ok(c) = stolen {
        let got = tokio::time::timeout(Duration::from_secs(3), async {
            let mut n = 0;
            if let Ok(mut batch) = c
                .fetch()
                .max_messages(10)
                .expires(Duration::from_secs(1))
                .messages()
                .await
            {
                while let Some(Ok(_)) = batch.next().await {
                    n += 1;
                }
            }
            n
        })
        .await
        .unwrap_or(0);
        assert_eq!(got, 0, "the producer pulled from pg-sink's consumer");
    }
    let klines_ops = ops.get_stream("KLINES").await.unwrap();
    let info = klines_ops.consumer_info("pg-sink").await.unwrap();
    assert_eq!(info.delivered.stream_sequence, 0, "nothing was delivered");
    assert_eq!(info.num_pending, 1);
    assert!(producer
        .get_stream("KLINES")
        .await
        .unwrap()
        .delete_consumer("pg-sink")
        .await
        .is_err());
    assert!(producer
        .get_stream("KLINES")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("pg-sink".into()),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .is_err());

    // The sink consumes and acks through its durable consumer.
    let c = sink
        .get_stream("KLINES")
        .await
        .unwrap()
        .get_consumer::<pull::Config>("pg-sink")
        .await
        .unwrap();
    let mut batch = c
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let m = batch.next().await.unwrap().unwrap();
    assert_eq!(m.subject.as_str(), "klines.backfill.binance.BTCUSDT.1m");
    m.double_ack().await.unwrap();
    let info = klines_ops.consumer_info("pg-sink").await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));

    // The sinks cannot publish producer events, nor each other's outputs.
    for (who, ctx, client) in [
        ("pg-sink", &sink, &sink_client),
        ("signals", &signals, &signals_client),
    ] {
        for subject in [
            "klines.ws.binance.BTCUSDT.1m",
            "klines.backfill.binance.BTCUSDT.1m",
        ] {
            assert!(
                !js_publish_ok(ctx, subject).await,
                "{who} published {subject}"
            );
            core_publish(client, subject).await;
        }
    }
    assert!(!js_publish_ok(&sink, "signals.binance.BTCUSDT.1m").await);
    assert!(!js_publish_ok(&signals, "candles.closed.binance.BTCUSDT.1m").await);
    // …but their own outputs, yes.
    assert!(js_publish_ok(&sink, "candles.closed.binance.BTCUSDT.1m").await);
    assert!(js_publish_ok(&sink, "dlq.pg-sink").await);
    assert!(js_publish_ok(&signals, "signals.binance.BTCUSDT.1m").await);
    assert!(js_publish_ok(&signals, "dlq.signals").await);
    // The signals user reads CANDLES, not KLINES.
    assert!(signals
        .get_stream("KLINES")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("signals".into()),
            ..Default::default()
        })
        .await
        .is_err());

    // Nobody but the server's own JetStream reads the event subjects with a plain subscription.
    let mut snoop_sink = sink_client.subscribe("klines.>").await.unwrap();
    let mut snoop_producer = producer_client.subscribe("candles.>").await.unwrap();
    sink_client.flush().await.unwrap();
    producer_client.flush().await.unwrap();
    assert!(js_publish_ok(&producer, "klines.ws.binance.BTCUSDT.1m").await);
    assert!(js_publish_ok(&sink, "candles.closed.binance.ETHUSDT.1m").await);
    let snooped = tokio::time::timeout(Duration::from_millis(500), async {
        tokio::select! {
            m = snoop_sink.next() => m.map(|m| m.subject.to_string()),
            m = snoop_producer.next() => m.map(|m| m.subject.to_string()),
        }
    })
    .await;
    assert!(
        matches!(snooped, Err(_) | Ok(None)),
        "a plain subscription received {snooped:?}"
    );

    // What was denied never reached a stream: exactly the allowed messages are there.
    assert_eq!(messages_in(&ops, "KLINES").await, 2);
    assert_eq!(messages_in(&ops, "CANDLES").await, 2);
    assert_eq!(messages_in(&ops, "SIGNALS").await, 1);
    assert_eq!(messages_in(&ops, "DLQ").await, 2);
    // And the server logged the violations.
    assert!(!violations(&nats).is_empty(), "{}", nats.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binaries_run_with_their_own_role_only() {
    let nats = start_authorized_nats();
    let sim = binance_sim::spawn(binance_sim::Config::parse_from([
        "binance-sim",
        "--start-time",
        &T0.to_string(),
        "--symbols",
        "BTCUSDT,ETHUSDT",
    ]))
    .await
    .unwrap();
    let db = TestDb::fresh().await;
    let stop = CancellationToken::new();
    let secrets = tempfile::tempdir().unwrap();
    let sink_password = secrets.path().join("nats_pg_sink_password");
    std::fs::write(&sink_password, format!("{}\n", PG_SINK.1)).unwrap();
    let url = nats.url();
    let rest = sim.base_url();
    // The sink reaches PostgreSQL over TLS because its URL says so (sslmode), nothing else.
    let sink_db_url = format!("{}?sslmode=require&application_name=tls-sink", db.url);

    let sink = kline_pg_sink::Config::parse_from([
        "kline-pg-sink",
        "--nats-url",
        &url,
        "--nats-user",
        PG_SINK.0,
        "--nats-password-file",
        sink_password.to_str().unwrap(),
        "--database-url",
        &sink_db_url,
        "--metrics-addr",
        "off",
        "--flush-interval-ms",
        "50",
    ]);
    let sink = tokio::spawn(kline_pg_sink::run(sink, stop.child_token()));
    let signals = kline_signals::Config::parse_from([
        "kline-signals",
        "--nats-url",
        &url,
        "--nats-user",
        SIGNALS.0,
        "--nats-password",
        SIGNALS.1,
        "--database-url",
        &db.url,
        "--metrics-addr",
        "off",
    ]);
    let signals = tokio::spawn(kline_signals::run(signals, stop.child_token()));
    // Let the sinks create their durable consumers before the producer starts.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let backfill = |verify: bool| {
        let mut args = vec![
            "kline-backfill",
            "--symbols",
            "BTCUSDT,ETHUSDT",
            "--timeframes",
            "1h,4h",
            "--days",
            "3",
            "--rest-url",
            &rest,
            "--archive-url",
            &rest,
            "--nats-url",
            &url,
            "--nats-user",
            PRODUCER.0,
            "--nats-password",
            PRODUCER.1,
            "--database-url",
            &db.url,
            "--progress",
            "quiet",
        ];
        if verify {
            args.extend(["--verify", "--verify-timeout", "60s"]);
        }
        kline_backfill::Config::parse_from(args)
    };
    // First run publishes and verifies (waits on pg-sink's consumer, reads the table).
    let first = kline_backfill::run(backfill(true), CancellationToken::new())
        .await
        .unwrap();
    let report = first.verification.as_ref().unwrap().as_ref().unwrap();
    assert!(report.is_ok(), "{}", report.render_text());
    assert_eq!(first.exit_code(), 0, "{}", nats.output());
    // Second run resumes from the stream (last message by subject, ordered consumer).
    let second = kline_backfill::run(backfill(false), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(second.exit_code(), 0, "{}", nats.output());

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // 3 days of 1h and 4h candles for two symbols.
    assert!(rows >= 2 * (3 * 24 + 3 * 6), "{rows} rows");

    // kline-signals consumed the closed candles pg-sink published after its commits.
    let ops = js(connect_as(&nats, OPS).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut candles = ops.get_stream("CANDLES").await.unwrap();
        let stored = candles.info().await.unwrap().state.messages;
        // kline-signals creates its durable once it is up (migrations, the ownership lock).
        let Ok(info) = candles.consumer_info("signals").await else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "kline-signals never created its durable\n{}",
                nats.output()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if stored > 0 && info.num_pending == 0 && info.num_ack_pending == 0 {
            assert_eq!(info.delivered.stream_sequence, stored);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "signals did not drain CANDLES: {stored} stored, {} pending, {} unacked\n{}",
            info.num_pending,
            info.num_ack_pending,
            nats.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // kline-live publishes (REST start-up candle, WebSocket updates) as `producer`.
    let before = messages_in(&ops, "KLINES").await;
    let live = kline_live::Config::parse_from([
        "kline-live",
        "--symbols",
        "BTCUSDT",
        "--timeframes",
        "1m",
        "--ws-url",
        &sim.ws_url(),
        "--rest-url",
        &rest,
        "--nats-url",
        &url,
        "--nats-user",
        PRODUCER.0,
        "--nats-password",
        PRODUCER.1,
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let live_stop = CancellationToken::new();
    let live = tokio::spawn(kline_live::run(live, live_stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while messages_in(&ops, "KLINES").await < before + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "kline-live published nothing\n{}",
            nats.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    live_stop.cancel();
    live.await.unwrap().unwrap();

    // The operators' tool reads the consumers as `ops`.
    let status = klinectl::run(klinectl::cli::Cli::parse_from([
        "klinectl",
        "--nats-url",
        &url,
        "--nats-user",
        OPS.0,
        "--nats-password",
        OPS.1,
        "--database-url",
        &db.url,
        "status",
    ]))
    .await
    .unwrap();
    assert!(status.output.contains("pg-sink"), "{}", status.output);

    let tls: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.datname = current_database() AND a.application_name = 'tls-sink' AND s.ssl",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        tls > 0,
        "kline-pg-sink holds no TLS connection with sslmode=require \
         (is ssl = on in this PostgreSQL's postgresql.conf?)"
    );

    stop.cancel();
    sink.await.unwrap().unwrap();
    signals.await.unwrap().unwrap();
    // Every permission each binary needed was granted.
    let violations = violations(&nats);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
