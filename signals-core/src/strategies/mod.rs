//! Strategy signals: pure functions of the indicator readings at the current and previous
//! candle, each giving BUY / SELL / HOLD with a strength in [0, 1] and a short reason.
//!
//! A strength is 0 for HOLD; for BUY/SELL it is at least about 0.5 and grows with how
//! convincing the setup is (each function documents its formula).

mod bands;
mod ichimoku;
mod oscillators;
mod trend;

use serde::{Deserialize, Serialize};

use crate::config::StrategyParams;
use crate::snapshot::IndicatorValues;

pub use bands::{atr_breakout, bollinger_breakout, bollinger_reversion};
pub use ichimoku::{ichimoku_adx, ichimoku_trend};
pub use oscillators::{rsi_divergence, stochastic};
pub use trend::{ema_rsi, macd_cross, momentum};

/// What a strategy (or the aggregate) suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Go long / buy.
    Buy,
    /// Go short / sell.
    Sell,
    /// Do nothing.
    Hold,
}

impl Action {
    /// +1 for BUY, −1 for SELL, 0 for HOLD.
    pub fn sign(self) -> f64 {
        match self {
            Self::Buy => 1.0,
            Self::Sell => -1.0,
            Self::Hold => 0.0,
        }
    }
}

/// Which family a strategy belongs to; the aggregate favours the family that suits the regime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Follows moves (favoured when trending).
    TrendFollowing,
    /// Fades extremes (favoured when ranging).
    MeanReversion,
}

/// The strategies, by their config and report name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyId {
    /// [`ema_rsi`]
    EmaRsi,
    /// [`macd_cross`]
    MacdCross,
    /// [`momentum`]
    Momentum,
    /// [`bollinger_reversion`]
    BollingerReversion,
    /// [`bollinger_breakout`]
    BollingerBreakout,
    /// [`atr_breakout`]
    AtrBreakout,
    /// [`ichimoku_trend`]
    IchimokuTrend,
    /// [`ichimoku_adx`]
    IchimokuAdx,
    /// [`rsi_divergence`]
    RsiDivergence,
    /// [`stochastic`]
    Stochastic,
}

impl StrategyId {
    /// Its family.
    pub fn kind(self) -> StrategyKind {
        match self {
            Self::BollingerReversion | Self::RsiDivergence | Self::Stochastic => {
                StrategyKind::MeanReversion
            }
            _ => StrategyKind::TrendFollowing,
        }
    }
}

/// One strategy's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategySignal {
    /// Which strategy.
    pub name: StrategyId,
    /// What it suggests.
    pub action: Action,
    /// How strongly, in [0, 1]; 0 for HOLD.
    pub strength: f64,
    /// Why, in a few words with the numbers that decided it.
    pub reason: String,
    /// Its vote weight (config weight, times the regime boost if it applies).
    pub weight: f64,
}

impl StrategySignal {
    /// A BUY/SELL with a strength clamped to [0, 1] (a non-finite strength becomes HOLD).
    pub fn new(name: StrategyId, action: Action, strength: f64, reason: String) -> Self {
        if action == Action::Hold || !strength.is_finite() {
            return Self::hold(name, reason);
        }
        Self {
            name,
            action,
            strength: strength.clamp(0.0, 1.0),
            reason,
            weight: 1.0,
        }
    }

    /// A HOLD.
    pub fn hold(name: StrategyId, reason: String) -> Self {
        Self {
            name,
            action: Action::Hold,
            strength: 0.0,
            reason,
            weight: 1.0,
        }
    }
}

/// What the strategies see.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Readings at the candle just closed.
    pub cur: &'a IndicatorValues,
    /// Readings at the candle before.
    pub prev: &'a IndicatorValues,
    /// Lowest low of the `lookback` candles before this one, with the RSI at that candle.
    pub prior_low: Option<(f64, f64)>,
    /// Highest high of the `lookback` candles before this one, with the RSI at that candle.
    pub prior_high: Option<(f64, f64)>,
}

/// Runs every enabled strategy, appending to `out` (weights from the config, before any
/// regime boost).
pub fn evaluate_all(p: &StrategyParams, ctx: &Context<'_>, out: &mut Vec<StrategySignal>) {
    let mut run = |enabled: bool, weight: f64, f: &dyn Fn() -> StrategySignal| {
        if enabled {
            let mut s = f();
            s.weight = weight;
            out.push(s);
        }
    };
    run(p.ema_rsi.enabled, p.ema_rsi.weight, &|| {
        ema_rsi(&p.ema_rsi, ctx)
    });
    run(p.macd_cross.enabled, p.macd_cross.weight, &|| {
        macd_cross(ctx)
    });
    run(p.momentum.enabled, p.momentum.weight, &|| {
        momentum(&p.momentum, ctx)
    });
    run(
        p.bollinger_reversion.enabled,
        p.bollinger_reversion.weight,
        &|| bollinger_reversion(&p.bollinger_reversion, ctx),
    );
    run(
        p.bollinger_breakout.enabled,
        p.bollinger_breakout.weight,
        &|| bollinger_breakout(&p.bollinger_breakout, ctx),
    );
    run(p.atr_breakout.enabled, p.atr_breakout.weight, &|| {
        atr_breakout(&p.atr_breakout, ctx)
    });
    run(p.ichimoku_trend.enabled, p.ichimoku_trend.weight, &|| {
        ichimoku_trend(ctx)
    });
    run(p.ichimoku_adx.enabled, p.ichimoku_adx.weight, &|| {
        ichimoku_adx(&p.ichimoku_adx, ctx)
    });
    run(p.rsi_divergence.enabled, p.rsi_divergence.weight, &|| {
        rsi_divergence(ctx)
    });
    run(p.stochastic.enabled, p.stochastic.weight, &|| {
        stochastic(&p.stochastic, ctx)
    });
}

/// Clamps to [0, 1].
pub(crate) fn unit(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// True when `a` crossed above `b` between the previous and the current candle.
pub(crate) fn crossed_above(prev_a: f64, prev_b: f64, a: f64, b: f64) -> bool {
    prev_a <= prev_b && a > b
}

/// True when `a` crossed below `b` between the previous and the current candle.
pub(crate) fn crossed_below(prev_a: f64, prev_b: f64, a: f64, b: f64) -> bool {
    prev_a >= prev_b && a < b
}
