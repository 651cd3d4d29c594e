//! # kline-signals: the signals service
//!
//! [`run`] consumes `candles.closed.>` from JetStream, feeds every closed candle to its
//! series' [`SeriesState`] (the pure computation lives in `klinebus-signals-core`, re-exported
//! here where the service's API uses it), warms series from PostgreSQL, upserts `signals` rows
//! and publishes `signals.<venue>.<symbol>.<interval>` events ([`Config`] for the flags).
//!
//! - [`service`]: wiring, the consume loop's handler, the ownership lock;
//! - `service::engine`: per-series states, replays, late candles and recomputes;
//! - `service::store`: PostgreSQL reads and the `signals` upsert.

pub mod service;

pub use klinebus_signals_core::{
    lookback, Action, Candle, CandleError, ConfigError, IndicatorValues, Outcome, Regime,
    SeriesState, SignalReport, StrategyConfig, StrategyId, StrategySignal,
};
pub use service::{run, Config, ServiceError};
