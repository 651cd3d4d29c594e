//! Binance's market-data WebSocket: raw `/ws/<stream>` and combined `/stream?streams=a/b`.
//!
//! Admission applies the refuse fault and the 300-attempts-per-5-minutes-per-IP limit; the
//! connection itself lives in [`conn`].

mod conn;
mod control;
mod subs;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::rest::params::parse_query;
use crate::rest::{respond, ApiError};
use crate::server::Shared;

const ATTEMPT_WINDOW_SECS: u64 = 300;

pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/ws", get(raw_bare))
        .route("/ws/", get(raw_bare))
        .route("/ws/{*streams}", get(raw))
        .route("/stream", get(combined))
}

/// Connection attempts per IP in fixed 5-minute windows.
#[derive(Default)]
pub(crate) struct Attempts(Mutex<HashMap<IpAddr, (Instant, u32)>>);

impl Attempts {
    fn admit(&self, ip: IpAddr, limit: u32) -> bool {
        let now = Instant::now();
        let mut m = self.0.lock();
        let e = m.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0).as_secs() >= ATTEMPT_WINDOW_SECS {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= limit
    }
}

fn upgrade(
    app: Shared,
    ip: IpAddr,
    ws: WebSocketUpgrade,
    streams: Vec<String>,
    combined: bool,
) -> Response {
    // Every attempt counts against the IP, whatever the answer (as on Binance).
    let admitted = app.ws_attempts.admit(ip, app.config.ws_connect_limit);
    app.usage.ws_attempt(ip, !admitted);
    if app.faults.ws_refused() {
        tracing::debug!(%ip, "refusing WebSocket connection (fault)");
        let e = ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: -1008,
            msg: "Server is currently overloaded with other requests. Please try again in a few minutes.".into(),
        };
        return respond(e.status, e.body(), 0);
    }
    if !admitted {
        let e = ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: -1003,
            msg: format!(
                "Too many connection attempts; current limit is {} per 5 MINUTE.",
                app.config.ws_connect_limit
            ),
        };
        return respond(e.status, e.body(), 0);
    }
    ws.on_upgrade(move |socket| conn::run(app, socket, streams, combined))
        .into_response()
}

fn split_streams(s: &str) -> Vec<String> {
    s.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn raw_bare(
    State(app): State<Shared>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(app, addr.ip(), ws, Vec::new(), false)
}

async fn raw(
    State(app): State<Shared>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(streams): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(app, addr.ip(), ws, split_streams(&streams), false)
}

async fn combined(
    State(app): State<Shared>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let q = parse_query(q.as_deref().unwrap_or(""));
    let streams = q
        .iter()
        .find(|(k, _)| k == "streams")
        .map(|(_, v)| split_streams(v))
        .unwrap_or_default();
    upgrade(app, addr.ip(), ws, streams, true)
}
