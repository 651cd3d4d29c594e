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
