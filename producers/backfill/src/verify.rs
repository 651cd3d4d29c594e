//! Waiting for a sink to catch up after a backfill: the durable consumer (by default the
//! Postgres sink's `pg-sink`) has no messages left to deliver and none awaiting an ack.
//!
//! The verification itself (comparing Postgres with the exchange) belongs to the operators'
//! tool and is called after [`wait_until_consumed`] returns `Ok`. Verification reads only
//! Postgres, so what the backfill learnt from the exchange is recorded there first
//! ([`record_exchange_facts`]): its gaps, the listings it met and the symbols' statuses
//! ([`exchange_statuses`]).

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::Context;
use klinebus_binance::RestClient;
use klinebus_schemas::streams::KLINES_STREAM;
use klinebus_schemas::Symbol;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Default durable consumer of the Postgres sink.
pub const DEFAULT_VERIFY_CONSUMER: &str = klinebus_schemas::streams::PG_SINK_DURABLE;

/// Why the wait ended without the consumer being caught up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The consumer or stream could not be read.
    #[error("cannot read consumer {consumer} of {KLINES_STREAM}{hint}")]
    Consumer {
        /// Consumer name.
        consumer: String,
        /// What to check, when the server says the consumer does not exist (else empty).
        hint: String,
        /// The server's or client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Still behind when the time was up.
    #[error("consumer {consumer} still has {pending} messages to deliver and {ack_pending} unacknowledged after {waited:?}")]
    Timeout {
        /// Consumer name.
        consumer: String,
        /// Messages not yet delivered.
        pending: u64,
        /// Delivered but unacknowledged.
        ack_pending: usize,
        /// How long we waited.
        waited: Duration,
    },
    /// SIGINT/SIGTERM while waiting.
    #[error("interrupted while waiting for consumer {0}")]
    Cancelled(String),
}

/// Polls `consumer` on the `KLINES` stream every `poll` until `num_pending == 0` and
/// `num_ack_pending == 0`, or `timeout` passes. A consumer or stream the server says does not
/// exist ends the wait at once; a broker that does not answer (restarting, say) is asked again
/// until the timeout.
pub async fn wait_until_consumed(
    js: &Context,
    consumer: &str,
    timeout: Duration,
    poll: Duration,
    cancel: &CancellationToken,
) -> Result<(), WaitError> {
    let started = Instant::now();
    let fail = |lookup: Lookup| {
        let (hint, source) = match lookup {
            Lookup::Missing { hint, source } => (hint, source),
            Lookup::Unavailable(source) => (String::new(), source),
        };
        WaitError::Consumer {
            consumer: consumer.to_owned(),
            hint,
            source,
        }
    };
    loop {
        match consumer_info(js, consumer).await {
            Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => return Ok(()),
            Ok(info) if started.elapsed() >= timeout => {
                return Err(WaitError::Timeout {
                    consumer: consumer.to_owned(),
                    pending: info.num_pending,
                    ack_pending: info.num_ack_pending,
                    waited: started.elapsed(),
                });
            }
            Ok(_) => {}
            Err(missing @ Lookup::Missing { .. }) => return Err(fail(missing)),
            Err(unavailable) if started.elapsed() >= timeout => return Err(fail(unavailable)),
            Err(Lookup::Unavailable(e)) => {
                tracing::warn!(consumer, error = %klinebus_svc::error_line(e.as_ref()),
                    "cannot read the consumer yet; asking again");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(WaitError::Cancelled(consumer.to_owned())),
            () = tokio::time::sleep(poll) => {}
        }
    }
}

enum Lookup {
    /// The server says the stream or consumer does not exist.
    Missing {
        /// What to check (may be empty).
        hint: String,
        /// The server's answer.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer, or not a usable one (worth asking again).
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
}

async fn consumer_info(js: &Context, consumer: &str) -> Result<consumer::Info, Lookup> {
    let stream = match js.get_stream(KLINES_STREAM).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(_)) => {
            return Err(Lookup::Missing {
                hint: String::new(),
                source: Box::new(e),
            })
        }
        Err(e) => return Err(Lookup::Unavailable(Box::new(e))),
    };
    stream
        .consumer_info(consumer)
        .await
        .map_err(|e| match e.kind() {
            ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::InvalidName => Lookup::Missing {
                hint: format!(" (is the sink that consumes it, e.g. kline-pg-sink --consumer {consumer}, running against this NATS?)"),
                source: Box::new(e),
            },
            ConsumerInfoErrorKind::StreamNotFound => Lookup::Missing {
                hint: String::new(),
                source: Box::new(e),
            },
            _ => Lookup::Unavailable(Box::new(e)),
        })
}

/// The exchange status of each of `symbols` from one `exchangeInfo` call: its `status`
/// (`TRADING`, `BREAK`, …), or [`klinebus_verify::DELISTED`] when exchangeInfo does not list it.
pub async fn exchange_statuses(
    rest: &RestClient,
    symbols: &[Symbol],
) -> Result<Vec<(Symbol, String)>, klinebus_binance::BinanceError> {
    let listed = rest.exchange_info().await?;
    Ok(symbols
        .iter()
        .map(|s| {
            let status = listed
                .iter()
                .find(|l| l.symbol == s.as_str())
                .map_or(klinebus_verify::DELISTED, |l| l.status.as_str());
            (s.clone(), status.to_owned())
        })
        .collect())
}

/// Records what a backfill learnt from the exchange, so verification counts it: each series'
/// exchange gaps and first candle (when the window started before it), and each symbol's status
/// as seen at `observed_at` (the exchange's clock). Idempotent.
pub async fn record_exchange_facts(
    pool: &PgPool,
    summary: &crate::Summary,
    statuses: &[(Symbol, String)],
    observed_at: i64,
) -> Result<(), sqlx::Error> {
    for series in &summary.series {
        let gaps: Vec<_> = series
            .gaps
            .iter()
            .map(|g| klinebus_verify::KnownGap {
                start: g.start_ms,
                end: g.end_ms,
            })
            .collect();
        klinebus_verify::record_exchange_gaps(pool, &series.symbol, series.interval, &gaps).await?;
        if let Some(first) = series.listed_ms {
            klinebus_verify::record_listing(pool, &series.symbol, series.interval, first).await?;
        }
    }
    for (symbol, status) in statuses {
        klinebus_verify::record_symbol_status(pool, symbol, status, observed_at).await?;
    }
    Ok(())
}
