//! Closed-candle events in (one or a batch, in order), at most one signal each out: the
//! per-series states, warming from Postgres, the upsert and the post-commit publication.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use klinebus_consume::db::is_fatal;
use klinebus_schemas::signal::{signal_msg_id, SIGNAL_SCHEMA, SIGNAL_SCHEMA_HEADER};
use klinebus_schemas::{subjects, Interval, KlineEvent, Source, Symbol};
use sqlx::PgPool;

use super::store::{
    earliest_signal, load_history, signalled_between, upsert_signals, SignalRecord, SignalRow,
};
use crate::{Candle, CandleError, Outcome, SeriesState, SignalReport, StrategyConfig};

/// Why a batch could not be processed (nothing of it is kept; see
/// [`Engine::process_batch`]).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A statement failed.
    #[error("{what}")]
    Db {
        /// What it was doing.
        what: &'static str,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A signal event was not sent, or the stream refused it.
    #[error("publishing a signal on {subject}")]
    Publish {
        /// Its subject.
        subject: String,
        /// Why.
        #[source]
        source: PublishError,
    },
    /// The stream did not acknowledge a signal event in time.
    #[error("no publish ack for the signal on {subject} within 10 s")]
    PublishTimeout {
        /// Its subject.
        subject: String,
    },
    /// A report could not be serialised.
    #[error("serialising a signal report")]
    Report(#[source] serde_json::Error),
}

impl EngineError {
    /// True for what retrying the same batch can fix (database or broker trouble); false for a
    /// schema mismatch or misconfiguration ([`is_fatal`]) or a report that cannot be serialised.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Db { source, .. } => !is_fatal(source),
            Self::Publish { .. } | Self::PublishTimeout { .. } => true,
            Self::Report(_) => false,
        }
    }
}

/// The error of a failed statement doing `what`, counted.
fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> EngineError {
    move |source| {
        metrics::counter!("klinebus_signals_errors_total", "kind" => "db").increment(1);
        EngineError::Db { what, source }
    }
}

/// Default of `--max-recompute`: most candles one recompute evaluates.
pub const DEFAULT_MAX_RECOMPUTE: usize = 1000;

type SeriesKey = (Symbol, Interval);

/// One series as the engine holds it.
#[derive(Debug, Clone)]
struct Series {
    state: SeriesState,
    /// Earliest open time this process answers for: a candle from here on that the state had
    /// not applied (it arrived late or filled a hole) gets its signal when a recompute reaches
    /// it; older candles are history, which only warms the series.
    floor: i64,
    /// The oldest candle from the floor on that may still be owed its signal: one that got
    /// insufficient data (no history yet, or warming up after a hole in the table), or the
    /// start of a hole in the table that a gap in the events ran into. The hole's own
    /// announcements may come only after a later gap rebuilt the series over the filled hole
    /// (the sink's workers commit and announce independently), or never, and the history that
    /// warms the candles before it may be committed by then; so while the run is shorter than
    /// `--warm-candles` every rebuild or recompute starts no later than this, and an in-order
    /// candle rebuilds from here once the table holds the candle before the run. Cleared once a
    /// rebuild or recompute from here on had the series warm from its first candle.
    owed: Option<i64>,
}

impl Series {
    /// After a rebuild or recompute of the candles from `from` on: still owed from `from`
    /// unless the state was warm at `from` (its run began early enough before it), so that
    /// every candle from there got its signal or had one.
    fn owed_after(state: &SeriesState, from: i64) -> Option<i64> {
        let warm_at_from = state.run_start().is_some_and(|r| {
            r <= from && state.interval().count_between(r, from) + 1 >= state.lookback() as i64
        });
        (!warm_at_from).then_some(from)
    }
}

/// A row of the batch's upsert and, for a signal, its event.
struct PendingRow {
    /// Candle key, also the event's `Nats-Msg-Id`.
    key: String,
    record: SignalRecord,
    /// `(subject, JSON)`; `None` for an `insufficient_data` row, which is not published.
    event: Option<(String, Vec<u8>)>,
    /// Written by a recompute (see [`Engine::unconfirmed`]).
    recomputed: bool,
}

/// The rows of a batch: one per candle key (the upsert needs distinct keys; a later value of
/// the same candle replaces the earlier one and moves to the end, so events stay in candle
/// order per series).
#[derive(Default)]
struct PendingRows {
    slots: Vec<Option<PendingRow>>,
    index: HashMap<String, usize>,
}

impl PendingRows {
    fn push(&mut self, row: PendingRow) {
        if let Some(old) = self.index.insert(row.key.clone(), self.slots.len()) {
            self.slots[old] = None;
        }
        self.slots.push(Some(row));
    }

    fn rows(&self) -> impl Iterator<Item = &PendingRow> {
        self.slots.iter().flatten()
    }
}

/// Every series' state and where results go.
pub struct Engine {
    cfg: StrategyConfig,
    pool: PgPool,
    js: Option<Context>,
    states: HashMap<SeriesKey, Series>,
    warm_candles: i64,
    store_insufficient: bool,
    max_recompute: usize,
    /// Keys of recomputed signals whose rows were committed but whose events were not yet
    /// confirmed by the stream (a failed batch). A recompute skips candles that already have a
    /// signal row, so without this a retried batch would not publish them again.
    unconfirmed: HashSet<String>,
}

impl Engine {
    /// An engine with no series yet; `js` publishes signal events when set. Recomputes are on
    /// with [`DEFAULT_MAX_RECOMPUTE`] (see [`with_max_recompute`](Self::with_max_recompute)).
    pub fn new(
        cfg: StrategyConfig,
        pool: PgPool,
        js: Option<Context>,
        warm_candles: usize,
        store_insufficient: bool,
    ) -> Self {
        let warm = warm_candles.max(crate::lookback(&cfg)) as i64;
        Self {
            cfg,
            pool,
            js,
            states: HashMap::new(),
            warm_candles: warm,
            store_insufficient,
            max_recompute: DEFAULT_MAX_RECOMPUTE,
            unconfirmed: HashSet::new(),
        }
    }

    /// At most `n` candles evaluated by one recompute (an older candle filling a hole before a
    /// series' run); 0 turns recomputing off (older candles are then only replays).
    pub fn with_max_recompute(mut self, n: usize) -> Self {
        self.max_recompute = n;
        self
    }

    /// Series currently held.
    pub fn series(&self) -> usize {
        self.states.len()
    }

    /// Processes closed-candle events in order, all or nothing. Per event:
    ///
    /// - it follows the series' last candle → applied (a signal once warm);
    /// - a new series, or a later candle that does not follow (a gap in the events) → the
    ///   series is warmed from Postgres first, then the event applied;
    /// - not newer than the last candle → a replay, unless it is older than the series' run
    ///   while that run is shorter than `--warm-candles` and the table now holds the candle
    ///   just before the run (the hole before it is filled): then the series is recomputed
    ///   from the table (once per series and batch, at most `max_recompute` candles) and every
    ///   candle from the series' floor on that has no stored signal yet gets one. A late live
    ///   candle below the floor lowers it (and is recomputed if already applied as history).
    ///
    /// Then ONE statement upserts every resulting row, every signal event is published and
    /// all their stream acks awaited, and only then the new series states are kept. On `Err`
    /// nothing of the batch is kept in memory and no row of it is committed (some of its signal
    /// events may be stored already; a retry republishes them under the same `Nats-Msg-Id`), so
    /// the same batch can simply be retried and gives the same results.
    ///
    /// Returns one entry per event: its outcome, or why it is unusable (dead-letter it; it
    /// changes nothing).
    pub async fn process_batch(
        &mut self,
        events: &[KlineEvent],
    ) -> Result<Vec<Result<Outcome, CandleError>>, EngineError> {
        let batch_started = Instant::now();
        // Series touched by this batch, advanced on copies.
        let mut staged: HashMap<SeriesKey, Series> = HashMap::new();
        // The oldest candle of each series in the batch: a recompute triggered anywhere in the
        // batch starts no later than that, so no late candle of the batch is skipped.
        let mut oldest: HashMap<SeriesKey, i64> = HashMap::new();
        for e in events {
            oldest
                .entry((e.symbol.clone(), e.interval))
                .and_modify(|t| *t = (*t).min(e.open_time))
                .or_insert(e.open_time);
        }
        // Series whose run was checked for a filled hole in this batch (one check each).
        let mut checked: HashSet<SeriesKey> = HashSet::new();
        // Series whose owed hole was checked in this batch on an in-order candle (one each).
        let mut probed: HashSet<SeriesKey> = HashSet::new();
        let mut results = Vec::with_capacity(events.len());
        let mut rows = PendingRows::default();
        let (mut n_signal, mut n_insufficient, mut n_replay, mut n_history) = (0u64, 0, 0, 0);
        for e in events {
            let candle = match Candle::from_event(e) {
                Ok(c) => c,
                Err(err) => {
                    results.push(Err(err));
                    continue;
                }
            };
            let key = (e.symbol.clone(), e.interval);
            let held = staged.get(&key).or_else(|| self.states.get(&key)).map(|s| {
                (
                    s.state.last_open_time(),
                    s.state.run_start(),
                    s.state.run_len(),
                    s.floor,
                    // Owed only while the run is short (as for a late candle filling a
                    // hole, below).
                    s.owed
                        .filter(|_| (s.state.run_len() as i64) < self.warm_candles),
                )
            });
            if let Some((Some(last), run_start, run_len, mut floor, owed)) = held {
                if e.open_time <= last {
                    let run_start = run_start.unwrap_or(last);
                    let in_run = e.open_time >= run_start;
                    // A late live candle before the floor is one this series owes a signal to:
                    // lower the floor; if it was applied as history already, recompute to
                    // give it its signal.
                    let late_live = is_live(e.source) && e.open_time < floor;
                    if late_live {
                        floor = e.open_time;
                        if let Some(s) = staged.get_mut(&key) {
                            s.floor = floor;
                        } else if let Some(s) = self.states.get(&key) {
                            let mut s = s.clone();
                            s.floor = floor;
                            staged.insert(key.clone(), s);
                        }
                    }
                    if in_run {
                        n_replay += 1;
                    } else {
                        n_history += 1;
                    }
                    // Older than the run while the run is short: the hole before it may be
                    // filled now (checked once per series and batch).
                    let may_fill =
                        (late_live && in_run) || (!in_run && (run_len as i64) < self.warm_candles);
                    if may_fill
                        && self.max_recompute > 0
                        && checked.insert(key.clone())
                        && (in_run || self.adjoins(e, run_start).await?)
                    {
                        let oldest = oldest.get(&key).copied().unwrap_or(e.open_time);
                        let from = floor.max(oldest.min(run_start));
                        // Also what the series still owes from before (see `Series::owed`).
                        let from = owed.map_or(from, |o| from.min(o.max(floor)));
                        if let Some(state) = self.recompute(e, last, from, &mut rows).await? {
                            let owed = Series::owed_after(&state, from);
                            staged.insert(key, Series { state, floor, owed });
                        }
                    }
                    results.push(Ok(Outcome::Replay {
                        open_time: e.open_time,
                        last_open_time: last,
                    }));
                    continue;
                }
            }
            let follows = held
                .and_then(|h| h.0)
                .is_some_and(|l| e.interval.next_open(l) == e.open_time);
            // The start of the candles a gap's rebuild covered, to tell afterwards whether a
            // hole in the table is left in them.
            let mut rebuilt_from = None;
            let mut series = match staged.remove(&key) {
                Some(s) if follows => s,
                _ => match self.states.get(&key) {
                    Some(s) if follows => s.clone(),
                    _ => {
                        let floor = match held {
                            Some(h) => h.3,
                            None => self.first_floor(e).await?,
                        };
                        // Candles between the last one applied (or the floor) and this one
                        // that are in the table already were announced late or not yet (the
                        // sink's workers commit and announce independently): the series
                        // warms over them, so they get their signals here.
                        let from = match held.and_then(|h| h.0) {
                            Some(last) => floor.max(e.interval.next_open(last)),
                            None => floor,
                        };
                        // What the series still owes (a hole it ran into, candles that got
                        // insufficient data): the table may hold the hole and the history by
                        // now while the hole's announcements are still to come (and would be
                        // replays once the series is rebuilt over it), so it is recomputed too.
                        let from = match held.and_then(|h| h.4) {
                            Some(o) => from.min(o.max(floor)),
                            None => from,
                        };
                        let state = if from < e.open_time && self.max_recompute > 0 {
                            rebuilt_from = Some(from);
                            self.rebuild(e, e.open_time, from, &mut rows).await?.0
                        } else {
                            self.warm(&e.symbol, e.interval, e.open_time).await?
                        };
                        Series {
                            state,
                            floor,
                            owed: None,
                        }
                    }
                },
            };
            // In order after a hole that is still owed: once the table holds the candle just
            // before the run (one primary-key lookup, once per series and batch), the hole was
            // filled, its announcements still to come or lost: the series is rebuilt over it.
            if follows && self.max_recompute > 0 {
                if let (Some(o), Some(run_start)) =
                    (held.and_then(|h| h.4), series.state.run_start())
                {
                    if probed.insert(key.clone()) && self.adjoins(e, run_start).await? {
                        let from = o.max(series.floor);
                        series.state = self.rebuild(e, e.open_time, from, &mut rows).await?.0;
                        rebuilt_from = Some(from);
                    }
                }
            }
            let started = Instant::now();
            let outcome = series.state.apply(&candle);
            metrics::histogram!("klinebus_signals_compute_seconds")
                .record(started.elapsed().as_secs_f64());
            if let Some(from) = rebuilt_from {
                // Not warm from `from` on (the table lacks a candle there, or the one just
                // before this event, or history): owed their signals once the table has them.
                series.owed = Series::owed_after(&series.state, from);
            }
            if self.max_recompute > 0
                && e.open_time >= series.floor
                && matches!(outcome, Outcome::InsufficientData { .. })
            {
                let since = rebuilt_from.unwrap_or(e.open_time).max(series.floor);
                series.owed = Some(series.owed.map_or(since, |o| o.min(since)));
            }
            staged.insert(key, series);
            match &outcome {
                Outcome::Signal(report) => {
                    n_signal += 1;
                    rows.push(self.signal_row(e, report, false)?);
                    tracing::debug!(symbol = %e.symbol, interval = %e.interval,
                        open_time = e.open_time, action = ?report.action,
                        confidence = report.confidence, "signal");
                }
                Outcome::InsufficientData { reason, have, need } => {
                    n_insufficient += 1;
                    tracing::debug!(symbol = %e.symbol, interval = %e.interval,
                        open_time = e.open_time, have, need, %reason, "insufficient data");
                    if self.store_insufficient {
                        rows.push(insufficient_row(
                            e,
                            e.open_time,
                            reason,
                            *have,
                            *need,
                            false,
                        ));
                    }
                }
                Outcome::Replay { .. } => n_replay += 1,
            }
            results.push(Ok(outcome));
        }
        let computed = Instant::now();
        let records: Vec<SignalRecord> = rows.rows().map(|r| r.record.clone()).collect();
        upsert_signals(&self.pool, &records)
            .await
            .map_err(db("upserting signals"))?;
        let upserted = Instant::now();
        if let Some(js) = &self.js {
            let recomputed: Vec<String> = rows
                .rows()
                .filter(|r| r.recomputed && r.event.is_some())
                .map(|r| r.key.clone())
                .collect();
            // Committed now: until the stream confirms their events a retry must publish them.
            self.unconfirmed.extend(recomputed.iter().cloned());
            let to_publish = rows
                .slots
                .into_iter()
                .flatten()
                .filter_map(|r| r.event.map(|(subject, payload)| (subject, r.key, payload)))
                .collect();
            publish_all(js, to_publish).await?;
            for k in &recomputed {
                self.unconfirmed.remove(k);
            }
        }
        tracing::debug!(target: "kline_signals::batch", events = events.len(), rows = records.len(),
            compute_us = (computed - batch_started).as_micros() as u64,
            upsert_us = (upserted - computed).as_micros() as u64,
            publish_us = upserted.elapsed().as_micros() as u64, "batch done");
        self.states.extend(staged);
        for (outcome, n) in [
            ("signal", n_signal),
            ("insufficient_data", n_insufficient),
            ("replay", n_replay),
            ("history", n_history),
        ] {
            if n > 0 {
                metrics::counter!("klinebus_signals_outcomes_total", "outcome" => outcome)
                    .increment(n);
            }
        }
        Ok(results)
    }

    /// The row and event of a signal for `e`'s series.
    fn signal_row(
        &self,
        e: &KlineEvent,
        report: &SignalReport,
        recomputed: bool,
    ) -> Result<PendingRow, EngineError> {
        let details = serde_json::to_string(report).map_err(EngineError::Report)?;
        let row = SignalRow::from_report(report, serde_json::Value::Null);
        let record = SignalRecord::new(&row, details.clone());
        let event = self.js.is_some().then(|| {
            let subject = subjects::signals(&e.venue, &e.symbol, e.interval);
            (subject, details.into_bytes())
        });
        Ok(PendingRow {
            key: candle_key(e, report.open_time),
            record,
            event,
            recomputed,
        })
    }

    /// The floor of a series seen for the first time: its first candle, or the oldest signal
    /// row within the recompute bound before it (a previous run answered for those candles,
    /// so a hole among them that is filled later still gets its signals).
    async fn first_floor(&self, e: &KlineEvent) -> Result<i64, EngineError> {
        if self.max_recompute == 0 {
            return Ok(e.open_time);
        }
        let span = e
            .interval
            .nominal_ms()
            .saturating_mul(self.max_recompute as i64);
        let from = e.open_time.saturating_sub(span);
        let earliest = earliest_signal(&self.pool, &e.symbol, e.interval, from, e.open_time)
            .await
            .map_err(db("reading the earliest signal"))?;
        Ok(earliest.map_or(e.open_time, |t| t.min(e.open_time)))
    }

    /// True if the table holds the closed candle just before `run_start` (the hole before the
    /// series' run has been filled): one primary-key lookup.
    async fn adjoins(&self, e: &KlineEvent, run_start: i64) -> Result<bool, EngineError> {
        let before = load_history(&self.pool, &e.symbol, e.interval, run_start, 1)
            .await
            .map_err(db("reading ohlcv_candles"))?;
        Ok(before
            .last()
            .is_some_and(|c| e.interval.next_open(c.open_time()) == run_start))
    }

    /// Rebuilds `e`'s series from the table up to its last candle `last`: see
    /// [`rebuild`](Self::rebuild). `None` (state kept as it was) if the table does not end at
    /// `last`.
    async fn recompute(
        &self,
        e: &KlineEvent,
        last: i64,
        from: i64,
        rows: &mut PendingRows,
    ) -> Result<Option<SeriesState>, EngineError> {
        let (state, table_last) = self
            .rebuild(e, e.interval.next_open(last), from, rows)
            .await?;
        if table_last != Some(last) {
            tracing::warn!(symbol = %e.symbol, interval = %e.interval, last,
                "cannot recompute: ohlcv_candles does not end at the series' last candle");
            return Ok(None);
        }
        Ok(Some(state))
    }

    /// `e`'s series rebuilt from the stored closed candles before `until`: ONE read of the
    /// `--warm-candles` before the recomputed range plus the range (from `from`, at most
    /// `max_recompute` candles, the newest if longer). Every candle of the range that has no
    /// stored signal gets one (rows into `rows`). Also returns the newest stored candle read.
    async fn rebuild(
        &self,
        e: &KlineEvent,
        until: i64,
        from: i64,
        rows: &mut PendingRows,
    ) -> Result<(SeriesState, Option<i64>), EngineError> {
        let started = Instant::now();
        let (symbol, interval) = (&e.symbol, e.interval);
        let span = interval.count_between(from, until).max(1) as usize;
        let n = span.min(self.max_recompute);
        let history = load_history(
            &self.pool,
            symbol,
            interval,
            until,
            self.warm_candles + n as i64,
        )
        .await
        .map_err(db("reading ohlcv_candles"))?;
        let table_last = history.last().map(Candle::open_time);
        let first = history
            .len()
            .saturating_sub(n)
            .max(history.partition_point(|c| c.open_time() < from));
        let range = &history[first..];
        let done: HashSet<i64> = match (range.first(), table_last) {
            (Some(c), Some(last)) => {
                signalled_between(&self.pool, symbol, interval, c.open_time(), last)
                    .await
                    .map_err(db("reading stored signals"))?
                    .into_iter()
                    .filter(|t| !self.unconfirmed.contains(&candle_key(e, *t)))
                    .collect()
            }
            _ => HashSet::new(),
        };
        let mut state = SeriesState::new(&self.cfg, symbol.clone(), interval);
        state.warm(&history[..first]);
        let mut signals = 0u64;
        for c in range {
            let t = c.open_time();
            if done.contains(&t) {
                state.advance(c);
                continue;
            }
            match state.apply(c) {
                Outcome::Signal(report) => {
                    signals += 1;
                    rows.push(self.signal_row(e, &report, true)?);
                }
                Outcome::InsufficientData { reason, have, need } if self.store_insufficient => {
                    rows.push(insufficient_row(e, t, &reason, have, need, true));
                }
                _ => {}
            }
        }
        metrics::counter!("klinebus_signals_recomputes_total").increment(1);
        metrics::counter!("klinebus_signals_recomputed_signals_total").increment(signals);
        if span > n {
            tracing::warn!(%symbol, %interval, from, candles = span, max_recompute = n,
                "candles to recompute beyond --max-recompute; the older ones get no signal");
        }
        tracing::info!(%symbol, %interval, from = range.first().map(Candle::open_time),
            until, candles = range.len(), signals, already_signalled = done.len(),
            warm = state.is_warm(), elapsed_ms = started.elapsed().as_millis() as u64,
            "recomputed from ohlcv_candles");
        Ok((state, table_last))
    }

    /// A fresh state fed the stored closed candles before `open_time`.
    async fn warm(
        &self,
        symbol: &Symbol,
        interval: Interval,
        open_time: i64,
    ) -> Result<SeriesState, EngineError> {
        let started = Instant::now();
        let history = load_history(&self.pool, symbol, interval, open_time, self.warm_candles)
            .await
            .map_err(db("reading ohlcv_candles"))?;
        let mut state = SeriesState::new(&self.cfg, symbol.clone(), interval);
        state.warm(&history);
        metrics::counter!("klinebus_signals_warms_total").increment(1);
        tracing::info!(%symbol, %interval, before = open_time, candles = history.len(),
            warm = state.is_warm(), elapsed_ms = started.elapsed().as_millis() as u64,
            "series warmed from ohlcv_candles");
        Ok(state)
    }
}

/// A candle that closed while the producers ran (WebSocket, polling, gap repair), as opposed
/// to history fetched by a backfill.
fn is_live(source: Source) -> bool {
    matches!(source, Source::Ws | Source::Poll | Source::Repair)
}

/// The candle key (`Nats-Msg-Id` of its signal event) of `e`'s series at `open_time`.
fn candle_key(e: &KlineEvent, open_time: i64) -> String {
    signal_msg_id(&e.venue, &e.symbol, e.interval, open_time)
}

/// An `insufficient_data` row (`--store-insufficient`).
fn insufficient_row(
    e: &KlineEvent,
    open_time: i64,
    reason: &str,
    have: usize,
    need: usize,
    recomputed: bool,
) -> PendingRow {
    let row = SignalRow {
        symbol: &e.symbol,
        interval: e.interval,
        open_time,
        action: "insufficient_data",
        confidence: 0.0,
        regime: "unknown",
        details: serde_json::Value::Null,
    };
    let details = serde_json::json!({
        "outcome": "insufficient_data",
        "reason": reason,
        "have": have,
        "need": need,
    });
    PendingRow {
        key: candle_key(e, open_time),
        record: SignalRecord::new(&row, details.to_string()),
        event: None,
        recomputed,
    }
}

/// The error of a signal event not stored, counted.
fn publish_failed(error: EngineError) -> EngineError {
    metrics::counter!("klinebus_signals_errors_total", "kind" => "publish").increment(1);
    error
}

/// Publishes the signal events of a batch (`(subject, Nats-Msg-Id, JSON)`), then waits until
/// the stream stored all of them (deduplicated by `Nats-Msg-Id`, so a retry after a failure is
/// harmless).
async fn publish_all(
    js: &Context,
    payloads: Vec<(String, String, Vec<u8>)>,
) -> Result<(), EngineError> {
    // The context bounds un-awaited publish acks (`bus::jetstream(_, 1024)`, blocking beyond
    // that), so a large batch awaits its acks every PUBLISH_WINDOW publications.
    const PUBLISH_WINDOW: usize = 256;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut acks = Vec::with_capacity(payloads.len().min(PUBLISH_WINDOW));
    for (subject, msg_id, payload) in payloads {
        if acks.len() == PUBLISH_WINDOW {
            await_acks(&mut acks, deadline).await?;
        }
        let mut headers = HeaderMap::new();
        headers.insert(SIGNAL_SCHEMA_HEADER, SIGNAL_SCHEMA);
        headers.insert("Content-Type", "application/json");
        let msg = PublishMessage::build()
            .headers(headers)
            .payload(payload.into())
            .message_id(msg_id);
        match js.send_publish(subject.clone(), msg).await {
            Ok(ack) => acks.push((subject, ack)),
            Err(source) => return Err(publish_failed(EngineError::Publish { subject, source })),
        }
    }
    await_acks(&mut acks, deadline).await
}

/// Awaits (and empties) publish acks; one deadline for the whole batch.
async fn await_acks(
    acks: &mut Vec<(String, PublishAckFuture)>,
    deadline: tokio::time::Instant,
) -> Result<(), EngineError> {
    for (subject, ack) in acks.drain(..) {
        match tokio::time::timeout_at(deadline, ack).await {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => {
                return Err(publish_failed(EngineError::Publish { subject, source }))
            }
            Err(_) => return Err(publish_failed(EngineError::PublishTimeout { subject })),
        }
    }
    Ok(())
}
