//! Which version of a candle wins — inside a batch here, and in the database with the same rule
//! (`upsert.rs`), so the stored result does not depend on delivery order:
//!
//! 1. a closed candle beats an unclosed (forming) one, whatever the event times;
//! 2. between versions of the same closedness, only a strictly newer `event_time` wins;
//!    on a tie the one already there (delivered first) stays.
//!
//! A backfilled closed candle (`event_time = close_time + 1`) and the live closed one
//! (`event_time` a few ms later, identical values) therefore converge on the live one whichever
//! arrives first.

use std::cmp::Ordering;

use klinebus_schemas::KlineEvent;

/// True if `new` should replace `old` (same key).
pub fn replaces(new: &KlineEvent, old: &KlineEvent) -> bool {
    (new.closed && !old.closed) || (new.closed == old.closed && new.event_time > old.event_time)
}

/// The table key order: symbol, timeframe, open time.
pub fn key_cmp(a: &KlineEvent, b: &KlineEvent) -> Ordering {
    a.symbol
        .as_str()
        .cmp(b.symbol.as_str())
        .then_with(|| a.interval.as_str().cmp(b.interval.as_str()))
        .then_with(|| a.open_time.cmp(&b.open_time))
}

/// One winner per key, in key order (a fixed lock order, so concurrent instances cannot
/// deadlock). Events are given in delivery order.
pub fn winners<'a, I>(events: I) -> Vec<&'a KlineEvent>
where
    I: IntoIterator<Item = &'a KlineEvent>,
{
    let mut all: Vec<&KlineEvent> = events.into_iter().collect();
    // Stable: versions of one key stay in delivery order.
    all.sort_by(|a, b| key_cmp(a, b));
    let mut out: Vec<&KlineEvent> = Vec::with_capacity(all.len());
    for e in all {
        match out.last_mut() {
            Some(last) if key_cmp(last, e) == Ordering::Equal => {
                if replaces(e, last) {
                    *last = e;
                }
            }
            _ => out.push(e),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use klinebus_schemas::{Interval, Source, Venue};

    /// A valid 1m candle of `symbol` opening `minute` minutes after a fixed start.
    pub(crate) fn candle(
        symbol: &str,
        minute: i64,
        closed: bool,
        event_time_offset: i64,
    ) -> KlineEvent {
        let open_time = 1_749_038_400_000 + minute * 60_000;
        KlineEvent {
            venue: Venue::binance(),
            symbol: symbol.parse().unwrap(),
            interval: Interval::M1,
            open_time,
            close_time: open_time + 59_999,
            open: "100.00000000".into(),
            high: "110.00000000".into(),
            low: "90.00000000".into(),
            close: format!("{}.00000000", 100 + event_time_offset.rem_euclid(10)),
            volume: "10.00000000".into(),
            quote_volume: "1000.00000000".into(),
            taker_buy_base: "5.00000000".into(),
            taker_buy_quote: "500.00000000".into(),
            trades: 7,
            closed,
            event_time: open_time + 1_000 + event_time_offset,
            source: Source::Ws,
            received_at: open_time + 1_100 + event_time_offset,
        }
    }

    #[test]
    fn closed_beats_unclosed_whatever_the_times() {
        let forming_late = candle("BTCUSDT", 0, false, 90_000);
        let closed = candle("BTCUSDT", 0, true, 59_000);
        assert!(replaces(&closed, &forming_late));
        assert!(!replaces(&forming_late, &closed));
        for order in [vec![&forming_late, &closed], vec![&closed, &forming_late]] {
            let w = winners(order);
            assert_eq!(w, vec![&closed]);
        }
    }

    #[test]
    fn strictly_newer_event_time_wins_and_ties_keep_the_first() {
        let a = candle("BTCUSDT", 0, false, 1);
        let b = candle("BTCUSDT", 0, false, 2);
        assert_eq!(winners([&b, &a]), vec![&b]);
        assert_eq!(winners([&a, &b]), vec![&b]);
        let mut twin = a.clone();
        twin.source = Source::Poll;
        assert!(!replaces(&twin, &a));
        assert_eq!(winners([&a, &twin])[0].source, Source::Ws);
        assert_eq!(winners([&twin, &a])[0].source, Source::Poll);
    }

    #[test]
    fn backfill_and_live_closed_converge() {
        let mut backfill = candle("BTCUSDT", 0, true, 0);
        backfill.event_time = backfill.close_time + 1;
        backfill.source = Source::Backfill;
        let mut live = backfill.clone();
        live.event_time += 7;
        live.source = Source::Ws;
        assert_eq!(winners([&backfill, &live]), vec![&live]);
        assert_eq!(winners([&live, &backfill]), vec![&live]);
    }

    #[test]
    fn duplicates_collapse_and_output_is_key_ordered() {
        let e1 = candle("ETHUSDT", 1, true, 0);
        let e0 = candle("ETHUSDT", 0, true, 0);
        let b5 = candle("BTCUSDT", 5, false, 3);
        let w = winners([&e1, &b5, &e0, &e1, &b5, &e1]);
        assert_eq!(w, vec![&b5, &e0, &e1]);
        let mut h1 = candle("BTCUSDT", 0, true, 0);
        h1.interval = klinebus_schemas::Interval::H1;
        let m1 = candle("BTCUSDT", 0, true, 0);
        // Same open time, different interval: different keys.
        assert_eq!(winners([&h1, &m1]).len(), 2);
        assert!(winners(std::iter::empty()).is_empty());
    }
}
