//! Where each series resumes at start-up: the newest closed candle the `KLINES` stream holds for
//! it, from any source (`ws`, `poll`, `repair`, `backfill`), so that a restart repairs exactly
//! what closed while the process was down, and the candle the old process last saw forming is
//! fetched closed and replaces the forming row it left in the table.
//!
//! One direct get of the last message per source subject (no scan; works on nats-server 2.9).
//! The newest message of the `ws` subject is usually a forming update of candle `T`: it says the
//! old process was live at `T`, so the resume starts at `T`'s predecessor (refetched: cheap, and
//! its `Nats-Msg-Id` makes it a duplicate if it was stored). A series the stream knows nothing
//! of starts with the newest closed candles (`--initial-candles`), history being
//! kline-backfill's job.

use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{LastRawMessageError, LastRawMessageErrorKind, Stream};
use async_nats::jetstream::Context;
use futures::StreamExt as _;
use klinebus_schemas::streams::KLINES_STREAM;
use klinebus_schemas::{bus, subjects, Interval, KlineEvent, Source, Symbol, Venue};
use tokio_util::sync::CancellationToken;

use crate::series::Tracker;

/// Stream reads in flight at once at start-up.
const CONCURRENCY: usize = 32;
/// How long start-up keeps asking a stream that does not answer before starting without it.
const PATIENCE: Duration = Duration::from_secs(30);

/// Seeds `tracker` with each series' resume point from the stream. Series whose point cannot be
/// read (the stream keeps failing for [`PATIENCE`]) start as if the stream held nothing, with a
/// warning.
pub(crate) async fn seed(
    js: &Context,
    tracker: &Tracker,
    series: &[(Symbol, Interval)],
    shutdown: &CancellationToken,
) {
    let stream = match get_stream(js, shutdown).await {
        Some(s) => s,
        None => return,
    };
    // Owned items and an owned token: the future must be `Send` for any lifetime (it is
    // spawned), which borrowed closures over `series` defeat.
    let mut reads = futures::stream::iter(series.to_vec())
        .map(|(symbol, interval)| {
            let (stream, shutdown) = (stream.clone(), shutdown.clone());
            async move {
                let point = resume_point(&stream, &symbol, interval, &shutdown).await;
                (symbol, interval, point)
            }
        })
        .buffer_unordered(CONCURRENCY);
    let (mut resumed, mut fresh) = (0usize, 0usize);
    while let Some((symbol, interval, point)) = reads.next().await {
        match point {
            Ok(Some(after)) => {
                tracker.observe(&symbol, interval, after);
                resumed += 1;
            }
            Ok(None) => fresh += 1,
            Err(e) => {
                fresh += 1;
                tracing::warn!(%symbol, %interval, error = %e,
                    "cannot read where the series left off; starting from the newest candles");
            }
        }
    }
    tracing::info!(
        resumed,
        fresh,
        "resume points read from the {KLINES_STREAM} stream"
    );
}

async fn get_stream(js: &Context, shutdown: &CancellationToken) -> Option<Stream> {
    let started = tokio::time::Instant::now();
    loop {
        match js.get_stream(KLINES_STREAM).await {
            Ok(s) => return Some(s),
            // No stream yet: nothing was ever published, every series starts fresh.
            Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(_)) => return None,
            Err(e) if started.elapsed() < PATIENCE => {
                tracing::warn!(error = %e, "cannot read the {KLINES_STREAM} stream; retrying");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the {KLINES_STREAM} stream; every series starts from the newest candles");
                return None;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Open time of the newest closed candle known for the series (`None`: nothing in the stream).
async fn resume_point(
    stream: &Stream,
    symbol: &Symbol,
    interval: Interval,
    shutdown: &CancellationToken,
) -> Result<Option<i64>, LastRawMessageError> {
    let venue = Venue::binance();
    let mut best: Option<i64> = None;
    for source in Source::ALL {
        let subject = subjects::kline(source, &venue, symbol, interval);
        let Some(event) = last_event(stream, &subject, shutdown).await? else {
            continue;
        };
        let known = if event.closed {
            event.open_time
        } else {
            // Forming `T`: resume at `T`'s predecessor, so it is fetched (closed) too.
            interval.align(interval.align(event.open_time - 1) - 1)
        };
        best = Some(best.map_or(known, |b| b.max(known)));
    }
    Ok(best)
}

async fn last_event(
    stream: &Stream,
    subject: &str,
    shutdown: &CancellationToken,
) -> Result<Option<KlineEvent>, LastRawMessageError> {
    let started = tokio::time::Instant::now();
    loop {
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => {
                // A page's newest candle is its last.
                return match bus::decode_klines(Some(&m.headers), &m.payload) {
                    Ok(mut candles) => Ok(candles.pop()),
                    // Undecodable: as if absent (this source does not move the point).
                    Err(e) => {
                        tracing::warn!(%subject, error = %klinebus_svc::error_line(&e), "newest stored message undecodable");
                        Ok(None)
                    }
                };
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) if started.elapsed() >= PATIENCE || shutdown.is_cancelled() => return Err(e),
            Err(e) => tracing::debug!(%subject, error = %e, "reading the newest message; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
