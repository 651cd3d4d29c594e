//! Every indicator's reading for one closed candle: what strategies look at, and the
//! `indicators` part of a report.

use serde::{Deserialize, Serialize};

use crate::indicators::{
    AdxValue, BollingerValue, IchimokuValue, KeltnerValue, MacdValue, StochasticValue,
};

/// All indicator readings at one candle; only built once every indicator is warm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IndicatorValues {
    /// Close price.
    pub close: f64,
    /// High price.
    pub high: f64,
    /// Low price.
    pub low: f64,
    /// Volume.
    pub volume: f64,
    /// SMA of the volume.
    pub volume_sma: f64,
    /// Fast EMA of the close.
    pub ema_fast: f64,
    /// Slow EMA of the close.
    pub ema_slow: f64,
    /// RSI.
    pub rsi: f64,
    /// MACD.
    pub macd: MacdValue,
    /// Bollinger Bands.
    pub bollinger: BollingerValue,
    /// ATR.
    pub atr: f64,
    /// Stochastic.
    pub stochastic: StochasticValue,
    /// ADX and DI.
    pub adx: AdxValue,
    /// Ichimoku.
    pub ichimoku: IchimokuValue,
    /// Keltner channel.
    pub keltner: KeltnerValue,
}
