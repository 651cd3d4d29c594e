//! The last closed candle seen per series, whichever path delivered it, and closed candles lost
//! locally (dropped from a full publish buffer): together, where gap repair and polling start.

use std::collections::HashMap;

use klinebus_schemas::{Interval, Symbol};
use parking_lot::Mutex;

type Key = (Symbol, Interval);

#[derive(Debug, Default)]
struct Inner {
    /// Open time of the newest closed candle handed to the publisher.
    last: HashMap<Key, i64>,
    /// Open time of the oldest closed candle dropped since the last repair started. Kept apart
    /// from `last`, which newer candles keep moving forward.
    lost: HashMap<Key, i64>,
}

/// Per-series positions, shared by feeds, pollers and the publisher.
#[derive(Debug, Default)]
pub struct Tracker(Mutex<Inner>);

impl Tracker {
    /// Records a closed candle; the newest wins.
    pub fn observe(&self, symbol: &Symbol, interval: Interval, open_time: i64) {
        let mut m = self.0.lock();
        let e = m
            .last
            .entry((symbol.clone(), interval))
            .or_insert(open_time);
        *e = (*e).max(open_time);
    }

    /// Records that the closed candle opening at `open_time` was lost locally: the next
    /// [`repair_start`](Self::repair_start) goes back to it.
    pub fn lost(&self, symbol: &Symbol, interval: Interval, open_time: i64) {
        let mut m = self.0.lock();
        let e = m
            .lost
            .entry((symbol.clone(), interval))
            .or_insert(open_time);
        *e = (*e).min(open_time);
    }

    /// Open time of the newest closed candle seen.
    pub fn last_closed(&self, symbol: &Symbol, interval: Interval) -> Option<i64> {
        self.0.lock().last.get(&(symbol.clone(), interval)).copied()
    }

    /// Where a repair or poll should start: the open time of the candle *before* the first one
    /// wanted (`None`: nothing known). Consumes the lost-candle mark, which the caller now owns.
    pub fn repair_start(&self, symbol: &Symbol, interval: Interval) -> Option<i64> {
        let key = (symbol.clone(), interval);
        let mut m = self.0.lock();
        let last = m.last.get(&key).copied();
        match m.lost.remove(&key) {
            Some(lost) => {
                let before = interval.align(lost - 1);
                Some(last.map_or(before, |l| l.min(before)))
            }
            None => last,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lost_candles_survive_newer_ones() {
        let t = Tracker::default();
        let s: Symbol = "BTCUSDT".parse().unwrap();
        let m = 60_000;
        assert_eq!(t.repair_start(&s, Interval::M1), None);
        t.observe(&s, Interval::M1, 10 * m);
        t.lost(&s, Interval::M1, 8 * m);
        t.lost(&s, Interval::M1, 9 * m);
        t.observe(&s, Interval::M1, 12 * m);
        t.observe(&s, Interval::M1, 11 * m);
        assert_eq!(t.last_closed(&s, Interval::M1), Some(12 * m));
        assert_eq!(t.repair_start(&s, Interval::M1), Some(7 * m));
        assert_eq!(
            t.repair_start(&s, Interval::M1),
            Some(12 * m),
            "mark consumed"
        );
    }
}
