//! What to fetch: one [`SeriesPlan`] per (symbol, timeframe), with the window of open times.

use klinebus_schemas::{subjects, Interval, Source, Symbol, Venue};

const DAY_MS: i64 = 86_400_000;

/// How the window is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last N days (None: each timeframe's [`Interval::default_days`]).
    Days(Option<u32>),
    /// An explicit range; `to` defaults to now.
    Range {
        /// Start (ms).
        from_ms: i64,
        /// End, exclusive (ms).
        to_ms: Option<i64>,
    },
}

/// One series to backfill: candles whose open time lies in `[from_ms, to_ms)`, all closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesPlan {
    /// Symbol.
    pub symbol: Symbol,
    /// Timeframe.
    pub interval: Interval,
    /// First open time (aligned).
    pub from_ms: i64,
    /// Exclusive bound on open times; at most the open of the candle forming at plan time.
    pub to_ms: i64,
}

impl SeriesPlan {
    /// `klines.backfill.binance.<SYMBOL>.<tf>`
    pub fn subject(&self) -> String {
        subjects::kline(
            Source::Backfill,
            &Venue::binance(),
            &self.symbol,
            self.interval,
        )
    }

    /// Candles the window holds (before exchange gaps and listing).
    pub fn expected(&self) -> u64 {
        self.interval.count_between(self.from_ms, self.to_ms).max(0) as u64
    }
}

/// Every series of a run, with the exchange time they were planned at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Series in (symbol, timeframe) order.
    pub series: Vec<SeriesPlan>,
    /// The exchange's clock when planned: rows closing before it are final.
    pub server_now_ms: i64,
}

impl Plan {
    /// The plan for `symbols × intervals` over `window`, as of exchange time `server_now_ms`.
    /// The forming candle (open ≤ now < close) is never included.
    pub fn build(
        symbols: &[Symbol],
        intervals: &[Interval],
        window: Window,
        server_now_ms: i64,
    ) -> Self {
        let mut series = Vec::new();
        for symbol in symbols {
            for &interval in intervals {
                let forming = interval.align(server_now_ms);
                let (from_ms, to_ms) = match window {
                    Window::Days(days) => {
                        let d = i64::from(days.unwrap_or(interval.default_days()));
                        (interval.align(server_now_ms - d * DAY_MS), forming)
                    }
                    Window::Range { from_ms, to_ms } => (
                        interval.align_up(from_ms),
                        to_ms.map_or(forming, |t| t.min(forming)),
                    ),
                };
                series.push(SeriesPlan {
                    symbol: symbol.clone(),
                    interval,
                    from_ms,
                    to_ms: to_ms.max(from_ms),
                });
            }
        }
        Self {
            series,
            server_now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: i64 = 1_749_038_790_123; // 2025-06-04T12:06:30.123Z

    #[test]
    fn windows_exclude_the_forming_candle() {
        let s: Symbol = "BTCUSDT".parse().unwrap();
        let p = Plan::build(
            std::slice::from_ref(&s),
            &[Interval::M1, Interval::H1],
            Window::Days(None),
            NOW,
        );
        assert_eq!(p.series.len(), 2);
        let m1 = &p.series[0];
        assert_eq!(m1.to_ms, 1_749_038_760_000);
        assert_eq!(m1.from_ms, Interval::M1.align(NOW - 7 * DAY_MS));
        assert_eq!(m1.expected(), 7 * 1440);
        assert_eq!(m1.subject(), "klines.backfill.binance.BTCUSDT.1m");
        let p = Plan::build(
            &[s],
            &[Interval::H1],
            Window::Range {
                from_ms: 1_749_038_400_001,
                to_ms: Some(1_749_060_000_000),
            },
            NOW,
        );
        // From is rounded up to the next open; to is capped at the forming candle.
        assert_eq!(p.series[0].from_ms, 1_749_042_000_000);
        assert_eq!(p.series[0].to_ms, 1_749_042_000_000);
        assert_eq!(p.series[0].expected(), 0);
    }
}
