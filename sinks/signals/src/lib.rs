//! # kline-signals: trading signals from closed klines
//!
//! Feed closed candles of one (symbol, interval) series to a [`SeriesState`]; once it has seen
//! [`lookback`] consecutive candles, each new candle yields a [`SignalReport`]: every
//! strategy's BUY/SELL/HOLD with strength and reason, the regime, and a weighted aggregate.
//!
//! - [`candle`]: [`Candle`], the checked f64 view of a [`KlineEvent`](klinebus_schemas::KlineEvent)
//!   (the only place decimal text becomes floating point).
//! - [`indicators`]: incremental EMA, SMA, RSI, MACD, Bollinger, ATR, stochastic, ADX/DI,
//!   Ichimoku, Keltner — O(1) per candle, `None` until warm, conventions documented per type
//!   and checked against TA-Lib / `ta` in `tests/reference.rs`.
//! - [`strategies`]: ten strategy functions over the current and previous readings.
//! - [`aggregate`]: trending/ranging regime and the strength-weighted vote.
//! - [`series`]: [`SeriesState`] — `new`, `apply`, `warm`, `lookback`; replay and gap rules.
//! - [`config`]: [`Config`] from TOML (`signals.example.toml` lists every default).
//! - [`service`]: the `kline-signals` sink binary's library: [`run`] consumes
//!   `candles.closed.>` from JetStream, warms series from PostgreSQL, upserts `signals` rows and
//!   publishes `signals.<venue>.<symbol>.<interval>` events ([`SinkConfig`] for the flags).
//!
//! ```
//! use kline_signals::{Candle, Config, Outcome, SeriesState};
//! let cfg = Config::default();
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
pub mod service;
pub mod snapshot;
pub mod strategies;

pub use aggregate::Regime;
pub use candle::{Candle, CandleError};
pub use config::{Config, ConfigError};
pub use series::{lookback, Outcome, SeriesState, SignalReport};
pub use service::{run, ServiceError, SinkConfig};
pub use snapshot::IndicatorValues;
pub use strategies::{Action, StrategyId, StrategySignal};
