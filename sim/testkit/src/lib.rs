//! Helpers for tests and benchmarks (a dev-dependency of the services, a normal one only of
//! `klinebus-bench`):
//!
//! - [`NatsServer`]: a private `nats-server -js` on a free port with a temporary store, so each
//!   test owns its streams and can stop/restart the broker for fault injection.
//! - [`TestDb`]: a fresh, migrated PostgreSQL database on the machine's server, dropped afterwards.
//! - [`PgServer`]: a private PostgreSQL cluster (initdb in a temporary directory, on a free
//!   port) that a test may stop and restart without disturbing the machine's shared server.
//!
//! A missing service is a loud failure that says what to start — never a silent skip: a panic
//! in tests, a [`SetupError`] from the `try_` constructors the benchmark programs use.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// How to start the services the tests need.
pub const START_HINT: &str =
    "run `scripts/services` (installs and starts nats-server and PostgreSQL, applies migrations)";

/// Why a service could not be set up, with what to start; the panicking constructors panic with
/// the same message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

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
    /// The admin URL of its server (to drop it).
    admin: String,
}

impl TestDb {
    /// Creates and migrates a database named `kb_test_<pid>_<random>` on the machine's server.
    pub async fn fresh() -> Self {
        Self::fresh_on(admin_url()).await
    }

    /// The same on the server of `admin` (an URL of its `postgres` database), e.g.
    /// [`PgServer::admin_url`].
    pub async fn fresh_on(admin: String) -> Self {
        match Self::try_named(admin, "kb_test").await {
            Ok(db) => db,
            Err(e) => panic!("{e}"),
        }
    }

    /// A fresh migrated database named `<prefix>_<pid>_<random>` on the server of `admin`, with
    /// an error instead of a panic: for programs (the benchmarks, whose prefix tells a database
    /// left by a killed run apart from a test's).
    pub async fn try_named(admin: String, prefix: &str) -> Result<Self, SetupError> {
        let admin_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&admin)
            .await
            .map_err(|e| {
                SetupError(format!(
                    "cannot reach PostgreSQL at {admin}: {e}; {START_HINT}"
                ))
            })?;
        let name = format!(
            "{prefix}_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let created = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin_pool)
            .await;
        admin_pool.close().await;
        created.map_err(|e| SetupError(format!("cannot create test database {name}: {e}")))?;
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => {
                return Err(SetupError(format!(
                    "DATABASE_ADMIN_URL {admin} has no database part"
                )))
            }
        };
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .map_err(|e| SetupError(format!("cannot connect to {url}: {e}")))?;
        // From here on a failure drops the database again.
        let db = Self {
            pool,
            url,
            name,
            admin,
        };
        klinebus_migrations::run(&db.pool)
            .await
            .map_err(|e| SetupError(format!("migrations failed on {}: {e}", db.name)))?;
        Ok(db)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin.clone();
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

/// A private PostgreSQL cluster for fault tests: `initdb` into a temporary directory, served on
/// a free loopback port with trust authentication, stopped on drop. [`PgServer::stop`] is an
/// immediate shutdown (no checkpoint, crash recovery on the next start, like a crash of the
/// server process); [`PgServer::restart`] starts it again on the same port and data.
///
/// The binaries come from `PG_BIN_DIR`, else the newest `/usr/lib/postgresql/<v>/bin`, else
/// `PATH`. PostgreSQL refuses to run as root: as root, the directory is handed to the
/// `postgres` user and every command runs through `runuser -u postgres --`.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

fn pg_bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PG_BIN_DIR") {
        return d.into();
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .max_by_key(|(v, _)| *v);
    newest.map(|(_, b)| b).unwrap_or_default()
}

/// True when this process runs as root (`/proc/self` belongs to the effective user).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of `user` from /etc/passwd.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

impl PgServer {
    /// Creates the cluster and starts it. Panics, saying why, if it cannot.
    pub fn start() -> Self {
        let dir = match tempfile::Builder::new().prefix("kb-pg-").tempdir() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temp dir for PostgreSQL: {e}"),
        };
        let as_postgres = running_as_root();
        if as_postgres {
            let Some((uid, gid)) = user_ids("postgres") else {
                panic!("running as root and there is no `postgres` user to run PostgreSQL as");
            };
            if let Err(e) = std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)) {
                panic!("cannot hand {} to postgres: {e}", dir.path().display());
            }
        }
        let mut s = Self {
            dir,
            bin: pg_bin_dir(),
            port: free_port(),
            as_postgres,
            running: false,
        };
        let data = s.data_dir();
        s.run_tool(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-locale".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        s.spawn();
        s
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a PostgreSQL tool to completion (as `postgres` when root); panics with its output
    /// on failure.
    fn run_tool(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        let exe = if self.bin.as_os_str().is_empty() {
            PathBuf::from(tool)
        } else {
            self.bin.join(tool)
        };
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "{} failed ({}):\n{}{}\nserver log:\n{}",
                exe.display(),
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                self.log_tail()
            ),
            Err(e) => panic!(
                "cannot run {}: {e}; install PostgreSQL or set PG_BIN_DIR",
                exe.display()
            ),
        }
    }

    fn spawn(&mut self) {
        let data = self.data_dir();
        let log = self.dir.path().join("postgres.log");
        let opts = format!(
            "-p {} -h 127.0.0.1 -k {} -c fsync=off -c max_connections=60",
            self.port,
            self.dir.path().display()
        );
        self.run_tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-o".as_ref(),
                opts.as_ref(),
                "start".as_ref(),
            ],
        );
        self.running = true;
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "PostgreSQL did not listen on port {} within 10 s",
            self.port
        );
    }

    /// The last lines of the server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`, for [`TestDb::fresh_on`].
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: every connection is cut, no
    /// checkpoint, so the next start runs crash recovery). Committed data survives.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let data = self.data_dir();
        self.run_tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        self.running = false;
    }

    /// Stops it (if running) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            // No panic while dropping: best effort.
            let data = self.data_dir();
            let exe = self.bin.join("pg_ctl");
            let mut cmd = if self.as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&exe);
                c
            } else {
                Command::new(&exe)
            };
            let _ = cmd
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
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
    async fn private_postgres_survives_a_restart() {
        let mut pg = PgServer::start();
        let db = TestDb::fresh_on(pg.admin_url()).await;
        sqlx::query("INSERT INTO exchange_gaps (symbol, timeframe, start_time, end_time, candles) VALUES ('X', '1m', 0, 60000, 1)")
            .execute(&db.pool)
            .await
            .unwrap();
        pg.stop();
        // Down: a new connection is refused (the pool would retry until its acquire timeout).
        use sqlx::Connection as _;
        assert!(sqlx::PgConnection::connect(&db.url).await.is_err());
        pg.restart();
        // The pool reconnects; the committed row survived the immediate shutdown.
        let deadline = Instant::now() + Duration::from_secs(10);
        let n: i64 = loop {
            match sqlx::query_scalar("SELECT count(*) FROM exchange_gaps")
                .fetch_one(&db.pool)
                .await
            {
                Ok(n) => break n,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(n, 1);
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
