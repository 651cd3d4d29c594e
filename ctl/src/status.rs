//! `klinectl status`: the `ingestion_status` table and every JetStream consumer's lag.

use std::fmt::Write;

use futures::TryStreamExt;
use klinebus_schemas::bus::{self, BusOptions};
use klinebus_schemas::streams::{all_streams, Retention};
use klinebus_verify::datetime;
use serde::Serialize;

use crate::cli::StatusArgs;
use crate::{CtlError, Outcome};

/// One `ingestion_status` row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SeriesStatus {
    /// Symbol.
    pub symbol: String,
    /// Timeframe.
    pub timeframe: String,
    /// active | error.
    pub status: String,
    /// websocket | polling | backfill | repair.
    pub ingestion_mode: Option<String>,
    /// Newest candle open time stored (ms).
    pub last_ingested_timestamp: Option<i64>,
    /// Newest closed candle open time stored (ms).
    pub last_closed_timestamp: Option<i64>,
    /// When a candle of the series was last committed (RFC 3339).
    pub last_ingested_at: Option<String>,
    /// Close (or event) to commit, last batch.
    pub latency_ms: Option<i64>,
    /// Consecutive errors.
    pub error_count: i32,
    /// Last error.
    pub error_message: Option<String>,
    /// Candles written so far.
    pub candles_ingested: i64,
}

/// One consumer's position.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerLag {
    /// Stream.
    pub stream: String,
    /// Durable name.
    pub consumer: String,
    /// Messages not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: usize,
    /// Redelivered so far.
    pub redelivered: usize,
}

/// Reads `ingestion_status`.
pub async fn series(pool: &sqlx::PgPool) -> Result<Vec<SeriesStatus>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT symbol::text, timeframe::text, status::text, ingestion_mode::text,
                  last_ingested_timestamp, last_closed_timestamp,
                  to_char(last_ingested_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS last_ingested_at,
                  latency_ms, error_count, error_message, candles_ingested
           FROM ingestion_status ORDER BY symbol, timeframe"#,
    )
    .fetch_all(pool)
    .await
}

/// Every durable consumer of every klinebus stream, with its lag.
pub async fn consumers(opts: &BusOptions) -> Result<Vec<ConsumerLag>, CtlError> {
    let client = bus::connect(opts)
        .await
        .map_err(CtlError::nats("connecting"))?;
    let js = async_nats::jetstream::new(client);
    let mut out = Vec::new();
    for spec in all_streams(&Retention::default()) {
        let Ok(stream) = js.get_stream(&spec.name).await else {
            continue;
        };
        let infos: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(CtlError::nats("listing consumers"))?;
        for c in infos {
            out.push(ConsumerLag {
                stream: spec.name.clone(),
                consumer: c.name,
                pending: c.num_pending,
                ack_pending: c.num_ack_pending,
                redelivered: c.num_redelivered,
            });
        }
    }
    Ok(out)
}

/// Runs `status`.
pub async fn run(
    db: &crate::Database,
    opts: &BusOptions,
    a: &StatusArgs,
) -> Result<Outcome, CtlError> {
    let p = db.pool().await?;
    let rows = series(&p).await?;
    let lags = consumers(opts).await;
    let output = if a.json {
        let (consumers, nats_error) = match &lags {
            Ok(l) => (l.clone(), None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let v =
            serde_json::json!({ "series": rows, "consumers": consumers, "nats_error": nats_error });
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    } else {
        render(&rows, &lags)
    };
    Ok(Outcome {
        output,
        code: u8::from(lags.is_err()),
    })
}

fn render(rows: &[SeriesStatus], lags: &Result<Vec<ConsumerLag>, CtlError>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<12} {:>4}  {:<7} {:<10} {:<20} {:<20} {:>8} {:>6}  error",
        "SYMBOL", "TF", "STATUS", "MODE", "LAST CANDLE", "LAST INGESTED", "LATENCY", "ERRORS"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "{:<12} {:>4}  {:<7} {:<10} {:<20} {:<20} {:>8} {:>6}  {}",
            r.symbol,
            r.timeframe,
            r.status,
            r.ingestion_mode.as_deref().unwrap_or("-"),
            r.last_ingested_timestamp.map_or("-".into(), datetime),
            r.last_ingested_at.as_deref().unwrap_or("-"),
            r.latency_ms.map_or("-".into(), |l| format!("{l}ms")),
            r.error_count,
            r.error_message.as_deref().unwrap_or("")
        );
    }
    if rows.is_empty() {
        let _ = writeln!(o, "(no series ingested yet)");
    }
    let _ = writeln!(o);
    match lags {
        Ok(l) => {
            let _ = writeln!(
                o,
                "{:<8} {:<24} {:>10} {:>11} {:>11}",
                "STREAM", "CONSUMER", "PENDING", "ACK PENDING", "REDELIVERED"
            );
            for c in l {
                let _ = writeln!(
                    o,
                    "{:<8} {:<24} {:>10} {:>11} {:>11}",
                    c.stream, c.consumer, c.pending, c.ack_pending, c.redelivered
                );
            }
            if l.is_empty() {
                let _ = writeln!(o, "(no consumers)");
            }
        }
        Err(e) => {
            let _ = writeln!(
                o,
                "consumers: unavailable ({})",
                klinebus_svc::error_line(e)
            );
        }
    }
    o
}
