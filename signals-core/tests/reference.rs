//! Every indicator against values computed independently by TA-Lib (and `ta` for Ichimoku)
//! over the committed 600-candle fixture; see `tests/fixtures/make_reference.py` for how
//! they were produced and which conventions differ.

#![allow(clippy::unwrap_used)]

use common::candles;
use klinebus_signals_core::indicators::{
    Adx, Atr, Bollinger, Ema, Ichimoku, IchimokuConfig, Keltner, Macd, Rsi, Sma, Stochastic,
};
use klinebus_signals_core::Candle;
use serde_json::Value;

mod common;

/// Relative tolerance (absolute below magnitude 1).
const TOL: f64 = 1e-9;

fn reference() -> Value {
    serde_json::from_str(include_str!("fixtures/reference.json")).unwrap()
}

fn series(v: &Value, path: &[&str]) -> Vec<Option<f64>> {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_array()
        .unwrap_or_else(|| panic!("no series {path:?}"))
        .iter()
        .map(Value::as_f64)
        .collect()
}

/// Compares from index `from` on: both absent, or both present and within tolerance. With
/// `from = 0` this also checks that the warm-up length matches the reference exactly.
fn check(name: &str, got: &[Option<f64>], want: &[Option<f64>], from: usize) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let mut compared = 0;
    for i in from..got.len() {
        match (got[i], want[i]) {
            (None, None) => {}
            (Some(g), Some(w)) => {
                let err = (g - w).abs() / w.abs().max(1.0);
                assert!(
                    err <= TOL,
                    "{name}[{i}]: got {g}, reference {w} (err {err:e})"
                );
                compared += 1;
            }
            (g, w) => panic!("{name}[{i}]: got {g:?}, reference {w:?}"),
        }
    }
    // Guard against passing vacuously.
    assert!(compared >= 200, "{name}: only {compared} values compared");
}

/// First index with a value.
fn first(xs: &[Option<f64>]) -> Option<usize> {
    xs.iter().position(Option::is_some)
}

#[test]
fn ema_and_sma() {
    let (cs, r) = (candles(), reference());
    for (period, key) in [(9, "ema9"), (21, "ema21")] {
        let mut ema = Ema::new(period);
        let got: Vec<_> = cs.iter().map(|c| ema.update(c.close()).unwrap()).collect();
        check(key, &got, &series(&r, &[key]), 0);
    }
    let mut sma = Sma::new(20);
    let got: Vec<_> = cs.iter().map(|c| sma.update(c.close()).unwrap()).collect();
    check("sma20", &got, &series(&r, &["sma20"]), 0);
    let mut vol = Sma::new(20);
    let got: Vec<_> = cs.iter().map(|c| vol.update(c.volume()).unwrap()).collect();
    check("volume_sma20", &got, &series(&r, &["volume_sma20"]), 0);
}

#[test]
fn rsi() {
    let (cs, r) = (candles(), reference());
    let mut rsi = Rsi::new(14);
    let got: Vec<_> = cs.iter().map(|c| rsi.update(c.close()).unwrap()).collect();
    check("rsi14", &got, &series(&r, &["rsi14"]), 0);
}

#[test]
fn macd() {
    let (cs, r) = (candles(), reference());
    let mut m = Macd::new(12, 26, 9);
    let mut line = Vec::new();
    let mut vals = Vec::new();
    for c in &cs {
        let v = m.update(c.close()).unwrap();
        line.push(m.line());
        vals.push(v);
    }
    let part = |f: fn(&klinebus_signals_core::indicators::MacdValue) -> f64| -> Vec<Option<f64>> {
        vals.iter().map(|v| v.as_ref().map(f)).collect()
    };
    // Exact: the same construction from TA-Lib's EMA.
    check(
        "macd line",
        &line,
        &series(&r, &["macd_from_emas", "line"]),
        0,
    );
    let signal = part(|v| v.signal);
    let hist = part(|v| v.histogram);
    check(
        "macd signal",
        &signal,
        &series(&r, &["macd_from_emas", "signal"]),
        0,
    );
    check(
        "macd hist",
        &hist,
        &series(&r, &["macd_from_emas", "hist"]),
        0,
    );
    // TA-Lib's MACD function: same first output, different fast-EMA seed; equal once decayed.
    let talib_signal = series(&r, &["macd_talib", "signal"]);
    assert_eq!(first(&signal), first(&talib_signal));
    check(
        "MACD line",
        &part(|v| v.line),
        &series(&r, &["macd_talib", "line"]),
        200,
    );
    check("MACD signal", &signal, &talib_signal, 200);
    check(
        "MACD hist",
        &hist,
        &series(&r, &["macd_talib", "hist"]),
        200,
    );
}

#[test]
fn bollinger() {
    let (cs, r) = (candles(), reference());
    let mut b = Bollinger::new(20, 2.0);
    let vals: Vec<_> = cs.iter().map(|c| b.update(c.close()).unwrap()).collect();
    for (key, f) in [
        (
            "upper",
            (|v| v.upper) as fn(&klinebus_signals_core::indicators::BollingerValue) -> f64,
        ),
        ("middle", |v| v.middle),
        ("lower", |v| v.lower),
    ] {
        let got: Vec<_> = vals.iter().map(|v| v.as_ref().map(f)).collect();
        check(key, &got, &series(&r, &["bbands20_2", key]), 0);
    }
}

#[test]
fn atr() {
    let (cs, r) = (candles(), reference());
    let mut a = Atr::new(14);
    let got: Vec<_> = cs.iter().map(|c| a.update(c)).collect();
    check("atr14", &got, &series(&r, &["atr14"]), 0);
}

#[test]
fn stochastic() {
    let (cs, r) = (candles(), reference());
    let mut s = Stochastic::new(14, 3, 3);
    let vals: Vec<_> = cs.iter().map(|c| s.update(c)).collect();
    let k: Vec<_> = vals.iter().map(|v| v.map(|v| v.k)).collect();
    let d: Vec<_> = vals.iter().map(|v| v.map(|v| v.d)).collect();
    check("%K", &k, &series(&r, &["stoch14_3_3", "k"]), 0);
    check("%D", &d, &series(&r, &["stoch14_3_3", "d"]), 0);
}

#[test]
fn adx() {
    let (cs, r) = (candles(), reference());
    let mut a = Adx::new(14);
    let mut di = Vec::new();
    let vals: Vec<_> = cs
        .iter()
        .map(|c| {
            let v = a.update(c);
            di.push(a.di());
            v
        })
        .collect();
    let adx: Vec<_> = vals.iter().map(|v| v.map(|v| v.adx)).collect();
    let plus: Vec<_> = di.iter().map(|v| v.map(|v| v.0)).collect();
    let minus: Vec<_> = di.iter().map(|v| v.map(|v| v.1)).collect();
    let (radx, rplus, rminus) = (
        series(&r, &["adx14", "adx"]),
        series(&r, &["adx14", "plus_di"]),
        series(&r, &["adx14", "minus_di"]),
    );
    // Same warm-up lengths as TA-Lib...
    assert_eq!(first(&adx), first(&radx));
    assert_eq!(first(&plus), first(&rplus));
    // ...different seed (Wilder's sum of `period` values vs TA-Lib's `period − 1`): compare
    // once the seed's weight (13/14)^n is far below the tolerance.
    check("ADX", &adx, &radx, 350);
    check("+DI", &plus, &rplus, 350);
    check("-DI", &minus, &rminus, 350);
    // And the early values really do differ, as documented (else the note would be stale).
    let (g, w) = (plus[14].unwrap(), rplus[14].unwrap());
    assert!((g - w).abs() > 1e-3, "+DI[14] {g} vs {w}");
}

#[test]
fn ichimoku() {
    let (cs, r) = (candles(), reference());
    let mut ich = Ichimoku::new(IchimokuConfig::default());
    let mut parts = Vec::new();
    let mut full = Vec::new();
    for c in &cs {
        full.push(ich.update(c));
        parts.push(ich.partial());
    }
    let col =
        |f: fn(&klinebus_signals_core::indicators::IchimokuPartial) -> Option<f64>| -> Vec<_> {
            parts.iter().map(f).collect()
        };
    let key = |k: &str| series(&r, &["ichimoku", k]);
    check("tenkan", &col(|p| p.tenkan), &key("tenkan"), 0);
    check("kijun", &col(|p| p.kijun), &key("kijun"), 0);
    check("senkou_a", &col(|p| p.senkou_a), &key("senkou_a"), 0);
    check("cloud_a", &col(|p| p.cloud_a), &key("cloud_a"), 0);
    check("chikou_ref", &col(|p| p.chikou_ref), &key("chikou_ref"), 0);
    // `ta` computes span B over partial windows (min_periods=0) before 52 candles; we report
    // nothing until the window is full, so compare from there (and its displaced copy 26 later).
    let b = col(|p| p.senkou_b);
    assert_eq!(first(&b), Some(51));
    check("senkou_b", &b, &key("senkou_b"), 51);
    check("cloud_b", &col(|p| p.cloud_b), &key("cloud_b"), 77);
    assert_eq!(full.iter().position(Option::is_some), Some(77));
    assert_eq!(ich.warmup(), 78);
    let last = full.last().unwrap().unwrap();
    assert_eq!(last.chikou, cs.last().unwrap().close());
}

#[test]
fn keltner() {
    let (cs, r) = (candles(), reference());
    let mut k = Keltner::new(20, 14, 1.5);
    let vals: Vec<_> = cs.iter().map(|c| k.update(c).unwrap()).collect();
    for (key, f) in [
        (
            "upper",
            (|v| v.upper) as fn(&klinebus_signals_core::indicators::KeltnerValue) -> f64,
        ),
        ("middle", |v| v.middle),
        ("lower", |v| v.lower),
    ] {
        let got: Vec<_> = vals.iter().map(|v| v.as_ref().map(f)).collect();
        check(key, &got, &series(&r, &["keltner20_14_1.5", key]), 0);
    }
}

#[test]
fn warmups_are_what_the_types_say() {
    assert_eq!(Ema::new(9).warmup(), 9);
    assert_eq!(Rsi::new(14).warmup(), 15);
    assert_eq!(Macd::new(12, 26, 9).warmup(), 34);
    assert_eq!(Atr::new(14).warmup(), 15);
    assert_eq!(Stochastic::new(14, 3, 3).warmup(), 18);
    assert_eq!(Adx::new(14).warmup(), 28);
    assert_eq!(Keltner::new(20, 14, 1.5).warmup(), 20);
}

#[test]
fn non_finite_input_is_an_error_and_changes_nothing() {
    let mut ema = Ema::new(3);
    ema.update(1.0).unwrap();
    let before = ema.clone();
    assert!(ema.update(f64::NAN).is_err());
    assert!(ema.update(f64::INFINITY).is_err());
    assert_eq!(ema, before);
    let mut rsi = Rsi::new(2);
    assert!(rsi.update(f64::NEG_INFINITY).is_err());
    assert_eq!(rsi.value(), None);
    let mut m = Macd::new(2, 3, 2);
    assert!(m.update(f64::NAN).is_err());
    assert_eq!(m.value(), None);
}

#[test]
fn flat_input_never_gives_nan() {
    let c = Candle::new(0, 5.0, 5.0, 5.0, 5.0, 0.0).unwrap();
    let mut rsi = Rsi::new(14);
    let mut st = Stochastic::new(14, 3, 3);
    let mut adx = Adx::new(14);
    let mut bb = Bollinger::new(20, 2.0);
    for _ in 0..100 {
        rsi.update(c.close()).unwrap();
        st.update(&c);
        adx.update(&c);
        bb.update(c.close()).unwrap();
    }
    assert_eq!(rsi.value(), Some(50.0));
    assert_eq!(st.value().unwrap().k, 50.0);
    let a = adx.value().unwrap();
    assert_eq!((a.adx, a.plus_di, a.minus_di), (0.0, 0.0, 0.0));
    let b = bb.value().unwrap();
    assert_eq!((b.upper, b.lower), (5.0, 5.0));
}
