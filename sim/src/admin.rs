//! The simulator's own control API under `/_sim` (a path Binance does not use). Carries no
//! weight and no rate limit.
//!
//! - `GET  /_sim/faults`  → active faults, gaps and the clock ([`FaultSnapshot`]).
//! - `POST /_sim/faults`  ← a [`FaultPatch`] JSON body → the new snapshot.
//! - `POST /_sim/ws/drop` → drops every WebSocket connection now.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::faults::{FaultPatch, FaultSnapshot};
use crate::server::Shared;

pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/_sim/faults", get(snapshot).post(patch))
        .route("/_sim/ws/drop", post(drop_ws))
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
