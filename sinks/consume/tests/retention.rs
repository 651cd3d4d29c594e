//! Retention headroom on a real JetStream: a stream with a small `max_age` and `max_bytes`, a
//! durable that does not ack. The headroom falls as the unacked data ages and fills the stream,
//! counts from the ack floor once part is acked, and is back at 1 once everything is acked —
//! read from the pull loop's exported gauges and from `consumer_backlog`.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, stream, AckKind, Context, Message};
use futures::StreamExt;
use klinebus_consume::{
    consumer_backlog, ConsumeOptions, Consumer, Delivered, Handler, HandlerError, Poison, Retry,
};
use klinebus_schemas::bus::consumer_config;
use klinebus_schemas::streams::ConsumerSpec;
use klinebus_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

/// A stream of `r.<n>` subjects with these limits.
async fn stream(js: &Context, name: &str, max_age: Duration, max_bytes: i64) {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        max_age,
        max_bytes,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Publishes `n` messages of 1000 bytes (same-length subjects: every message stores alike).
async fn publish(js: &Context, name: &str, n: usize) {
    for i in 0..n {
        js.publish(format!("{name}.{:04}", i % 10_000), vec![b'x'; 1000].into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

async fn stream_state(js: &Context, name: &str) -> stream::State {
    js.get_stream(name)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
}

fn spec(stream: &str, durable: &str) -> ConsumerSpec {
    ConsumerSpec {
        stream: stream.into(),
        durable: durable.into(),
        filter_subject: format!("{stream}.>"),
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
    }
}

/// Fails (retryably) until `open`, then takes everything: a sink whose database is away.
struct Gate {
    open: Arc<AtomicBool>,
}

impl Handler for Gate {
    type Item = ();
    type Committed = ();

    fn decode(&self, _: &Message) -> Result<(), Poison> {
        Ok(())
    }

    async fn handle(&mut self, _: &[Delivered<()>]) -> Result<(), HandlerError> {
        if self.open.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(HandlerError::Retryable("database away".into()))
        }
    }
}

/// The value of the series `name` with exactly these labels in the Prometheus text.
fn gauge(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    want.sort();
    text.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{')?;
        let mut got: Vec<String> = rest
            .strip_suffix('}')?
            .split(',')
            .map(str::to_owned)
            .collect();
        got.sort();
        (n == name && got == want).then(|| value.parse().unwrap())
    })
}

fn render() -> String {
    klinebus_svc::metrics_recorder().unwrap().render()
}

/// The pull loop's exported headroom of one durable.
struct Scrape {
    stream: &'static str,
    durable: &'static str,
}

impl Scrape {
    fn ratio(&self, limit: &str) -> Option<f64> {
        let labels = [
            ("stream", self.stream),
            ("consumer", self.durable),
            ("limit", limit),
        ];
        gauge(&render(), "klinebus_sink_retention_headroom_ratio", &labels)
    }

    fn left(&self, unit: &str) -> Option<f64> {
        let labels = [("stream", self.stream), ("consumer", self.durable)];
        let name = format!("klinebus_sink_retention_headroom_{unit}");
        gauge(&render(), &name, &labels)
    }

    /// Waits until the exported gauges satisfy `ok` (the loop refreshes them every 50 ms).
    async fn until(&self, what: &str, ok: impl Fn(&Self) -> bool) {
        wait_until(what, || ok(self)).await;
    }
}

async fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: {}", render());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exported_headroom_falls_as_unacked_data_ages_and_fills_and_is_1_once_acked() {
    const MAX_AGE: Duration = Duration::from_secs(12);
    const MAX_BYTES: i64 = 64_000;
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    stream(&js, "HR", MAX_AGE, MAX_BYTES).await;
    let scrape = Scrape {
        stream: "HR",
        durable: "stuck",
    };
    let mut opts = ConsumeOptions::new(spec("HR", "stuck"));
    opts.lag_interval = Duration::from_millis(50);
    opts.retry = Retry::InOrder;
    opts.backoff_min = Duration::from_millis(20);
    opts.backoff_max = Duration::from_millis(100);
    let open = Arc::new(AtomicBool::new(false));
    let mut gate = Gate { open: open.clone() };
    let stop = CancellationToken::new();
    let consumer = Consumer::new(js.clone(), opts);
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move { consumer.run(&mut gate, stop).await })
    };

    // Nothing stored: nothing at risk, the whole budget left.
    scrape
        .until("empty stream", |s| {
            s.ratio("age") == Some(1.0) && s.ratio("bytes") == Some(1.0)
        })
        .await;
    assert_eq!(scrape.left("seconds"), Some(12.0));
    assert_eq!(scrape.left("bytes"), Some(64_000.0));

    // 16 messages the sink cannot commit: all of the stream is unacked, so the estimate is
    // the stream's exact size.
    let published = Instant::now();
    publish(&js, "HR", 16).await;
    let state = stream_state(&js, "HR").await;
    let expected = 1.0 - state.bytes as f64 / MAX_BYTES as f64;
    assert!(expected < 0.8 && expected > 0.7, "{state:?}");
    scrape
        .until("bytes after 16 messages", |s| {
            s.ratio("bytes")
                .is_some_and(|r| (r - expected).abs() < 1e-9)
        })
        .await;
    assert_eq!(
        scrape.left("bytes"),
        Some((MAX_BYTES as u64 - state.bytes) as f64)
    );

    // 40 more: the unacked part is close to the byte limit.
    publish(&js, "HR", 40).await;
    let state = stream_state(&js, "HR").await;
    assert_eq!(state.messages, 56, "nothing discarded yet");
    let expected = 1.0 - state.bytes as f64 / MAX_BYTES as f64;
    assert!(expected < 0.15 && expected > 0.0, "{state:?}");
    scrape
        .until("bytes after 56 messages", |s| {
            s.ratio("bytes")
                .is_some_and(|r| (r - expected).abs() < 1e-9)
        })
        .await;

    // The oldest unacked message ages towards max_age: the age headroom follows
    // 1 − age / max_age (the first message was stored after `published`, at most the time
    // the publishes took later).
    let age_ratio = |s: &Scrape| s.ratio("age").unwrap();
    let early = age_ratio(&scrape);
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(published.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = age_ratio(&scrape);
    let at = published.elapsed().as_secs_f64();
    let bound = 1.0 - at / MAX_AGE.as_secs_f64();
    assert!(late < early - 0.3, "early {early}, late {late}");
    assert!(
        late <= bound + 0.1 && late >= bound - 0.1,
        "age headroom {late} after {at:.1} s of {MAX_AGE:?}"
    );
    assert!(late < 0.4, "{late}");
    let left = scrape.left("seconds").unwrap();
    assert!((left - late * MAX_AGE.as_secs_f64()).abs() < 0.5, "{left}");
    assert_eq!(
        stream_state(&js, "HR").await.messages,
        56,
        "nothing expired"
    );

    // The database is back: the sink commits and acks everything, nothing is at risk.
    open.store(true, Ordering::SeqCst);
    scrape
        .until("after the acks", |s| {
            s.ratio("age") == Some(1.0) && s.ratio("bytes") == Some(1.0)
        })
        .await;
    assert_eq!(scrape.left("seconds"), Some(12.0));
    assert_eq!(scrape.left("bytes"), Some(64_000.0));
    stop.cancel();
    run.await.unwrap().unwrap();
}

/// The next `n` messages of a pull consumer.
async fn pull_next(consumer: &PullConsumer, n: usize) -> Vec<Message> {
    let mut batch = consumer
        .fetch()
        .max_messages(n)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(m) = batch.next().await {
        got.push(m.unwrap());
    }
    assert_eq!(got.len(), n);
    got
}

#[tokio::test]
async fn headroom_counts_from_the_ack_floor_and_unlimited_limits_leave_it_at_1() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    // No age limit, 100 kB.
    stream(&js, "PA", Duration::ZERO, 100_000).await;
    let s = js.get_stream("PA").await.unwrap();
    let consumer = s
        .create_consumer(consumer_config(&spec("PA", "part"), DeliverPolicy::All))
        .await
        .unwrap();
    publish(&js, "PA", 40).await;

    let b = consumer_backlog(&js, "PA", "part").await.unwrap();
    let state = stream_state(&js, "PA").await;
    assert_eq!(b.lag.pending, 40);
    assert_eq!(b.headroom.max_age, None);
    assert_eq!(b.headroom.age_ratio(), 1.0, "no age limit");
    assert_eq!(b.headroom.age_left(), None);
    assert!(b.headroom.oldest_unacked_age.unwrap() < Duration::from_secs(5));
    assert_eq!(b.headroom.unacked_bytes, state.bytes);
    assert_eq!(b.headroom.max_bytes, Some(100_000));
    assert_eq!(
        b.headroom.bytes_ratio(),
        1.0 - state.bytes as f64 / 100_000.0
    );

    // The first 10 acked (double acks: the floor has moved when they return), the 15th too:
    // the floor stops at 10, so 30 of the 40 equal messages count.
    let msgs = pull_next(&consumer, 15).await;
    for m in &msgs[..10] {
        m.double_ack().await.unwrap();
    }
    msgs[14].double_ack().await.unwrap();
    let b = consumer_backlog(&js, "PA", "part").await.unwrap();
    assert_eq!(b.lag.ack_pending, 4);
    assert_eq!(b.headroom.unacked_bytes, state.bytes * 30 / 40);
    assert_eq!(
        b.headroom.bytes_left(),
        Some(100_000 - state.bytes * 30 / 40)
    );

    // A nak does not ack: the floor stays.
    msgs[10].ack_with(AckKind::Nak(None)).await.unwrap();
    let again = consumer_backlog(&js, "PA", "part").await.unwrap();
    assert_eq!(again.headroom.unacked_bytes, state.bytes * 30 / 40);

    // Everything acked: nothing at risk.
    for m in &msgs[11..14] {
        m.double_ack().await.unwrap();
    }
    let rest = pull_next(&consumer, 26).await;
    for m in &rest {
        m.double_ack().await.unwrap();
    }
    let b = consumer_backlog(&js, "PA", "part").await.unwrap();
    assert!(b.lag.is_caught_up(), "{:?}", b.lag);
    assert_eq!(b.headroom.oldest_unacked_age, None);
    assert_eq!(b.headroom.unacked_bytes, 0);
    assert_eq!(
        (b.headroom.age_ratio(), b.headroom.bytes_ratio()),
        (1.0, 1.0)
    );
}

#[tokio::test]
async fn without_the_message_get_permission_the_lag_is_still_exported() {
    let config = r#"
jetstream {
  store_dir: "x"
}
authorization {
  users = [
    { user: admin, password: admin }
    { user: sink, password: sink, permissions: {
        publish: { allow: [">"], deny: ["$JS.API.STREAM.MSG.GET.>"] }
        subscribe: { allow: ["_INBOX.>"] } } }
  ]
}
"#;
    let nats = NatsServer::start_with_config(config, &[], &[]);
    let connect = |user: &'static str| {
        let url = nats.url();
        async move {
            async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
                .connect(url)
                .await
                .unwrap()
        }
    };
    let admin = jetstream::new(connect("admin").await);
    stream(&admin, "DN", Duration::from_secs(60), 1 << 20).await;
    // A denied request gets no reply: a short timeout keeps the test short.
    let sink = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(connect("sink").await);
    let mut spec = spec("DN", "denied");
    // At most 5 delivered: the rest stays pending, so the lag follows the publishes.
    spec.max_ack_pending = 5;
    let mut opts = ConsumeOptions::new(spec);
    opts.lag_interval = Duration::from_millis(50);
    opts.retry = Retry::InOrder;
    let mut gate = Gate {
        open: Arc::new(AtomicBool::new(false)),
    };
    let stop = CancellationToken::new();
    let consumer = Consumer::new(sink, opts);
    let run = {
        let stop = stop.clone();
        tokio::spawn(async move { consumer.run(&mut gate, stop).await })
    };
    let lag = || {
        gauge(
            &render(),
            "klinebus_sink_consumer_lag",
            &[("consumer", "denied")],
        )
    };
    let probe_errors = || {
        let labels = [("consumer", "denied"), ("kind", "probe")];
        gauge(&render(), "klinebus_sink_errors_total", &labels).unwrap_or(0.0)
    };
    publish(&admin, "DN", 10).await;
    wait_until("the first headroom failure", || probe_errors() >= 1.0).await;
    wait_until("lag of 10 messages", || lag() == Some(5.0)).await;
    publish(&admin, "DN", 10).await;
    wait_until("lag of 20 messages", || lag() == Some(15.0)).await;
    // Never a headroom value it could not know.
    let scrape = Scrape {
        stream: "DN",
        durable: "denied",
    };
    assert_eq!(scrape.ratio("age"), None);
    assert_eq!(scrape.left("bytes"), None);
    // It was the message get that was refused, and the server logged it.
    let denied = r#"Violation - User "sink", Subject "$JS.API.STREAM.MSG.GET.DN""#;
    assert!(nats.output().contains(denied), "{}", nats.output());
    stop.cancel();
    run.await.unwrap().unwrap();
}
