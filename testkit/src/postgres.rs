//! PostgreSQL for tests: a fresh migrated database on the machine's server ([`TestDb`]) or a
//! private cluster a test may stop and restart ([`PgServer`]).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::{free_port, wait_for_port, SetupError, START_HINT};

/// The machine's PostgreSQL admin URL: `DATABASE_ADMIN_URL`, else the local trust-auth server.
pub fn admin_url() -> String {
    std::env::var("DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Rows of each leaf of `ohlcv_candles`'s partition tree, counted directly (not through the
/// root), and through the root: for a failure message when the root shows fewer rows than
/// were committed (the reader's view, not the writes, at fault).
pub async fn leaf_counts(pool: &PgPool) -> String {
    let leaves: Vec<String> = sqlx::query_scalar(
        "SELECT relid::regclass::text FROM pg_partition_tree('ohlcv_candles') WHERE isleaf ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let mut out = Vec::new();
    for t in leaves {
        let n: Result<i64, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM ONLY {t}"
        )))
        .fetch_one(pool)
        .await;
        if !matches!(n, Ok(0)) {
            out.push(format!("{t}: {n:?}"));
        }
    }
    let root: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles")
        .fetch_one(pool)
        .await;
    out.push(format!("through ohlcv_candles: {root:?}"));
    out.join("; ")
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
        Self::try_named_up_to(admin, prefix, None).await
    }

    /// A fresh database on the machine's server with the migrations up to `version` only
    /// (e.g. 6: `ohlcv_candles` as one table, before 0007 partitioned it); apply the rest with
    /// `klinebus_migrations::run`.
    pub async fn fresh_up_to(version: i64) -> Self {
        match Self::try_named_up_to(admin_url(), "kb_test", Some(version)).await {
            Ok(db) => db,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`TestDb::try_named`] with the migrations up to `version` only (all with `None`).
    pub async fn try_named_up_to(
        admin: String,
        prefix: &str,
        version: Option<i64>,
    ) -> Result<Self, SetupError> {
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
        match version {
            None => klinebus_migrations::run(&db.pool).await,
            Some(v) => klinebus_migrations::run_up_to(&db.pool, v).await,
        }
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
///
/// For failover tests, [`PgServer::standby`] makes a streaming standby of a running server
/// (`pg_basebackup`, optionally synchronous), [`PgServer::promote`] promotes it, and
/// [`PgServer::kill`] SIGKILLs a server.
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
        let as_postgres = running_as_root();
        let dir = Self::owned_dir(as_postgres);
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
        if let Err(e) = self.tool_output(tool, args) {
            panic!("{e}");
        }
    }

    /// Runs a PostgreSQL tool to completion (as `postgres` when root): its stdout, or what
    /// went wrong with its output and the server's log. A tool that cannot be started at all
    /// panics, saying what to install.
    fn tool_output(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<String, String> {
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
            Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            Ok(o) => Err(format!(
                "{} failed ({}):\n{}{}\nserver log:\n{}",
                exe.display(),
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                self.log_tail()
            )),
            Err(e) => panic!(
                "cannot run {}: {e}; install PostgreSQL (its server and client programs) or set \
                 PG_BIN_DIR",
                exe.display()
            ),
        }
    }

    /// One SQL command through `psql` (so these helpers need no runtime): its unaligned output.
    fn psql(&self, sql: &str) -> Result<String, String> {
        let port = self.port.to_string();
        self.tool_output(
            "psql",
            &[
                "-X".as_ref(),
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-d".as_ref(),
                "postgres".as_ref(),
                "-Atqc".as_ref(),
                sql.as_ref(),
            ],
        )
        .map(|o| o.trim().to_owned())
    }

    /// Polls `sql` until it answers `want`; panics with `what` and the last answer after
    /// `timeout`.
    fn wait_for_answer(&self, what: &str, sql: &str, want: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let got = self.psql(sql);
            if got.as_deref() == Ok(want) {
                return;
            }
            if std::time::Instant::now() > deadline {
                panic!("{what}: no {want:?} within {timeout:?} (last: {got:?})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A temporary directory PostgreSQL (the `postgres` user when root) may write into.
    fn owned_dir(as_postgres: bool) -> tempfile::TempDir {
        let dir = match tempfile::Builder::new().prefix("kb-pg-").tempdir() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temp dir for PostgreSQL: {e}"),
        };
        if as_postgres {
            let Some((uid, gid)) = user_ids("postgres") else {
                panic!("running as root and there is no `postgres` user to run PostgreSQL as");
            };
            if let Err(e) = std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)) {
                panic!("cannot hand {} to postgres: {e}", dir.path().display());
            }
        }
        dir
    }

    /// A streaming standby of this running server: `pg_basebackup -R` into a directory of its
    /// own, started on a free port; returns once it is in recovery and streaming. With `sync`
    /// this server then waits for the standby to flush every commit before confirming it
    /// (`synchronous_standby_names = '*'`, set after the copy so the standby does not inherit
    /// it): a failover to it loses no commit a client saw succeed. Panics, saying why.
    pub fn standby(&self, sync: bool) -> PgServer {
        assert!(self.running, "a standby needs its primary running");
        let mut s = PgServer {
            dir: Self::owned_dir(self.as_postgres),
            bin: self.bin.clone(),
            port: free_port(),
            as_postgres: self.as_postgres,
            running: false,
        };
        let data = s.data_dir();
        let primary_port = self.port.to_string();
        s.run_tool(
            "pg_basebackup",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                primary_port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-R".as_ref(),
                "-X".as_ref(),
                "stream".as_ref(),
                "-c".as_ref(),
                "fast".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        s.spawn();
        s.wait_for_answer(
            "the standby in recovery",
            "SELECT pg_is_in_recovery()",
            "t",
            Duration::from_secs(30),
        );
        s.wait_for_answer(
            "the standby streaming",
            "SELECT status FROM pg_stat_wal_receiver",
            "streaming",
            Duration::from_secs(30),
        );
        if sync {
            let set = self
                .psql("ALTER SYSTEM SET synchronous_standby_names = '*'")
                .and_then(|_| self.psql("SELECT pg_reload_conf()"));
            if let Err(e) = set {
                panic!("cannot make replication synchronous: {e}");
            }
            self.wait_for_answer(
                "synchronous replication",
                "SELECT string_agg(sync_state, ',') FROM pg_stat_replication",
                "sync",
                Duration::from_secs(30),
            );
        }
        s
    }

    /// Promotes a standby (`pg_ctl promote`); returns once it accepts writes.
    pub fn promote(&mut self) {
        let data = self.data_dir();
        self.run_tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "promote".as_ref(),
            ],
        );
        self.wait_for_answer(
            "the promoted standby out of recovery",
            "SELECT pg_is_in_recovery()",
            "f",
            Duration::from_secs(30),
        );
    }

    /// Whether the server answers as a standby (`pg_is_in_recovery()`); panics if it does not
    /// answer.
    pub fn in_recovery(&self) -> bool {
        match self.psql("SELECT pg_is_in_recovery()") {
            Ok(a) => a == "t",
            Err(e) => panic!("{e}"),
        }
    }

    /// SIGKILLs the postmaster and every process it started at once, like the machine dying:
    /// no shutdown, no goodbye to clients or standbys. [`PgServer::restart`] would start it
    /// again with crash recovery.
    pub fn kill(&mut self) {
        if !self.running {
            return;
        }
        let pidfile = self.data_dir().join("postmaster.pid");
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no postmaster pid in {}", pidfile.display()));
        // Its children first (once the postmaster is gone they are re-parented).
        let mut pids = vec![pid.to_string()];
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid …`; comm may hold spaces, so read after its `)`.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(pid) {
                pids.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        // A child may have exited meanwhile (kill then fails for it): what counts is that the
        // postmaster stops listening, checked below.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
        // Gone means not accepting connections any more.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL still listens after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(10));
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
