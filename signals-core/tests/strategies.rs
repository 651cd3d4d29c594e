//! Each strategy on hand-made readings: the condition that fires it, the mirror, and a near
//! miss that must stay HOLD.

#![allow(clippy::unwrap_used)]

use klinebus_signals_core::config::StrategyParams;
use klinebus_signals_core::indicators::{
    AdxValue, BollingerValue, IchimokuValue, KeltnerValue, MacdValue, StochasticValue,
};
use klinebus_signals_core::strategies::{self, Context};
use klinebus_signals_core::{Action, IndicatorValues};

/// A quiet market: close 100 in the middle of everything, RSI 50, nothing crossing.
fn base() -> IndicatorValues {
    IndicatorValues {
        close: 100.0,
        high: 100.5,
        low: 99.5,
        volume: 10.0,
        volume_sma: 10.0,
        ema_fast: 100.0,
        ema_slow: 100.1,
        rsi: 50.0,
        macd: MacdValue {
            line: -0.1,
            signal: 0.0,
            histogram: -0.1,
        },
        bollinger: BollingerValue {
            upper: 102.0,
            middle: 100.0,
            lower: 98.0,
        },
        atr: 1.0,
        stochastic: StochasticValue { k: 50.0, d: 50.0 },
        adx: AdxValue {
            adx: 15.0,
            plus_di: 20.0,
            minus_di: 20.0,
        },
        ichimoku: IchimokuValue {
            tenkan: 100.0,
            kijun: 100.0,
            senkou_a: 100.0,
            senkou_b: 100.0,
            cloud_a: 99.0,
            cloud_b: 101.0,
            chikou: 100.0,
            chikou_ref: 100.0,
        },
        keltner: KeltnerValue {
            upper: 101.5,
            middle: 100.0,
            lower: 98.5,
        },
    }
}

fn ctx<'a>(cur: &'a IndicatorValues, prev: &'a IndicatorValues) -> Context<'a> {
    Context {
        cur,
        prev,
        prior_low: None,
        prior_high: None,
    }
}

#[test]
fn quiet_market_is_all_hold() {
    let (c, p) = (base(), base());
    let mut out = Vec::new();
    strategies::evaluate_all(&StrategyParams::default(), &ctx(&c, &p), &mut out);
    assert_eq!(out.len(), 10);
    for s in out {
        assert_eq!(s.action, Action::Hold, "{s:?}");
        assert_eq!(s.strength, 0.0);
    }
}

#[test]
fn ema_rsi_cross() {
    let p = base();
    let mut c = base();
    c.ema_fast = 100.2;
    c.rsi = 60.0;
    let params = StrategyParams::default().ema_rsi;
    let s = strategies::ema_rsi(&params, &ctx(&c, &p));
    assert_eq!(s.action, Action::Buy);
    assert!((s.strength - 0.6).abs() < 1e-12);
    c.rsi = 75.0; // overbought: no BUY
    assert_eq!(
        strategies::ema_rsi(&params, &ctx(&c, &p)).action,
        Action::Hold
    );
    // Mirror: fast above slow before, below now.
    let mut p2 = base();
    p2.ema_fast = 100.2;
    let mut c2 = base();
    c2.rsi = 40.0;
    let s = strategies::ema_rsi(&params, &ctx(&c2, &p2));
    assert_eq!(s.action, Action::Sell);
    assert!((s.strength - 0.6).abs() < 1e-12);
}

#[test]
fn macd_cross_and_momentum() {
    let p = base();
    let mut c = base();
    c.macd = MacdValue {
        line: 0.2,
        signal: 0.0,
        histogram: 0.2,
    };
    let s = strategies::macd_cross(&ctx(&c, &p));
    assert_eq!(s.action, Action::Buy);
    assert!((s.strength - 0.7).abs() < 1e-12);
    assert_eq!(strategies::macd_cross(&ctx(&c, &c)).action, Action::Hold);

    let mp = StrategyParams::default().momentum;
    c.rsi = 60.0;
    let s = strategies::momentum(&mp, &ctx(&c, &p));
    assert_eq!(s.action, Action::Buy);
    // 0.5·min(1, 2·0.2/1) + 0.5·(10/20)
    assert!((s.strength - 0.45).abs() < 1e-12, "{s:?}");
    // Histogram positive but falling: no momentum.
    assert_eq!(strategies::momentum(&mp, &ctx(&p, &c)).action, Action::Hold);
    let mut d = base();
    d.macd.histogram = -0.5;
    d.rsi = 40.0;
    assert_eq!(strategies::momentum(&mp, &ctx(&d, &p)).action, Action::Sell);
}

#[test]
fn bollinger_strategies() {
    let p = base();
    let params = StrategyParams::default();
    let mut c = base();
    c.close = 97.0;
    c.low = 96.5;
    c.rsi = 25.0;
    let s = strategies::bollinger_reversion(&params.bollinger_reversion, &ctx(&c, &p));
    assert_eq!(s.action, Action::Buy);
    assert!((s.strength - 1.0).abs() < 1e-12); // 0.5 + 1/2 + 5/100, clamped
    c.rsi = 35.0;
    let s = strategies::bollinger_reversion(&params.bollinger_reversion, &ctx(&c, &p));
    assert_eq!(s.action, Action::Hold);

    let mut b = base();
    b.close = 102.5;
    b.volume = 20.0;
    let s = strategies::bollinger_breakout(&params.bollinger_breakout, &ctx(&b, &p));
    assert_eq!(s.action, Action::Buy);
    b.volume = 14.0; // 1.4x < 1.5x
    let s = strategies::bollinger_breakout(&params.bollinger_breakout, &ctx(&b, &p));
    assert_eq!(s.action, Action::Hold);
    b.volume = 20.0;
    b.close = 97.5;
    let s = strategies::bollinger_breakout(&params.bollinger_breakout, &ctx(&b, &p));
    assert_eq!(s.action, Action::Sell);
}

#[test]
fn atr_breakout_uses_the_previous_atr() {
    let p = base();
    let params = StrategyParams::default().atr_breakout;
    let mut c = base();
    c.close = 101.6;
    c.atr = 5.0; // the current ATR is ignored
    let s = strategies::atr_breakout(&params, &ctx(&c, &p));
    assert_eq!(s.action, Action::Buy);
    assert!((s.strength - 1.6 / 1.5 / 2.0).abs() < 1e-12);
    c.close = 101.4;
    assert_eq!(
        strategies::atr_breakout(&params, &ctx(&c, &p)).action,
        Action::Hold
    );
    c.close = 98.0;
    assert_eq!(
        strategies::atr_breakout(&params, &ctx(&c, &p)).action,
        Action::Sell
    );
}

#[test]
fn ichimoku_strategies() {
    let p = base();
    let params = StrategyParams::default().ichimoku_adx;
    let mut c = base();
    c.close = 103.0;
    c.ichimoku.tenkan = 101.0;
    c.ichimoku.chikou = 103.0;
    let s = strategies::ichimoku_trend(&ctx(&c, &p));
    assert_eq!(s.action, Action::Buy);
    // tenkan>kijun and chikou confirm; leading cloud flat (a = b) does not.
    assert!((s.strength - 0.75).abs() < 1e-12, "{s:?}");
    assert_eq!(
        strategies::ichimoku_adx(&params, &ctx(&c, &p)).action,
        Action::Hold
    );
    c.adx = AdxValue {
        adx: 30.0,
        plus_di: 25.0,
        minus_di: 15.0,
    };
    let s = strategies::ichimoku_adx(&params, &ctx(&c, &p));
    assert_eq!(s.action, Action::Buy);
    assert!((s.strength - 0.6).abs() < 1e-12);
    c.adx.minus_di = 30.0; // DI disagree
    assert_eq!(
        strategies::ichimoku_adx(&params, &ctx(&c, &p)).action,
        Action::Hold
    );
    let mut d = base();
    d.close = 97.0;
    d.ichimoku.tenkan = 99.0;
    assert_eq!(
        strategies::ichimoku_trend(&ctx(&d, &p)).action,
        Action::Sell
    );
}

#[test]
fn rsi_divergence_both_ways() {
    let p = base();
    let mut c = base();
    c.low = 95.0;
    c.rsi = 35.0;
    let mut x = ctx(&c, &p);
    x.prior_low = Some((96.0, 30.0)); // lower low, higher RSI
    let s = strategies::rsi_divergence(&x);
    assert_eq!(s.action, Action::Buy);
    assert!((s.strength - 0.75).abs() < 1e-12);
    x.prior_low = Some((96.0, 40.0)); // RSI confirms the low: no divergence
    assert_eq!(strategies::rsi_divergence(&x).action, Action::Hold);
    x.prior_low = Some((94.0, 30.0)); // not a new low
    assert_eq!(strategies::rsi_divergence(&x).action, Action::Hold);

    let mut h = base();
    h.high = 105.0;
    h.rsi = 65.0;
    let mut y = ctx(&h, &p);
    y.prior_high = Some((104.0, 72.0));
    assert_eq!(strategies::rsi_divergence(&y).action, Action::Sell);
}

#[test]
fn stochastic_cross_in_zones() {
    let params = StrategyParams::default().stochastic;
    let mut p = base();
    p.stochastic = StochasticValue { k: 10.0, d: 12.0 };
    let mut c = base();
    c.stochastic = StochasticValue { k: 14.0, d: 12.0 };
    let s = strategies::stochastic(&params, &ctx(&c, &p));
    assert_eq!(s.action, Action::Buy);
    assert!((s.strength - 0.7).abs() < 1e-12);
    // Same cross outside the oversold zone.
    p.stochastic = StochasticValue { k: 40.0, d: 42.0 };
    c.stochastic = StochasticValue { k: 44.0, d: 42.0 };
    assert_eq!(
        strategies::stochastic(&params, &ctx(&c, &p)).action,
        Action::Hold
    );
    p.stochastic = StochasticValue { k: 90.0, d: 88.0 };
    c.stochastic = StochasticValue { k: 85.0, d: 88.0 };
    assert_eq!(
        strategies::stochastic(&params, &ctx(&c, &p)).action,
        Action::Sell
    );
}
