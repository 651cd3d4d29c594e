//! Binance's spot REST market-data endpoints, with weights, limits and REST faults applied.
//!
//! Every response, errors included, carries `Content-Type: application/json;charset=UTF-8`,
//! `X-MBX-USED-WEIGHT` and `X-MBX-USED-WEIGHT-1M`.

mod exchange_info;
mod klines;
pub(crate) mod params;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::clock::wall_now_ms;
use crate::faults::RestFault;
use crate::server::Shared;
use crate::weights::Verdict;

pub(crate) const CONTENT_TYPE: &str = "application/json;charset=UTF-8";

pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/api/v3/ping", get(ping))
        .route("/api/v3/time", get(time))
        .route("/api/v3/exchangeInfo", get(exchange_info::handler))
        .route("/api/v3/klines", get(klines::handler))
        // Same parameters, rows and weight; the simulator has no separate chart adjustment.
        .route("/api/v3/uiKlines", get(klines::handler))
}

/// A Binance error body `{"code":…,"msg":…}` with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: i32,
    pub msg: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: i32,
    msg: &'a str,
}

impl ApiError {
    /// An HTTP 400 error (Binance's 11xx errors).
    pub fn bad(code: i32, msg: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            msg: msg.into(),
        }
    }

    pub fn body(&self) -> String {
        serde_json::to_string(&ErrorBody {
            code: self.code,
            msg: &self.msg,
        })
        .unwrap_or_default()
    }

    pub fn response(&self, used: u32) -> Response {
        respond(self.status, self.body(), used)
    }
}

/// A JSON response with Binance's content type and weight headers.
pub(crate) fn respond(status: StatusCode, body: impl Into<Body>, used: u32) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    h.insert("x-mbx-used-weight", HeaderValue::from(used));
    h.insert("x-mbx-used-weight-1m", HeaderValue::from(used));
    r
}

fn with_retry_after(mut r: Response, secs: u64) -> Response {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Body of a forced 5xx, after Binance's own codes for each status.
fn server_error(status: u16) -> (StatusCode, ApiError) {
    let st = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let (code, msg) = match st.as_u16() {
        503 => (-1008, "Server is currently overloaded with other requests. Please try again in a few minutes."),
        504 => (-1007, "Timeout waiting for response from backend server. Send status unknown; execution status unknown."),
        _ => (-1001, "Internal error; unable to process your request. Please try again."),
    };
    (
        st,
        ApiError {
            status: st,
            code,
            msg: msg.to_owned(),
        },
    )
}

fn weight_error(limit: u32) -> ApiError {
    ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: -1003,
        msg: format!(
            "Too much request weight used; current limit is {limit} request weight per 1 MINUTE. \
             Please use WebSocket Streams for live updates to avoid polling the API."
        ),
    }
}

/// Applies REST faults (delay, forced 5xx/429) and charges `weight` to the client IP.
/// Returns the IP's used weight, or the response to send instead.
pub(crate) async fn gate(app: &Shared, ip: IpAddr, weight: u32) -> Result<u32, Response> {
    let delay = app.faults.rest_delay_ms();
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let now = wall_now_ms();
    match app.faults.take_rest_fault() {
        Some(RestFault::Fail(status)) => {
            let (st, e) = server_error(status);
            return Err(respond(st, e.body(), app.limiter.used(ip, now)));
        }
        Some(RestFault::Throttle(secs)) => {
            let e = weight_error(app.limiter.limit());
            return Err(with_retry_after(
                e.response(app.limiter.used(ip, now)),
                secs,
            ));
        }
        None => {}
    }
    let verdict = app.limiter.charge(ip, weight, now);
    app.usage.rest(ip, now, verdict);
    match verdict {
        Verdict::Ok { used } => Ok(used),
        Verdict::Limited {
            used,
            retry_after_secs,
        } => {
            tracing::debug!(%ip, used, "request weight limit exceeded");
            let e = weight_error(app.limiter.limit());
            Err(with_retry_after(e.response(used), retry_after_secs))
        }
        Verdict::Banned {
            used,
            until_ms,
            retry_after_secs,
        } => {
            tracing::debug!(%ip, until_ms, "IP banned");
            let e = ApiError {
                status: StatusCode::IM_A_TEAPOT,
                code: -1003,
                msg: format!(
                    "Way too much request weight used; IP banned until {until_ms}. \
                     Please use WebSocket Streams for live updates to avoid bans."
                ),
            };
            Err(with_retry_after(e.response(used), retry_after_secs))
        }
    }
}

async fn ping(State(app): State<Shared>, ConnectInfo(addr): ConnectInfo<SocketAddr>) -> Response {
    match gate(&app, addr.ip(), 1).await {
        Ok(used) => respond(StatusCode::OK, "{}", used),
        Err(r) => r,
    }
}

async fn time(State(app): State<Shared>, ConnectInfo(addr): ConnectInfo<SocketAddr>) -> Response {
    match gate(&app, addr.ip(), 1).await {
        Ok(used) => {
            let body = format!("{{\"serverTime\":{}}}", app.clock.now_ms());
            respond(StatusCode::OK, body, used)
        }
        Err(r) => r,
    }
}

/// Unknown paths: 404 with the usual headers, charging nothing.
pub(crate) async fn not_found(
    State(app): State<Shared>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
) -> Response {
    respond(
        StatusCode::NOT_FOUND,
        "",
        app.limiter.used(addr.ip(), wall_now_ms()),
    )
}
