//! Process plumbing every klinebus binary shares, so none of them copies it:
//!
//! - [`init_tracing`]: structured logs (`RUST_LOG`, `LOG_FORMAT=json`).
//! - [`shutdown_token`]: a cancellation token fired by SIGINT or SIGTERM.
//! - [`serve_telemetry`]: `/metrics` (Prometheus text) and `/health` on a configurable address.
//! - [`NatsArgs`] and [`DbArgs`]: the connection flags, with secrets from env or files;
//!   [`db`]: PostgreSQL pools that follow a failover among several hosts.
//! - [`exit_with`]: a binary's last words: its error on one line, and the exit code.
//! - [`Backoff`]: waiting out failures (reconnects, retries); [`connect_bus`] and
//!   [`DbArgs::connect_waiting`]: NATS and PostgreSQL at start-up, waited for unless they
//!   refuse the credentials.

mod args;
mod bus;
pub mod db;
mod retry;
pub use args::{redact_url, DbArgs, NatsArgs, SecretError};
pub use bus::connect_bus;
pub use retry::Backoff;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Initialises `tracing` once: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` switches
/// to JSON lines. Logs go to stderr so stdout stays free for a binary's own output.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// An error and its causes on one line, each said once. klinebus's own errors say only their
/// own part and leave the cause to `source()`; some client libraries' errors (async-nats, sqlx)
/// repeat their source's text, which is said once.
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut previous = line.clone();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !previous.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        previous = text;
        cause = c.source();
    }
    line
}

/// Ends a binary: on error, prints `error: …` (see [`error_line`]) to stderr and exits 1.
pub fn exit_with<E>(result: Result<(), E>) -> std::process::ExitCode
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let e: Box<dyn std::error::Error + Send + Sync + 'static> = e.into();
            eprintln!("error: {}", error_line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// A token cancelled on the first SIGINT or SIGTERM. Binaries pass it to their library `run`.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        fire.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Readiness flag behind `/health`: 200 while ready, 503 otherwise.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    /// Marks the process ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Telemetry endpoint failure.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The Prometheus recorder could not be installed (another one already is).
    #[error("metrics recorder: {0}")]
    Recorder(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Installs the global Prometheus recorder (once per process) and returns its handle.
pub fn metrics_recorder() -> Result<PrometheusHandle, TelemetryError> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Parses a `--metrics-addr` value: `host:port`, or `off` / empty for no endpoint.
pub fn parse_metrics_addr(a: &str) -> Result<Option<SocketAddr>, std::net::AddrParseError> {
    let a = a.trim();
    if a.is_empty() || a.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    a.parse().map(Some)
}

/// Serves `/metrics` and `/health` on `addr` until `shutdown` fires. Returns the bound address
/// (useful with port 0).
pub async fn serve_telemetry(
    addr: SocketAddr,
    health: Health,
    shutdown: CancellationToken,
) -> Result<SocketAddr, TelemetryError> {
    let handle = metrics_recorder()?;
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route(
            "/health",
            get(move || {
                let ready = health.is_ready();
                std::future::ready(if ready {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                })
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    tokio::spawn(async move {
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "telemetry server failed");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to {url}")]
    struct Connect {
        url: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting up")]
    struct Startup(#[source] Connect);

    #[test]
    fn error_line_says_each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Connect {
            url: "nats://x",
            source: io(),
        };
        assert_eq!(super::error_line(&e), "cannot connect to nats://x: refused");
        let e = Startup(Connect {
            url: "nats://x",
            source: io(),
        });
        assert_eq!(
            super::error_line(&e),
            "starting up: cannot connect to nats://x: refused"
        );
    }

    use super::*;

    #[tokio::test]
    async fn health_and_metrics_answer() {
        let health = Health::default();
        let stop = CancellationToken::new();
        let addr = serve_telemetry("127.0.0.1:0".parse().unwrap(), health.clone(), stop.clone())
            .await
            .unwrap();
        metrics::counter!("klinebus_test_total").increment(3);
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/health").await.starts_with("HTTP/1.1 503"));
        health.set_ready(true);
        assert!(get("/health").await.starts_with("HTTP/1.1 200"));
        assert!(get("/metrics").await.contains("klinebus_test_total 3"));
        stop.cancel();
    }
}
