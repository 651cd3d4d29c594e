//! `SeriesState`: warm-up length, warm == apply, replay, gaps, the report's shape.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use common::candles;
use klinebus_signals_core::{
    lookback, Action, Candle, Outcome, SeriesState, SignalReport, StrategyConfig, StrategyId,
};

mod common;

fn state() -> SeriesState {
    SeriesState::new(
        &StrategyConfig::default(),
        "BTCUSDT".parse().unwrap(),
        "1h".parse().unwrap(),
    )
}

fn report(o: &Outcome) -> &SignalReport {
    match o {
        Outcome::Signal(r) => r,
        other => panic!("expected a signal, got {other:?}"),
    }
}

#[test]
fn lookback_is_exact() {
    let cs = candles();
    let mut s = state();
    assert_eq!(s.lookback(), 79);
    assert_eq!(lookback(&StrategyConfig::default()), 79);
    for (i, c) in cs.iter().take(s.lookback()).enumerate() {
        let out = s.apply(c);
        if i + 1 < s.lookback() {
            match out {
                Outcome::InsufficientData { have, need, .. } => {
                    assert_eq!((have, need), (i + 1, 79));
                }
                other => panic!("candle {i}: {other:?}"),
            }
        } else {
            assert_eq!(report(&out).open_time, c.open_time());
        }
    }
    // A longer divergence window becomes the binding constraint.
    let mut cfg = StrategyConfig::default();
    cfg.strategies.rsi_divergence.lookback = 100;
    assert_eq!(lookback(&cfg), 115);
    let mut s = SeriesState::new(&cfg, "ETHUSDT".parse().unwrap(), "1h".parse().unwrap());
    let outs: Vec<_> = cs.iter().take(115).map(|c| s.apply(c)).collect();
    assert!(matches!(outs[113], Outcome::InsufficientData { .. }));
    assert!(matches!(outs[114], Outcome::Signal(_)));
}

#[test]
fn warm_equals_applying_one_by_one() {
    let cs = candles();
    for split in [10, 79, 300] {
        let mut a = state();
        let mut last = None;
        for c in &cs[..split] {
            last = Some(a.apply(c));
        }
        let mut b = state();
        let warm_last = b.warm(&cs[..split]);
        assert_eq!(a, b, "state after {split}");
        assert_eq!(last, warm_last, "last outcome after {split}");
        assert_eq!(a.apply(&cs[split]), b.apply(&cs[split]));
        assert_eq!(a, b);
    }
}

#[test]
fn replays_are_ignored_and_change_nothing() {
    let cs = candles();
    let mut s = state();
    s.warm(&cs[..200]);
    let before = s.clone();
    for c in [&cs[199], &cs[150], &cs[0]] {
        match s.apply(c) {
            Outcome::Replay {
                open_time,
                last_open_time,
            } => {
                assert_eq!(open_time, c.open_time());
                assert_eq!(last_open_time, cs[199].open_time());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s, before);
    }
    // A replay with different prices (a corrected candle) is still ignored.
    let c = &cs[199];
    let changed = Candle::new(
        c.open_time(),
        c.open(),
        c.high() * 2.0,
        c.low(),
        c.close(),
        1.0,
    );
    assert!(matches!(s.apply(&changed.unwrap()), Outcome::Replay { .. }));
    assert_eq!(s, before);
    // The next candle still gives the same report as an uninterrupted series.
    let mut fresh = state();
    fresh.warm(&cs[..200]);
    assert_eq!(s.apply(&cs[200]), fresh.apply(&cs[200]));
}

#[test]
fn a_gap_resets_and_rewarms() {
    let cs = candles();
    let mut s = state();
    s.warm(&cs[..200]);
    // Candle 200 goes missing.
    match s.apply(&cs[201]) {
        Outcome::InsufficientData { reason, have, need } => {
            assert!(reason.contains("gap"), "{reason}");
            assert!(
                reason.contains(&cs[200].open_time().to_string()),
                "{reason}"
            );
            assert_eq!((have, need), (1, 79));
        }
        other => panic!("{other:?}"),
    }
    // After the gap the series is exactly a fresh one started at candle 201.
    let mut fresh = state();
    fresh.apply(&cs[201]);
    assert_eq!(s, fresh);
    let outs: Vec<_> = cs[202..201 + 79].iter().map(|c| s.apply(c)).collect();
    assert!(outs[..77]
        .iter()
        .all(|o| matches!(o, Outcome::InsufficientData { .. })));
    assert!(matches!(outs[77], Outcome::Signal(_)));
    // A late arrival of the missing candle is now a replay.
    assert!(matches!(s.apply(&cs[200]), Outcome::Replay { .. }));
}

#[test]
fn report_shape_and_json() {
    let cs = candles();
    let mut s = state();
    let out = s.warm(&cs[..250]).unwrap();
    let r = report(&out);
    assert_eq!(r.strategies.len(), 10);
    assert_eq!(r.close_time, r.open_time + 3_600_000 - 1);
    assert!((0.0..=1.0).contains(&r.confidence));
    for st in &r.strategies {
        assert!((0.0..=1.0).contains(&st.strength), "{st:?}");
        assert!(!st.reason.is_empty());
    }
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(json["outcome"], "signal");
    assert_eq!(json["symbol"], "BTCUSDT");
    assert_eq!(json["interval"], "1h");
    assert!(["BUY", "SELL", "HOLD"].contains(&json["action"].as_str().unwrap()));
    assert!(["trending", "ranging"].contains(&json["regime"].as_str().unwrap()));
    assert_eq!(json["strategies"][0]["name"], "ema_rsi");
    assert!(json["indicators"]["ichimoku"]["cloud_b"].is_f64());
    let back: Outcome = serde_json::from_value(json).unwrap();
    assert_eq!(back, out);
    let insufficient = serde_json::to_value(state().apply(&cs[0])).unwrap();
    assert_eq!(insufficient["outcome"], "insufficient_data");
}

#[test]
fn every_strategy_fires_on_the_fixture_and_reports_are_sane() {
    let cs = candles();
    let mut s = state();
    let mut fired: HashMap<(StrategyId, Action), usize> = HashMap::new();
    let mut aggregate: HashMap<Action, usize> = HashMap::new();
    for c in &cs {
        if let Outcome::Signal(r) = s.apply(c) {
            *aggregate.entry(r.action).or_default() += 1;
            for st in &r.strategies {
                assert!(st.strength.is_finite());
                *fired.entry((st.name, st.action)).or_default() += 1;
            }
            let indicators = serde_json::to_string(&r.indicators).unwrap();
            assert!(!indicators.contains("null"), "{indicators}");
        }
    }
    let mut missing = Vec::new();
    for id in [
        StrategyId::EmaRsi,
        StrategyId::MacdCross,
        StrategyId::Momentum,
        StrategyId::BollingerReversion,
        StrategyId::BollingerBreakout,
        StrategyId::AtrBreakout,
        StrategyId::IchimokuTrend,
        StrategyId::IchimokuAdx,
        StrategyId::RsiDivergence,
        StrategyId::Stochastic,
    ] {
        if !fired.contains_key(&(id, Action::Buy)) && !fired.contains_key(&(id, Action::Sell)) {
            missing.push(id);
        }
    }
    eprintln!("fired: {fired:?}\naggregate: {aggregate:?}");
    assert!(missing.is_empty(), "never fired: {missing:?}");
    assert!(aggregate.get(&Action::Buy).copied().unwrap_or(0) > 0);
    assert!(aggregate.get(&Action::Sell).copied().unwrap_or(0) > 0);
    assert!(aggregate.get(&Action::Hold).copied().unwrap_or(0) > 0);
}

#[test]
fn candle_from_event() {
    use klinebus_schemas::{event::Source, Interval, KlineEvent, Venue};
    let mut e = KlineEvent {
        venue: Venue::binance(),
        symbol: "BTCUSDT".parse().unwrap(),
        interval: Interval::M1,
        open_time: 1_749_038_400_000,
        close_time: 1_749_038_459_999,
        open: "105312.44000000".into(),
        high: "105340.00000000".into(),
        low: "105298.10000000".into(),
        close: "105330.01000000".into(),
        volume: "8.41236000".into(),
        quote_volume: "885990.91189950".into(),
        trades: 1264,
        taker_buy_base: "4.56875000".into(),
        taker_buy_quote: "481181.37820313".into(),
        closed: true,
        event_time: 1_749_038_460_000,
        source: Source::Backfill,
        received_at: 1_749_038_460_120,
    };
    let c = Candle::from_event(&e).unwrap();
    assert_eq!(c.close(), 105_330.01);
    assert_eq!(c.open_time(), e.open_time);
    e.closed = false;
    assert!(Candle::from_event(&e).is_err());
    e.closed = true;
    e.low = "0".into();
    assert!(Candle::from_event(&e).is_err());
}
