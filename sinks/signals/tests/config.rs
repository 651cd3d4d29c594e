//! The config file: defaults, the committed example, rejection of unknown keys and bad values.

#![allow(clippy::unwrap_used)]

use kline_signals::{ConfigError, StrategyConfig};

#[test]
fn example_file_is_exactly_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/signals.example.toml");
    assert_eq!(
        StrategyConfig::load(path).unwrap(),
        StrategyConfig::default()
    );
}

#[test]
fn empty_and_partial_files_keep_defaults() {
    assert_eq!(
        StrategyConfig::from_toml_str("").unwrap(),
        StrategyConfig::default()
    );
    let cfg = StrategyConfig::from_toml_str(
        "[indicators]\nrsi = 7\n[strategies.stochastic]\nweight = 2.5\n",
    )
    .unwrap();
    assert_eq!(cfg.indicators.rsi, 7);
    assert_eq!(cfg.indicators.macd_slow, 26);
    assert_eq!(cfg.strategies.stochastic.weight, 2.5);
    assert!(cfg.strategies.stochastic.enabled);
    assert_eq!(cfg.strategies.stochastic.oversold, 20.0);
}

#[test]
fn unknown_keys_are_rejected() {
    for text in [
        "colour = 1\n",
        "[indicators]\nrsi_period = 14\n",
        "[aggregate]\nthreshhold = 0.2\n",
        "[strategies.macd_cross]\nfast = 3\n",
        "[strategies.ema_rsi]\nrsi_overbougth = 75.0\n",
        "[strategies.turtle]\nenabled = true\n",
    ] {
        let err = StrategyConfig::from_toml_str(text).unwrap_err();
        assert!(matches!(err, ConfigError::Parse(_)), "{text}: {err}");
    }
}

#[test]
fn out_of_range_values_are_rejected() {
    for text in [
        "[indicators]\nrsi = 0\n",
        "[indicators]\nema_fast = 30\n",
        "[indicators]\nmacd_fast = 26\n",
        "[indicators]\nbollinger_k = -1.0\n",
        "[indicators]\nkeltner_mult = nan\n",
        "[regime]\nadx_trending = 120.0\n",
        "[aggregate]\nthreshold = 1.5\n",
        "[strategies.atr_breakout]\nmult = 0.0\n",
        "[strategies.momentum]\nweight = -1.0\n",
        "[strategies.rsi_divergence]\nlookback = 0\n",
    ] {
        let err = StrategyConfig::from_toml_str(text).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)), "{text}: {err}");
    }
    let err = StrategyConfig::from_toml_str("[indicators]\nrsi = \"14\"\n").unwrap_err();
    assert!(matches!(err, ConfigError::Parse(_)));
    assert!(matches!(
        StrategyConfig::load("/nonexistent/signals.toml"),
        Err(ConfigError::Io { .. })
    ));
}

#[test]
fn disabled_strategies_are_left_out() {
    use kline_signals::{Outcome, SeriesState, StrategyId};
    let cfg = StrategyConfig::from_toml_str(
        "[strategies.ichimoku_adx]\nenabled = false\n[strategies.stochastic]\nenabled = false\n",
    )
    .unwrap();
    let mut s = SeriesState::new(&cfg, "BTCUSDT".parse().unwrap(), "1h".parse().unwrap());
    let hour = 3_600_000;
    let mut last = None;
    for i in 0..s.lookback() as i64 {
        let p = 100.0 + (i as f64 * 0.2).sin() * 3.0;
        let c = kline_signals::Candle::new(i * hour, p, p + 1.0, p - 1.0, p, 5.0).unwrap();
        last = Some(s.apply(&c));
    }
    let Some(Outcome::Signal(r)) = last else {
        panic!("{last:?}")
    };
    assert_eq!(r.strategies.len(), 8);
    assert!(!r
        .strategies
        .iter()
        .any(|s| matches!(s.name, StrategyId::IchimokuAdx | StrategyId::Stochastic)));
}
