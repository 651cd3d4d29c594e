//! NATS authorization of the compose deployment, tested on a private nats-server started from the
//! real `compose/nats/nats.conf` (+ `auth.conf`): only its JetStream store directory is replaced
//! and its listen/monitoring ports overridden on the command line; the passwords come from the
//! environment exactly as in compose.
//!
//! A denied request is dropped by the server, which logs a `Publish Violation` of that user and
//! subject and answers nothing: every refusal below is asserted by both, the client's timeout and
//! the server's violation line.
//!
//! - a client without (or with wrong) credentials is refused;
//! - the streams are `admin`'s: it applies them (`klinectl streams apply`, a process); producer,
//!   pg-sink, signals and ops may not update, seal, purge or delete any of the four, delete a
//!   message or create a stream (nor ops restore one), and the streams stay as applied;
//! - consumers: the producer may create none on KLINES (push into `candles.closed.…`, pull,
//!   ephemeral, the legacy durable subject), the sinks only their own durable; nobody reads
//!   (`MSG.NEXT`) or deletes another role's durable; ops may manage consumers (replay);
//! - each role publishes only its own subjects (producer `klines.>`, pg-sink `candles.closed.>`
//!   and `dlq.pg-sink`, signals `signals.>` and `dlq.signals`), and nobody snoops on the event
//!   subjects with a plain subscription;
//! - kline-backfill, kline-live, kline-pg-sink and kline-signals (as processes) given a wrong
//!   password exit non-zero at once saying "authorization violation"; before the streams
//!   exist, each with its role exits non-zero saying to run `klinectl streams apply`, which ops
//!   may not run and admin may; then the sinks given a login PostgreSQL refuses exit at once;
//! - after admin applied them, the real binaries work with only their own role's permissions:
//!   kline-backfill (publishing, resuming and `--verify`) and kline-live as `producer`,
//!   kline-pg-sink as `pg-sink` (password from a file), kline-signals as `signals`, `klinectl
//!   status` and `replay` as `ops`, with no permission violation logged by the server, and the
//!   candles land in PostgreSQL.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin;
use std::process::ExitStatus;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::push, consumer::DeliverPolicy};
use clap::Parser;
use futures::StreamExt;
use klinebus_schemas::bus::{self, BusOptions};
use klinebus_schemas::streams::{ConsumerSpec, CANDLES_STREAM};
use klinebus_testkit::{NatsServer, TestDb};
use tokio_util::sync::CancellationToken;

const NATS_CONF: &str = include_str!("../../compose/nats/nats.conf");
const AUTH_CONF: &str = include_str!("../../compose/nats/auth.conf");

/// (user, password) of each role in compose/nats/auth.conf; the passwords are the test's own.
const PRODUCER: (&str, &str) = ("producer", "producer-test-password");
const PG_SINK: (&str, &str) = ("pg-sink", "pg-sink-test-password");
const SIGNALS: (&str, &str) = ("signals", "signals-test-password");
const OPS: (&str, &str) = ("ops", "ops-test-password");
const ADMIN: (&str, &str) = ("admin", "admin-test-password");

const STREAMS: [&str; 4] = ["KLINES", "CANDLES", "SIGNALS", "DLQ"];

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
            ("KLINEBUS_NATS_ADMIN_PASSWORD", ADMIN.1),
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

/// A binary of this package run to its end (at most 90 s) in an empty directory (no `.env`),
/// with none of the developer's connection variables: its exit status and everything it printed.
async fn run_process(name: &str, path: &str, args: &[&str]) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(args)
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for var in [
        "LOG_FORMAT",
        "NATS_URL",
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_PASSWORD_FILE",
        "NATS_TOKEN",
        "NATS_TOKEN_FILE",
        "NATS_CREDS",
        "NATS_STREAM_REPLICAS",
        "DATABASE_URL",
        "DATABASE_URL_FILE",
    ] {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{name} still running after 90 s"))
        .unwrap_or_else(|e| panic!("cannot run {name} ({path}): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// `klinectl streams apply` as a process with `role`'s credentials.
async fn streams_apply(nats: &NatsServer, role: (&str, &str)) -> (ExitStatus, String) {
    let url = nats.url();
    run_process(
        "klinectl",
        env!("CARGO_BIN_EXE_e2e-klinectl"),
        &[
            "--nats-url",
            &url,
            "--nats-user",
            role.0,
            "--nats-password",
            role.1,
            "streams",
            "apply",
        ],
    )
    .await
}

/// A private server whose streams admin applied (`klinectl streams apply`, as compose's
/// migrate job does).
async fn applied_nats() -> NatsServer {
    let nats = start_authorized_nats();
    let (status, out) = streams_apply(&nats, ADMIN).await;
    assert!(status.success(), "{out}\n{}", nats.output());
    assert_eq!(out.matches(" created ").count(), 4, "{out}");
    nats
}

/// A request that must be refused: who, what, the API subject it goes to, and the request.
struct Attempt {
    user: &'static str,
    what: String,
    subject: String,
    request: Pin<Box<dyn Future<Output = Result<(), String>> + Send>>,
}

fn attempt<T, E, F>(
    user: &'static str,
    what: impl Into<String>,
    subject: impl Into<String>,
    f: F,
) -> Attempt
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    E: std::error::Error + 'static,
{
    Attempt {
        user,
        what: what.into(),
        subject: subject.into(),
        request: Box::pin(async move {
            f.await
                .map(|_| ())
                .map_err(|e| klinebus_svc::error_line(&e))
        }),
    }
}

/// Runs the attempts at once and asserts each was refused by the server: no answer (the client
/// timed out) and a publish violation of that user and subject in the server's log.
async fn assert_all_refused(nats: &NatsServer, attempts: Vec<Attempt>) {
    assert!(!attempts.is_empty());
    let (meta, requests): (Vec<_>, Vec<_>) = attempts
        .into_iter()
        .map(|a| ((a.user, a.what, a.subject), a.request))
        .unzip();
    let results = futures::future::join_all(requests).await;
    // The server writes its log asynchronously.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for ((user, what, subject), result) in meta.into_iter().zip(results) {
        match result {
            Ok(()) => panic!("{user} may {what}"),
            Err(e) => assert!(
                e.contains("timed out"),
                "{user} {what}: expected no answer (a timeout), got: {e}"
            ),
        }
        let line = format!("Publish Violation - User \"{user}\", Subject \"{subject}\"");
        while !nats.output().contains(&line) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user} {what}: the server logged no `{line}`\n{}",
                nats.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A raw JetStream API request that gives up after a second.
async fn api_request(
    client: async_nats::Client,
    subject: String,
    body: serde_json::Value,
) -> Result<async_nats::Message, async_nats::RequestError> {
    let request = async_nats::Request::new()
        .payload(body.to_string().into())
        .timeout(Some(Duration::from_secs(1)));
    client.send_request(subject, request).await
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
    assert!(bus::connect(&options(&nats, Some(("admin", OPS.1))))
        .await
        .is_err());
    // A valid user gets in.
    connect_as(&nats, OPS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_may_change_a_stream() {
    let nats = applied_nats().await;
    let ops = js(connect_as(&nats, OPS).await);
    // Something in every stream, published by its own role.
    let producer = js(connect_as(&nats, PRODUCER).await);
    let sink = js(connect_as(&nats, PG_SINK).await);
    let signals = js(connect_as(&nats, SIGNALS).await);
    assert!(js_publish_ok(&producer, "klines.backfill.binance.BTCUSDT.1m").await);
    assert!(js_publish_ok(&sink, "candles.closed.binance.BTCUSDT.1m").await);
    assert!(js_publish_ok(&sink, "dlq.pg-sink").await);
    assert!(js_publish_ok(&signals, "signals.binance.BTCUSDT.1m").await);
    let mut before = Vec::new();
    for name in STREAMS {
        before.push(
            ops.get_stream(name)
                .await
                .unwrap()
                .get_info()
                .await
                .unwrap(),
        );
    }

    let mut attempts = Vec::new();
    for (user, ctx) in [
        ("producer", producer.clone()),
        ("pg-sink", sink.clone()),
        ("signals", signals.clone()),
        ("ops", ops.clone()),
    ] {
        for (name, info) in STREAMS.iter().zip(&before) {
            // Every role may look a stream up (bus::ensure_streams does at start-up).
            let stream = ctx.get_stream(*name).await.unwrap();
            let mut shrunk = info.config.clone();
            shrunk.max_messages = 1;
            let c = ctx.clone();
            attempts.push(attempt(
                user,
                format!("update {name} (max_msgs 1)"),
                format!("$JS.API.STREAM.UPDATE.{name}"),
                async move { c.update_stream(shrunk).await },
            ));
            let mut sealed = info.config.clone();
            sealed.sealed = true;
            let c = ctx.clone();
            attempts.push(attempt(
                user,
                format!("seal {name}"),
                format!("$JS.API.STREAM.UPDATE.{name}"),
                async move { c.update_stream(sealed).await },
            ));
            let s = stream.clone();
            attempts.push(attempt(
                user,
                format!("purge {name}"),
                format!("$JS.API.STREAM.PURGE.{name}"),
                async move { s.purge().await },
            ));
            let s = stream.clone();
            attempts.push(attempt(
                user,
                format!("delete a message of {name}"),
                format!("$JS.API.STREAM.MSG.DELETE.{name}"),
                async move { s.delete_message(1).await },
            ));
            let c = ctx.clone();
            let n = name.to_string();
            attempts.push(attempt(
                user,
                format!("delete {name}"),
                format!("$JS.API.STREAM.DELETE.{name}"),
                async move { c.delete_stream(n).await },
            ));
        }
        let c = ctx.clone();
        attempts.push(attempt(
            user,
            "create a stream",
            "$JS.API.STREAM.CREATE.ROGUE",
            async move {
                c.create_stream(jetstream::stream::Config {
                    name: "ROGUE".into(),
                    subjects: vec!["rogue.>".into()],
                    ..Default::default()
                })
                .await
            },
        ));
    }
    // Nor may ops create one from a snapshot.
    attempts.push(attempt(
        "ops",
        "restore a stream",
        "$JS.API.STREAM.RESTORE.ROGUE",
        api_request(
            connect_as(&nats, OPS).await,
            "$JS.API.STREAM.RESTORE.ROGUE".into(),
            serde_json::json!({"config": {"name": "ROGUE", "subjects": ["rogue.>"]}}),
        ),
    ));
    assert_all_refused(&nats, attempts).await;

    // The streams are as admin applied them, with what was stored.
    for (name, was) in STREAMS.iter().zip(&before) {
        let now = ops
            .get_stream(*name)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
        assert_eq!(now.config, was.config, "{name}");
        assert_eq!(now.state.messages, 1, "{name}");
    }
    assert!(ops.get_stream("ROGUE").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_create_no_consumer_and_sinks_only_their_own() {
    let nats = applied_nats().await;
    let ops = js(connect_as(&nats, OPS).await);
    let producer_client = connect_as(&nats, PRODUCER).await;
    let producer = js(producer_client.clone());
    let sink_client = connect_as(&nats, PG_SINK).await;
    let sink = js(sink_client.clone());
    let signals_client = connect_as(&nats, SIGNALS).await;
    let signals = js(signals_client.clone());
    assert!(js_publish_ok(&producer, "klines.backfill.binance.BTCUSDT.1m").await);
    assert!(js_publish_ok(&sink, "candles.closed.binance.BTCUSDT.1m").await);

    // The sinks create their own durables, as kline-pg-sink and kline-signals do.
    let spec = ConsumerSpec::klines("pg-sink", String::new());
    if let Err(e) = sink
        .get_stream("KLINES")
        .await
        .unwrap()
        .create_consumer(bus::consumer_config(&spec, DeliverPolicy::All))
        .await
    {
        panic!("pg-sink cannot create its consumer: {e}\n{}", nats.output());
    }
    let spec = ConsumerSpec {
        stream: CANDLES_STREAM.into(),
        filter_subject: "candles.closed.>".into(),
        ..ConsumerSpec::klines("signals", String::new())
    };
    if let Err(e) = signals
        .get_stream(CANDLES_STREAM)
        .await
        .unwrap()
        .create_consumer(bus::consumer_config(&spec, DeliverPolicy::All))
        .await
    {
        panic!("signals cannot create its consumer: {e}\n{}", nats.output());
    }

    let klines_as = |ctx: &jetstream::Context| {
        let ctx = ctx.clone();
        async move { ctx.get_stream("KLINES").await.unwrap() }
    };
    let candles_as = |ctx: &jetstream::Context| {
        let ctx = ctx.clone();
        async move { ctx.get_stream("CANDLES").await.unwrap() }
    };
    let pull_durable = |name: &str, filter: &str| pull::Config {
        durable_name: Some(name.into()),
        filter_subject: filter.into(),
        ..Default::default()
    };
    let mut attempts = Vec::new();

    // The producer: no consumer at all on KLINES. A push consumer delivering into
    // candles.closed.… would have the server publish KLINES' messages into CANDLES, past the
    // producer's deny of candles.>.
    let k = klines_as(&producer).await;
    attempts.push(attempt(
        "producer",
        "create a push consumer delivering into candles.closed.binance.BTCUSDT.1m",
        "$JS.API.CONSUMER.CREATE.KLINES.evil",
        async move {
            k.create_consumer(push::Config {
                durable_name: Some("evil".into()),
                deliver_subject: "candles.closed.binance.BTCUSDT.1m".into(),
                ..Default::default()
            })
            .await
        },
    ));
    let k = klines_as(&producer).await;
    attempts.push(attempt(
        "producer",
        "create an ephemeral push consumer delivering into candles.closed.…",
        "$JS.API.CONSUMER.CREATE.KLINES",
        async move {
            k.create_consumer(push::Config {
                deliver_subject: "candles.closed.binance.ETHUSDT.1m".into(),
                ..Default::default()
            })
            .await
        },
    ));
    let k = klines_as(&producer).await;
    let c = pull_durable("scan", "klines.backfill.binance.BTCUSDT.1m");
    attempts.push(attempt(
        "producer",
        "create a pull consumer over one subject",
        "$JS.API.CONSUMER.CREATE.KLINES.scan.klines.backfill.binance.BTCUSDT.1m",
        async move { k.create_consumer(c).await },
    ));
    let k = klines_as(&producer).await;
    let c = pull_durable("pg-sink", "");
    attempts.push(attempt(
        "producer",
        "recreate pg-sink's durable",
        "$JS.API.CONSUMER.CREATE.KLINES.pg-sink",
        async move { k.create_consumer(c).await },
    ));
    attempts.push(attempt(
        "producer",
        "create a durable through the legacy subject",
        "$JS.API.CONSUMER.DURABLE.CREATE.KLINES.evil",
        api_request(
            producer_client.clone(),
            "$JS.API.CONSUMER.DURABLE.CREATE.KLINES.evil".into(),
            serde_json::json!({"stream_name": "KLINES", "config": {
                "durable_name": "evil", "deliver_subject": "candles.closed.binance.BTCUSDT.1m",
                "ack_policy": "none"}}),
        ),
    ));

    // The sinks: their own durable only.
    for (user, ctx, stream, name) in [
        ("pg-sink", &sink, "KLINES", "other"),
        ("pg-sink", &sink, "CANDLES", "signals"),
        ("pg-sink", &sink, "CANDLES", "pg-sink"),
        ("signals", &signals, "CANDLES", "other"),
        ("signals", &signals, "KLINES", "pg-sink"),
        ("signals", &signals, "KLINES", "signals"),
    ] {
        let s = if stream == "KLINES" {
            klines_as(ctx).await
        } else {
            candles_as(ctx).await
        };
        let c = pull_durable(name, "");
        attempts.push(attempt(
            user,
            format!("create consumer {name} on {stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.{name}"),
            async move { s.create_consumer(c).await },
        ));
    }

    // Nobody reads or deletes another role's durable.
    for (user, client, stream, durable) in [
        ("producer", &producer_client, "KLINES", "pg-sink"),
        ("signals", &signals_client, "KLINES", "pg-sink"),
        ("pg-sink", &sink_client, "CANDLES", "signals"),
        ("producer", &producer_client, "CANDLES", "signals"),
    ] {
        let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}");
        attempts.push(attempt(
            user,
            format!("pull from {durable}'s consumer on {stream}"),
            subject.clone(),
            api_request(
                client.clone(),
                subject,
                serde_json::json!({"batch": 10, "expires": 500_000_000}),
            ),
        ));
        let s = if stream == "KLINES" {
            klines_as(&js(client.clone())).await
        } else {
            candles_as(&js(client.clone())).await
        };
        let d = durable.to_owned();
        attempts.push(attempt(
            user,
            format!("delete {durable}'s consumer on {stream}"),
            format!("$JS.API.CONSUMER.DELETE.{stream}.{durable}"),
            async move { s.delete_consumer(&d).await },
        ));
    }
    assert_all_refused(&nats, attempts).await;

    // Nothing was created or delivered: the sinks' durables alone, untouched, and nothing was
    // pushed into CANDLES.
    for (stream, durable) in [("KLINES", "pg-sink"), ("CANDLES", "signals")] {
        let s = ops.get_stream(stream).await.unwrap();
        let names: Vec<String> = s
            .consumer_names()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(names, [durable], "{stream}");
        let info = s.consumer_info(durable).await.unwrap();
        assert_eq!(info.delivered.stream_sequence, 0, "{stream}.{durable}");
        assert_eq!(info.num_pending, 1, "{stream}.{durable}");
    }
    assert_eq!(messages_in(&ops, "CANDLES").await, 1);

    // Each sink reads and acks through its own durable.
    for (ctx, stream, durable, subject) in [
        (
            &sink,
            "KLINES",
            "pg-sink",
            "klines.backfill.binance.BTCUSDT.1m",
        ),
        (
            &signals,
            "CANDLES",
            "signals",
            "candles.closed.binance.BTCUSDT.1m",
        ),
    ] {
        let c = ctx
            .get_stream(stream)
            .await
            .unwrap()
            .get_consumer::<pull::Config>(durable)
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
        assert_eq!(m.subject.as_str(), subject);
        m.double_ack().await.unwrap();
        let info = ops
            .get_stream(stream)
            .await
            .unwrap()
            .consumer_info(durable)
            .await
            .unwrap();
        assert_eq!(
            (info.num_pending, info.num_ack_pending),
            (0, 0),
            "{durable}"
        );
    }

    // Ops manages consumers (klinectl replay deletes and recreates a durable).
    let klines = ops.get_stream("KLINES").await.unwrap();
    klines
        .create_consumer(pull_durable("ops-probe", ""))
        .await
        .unwrap();
    assert!(klines.delete_consumer("ops-probe").await.unwrap().success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_publishes_only_its_own_subjects() {
    let nats = applied_nats().await;
    let ops = js(connect_as(&nats, OPS).await);
    let producer_client = connect_as(&nats, PRODUCER).await;
    let producer = js(producer_client.clone());
    let sink_client = connect_as(&nats, PG_SINK).await;
    let sink = js(sink_client.clone());
    let signals_client = connect_as(&nats, SIGNALS).await;
    let signals = js(signals_client.clone());

    // Their own subjects, yes.
    for (ctx, subject) in [
        (&producer, "klines.backfill.binance.BTCUSDT.1m"),
        (&producer, "klines.ws.binance.BTCUSDT.1m"),
        (&sink, "candles.closed.binance.BTCUSDT.1m"),
        (&sink, "dlq.pg-sink"),
        (&signals, "signals.binance.BTCUSDT.1m"),
        (&signals, "dlq.signals"),
    ] {
        assert!(
            js_publish_ok(ctx, subject).await,
            "{subject}\n{}",
            nats.output()
        );
    }
    // Another role's, no: neither acknowledged nor stored, with or without an ack asked.
    let mut attempts = Vec::new();
    let mut denied = Vec::new();
    for (user, ctx, client, subject) in [
        (
            "producer",
            &producer,
            &producer_client,
            "candles.closed.binance.BTCUSDT.1m",
        ),
        (
            "producer",
            &producer,
            &producer_client,
            "signals.binance.BTCUSDT.1m",
        ),
        ("producer", &producer, &producer_client, "dlq.pg-sink"),
        (
            "pg-sink",
            &sink,
            &sink_client,
            "klines.ws.binance.BTCUSDT.1m",
        ),
        (
            "pg-sink",
            &sink,
            &sink_client,
            "klines.backfill.binance.BTCUSDT.1m",
        ),
        ("pg-sink", &sink, &sink_client, "signals.binance.BTCUSDT.1m"),
        ("pg-sink", &sink, &sink_client, "dlq.signals"),
        (
            "signals",
            &signals,
            &signals_client,
            "klines.ws.binance.BTCUSDT.1m",
        ),
        (
            "signals",
            &signals,
            &signals_client,
            "candles.closed.binance.BTCUSDT.1m",
        ),
        ("signals", &signals, &signals_client, "dlq.pg-sink"),
    ] {
        let c = ctx.clone();
        let s = subject.to_owned();
        attempts.push(attempt(
            user,
            format!("publish {subject}"),
            subject,
            async move { c.publish(s, "x".into()).await?.await },
        ));
        denied.push((client.clone(), subject));
    }
    assert_all_refused(&nats, attempts).await;
    for (client, subject) in denied {
        core_publish(&client, subject).await;
    }

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
    assert!(nats
        .output()
        .contains("Subscription Violation - User \"pg-sink\", Subject \"klines.>\""));

    // What was denied never reached a stream: exactly the allowed messages are there.
    assert_eq!(messages_in(&ops, "KLINES").await, 3);
    assert_eq!(messages_in(&ops, "CANDLES").await, 2);
    assert_eq!(messages_in(&ops, "SIGNALS").await, 1);
    assert_eq!(messages_in(&ops, "DLQ").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_stop_clearly_until_admin_applies_the_streams() {
    let nats = start_authorized_nats();
    let sim = binance_sim::spawn(binance_sim::Config::parse_from([
        "binance-sim",
        "--start-time",
        &T0.to_string(),
        "--symbols",
        "BTCUSDT",
    ]))
    .await
    .unwrap();
    let db = TestDb::fresh().await;
    let (url, rest, ws) = (nats.url(), sim.base_url(), sim.ws_url());
    let nats_flags = |role: (&'static str, &'static str)| {
        [
            "--nats-url".to_owned(),
            url.clone(),
            "--nats-user".into(),
            role.0.into(),
            "--nats-password".into(),
            role.1.into(),
        ]
    };
    let wrong_password = |role: (&'static str, &'static str)| (role.0, "not-the-password");
    let services = [
        (
            "kline-backfill",
            env!("CARGO_BIN_EXE_e2e-kline-backfill"),
            PRODUCER,
            vec![
                "--symbols",
                "BTCUSDT",
                "--timeframes",
                "1h",
                "--days",
                "1",
                "--rest-url",
                &rest,
                "--archive-url",
                &rest,
                "--progress",
                "quiet",
            ],
        ),
        (
            "kline-live",
            env!("CARGO_BIN_EXE_e2e-kline-live"),
            PRODUCER,
            vec![
                "--symbols",
                "BTCUSDT",
                "--timeframes",
                "1m",
                "--rest-url",
                &rest,
                "--ws-url",
                &ws,
                "--metrics-addr",
                "127.0.0.1:0",
            ],
        ),
        (
            "kline-pg-sink",
            env!("CARGO_BIN_EXE_e2e-kline-pg-sink"),
            PG_SINK,
            vec!["--database-url", &db.url, "--metrics-addr", "off"],
        ),
        (
            "kline-signals",
            env!("CARGO_BIN_EXE_e2e-kline-signals"),
            SIGNALS,
            vec!["--database-url", &db.url, "--metrics-addr", "off"],
        ),
    ];
    // A mistyped password is not waited out as an unreachable server would be: each service
    // exits at once, saying why (and never what it was given).
    let runs = services.iter().map(|(name, path, role, args)| {
        let mut all: Vec<String> = nats_flags(wrong_password(*role)).into();
        all.extend(args.iter().map(|a| (*a).to_owned()));
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            (*name, run_process(name, path, &all).await)
        }
    });
    for (name, (status, out)) in futures::future::join_all(runs).await {
        assert!(
            !status.success(),
            "{name} ran with a wrong password:\n{out}"
        );
        assert!(
            out.contains("authorization violation") && !out.contains("not-the-password"),
            "{name} did not say why:\n{out}"
        );
    }

    let runs = services.iter().map(|(name, path, role, args)| {
        let mut all: Vec<String> = nats_flags(*role).into();
        all.extend(args.iter().map(|a| (*a).to_owned()));
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            (*name, role.0, run_process(name, path, &all).await)
        }
    });
    for (name, user, (status, out)) in futures::future::join_all(runs).await {
        assert!(
            !status.success(),
            "{name} started without the streams:\n{out}"
        );
        assert!(
            out.contains("does not exist") && out.contains("`klinectl streams apply`"),
            "{name} did not say what to do:\n{out}"
        );
        let line = format!("Publish Violation - User \"{user}\", Subject \"$JS.API.STREAM.CREATE.");
        assert!(
            nats.output().contains(&line),
            "{name}: no `{line}`\n{}",
            nats.output()
        );
    }
    let ops = js(connect_as(&nats, OPS).await);
    for name in STREAMS {
        assert!(ops.get_stream(name).await.is_err(), "{name} was created");
    }

    // The operators' role may not apply them either; admin may.
    let (status, out) = streams_apply(&nats, OPS).await;
    assert!(!status.success(), "{out}");
    assert!(out.contains("the admin user"), "{out}");
    assert!(nats
        .output()
        .contains("Publish Violation - User \"ops\", Subject \"$JS.API.STREAM.UPDATE.KLINES\""));
    let (status, out) = streams_apply(&nats, ADMIN).await;
    assert!(status.success(), "{out}");
    assert_eq!(out.matches(" created ").count(), 4, "{out}");
    for name in STREAMS {
        assert!(ops.get_stream(name).await.is_ok(), "{name}");
    }

    // With the streams there, a login PostgreSQL refuses ends the sinks at once, saying why.
    let (_, at) = db.url.split_once('@').unwrap();
    let refused_db = format!("postgres://klinebus_no_such_role@{at}");
    let runs = services[2..].iter().map(|(name, path, role, _)| {
        let mut all: Vec<String> = nats_flags(*role).into();
        all.extend(["--database-url".into(), refused_db.clone()]);
        all.extend(["--metrics-addr".into(), "off".into()]);
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            (*name, run_process(name, path, &all).await)
        }
    });
    for (name, (status, out)) in futures::future::join_all(runs).await {
        assert!(!status.success(), "{name} ran on a refused login:\n{out}");
        assert!(
            out.contains("role \"klinebus_no_such_role\" does not exist"),
            "{name} did not say why:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binaries_run_with_their_own_role_only() {
    let nats = applied_nats().await;
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
    // Second run resumes from the stream (message gets, no consumer).
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
    // … and resets a sink's durable (replay: consumer delete and create).
    let replay = klinectl::run(klinectl::cli::Cli::parse_from([
        "klinectl",
        "--nats-url",
        &url,
        "--nats-user",
        OPS.0,
        "--nats-password",
        OPS.1,
        "--database-url",
        &db.url,
        "replay",
        "--consumer",
        "pg-sink",
        "--from",
        "all",
    ]))
    .await
    .unwrap();
    assert!(replay.output.contains("reset"), "{}", replay.output);

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
