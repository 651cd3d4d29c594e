//! The run: connect, plan, backfill every series (several at once, one shared weight budget),
//! print the summary.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::Context;
use futures::StreamExt;
use klinebus_binance::{ArchiveClient, RestClient, RestConfig, RetryPolicy, WeightLimiter};
use klinebus_schemas::bus;
use tokio_util::sync::CancellationToken;

use crate::archive::{ArchiveSource, Fetch};
use crate::config::{Config, ProgressMode, SourceMode};
use crate::flow::FlowGuard;
use crate::plan::{Plan, Window};
use crate::progress::Progress;
use crate::series::backfill_series;
use crate::summary::{completion_line, Summary};

/// Knobs of [`run_backfill`].
#[derive(Debug, Clone, Copy)]
pub struct RunOptions<'a> {
    /// Series fetched at the same time.
    pub concurrency: usize,
    /// Progress display.
    pub progress: ProgressMode,
    /// Fetch only the open times the `KLINES` stream does not hold yet (the resume rule). The
    /// auditor turns it off: a candle missing from the table must be published again even when
    /// the stream holds it (outside the dedup window the sink stores it again).
    pub resume: bool,
    /// REST only, or the archive first ([`Fetch`]).
    pub fetch: Fetch<'a>,
    /// Publishing waits while the sink lags too far behind ([`FlowGuard`]); none: never.
    pub flow: Option<&'a FlowGuard>,
    /// How long a page JetStream does not acknowledge is republished, and a failing read of
    /// the stream (the resume rule) retried, before its series fails: long enough for a
    /// broker restart or a stream leader election (`--patience`).
    pub patience: std::time::Duration,
}

/// Why a backfill could not start or run (each series' own failures are in its report).
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// `--metrics-addr` is not an address.
    #[error("--metrics-addr {0:?}")]
    MetricsAddr(String, #[source] std::net::AddrParseError),
    /// The telemetry endpoint could not start.
    #[error(transparent)]
    Telemetry(#[from] klinebus_svc::TelemetryError),
    /// A secret file could not be read.
    #[error(transparent)]
    Secret(#[from] klinebus_svc::SecretError),
    /// The REST client could not be built, or the exchange did not answer.
    #[error("{0}")]
    Exchange(String, #[source] klinebus_binance::BinanceError),
    /// The archive client could not be built.
    #[error("the archive client for {0}")]
    Archive(String, #[source] klinebus_binance::ArchiveError),
    /// NATS could not be reached or the streams made.
    #[error("{0}")]
    Bus(&'static str, #[source] klinebus_schemas::bus::BusError),
    /// Shutdown was asked for before NATS could be reached.
    #[error("interrupted before NATS could be reached")]
    Interrupted,
}

/// The REST client a [`Config`] describes (with its own limiter).
pub fn rest_client(config: &Config) -> Result<RestClient, BackfillError> {
    let rest = RestConfig {
        base_url: config.rest_url.clone(),
        timeout: config.request_timeout,
        retry: RetryPolicy {
            max_attempts: config.max_attempts.max(1),
            patience: (!config.patience.is_zero()).then_some(config.patience),
            ..RetryPolicy::default()
        },
    };
    RestClient::new(rest, Arc::new(WeightLimiter::new(config.weight_budget)))
        .map_err(|e| BackfillError::Exchange("the REST client".into(), e))
}

/// Connects to NATS and makes sure the streams exist. A server not reachable yet (starting, or
/// restarting) is waited for within `--patience`, as the exchange is; refused credentials fail
/// at once.
pub async fn connect_bus(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Context, BackfillError> {
    let opts = config.bus_options()?;
    let client = klinebus_svc::connect_bus(&opts, shutdown, Some(config.patience))
        .await
        .map_err(|e| BackfillError::Bus("connecting", e))?
        .ok_or(BackfillError::Interrupted)?;
    let js = bus::jetstream(client, config.max_inflight.max(1));
    bus::ensure_streams(&js, &config.nats.retention())
        .await
        .map_err(|e| BackfillError::Bus("creating the klinebus streams", e))?;
    Ok(js)
}

/// What a run produced: the backfill summary and, with `--verify`, the verification.
#[derive(Debug)]
pub struct RunResult {
    /// The backfill.
    pub summary: Summary,
    /// The verification report (with `--verify`), or why it could not run.
    pub verification: Option<Result<klinebus_verify::Report, VerifyError>>,
}

impl RunResult {
    /// Exit code: the summary's ([`Summary::exit_code`]); with `--verify`, 1 unless the
    /// verification is `ok`.
    pub fn exit_code(&self) -> i32 {
        match &self.verification {
            Some(Ok(r)) if !r.is_ok() => 1,
            Some(Err(_)) => 1,
            _ => self.summary.exit_code(),
        }
    }
}

/// The whole command: returns the summary and verification (already printed); the caller turns
/// them into the exit code with [`RunResult::exit_code`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<RunResult, BackfillError> {
    let health = klinebus_svc::Health::default();
    // The endpoint lives as long as this run.
    let telemetry = shutdown.child_token();
    let _telemetry = telemetry.clone().drop_guard();
    if let Some(addr) = klinebus_svc::parse_metrics_addr(&config.metrics_addr)
        .map_err(|e| BackfillError::MetricsAddr(config.metrics_addr.clone(), e))?
    {
        let bound = klinebus_svc::serve_telemetry(addr, health.clone(), telemetry).await?;
        tracing::info!(%bound, "serving /metrics and /health");
    }
    let rest = rest_client(&config)?;
    let js = connect_bus(&config, &shutdown).await?;
    health.set_ready(true);
    let server_now = rest.server_time().await.map_err(|e| {
        BackfillError::Exchange(format!("asking {} for its time", config.rest_url), e)
    })?;
    let window = match config.from {
        Some(from_ms) => Window::Range {
            from_ms,
            to_ms: config.to,
        },
        None => Window::Days(config.days),
    };
    let plan = Plan::build(&config.symbols.0, &config.timeframes.0, window, server_now);
    // One exchangeInfo call: which symbols trade, are halted or are gone (recorded with --verify).
    let statuses = match crate::verify::exchange_statuses(&rest, &config.symbols.0).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read exchangeInfo; symbol statuses not recorded");
            Vec::new()
        }
    };
    let archive = match config.source {
        SourceMode::Rest => None,
        SourceMode::Auto | SourceMode::Archive => Some(ArchiveSource::new(
            ArchiveClient::new(&config.archive_url, config.request_timeout)
                .map_err(|e| BackfillError::Archive(config.archive_url.clone(), e))?,
            usize::from(config.archive_concurrency),
        )),
    };
    let fetch = match (&archive, config.source) {
        (Some(a), SourceMode::Archive) => Fetch::Archive(a),
        (Some(a), _) => Fetch::Auto(a),
        (None, _) => Fetch::Rest,
    };
    let flow = (config.max_sink_lag > 0.0)
        .then(|| FlowGuard::new(js.clone(), &config.verify_consumer, config.max_sink_lag));
    let options = RunOptions {
        concurrency: usize::from(config.concurrency),
        progress: config.progress,
        resume: true,
        fetch,
        flow: flow.as_ref(),
        patience: config.patience,
    };
    let syms: Vec<_> = config.symbols.0.iter().map(|s| s.as_str()).collect();
    let tfs: Vec<_> = config.timeframes.0.iter().map(|i| i.as_str()).collect();
    println!("Binance backfill → NATS ({})", config.nats.url);
    println!("Symbols:    {}", syms.join(", "));
    println!("Timeframes: {}", tfs.join(", "));
    match &archive {
        Some(a) if config.source == SourceMode::Archive => {
            println!("Source:     archive only ({})", a.base_url())
        }
        Some(a) => println!(
            "Source:     archive ({}) for published months and days, REST for the rest",
            a.base_url()
        ),
        None => println!("Source:     REST"),
    }
    match window {
        Window::Days(Some(d)) => println!("History:    {d} days"),
        Window::Days(None) => println!("History:    default days per timeframe"),
        Window::Range { .. } => println!("History:    explicit range"),
    }
    for (symbol, status) in statuses
        .iter()
        .filter(|(_, s)| s != klinebus_verify::TRADING)
    {
        println!("Status:     {symbol} {status}");
    }
    println!("{}", "=".repeat(60));
    let mut summary = run_backfill(&plan, &rest, &js, options, &shutdown).await;
    let not_trading: Vec<_> = statuses
        .iter()
        .filter(|(_, s)| s != klinebus_verify::TRADING)
        .map(|(sym, _)| sym.clone())
        .collect();
    let ends: Vec<_> = plan.series.iter().map(|p| p.to_ms).collect();
    summary.settle_halts(&not_trading, &ends);
    print!("{}", summary.render());
    let verification = if config.verify && summary.errors() == 0 {
        let v = verify_after_backfill(&config, &plan, &summary, &statuses, &js, &shutdown).await;
        match &v {
            Ok(report) => print!("\n{}", report.render_text()),
            Err(e) => println!("\nVerification failed: {}", klinebus_svc::error_line(e)),
        }
        Some(v)
    } else {
        None
    };
    Ok(RunResult {
        summary,
        verification,
    })
}

/// Why `--verify` could not give a report.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The sink did not catch up (or the wait was interrupted).
    #[error(transparent)]
    Wait(#[from] crate::verify::WaitError),
    /// The database URL's secret file could not be read.
    #[error(transparent)]
    Secret(#[from] klinebus_svc::SecretError),
    /// The database could not be reached.
    #[error("cannot connect to the database")]
    Connect(#[source] klinebus_svc::db::DbError),
    /// The exchange's gaps, listings or statuses could not be stored.
    #[error("cannot record what the exchange said")]
    Record(#[source] sqlx::Error),
}

/// `--verify`: wait for the sink to drain, then verify the plan's series and window.
async fn verify_after_backfill(
    config: &Config,
    plan: &Plan,
    summary: &Summary,
    statuses: &[(klinebus_schemas::Symbol, String)],
    js: &Context,
    shutdown: &CancellationToken,
) -> Result<klinebus_verify::Report, VerifyError> {
    println!(
        "\nWaiting for consumer {} to catch up…",
        config.verify_consumer
    );
    crate::verify::wait_until_consumed(
        js,
        &config.verify_consumer,
        config.verify_timeout,
        std::time::Duration::from_millis(250),
        shutdown,
    )
    .await?;
    let pool = config
        .db
        .connect(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(std::time::Duration::from_secs(10)),
        )
        .await
        .map_err(VerifyError::Connect)?;
    // The exchange's own gaps, the listings and the statuses become known, so verification
    // counts neither gaps nor the time before a listing as missing.
    crate::verify::record_exchange_facts(&pool, summary, statuses, plan.server_now_ms)
        .await
        .map_err(VerifyError::Record)?;
    let request = klinebus_verify::VerifyRequest {
        symbols: config.symbols.0.clone(),
        intervals: config.timeframes.0.clone(),
        // The window fetched: --days, or --from/--to.
        span: match config.from {
            Some(from_ms) => klinebus_verify::Span::Range {
                from_ms,
                to_ms: config.to,
            },
            None => klinebus_verify::Span::Days(config.days),
        },
        now_ms: plan.server_now_ms,
    };
    Ok(klinebus_verify::verify(&pool, &request).await)
}

/// Backfills every series of `plan` (reusable by benchmarks and tests): at most
/// `options.concurrency` series at once, all through `rest`'s shared limiter, publishing on
/// `js`. On cancellation, fetching stops, pending acks are awaited and the series are reported
/// as interrupted.
pub async fn run_backfill(
    plan: &Plan,
    rest: &RestClient,
    js: &Context,
    options: RunOptions<'_>,
    shutdown: &CancellationToken,
) -> Summary {
    let started = Instant::now();
    let before = rest.stats();
    let lim_before = rest.limiter().stats();
    let progress = Progress::new(options.progress);
    let mut reports: Vec<_> = futures::stream::iter(plan.series.iter().enumerate())
        .map(|(i, series)| {
            let progress = progress.clone();
            async move {
                let label = format!("{} {}", series.symbol, series.interval);
                let bar = progress.series(label, series.expected());
                let report = backfill_series(
                    series,
                    rest,
                    js,
                    plan.server_now_ms,
                    &bar,
                    options,
                    shutdown,
                )
                .await;
                bar.finish();
                if options.progress != ProgressMode::Silent {
                    progress.println(&completion_line(&report));
                }
                (i, report)
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
    reports.sort_by_key(|(i, _)| *i);
    let after = rest.stats();
    let lim_after = rest.limiter().stats();
    Summary {
        series: reports.into_iter().map(|(_, r)| r).collect(),
        elapsed: started.elapsed(),
        rest_requests: after.requests - before.requests,
        rate_limited: lim_after.rate_limited - lim_before.rate_limited,
        banned: lim_after.banned - lim_before.banned,
    }
}
