//! Parameters, read from a TOML file. Every field has a documented default (the `Default`
//! impls below, mirrored by `signals.example.toml`); unknown keys are rejected so a typo does
//! not silently fall back to a default.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::indicators::IchimokuConfig;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("parsing config")]
    Parse(#[from] toml::de::Error),
    /// A value out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Everything the signal computation needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategyConfig {
    /// Indicator periods and multipliers.
    pub indicators: IndicatorParams,
    /// Trending/ranging classification.
    pub regime: RegimeParams,
    /// How strategy signals combine.
    pub aggregate: AggregateParams,
    /// Per-strategy switches, weights and thresholds.
    pub strategies: StrategyParams,
}

impl StrategyConfig {
    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a TOML file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Checks ranges: periods ≥ 1 (and at most 10 000), fast < slow, multipliers and weights
    /// finite and ≥ 0 (multipliers > 0), thresholds within their scales.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let i = &self.indicators;
        for (name, p) in [
            ("ema_fast", i.ema_fast),
            ("ema_slow", i.ema_slow),
            ("rsi", i.rsi),
            ("macd_fast", i.macd_fast),
            ("macd_slow", i.macd_slow),
            ("macd_signal", i.macd_signal),
            ("bollinger_period", i.bollinger_period),
            ("atr", i.atr),
            ("stoch_k", i.stoch_k),
            ("stoch_k_smooth", i.stoch_k_smooth),
            ("stoch_d", i.stoch_d),
            ("adx", i.adx),
            ("ichimoku_tenkan", i.ichimoku_tenkan),
            ("ichimoku_kijun", i.ichimoku_kijun),
            ("ichimoku_senkou_b", i.ichimoku_senkou_b),
            ("ichimoku_displacement", i.ichimoku_displacement),
            ("keltner_ema", i.keltner_ema),
            ("keltner_atr", i.keltner_atr),
            ("volume_sma", i.volume_sma),
            (
                "strategies.rsi_divergence.lookback",
                self.strategies.rsi_divergence.lookback,
            ),
        ] {
            if !(1..=10_000).contains(&p) {
                return invalid(format!("{name} = {p}: must be between 1 and 10000"));
            }
        }
        if i.ema_fast >= i.ema_slow {
            return invalid("ema_fast must be below ema_slow".into());
        }
        if i.macd_fast >= i.macd_slow {
            return invalid("macd_fast must be below macd_slow".into());
        }
        let s = &self.strategies;
        let positive = [
            ("bollinger_k", i.bollinger_k),
            ("keltner_mult", i.keltner_mult),
            (
                "strategies.bollinger_breakout.volume_mult",
                s.bollinger_breakout.volume_mult,
            ),
            ("strategies.atr_breakout.mult", s.atr_breakout.mult),
            ("aggregate.regime_boost", self.aggregate.regime_boost),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return invalid(format!("{name} = {v}: must be a positive number"));
            }
        }
        let levels = [
            ("regime.adx_trending", self.regime.adx_trending),
            (
                "strategies.ema_rsi.rsi_overbought",
                s.ema_rsi.rsi_overbought,
            ),
            ("strategies.ema_rsi.rsi_oversold", s.ema_rsi.rsi_oversold),
            ("strategies.momentum.rsi_upper", s.momentum.rsi_upper),
            ("strategies.momentum.rsi_lower", s.momentum.rsi_lower),
            (
                "strategies.bollinger_reversion.rsi_overbought",
                s.bollinger_reversion.rsi_overbought,
            ),
            (
                "strategies.bollinger_reversion.rsi_oversold",
                s.bollinger_reversion.rsi_oversold,
            ),
            ("strategies.ichimoku_adx.adx_min", s.ichimoku_adx.adx_min),
            ("strategies.stochastic.overbought", s.stochastic.overbought),
            ("strategies.stochastic.oversold", s.stochastic.oversold),
        ];
        for (name, v) in levels {
            if !(0.0..=100.0).contains(&v) {
                return invalid(format!("{name} = {v}: must be within 0..=100"));
            }
        }
        let t = self.aggregate.threshold;
        if !(0.0..=1.0).contains(&t) {
            return invalid(format!("aggregate.threshold = {t}: must be within 0..=1"));
        }
        for (name, w) in s.weights() {
            if !(w.is_finite() && w >= 0.0) {
                return invalid(format!("strategies.{name}.weight = {w}: must be >= 0"));
            }
        }
        Ok(())
    }

    /// The Ichimoku periods.
    pub fn ichimoku(&self) -> IchimokuConfig {
        let i = &self.indicators;
        IchimokuConfig {
            tenkan: i.ichimoku_tenkan,
            kijun: i.ichimoku_kijun,
            senkou_b: i.ichimoku_senkou_b,
            displacement: i.ichimoku_displacement,
        }
    }
}

fn invalid(msg: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid(msg))
}

/// Indicator periods (candles) and multipliers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndicatorParams {
    /// Fast EMA of the close for the EMA+RSI crossover. Default 9.
    pub ema_fast: usize,
    /// Slow EMA of the close for the EMA+RSI crossover. Default 21.
    pub ema_slow: usize,
    /// RSI period (Wilder). Default 14.
    pub rsi: usize,
    /// MACD fast EMA. Default 12.
    pub macd_fast: usize,
    /// MACD slow EMA. Default 26.
    pub macd_slow: usize,
    /// MACD signal EMA. Default 9.
    pub macd_signal: usize,
    /// Bollinger SMA period. Default 20.
    pub bollinger_period: usize,
    /// Bollinger width in population standard deviations. Default 2.0.
    pub bollinger_k: f64,
    /// ATR period (Wilder). Default 14.
    pub atr: usize,
    /// Stochastic %K look-back. Default 14.
    pub stoch_k: usize,
    /// Stochastic %K smoothing (SMA). Default 3.
    pub stoch_k_smooth: usize,
    /// Stochastic %D (SMA of %K). Default 3.
    pub stoch_d: usize,
    /// ADX / DI period (Wilder). Default 14.
    pub adx: usize,
    /// Ichimoku tenkan-sen. Default 9.
    pub ichimoku_tenkan: usize,
    /// Ichimoku kijun-sen. Default 26.
    pub ichimoku_kijun: usize,
    /// Ichimoku senkou span B. Default 52.
    pub ichimoku_senkou_b: usize,
    /// Ichimoku displacement. Default 26.
    pub ichimoku_displacement: usize,
    /// Keltner middle EMA. Default 20.
    pub keltner_ema: usize,
    /// Keltner ATR. Default 14.
    pub keltner_atr: usize,
    /// Keltner width in ATRs. Default 1.5.
    pub keltner_mult: f64,
    /// SMA of volume that volume spikes are measured against. Default 20.
    pub volume_sma: usize,
}

impl Default for IndicatorParams {
    fn default() -> Self {
        Self {
            ema_fast: 9,
            ema_slow: 21,
            rsi: 14,
            macd_fast: 12,
            macd_slow: 26,
            macd_signal: 9,
            bollinger_period: 20,
            bollinger_k: 2.0,
            atr: 14,
            stoch_k: 14,
            stoch_k_smooth: 3,
            stoch_d: 3,
            adx: 14,
            ichimoku_tenkan: 9,
            ichimoku_kijun: 26,
            ichimoku_senkou_b: 52,
            ichimoku_displacement: 26,
            keltner_ema: 20,
            keltner_atr: 14,
            keltner_mult: 1.5,
            volume_sma: 20,
        }
    }
}

/// Regime rule: **trending** when ADX ≥ `adx_trending` or the close is outside the Keltner
/// channel (strictly above the upper or below the lower line); otherwise **ranging**.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegimeParams {
    /// ADX level from which the market counts as trending. Default 25.
    pub adx_trending: f64,
}

impl Default for RegimeParams {
    fn default() -> Self {
        Self { adx_trending: 25.0 }
    }
}

/// Voting parameters; the rule is described on [`crate::aggregate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregateParams {
    /// |score| needed for BUY/SELL; below it the aggregate is HOLD. Default 0.15.
    pub threshold: f64,
    /// Weight multiplier for strategies suited to the current regime (trend-following ones
    /// when trending, mean-reversion ones when ranging). Default 1.5; 1.0 disables it.
    pub regime_boost: f64,
}

impl Default for AggregateParams {
    fn default() -> Self {
        Self {
            threshold: 0.15,
            regime_boost: 1.5,
        }
    }
}

/// Per-strategy parameters. Each has `enabled` (default true) and `weight` (default 1.0).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategyParams {
    /// EMA fast/slow crossover confirmed by RSI.
    pub ema_rsi: EmaRsiParams,
    /// MACD line / signal crossover.
    pub macd_cross: Toggle,
    /// Momentum: MACD histogram direction with RSI.
    pub momentum: MomentumParams,
    /// Close beyond a Bollinger band with RSI at an extreme: fade it.
    pub bollinger_reversion: BollingerReversionParams,
    /// Close beyond a Bollinger band on high volume: follow it.
    pub bollinger_breakout: BollingerBreakoutParams,
    /// Close-to-close move larger than a multiple of ATR: follow it.
    pub atr_breakout: AtrBreakoutParams,
    /// Price vs cloud, tenkan vs kijun, chikou.
    pub ichimoku_trend: Toggle,
    /// Ichimoku trend confirmed by ADX and DI.
    pub ichimoku_adx: IchimokuAdxParams,
    /// Price new low/high not confirmed by RSI.
    pub rsi_divergence: DivergenceParams,
    /// %K/%D cross in the oversold/overbought zone.
    pub stochastic: StochasticParams,
}

impl StrategyParams {
    /// (name, weight) of every strategy, enabled or not.
    pub fn weights(&self) -> [(&'static str, f64); 10] {
        [
            ("ema_rsi", self.ema_rsi.weight),
            ("macd_cross", self.macd_cross.weight),
            ("momentum", self.momentum.weight),
            ("bollinger_reversion", self.bollinger_reversion.weight),
            ("bollinger_breakout", self.bollinger_breakout.weight),
            ("atr_breakout", self.atr_breakout.weight),
            ("ichimoku_trend", self.ichimoku_trend.weight),
            ("ichimoku_adx", self.ichimoku_adx.weight),
            ("rsi_divergence", self.rsi_divergence.weight),
            ("stochastic", self.stochastic.weight),
        ]
    }
}

/// Just the switch and the weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Toggle {
    /// Whether the strategy runs. Default true.
    pub enabled: bool,
    /// Vote weight. Default 1.0.
    pub weight: f64,
}

impl Default for Toggle {
    fn default() -> Self {
        Self {
            enabled: true,
            weight: 1.0,
        }
    }
}

macro_rules! strategy_params {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty = $default:expr),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            /// Whether the strategy runs. Default true.
            pub enabled: bool,
            /// Vote weight. Default 1.0.
            pub weight: f64,
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { enabled: true, weight: 1.0, $($field: $default,)* }
            }
        }
    };
}

strategy_params!(
    /// EMA+RSI crossover thresholds.
    EmaRsiParams {
        /// No BUY when RSI is at or above this. Default 70.
        rsi_overbought: f64 = 70.0,
        /// No SELL when RSI is at or below this. Default 30.
        rsi_oversold: f64 = 30.0,
    }
);

strategy_params!(
    /// Momentum thresholds.
    MomentumParams {
        /// BUY needs RSI in (50, rsi_upper). Default 70.
        rsi_upper: f64 = 70.0,
        /// SELL needs RSI in (rsi_lower, 50). Default 30.
        rsi_lower: f64 = 30.0,
    }
);

strategy_params!(
    /// Bollinger mean-reversion thresholds.
    BollingerReversionParams {
        /// SELL needs RSI at or above this. Default 70.
        rsi_overbought: f64 = 70.0,
        /// BUY needs RSI at or below this. Default 30.
        rsi_oversold: f64 = 30.0,
    }
);

strategy_params!(
    /// Bollinger breakout thresholds.
    BollingerBreakoutParams {
        /// Volume must exceed this multiple of its SMA. Default 1.5.
        volume_mult: f64 = 1.5,
    }
);

strategy_params!(
    /// ATR breakout thresholds.
    AtrBreakoutParams {
        /// The close-to-close move must exceed this many (previous) ATRs. Default 1.5.
        mult: f64 = 1.5,
    }
);

strategy_params!(
    /// Ichimoku+ADX thresholds.
    IchimokuAdxParams {
        /// Minimum ADX for a signal. Default 25.
        adx_min: f64 = 25.0,
    }
);

strategy_params!(
    /// RSI divergence window.
    DivergenceParams {
        /// Candles before the current one searched for the previous low/high. Default 14.
        lookback: usize = 14,
    }
);

strategy_params!(
    /// Stochastic zones.
    StochasticParams {
        /// A %K/%D cross down counts when %D is at or above this. Default 80.
        overbought: f64 = 80.0,
        /// A %K/%D cross up counts when %D is at or below this. Default 20.
        oversold: f64 = 20.0,
    }
);
