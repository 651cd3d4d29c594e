//! A connection's kline subscriptions and the events they are due.

use crate::format::ws_event;
use crate::interval::{Interval, HOUR};
use crate::market::{Market, SymbolStatus};

/// Binance's cap on streams per connection.
pub(crate) const MAX_STREAMS: usize = 1024;
/// At most this many closed candles are replayed per stream per wake (a huge clock jump).
const MAX_CATCH_UP: usize = 10_000;

struct Target {
    idx: usize,
    symbol: String,
    interval: Interval,
    tz_ms: i64,
    /// Open time of the candle this stream is following (the forming one at the last poll).
    tracked: i64,
}

struct Sub {
    name: String,
    target: Option<Target>,
}

/// Subscriptions in subscription order. Names of unknown symbols or other stream types are kept
/// (LIST_SUBSCRIPTIONS shows them) but produce no events, as on Binance.
#[derive(Default)]
pub(crate) struct Subs {
    list: Vec<Sub>,
}

/// `<lowercase symbol>@kline_<interval>` with an optional `@+08:00` time-zone suffix.
fn parse(name: &str, market: &Market, now: i64) -> Option<Target> {
    let (sym, rest) = name.split_once("@kline_")?;
    if sym.is_empty() || sym.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let (iv, tz_ms) = match rest.split_once('@') {
        Some((iv, "+08:00")) => (iv, 8 * HOUR),
        Some(_) => return None,
        None => (rest, 0),
    };
    let interval = Interval::parse(iv)?;
    let symbol = sym.to_ascii_uppercase();
    let idx = market.index(&symbol)?;
    Some(Target {
        idx,
        symbol,
        interval,
        tz_ms,
        tracked: interval.open_of(now, tz_ms),
    })
}

impl Subs {
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Adds streams not yet subscribed; false (and nothing added) if the cap would be passed.
    pub fn subscribe(&mut self, names: &[String], market: &Market, now: i64) -> bool {
        let new: Vec<&String> = names
            .iter()
            .enumerate()
            .filter(|(i, n)| !names[..*i].contains(n) && !self.list.iter().any(|s| &s.name == *n))
            .map(|(_, n)| n)
            .collect();
        if self.list.len() + new.len() > MAX_STREAMS {
            return false;
        }
        for n in new {
            self.list.push(Sub {
                name: n.clone(),
                target: parse(n, market, now),
            });
        }
        true
    }

    pub fn unsubscribe(&mut self, names: &[String]) {
        self.list.retain(|s| !names.contains(&s.name));
    }

    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|s| s.name.clone()).collect()
    }

    /// Simulated time at which the earliest followed candle closes (its successor opens).
    pub fn next_close(&self) -> Option<i64> {
        self.list
            .iter()
            .filter_map(|s| s.target.as_ref())
            .map(|t| t.interval.next_open(t.tracked, t.tz_ms))
            .min()
    }

    /// Events due at simulated time `now`: the final (`x: true`) event of every candle that
    /// closed since the last poll, in order, then — if `updates` — the forming candle.
    pub fn poll(
        &mut self,
        market: &Market,
        now: i64,
        updates: bool,
        combined: bool,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for sub in &mut self.list {
            let Some(t) = sub.target.as_mut() else {
                continue;
            };
            let status = market.status_of(t.idx);
            if status == SymbolStatus::Delisted {
                continue; // a delisted symbol's streams go silent; the others carry on
            }
            let stream = combined.then_some(sub.name.as_str());
            let iv = t.interval;
            let current = iv.open_of(now, t.tz_ms);
            let mut replayed = 0;
            while t.tracked < current {
                if replayed < MAX_CATCH_UP {
                    if let Some(c) = market.candle(t.idx, iv, t.tz_ms, t.tracked, now) {
                        out.push(ws_event(&t.symbol, iv.as_str(), now, &c, stream));
                    }
                }
                replayed += 1;
                t.tracked = iv.next_open(t.tracked, t.tz_ms);
            }
            // Halted: no trades, so no forming candle to push. A coarser candle holding minutes
            // from before the halt is still closed (above) when its time is up.
            if updates && status == SymbolStatus::Trading {
                if let Some(c) = market.candle(t.idx, iv, t.tz_ms, current, now) {
                    out.push(ws_event(&t.symbol, iv.as_str(), now, &c, stream));
                }
            }
        }
        out
    }
}
