//! `klinectl alerts`: the documented alert rules, one line per firing alert.
//!
//! Rules:
//! - `no_recent_data`: no series has ingested anything within `--no-data-for` (default 2 h);
//! - `stale`: a series' newest closed candle closed longer ago than its freshness limit
//!   (1m 6 min, 5m 30 min, 15m 1 h, 1h 2 h, 4h 5 h, 1d 25 h, 1w 7 d);
//! - `ingestion_errors`: a series has more consecutive ingestion errors than `--max-errors`.

use std::time::Duration;

use klinebus_schemas::Interval;
use klinebus_verify::{human_age, human_limit};
use serde::Serialize;
use sqlx::PgPool;

use crate::cli::AlertsArgs;
use crate::{CtlError, Outcome};

/// One firing alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// Rule name.
    pub rule: &'static str,
    /// Series, when the rule is per series.
    pub symbol: Option<String>,
    /// Timeframe, when the rule is per series.
    pub timeframe: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Evaluates every rule at `now_ms`.
pub async fn evaluate(
    pool: &PgPool,
    now_ms: i64,
    no_data_for: Duration,
    max_errors: i32,
) -> Result<Vec<Alert>, sqlx::Error> {
    let mut alerts = Vec::new();
    let newest: Option<i64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM max(last_ingested_at)) * 1000)::bigint FROM ingestion_status",
    )
    .fetch_one(pool)
    .await?;
    let quiet = newest.is_none_or(|t| now_ms - t > no_data_for.as_millis() as i64);
    if quiet {
        alerts.push(Alert {
            rule: "no_recent_data",
            symbol: None,
            timeframe: None,
            message: format!(
                "No symbol has data in the last {}",
                human_limit(no_data_for)
            ),
        });
    }
    // The newest closed candle of each tracked series, via the primary key (one index probe each).
    // symbol, timeframe, newest closed close_time, consecutive errors, last error
    type Row = (String, String, Option<i64>, i32, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        r#"SELECT s.symbol::text, s.timeframe::text,
                  (SELECT c.close_time FROM ohlcv_candles c
                    WHERE c.symbol = s.symbol AND c.timeframe = s.timeframe AND c.is_closed
                    ORDER BY c."timestamp" DESC LIMIT 1),
                  s.error_count, s.error_message
           FROM ingestion_status s ORDER BY 1, 2"#,
    )
    .fetch_all(pool)
    .await?;
    for (symbol, tf, close_time, errors, error_message) in rows {
        if let (Ok(interval), Some(close)) = (tf.parse::<Interval>(), close_time) {
            let age = Duration::from_millis((now_ms - close).max(0) as u64);
            let limit = interval.freshness_limit();
            if age > limit {
                alerts.push(Alert {
                    rule: "stale",
                    symbol: Some(symbol.clone()),
                    timeframe: Some(tf.clone()),
                    message: format!(
                        "Data is {} old (expected < {})",
                        human_age(age),
                        human_limit(limit)
                    ),
                });
            }
        }
        if errors > max_errors {
            alerts.push(Alert {
                rule: "ingestion_errors",
                symbol: Some(symbol),
                timeframe: Some(tf),
                message: format!(
                    "{errors} consecutive ingestion errors (threshold {max_errors}): {}",
                    error_message.unwrap_or_default()
                ),
            });
        }
    }
    Ok(alerts)
}

/// Renders one line per alert: `ALERT <rule> [<symbol> <tf>]: <message>`.
pub fn render(alerts: &[Alert]) -> String {
    alerts
        .iter()
        .map(|a| match (&a.symbol, &a.timeframe) {
            (Some(s), Some(t)) => format!("ALERT {} {s} {t}: {}\n", a.rule, a.message),
            _ => format!("ALERT {}: {}\n", a.rule, a.message),
        })
        .collect()
}

/// Runs `alerts`.
pub async fn run(db: &crate::Database, a: &AlertsArgs) -> Result<Outcome, CtlError> {
    let p = db.pool().await?;
    let now = chrono::Utc::now().timestamp_millis();
    let alerts = evaluate(&p, now, a.no_data_for.into(), a.max_errors).await?;
    let output = if a.json {
        serde_json::to_string_pretty(&alerts).unwrap_or_default() + "\n"
    } else {
        render(&alerts)
    };
    Ok(Outcome {
        output,
        code: u8::from(!alerts.is_empty()),
    })
}
