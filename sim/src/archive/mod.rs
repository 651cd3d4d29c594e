//! Binance's public kline archive (data.binance.vision) on the simulator's port: monthly and
//! daily zips of CSV rows equal to what REST serves, their CHECKSUMs, publication lag on the
//! sim clock, a byte-bounded cache, prewarming, and per-file faults.
//!
//! - `GET /data/spot/monthly/klines/<SYM>/<iv>/<SYM>-<iv>-YYYY-MM.zip` (every interval; the
//!   month is `1mo`), `GET /data/spot/daily/klines/<SYM>/<iv>/<SYM>-<iv>-YYYY-MM-DD.zip`
//!   (1s … 1d), and `<same>.zip.CHECKSUM` (`<sha256 hex>  <name>.zip\n`).
//! - Anything else under `/data/`, a file not yet published, a period without candles, an
//!   unknown or delisted symbol: 404 with S3's small `NoSuchKey` XML body.
//! - No request weight and no REST faults: on Binance this is a separate static host.

mod build;
mod cache;
mod fault;
mod file;
mod http;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use fault::{parse_archive_fault, ArchiveFault, ArchiveFaultKind, ArchiveTarget};
pub use file::{archive_interval_name, has_daily, parse_archive_interval, ArchiveFile, Period};
pub(crate) use http::router;

use build::Built;
use cache::Lru;

use crate::candle::Candle;
use crate::clock::SimClock;
use crate::interval::Interval;
use crate::market::Market;

/// Cache key: the file, the fault it is served with, and the ranges without candles (gaps,
/// halts) that touch it, so a gap added or removed later is never answered from stale bytes.
type Key = (ArchiveFile, Option<ArchiveFaultKind>, Vec<(i64, i64)>);

/// The archive's settings at start-up.
#[derive(Clone, Debug)]
pub struct ArchiveConfig {
    pub daily_lag: Duration,
    pub monthly_lag: Duration,
    pub cache_bytes: usize,
    pub faults: Vec<ArchiveFault>,
}

struct Inner {
    market: Arc<Market>,
    clock: SimClock,
    daily_lag_ms: AtomicI64,
    monthly_lag_ms: AtomicI64,
    faults: Mutex<BTreeMap<ArchiveFile, ArchiveFaultKind>>,
    cache: Lru<Key, Built>,
    /// Builds run at most this many at once (one per core): more only share the cores.
    building: tokio::sync::Semaphore,
    build_nanos: AtomicU64,
    builds: AtomicU64,
}

/// The archive: in-process controls (lags, faults via [`crate::Faults`], prewarm). Clones share
/// state.
#[derive(Clone)]
pub struct Archive {
    inner: Arc<Inner>,
}

/// What `POST /_sim/archive/prewarm` takes: files of `kind` for every symbol × interval whose
/// period lies in `from..=to`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrewarmRequest {
    /// Default: every listed symbol.
    #[serde(default)]
    pub symbols: Vec<String>,
    /// Archive names (`1m`, `1mo`, …); default `["1m"]`.
    #[serde(default)]
    pub intervals: Vec<String>,
    /// `monthly` (default) or `daily`.
    #[serde(default)]
    pub kind: PrewarmKind,
    /// First period, `YYYY-MM` or `YYYY-MM-DD` (the month or day containing it).
    pub from: String,
    /// Last period, inclusive; default the current one (not yet published files are skipped).
    #[serde(default)]
    pub to: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrewarmKind {
    #[default]
    Monthly,
    Daily,
}

/// What a prewarm did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PrewarmReport {
    /// Files asked for.
    pub files: usize,
    /// Built now.
    pub built: usize,
    /// Already in the cache.
    pub cached: usize,
    /// Not published yet on the sim clock (not built).
    pub unpublished: usize,
    /// Answered 404 for another reason: no candles in the period, a `missing` fault.
    pub not_found: usize,
    /// Zip bytes of the files served.
    pub bytes: usize,
    /// Files no longer in the cache at the end (raise `--archive-cache-mb` if not 0).
    pub evicted: usize,
    pub elapsed_ms: u64,
}

/// `GET /_sim/archive`: lags, cache and build counters.
#[derive(Clone, Debug, Serialize)]
pub struct ArchiveStats {
    pub daily_lag_ms: i64,
    pub monthly_lag_ms: i64,
    pub cache_entries: usize,
    pub cache_bytes: usize,
    pub cache_limit_bytes: usize,
    pub cache_hits: u64,
    /// Files built (cache misses), and their total build time.
    pub builds: u64,
    pub build_ms_total: u64,
    pub faults: Vec<ArchiveFault>,
}

/// Why a file is not served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Absent {
    /// Unknown or delisted symbol.
    Symbol,
    /// Published later on the sim clock.
    Unpublished,
    /// A `missing` fault.
    Fault,
    /// No candle opens in the period.
    Empty,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Archive {
    pub(crate) fn new(market: Arc<Market>, clock: SimClock, c: &ArchiveConfig) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let a = Self {
            inner: Arc::new(Inner {
                market,
                clock,
                daily_lag_ms: AtomicI64::new(ms(c.daily_lag)),
                monthly_lag_ms: AtomicI64::new(ms(c.monthly_lag)),
                faults: Mutex::new(BTreeMap::new()),
                cache: Lru::new(c.cache_bytes),
                building: tokio::sync::Semaphore::new(cores),
                build_nanos: AtomicU64::new(0),
                builds: AtomicU64::new(0),
            }),
        };
        for f in &c.faults {
            a.add_fault(f.clone());
        }
        a
    }

    /// Daily files of day D appear at D+1 00:00 UTC + `lag` on the sim clock.
    pub fn set_daily_lag(&self, lag: Duration) {
        self.inner.daily_lag_ms.store(ms(lag), Ordering::Relaxed);
    }

    /// Monthly files of month M appear at the 1st of M+1, 00:00 UTC + `lag` on the sim clock.
    pub fn set_monthly_lag(&self, lag: Duration) {
        self.inner.monthly_lag_ms.store(ms(lag), Ordering::Relaxed);
    }

    /// (daily, monthly) lags in ms.
    pub fn lags_ms(&self) -> (i64, i64) {
        (
            self.inner.daily_lag_ms.load(Ordering::Relaxed),
            self.inner.monthly_lag_ms.load(Ordering::Relaxed),
        )
    }

    /// Sets a fault on one file (replacing the one it had).
    pub fn add_fault(&self, f: ArchiveFault) {
        self.inner.faults.lock().insert(f.file, f.kind);
    }

    /// Removes the fault of `file`: it is served correct again (re-published); true if it had one.
    pub fn remove_fault(&self, file: &ArchiveFile) -> bool {
        self.inner.faults.lock().remove(file).is_some()
    }

    pub fn clear_faults(&self) {
        self.inner.faults.lock().clear();
    }

    /// The active faults, by file.
    pub fn faults(&self) -> Vec<ArchiveFault> {
        self.inner
            .faults
            .lock()
            .iter()
            .map(|(file, &kind)| ArchiveFault {
                file: file.clone(),
                kind,
            })
            .collect()
    }

    pub fn stats(&self) -> ArchiveStats {
        let (daily_lag_ms, monthly_lag_ms) = self.lags_ms();
        let c = self.inner.cache.stats();
        ArchiveStats {
            daily_lag_ms,
            monthly_lag_ms,
            cache_entries: c.entries,
            cache_bytes: c.bytes,
            cache_limit_bytes: self.inner.cache.limit(),
            cache_hits: c.hits,
            builds: self.inner.builds.load(Ordering::Relaxed),
            build_ms_total: self.inner.build_nanos.load(Ordering::Relaxed) / 1_000_000,
            faults: self.faults(),
        }
    }

    /// `[start, until)`: the period's start and the close (+1 ms) of its last candle, which for
    /// 3d and 1w candles may lie past the period's end.
    fn window(f: &ArchiveFile) -> (i64, i64) {
        let (start, end) = f.period.range_ms();
        let last = f.interval.open_of(end - 1, 0);
        let until = if last >= start {
            f.interval.next_open(last, 0).max(end)
        } else {
            end
        };
        (start, until)
    }

    /// When `f` is published on the sim clock: its lag after its last candle closed.
    pub fn published_at_ms(&self, f: &ArchiveFile) -> i64 {
        let (daily, monthly) = self.lags_ms();
        let lag = if f.period.is_day() { daily } else { monthly };
        Self::window(f).1.saturating_add(lag)
    }

    /// The checks that need no build: symbol, publication, `missing`. Gives the cache key.
    fn locate(&self, f: &ArchiveFile) -> Result<(usize, Option<ArchiveFaultKind>), Absent> {
        let m = &self.inner.market;
        let idx = m.index(&f.symbol).ok_or(Absent::Symbol)?;
        if self.inner.clock.now_ms() < self.published_at_ms(f) {
            return Err(Absent::Unpublished);
        }
        let fault = self.inner.faults.lock().get(f).copied();
        if fault == Some(ArchiveFaultKind::Missing) {
            return Err(Absent::Fault);
        }
        Ok((idx, fault))
    }

    fn key(&self, idx: usize, f: &ArchiveFile, fault: Option<ArchiveFaultKind>) -> Key {
        let (start, until) = Self::window(f);
        let ranges = self.inner.market.no_candle_ranges(idx, start, until);
        (f.clone(), fault, ranges)
    }

    /// The file as served now, from the cache only (cheap; for the async path).
    fn cached(&self, f: &ArchiveFile) -> Option<Result<Arc<Built>, Absent>> {
        let (idx, fault) = match self.locate(f) {
            Ok(x) => x,
            Err(a) => return Some(Err(a)),
        };
        let good = self.inner.cache.peek(&self.key(idx, f, None))?;
        if good.rows == 0 {
            return Some(Err(Absent::Empty));
        }
        match fault {
            None => Some(Ok(good)),
            Some(k) => self.inner.cache.peek(&self.key(idx, f, Some(k))).map(Ok),
        }
    }

    /// The file as served now, built when not cached. Blocking: CPU-bound for a cold file.
    pub(crate) fn get_blocking(
        &self,
        f: &ArchiveFile,
    ) -> Result<Result<Arc<Built>, Absent>, String> {
        let (idx, fault) = match self.locate(f) {
            Ok(x) => x,
            Err(a) => return Ok(Err(a)),
        };
        let (start, until) = Self::window(f);
        let (end, now) = (f.period.range_ms().1, self.inner.clock.now_ms());
        let m = &self.inner.market;
        let iv = f.interval;
        // The candles, and the gaps/halts they were made under (to know if they may be kept).
        let ranges = std::cell::RefCell::new(Vec::new());
        let source = || {
            |each: &mut dyn FnMut(&Candle)| {
                *ranges.borrow_mut() = m.archive_rows(idx, iv, start, end, until, now, each);
            }
        };
        let key = self.key(idx, f, None);
        let good = self.inner.cache.get_or_build(&key, || {
            let t = Instant::now();
            let b = build::clean(f, 0, source()).map_err(|e| e.to_string())?;
            self.timed(t);
            let size = b.bytes();
            Ok((b, size, *ranges.borrow() == key.2))
        })?;
        if good.rows == 0 {
            return Ok(Err(Absent::Empty));
        }
        let Some(kind) = fault else {
            return Ok(Ok(good));
        };
        let key = self.key(idx, f, Some(kind));
        let tick = m.spec(&f.symbol).map_or(1, |s| s.tick);
        self.inner
            .cache
            .get_or_build(&key, || {
                let t = Instant::now();
                // Kinds that change bytes or the CHECKSUM only never call the source.
                *ranges.borrow_mut() = key.2.clone();
                let b = build::faulty(f, kind, &good, tick, source()).map_err(|e| e.to_string())?;
                self.timed(t);
                let size = b.bytes();
                Ok((b, size, *ranges.borrow() == key.2))
            })
            .map(Ok)
    }

    fn timed(&self, t: Instant) {
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.inner.build_nanos.fetch_add(ns, Ordering::Relaxed);
        self.inner.builds.fetch_add(1, Ordering::Relaxed);
    }

    /// The zip bytes of `f` as served now (`None` when it would be a 404). Blocking; builds
    /// and caches it when needed.
    pub fn zip_bytes(&self, f: &ArchiveFile) -> Result<Option<bytes::Bytes>, String> {
        Ok(self.get_blocking(f)?.ok().map(|b| b.zip.clone()))
    }

    /// Builds the correct zip of `f` from scratch, bypassing cache, lag and faults (for timing).
    pub fn build_uncached(&self, f: &ArchiveFile) -> Result<Vec<u8>, String> {
        let m = &self.inner.market;
        let idx = m
            .index(&f.symbol)
            .ok_or_else(|| format!("unknown symbol {}", f.symbol))?;
        let (start, until) = Self::window(f);
        let end = f.period.range_ms().1;
        let source = |each: &mut dyn FnMut(&Candle)| {
            m.archive_rows(idx, f.interval, start, end, until, i64::MAX, each);
        };
        build::clean(f, 0, source)
            .map(|b| b.zip.to_vec())
            .map_err(|e| e.to_string())
    }

    /// The files a prewarm request names.
    pub fn prewarm_files(&self, r: &PrewarmRequest) -> Result<Vec<ArchiveFile>, String> {
        let daily = r.kind == PrewarmKind::Daily;
        let period = |s: &str| {
            let p = Period::parse(s)
                .or_else(|| Period::parse(&format!("{s}-01")))
                .ok_or_else(|| format!("period must be YYYY-MM or YYYY-MM-DD, got {s:?}"))?;
            let t = p.range_ms().0;
            Ok::<_, String>(if daily {
                Period::day_of(t)
            } else {
                Period::month_of(t)
            })
        };
        let now = self.inner.clock.now_ms();
        let first = period(&r.from)?;
        let last = match &r.to {
            Some(s) => period(s)?,
            None if daily => Period::day_of(now),
            None => Period::month_of(now),
        };
        let symbols: Vec<String> = if r.symbols.is_empty() {
            self.inner
                .market
                .symbols()
                .into_iter()
                .map(|s| s.name)
                .collect()
        } else {
            r.symbols.clone()
        };
        if let Some(s) = symbols
            .iter()
            .find(|s| self.inner.market.index(s).is_none())
        {
            return Err(format!("unknown symbol {s:?}"));
        }
        let intervals = if r.intervals.is_empty() {
            vec![Interval::M1]
        } else {
            r.intervals
                .iter()
                .map(|s| {
                    parse_archive_interval(s)
                        .ok_or_else(|| format!("unknown archive interval {s:?}"))
                })
                .collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for sym in &symbols {
            for &iv in &intervals {
                let mut p = first;
                while p <= last {
                    out.push(ArchiveFile::new(sym, iv, p).ok_or_else(|| {
                        format!("no daily files for {}", archive_interval_name(iv))
                    })?);
                    p = p.next();
                }
            }
        }
        Ok(out)
    }

    /// Builds (and caches) every file `r` names, one worker per core. Blocking.
    pub fn prewarm(&self, r: &PrewarmRequest) -> Result<PrewarmReport, String> {
        let t = Instant::now();
        let files = self.prewarm_files(r)?;
        let next = AtomicUsize::new(0);
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(files.len().max(1));
        let totals = Mutex::new(PrewarmReport {
            files: files.len(),
            ..PrewarmReport::default()
        });
        let err = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(f) = files.get(i) else { break };
                    let was = self.cached(f).is_some_and(|r| r.is_ok());
                    let got = self.get_blocking(f);
                    let mut tot = totals.lock();
                    match got {
                        Ok(Ok(b)) => {
                            tot.bytes += b.zip.len();
                            if was {
                                tot.cached += 1;
                            } else {
                                tot.built += 1;
                            }
                        }
                        Ok(Err(Absent::Unpublished)) => tot.unpublished += 1,
                        Ok(Err(_)) => tot.not_found += 1,
                        Err(e) => *err.lock() = Some(e),
                    }
                });
            }
        });
        if let Some(e) = err.into_inner() {
            return Err(e);
        }
        let mut rep = totals.into_inner();
        rep.evicted = files
            .iter()
            .filter(|f| self.locate(f).is_ok())
            .filter(|f| self.cached(f).is_none())
            .count();
        rep.elapsed_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(rep)
    }
}
