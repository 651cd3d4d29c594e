//! The archive's URLs. Charged no weight and spared REST faults: Binance serves these from a
//! separate static host.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::file::{ArchiveFile, Part};
use crate::server::Shared;

/// S3's answer for a key that does not exist, as data.binance.vision gives it.
const NO_SUCH_KEY: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>\
<Message>The specified key does not exist.</Message></Error>";

pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route(
            "/data/spot/monthly/klines/{symbol}/{interval}/{file}",
            get(monthly),
        )
        .route(
            "/data/spot/daily/klines/{symbol}/{interval}/{file}",
            get(daily),
        )
        // Everything else under /data/ is a key the bucket does not have.
        .route("/data/{*rest}", get(|| async { not_found() }))
}

pub(crate) fn not_found() -> Response {
    reply(
        StatusCode::NOT_FOUND,
        "application/xml",
        Body::from(NO_SUCH_KEY),
    )
}

fn reply(status: StatusCode, content_type: &'static str, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn monthly(State(app): State<Shared>, Path(p): Path<(String, String, String)>) -> Response {
    serve(app, false, p).await
}

async fn daily(State(app): State<Shared>, Path(p): Path<(String, String, String)>) -> Response {
    serve(app, true, p).await
}

async fn serve(app: Shared, daily: bool, (sym, iv, name): (String, String, String)) -> Response {
    let Some((file, part)) = ArchiveFile::from_url(daily, &sym, &iv, &name) else {
        return not_found();
    };
    let archive = app.archive.clone();
    // A cached file costs a map lookup; only a cold one goes to a blocking thread.
    let got = match archive.cached(&file) {
        Some(got) => Ok(got),
        None => {
            let Ok(_permit) = archive.inner.building.acquire().await else {
                return not_found();
            };
            let a = archive.clone();
            let f = file.clone();
            match tokio::task::spawn_blocking(move || a.get_blocking(&f)).await {
                Ok(r) => r,
                Err(e) => Err(e.to_string()),
            }
        }
    };
    match got {
        Ok(Ok(b)) => match part {
            Part::Zip => reply(StatusCode::OK, "application/zip", Body::from(b.zip.clone())),
            Part::Checksum => reply(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                Body::from(b.checksum.clone()),
            ),
        },
        Ok(Err(_)) => not_found(),
        Err(e) => {
            tracing::error!(error = %e, file = %file, "archive file build failed");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                Body::from("archive file build failed"),
            )
        }
    }
}
