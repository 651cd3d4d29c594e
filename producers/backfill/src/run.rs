//! The run: connect, plan, backfill every series (several at once, one shared weight budget),
//! print the summary.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::Context;
use futures::StreamExt;
use klinebus_binance::{RestClient, RestConfig, RetryPolicy, WeightLimiter};
use klinebus_schemas::bus;
use klinebus_schemas::streams::Retention;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ProgressMode};
use crate::plan::{Plan, Window};
use crate::progress::Progress;
use crate::series::backfill_series;
use crate::summary::{completion_line, Summary};

/// Knobs of [`run_backfill`].
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Series fetched at the same time.
    pub concurrency: usize,
    /// Progress display.
    pub progress: ProgressMode,
}

/// The REST client a [`Config`] describes (with its own limiter).
pub fn rest_client(config: &Config) -> anyhow::Result<RestClient> {
    let rest = RestConfig {
        base_url: config.rest_url.clone(),
        timeout: config.request_timeout,
        retry: RetryPolicy {
            max_attempts: config.max_attempts.max(1),
            ..RetryPolicy::default()
        },
    };
    Ok(RestClient::new(
        rest,
        Arc::new(WeightLimiter::new(config.weight_budget)),
    )?)
}

/// Connects to NATS and makes sure the streams exist.
pub async fn connect_bus(config: &Config) -> anyhow::Result<Context> {
    let client = bus::connect(&config.bus_options()).await?;
    let js = bus::jetstream(client, config.max_inflight.max(1));
    bus::ensure_streams(&js, &Retention::default())
        .await
        .context("creating the klinebus streams")?;
    Ok(js)
}

/// The whole command: returns the summary (already printed); the caller turns it into the
/// exit code with [`Summary::exit_code`].
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Summary> {
    let rest = rest_client(&config)?;
    let js = connect_bus(&config).await?;
    let server_now = rest
        .server_time()
        .await
        .with_context(|| format!("asking {} for its time", config.rest_url))?;
    let window = match config.from {
        Some(from_ms) => Window::Range {
            from_ms,
            to_ms: config.to,
        },
        None => Window::Days(config.days),
    };
    let plan = Plan::build(&config.symbols.0, &config.timeframes.0, window, server_now);
    let options = RunOptions {
        concurrency: usize::from(config.concurrency),
        progress: config.progress,
    };
    let syms: Vec<_> = config.symbols.0.iter().map(|s| s.as_str()).collect();
    let tfs: Vec<_> = config.timeframes.0.iter().map(|i| i.as_str()).collect();
    println!("Binance backfill → NATS ({})", config.nats_url);
    println!("Symbols:    {}", syms.join(", "));
    println!("Timeframes: {}", tfs.join(", "));
    match window {
        Window::Days(Some(d)) => println!("History:    {d} days"),
        Window::Days(None) => println!("History:    default days per timeframe"),
        Window::Range { .. } => println!("History:    explicit range"),
    }
    println!("{}", "=".repeat(60));
    let summary = run_backfill(&plan, &rest, &js, options, &shutdown).await;
    print!("{}", summary.render());
    Ok(summary)
}

/// Backfills every series of `plan` (reusable by benchmarks and tests): at most
/// `options.concurrency` series at once, all through `rest`'s shared limiter, publishing on
/// `js`. On cancellation, fetching stops, pending acks are awaited and the series are reported
/// as interrupted.
pub async fn run_backfill(
    plan: &Plan,
    rest: &RestClient,
    js: &Context,
    options: RunOptions,
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
                let report =
                    backfill_series(series, rest, js, plan.server_now_ms, &bar, shutdown).await;
                bar.finish();
                progress.println(&completion_line(&report));
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
