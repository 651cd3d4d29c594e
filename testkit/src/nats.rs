//! A private nats-server with JetStream per test (see [`NatsServer`]).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, wait_for_port, SetupError, START_HINT};

/// A private nats-server with JetStream, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    extra_args: Vec<String>,
    config: Option<ConfigRun>,
}

/// How a server started from a config file is run (see [`NatsServer::start_with_config`]).
struct ConfigRun {
    /// The written config file.
    path: PathBuf,
    /// Its monitoring port (`-m`).
    monitor_port: u16,
    /// Added to the server's environment.
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port. Panics with [`START_HINT`] if it cannot.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// [`start`](Self::start) with an error instead of a panic, for programs (the benchmarks).
    pub fn try_start() -> Result<Self, SetupError> {
        let store = tempfile::tempdir()
            .map_err(|e| SetupError(format!("cannot create a temp dir for nats-server: {e}")))?;
        let mut s = Self {
            child: None,
            port: free_port(),
            store,
            extra_args: Vec::new(),
            config: None,
        };
        s.start_server()?;
        Ok(s)
    }

    /// Starts it with extra command-line arguments (e.g. `--user u --pass p`).
    pub fn start_with_args(extra: &[&str]) -> Self {
        let store = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temp dir for nats-server: {e}"),
        };
        let mut s = Self {
            child: None,
            port: free_port(),
            store,
            extra_args: extra.iter().map(|s| (*s).to_owned()).collect(),
            config: None,
        };
        s.spawn();
        s
    }

    /// Starts `nats-server -c` with a configuration of the caller's (e.g. a deployment's real
    /// config, to test its authorization). `config` is the file's text; `files` are written next
    /// to it as (name, text) for its `include`s; `env` is added to the server's environment (a
    /// config may refer to `$VARIABLES`). Every `store_dir:` line is replaced by this server's
    /// temporary store; the listen address and port come from the command line (127.0.0.1 and a
    /// free port, overriding the file's), and so does the monitoring port (a free one:
    /// [`NatsServer::monitor_url`]). Panics, with the server's output, if it does not start.
    pub fn start_with_config(config: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Self {
        match Self::try_start_with_config(config, files, env) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`start_with_config`](Self::start_with_config) with an error instead of a panic.
    pub fn try_start_with_config(
        config: &str,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Result<Self, SetupError> {
        let store = tempfile::tempdir()
            .map_err(|e| SetupError(format!("cannot create a temp dir for nats-server: {e}")))?;
        let dir = store.path().join("conf");
        let js = store.path().join("js");
        let text: String = config
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("store_dir:") {
                    format!("  store_dir: {:?}\n", js.display().to_string())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let path = dir.join("nats.conf");
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, text))
            .and_then(|()| {
                files
                    .iter()
                    .try_for_each(|(name, body)| std::fs::write(dir.join(name), body))
            });
        if let Err(e) = written {
            return Err(SetupError(format!(
                "cannot write the nats-server config into {}: {e}",
                dir.display()
            )));
        }
        let mut s = Self {
            child: None,
            port: free_port(),
            store,
            extra_args: Vec::new(),
            config: Some(ConfigRun {
                path,
                monitor_port: free_port(),
                env: env
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            }),
        };
        s.start_server()?;
        Ok(s)
    }

    /// A cluster of `n` nodes on loopback (`server_name` `node-1` …, JetStream on each), started
    /// and with a JetStream meta leader: streams made on it may have up to `n` replicas.
    pub fn try_start_cluster(n: usize) -> Result<Vec<Self>, SetupError> {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let list: Vec<String> = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let nodes = routes
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let config = format!(
                    "server_name: node-{}\njetstream {{\n  store_dir: \"x\"\n}}\n\
                     cluster {{\n  name: testkit\n  listen: 127.0.0.1:{port}\n  routes: [{}]\n}}\n",
                    i + 1,
                    list.join(", ")
                );
                Self::try_start_with_config(&config, &[], &[])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nodes.iter().all(|n| n.health_status() == 200) {
            if Instant::now() > deadline {
                return Err(SetupError(format!(
                    "the {n}-node nats cluster found no meta leader in 30 s; node 1 said:\n{}",
                    nodes[0].output()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(nodes)
    }

    /// The HTTP status of the monitoring endpoint's JetStream health check
    /// (`/healthz?js-server-only=true`: 200 once the server sees a meta leader; what compose's
    /// health check asks); 0 when nothing answers (the server is down, or has no monitoring
    /// port: only servers started from a config have one).
    pub fn health_status(&self) -> u16 {
        use std::io::{Read, Write};
        let Some(c) = &self.config else {
            return 0;
        };
        let host = format!("127.0.0.1:{}", c.monitor_port);
        let Ok(mut conn) = std::net::TcpStream::connect(&host) else {
            return 0;
        };
        let asked = write!(
            conn,
            "GET /healthz?js-server-only=true HTTP/1.0\r\nHost: {host}\r\n\r\n"
        );
        let mut answer = String::new();
        if asked.is_err() || conn.read_to_string(&mut answer).is_err() {
            return 0;
        }
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// What the server printed so far (errors such as permission violations).
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.store.path().join("nats-server.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT` of the monitoring endpoint (servers started from a config).
    pub fn monitor_url(&self) -> Option<String> {
        self.config
            .as_ref()
            .map(|c| format!("http://127.0.0.1:{}", c.monitor_port))
    }

    /// [`start_server`](Self::start_server), panicking on failure.
    fn spawn(&mut self) {
        if let Err(e) = self.start_server() {
            panic!("{e}");
        }
    }

    /// Starts the server, on new free ports if the chosen ones were taken meanwhile (another
    /// process may grab a "free" port between our probe and the server's bind).
    fn start_server(&mut self) -> Result<(), SetupError> {
        let mut attempt = 1;
        loop {
            match self.try_spawn() {
                Ok(()) => return Ok(()),
                Err(Spawn::Exited(output))
                    if attempt < 5 && output.contains("address already in use") =>
                {
                    self.port = free_port();
                    if let Some(c) = &mut self.config {
                        c.monitor_port = free_port();
                    }
                    attempt += 1;
                }
                Err(Spawn::Exited(output)) => {
                    return Err(SetupError(format!(
                        "nats-server did not start on port {}; {START_HINT}; its output:\n{output}",
                        self.port
                    )))
                }
                Err(Spawn::Setup(e)) => return Err(e),
            }
        }
    }

    /// One start: ready once its own log says so (a listening port alone could be another
    /// process's); `Err(Spawn::Exited(output))` if it exited or never got ready.
    fn try_spawn(&mut self) -> Result<(), Spawn> {
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let mut cmd = Command::new(&bin);
        let port = self.port.to_string();
        let log = self.store.path().join("nats-server.log");
        let offset = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let stderr = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            Ok(f) => Stdio::from(f),
            Err(e) => {
                let msg = format!("cannot create {}: {e}", log.display());
                return Err(Spawn::Setup(SetupError(msg)));
            }
        };
        match &self.config {
            None => {
                cmd.args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
                    .arg(self.store.path())
                    .args(&self.extra_args);
            }
            Some(c) => {
                cmd.arg("-c")
                    .arg(&c.path)
                    .args(["-a", "127.0.0.1", "-p", &port, "-m"])
                    .arg(c.monitor_port.to_string())
                    .envs(c.env.iter().map(|(k, v)| (k, v)));
            }
        }
        let child = cmd.stdout(Stdio::null()).stderr(stderr).spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start {bin}: {e}; {START_HINT}");
                return Err(Spawn::Setup(SetupError(msg)));
            }
        };
        let since_start = || {
            std::fs::read(&log)
                .map(|b| String::from_utf8_lossy(b.get(offset..).unwrap_or_default()).into_owned())
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = since_start();
            if out.contains("Server is ready") && wait_for_port(self.port, Duration::from_secs(1)) {
                self.child = Some(child);
                return Ok(());
            }
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Spawn::Exited(since_start()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The store directory (survives restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.store.path().to_owned()
    }

    /// Kills the server (SIGKILL: no graceful flush, like a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again after [`stop`](Self::stop), on the same port and store.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

/// Why one start of nats-server failed.
enum Spawn {
    /// It exited or never got ready; what it printed.
    Exited(String),
    /// It could not even be started.
    Setup(SetupError),
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The payload of every message `stream` holds on `subject` (wildcards allowed), in stream
/// order, read with an ordered consumer; empty if the stream holds nothing there.
pub async fn stored_payloads(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
) -> Vec<bytes::Bytes> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    use futures::StreamExt as _;

    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        panic!("reading {subject} from {stream}: {what}: {e}")
    };
    let mut s = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| fail("stream", &e));
    let total = s
        .info()
        .await
        .unwrap_or_else(|e| fail("info", &e))
        .state
        .messages;
    if total == 0 {
        return Vec::new();
    }
    let consumer = s
        .create_consumer(OrderedConfig {
            filter_subject: subject.into(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| fail("consumer", &e));
    let mut msgs = consumer
        .messages()
        .await
        .unwrap_or_else(|e| fail("messages", &e));
    let mut out = Vec::new();
    // A subject with no message sends nothing: the timeout ends the read.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), msgs.next()).await {
        let m = m.unwrap_or_else(|e| fail("message", &e));
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        out.push(m.payload.clone());
        if pending == 0 {
            break;
        }
    }
    out
}
