//! `klinectl audit`: the continuous completeness auditor, the safety net under everything else.
//!
//! Every `--every` it checks a recent window of every configured series in Postgres (the same
//! verification as `klinectl verify`, so listings, halts and the exchange's own gaps count as
//! they do there), finds the closed candles that are missing — holes, and forming rows whose
//! close time has passed, which a crashed producer can leave behind — and repairs them over
//! REST with kline-backfill's code ([`crate::repair`]) under one weight limiter, publishing to
//! `klines.backfill.…` for the sinks. Candles closed less than `--grace` ago are not expected
//! yet (the pipeline's own latency). What it learns from the exchange (symbol statuses, listings,
//! exchange-side gaps) is recorded so the next check counts it.
//!
//! Metrics (`--metrics-addr`): `klinebus_audit_runs_total{outcome}`,
//! `klinebus_audit_holes_found_total` and `klinebus_audit_candles_repaired_total` (candles),
//! `klinebus_audit_missing_candles` (found by the last run), `klinebus_audit_unrepaired_candles`
//! and `klinebus_audit_oldest_unrepaired_candle_seconds` (open time of the oldest candle the last
//! run could not repair, 0 when none), `klinebus_audit_last_run_timestamp_seconds`,
//! `klinebus_audit_last_run_duration_seconds`, `klinebus_audit_rest_requests_total`; and per
//! series, read from the database at each run and every minute between ([`freshness`]), the
//! newest closed candle's close time, the freshness limit, the last ingestion, consecutive
//! ingestion errors and whether the symbol is halted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use kline_backfill::{
    run_backfill, Plan, ProgressMode, RunOptions, SeriesPlan, Status as FetchStatus,
};
use klinebus_binance::{RestClient, RestConfig, RetryPolicy, WeightLimiter, MAX_KLINES_LIMIT};
use klinebus_schemas::bus::BusOptions;
use klinebus_schemas::{Interval, Symbol};
use klinebus_verify::{datetime, Report, Span, VerifyRequest};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cli::AuditArgs;
use crate::{freshness, repair, CtlError, Outcome};

/// Series repaired at the same time (they share the weight limiter).
const CONCURRENCY: usize = 4;
/// Fewest candles of each timeframe a check covers, whatever `--window` says.
const MIN_CANDLES: i64 = 3;
/// How often the series' freshness metrics are read between runs.
const SERIES_EVERY: Duration = Duration::from_secs(60);

/// What one audit run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRun {
    /// Series checked.
    pub series: usize,
    /// Closed candles missing from the table (holes and expired forming rows).
    pub missing: u64,
    /// Missing candles the repair published (or found just published: a dedup-window
    /// duplicate is on its way to the sinks).
    pub repaired: u64,
    /// Candles the exchange itself has none of (recorded as exchange gaps).
    pub exchange_gaps: u64,
    /// Missing candles whose repair failed (retried at the next run).
    pub failed: u64,
    /// Open time of the oldest candle whose repair failed.
    pub oldest_unrepaired: Option<i64>,
    /// REST requests spent.
    pub rest_requests: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl AuditRun {
    /// Candles this run could not repair.
    pub fn unrepaired(&self) -> u64 {
        self.failed
    }

    /// One line for the log and stdout.
    pub fn line(&self) -> String {
        let mut s = format!(
            "audit: {} series, {} candles missing, {} repaired, {} not on the exchange, {} failed; {} REST requests in {:.1} s",
            self.series,
            self.missing,
            self.repaired,
            self.exchange_gaps,
            self.failed,
            self.rest_requests,
            self.elapsed.as_secs_f64()
        );
        if let Some(t) = self.oldest_unrepaired {
            let _ = write!(s, "; oldest unrepaired {}", datetime(t));
        }
        s
    }
}

/// The auditor's REST client: its own limiter, and patience for exchange incidents (a run that
/// still fails is simply retried at the next one).
pub fn rest_client(a: &AuditArgs) -> Result<RestClient, CtlError> {
    let config = RestConfig {
        base_url: a.rest_url.trim_end_matches('/').to_owned(),
        retry: RetryPolicy {
            patience: Some(Duration::from_secs(60)),
            ..RetryPolicy::default()
        },
        ..RestConfig::default()
    };
    RestClient::new(config, Arc::new(WeightLimiter::new(a.weight_budget))).map_err(|source| {
        CtlError::Exchange {
            what: "the REST client".into(),
            source,
        }
    })
}

/// The holes of `plan` joined per series into ranges of at most one REST page, so that many
/// small holes cost a request per page, not one each; with the number of holes in each range.
fn pages(plan: Plan) -> (Plan, Vec<u64>) {
    let mut series: Vec<SeriesPlan> = Vec::new();
    let mut holes = Vec::new();
    for p in plan.series {
        let n = p.expected();
        if let Some(last) = series.last_mut() {
            let same = last.symbol == p.symbol && last.interval == p.interval;
            let span = p.interval.count_between(last.from_ms, p.to_ms);
            if same && p.from_ms >= last.to_ms && span <= i64::from(MAX_KLINES_LIMIT) {
                last.to_ms = p.to_ms;
                if let Some(h) = holes.last_mut() {
                    *h += n;
                }
                continue;
            }
        }
        series.push(p);
        holes.push(n);
    }
    (
        Plan {
            series,
            server_now_ms: plan.server_now_ms,
        },
        holes,
    )
}

/// Days of history the check of `interval` covers: `window`, at least [`MIN_CANDLES`] candles.
fn days_for(interval: Interval, window: Duration) -> u32 {
    let ms = (window.as_millis() as i64).max(MIN_CANDLES * interval.nominal_ms());
    ((ms + 86_399_999) / 86_400_000).clamp(1, i64::from(u32::MAX)) as u32
}

/// One audit: verify the recent window of every series, repair what is missing.
pub async fn audit_once(
    pool: &PgPool,
    js: &Context,
    rest: &RestClient,
    symbols: &[Symbol],
    intervals: &[Interval],
    a: &AuditArgs,
    cancel: &CancellationToken,
) -> Result<AuditRun, CtlError> {
    let started = Instant::now();
    let requests_before = rest.stats().requests;
    let server_now = crate::exchange_time(rest, &a.rest_url).await?;
    // Halts and delistings become verdicts of their own, not holes to repair.
    let statuses = match kline_backfill::verify::exchange_statuses(rest, symbols).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read exchangeInfo; symbol statuses not refreshed");
            Vec::new()
        }
    };
    for (symbol, status) in &statuses {
        klinebus_verify::record_symbol_status(pool, symbol, status, server_now).await?;
    }
    let at = server_now - a.grace.as_millis() as i64;
    let mut results = BTreeMap::new();
    for &interval in intervals {
        let req = VerifyRequest {
            symbols: symbols.to_vec(),
            intervals: vec![interval],
            span: Span::Days(Some(days_for(interval, a.window.into()))),
            now_ms: at,
        };
        let report = klinebus_verify::verify(pool, &req).await;
        for (symbol, by_tf) in report.results {
            results
                .entry(symbol)
                .or_insert_with(BTreeMap::new)
                .extend(by_tf);
        }
    }
    let report = Report {
        checked_at: datetime(at),
        overall_status: klinebus_verify::Status::Ok,
        results,
    };
    let mut run = AuditRun {
        series: symbols.len() * intervals.len(),
        ..AuditRun::default()
    };
    let holes = repair::plan(&report, server_now)?;
    run.missing = holes.series.iter().map(|s| s.expected()).sum();
    let (plan, holes_in) = pages(holes);
    if !plan.series.is_empty() {
        // Every candle of a range is published again, whatever the stream holds: the table
        // lacks it, and the sinks' upsert leaves the candles it has unchanged.
        let options = RunOptions {
            concurrency: CONCURRENCY,
            progress: ProgressMode::Silent,
            resume: false,
            fetch: kline_backfill::Fetch::Rest,
            flow: None,
            patience: crate::repair::PUBLISH_PATIENCE,
        };
        let summary = run_backfill(&plan, rest, js, options, cancel).await;
        kline_backfill::verify::record_exchange_facts(pool, &summary, &[], server_now).await?;
        for ((p, s), holes) in plan.series.iter().zip(&summary.series).zip(holes_in) {
            let absent: u64 = s.gaps.iter().map(|g| g.candles).sum::<u64>() + s.before_listing;
            run.exchange_gaps += absent;
            if matches!(s.status, FetchStatus::Failed(_) | FetchStatus::Cancelled) {
                run.failed += holes;
                run.oldest_unrepaired = Some(
                    run.oldest_unrepaired
                        .map_or(p.from_ms, |o| o.min(p.from_ms)),
                );
                tracing::warn!(symbol = %p.symbol, interval = %p.interval, status = ?s.status,
                    from = %datetime(p.from_ms), "audit repair failed; retried at the next run");
            } else {
                run.repaired += holes.saturating_sub(absent);
            }
        }
    }
    run.rest_requests = rest.stats().requests - requests_before;
    run.elapsed = started.elapsed();
    record(&run);
    Ok(run)
}

fn record(run: &AuditRun) {
    metrics::counter!("klinebus_audit_runs_total", "outcome" => "ok").increment(1);
    metrics::counter!("klinebus_audit_holes_found_total").increment(run.missing);
    metrics::counter!("klinebus_audit_candles_repaired_total").increment(run.repaired);
    metrics::counter!("klinebus_audit_rest_requests_total").increment(run.rest_requests);
    metrics::gauge!("klinebus_audit_missing_candles").set(run.missing as f64);
    metrics::gauge!("klinebus_audit_unrepaired_candles").set(run.unrepaired() as f64);
    metrics::gauge!("klinebus_audit_oldest_unrepaired_candle_seconds")
        .set(run.oldest_unrepaired.map_or(0.0, |t| t as f64 / 1000.0));
    metrics::gauge!("klinebus_audit_last_run_duration_seconds").set(run.elapsed.as_secs_f64());
    metrics::gauge!("klinebus_audit_last_run_timestamp_seconds").set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
}

/// Reads the series' freshness and ingestion health and sets their gauges ([`freshness`]); on
/// failure they keep their last values, and `klinebus_audit_series_refreshed_timestamp_seconds`
/// says since when.
async fn refresh_series(pool: &PgPool, symbols: &[Symbol], intervals: &[Interval]) {
    if let Err(e) = freshness::refresh(pool, symbols, intervals).await {
        tracing::warn!(error = %klinebus_svc::error_line(&e),
            "cannot read the series' freshness from the database; trying again in a minute");
    }
}

/// `klinectl audit`: one run with `--once` (exit code 1 when something stayed unrepaired),
/// otherwise a run every `--every` until SIGINT/SIGTERM.
pub async fn run(
    db: &crate::Database,
    bus: &BusOptions,
    a: &AuditArgs,
) -> Result<Outcome, CtlError> {
    let symbols = Symbol::parse_list(&a.symbols.join(","))
        .map_err(|e| CtlError::Usage(format!("--symbols / TRADING_PAIRS: {e}")))?;
    let intervals = Interval::parse_list(&a.timeframes.join(","))
        .map_err(|e| CtlError::Usage(format!("--timeframes / TIMEFRAMES: {e}")))?;
    let metrics_addr = klinebus_svc::parse_metrics_addr(&a.metrics_addr)
        .map_err(|e| CtlError::Usage(format!("--metrics-addr: {e}")))?;
    let shutdown = klinebus_svc::shutdown_token();
    let health = klinebus_svc::Health::default();
    if let Some(addr) = metrics_addr {
        let bound = klinebus_svc::serve_telemetry(addr, health.clone(), shutdown.clone())
            .await
            .map_err(|e| CtlError::Usage(e.to_string()))?;
        tracing::info!(%bound, "serving /metrics and /health");
    }
    let rest = rest_client(a)?;
    // One run fails as any command does; the daemon waits for what is not up yet, as the
    // services do.
    let (pool, js) = if a.once {
        (db.pool().await?, repair::connect(bus).await?)
    } else {
        let stopped = || Outcome {
            output: String::new(),
            code: 0,
        };
        let Some(pool) = db.pool_waiting(&shutdown).await? else {
            return Ok(stopped());
        };
        let Some(client) = klinebus_svc::connect_bus(bus, &shutdown, None)
            .await
            .map_err(CtlError::nats("connecting"))?
        else {
            return Ok(stopped());
        };
        (pool, repair::jetstream(client))
    };
    health.set_ready(true);
    if a.once {
        let r = audit_once(&pool, &js, &rest, &symbols, &intervals, a, &shutdown).await?;
        return Ok(Outcome {
            output: format!("{}\n", r.line()),
            code: u8::from(r.unrepaired() > 0),
        });
    }
    tracing::info!(series = symbols.len() * intervals.len(), every = %a.every, "auditor started");
    let every: Duration = a.every.into();
    'runs: loop {
        refresh_series(&pool, &symbols, &intervals).await;
        match audit_once(&pool, &js, &rest, &symbols, &intervals, a, &shutdown).await {
            Ok(r) if r.missing > 0 || r.unrepaired() > 0 => tracing::warn!("{}", r.line()),
            Ok(r) => tracing::info!("{}", r.line()),
            Err(e) => {
                metrics::counter!("klinebus_audit_runs_total", "outcome" => "error").increment(1);
                tracing::warn!(error = %klinebus_svc::error_line(&e), "audit run failed; trying again at the next one");
            }
        }
        // Between runs too: alerts take ages from these timestamps, which are only as recent
        // as their last read.
        let next_run = Instant::now() + every;
        loop {
            let wait = next_run
                .saturating_duration_since(Instant::now())
                .min(SERIES_EVERY);
            tokio::select! {
                _ = shutdown.cancelled() => break 'runs,
                _ = tokio::time::sleep(wait) => {}
            }
            if Instant::now() >= next_run {
                break;
            }
            refresh_series(&pool, &symbols, &intervals).await;
        }
    }
    Ok(Outcome {
        output: String::new(),
        code: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_joined_into_pages() {
        let m = 60_000;
        let hole = |sym: &str, iv, from: i64, to: i64| SeriesPlan {
            symbol: sym.parse().unwrap_or_else(|_| unreachable!()),
            interval: iv,
            from_ms: from * m,
            to_ms: to * m,
        };
        let plan = Plan {
            series: vec![
                hole("BTCUSDT", Interval::M1, 0, 1),
                hole("BTCUSDT", Interval::M1, 5, 7),
                hole("BTCUSDT", Interval::M1, 999, 1000),
                hole("BTCUSDT", Interval::M1, 1000, 1001),
                hole("BTCUSDT", Interval::H1, 0, 60),
                hole("ETHUSDT", Interval::M1, 2, 3),
            ],
            server_now_ms: 0,
        };
        let (joined, holes) = pages(plan);
        let ranges: Vec<_> = joined
            .series
            .iter()
            .map(|p| (p.symbol.as_str().to_owned(), p.from_ms / m, p.to_ms / m))
            .collect();
        assert_eq!(
            ranges,
            [
                ("BTCUSDT".to_owned(), 0, 1000),
                ("BTCUSDT".to_owned(), 1000, 1001),
                ("BTCUSDT".to_owned(), 0, 60),
                ("ETHUSDT".to_owned(), 2, 3),
            ]
        );
        assert_eq!(holes, [4, 1, 1, 1]);
    }

    #[test]
    fn a_check_covers_the_window_and_at_least_three_candles() {
        let day = Duration::from_secs(86_400);
        assert_eq!(days_for(Interval::M1, day), 1);
        assert_eq!(days_for(Interval::H4, day), 1);
        assert_eq!(days_for(Interval::D1, day), 3);
        assert_eq!(days_for(Interval::W1, day), 21);
        assert_eq!(days_for(Interval::M1, 2 * day + Duration::from_secs(1)), 3);
    }
}
