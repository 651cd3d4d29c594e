//! Trend strategies: EMA+RSI crossover, MACD crossover, MACD+RSI momentum.

use super::{crossed_above, crossed_below, unit, Action, Context, StrategyId, StrategySignal};
use crate::config::{EmaRsiParams, MomentumParams};

/// EMA crossover confirmed by RSI. BUY when the fast EMA crosses above the slow one and RSI is
/// below `rsi_overbought`; SELL on the cross down with RSI above `rsi_oversold`.
/// Strength = 0.5 + (RSI − 50)/100 for BUY (mirror for SELL): momentum on the trade's side
/// strengthens it.
pub fn ema_rsi(p: &EmaRsiParams, ctx: &Context<'_>) -> StrategySignal {
    let (c, v) = (ctx.cur, ctx.prev);
    let id = StrategyId::EmaRsi;
    let rsi = c.rsi;
    if crossed_above(v.ema_fast, v.ema_slow, c.ema_fast, c.ema_slow) && rsi < p.rsi_overbought {
        let reason = format!("EMA fast crossed above slow, RSI {rsi:.1}");
        return StrategySignal::new(id, Action::Buy, unit(0.5 + (rsi - 50.0) / 100.0), reason);
    }
    if crossed_below(v.ema_fast, v.ema_slow, c.ema_fast, c.ema_slow) && rsi > p.rsi_oversold {
        let reason = format!("EMA fast crossed below slow, RSI {rsi:.1}");
        return StrategySignal::new(id, Action::Sell, unit(0.5 + (50.0 - rsi) / 100.0), reason);
    }
    StrategySignal::hold(id, "no EMA crossover".into())
}

/// MACD line crossing its signal line. BUY on the cross up, SELL on the cross down.
/// Strength = 0.5 + |histogram| / ATR (a decisive cross relative to volatility).
pub fn macd_cross(ctx: &Context<'_>) -> StrategySignal {
    let (c, v) = (ctx.cur.macd, ctx.prev.macd);
    let id = StrategyId::MacdCross;
    let strength = unit(0.5 + c.histogram.abs() / ctx.cur.atr);
    if crossed_above(v.line, v.signal, c.line, c.signal) {
        let reason = format!("MACD crossed above signal (hist {:.4})", c.histogram);
        return StrategySignal::new(id, Action::Buy, strength, reason);
    }
    if crossed_below(v.line, v.signal, c.line, c.signal) {
        let reason = format!("MACD crossed below signal (hist {:.4})", c.histogram);
        return StrategySignal::new(id, Action::Sell, strength, reason);
    }
    StrategySignal::hold(id, "no MACD crossover".into())
}

/// Momentum: MACD histogram positive and rising with RSI in (50, `rsi_upper`) → BUY; negative
/// and falling with RSI in (`rsi_lower`, 50) → SELL. Strength = 0.5·min(1, 2·|hist|/ATR) +
/// 0.5·|RSI − 50|/(band width), where band width is `rsi_upper − 50` (or `50 − rsi_lower`).
pub fn momentum(p: &MomentumParams, ctx: &Context<'_>) -> StrategySignal {
    let (c, v) = (ctx.cur, ctx.prev);
    let id = StrategyId::Momentum;
    let h = c.macd.histogram;
    let hist_part = 0.5 * unit(2.0 * h.abs() / c.atr);
    if h > 0.0 && h > v.macd.histogram && c.rsi > 50.0 && c.rsi < p.rsi_upper {
        let rsi_part = 0.5 * unit((c.rsi - 50.0) / (p.rsi_upper - 50.0));
        let reason = format!("MACD hist {h:.4} rising, RSI {:.1}", c.rsi);
        return StrategySignal::new(id, Action::Buy, hist_part + rsi_part, reason);
    }
    if h < 0.0 && h < v.macd.histogram && c.rsi < 50.0 && c.rsi > p.rsi_lower {
        let rsi_part = 0.5 * unit((50.0 - c.rsi) / (50.0 - p.rsi_lower));
        let reason = format!("MACD hist {h:.4} falling, RSI {:.1}", c.rsi);
        return StrategySignal::new(id, Action::Sell, hist_part + rsi_part, reason);
    }
    StrategySignal::hold(id, format!("no momentum (hist {h:.4}, RSI {:.1})", c.rsi))
}
