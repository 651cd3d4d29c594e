//! Fault injection, switchable at start-up (flags) and at run time (this handle or the admin
//! API): WS drops, stalls, refusals and `serverShutdown` announcements, REST 5xx/429 bursts and
//! delays, exchange-side gaps, kline archive files (missing, bad checksum, truncated, duplicate
//! rows, wrong values) and the archive's publication lags.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::archive::{Archive, ArchiveFault, ArchiveFile, ArchiveTarget};
use crate::clock::SimClock;
use crate::market::{Gap, Market};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
struct State {
    ws_stall: bool,
    ws_refuse: bool,
    rest_delay_ms: u64,
    rest_fail_remaining: u64,
    rest_fail_status: u16,
    rest_throttle_remaining: u64,
    rest_throttle_retry_after_secs: u64,
}

/// What a REST request must suffer before being served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RestFault {
    /// Answer with this 5xx status.
    Fail(u16),
    /// Answer 429 with this Retry-After (seconds).
    Throttle(u64),
}

/// Snapshot of active faults plus the clock, as `GET /_sim/faults` returns it.
#[derive(Clone, Debug, Serialize)]
pub struct FaultSnapshot {
    pub ws_stall: bool,
    pub ws_refuse: bool,
    pub rest_delay_ms: u64,
    pub rest_fail_remaining: u64,
    pub rest_fail_status: u16,
    pub rest_throttle_remaining: u64,
    pub rest_throttle_retry_after_secs: u64,
    pub gaps: Vec<Gap>,
    /// Open WebSocket connections.
    pub ws_connections: usize,
    /// How many times all WS connections were dropped on request.
    pub ws_drops: u64,
    /// How many `serverShutdown` events were announced on request.
    pub ws_shutdowns: u64,
    /// Kline archive publication lags (sim clock).
    pub archive_daily_lag_ms: i64,
    pub archive_monthly_lag_ms: i64,
    /// Kline archive faults, one per file.
    pub archive_faults: Vec<ArchiveFault>,
    pub now_ms: i64,
    pub speed: f64,
    pub start_ms: i64,
}

/// A partial update, as `POST /_sim/faults` takes it; absent fields stay as they are.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPatch {
    pub ws_stall: Option<bool>,
    pub ws_refuse: Option<bool>,
    /// Drop every open WS connection now.
    #[serde(default)]
    pub drop_ws: bool,
    pub rest_delay_ms: Option<u64>,
    /// Fail the next N REST requests with `rest_fail_status` (default 503).
    pub rest_fail_next: Option<u64>,
    pub rest_fail_status: Option<u16>,
    /// Throttle the next N REST requests with 429.
    pub rest_throttle_next: Option<u64>,
    pub rest_throttle_retry_after_secs: Option<u64>,
    #[serde(default)]
    pub clear_gaps: bool,
    #[serde(default)]
    pub add_gaps: Vec<Gap>,
    #[serde(default)]
    pub remove_gaps: Vec<Gap>,
    pub archive_daily_lag_ms: Option<u64>,
    pub archive_monthly_lag_ms: Option<u64>,
    /// Removes every archive fault first (every file re-published correct).
    #[serde(default)]
    pub clear_archive_faults: bool,
    /// Sets archive faults (replacing a file's previous one).
    #[serde(default)]
    pub add_archive_faults: Vec<ArchiveFault>,
    /// Removes the faults of these files (names, paths or {symbol, interval, period}).
    #[serde(default)]
    pub remove_archive_faults: Vec<ArchiveTarget>,
}

struct Inner {
    state: Mutex<State>,
    drops: watch::Sender<u64>,
    /// Count of `serverShutdown` announcements, with the wall time each connection keeps
    /// running after one.
    shutdowns: watch::Sender<(u64, Duration)>,
    connections: AtomicUsize,
}

/// In-process fault controls; clones share state.
#[derive(Clone)]
pub struct Faults {
    inner: Arc<Inner>,
    market: Arc<Market>,
    clock: SimClock,
    archive: Archive,
}

impl Faults {
    pub(crate) fn new(market: Arc<Market>, clock: SimClock, archive: Archive) -> Self {
        let state = State {
            rest_fail_status: 503,
            rest_throttle_retry_after_secs: 10,
            ..State::default()
        };
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                drops: watch::channel(0).0,
                shutdowns: watch::channel((0, Duration::ZERO)).0,
                connections: AtomicUsize::new(0),
            }),
            market,
            clock,
            archive,
        }
    }

    /// Drops every open WebSocket connection (no close frame, like a network cut).
    pub fn drop_ws(&self) {
        self.inner.drops.send_modify(|n| *n += 1);
    }

    /// Sends Binance's `serverShutdown` event on every open WebSocket connection now and closes
    /// each `close_after` (wall time) later, as a server about to restart does.
    pub fn announce_shutdown(&self, close_after: Duration) {
        self.inner
            .shutdowns
            .send_modify(|(n, after)| (*n, *after) = (*n + 1, close_after));
    }

    /// Stalls (true) or resumes (false) kline streams; connections stay open and answer pings.
    pub fn set_ws_stall(&self, on: bool) {
        self.inner.state.lock().ws_stall = on;
    }

    /// Refuses (true) or accepts (false) new WebSocket connections.
    pub fn set_ws_refuse(&self, on: bool) {
        self.inner.state.lock().ws_refuse = on;
    }

    /// Delays every REST response by `ms`.
    pub fn set_rest_delay_ms(&self, ms: u64) {
        self.inner.state.lock().rest_delay_ms = ms;
    }

    /// Answers the next `n` REST requests with `status` (500, 502, 503 or 504).
    pub fn fail_next_rest(&self, n: u64, status: u16) {
        let mut s = self.inner.state.lock();
        s.rest_fail_remaining = n;
        s.rest_fail_status = status;
    }

    /// Answers the next `n` REST requests with 429 and `Retry-After: retry_after_secs`.
    pub fn throttle_next_rest(&self, n: u64, retry_after_secs: u64) {
        let mut s = self.inner.state.lock();
        s.rest_throttle_remaining = n;
        s.rest_throttle_retry_after_secs = retry_after_secs;
    }

    /// Adds an exchange-side gap.
    pub fn add_gap(&self, gap: Gap) {
        self.market.add_gap(gap);
    }

    /// Removes a gap; true if it was active.
    pub fn remove_gap(&self, gap: &Gap) -> bool {
        self.market.remove_gap(gap)
    }

    /// Removes every gap.
    pub fn clear_gaps(&self) {
        self.market.clear_gaps();
    }

    /// Sets a fault on one archive file (replacing its previous one).
    pub fn add_archive_fault(&self, f: ArchiveFault) {
        self.archive.add_fault(f);
    }

    /// Removes an archive file's fault: it is re-published correct. True if it had one.
    pub fn remove_archive_fault(&self, file: &ArchiveFile) -> bool {
        self.archive.remove_fault(file)
    }

    /// Removes every archive fault.
    pub fn clear_archive_faults(&self) {
        self.archive.clear_faults();
    }

    /// Applies a patch (the admin API's POST body).
    pub fn apply(&self, p: &FaultPatch) {
        {
            let mut s = self.inner.state.lock();
            if let Some(v) = p.ws_stall {
                s.ws_stall = v;
            }
            if let Some(v) = p.ws_refuse {
                s.ws_refuse = v;
            }
            if let Some(v) = p.rest_delay_ms {
                s.rest_delay_ms = v;
            }
            if let Some(v) = p.rest_fail_status {
                s.rest_fail_status = v;
            }
            if let Some(v) = p.rest_fail_next {
                s.rest_fail_remaining = v;
            }
            if let Some(v) = p.rest_throttle_retry_after_secs {
                s.rest_throttle_retry_after_secs = v;
            }
            if let Some(v) = p.rest_throttle_next {
                s.rest_throttle_remaining = v;
            }
        }
        if p.clear_gaps {
            self.clear_gaps();
        }
        for g in &p.remove_gaps {
            self.remove_gap(g);
        }
        for g in &p.add_gaps {
            self.add_gap(g.clone());
        }
        if let Some(v) = p.archive_daily_lag_ms {
            self.archive.set_daily_lag(Duration::from_millis(v));
        }
        if let Some(v) = p.archive_monthly_lag_ms {
            self.archive.set_monthly_lag(Duration::from_millis(v));
        }
        if p.clear_archive_faults {
            self.clear_archive_faults();
        }
        for t in &p.remove_archive_faults {
            self.remove_archive_fault(&t.0);
        }
        for f in &p.add_archive_faults {
            self.add_archive_fault(f.clone());
        }
        if p.drop_ws {
            self.drop_ws();
        }
    }

    /// Everything active now, plus the clock.
    pub fn snapshot(&self) -> FaultSnapshot {
        let s = self.inner.state.lock().clone();
        FaultSnapshot {
            ws_stall: s.ws_stall,
            ws_refuse: s.ws_refuse,
            rest_delay_ms: s.rest_delay_ms,
            rest_fail_remaining: s.rest_fail_remaining,
            rest_fail_status: s.rest_fail_status,
            rest_throttle_remaining: s.rest_throttle_remaining,
            rest_throttle_retry_after_secs: s.rest_throttle_retry_after_secs,
            gaps: self.market.gaps(),
            ws_connections: self.inner.connections.load(Ordering::Relaxed),
            ws_drops: *self.inner.drops.borrow(),
            ws_shutdowns: self.inner.shutdowns.borrow().0,
            archive_daily_lag_ms: self.archive.lags_ms().0,
            archive_monthly_lag_ms: self.archive.lags_ms().1,
            archive_faults: self.archive.faults(),
            now_ms: self.clock.now_ms(),
            speed: self.clock.speed(),
            start_ms: self.clock.start_ms(),
        }
    }

    pub(crate) fn ws_stalled(&self) -> bool {
        self.inner.state.lock().ws_stall
    }

    pub(crate) fn ws_refused(&self) -> bool {
        self.inner.state.lock().ws_refuse
    }

    pub(crate) fn rest_delay_ms(&self) -> u64 {
        self.inner.state.lock().rest_delay_ms
    }

    /// Consumes one pending REST fault, if any (5xx before 429).
    pub(crate) fn take_rest_fault(&self) -> Option<RestFault> {
        let mut s = self.inner.state.lock();
        if s.rest_fail_remaining > 0 {
            s.rest_fail_remaining -= 1;
            return Some(RestFault::Fail(s.rest_fail_status));
        }
        if s.rest_throttle_remaining > 0 {
            s.rest_throttle_remaining -= 1;
            return Some(RestFault::Throttle(s.rest_throttle_retry_after_secs));
        }
        None
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<(u64, Duration)> {
        self.inner.shutdowns.subscribe()
    }

    pub(crate) fn drop_signal(&self) -> watch::Receiver<u64> {
        self.inner.drops.subscribe()
    }

    /// Counts an open connection until the guard drops.
    pub(crate) fn connection_guard(&self) -> ConnGuard {
        self.inner.connections.fetch_add(1, Ordering::Relaxed);
        ConnGuard(self.inner.clone())
    }
}

pub(crate) struct ConnGuard(Arc<Inner>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
