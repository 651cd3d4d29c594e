//! Oscillator strategies: RSI divergence, stochastic cross.

use super::{crossed_above, crossed_below, unit, Action, Context, StrategyId, StrategySignal};
use crate::config::StochasticParams;

/// RSI divergence over the `lookback` candles before this one.
/// Bullish (BUY): this low is below the lowest low of the window (price lower low) while RSI
/// is above the RSI at that earlier low (RSI higher low). Bearish (SELL) mirrors it with highs.
/// Strength = 0.5 + RSI gap / 20 (a 10-point disagreement gives 1).
pub fn rsi_divergence(ctx: &Context<'_>) -> StrategySignal {
    let c = ctx.cur;
    let id = StrategyId::RsiDivergence;
    if let Some((low, rsi_then)) = ctx.prior_low {
        if c.low < low && c.rsi > rsi_then {
            let reason = format!("lower low, RSI higher ({:.1} > {rsi_then:.1})", c.rsi);
            let s = 0.5 + (c.rsi - rsi_then) / 20.0;
            return StrategySignal::new(id, Action::Buy, unit(s), reason);
        }
    }
    if let Some((high, rsi_then)) = ctx.prior_high {
        if c.high > high && c.rsi < rsi_then {
            let reason = format!("higher high, RSI lower ({:.1} < {rsi_then:.1})", c.rsi);
            let s = 0.5 + (rsi_then - c.rsi) / 20.0;
            return StrategySignal::new(id, Action::Sell, unit(s), reason);
        }
    }
    StrategySignal::hold(id, "no divergence".into())
}

/// Stochastic: %K crosses above %D with %D ≤ `oversold` → BUY; %K crosses below %D with
/// %D ≥ `overbought` → SELL. Strength = 0.5 + 0.5·(depth into the zone / zone width).
pub fn stochastic(p: &StochasticParams, ctx: &Context<'_>) -> StrategySignal {
    let (c, v) = (ctx.cur.stochastic, ctx.prev.stochastic);
    let id = StrategyId::Stochastic;
    if crossed_above(v.k, v.d, c.k, c.d) && c.d <= p.oversold {
        let depth = if p.oversold > 0.0 {
            (p.oversold - c.d) / p.oversold
        } else {
            1.0
        };
        let reason = format!("%K crossed above %D at {:.1} (oversold)", c.d);
        return StrategySignal::new(id, Action::Buy, unit(0.5 + 0.5 * depth), reason);
    }
    if crossed_below(v.k, v.d, c.k, c.d) && c.d >= p.overbought {
        let depth = if p.overbought < 100.0 {
            (c.d - p.overbought) / (100.0 - p.overbought)
        } else {
            1.0
        };
        let reason = format!("%K crossed below %D at {:.1} (overbought)", c.d);
        return StrategySignal::new(id, Action::Sell, unit(0.5 + 0.5 * depth), reason);
    }
    StrategySignal::hold(id, format!("no cross in a zone (%K {:.1})", c.k))
}
