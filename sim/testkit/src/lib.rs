//! Test-only helpers (a dev-dependency, never a normal one):
//!
//! - [`NatsServer`]: a private `nats-server -js` on a free port with a temporary store, so each
//!   test owns its streams and can stop/restart the broker for fault injection.
//! - [`TestDb`]: a fresh, migrated PostgreSQL database on the machine's server, dropped afterwards.
//!
//! A missing service is a loud failure that says what to start — never a silent skip.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// How to start the services the tests need.
pub const START_HINT: &str =
    "run `scripts/services` (installs and starts nats-server and PostgreSQL, applies migrations)";

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

fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => panic!("no free local port: {e}"),
    }
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port. Panics with [`START_HINT`] if it cannot.
    pub fn start() -> Self {
        Self::start_with_args(&[])
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
        let store = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temp dir for nats-server: {e}"),
        };
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
            panic!(
                "cannot write the nats-server config into {}: {e}",
                dir.display()
            );
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
        s.spawn();
        s
    }

    /// What a server started from a config printed so far (errors such as permission
    /// violations); empty for the others.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.store.path().join("nats-server.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT` of the monitoring endpoint (servers started from a config).
    pub fn monitor_url(&self) -> Option<String> {
        self.config
            .as_ref()
            .map(|c| format!("http://127.0.0.1:{}", c.monitor_port))
    }

    fn spawn(&mut self) {
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let mut cmd = Command::new(&bin);
        let port = self.port.to_string();
        let log = self.store.path().join("nats-server.log");
        match &self.config {
            None => {
                cmd.args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
                    .arg(self.store.path())
                    .args(&self.extra_args)
                    .stderr(Stdio::null());
            }
            Some(c) => {
                let stderr = match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                {
                    Ok(f) => Stdio::from(f),
                    Err(e) => panic!("cannot create {}: {e}", log.display()),
                };
                cmd.arg("-c")
                    .arg(&c.path)
                    .args(["-a", "127.0.0.1", "-p", &port, "-m"])
                    .arg(c.monitor_port.to_string())
                    .envs(c.env.iter().map(|(k, v)| (k, v)))
                    .stderr(stderr);
            }
        }
        let child = cmd.stdout(Stdio::null()).spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => panic!("cannot start {bin}: {e}; {START_HINT}"),
        };
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "nats-server did not listen on port {} within 10 s{}",
            self.port,
            std::fs::read_to_string(&log)
                .map(|l| format!("; its output:\n{l}"))
                .unwrap_or_default()
        );
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

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The machine's PostgreSQL admin URL: `DATABASE_ADMIN_URL`, else the local trust-auth server.
pub fn admin_url() -> String {
    std::env::var("DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database with every migration applied; dropped (forcibly) when this value drops.
pub struct TestDb {
    /// A pool on the database.
    pub pool: PgPool,
    /// Its connection URL.
    pub url: String,
    /// Its name.
    pub name: String,
}

impl TestDb {
    /// Creates and migrates a database named `kb_test_<pid>_<random>`.
    pub async fn fresh() -> Self {
        let admin = admin_url();
        let admin_pool = match PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&admin)
            .await
        {
            Ok(p) => p,
            Err(e) => panic!("cannot reach PostgreSQL at {admin}: {e}; {START_HINT}"),
        };
        let name = format!(
            "kb_test_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin_pool)
            .await
        {
            panic!("cannot create test database {name}: {e}");
        }
        admin_pool.close().await;
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("DATABASE_ADMIN_URL {admin} has no database part"),
        };
        let pool = match PgPoolOptions::new().max_connections(8).connect(&url).await {
            Ok(p) => p,
            Err(e) => panic!("cannot connect to {url}: {e}"),
        };
        if let Err(e) = klinebus_migrations::run(&pool).await {
            panic!("migrations failed on {name}: {e}");
        }
        Self { pool, url, name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = admin_url();
        // Drop runs inside a runtime; do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(p) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin)
                    .await
                {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&p).await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn private_nats_with_jetstream() {
        let mut nats = NatsServer::start();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "T".into(),
            subjects: vec!["t.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js.publish("t.a", "x".into()).await.unwrap().await.unwrap();
        nats.restart();
        // The store survives a restart.
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream("T").await.unwrap();
        assert_eq!(s.info().await.unwrap().state.messages, 1);
    }

    #[tokio::test]
    async fn fresh_db_is_migrated() {
        let db = TestDb::fresh().await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('ohlcv_candles','ingestion_status')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(n, 2);
        // No redundant indexes: the key constraints are the only ones.
        let idx: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE tablename IN ('ohlcv_candles','ingestion_status') ORDER BY 1",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            idx,
            [
                "ingestion_status_symbol_timeframe_key",
                "ohlcv_candles_symbol_timeframe_timestamp_key"
            ]
        );
    }
}
