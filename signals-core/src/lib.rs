//! # klinebus-signals-core: trading signals from closed klines, without I/O
//!
//! Feed closed candles of one (symbol, interval) series to a [`SeriesState`]; once it has seen
//! [`lookback`] consecutive candles, each new candle yields a [`SignalReport`]: every
//! strategy's BUY/SELL/HOLD with strength and reason, the regime, and a weighted aggregate.
//! No tokio, sqlx or NATS here: the `kline-signals` service (`sinks/signals`) feeds it from the
//! bus and stores what it says.
//!
//! - [`candle`]: [`Candle`], the checked f64 view of a [`KlineEvent`](klinebus_schemas::KlineEvent)
//!   (the only place decimal text becomes floating point).
//! - [`indicators`]: incremental EMA, SMA, RSI, MACD, Bollinger, ATR, stochastic, ADX/DI,
//!   Ichimoku, Keltner — O(1) per candle, `None` until warm, conventions documented per type
//!   and checked against TA-Lib / `ta` in `tests/reference.rs`.
//! - [`strategies`]: ten strategy functions over the current and previous readings.
//! - [`aggregate`]: trending/ranging regime and the strength-weighted vote.
//! - [`series`]: [`SeriesState`] — `new`, `apply`, `warm`, `advance`, `lookback`; replay and gap
//!   rules.
//! - [`config`]: [`StrategyConfig`], the strategy and indicator parameters, from TOML
//!   (`sinks/signals/signals.example.toml` lists every default).
//!
//! ```
//! use klinebus_signals_core::{Candle, StrategyConfig, Outcome, SeriesState};
//! let cfg = StrategyConfig::default();
//! let mut s = SeriesState::new(&cfg, "BTCUSDT".parse().unwrap(), "1h".parse().unwrap());
//! let hour = 3_600_000;
//! for i in 0..s.lookback() as i64 {
//!     let p = 100.0 + (i as f64 * 0.3).sin();
//!     let c = Candle::new(i * hour, p, p + 0.5, p - 0.5, p + 0.1, 10.0).unwrap();
//!     let out = s.apply(&c);
//!     assert_eq!(matches!(out, Outcome::Signal(_)), i + 1 == s.lookback() as i64);
//! }
//! ```

pub mod aggregate;
pub mod candle;
pub mod config;
pub mod indicators;
pub mod series;
pub mod snapshot;
pub mod strategies;

pub use aggregate::Regime;
pub use candle::{Candle, CandleError};
pub use config::{ConfigError, StrategyConfig};
pub use series::{lookback, Outcome, SeriesState, SignalReport};
pub use snapshot::IndicatorValues;
pub use strategies::{Action, StrategyId, StrategySignal};
