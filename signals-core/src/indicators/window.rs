//! The small windows the indicators share: a fixed-size ring and a rolling max/min.

use std::collections::VecDeque;

/// The last `capacity` values, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Ring<T> {
    buf: VecDeque<T>,
    capacity: usize,
}

impl<T> Ring<T> {
    /// An empty ring holding at most `capacity` (at least 1) values.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            buf: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Appends a value and returns the one that fell out, if the ring was full.
    pub fn push(&mut self, value: T) -> Option<T> {
        let evicted = if self.buf.len() == self.capacity {
            self.buf.pop_front()
        } else {
            None
        };
        self.buf.push_back(value);
        evicted
    }

    /// True when it holds `capacity` values.
    pub fn is_full(&self) -> bool {
        self.buf.len() == self.capacity
    }

    /// Maximum number of values held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The oldest value.
    pub fn oldest(&self) -> Option<&T> {
        self.buf.front()
    }

    /// Values, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.buf.iter()
    }

    /// Empties the ring.
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// Which extreme a [`RollingExtremum`] tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extreme {
    /// The largest value.
    Max,
    /// The smallest value.
    Min,
}

/// Max or min of the last `window` values in O(1) amortised per push (a monotonic deque),
/// with a payload carried along (e.g. the RSI at the bar that made the low).
///
/// On ties the newest value wins, so the payload is the most recent bar's.
#[derive(Debug, Clone, PartialEq)]
pub struct RollingExtremum<P> {
    window: u64,
    extreme: Extreme,
    pushed: u64,
    deque: VecDeque<(u64, f64, P)>,
}

impl<P: Copy> RollingExtremum<P> {
    /// An empty window of `window` (at least 1) values.
    pub fn new(window: usize, extreme: Extreme) -> Self {
        Self {
            window: window.max(1) as u64,
            extreme,
            pushed: 0,
            deque: VecDeque::new(),
        }
    }

    /// Adds the newest value.
    pub fn push(&mut self, value: f64, payload: P) {
        while let Some(&(_, back, _)) = self.deque.back() {
            let dominated = match self.extreme {
                Extreme::Max => back <= value,
                Extreme::Min => back >= value,
            };
            if !dominated {
                break;
            }
            self.deque.pop_back();
        }
        self.deque.push_back((self.pushed, value, payload));
        self.pushed += 1;
        let oldest_kept = self.pushed.saturating_sub(self.window);
        while self.deque.front().is_some_and(|f| f.0 < oldest_kept) {
            self.deque.pop_front();
        }
    }

    /// The extreme and its payload once `window` values have been pushed; `None` before.
    pub fn get(&self) -> Option<(f64, P)> {
        if self.pushed < self.window {
            return None;
        }
        self.deque.front().map(|&(_, v, p)| (v, p))
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.pushed = 0;
        self.deque.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn extremum_matches_brute_force() {
        let xs: Vec<f64> = (0..200)
            .map(|i| ((i * 37 % 101) as f64).sin() * 10.0 + (i % 7) as f64)
            .collect();
        for w in [1, 2, 5, 14, 52] {
            let mut max = RollingExtremum::new(w, Extreme::Max);
            let mut min = RollingExtremum::new(w, Extreme::Min);
            for (i, &x) in xs.iter().enumerate() {
                max.push(x, i);
                min.push(x, i);
                if i + 1 < w {
                    assert_eq!(max.get(), None);
                    continue;
                }
                let win = &xs[i + 1 - w..=i];
                let m = win.iter().copied().fold(f64::MIN, f64::max);
                let n = win.iter().copied().fold(f64::MAX, f64::min);
                assert_eq!(max.get().unwrap().0, m);
                assert_eq!(min.get().unwrap().0, n);
                assert_eq!(xs[max.get().unwrap().1], m);
            }
        }
    }

    #[test]
    fn ring_evicts_oldest() {
        let mut r = Ring::new(3);
        assert_eq!(r.push(1), None);
        r.push(2);
        r.push(3);
        assert!(r.is_full());
        assert_eq!(r.push(4), Some(1));
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [2, 3, 4]);
    }
}
