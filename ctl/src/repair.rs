//! `klinectl verify --repair`: the gaps of every series that is not ok are backfilled with
//! kline-backfill's own code ([`kline_backfill::run_backfill`]), one [`SeriesPlan`] per gap, so
//! they are fetched, paged, weight-limited, published (`klines.backfill.binance.<SYMBOL>.<tf>`,
//! `Nats-Msg-Id` = candle key) and reported exactly as the producer does.
//!
//! Like the producer, the repair publishes only candles the `KLINES` stream does not hold (its
//! resume rule). Candles of a gap that the stream already holds were published before and are
//! missing from the table only: the sink is behind or the rows were lost after it stored them.
//! Publishing them again would change nothing (same dedup key), so they are counted as
//! "already in the stream" and the way to re-apply them is `klinectl replay`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use kline_backfill::{run_backfill, Plan, ProgressMode, RunOptions, SeriesPlan, Status, Summary};
use klinebus_binance::{RestClient, RestConfig, WeightLimiter};
use klinebus_schemas::bus::{self, BusOptions};
use klinebus_schemas::{Interval, Symbol};
use klinebus_verify::{datetime, Report};
use tokio_util::sync::CancellationToken;

use crate::cli::RepairArgs;
use crate::CtlError;

/// Series repaired at the same time (they share one weight budget).
const CONCURRENCY: usize = 4;
/// Publish acks outstanding at once.
const MAX_INFLIGHT: usize = 20_000;
/// How long a repair (or the auditor's) republishes what JetStream does not acknowledge: a
/// broker restart or a stream leader election is ridden out, as kline-backfill's --patience.
pub(crate) const PUBLISH_PATIENCE: Duration = Duration::from_secs(10 * 60);

/// The gaps of every series of `report` that is not ok, as backfill plans (`[start, end]` open
/// times → `[start, next open after end)`), capped at the exchange's clock `server_now_ms`.
pub fn plan(report: &Report, server_now_ms: i64) -> Result<Plan, CtlError> {
    let mut series = Vec::new();
    for (symbol, by_tf) in &report.results {
        for (tf, r) in by_tf {
            if r.status.is_ok() {
                continue;
            }
            let symbol: Symbol = symbol
                .parse()
                .map_err(|e| CtlError::Usage(format!("{e}")))?;
            let interval: Interval = tf.parse().map_err(|e| CtlError::Usage(format!("{e}")))?;
            let forming = interval.align(server_now_ms);
            for g in &r.gaps {
                let to_ms = interval.next_open(g.end).min(forming);
                if to_ms > g.start {
                    series.push(SeriesPlan {
                        symbol: symbol.clone(),
                        interval,
                        from_ms: g.start,
                        to_ms,
                    });
                }
            }
        }
    }
    Ok(Plan {
        series,
        server_now_ms,
    })
}

/// True when some series that is not ok has gaps (series in `error` have none: the database
/// could not be read, so there is nothing to repair).
pub fn has_gaps(report: &Report) -> bool {
    report
        .results
        .values()
        .flat_map(|by_tf| by_tf.values())
        .any(|r| !r.status.is_ok() && !r.gaps.is_empty())
}

/// What the repair did.
#[derive(Debug)]
pub struct Repaired {
    /// The backfill's outcome, one series report per gap.
    pub summary: Summary,
    /// Text for stdout.
    pub output: String,
}

/// A REST client for `a.rest_url` with its own weight budget.
pub fn rest_client(a: &RepairArgs) -> Result<RestClient, CtlError> {
    let config = RestConfig {
        base_url: a.rest_url.trim_end_matches('/').to_owned(),
        ..RestConfig::default()
    };
    RestClient::new(config, Arc::new(WeightLimiter::new(a.weight_budget))).map_err(|source| {
        CtlError::Exchange {
            what: "the REST client".into(),
            source,
        }
    })
}

/// Connects to NATS with a publishing context (acks pipelined, back-pressure when full).
pub async fn connect(opts: &BusOptions) -> Result<Context, CtlError> {
    let client = bus::connect(opts)
        .await
        .map_err(CtlError::nats("connecting"))?;
    Ok(jetstream(client))
}

/// The publishing context repairs use on `client`.
pub fn jetstream(client: async_nats::Client) -> Context {
    bus::jetstream(client, MAX_INFLIGHT)
}

/// Backfills the gaps of `report`, then waits (up to `--repair-wait`) for the sink's consumer to
/// drain. Returns the per-gap lines; the caller verifies again.
pub async fn repair(
    report: &Report,
    a: &RepairArgs,
    js: &Context,
    rest: &RestClient,
    cancel: &CancellationToken,
) -> Result<Repaired, CtlError> {
    let server_now = crate::exchange_time(rest, &a.rest_url).await?;
    let plan = plan(report, server_now)?;
    let mut out = String::new();
    if plan.series.is_empty() {
        let _ = writeln!(out, "\nRepair: no gaps to backfill");
        return Ok(Repaired {
            summary: Summary::default(),
            output: out,
        });
    }
    let _ = writeln!(
        out,
        "\nRepair: backfilling {} gap{} from {}",
        plan.series.len(),
        if plan.series.len() == 1 { "" } else { "s" },
        a.rest_url
    );
    let options = RunOptions {
        concurrency: CONCURRENCY,
        progress: ProgressMode::Quiet,
        resume: true,
        fetch: kline_backfill::Fetch::Rest,
        flow: None,
        patience: PUBLISH_PATIENCE,
    };
    let summary = run_backfill(&plan, rest, js, options, cancel).await;
    out.push_str(&render(&plan, &summary));
    let in_stream: u64 = summary
        .series
        .iter()
        .map(|s| s.present + s.duplicates)
        .sum();
    if in_stream > 0 {
        let _ = writeln!(
            out,
            "Note: {in_stream} missing candles are already in the KLINES stream, so publishing \
             them again changes nothing; the sink is behind or the table lost them. \
             `klinectl replay --consumer {} --from <time>` makes the sink re-apply the stream.",
            a.repair_consumer
        );
    }
    let wait: Duration = a.repair_wait.into();
    if !wait.is_zero() {
        let _ = writeln!(out, "Waiting for consumer {}…", a.repair_consumer);
        if let Err(e) = kline_backfill::verify::wait_until_consumed(
            js,
            &a.repair_consumer,
            wait,
            Duration::from_millis(250),
            cancel,
        )
        .await
        {
            let _ = writeln!(out, "Not caught up: {}", klinebus_svc::error_line(&e));
        }
    }
    Ok(Repaired {
        summary,
        output: out,
    })
}

/// One line per gap: what the backfill published for it.
pub fn render(plan: &Plan, summary: &Summary) -> String {
    let mut out = String::new();
    for (p, s) in plan.series.iter().zip(&summary.series) {
        let last = p.interval.align(p.to_ms - 1);
        let outcome = match &s.status {
            Status::Complete => "complete".to_owned(),
            Status::Gaps => format!(
                "{} missing on the exchange",
                s.gaps.iter().map(|g| g.candles).sum::<u64>()
            ),
            Status::Failed(e) => format!("FAILED: {e}"),
            Status::Cancelled => "interrupted".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {} {} gap {} .. {} ({} candles): published {}, already in the stream {}; {outcome}",
            p.symbol,
            p.interval,
            datetime(p.from_ms),
            datetime(last),
            s.expected,
            s.published,
            s.present + s.duplicates,
        );
    }
    let _ = writeln!(
        out,
        "Repair published {} candles with {} REST requests; {}/{} gaps failed",
        summary.published(),
        summary.rest_requests,
        summary.errors(),
        summary.series.len()
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use klinebus_verify::{Gap, SeriesReport};
    use std::collections::BTreeMap;

    fn series(status: klinebus_verify::Status, gaps: Vec<Gap>) -> SeriesReport {
        SeriesReport {
            status,
            count: 0,
            expected: 0,
            latest_timestamp: None,
            latest_datetime: None,
            age_seconds: None,
            window_start: 0,
            listed_at: None,
            exchange_status: None,
            exchange_status_since: None,
            issues: vec![],
            notes: vec![],
            gaps,
        }
    }

    fn gap(start: i64, end: i64) -> Gap {
        Gap {
            start,
            end,
            start_datetime: datetime(start),
            end_datetime: datetime(end),
            missing: (end - start) / 60_000 + 1,
        }
    }

    #[test]
    fn plans_the_gaps_of_series_that_are_not_ok() {
        const T: i64 = 1_749_038_400_000; // 2025-06-04T12:00:00Z
        let mut results = BTreeMap::new();
        let mut btc = BTreeMap::new();
        btc.insert(
            "1m".to_owned(),
            series(
                klinebus_verify::Status::Incomplete,
                vec![gap(T, T + 2 * 60_000), gap(T + 600_000, T + 900_000)],
            ),
        );
        results.insert("BTCUSDT".to_owned(), btc);
        let mut eth = BTreeMap::new();
        eth.insert(
            "1m".to_owned(),
            series(klinebus_verify::Status::Ok, vec![gap(T, T)]),
        );
        results.insert("ETHUSDT".to_owned(), eth);
        let report = Report {
            checked_at: datetime(T),
            overall_status: klinebus_verify::Status::Incomplete,
            results,
        };
        // The exchange clock is inside the second gap: its forming candle is left out.
        let p = plan(&report, T + 800_000 + 5).unwrap();
        let ranges: Vec<_> = p.series.iter().map(|s| (s.from_ms, s.to_ms)).collect();
        assert_eq!(ranges, [(T, T + 3 * 60_000), (T + 600_000, T + 780_000)]);
        assert!(p.series.iter().all(|s| s.symbol.as_str() == "BTCUSDT"));
    }
}
