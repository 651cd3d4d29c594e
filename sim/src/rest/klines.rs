//! `GET /api/v3/klines` and `/api/v3/uiKlines` (weight 2).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::{gate, params, respond, ApiError};
use crate::format::rest_body;
use crate::server::Shared;

const WEIGHT: u32 = 2;

pub(super) async fn handler(
    State(app): State<Shared>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
) -> Response {
    let used = match gate(&app, addr.ip(), WEIGHT).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let p = match params::klines(q.as_deref().unwrap_or(""), &app.market) {
        Ok(p) => p,
        Err(e) => return e.response(used),
    };
    // Cold coarse pages can take a while (a day cache fill); keep them off the async workers.
    let app2 = app.clone();
    let body = tokio::task::spawn_blocking(move || {
        let now = app2.clock.now_ms();
        let page = app2
            .market
            .page(p.symbol, p.interval, p.tz_ms, p.start, p.end, p.limit, now);
        rest_body(&page)
    })
    .await;
    match body {
        Ok(body) => respond(StatusCode::OK, body, used),
        Err(e) => {
            tracing::error!(error = %e, "klines page failed");
            ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: -1001,
                msg: "Internal error; unable to process your request. Please try again.".into(),
            }
            .response(used)
        }
    }
}
