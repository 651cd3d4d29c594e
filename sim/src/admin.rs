//! The simulator's own control API under `/_sim` (a path Binance does not use). Carries no
//! weight and no rate limit.
//!
//! - `GET  /_sim/faults`  → active faults, gaps and the clock ([`FaultSnapshot`]).
//! - `POST /_sim/faults`  ← a [`FaultPatch`] JSON body → the new snapshot.
//! - `POST /_sim/ws/drop` → drops every WebSocket connection now.
//! - `POST /_sim/ws/shutdown` ← optional `{"close_after_ms": N}` (default 5000, wall time) →
//!   sends Binance's `serverShutdown` event on every open connection and closes each N ms later.
//! - `GET  /_sim/symbols` → every symbol ever listed: status, listing time, halts
//!   ([`SymbolState`]).
//! - `POST /_sim/symbols` ← `{"action": "list"|"halt"|"resume"|"delist", "symbol": "NEWUSDT"}`
//!   (`list` also takes `"listed_ms"`, default the next minute boundary) → that symbol's state;
//!   400 for a bad name, 404 for an unknown symbol, 409 for a change its state does not allow.
//! - `GET  /_sim/usage` → REST weight per minute (with 429s and 418s) and WebSocket connection
//!   attempts per client IP ([`UsageReport`]).
//! - `GET  /_sim/archive` → the kline archive's lags, cache and build counters, faults
//!   ([`ArchiveStats`]).
//! - `POST /_sim/archive/prewarm` ← a [`PrewarmRequest`] (`{"symbols": ["BTCUSDT"],
//!   "intervals": ["1m"], "kind": "monthly", "from": "2021-01", "to": "2025-12"}`) → builds and
//!   caches those files, answering when done with a [`PrewarmReport`]; 400 for a bad request.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::archive::{ArchiveStats, PrewarmReport, PrewarmRequest};
use crate::faults::{FaultPatch, FaultSnapshot};
use crate::market::{LifecycleError, SymbolState};
use crate::server::Shared;
use crate::usage::UsageReport;

/// Default wall time between a `serverShutdown` announcement and the close.
const SHUTDOWN_GRACE_MS: u64 = 5_000;

pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/_sim/faults", get(snapshot).post(patch))
        .route("/_sim/ws/drop", post(drop_ws))
        .route("/_sim/ws/shutdown", post(shutdown_ws))
        .route("/_sim/symbols", get(symbols).post(change_symbol))
        .route("/_sim/usage", get(usage))
        .route("/_sim/archive", get(archive_stats))
        .route("/_sim/archive/prewarm", post(prewarm))
}

async fn usage(State(app): State<Shared>) -> Json<UsageReport> {
    Json(
        app.usage
            .report(app.config.weight_limit, app.config.ws_connect_limit),
    )
}

async fn archive_stats(State(app): State<Shared>) -> Json<ArchiveStats> {
    Json(app.archive.stats())
}

async fn prewarm(State(app): State<Shared>, Json(r): Json<PrewarmRequest>) -> Response {
    tracing::info!(request = ?r, "archive prewarm");
    let a = app.archive.clone();
    match tokio::task::spawn_blocking(move || a.prewarm(&r)).await {
        Ok(Ok(rep)) => {
            tracing::info!(report = ?rep, "archive prewarm done");
            Json::<PrewarmReport>(rep).into_response()
        }
        Ok(Err(e)) => refuse(StatusCode::BAD_REQUEST, &e),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn snapshot(State(app): State<Shared>) -> Json<FaultSnapshot> {
    Json(app.faults.snapshot())
}

async fn patch(State(app): State<Shared>, Json(p): Json<FaultPatch>) -> Json<FaultSnapshot> {
    tracing::info!(patch = ?p, "fault patch");
    app.faults.apply(&p);
    Json(app.faults.snapshot())
}

async fn drop_ws(State(app): State<Shared>) -> Json<FaultSnapshot> {
    tracing::info!("dropping all WebSocket connections");
    app.faults.drop_ws();
    Json(app.faults.snapshot())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownBody {
    close_after_ms: Option<u64>,
}

/// The body is optional: an empty POST announces with the default grace.
async fn shutdown_ws(State(app): State<Shared>, body: axum::body::Bytes) -> Response {
    let b: ShutdownBody = if body.is_empty() {
        ShutdownBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    };
    let after = Duration::from_millis(b.close_after_ms.unwrap_or(SHUTDOWN_GRACE_MS));
    tracing::info!(
        ?after,
        "announcing serverShutdown on every WebSocket connection"
    );
    app.faults.announce_shutdown(after);
    Json(app.faults.snapshot()).into_response()
}

async fn symbols(State(app): State<Shared>) -> Json<Vec<SymbolState>> {
    Json(app.market.lifecycle())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    List,
    Halt,
    Resume,
    Delist,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SymbolChange {
    action: Action,
    symbol: String,
    /// `list` only: open time of the first candle.
    listed_ms: Option<i64>,
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

async fn change_symbol(State(app): State<Shared>, Json(c): Json<SymbolChange>) -> Response {
    tracing::info!(change = ?c, "symbol lifecycle change");
    let now = app.clock.now_ms();
    let m = &app.market;
    let name = c.symbol.as_str();
    let result = match c.action {
        // Default: candles from the next minute boundary, like a halt or a resume.
        Action::List => m
            .list_symbol(name, c.listed_ms.unwrap_or(now + 59_999))
            .map(|_| ()),
        Action::Halt => m.halt(name, now),
        Action::Resume => m.resume(name, now),
        Action::Delist => m.delist(name),
    };
    let status = match &result {
        Ok(()) => StatusCode::OK,
        Err(LifecycleError::BadName(_)) => StatusCode::BAD_REQUEST,
        Err(LifecycleError::UnknownSymbol(_)) => StatusCode::NOT_FOUND,
        Err(_) => StatusCode::CONFLICT,
    };
    if let Err(e) = result {
        return refuse(status, &e.to_string());
    }
    match m.lifecycle().into_iter().find(|s| s.symbol == name) {
        Some(s) => Json(s).into_response(),
        None => refuse(StatusCode::NOT_FOUND, "symbol vanished"),
    }
}
