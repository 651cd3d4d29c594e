//! `klinectl`: the operators' tool. One file per command:
//! [`verify`] (with [`repair`] for `--repair`), [`status`], [`alerts`], [`replay`], [`prune`],
//! [`audit`] (the continuous completeness auditor, with [`freshness`], its per-series metrics);
//! [`cli`] holds the flags.
//! Each command returns its output as text (or JSON) plus an exit code, so tests drive the same
//! code the binary runs.

pub mod alerts;
pub mod audit;
pub mod cli;
pub mod deep;
pub mod freshness;
pub mod prune;
pub mod repair;
pub mod replay;
pub mod status;
pub mod streams;
pub mod verify;

use std::time::Duration;

use klinebus_schemas::bus::BusOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::cli::{Cli, Cmd};
use klinebus_svc::NatsArgs;

/// What a command produced.
#[derive(Debug)]
pub struct Outcome {
    /// Text for stdout.
    pub output: String,
    /// Process exit code: 0 fine, 1 check failed.
    pub code: u8,
}

/// Failures that stop a command (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad flags or values.
    #[error("{0}")]
    Usage(String),
    /// The database could not be reached.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The database URL is unusable, or none of its hosts could be connected to.
    #[error("database: {}", klinebus_svc::error_line(.0))]
    DbConnect(#[from] klinebus_svc::db::DbError),
    /// NATS could not be reached or refused an operation.
    #[error("nats: {what}")]
    Nats {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The exchange (REST) could not be used.
    #[error("exchange: {what}")]
    Exchange {
        /// What was being asked.
        what: String,
        /// The client's error.
        #[source]
        source: klinebus_binance::BinanceError,
    },
    /// A secret file could not be read.
    #[error(transparent)]
    Secret(#[from] klinebus_svc::SecretError),
}

impl CtlError {
    /// `map_err` for a NATS operation: what was being done, the client's error as the source.
    pub fn nats<E>(what: &'static str) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |e| Self::Nats {
            what,
            source: Box::new(e),
        }
    }
}

/// The exchange's clock, from `rest` (at `url`, for the error).
pub(crate) async fn exchange_time(
    rest: &klinebus_binance::RestClient,
    url: &str,
) -> Result<i64, CtlError> {
    rest.server_time()
        .await
        .map_err(|source| CtlError::Exchange {
            what: format!("asking {url} for its time"),
            source,
        })
}

/// `--database-check-interval`, set once by [`run`] (the commands take the URL alone).
/// The database the flags name: its URL (one host or several) and how often a pool on several
/// hosts checks the one in use.
pub struct Database {
    url: String,
    check_interval: Duration,
}

impl Database {
    /// From `--database-url` / `--database-url-file` and `--database-check-interval`.
    pub fn from_args(args: &klinebus_svc::DbArgs) -> Result<Self, CtlError> {
        Ok(Self {
            url: args.url().map_err(CtlError::Secret)?,
            check_interval: args.check_interval,
        })
    }

    /// Connects (with several hosts, to the read-write one, followed through a failover:
    /// `klinectl audit` runs for long).
    pub async fn pool(&self) -> Result<PgPool, CtlError> {
        let options = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5));
        Ok(klinebus_svc::db::connect(&self.url, options, self.check_interval).await?)
    }

    /// [`pool`](Self::pool), waiting for a database that is not up yet (the auditor, a
    /// daemon); `None` when `shutdown` fires first.
    pub async fn pool_waiting(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<PgPool>, CtlError> {
        let options = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5));
        Ok(
            klinebus_svc::db::connect_waiting(&self.url, options, self.check_interval, shutdown)
                .await?,
        )
    }
}

/// The NATS options from the flags.
pub fn bus_options(n: &NatsArgs) -> Result<BusOptions, CtlError> {
    n.bus_options("klinectl").map_err(CtlError::Secret)
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<Outcome, CtlError> {
    let db = Database::from_args(&cli.db)?;
    match &cli.cmd {
        Cmd::Verify(a) => verify::run(&db, &bus_options(&cli.nats)?, a).await,
        Cmd::Status(a) => status::run(&db, &bus_options(&cli.nats)?, a).await,
        Cmd::Alerts(a) => alerts::run(&db, a).await,
        Cmd::Replay(a) => replay::run(&bus_options(&cli.nats)?, a).await,
        Cmd::Prune(a) => prune::run(&db, a).await,
        Cmd::Audit(a) => audit::run(&db, &bus_options(&cli.nats)?, a).await,
        Cmd::Streams(a) => {
            streams::run(
                &bus_options(&cli.nats)?,
                usize::from(cli.nats.stream_replicas),
                a,
            )
            .await
        }
    }
}
