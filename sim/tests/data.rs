//! The data model: determinism, exact aggregation across intervals, calendar alignment,
//! listing dates and gaps — checked through the public `Market` API with test-side arithmetic.
#![allow(clippy::unwrap_used)]

mod common;

use binance_sim::{Gap, Kline, Market};
use common::units;

const NOW: i64 = 1_749_038_784_000; // 2025-06-04T12:06:24Z
const DAY: i64 = 86_400_000;

fn market(seed: u64) -> Market {
    let names: Vec<String> = ["BTCUSDT", "ETHUSDT", "DOGEUSDT", "XRPUSDT", "NEWCOINUSDT"]
        .map(String::from)
        .into();
    Market::new(seed, &names, None)
}

/// Aggregate of consecutive klines, as integers: (o, h, l, c, v, q, n, V, Q, f, L).
fn aggregate(ks: &[Kline]) -> [u128; 11] {
    let first = &ks[0];
    let last = ks.last().unwrap();
    let sum = |f: fn(&Kline) -> &String| ks.iter().map(|k| units(f(k))).sum::<u128>();
    [
        units(&first.open),
        ks.iter().map(|k| units(&k.high)).max().unwrap(),
        ks.iter().map(|k| units(&k.low)).min().unwrap(),
        units(&last.close),
        sum(|k| &k.volume),
        sum(|k| &k.quote_volume),
        ks.iter().map(|k| u128::from(k.trades)).sum(),
        sum(|k| &k.taker_buy_base),
        sum(|k| &k.taker_buy_quote),
        first.first_trade_id as u128,
        last.last_trade_id as u128,
    ]
}

fn figures(k: &Kline) -> [u128; 11] {
    aggregate(std::slice::from_ref(k))
}

#[test]
fn same_seed_same_candles_other_seed_other_candles() {
    let (a, b, c) = (market(42), market(42), market(43));
    for iv in ["1s", "1m", "1h", "1d"] {
        let x = a.klines("BTCUSDT", iv, NOW - 3 * DAY, NOW, NOW).unwrap();
        assert_eq!(x, b.klines("BTCUSDT", iv, NOW - 3 * DAY, NOW, NOW).unwrap());
        assert_ne!(x, c.klines("BTCUSDT", iv, NOW - 3 * DAY, NOW, NOW).unwrap());
    }
}

#[test]
fn coarse_candles_are_exact_aggregates_of_their_minutes() {
    let m = market(7);
    let start = 1_748_736_000_000 - 7 * DAY; // late May 2025: spans a week and a month boundary
    let end = NOW;
    for sym in ["BTCUSDT", "DOGEUSDT", "XRPUSDT"] {
        let minutes = m.klines(sym, "1m", start, end, NOW).unwrap();
        for iv in [
            "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M",
        ] {
            let coarse = m.klines(sym, iv, start, end, NOW).unwrap();
            assert!(!coarse.is_empty(), "{sym} {iv}");
            for k in &coarse {
                let parts: Vec<Kline> = minutes
                    .iter()
                    .filter(|x| x.open_time >= k.open_time && x.open_time <= k.close_time)
                    .cloned()
                    .collect();
                if k.open_time < start {
                    continue; // its first minutes lie outside the fetched range
                }
                assert_eq!(figures(k), aggregate(&parts), "{sym} {iv} {}", k.open_time);
                assert_eq!(k.closed, k.close_time < NOW);
            }
        }
    }
}

#[test]
fn minutes_are_exact_aggregates_of_their_seconds() {
    let m = market(7);
    for sym in ["ETHUSDT", "DOGEUSDT"] {
        let t = NOW - 10 * 60_000;
        for k in m.klines(sym, "1m", t, NOW, NOW).unwrap() {
            let secs = m.klines(sym, "1s", k.open_time, k.close_time, NOW).unwrap();
            assert_eq!(figures(&k), aggregate(&secs), "{sym} {}", k.open_time);
            if k.closed {
                assert_eq!(secs.len(), 60);
            } else {
                // The forming minute is its seconds so far, up to the one containing now.
                assert_eq!(secs.len() as i64, (NOW - k.open_time) / 1000 + 1);
            }
        }
    }
}

#[test]
fn calendar_alignment() {
    let m = market(1);
    let weeks = m.klines("BTCUSDT", "1w", NOW - 60 * DAY, NOW, NOW).unwrap();
    for w in &weeks {
        // 1970-01-01 was a Thursday: Mondays are 4 days after a multiple of 7.
        assert_eq!(w.open_time.rem_euclid(7 * DAY), 4 * DAY);
        assert_eq!(w.close_time - w.open_time + 1, 7 * DAY);
    }
    let months = m
        .klines("BTCUSDT", "1M", NOW - 400 * DAY, NOW, NOW)
        .unwrap();
    for mo in &months {
        let d = chrono::DateTime::from_timestamp_millis(mo.open_time).unwrap();
        assert_eq!(d.format("%d %H:%M:%S%.3f").to_string(), "01 00:00:00.000");
        let next = chrono::DateTime::from_timestamp_millis(mo.close_time + 1).unwrap();
        assert_eq!(next.format("%d").to_string(), "01");
    }
    assert_eq!(months.len(), 14);
    let three = m.klines("BTCUSDT", "3d", NOW - 30 * DAY, NOW, NOW).unwrap();
    assert!(three.iter().all(|k| k.open_time % (3 * DAY) == 0));
}

#[test]
fn nothing_before_listing() {
    let m = market(1);
    let generic_listing: i64 = 1_577_836_800_000; // generic symbols list on 2020-01-01
    let before = m
        .klines("NEWCOINUSDT", "1m", 0, generic_listing - 1, NOW)
        .unwrap();
    assert!(before.is_empty());
    let first = m
        .klines("NEWCOINUSDT", "1m", 0, generic_listing, NOW)
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].open_time, generic_listing);
    assert_eq!(first[0].first_trade_id, 0);
    let month = m
        .klines(
            "NEWCOINUSDT",
            "1M",
            generic_listing - 40 * DAY,
            generic_listing,
            NOW,
        )
        .unwrap();
    assert_eq!(month.len(), 1);
    let overridden = Market::new(1, &["BTCUSDT".into()], Some(NOW - DAY));
    assert!(overridden
        .klines("BTCUSDT", "1d", 0, NOW - 2 * DAY, NOW)
        .unwrap()
        .is_empty());
    assert!(m
        .klines("BTCUSDT", "1m", NOW + 60_000, NOW + DAY, NOW)
        .unwrap()
        .is_empty());
}

#[test]
fn gaps_remove_candles_everywhere() {
    let m = market(3);
    let h = NOW - NOW % 3_600_000 - 3 * 3_600_000; // three hours before the current hour
    let before = m
        .klines("ETHUSDT", "1h", h - 3_600_000, h + 3_600_000, NOW)
        .unwrap();
    assert_eq!(before.len(), 3);
    // A whole hour missing, and 30 minutes of the next one.
    let gap = Gap {
        symbol: Some("ETHUSDT".into()),
        start_ms: h,
        end_ms: h + 90 * 60_000,
    };
    m.add_gap(gap.clone());
    let mins = m
        .klines("ETHUSDT", "1m", h - 60_000, h + 2 * 3_600_000, NOW)
        .unwrap();
    assert!(mins
        .iter()
        .all(|k| k.open_time < h || k.open_time >= h + 90 * 60_000));
    let hours = m
        .klines("ETHUSDT", "1h", h - 3_600_000, h + 3_600_000, NOW)
        .unwrap();
    assert_eq!(
        hours.iter().map(|k| k.open_time).collect::<Vec<_>>(),
        [h - 3_600_000, h + 3_600_000]
    );
    let partial: Vec<Kline> = mins
        .iter()
        .filter(|k| k.open_time >= h + 3_600_000 && k.open_time < h + 7_200_000)
        .cloned()
        .collect();
    assert_eq!(partial.len(), 30);
    assert_eq!(figures(&hours[1]), aggregate(&partial));
    assert!(m
        .klines("ETHUSDT", "1s", h, h + 60_000, NOW)
        .unwrap()
        .is_empty());
    // Other symbols are untouched; an all-symbol gap hits them too.
    assert_eq!(m.klines("BTCUSDT", "1h", h, h, NOW).unwrap().len(), 1);
    m.add_gap(Gap {
        symbol: None,
        start_ms: h,
        end_ms: h + 3_600_000,
    });
    assert!(m.klines("BTCUSDT", "1h", h, h, NOW).unwrap().is_empty());
    // Removing restores the original candles exactly (caches follow gap changes).
    m.clear_gaps();
    assert_eq!(
        m.klines("ETHUSDT", "1h", h - 3_600_000, h + 3_600_000, NOW)
            .unwrap(),
        before
    );
    assert!(!m.remove_gap(&gap));
}

#[test]
fn coarse_pages_are_cheap_after_first_touch() {
    let m = market(5);
    let from = NOW - 1000 * DAY / 24; // ~1000 hours
    let t = std::time::Instant::now();
    let cold = m.klines("BTCUSDT", "1h", from, NOW, NOW).unwrap();
    let cold_t = t.elapsed();
    let t = std::time::Instant::now();
    let warm = m.klines("BTCUSDT", "1h", from, NOW, NOW).unwrap();
    let warm_t = t.elapsed();
    assert_eq!(cold, warm);
    assert!(warm_t * 5 < cold_t, "cold {cold_t:?}, warm {warm_t:?}");
}
