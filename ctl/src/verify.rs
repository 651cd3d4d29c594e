//! `klinectl verify`: parse the request, run [`klinebus_verify::verify`], print it.

use klinebus_schemas::{Interval, Symbol};
use klinebus_verify::{verify, VerifyRequest};

use crate::cli::VerifyArgs;
use crate::{pool, CtlError, Outcome};

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
        days: a.days,
        now_ms,
    })
}

/// Runs `verify`.
pub async fn run(database_url: &str, a: &VerifyArgs) -> Result<Outcome, CtlError> {
    let req = request(a, chrono::Utc::now().timestamp_millis())?;
    // An unreachable database is an `error` verdict for every series, not a usage failure.
    let report = match pool(database_url).await {
        Ok(p) => verify(&p, &req).await,
        Err(e) => klinebus_verify::unreadable(&req, &e.to_string()),
    };
    let output = if a.json {
        serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
    } else {
        report.render_text()
    };
    Ok(Outcome {
        output,
        code: u8::from(!report.is_ok()),
    })
}
