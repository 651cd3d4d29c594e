//! A consumer on a three-node cluster keeps pulling when its leader node is lost, and when two
//! of three nodes are lost and come back: the next message is handled well before the last pull
//! request's expiry (35 s), as soon as the consumer has a leader again. nats-server 2.9.10 ends
//! a request the lost leader held with "409 Leadership Change", and a consumer that regains a
//! leader keeps node-1's waiting request; where a server does neither, the missed heartbeat
//! makes the consumer ask again (`batch::is_terminal`).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::Message;
use klinebus_consume::{decode_closed, ConsumeOptions, Consumer, Delivered, Handler, HandlerError};
use klinebus_schemas::bus;
use klinebus_schemas::streams::{ConsumerSpec, Retention, CANDLES_STREAM};
use klinebus_schemas::KlineEvent;
use klinebus_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

mod common;
use common::{candle, MINUTE, START};

const DURABLE: &str = "leader-change";

/// Records the open time of every candle handled.
struct Recorder(Arc<Mutex<Vec<i64>>>);

impl Handler for Recorder {
    type Item = Vec<KlineEvent>;
    type Committed = ();

    fn decode(&self, msg: &Message) -> Result<Vec<KlineEvent>, klinebus_consume::Poison> {
        decode_closed(msg.subject.as_str(), msg.headers.as_ref(), &msg.payload)
    }

    async fn handle(&mut self, batch: &[Delivered<Vec<KlineEvent>>]) -> Result<(), HandlerError> {
        let mut seen = self.0.lock().unwrap();
        seen.extend(
            batch
                .iter()
                .flat_map(|d| d.event.iter().map(|e| e.open_time)),
        );
        Ok(())
    }
}

async fn publish(js: &async_nats::jetstream::Context, i: i64) {
    let c = candle(i);
    bus::publish_closed(js, &[&c])
        .await
        .unwrap()
        .unwrap()
        .await
        .unwrap();
}

async fn consumer_leader(js: &async_nats::jetstream::Context) -> Option<String> {
    let s = js.get_stream(CANDLES_STREAM).await.ok()?;
    let mut c = s
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(DURABLE)
        .await
        .ok()?;
    let info = c.info().await.ok()?;
    info.cluster.clone()?.leader.filter(|l| !l.is_empty())
}

/// Waits (up to `within`) until `seen` holds `n` candles; how long that took.
async fn handled(seen: &Mutex<Vec<i64>>, n: usize, within: Duration) -> Duration {
    let started = Instant::now();
    while seen.lock().unwrap().len() < n {
        assert!(
            started.elapsed() < within,
            "{n} candles not handled within {within:?}: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// A consumer running on a three-node cluster (all through node-1, so that other nodes can be
/// lost without the connection), its first candle handled.
struct Running {
    nodes: Vec<NatsServer>,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    seen: Arc<Mutex<Vec<i64>>>,
    stop: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), klinebus_consume::ConsumeError>>,
}

async fn running() -> Running {
    let nodes = NatsServer::try_start_cluster(3).unwrap_or_else(|e| panic!("{e}"));
    let client = bus::connect(&bus::BusOptions::new(nodes[0].url(), "leader-change"))
        .await
        .unwrap();
    let js = bus::jetstream(client.clone(), 1024);
    let retention = Retention {
        replicas: 3,
        ..Retention::default()
    };
    bus::ensure_streams(&js, &retention).await.unwrap();
    let spec = ConsumerSpec {
        stream: CANDLES_STREAM.into(),
        durable: DURABLE.into(),
        filter_subject: "candles.closed.>".into(),
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
    };
    let mut opts = ConsumeOptions::new(spec);
    opts.flush_interval = Duration::from_millis(20);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let run = {
        let (js, seen, stop) = (js.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            let mut handler = Recorder(seen);
            Consumer::new(js, opts).run(&mut handler, stop).await
        })
    };
    publish(&js, 0).await;
    handled(&seen, 1, Duration::from_secs(30)).await;
    Running {
        nodes,
        client,
        js,
        seen,
        stop,
        run,
    }
}

impl Running {
    async fn finish(self, candles: i64) {
        let want: Vec<i64> = (0..candles).map(|i| START + i * MINUTE).collect();
        assert_eq!(*self.seen.lock().unwrap(), want);
        self.stop.cancel();
        self.run.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulling_goes_on_soon_after_the_consumer_leader_is_lost() {
    let mut r = running().await;
    // The consumer led by another node than node-1.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let leader = consumer_leader(&r.js).await;
        match leader.as_deref() {
            Some("node-1") => {
                r.client
                    .request(
                        format!("$JS.API.CONSUMER.LEADER.STEPDOWN.{CANDLES_STREAM}.{DURABLE}"),
                        "".into(),
                    )
                    .await
                    .unwrap();
            }
            Some(other) => break other.to_owned(),
            None => {}
        }
        assert!(Instant::now() < deadline, "the consumer stays on node-1");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Its pull request waits there: let one heartbeat pass, then lose the node.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let victim: usize = leader.trim_start_matches("node-").parse().unwrap();
    r.nodes[victim - 1].stop();
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer_leader(&r.js).await.is_none_or(|l| l == leader) {
        assert!(Instant::now() < deadline, "no new consumer leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elected = killed.elapsed();
    publish(&r.js, 1).await;
    // A missed heartbeat is noticed 10 s (two of 5 s) after the last one; the lost request
    // would have been replaced only after 35 s.
    let took = handled(&r.seen, 2, Duration::from_secs(20)).await;
    eprintln!(
        "{leader} lost: a new consumer leader after {:.1} s, the next candle handled {:.1} s after its publish",
        elected.as_secs_f64(),
        took.as_secs_f64()
    );
    r.finish(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulling_goes_on_soon_after_quorum_comes_back() {
    let mut r = running().await;
    // Two of three nodes lost: the consumer has no leader, its pull requests no responder.
    r.nodes[1].stop();
    r.nodes[2].stop();
    tokio::time::sleep(Duration::from_secs(12)).await;
    r.nodes[1].start_again();
    r.nodes[2].start_again();
    let back = Instant::now();
    let deadline = back + Duration::from_secs(120);
    while consumer_leader(&r.js).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "no consumer leader after the nodes came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elected = back.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = candle(1);
        if let Ok(Some(ack)) = bus::publish_closed(&r.js, &[&c]).await {
            if ack.await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the stream takes no publish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let published = back.elapsed();
    // Without asking again, the consumer would have waited for its last request's expiry
    // (35 s after it was sent) or five missed heartbeats (50 s).
    let took = handled(&r.seen, 2, Duration::from_secs(20)).await;
    eprintln!(
        "quorum back: a consumer leader after {:.1} s, the stream took a publish after {:.1} s, handled {:.1} s after that",
        elected.as_secs_f64(),
        published.as_secs_f64(),
        took.as_secs_f64()
    );
    r.finish(2).await;
}
