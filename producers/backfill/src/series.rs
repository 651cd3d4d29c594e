//! One series: fetch the missing ranges page by page (limit 1000, paging by startTime), publish
//! the closed candles with many acks in flight, and record exchange gaps and, when the window
//! starts before the symbol's listing, its first candle.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::Context;
use klinebus_binance::{BinanceError, RestClient, MAX_KLINES_LIMIT};
use klinebus_schemas::bus::{self, BusError};
use klinebus_schemas::{KlineEvent, Source};
use klinebus_svc::Backoff;
use tokio_util::sync::CancellationToken;

use crate::archive::Fetch;
use crate::flow::FlowGuard;
use crate::plan::SeriesPlan;
use crate::progress::SeriesProgress;
use crate::resume;
use crate::run::RunOptions;
use crate::summary::{ExchangeGap, SeriesReport, Status};

/// Pages whose acks may still be outstanding while the next page is fetched.
const PAGES_IN_FLIGHT: usize = 3;
/// How long a page's publishes may wait for their acks, all together.
const PAGE_ACK_WAIT: Duration = Duration::from_secs(10);
/// Pauses between republishing rounds of candles whose publish was not acknowledged (a broker
/// restart, a stream leader election), jittered and doubling from 250 ms to 5 s; the rounds go
/// on for the run's `patience` ([`crate::RunOptions::patience`]). Every candle carries its dedup
/// id, so republishing one that was stored after all only yields a duplicate ack.
/// The least patience for publishing and reading the stream, whatever `--patience` says (0s
/// means no REST retries after `--max-attempts`, not a bus that fails at its first hiccup).
const MIN_PATIENCE: Duration = Duration::from_secs(60);
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(250);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(5);

/// Why a series stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stop {
    #[error(transparent)]
    Binance(#[from] BinanceError),
    #[error(transparent)]
    Resume(#[from] resume::ResumeError),
    #[error("publish")]
    Publish(#[source] BusError),
    #[error("publish refused")]
    Refused(#[source] PublishError),
    #[error("{candles} candles not acknowledged after {rounds} republishing rounds in {}", humantime::format_duration(*.waited))]
    Unacknowledged {
        candles: usize,
        rounds: u32,
        waited: Duration,
        #[source]
        last: PublishError,
    },
    #[error("cancelled with {0} candles not acknowledged")]
    CancelledUnacknowledged(usize),
    #[error("cancelled")]
    Cancelled,
}

pub(crate) struct Run<'a> {
    pub(crate) plan: &'a SeriesPlan,
    rest: &'a RestClient,
    js: &'a Context,
    pub(crate) server_now_ms: i64,
    pub(crate) progress: &'a SeriesProgress,
    /// Skip what the stream holds (see [`crate::RunOptions::resume`]).
    resume: bool,
    /// REST only, or the archive first.
    pub(crate) fetch: Fetch<'a>,
    /// Waits while the sink lags too far behind.
    flow: Option<&'a FlowGuard>,
    /// How long an unacknowledged page is republished, and a failing stream read retried.
    patience: Duration,
    /// Checked before each REST request, never in the middle of publishing a page, so every
    /// candle sent to the bus is also counted.
    pub(crate) cancel: &'a CancellationToken,
    pub(crate) report: SeriesReport,
    /// Pages published and not yet confirmed, oldest first.
    acks: VecDeque<Page>,
    /// Some candle of the series is known to exist before the current position.
    pub(crate) listed: bool,
    /// Candles REST delivered so far (published or not yet acknowledged): tells a file's hole
    /// that REST filled from an exchange gap.
    pub(crate) rest_sent: u64,
    /// A page ran out of patience: the broker is gone, and the pages still in flight are
    /// settled without waiting through rounds of their own.
    gave_up: bool,
}

/// A published page: its candles (to republish if not acknowledged), where they came from, and
/// the ack of its one message (`kline-page/1`).
struct Page {
    events: Vec<KlineEvent>,
    origin: Origin,
    ack: Sent,
}

/// Where a page's candles came from, for the per-source counts of the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Rest,
    Archive,
}

/// A page's publish: its ack future, or the reason it could not even be sent (to retry).
enum Sent {
    Pending(PublishAckFuture),
    Unsent(PublishErrorKind),
}

type AckResult = Result<PublishAck, PublishError>;

/// Publish failures worth republishing: lost or refused acks while the broker or the stream
/// is unavailable. Not a message the server rejects as such.
fn retryable(e: &PublishError) -> bool {
    !matches!(
        e.kind(),
        PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
    )
}

/// Backfills one series; never panics, every outcome is in the report.
pub(crate) async fn backfill_series(
    plan: &SeriesPlan,
    rest: &RestClient,
    js: &Context,
    server_now_ms: i64,
    progress: &SeriesProgress,
    options: RunOptions<'_>,
    cancel: &CancellationToken,
) -> SeriesReport {
    let mut run = Run {
        plan,
        rest,
        js,
        server_now_ms,
        progress,
        resume: options.resume,
        fetch: options.fetch,
        flow: options.flow,
        patience: options.patience.max(MIN_PATIENCE),
        cancel,
        report: SeriesReport {
            symbol: plan.symbol.clone(),
            interval: plan.interval,
            expected: plan.expected(),
            present: 0,
            published: 0,
            duplicates: 0,
            gaps: Vec::new(),
            before_listing: 0,
            listed_ms: None,
            since_halt: 0,
            requests: 0,
            from_rest: 0,
            from_archive: 0,
            archive_files: 0,
            archive_faults: Vec::new(),
            not_in_archive: 0,
            not_published: 0,
            status: Status::Complete,
        },
        acks: VecDeque::new(),
        listed: false,
        rest_sent: 0,
        gave_up: false,
    };
    let fetched = run.fetch_all().await;
    // Whatever happened, wait for what was sent: acked candles count, failures are reported.
    let flushed = run.flush_all().await;
    run.report.status = match (fetched, flushed) {
        (Err(Stop::Cancelled), _) => Status::Cancelled,
        (Err(e), _) | (Ok(()), Err(e)) => Status::Failed(klinebus_svc::error_line(&e)),
        (Ok(()), Ok(())) if run.report.not_in_archive > 0 => Status::Failed(format!(
            "{} candles not in the archive (--source auto fetches them over REST)",
            run.report.not_in_archive
        )),
        (Ok(()), Ok(())) if run.report.gaps.is_empty() => Status::Complete,
        (Ok(()), Ok(())) => Status::Gaps,
    };
    run.report
}

impl Run<'_> {
    async fn fetch_all(&mut self) -> Result<(), Stop> {
        let missing = if self.resume {
            self.resume_missing().await?
        } else {
            resume::Missing {
                ranges: vec![(self.plan.from_ms, self.plan.to_ms)],
                present: 0,
            }
        };
        self.report.present = missing.present;
        self.progress.inc(missing.present);
        for (start, end) in missing.ranges {
            if start > self.plan.from_ms {
                // Resuming inside the window: the candle before `start` was stored by an earlier run.
                self.listed = true;
            }
            match self.fetch {
                Fetch::Rest => self.fetch_range(start, end).await?,
                Fetch::Auto(archive) | Fetch::Archive(archive) => {
                    self.fetch_archived(archive, start, end).await?
                }
            }
        }
        Ok(())
    }

    /// Fetches open times `[start, end)` over REST, a page at a time.
    pub(crate) async fn fetch_range(&mut self, start: i64, end: i64) -> Result<(), Stop> {
        let iv = self.plan.interval;
        let mut cursor = start;
        while cursor < end {
            let rows = self.klines(Some(cursor), end - 1, MAX_KLINES_LIMIT).await?;
            let received_at = klinebus_binance::limiter::wall_now_ms();
            let full_page = rows.len() >= usize::from(MAX_KLINES_LIMIT);
            let mut events = Vec::with_capacity(rows.len());
            let mut expect = cursor;
            for row in &rows {
                if row.open_time < expect
                    || row.open_time >= end
                    || !row.is_closed(self.server_now_ms)
                {
                    continue; // outside the asked range, or still forming
                }
                if row.open_time > expect {
                    self.missing(expect, row.open_time).await?;
                }
                events.push(row.to_event(
                    &self.plan.symbol,
                    iv,
                    Source::Backfill,
                    self.server_now_ms,
                    received_at,
                )?);
                expect = iv.next_open(row.open_time);
                self.listed = true;
            }
            self.rest_sent += events.len() as u64;
            self.publish(events, Origin::Rest).await?;
            if !full_page && expect < end {
                // Binance returns the next `limit` existing candles: a short page means nothing
                // exists in [expect, end).
                self.missing(expect, end).await?;
                break;
            }
            if expect <= cursor {
                break; // no progress possible (nothing usable in a full page)
            }
            cursor = expect;
        }
        Ok(())
    }

    /// Open times `[from, to)` the exchange did not return: before listing, or a gap.
    async fn missing(&mut self, from: i64, to: i64) -> Result<(), Stop> {
        let iv = self.plan.interval;
        let n = iv.count_between(from, to).max(0) as u64;
        if n == 0 {
            return Ok(());
        }
        if !self.listed {
            // Anything before `from`? Then the symbol was listed and this is a gap.
            let before = self.klines(None, from - 1, 1).await?;
            self.listed = !before.is_empty();
            if !self.listed && self.report.listed_ms.is_none() {
                // A leading run without candles: before the listing only if it ends at the
                // first candle ever (or that lies beyond it). The exchange says which.
                match self.first_candle().await? {
                    Some(first) if first >= to => self.report.listed_ms = Some(first),
                    Some(_) => self.listed = true, // a candle inside the run: not a listing
                    None => {}                     // no candle at all yet: nothing to record
                }
            }
        }
        if self.listed {
            tracing::warn!(symbol = %self.plan.symbol, interval = %iv, from, to, candles = n, "exchange gap");
            self.report.gaps.push(ExchangeGap {
                start_ms: from,
                end_ms: to,
                candles: n,
            });
        } else {
            self.report.before_listing += n;
            self.progress.inc(n);
        }
        Ok(())
    }

    /// Open time of the series' first candle ever (Binance: `startTime=0&limit=1`).
    async fn first_candle(&mut self) -> Result<Option<i64>, Stop> {
        if self.cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        self.report.requests += 1;
        let p = self.plan;
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Stop::Cancelled),
            r = self.rest.klines(&p.symbol, p.interval, Some(0), None, 1) => {
                Ok(r?.first().map(|k| k.open_time))
            }
        }
    }

    async fn klines(
        &mut self,
        start: Option<i64>,
        end: i64,
        limit: u16,
    ) -> Result<Vec<klinebus_binance::RestKline>, Stop> {
        if self.cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        self.report.requests += 1;
        let p = self.plan;
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Stop::Cancelled),
            r = self.rest.klines(&p.symbol, p.interval, start, Some(end), limit) => Ok(r?),
        }
    }

    /// Sends `events` (one series, ascending, at most a page) as one page message.
    async fn send(&self, events: &[KlineEvent]) -> Result<Sent, Stop> {
        match bus::publish_page(self.js, self.plan.subject(), events).await {
            Ok(Some(ack)) => Ok(Sent::Pending(ack)),
            Ok(None) => Ok(Sent::Unsent(PublishErrorKind::Other)),
            Err(BusError::Publish { source, .. }) if retryable(&source) => {
                Ok(Sent::Unsent(source.kind()))
            }
            Err(e) => Err(Stop::Publish(e)),
        }
    }

    /// What the stream lacks of the window ([`resume::missing`]), retried within `patience`:
    /// a series that starts while the stream has no leader waits for the election.
    async fn resume_missing(&self) -> Result<resume::Missing, Stop> {
        let started = Instant::now();
        let mut pause = Backoff::jittered(RETRY_PAUSE_MIN, RETRY_PAUSE_MAX);
        loop {
            let e = match resume::missing(self.js, self.plan).await {
                Ok(m) => return Ok(m),
                Err(e) => e,
            };
            let left = self.patience.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(e.into());
            }
            tracing::warn!(symbol = %self.plan.symbol, interval = %self.plan.interval,
                error = %klinebus_svc::error_line(&e), patience_left_s = left.as_secs(),
                "cannot read what the stream holds; retrying");
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Err(Stop::Cancelled),
                () = tokio::time::sleep(pause.fail().min(left)) => {}
            }
        }
    }

    /// Publishes a page (nothing for no candles), keeping at most [`PAGES_IN_FLIGHT`]
    /// unconfirmed.
    pub(crate) async fn publish(
        &mut self,
        events: Vec<KlineEvent>,
        origin: Origin,
    ) -> Result<(), Stop> {
        if events.is_empty() {
            return Ok(());
        }
        if let Some(flow) = self.flow {
            if !flow.wait(self.cancel).await {
                return Err(Stop::Cancelled);
            }
        }
        let ack = self.send(&events).await?;
        self.acks.push_back(Page {
            events,
            origin,
            ack,
        });
        while self.acks.len() > PAGES_IN_FLIGHT {
            self.flush_oldest().await?;
        }
        Ok(())
    }

    /// Settles the oldest page: counts what was stored and republishes it while not
    /// acknowledged, for up to `patience` from its first failure.
    async fn flush_oldest(&mut self) -> Result<(), Stop> {
        let Some(Page {
            events,
            origin,
            mut ack,
        }) = self.acks.pop_front()
        else {
            return Ok(());
        };
        let mut pause = Backoff::jittered(RETRY_PAUSE_MIN, RETRY_PAUSE_MAX);
        let mut round = 0;
        let mut failing_since = None;
        loop {
            let result: AckResult = match ack {
                Sent::Pending(fut) => tokio::time::timeout(PAGE_ACK_WAIT, fut)
                    .await
                    .unwrap_or_else(|_| Err(PublishError::new(PublishErrorKind::TimedOut))),
                Sent::Unsent(kind) => Err(PublishError::new(kind)),
            };
            let err = match result {
                Ok(a) => {
                    let n = events.len() as u64;
                    if a.duplicate {
                        self.report.duplicates += n;
                    } else {
                        self.report.published += n;
                    }
                    match origin {
                        Origin::Rest => self.report.from_rest += n,
                        Origin::Archive => self.report.from_archive += n,
                    }
                    self.count_stored(n);
                    return Ok(());
                }
                Err(e) if retryable(&e) => e,
                Err(e) => return Err(Stop::Refused(e)),
            };
            // A stream leader election of any realistic length (the issue saw 27 s) is ridden
            // out: "no stream found" and timeouts are what it looks like from here.
            let since = *failing_since.get_or_insert_with(Instant::now);
            let left = self.patience.saturating_sub(since.elapsed());
            if left.is_zero() || self.gave_up {
                self.gave_up = true;
                return Err(Stop::Unacknowledged {
                    candles: events.len(),
                    rounds: round,
                    waited: Duration::from_secs(since.elapsed().as_secs()),
                    last: err,
                });
            }
            round += 1;
            tracing::warn!(symbol = %self.plan.symbol, interval = %self.plan.interval,
                candles = events.len(), round, error = %err,
                patience_left_s = left.as_secs(),
                "page not acknowledged; republishing");
            let wait = pause.fail().min(left);
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    return Err(Stop::CancelledUnacknowledged(events.len()));
                }
                () = tokio::time::sleep(wait) => {}
            }
            ack = self.send(&events).await?;
        }
    }

    fn count_stored(&self, stored: u64) {
        if stored == 0 {
            return;
        }
        self.progress.inc(stored);
        metrics::counter!("klinebus_backfill_candles_stored_total",
            "symbol" => self.report.symbol.as_str().to_owned(),
            "interval" => self.report.interval.as_str())
        .increment(stored);
    }

    async fn flush_all(&mut self) -> Result<(), Stop> {
        let mut result = Ok(());
        while !self.acks.is_empty() {
            if let Err(e) = self.flush_oldest().await {
                result = result.and(Err(e));
            }
        }
        result
    }
}
