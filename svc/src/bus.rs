//! Connecting to NATS at start-up, the same way in every binary.

use std::time::{Duration, Instant};

use async_nats::{Client, ConnectErrorKind};
use klinebus_schemas::bus::{self, BusError, BusOptions};
use tokio_util::sync::CancellationToken;

use crate::{error_line, Backoff};

/// Connects to NATS, waiting for a server that is not reachable yet (starting, restarting, a
/// cluster node away) with a pause doubling from 200 ms to 5 s, each wait logged: for as long
/// as it takes, or for `patience`. What waiting cannot mend fails at once: refused credentials,
/// a TLS failure, an unreadable URL or credentials file. `Ok(None)` when `shutdown` fires first.
pub async fn connect_bus(
    opts: &BusOptions,
    shutdown: &CancellationToken,
    patience: Option<Duration>,
) -> Result<Option<Client>, BusError> {
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let e = match bus::connect(opts).await {
            Ok(c) => return Ok(Some(c)),
            Err(e) => e,
        };
        let left = patience.map(|p| p.saturating_sub(started.elapsed()));
        if is_lasting(&e) || left.is_some_and(|l| l.is_zero()) {
            return Err(e);
        }
        let wait = left.map_or(backoff.fail(), |l| backoff.fail().min(l));
        match left {
            Some(l) => {
                tracing::warn!(error = %error_line(&e), retry_in_ms = wait.as_millis() as u64,
                patience_left = %humantime::format_duration(Duration::from_secs(l.as_secs())),
                "NATS unavailable; waiting for it")
            }
            None => tracing::warn!(error = %error_line(&e), retry_in_ms = wait.as_millis() as u64,
                "NATS unavailable; waiting for it"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// A refusal that the same attempt would meet again.
fn is_lasting(e: &BusError) -> bool {
    match e {
        BusError::Connect { source, .. } => matches!(
            source.kind(),
            ConnectErrorKind::Authentication
                | ConnectErrorKind::AuthorizationViolation
                | ConnectErrorKind::ServerParse
                | ConnectErrorKind::Tls
        ),
        _ => true,
    }
}
