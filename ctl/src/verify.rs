//! `klinectl verify`: parse the request, run [`klinebus_verify::verify`], print it; with
//! `--repair`, hand the gaps to [`crate::repair`] and verify the same window again.

use klinebus_schemas::bus::BusOptions;
use klinebus_schemas::{Interval, Symbol};
use klinebus_verify::{verify, Report, Span, VerifyRequest};
use tokio_util::sync::CancellationToken;

use crate::cli::VerifyArgs;
use crate::{repair, CtlError, Outcome};

/// Validates symbols and timeframes (before anything touches SQL) and builds the request.
pub fn request(a: &VerifyArgs, now_ms: i64) -> Result<VerifyRequest, CtlError> {
    let symbols = a
        .symbols
        .iter()
        .map(|s| s.trim().parse::<Symbol>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CtlError::Usage(e.to_string()))?;
    let intervals = a
        .timeframes
        .iter()
        .map(|s| s.trim().parse::<Interval>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CtlError::Usage(e.to_string()))?;
    if symbols.is_empty() || intervals.is_empty() {
        return Err(CtlError::Usage(
            "no symbols or timeframes: pass --symbols and --timeframes or set TRADING_PAIRS and TIMEFRAMES".into(),
        ));
    }
    let now_ms = match &a.at {
        None => now_ms,
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| CtlError::Usage(format!("--at {t:?}: {e}")))?
            .timestamp_millis(),
    };
    Ok(VerifyRequest {
        symbols,
        intervals,
        span: Span::Days(a.days),
        now_ms,
    })
}

/// Runs `verify`, and with `--repair` backfills the gaps and verifies again.
pub async fn run(
    db: &crate::Database,
    bus: &BusOptions,
    a: &VerifyArgs,
) -> Result<Outcome, CtlError> {
    if a.deep {
        return crate::deep::run(db, bus, a).await;
    }
    let req = request(a, chrono::Utc::now().timestamp_millis())?;
    let report = check(db, &req).await;
    if !a.repair.enabled || report.is_ok() {
        let output = if a.json {
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
        } else {
            report.render_text()
        };
        return Ok(Outcome {
            output,
            code: u8::from(!report.is_ok()),
        });
    }
    let mut output = report.render_text();
    if repair::has_gaps(&report) {
        let rest = repair::rest_client(&a.repair)?;
        let js = repair::connect(bus).await?;
        let done =
            repair::repair(&report, &a.repair, &js, &rest, &CancellationToken::new()).await?;
        output.push_str(&done.output);
        record_gaps(db, &done.summary, &mut output).await;
    } else {
        output.push_str("\nRepair: no gaps to backfill\n");
    }
    // The same request (same instant, same window): what the repair changed, and nothing else.
    let after = check(db, &req).await;
    output.push_str("\nAfter repair:\n");
    output.push_str(&after.render_text());
    Ok(Outcome {
        output,
        code: u8::from(!after.is_ok()),
    })
}

/// Verifies; an unreachable database is an `error` verdict for every series, not a failure.
async fn check(db: &crate::Database, req: &VerifyRequest) -> Report {
    match db.pool().await {
        Ok(p) => {
            let r = verify(&p, req).await;
            p.close().await;
            r
        }
        Err(e) => klinebus_verify::unreadable(req, &e.to_string()),
    }
}

/// Stores the exchange-side gaps and the listings the repair confirmed, so the re-verification
/// (and every later one) counts them as known instead of missing.
async fn record_gaps(db: &crate::Database, summary: &kline_backfill::Summary, output: &mut String) {
    let pool = match db.pool().await {
        Ok(p) => p,
        Err(e) => {
            output.push_str(&format!("Cannot record exchange gaps: {e}\n"));
            return;
        }
    };
    // Statuses come from exchangeInfo, which the repair does not read: only gaps and listings.
    if let Err(e) = kline_backfill::verify::record_exchange_facts(&pool, summary, &[], 0).await {
        output.push_str(&format!("Cannot record exchange gaps: {e}\n"));
    }
}
