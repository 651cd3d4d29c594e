//! Connection flags every binary takes the same way: NATS (URL, credentials, TLS, stream
//! replicas) and PostgreSQL (URL). Secrets come from the environment or from files (`*_FILE`,
//! e.g. Docker/Compose secrets); `--help` never shows their values and `Debug` redacts them.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use klinebus_schemas::bus::redact_url;
use klinebus_schemas::bus::BusOptions;
use klinebus_schemas::secret::{ConnUrl, Secret};
use klinebus_schemas::streams::Retention;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use tokio_util::sync::CancellationToken;

use crate::db::DbError;

/// A secret that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file named by a `*_FILE` flag or variable could not be read.
    #[error("cannot read {what} from {path}")]
    Read {
        /// Which secret.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was empty.
    #[error("{what} file {path} is empty")]
    Empty {
        /// Which secret.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
}

/// Reads a secret file, dropping the trailing newline editors and `echo` add.
fn read_secret(what: &'static str, path: &Path) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    let value = text.trim_end_matches(['\r', '\n']).to_owned();
    if value.is_empty() {
        return Err(SecretError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(value)
}

/// NATS connection flags (flatten into a binary's clap config). They are `global` so that a
/// binary with subcommands (klinectl) takes them before or after the subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated; tls:// forces TLS.
    #[arg(
        global = true,
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        // A URL may carry a token or a password.
        hide_env_values = true
    )]
    pub url: ConnUrl,

    /// NATS credentials file (JWT + NKey seed).
    #[arg(global = true, long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,

    /// NATS user name (with a password).
    #[arg(global = true, long = "nats-user", env = "NATS_USER")]
    pub user: Option<String>,

    /// NATS password (with --nats-user). Prefer the variable or --nats-password-file to the flag.
    #[arg(
        global = true,
        long = "nats-password",
        env = "NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<Secret>,

    /// File holding the NATS password (wins over NATS_PASSWORD).
    #[arg(global = true, long = "nats-password-file", env = "NATS_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,

    /// NATS token. Prefer the variable or --nats-token-file to the flag.
    #[arg(
        global = true,
        long = "nats-token",
        env = "NATS_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Secret>,

    /// File holding the NATS token (wins over NATS_TOKEN).
    #[arg(global = true, long = "nats-token-file", env = "NATS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Require TLS even for nats:// URLs.
    #[arg(global = true, long = "nats-tls", env = "NATS_TLS")]
    pub tls: bool,

    /// PEM file of the CA that signed the NATS server's certificate (implies TLS).
    #[arg(global = true, long = "nats-tls-ca", env = "NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Replicas of the klinebus streams when this binary creates them (3 on a 3-node
    /// JetStream cluster). Existing streams keep their settings: `klinectl streams apply`
    /// changes them.
    #[arg(global = true, long = "stream-replicas", env = "NATS_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
}

impl NatsArgs {
    /// Connection options for a client named `name`, with secrets read from their files.
    pub fn bus_options(&self, name: &str) -> Result<BusOptions, SecretError> {
        let password = match &self.password_file {
            Some(p) => Some(read_secret("NATS password", p)?.into()),
            None => self.password.clone(),
        };
        let token = match &self.token_file {
            Some(p) => Some(read_secret("NATS token", p)?.into()),
            None => self.token.clone(),
        };
        Ok(BusOptions {
            url: self.url.clone(),
            name: name.into(),
            creds_file: self.creds.clone(),
            user: self.user.clone(),
            password,
            token,
            require_tls: self.tls,
            tls_ca: self.tls_ca.clone(),
        })
    }

    /// Stream limits with the configured replica count.
    pub fn retention(&self) -> Retention {
        Retention {
            replicas: usize::from(self.stream_replicas),
            ..Retention::default()
        }
    }
}

/// PostgreSQL connection flags (flatten into a binary's clap config).
#[derive(clap::Args, Clone, Debug)]
pub struct DbArgs {
    /// PostgreSQL connection URL; credentials and TLS (`sslmode=require`, `verify-full` with
    /// `sslrootcert=`) as URL parameters. Without `sslmode` TLS is used when the server offers
    /// it (`prefer`): on loopback that halves the sink's throughput, hence the default's
    /// `sslmode=disable`. For failover, several hosts in libpq's form
    /// (`postgres://user:pw@host1:5432,host2:5433/db?…`) or several comma-separated URLs: the
    /// first read-write host is used, and the next read-write one when it fails or turns
    /// read-only (checked every --database-check-interval), without a restart.
    #[arg(
        global = true,
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/klinebus?sslmode=disable",
        hide_env_values = true
    )]
    pub database_url: ConnUrl,

    /// File holding the PostgreSQL URL (wins over DATABASE_URL; for secrets).
    #[arg(global = true, long = "database-url-file", env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,

    /// With several database hosts: how often the one in use is checked (reachable and
    /// read-write), i.e. about how soon a failover is noticed. Ignored with one host.
    #[arg(global = true, long = "database-check-interval", env = "DATABASE_CHECK_INTERVAL",
          value_name = "DURATION", default_value = "1s", value_parser = parse_check_interval)]
    pub check_interval: Duration,
}

/// A check interval: a humantime duration from 100 ms to 1 h.
fn parse_check_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err("between 100ms and 1h".into());
    }
    Ok(d)
}

impl DbArgs {
    /// The URL to connect to.
    pub fn url(&self) -> Result<String, SecretError> {
        match &self.database_url_file {
            Some(p) => read_secret("database URL", p),
            None => Ok(self.database_url.expose().to_owned()),
        }
    }

    /// A pool built from `options` on the URL, following the read-write host when it names
    /// several (see [`crate::db`]). One attempt: retry as for any connection error.
    pub async fn connect(&self, options: PgPoolOptions) -> Result<PgPool, DbError> {
        let url = self.url()?;
        crate::db::connect(&url, options, self.check_interval).await
    }

    /// [`connect`](Self::connect), waiting for a database that is not up yet: see
    /// [`crate::db::connect_waiting`].
    pub async fn connect_waiting(
        &self,
        options: PgPoolOptions,
        shutdown: &CancellationToken,
    ) -> Result<Option<PgPool>, DbError> {
        let url = self.url()?;
        crate::db::connect_waiting(&url, options, self.check_interval, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        db: DbArgs,
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let url = dir.path().join("url");
        std::fs::write(&url, "postgres://app:hunter2@db/klinebus\n").unwrap();
        let cli = Cli::try_parse_from([
            "x",
            "--nats-user",
            "sink",
            "--nats-password-file",
            pw.to_str().unwrap(),
            "--nats-token",
            "tok",
            "--database-url-file",
            url.to_str().unwrap(),
        ])
        .unwrap();
        let o = cli.nats.bus_options("t").unwrap();
        assert_eq!(o.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!(o.token.as_ref().map(Secret::expose), Some("tok"));
        assert_eq!(cli.db.url().unwrap(), "postgres://app:hunter2@db/klinebus");
        let shown = format!("{cli:?} {o:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("tok\""),
            "{shown}"
        );
    }

    #[test]
    fn missing_or_empty_secret_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let cli = Cli::try_parse_from(["x", "--nats-token-file", empty.to_str().unwrap()]).unwrap();
        let e = cli.nats.bus_options("t").unwrap_err().to_string();
        assert!(e.contains("NATS token") && e.contains("empty"), "{e}");
        let cli = Cli::try_parse_from(["x", "--database-url-file", "/nonexistent/x"]).unwrap();
        assert!(cli
            .db
            .url()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/x"));
    }

    #[test]
    fn replicas_are_configuration() {
        let cli = Cli::try_parse_from(["x", "--stream-replicas", "3"]).unwrap();
        assert_eq!(cli.nats.retention().replicas, 3);
        assert!(Cli::try_parse_from(["x", "--stream-replicas", "0"]).is_err());
        assert_eq!(
            Cli::try_parse_from(["x"])
                .unwrap()
                .nats
                .retention()
                .replicas,
            1
        );
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:p@h:5432/d?sslmode=require"),
            "postgres://u:<redacted>@h:5432/d?sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(
            redact_url("nats://a:x@h1:4222,nats://a:y@h2:4222"),
            "nats://a:<redacted>@h1:4222,nats://a:<redacted>@h2:4222"
        );
    }

    #[test]
    fn help_never_shows_secret_values() {
        // nextest runs each test in its own process: setting the environment is contained.
        std::env::set_var("NATS_PASSWORD", "pw-from-env");
        std::env::set_var("NATS_TOKEN", "tok-from-env");
        std::env::set_var("DATABASE_URL", "postgres://u:db-secret@h/d");
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for secret in ["pw-from-env", "tok-from-env", "db-secret"] {
            assert!(!help.contains(secret), "{secret} in --help:\n{help}");
        }
        let cli = Cli::try_parse_from(["x", "--nats-url", "nats://a:b-secret@h:4222"]).unwrap();
        let shown = format!("{cli:?}");
        assert!(
            !shown.contains("b-secret") && !shown.contains("pw-from-env"),
            "{shown}"
        );
        assert_eq!(
            cli.nats
                .bus_options("t")
                .unwrap()
                .password
                .as_ref()
                .map(Secret::expose),
            Some("pw-from-env")
        );
    }
}
