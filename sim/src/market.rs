//! The data model: deterministic candles for every symbol and interval, with listing dates,
//! exchange-side gaps and cached hour/day aggregates so coarse pages stay cheap.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::agg::{merge, Agg};
use crate::candle::{Candle, Kline};
use crate::gen::Gen;
use crate::interval::{Interval, DAY, MINUTE, SECOND};
use crate::split::split_minute;
use crate::symbols::SymbolSpec;

/// Cached chunk kinds, in minutes.
const HOUR_MIN: i64 = 60;
const DAY_MIN: i64 = 1440;
/// Past this many cached chunks the cache starts over (bounds memory on long runs).
const CACHE_MAX: usize = 2_000_000;

/// An exchange-side outage: no candles whose 1m open time lies in `[start_ms, end_ms)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Affected symbol; `None` (or `"*"` on the command line) means every symbol.
    #[serde(default)]
    pub symbol: Option<String>,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Why [`Market::klines`] refused a query.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MarketError {
    #[error("unknown symbol {0:?}")]
    UnknownSymbol(String),
    #[error("unknown interval {0:?}")]
    UnknownInterval(String),
}

struct Entry {
    spec: SymbolSpec,
    gen: Gen,
}

/// A symbol's trading state as `exchangeInfo` shows it (a delisted symbol is not shown at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SymbolStatus {
    /// Trading: candles form.
    Trading,
    /// Halted (Binance's `BREAK`): no trades, so no candles, until resumed.
    Break,
    /// Gone: absent from exchangeInfo, REST answers -1121 "Invalid symbol.", streams are silent.
    Delisted,
}

impl SymbolStatus {
    /// Binance's word (`DELISTED` is the simulator's own: Binance just stops listing the symbol).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Trading => "TRADING",
            Self::Break => "BREAK",
            Self::Delisted => "DELISTED",
        }
    }
}

/// One halt of a symbol: no 1m candle opens in `[start_ms, end_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Halt {
    /// First minute without candles.
    pub start_ms: i64,
    /// First minute with candles again; `None` while still halted.
    pub end_ms: Option<i64>,
}

/// A symbol's lifecycle, as `GET /_sim/symbols` returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SymbolState {
    pub symbol: String,
    pub status: SymbolStatus,
    /// Open time of its first 1m candle.
    pub listed_ms: i64,
    pub halts: Vec<Halt>,
}

/// Why a lifecycle change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LifecycleError {
    #[error("unknown symbol {0:?}")]
    UnknownSymbol(String),
    #[error("symbol {0:?} is not upper-case A-Z0-9-_. (1-20)")]
    BadName(String),
    #[error("symbol {0:?} already exists")]
    AlreadyListed(String),
    #[error("symbol {0:?} is {1:?}, not trading")]
    NotTrading(String, SymbolStatus),
    #[error("symbol {0:?} is not halted")]
    NotHalted(String),
    #[error("symbol {0:?} is already delisted")]
    Delisted(String),
}

struct Life {
    status: SymbolStatus,
    /// `[start, end)` minute ranges without candles; the open one ends at `i64::MAX`.
    halts: Vec<(i64, i64)>,
}

struct State {
    entries: Vec<Arc<Entry>>,
    by_name: HashMap<String, usize>,
    life: Vec<Life>,
    /// Bumped on every change of gaps or halts: cached aggregates of older ones are ignored.
    generation: u64,
    list: Vec<Gap>,
    /// Per symbol: its gaps and halts, the ranges without candles.
    per_symbol: Vec<Arc<[(i64, i64)]>>,
}

type CacheKey = (u32, i64, i64);

/// Deterministic market data. Symbols can be listed, halted, resumed and delisted at run time.
/// Cheap to share (`Arc<Market>`).
pub struct Market {
    seed: u64,
    state: RwLock<State>,
    /// (symbol, chunk length in minutes, first minute) → (gap generation, aggregate).
    cache: Mutex<HashMap<CacheKey, (u64, Option<Agg>)>>,
}

/// The first minute boundary at or after `ms`: a halt or resume takes effect there, so the
/// minute in progress keeps the trades it already had.
fn ceil_minute(ms: i64) -> i64 {
    (ms + MINUTE - 1).div_euclid(MINUTE) * MINUTE
}

impl Market {
    /// A market over `symbols` (upper-case names); `listed_since` overrides every listing time.
    pub fn new(seed: u64, symbols: &[String], listed_since: Option<i64>) -> Self {
        let m = Self {
            seed,
            state: RwLock::new(State {
                entries: Vec::new(),
                by_name: HashMap::new(),
                life: Vec::new(),
                generation: 0,
                list: Vec::new(),
                per_symbol: Vec::new(),
            }),
            cache: Mutex::new(HashMap::new()),
        };
        for name in symbols {
            let mut spec = SymbolSpec::for_name(name);
            if let Some(t) = listed_since {
                spec.listed_ms = t.div_euclid(MINUTE) * MINUTE;
            }
            let _ = m.insert(spec); // a repeated name is served once
        }
        m
    }

    fn insert(&self, spec: SymbolSpec) -> Result<SymbolSpec, LifecycleError> {
        let mut st = self.state.write();
        if st.by_name.contains_key(&spec.name) {
            return Err(LifecycleError::AlreadyListed(spec.name));
        }
        let gen = Gen::new(self.seed, &spec);
        let idx = st.entries.len();
        st.by_name.insert(spec.name.clone(), idx);
        st.entries.push(Arc::new(Entry {
            spec: spec.clone(),
            gen,
        }));
        st.life.push(Life {
            status: SymbolStatus::Trading,
            halts: Vec::new(),
        });
        st.per_symbol.push(Arc::from(Vec::new()));
        Ok(spec)
    }

    /// The seed every figure derives from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Specs of the listed symbols (delisted ones left out), in listing order.
    pub fn symbols(&self) -> Vec<SymbolSpec> {
        let st = self.state.read();
        st.entries
            .iter()
            .zip(&st.life)
            .filter(|(_, l)| l.status != SymbolStatus::Delisted)
            .map(|(e, _)| e.spec.clone())
            .collect()
    }

    /// The spec of `name` (upper-case), if listed.
    pub fn spec(&self, name: &str) -> Option<SymbolSpec> {
        let i = self.index(name)?;
        Some(self.state.read().entries[i].spec.clone())
    }

    /// Index of a listed (not delisted) symbol.
    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        let st = self.state.read();
        st.by_name
            .get(name)
            .copied()
            .filter(|&i| st.life[i].status != SymbolStatus::Delisted)
    }

    /// Status of symbol `idx` now.
    pub(crate) fn status_of(&self, idx: usize) -> SymbolStatus {
        self.state
            .read()
            .life
            .get(idx)
            .map_or(SymbolStatus::Delisted, |l| l.status)
    }

    /// The status of `name` (delisted included), if it was ever listed.
    pub fn status(&self, name: &str) -> Option<SymbolStatus> {
        let st = self.state.read();
        st.by_name.get(name).map(|&i| st.life[i].status)
    }

    /// Every symbol ever listed, with its status and halts.
    pub fn lifecycle(&self) -> Vec<SymbolState> {
        let st = self.state.read();
        st.entries
            .iter()
            .zip(&st.life)
            .map(|(e, l)| SymbolState {
                symbol: e.spec.name.clone(),
                status: l.status,
                listed_ms: e.spec.listed_ms,
                halts: l
                    .halts
                    .iter()
                    .map(|&(s, e)| Halt {
                        start_ms: s,
                        end_ms: (e != i64::MAX).then_some(e),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Lists a new symbol whose first 1m candle opens at `listed_ms` (rounded down to the
    /// minute; may lie in the past, which serves history since then).
    pub fn list_symbol(&self, name: &str, listed_ms: i64) -> Result<SymbolSpec, LifecycleError> {
        if !crate::rest::params::symbol_ok(name) {
            return Err(LifecycleError::BadName(name.to_owned()));
        }
        let mut spec = SymbolSpec::for_name(name);
        spec.listed_ms = listed_ms.div_euclid(MINUTE) * MINUTE;
        self.insert(spec)
    }

    /// Halts `name` at `now_ms`: status `BREAK` at once, no candles from the next minute boundary.
    pub fn halt(&self, name: &str, now_ms: i64) -> Result<(), LifecycleError> {
        self.edit_life(name, |l| match l.status {
            SymbolStatus::Trading => {
                l.status = SymbolStatus::Break;
                l.halts.push((ceil_minute(now_ms), i64::MAX));
                Ok(())
            }
            s => Err(LifecycleError::NotTrading(name.to_owned(), s)),
        })
    }

    /// Resumes a halted `name`: `TRADING` at once, candles again from the next minute boundary.
    pub fn resume(&self, name: &str, now_ms: i64) -> Result<(), LifecycleError> {
        self.edit_life(name, |l| match (l.status, l.halts.last_mut()) {
            (SymbolStatus::Break, Some(h)) => {
                l.status = SymbolStatus::Trading;
                h.1 = ceil_minute(now_ms).max(h.0);
                if h.1 == h.0 {
                    l.halts.pop(); // halted and resumed inside one minute: no minute lost
                }
                Ok(())
            }
            _ => Err(LifecycleError::NotHalted(name.to_owned())),
        })
    }

    /// Delists `name`: it disappears from exchangeInfo and REST, and its streams go silent.
    pub fn delist(&self, name: &str) -> Result<(), LifecycleError> {
        self.edit_life(name, |l| match l.status {
            SymbolStatus::Delisted => Err(LifecycleError::Delisted(name.to_owned())),
            _ => {
                l.status = SymbolStatus::Delisted;
                Ok(())
            }
        })
    }

    fn edit_life(
        &self,
        name: &str,
        f: impl FnOnce(&mut Life) -> Result<(), LifecycleError>,
    ) -> Result<(), LifecycleError> {
        let mut st = self.state.write();
        let idx = *st
            .by_name
            .get(name)
            .ok_or_else(|| LifecycleError::UnknownSymbol(name.to_owned()))?;
        f(&mut st.life[idx])?;
        Self::rebuild(&mut st);
        drop(st);
        // Cached aggregates of the old generation are ignored from here on; free them now.
        self.cache.lock().clear();
        Ok(())
    }

    /// Every existing candle of `symbol`/`interval` (Binance names, delisted symbols included)
    /// whose open time lies in `[start_ms, end_ms]` and is not after `now_ms`, ascending. The candle containing
    /// `now_ms` is the forming one (`closed == false`), as REST would show it at that instant.
    pub fn klines(
        &self,
        symbol: &str,
        interval: &str,
        start_ms: i64,
        end_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<Kline>, MarketError> {
        let iv = Interval::parse(interval)
            .ok_or_else(|| MarketError::UnknownInterval(interval.to_owned()))?;
        // Delisted symbols included: their history is what tests compare with.
        let idx = self
            .state
            .read()
            .by_name
            .get(symbol)
            .copied()
            .ok_or_else(|| MarketError::UnknownSymbol(symbol.to_owned()))?;
        let page = self.page(idx, iv, 0, Some(start_ms), Some(end_ms), usize::MAX, now_ms);
        Ok(page.iter().map(Kline::from).collect())
    }

    /// A REST page with Binance's selection rules (see [`crate::rest`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn page(
        &self,
        idx: usize,
        iv: Interval,
        tz: i64,
        start: Option<i64>,
        end: Option<i64>,
        limit: usize,
        now: i64,
    ) -> Vec<Candle> {
        Self::page_in(&self.view(idx), iv, tz, start, end, limit, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn page_in(
        v: &View<'_>,
        iv: Interval,
        tz: i64,
        start: Option<i64>,
        end: Option<i64>,
        limit: usize,
        now: i64,
    ) -> Vec<Candle> {
        let first = iv.open_of(v.e.spec.listed_ms, tz);
        let mut memo = None;
        let mut out = Vec::with_capacity(limit.min(1000));
        if let Some(start) = start {
            let stop = end.unwrap_or(i64::MAX).min(now);
            let mut t = iv.open_of(start, tz);
            if t < start {
                t = iv.next_open(t, tz);
            }
            t = t.max(first);
            while t <= stop && out.len() < limit {
                if iv == Interval::S1 && !v.minute_exists(t.div_euclid(MINUTE)) {
                    t = (t.div_euclid(MINUTE) + 1) * MINUTE; // skip the missing minute whole
                    continue;
                }
                out.extend(v.candle(iv, tz, t, now, &mut memo));
                t = iv.next_open(t, tz);
            }
        } else {
            let mut t = iv.open_of(end.unwrap_or(i64::MAX).min(now), tz);
            while t >= first && out.len() < limit {
                if iv == Interval::S1 && !v.minute_exists(t.div_euclid(MINUTE)) {
                    t = t.div_euclid(MINUTE) * MINUTE - SECOND;
                    continue;
                }
                out.extend(v.candle(iv, tz, t, now, &mut memo));
                t = iv.prev_open(t, tz);
            }
            out.reverse();
        }
        out
    }

    /// Hands `each` the closed candles of `idx`/`iv` opening in `[start, end)` (UTC alignment),
    /// ascending, for an archive file; returns the ranges without candles that touch
    /// `[start, until)` they were made under (see [`Self::no_candle_ranges`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn archive_rows(
        &self,
        idx: usize,
        iv: Interval,
        start: i64,
        end: i64,
        until: i64,
        now: i64,
        each: &mut dyn FnMut(&Candle),
    ) -> Vec<(i64, i64)> {
        let v = self.view(idx);
        // Day by day below 1d (those intervals divide a day): a month of 1s is 2.6 M candles,
        // never all held at once.
        let step = if iv < Interval::D1 { DAY } else { end - start };
        let mut t = start;
        while t < end {
            let e = (t + step).min(end);
            for c in Self::page_in(&v, iv, 0, Some(t), Some(e - 1), usize::MAX, now) {
                if c.closed {
                    each(&c);
                }
            }
            t = e;
        }
        clip(&v.gaps, start, until)
    }

    /// The gaps and halts of `idx` that overlap `[from, until)`, clipped to it and sorted: equal
    /// for two instants exactly when that window's candles are the same.
    pub(crate) fn no_candle_ranges(&self, idx: usize, from: i64, until: i64) -> Vec<(i64, i64)> {
        let gaps = self.state.read().per_symbol[idx].clone();
        clip(&gaps, from, until)
    }

    /// The candle of `idx`/`iv` opening at `open`, as of `now` (None if it has no 1m candles).
    pub(crate) fn candle(
        &self,
        idx: usize,
        iv: Interval,
        tz: i64,
        open: i64,
        now: i64,
    ) -> Option<Candle> {
        self.view(idx).candle(iv, tz, open, now, &mut None)
    }

    /// Adds an exchange-side gap (REST and WS both honour it from now on).
    pub fn add_gap(&self, gap: Gap) {
        self.edit_gaps(|l| l.push(gap));
    }

    /// Removes gaps equal to `gap`; true if one was there.
    pub fn remove_gap(&self, gap: &Gap) -> bool {
        let mut found = false;
        self.edit_gaps(|l| {
            let before = l.len();
            l.retain(|g| g != gap);
            found = l.len() != before;
        });
        found
    }

    /// Removes every gap.
    pub fn clear_gaps(&self) {
        self.edit_gaps(Vec::clear);
    }

    /// The active gaps.
    pub fn gaps(&self) -> Vec<Gap> {
        self.state.read().list.clone()
    }

    fn edit_gaps(&self, f: impl FnOnce(&mut Vec<Gap>)) {
        let mut st = self.state.write();
        f(&mut st.list);
        Self::rebuild(&mut st);
        drop(st);
        // Cached aggregates of the old generation are ignored from here on; free them now.
        self.cache.lock().clear();
    }

    /// Recomputes every symbol's ranges without candles (gaps and halts) under a new generation.
    fn rebuild(st: &mut State) {
        st.generation += 1;
        let per_symbol = st
            .entries
            .iter()
            .zip(&st.life)
            .map(|(e, l)| {
                st.list
                    .iter()
                    .filter(|g| g.symbol.as_deref().is_none_or(|s| s == e.spec.name))
                    .map(|g| (g.start_ms, g.end_ms))
                    .chain(l.halts.iter().copied())
                    .collect::<Vec<_>>()
                    .into()
            })
            .collect();
        st.per_symbol = per_symbol;
    }

    fn view(&self, idx: usize) -> View<'_> {
        let st = self.state.read();
        View {
            m: self,
            idx,
            e: st.entries[idx].clone(),
            gaps: st.per_symbol[idx].clone(),
            generation: st.generation,
        }
    }
}

fn clip(ranges: &[(i64, i64)], from: i64, until: i64) -> Vec<(i64, i64)> {
    let mut v: Vec<_> = ranges
        .iter()
        .filter(|&&(s, e)| s < until && e > from)
        .map(|&(s, e)| (s.max(from), e.min(until)))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// One symbol under one gap generation, for the duration of a query.
struct View<'a> {
    m: &'a Market,
    idx: usize,
    e: Arc<Entry>,
    gaps: Arc<[(i64, i64)]>,
    generation: u64,
}

type Memo = Option<(i64, [Agg; 60])>;

impl View<'_> {
    #[inline]
    fn minute_exists(&self, m: i64) -> bool {
        let t = m * MINUTE;
        m >= self.e.gen.listed_min && !self.gaps.iter().any(|&(s, e)| t >= s && t < e)
    }

    #[inline]
    fn minute(&self, m: i64) -> Option<Agg> {
        self.minute_exists(m).then(|| self.e.gen.minute(m))
    }

    /// The 60 seconds of minute `m`, memoised across consecutive calls.
    fn seconds<'b>(&self, m: i64, memo: &'b mut Memo) -> Option<&'b [Agg; 60]> {
        if memo.as_ref().is_none_or(|(k, _)| *k != m) {
            let min = self.minute(m)?;
            *memo = Some((m, split_minute(&self.e.gen, m, &min)));
        }
        memo.as_ref().map(|(_, s)| s)
    }

    /// Aggregate of the existing minutes in `[a, b)`, all of which must be complete.
    fn complete(&self, a: i64, b: i64) -> Option<Agg> {
        let mut acc = None;
        let mut m = a.max(self.e.gen.listed_min);
        while m < b {
            if m.rem_euclid(DAY_MIN) == 0 && m + DAY_MIN <= b {
                merge(&mut acc, self.chunk(m, DAY_MIN));
                m += DAY_MIN;
            } else if m.rem_euclid(HOUR_MIN) == 0 && m + HOUR_MIN <= b {
                merge(&mut acc, self.chunk(m, HOUR_MIN));
                m += HOUR_MIN;
            } else {
                merge(&mut acc, self.minute(m));
                m += 1;
            }
        }
        acc
    }

    /// A cached hour or day aggregate starting at minute `m0`.
    fn chunk(&self, m0: i64, len: i64) -> Option<Agg> {
        let key = (self.idx as u32, len, m0);
        if let Some((g, agg)) = self.m.cache.lock().get(&key) {
            if *g == self.generation {
                return *agg;
            }
        }
        let mut acc = None;
        for m in m0..m0 + len {
            merge(&mut acc, self.minute(m));
        }
        let mut cache = self.m.cache.lock();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (self.generation, acc));
        acc
    }

    fn candle(
        &self,
        iv: Interval,
        tz: i64,
        open: i64,
        now: i64,
        memo: &mut Memo,
    ) -> Option<Candle> {
        if open > now {
            return None;
        }
        let next = iv.next_open(open, tz);
        let agg = if iv == Interval::S1 {
            let m = open.div_euclid(MINUTE);
            let s = ((open - m * MINUTE) / SECOND) as usize;
            self.seconds(m, memo)?[s]
        } else {
            let (a, b) = (open.div_euclid(MINUTE), next.div_euclid(MINUTE));
            let current = now.div_euclid(MINUTE);
            let mut acc = self.complete(a, b.min(current));
            if a <= current && current < b {
                // The forming minute: its seconds up to and including the one containing now.
                let upto = ((now - current * MINUTE) / SECOND) as usize;
                if let Some(secs) = self.seconds(current, memo) {
                    for s in &secs[..=upto] {
                        merge(&mut acc, Some(*s));
                    }
                }
            }
            acc?
        };
        Some(Candle {
            open_time: open,
            close_time: next - 1,
            agg,
            closed: now >= next,
        })
    }
}
