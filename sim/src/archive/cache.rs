//! Built files by key, least recently used evicted past a byte budget. Concurrent requests for
//! the same file wait for one build instead of each building it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

type Cell<V> = OnceLock<Result<Arc<V>, String>>;

struct Slot<V> {
    cell: Arc<Cell<V>>,
    used: u64,
    size: usize,
}

struct Inner<K, V> {
    map: HashMap<K, Slot<V>>,
    bytes: usize,
    tick: u64,
    hits: u64,
}

/// Counters of a [`Lru`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LruStats {
    pub entries: usize,
    pub bytes: usize,
    pub hits: u64,
}

pub(crate) struct Lru<K, V> {
    limit: usize,
    inner: Mutex<Inner<K, V>>,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                bytes: 0,
                tick: 0,
                hits: 0,
            }),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The cached value, if built.
    pub fn peek(&self, key: &K) -> Option<Arc<V>> {
        let mut g = self.inner.lock();
        g.tick += 1;
        let tick = g.tick;
        let v = g.map.get_mut(key).and_then(|s| {
            s.used = tick;
            s.cell.get().and_then(|r| r.as_ref().ok()).cloned()
        });
        if v.is_some() {
            g.hits += 1;
        }
        v
    }

    /// The value of `key`, built by `build` (blocking; run off the async workers) when absent.
    /// `build` returns the value, its size in bytes, and whether it may be kept. A failed build
    /// is not kept: the next request tries again.
    pub fn get_or_build(
        &self,
        key: &K,
        build: impl FnOnce() -> Result<(V, usize, bool), String>,
    ) -> Result<Arc<V>, String> {
        let cell = {
            let mut g = self.inner.lock();
            g.tick += 1;
            let tick = g.tick;
            let slot = g.map.entry(key.clone()).or_insert_with(|| Slot {
                cell: Arc::new(OnceLock::new()),
                used: tick,
                size: 0,
            });
            slot.used = tick;
            if let Some(v) = slot.cell.get() {
                let v = v.clone();
                g.hits += 1;
                return v;
            }
            slot.cell.clone()
        };
        let mut outcome = None;
        // Others asking for the same key wait here for this build (OnceLock blocks them).
        let v = cell
            .get_or_init(|| match build() {
                Ok((v, size, keep)) => {
                    outcome = Some((size, keep));
                    Ok(Arc::new(v))
                }
                Err(e) => {
                    outcome = Some((0, false));
                    Err(e)
                }
            })
            .clone();
        if let Some((size, keep)) = outcome {
            let mut g = self.inner.lock();
            if g.map.get(key).is_some_and(|s| Arc::ptr_eq(&s.cell, &cell)) {
                if keep && size <= self.limit {
                    if let Some(s) = g.map.get_mut(key) {
                        s.size = size;
                    }
                    g.bytes += size;
                    Self::evict(&mut g, self.limit, key);
                } else {
                    g.map.remove(key);
                }
            }
        }
        v
    }

    fn evict(g: &mut Inner<K, V>, limit: usize, keep: &K) {
        while g.bytes > limit {
            let victim = g
                .map
                .iter()
                .filter(|(k, s)| *k != keep && s.size > 0)
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone());
            match victim.and_then(|k| g.map.remove(&k)) {
                Some(s) => g.bytes -= s.size,
                None => break,
            }
        }
    }

    pub fn stats(&self) -> LruStats {
        let g = self.inner.lock();
        LruStats {
            entries: g.map.values().filter(|s| s.size > 0).count(),
            bytes: g.bytes,
            hits: g.hits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_past_the_budget() {
        let c: Lru<u32, Vec<u8>> = Lru::new(10);
        let put = |k: u32, n: usize| c.get_or_build(&k, || Ok((vec![0; n], n, true)));
        assert!(put(1, 4).is_ok() && put(2, 4).is_ok());
        assert!(c.peek(&1).is_some()); // 1 is now newer than 2
        assert!(put(3, 4).is_ok());
        assert!(c.peek(&2).is_none() && c.peek(&1).is_some() && c.peek(&3).is_some());
        assert!(put(4, 11).is_ok()); // too big to keep, served anyway
        assert!(c.peek(&4).is_none());
        assert!(c.get_or_build(&5, || Err("no".into())).is_err());
        assert!(put(5, 1).is_ok());
        let s = c.stats();
        assert_eq!((s.entries, s.bytes), (3, 9));
    }
}
