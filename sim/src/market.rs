//! The data model: deterministic candles for every symbol and interval, with listing dates,
//! exchange-side gaps and cached hour/day aggregates so coarse pages stay cheap.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::agg::{merge, Agg};
use crate::candle::{Candle, Kline};
use crate::gen::Gen;
use crate::interval::{Interval, MINUTE, SECOND};
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

struct GapState {
    generation: u64,
    list: Vec<Gap>,
    per_symbol: Vec<Arc<[(i64, i64)]>>,
}

type CacheKey = (u32, i64, i64);

/// Deterministic market data for a fixed set of symbols. Cheap to share (`Arc<Market>`).
pub struct Market {
    seed: u64,
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    gaps: RwLock<GapState>,
    /// (symbol, chunk length in minutes, first minute) → (gap generation, aggregate).
    cache: Mutex<HashMap<CacheKey, (u64, Option<Agg>)>>,
}

impl Market {
    /// A market over `symbols` (upper-case names); `listed_since` overrides every listing time.
    pub fn new(seed: u64, symbols: &[String], listed_since: Option<i64>) -> Self {
        let mut entries = Vec::new();
        let mut by_name = HashMap::new();
        for name in symbols {
            if by_name.contains_key(name) {
                continue;
            }
            let mut spec = SymbolSpec::for_name(name);
            if let Some(t) = listed_since {
                spec.listed_ms = t.div_euclid(MINUTE) * MINUTE;
            }
            let gen = Gen::new(seed, &spec);
            by_name.insert(name.clone(), entries.len());
            entries.push(Entry { spec, gen });
        }
        let per_symbol = vec![Arc::from(Vec::new()); entries.len()];
        Self {
            seed,
            entries,
            by_name,
            gaps: RwLock::new(GapState {
                generation: 0,
                list: Vec::new(),
                per_symbol,
            }),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The seed every figure derives from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Specs of all symbols, in configuration order.
    pub fn symbols(&self) -> impl Iterator<Item = &SymbolSpec> {
        self.entries.iter().map(|e| &e.spec)
    }

    /// The spec of `name` (upper-case), if served.
    pub fn spec(&self, name: &str) -> Option<&SymbolSpec> {
        self.index(name).map(|i| &self.entries[i].spec)
    }

    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Every existing candle of `symbol`/`interval` (Binance names) whose open time lies in
    /// `[start_ms, end_ms]` and is not after `now_ms`, ascending. The candle containing
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
        let idx = self
            .index(symbol)
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
        let v = self.view(idx);
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
        self.gaps.read().list.clone()
    }

    fn edit_gaps(&self, f: impl FnOnce(&mut Vec<Gap>)) {
        let mut st = self.gaps.write();
        f(&mut st.list);
        st.generation += 1;
        let list = st.list.clone();
        st.per_symbol = self
            .entries
            .iter()
            .map(|e| {
                list.iter()
                    .filter(|g| g.symbol.as_deref().is_none_or(|s| s == e.spec.name))
                    .map(|g| (g.start_ms, g.end_ms))
                    .collect::<Vec<_>>()
                    .into()
            })
            .collect();
        // Cached aggregates of the old generation are ignored from here on; free them now.
        self.cache.lock().clear();
    }

    fn view(&self, idx: usize) -> View<'_> {
        let st = self.gaps.read();
        View {
            m: self,
            idx,
            e: &self.entries[idx],
            gaps: st.per_symbol[idx].clone(),
            generation: st.generation,
        }
    }
}

/// One symbol under one gap generation, for the duration of a query.
struct View<'a> {
    m: &'a Market,
    idx: usize,
    e: &'a Entry,
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
