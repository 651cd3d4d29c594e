//! The three-node JetStream cluster of `compose/nats/` as local processes: the real config
//! files and authorization, with only the cluster addresses rewritten to this machine's ports.

use std::time::{Duration, Instant};

use klinebus_testkit::NatsServer;

use super::{read, repo, sleep_ms};

/// Each role's password, as compose's secrets would set it (the server reads them from env).
pub const PRODUCER: (&str, &str) = ("producer", "producer-test-password");
pub const PG_SINK: (&str, &str) = ("pg-sink", "pg-sink-test-password");
pub const SIGNALS: (&str, &str) = ("signals", "signals-test-password");
pub const OPS: (&str, &str) = ("ops", "ops-test-password");
pub const ADMIN: (&str, &str) = ("admin", "admin-test-password");

const SERVER_ENV: [(&str, &str); 5] = [
    ("KLINEBUS_NATS_PRODUCER_PASSWORD", PRODUCER.1),
    ("KLINEBUS_NATS_PG_SINK_PASSWORD", PG_SINK.1),
    ("KLINEBUS_NATS_SIGNALS_PASSWORD", SIGNALS.1),
    ("KLINEBUS_NATS_OPS_PASSWORD", OPS.1),
    ("KLINEBUS_NATS_ADMIN_PASSWORD", ADMIN.1),
];

/// The cluster's files, with a route port of this machine for each node.
pub struct ClusterFiles {
    routes: Vec<u16>,
    auth: String,
}

impl ClusterFiles {
    pub fn new() -> Self {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        Self {
            routes: (0..3).map(|_| free()).collect(),
            auth: read(&repo().join("compose/nats/auth.conf")),
        }
    }

    /// Starts node `i` (1 to 3) from `compose/nats/cluster-<i>.conf`.
    pub fn start(&self, i: usize) -> NatsServer {
        let mut text = read(&repo().join(format!("compose/nats/cluster-{i}.conf")));
        text = text.replace(
            "listen: 0.0.0.0:6222",
            &format!("listen: 127.0.0.1:{}", self.routes[i - 1]),
        );
        for (j, port) in self.routes.iter().enumerate() {
            text = text.replace(
                &format!("nats://nats-{}:6222", j + 1),
                &format!("nats://127.0.0.1:{port}"),
            );
        }
        NatsServer::start_with_config(&text, &[("auth.conf", &self.auth)], &SERVER_ENV)
    }
}

/// Waits until every node passes the compose health check (it sees a meta leader).
pub async fn wait_healthy(nodes: &[NatsServer], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !nodes.iter().all(|n| n.health_status() == 200) {
        assert!(
            Instant::now() < deadline,
            "the nodes never became healthy\n{}",
            nodes[0].output()
        );
        sleep_ms(200).await;
    }
}

/// The three nodes, started and healthy.
pub struct Cluster {
    pub nodes: Vec<NatsServer>,
}

impl Cluster {
    pub async fn start() -> Self {
        let files = ClusterFiles::new();
        let nodes: Vec<_> = (1..=3).map(|i| files.start(i)).collect();
        wait_healthy(&nodes, Duration::from_secs(30)).await;
        Self { nodes }
    }

    /// Every node's URL, comma-separated: what a client is given.
    pub fn urls(&self) -> String {
        let urls: Vec<_> = self.nodes.iter().map(NatsServer::url).collect();
        urls.join(",")
    }

    /// The node whose `server_name` is `name` (`nats-1` … `nats-3`, from the config files).
    pub fn index_of(&self, name: &str) -> usize {
        let n: usize = name
            .strip_prefix("nats-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a node of this cluster: {name}"));
        n - 1
    }

    /// A JetStream context of `role` on every node (it fails over between them).
    pub async fn jetstream(&self, role: (&str, &str)) -> async_nats::jetstream::Context {
        let mut opts = klinebus_schemas::bus::BusOptions::new(self.urls(), "e2e-cluster");
        opts.user = Some(role.0.into());
        opts.password = Some(role.1.into());
        let client = klinebus_schemas::bus::connect(&opts).await.unwrap();
        async_nats::jetstream::new(client)
    }
}

impl Cluster {
    /// What to look at when the flow stalls: each stream's and consumer's leader, replicas and
    /// counts as the cluster reports them (within 2 s each), and the end of every node's log.
    pub async fn state(&self, js: &async_nats::jetstream::Context) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for name in ["KLINES", "CANDLES", "SIGNALS", "DLQ"] {
            let info = tokio::time::timeout(Duration::from_secs(2), async {
                let mut s = js.get_stream(name).await.ok()?;
                let info = s.info().await.ok()?.clone();
                let mut consumers = Vec::new();
                for durable in ["pg-sink", "signals"] {
                    if let Ok(c) = s.consumer_info(durable).await {
                        consumers.push(c.clone());
                    }
                }
                Some((info, consumers))
            })
            .await
            .ok()
            .flatten();
            let Some((info, consumers)) = info else {
                let _ = writeln!(out, "stream {name}: no answer");
                continue;
            };
            let _ = writeln!(
                out,
                "stream {name}: last_seq {} cluster {:?}",
                info.state.last_sequence, info.cluster
            );
            for c in consumers {
                let _ = writeln!(
                    out,
                    "  consumer {}: pending {} ack_pending {} waiting {} delivered {} ack_floor {} cluster {:?}",
                    c.name,
                    c.num_pending,
                    c.num_ack_pending,
                    c.num_waiting,
                    c.delivered.stream_sequence,
                    c.ack_floor.stream_sequence,
                    c.cluster
                );
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let log = node.output();
            let lines: Vec<&str> = log.lines().collect();
            let _ = writeln!(out, "--- nats-{} (last 30 log lines)", i + 1);
            for l in &lines[lines.len().saturating_sub(30)..] {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

/// The node leading `stream` now, by its `server_name`; `None` while it has no leader (or its
/// info cannot be had: during an election).
pub async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<String> {
    let mut s = js.get_stream(stream).await.ok()?;
    let info = s.info().await.ok()?;
    info.cluster
        .clone()
        .and_then(|c| c.leader)
        .filter(|l| !l.is_empty())
}
