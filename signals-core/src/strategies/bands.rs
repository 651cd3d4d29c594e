//! Band and range strategies: Bollinger mean reversion, Bollinger breakout, ATR breakout.

use super::{unit, Action, Context, StrategyId, StrategySignal};
use crate::config::{AtrBreakoutParams, BollingerBreakoutParams, BollingerReversionParams};

/// How far the close is beyond a band, in half-band widths (0 at the band).
fn penetration(beyond: f64, half_width: f64) -> f64 {
    if half_width > 0.0 {
        beyond / half_width
    } else {
        0.0
    }
}

/// Bollinger mean reversion: close at or below the lower band with RSI ≤ `rsi_oversold` →
/// BUY; at or above the upper band with RSI ≥ `rsi_overbought` → SELL. Strength = 0.5 +
/// penetration (in half-band widths) + RSI distance beyond its threshold / 100.
pub fn bollinger_reversion(p: &BollingerReversionParams, ctx: &Context<'_>) -> StrategySignal {
    let c = ctx.cur;
    let b = c.bollinger;
    let id = StrategyId::BollingerReversion;
    let half = b.upper - b.middle;
    if c.close <= b.lower && c.rsi <= p.rsi_oversold {
        let s = 0.5 + penetration(b.lower - c.close, half) + (p.rsi_oversold - c.rsi) / 100.0;
        let reason = format!("close at/below lower band, RSI {:.1}", c.rsi);
        return StrategySignal::new(id, Action::Buy, unit(s), reason);
    }
    if c.close >= b.upper && c.rsi >= p.rsi_overbought {
        let s = 0.5 + penetration(c.close - b.upper, half) + (c.rsi - p.rsi_overbought) / 100.0;
        let reason = format!("close at/above upper band, RSI {:.1}", c.rsi);
        return StrategySignal::new(id, Action::Sell, unit(s), reason);
    }
    StrategySignal::hold(id, "inside bands or RSI not extreme".into())
}

/// Bollinger breakout with volume: close above the upper band with volume >
/// `volume_mult` × volume SMA → BUY; below the lower band likewise → SELL.
/// Strength = 0.5·(volume ratio / volume_mult) + 0.5·penetration, clamped.
pub fn bollinger_breakout(p: &BollingerBreakoutParams, ctx: &Context<'_>) -> StrategySignal {
    let c = ctx.cur;
    let b = c.bollinger;
    let id = StrategyId::BollingerBreakout;
    let ratio = if c.volume_sma > 0.0 {
        c.volume / c.volume_sma
    } else {
        0.0
    };
    let half = b.upper - b.middle;
    if ratio > p.volume_mult {
        let vol_part = 0.5 * ratio / p.volume_mult;
        if c.close > b.upper {
            let s = vol_part + 0.5 * penetration(c.close - b.upper, half);
            let reason = format!("close above upper band on {ratio:.1}x volume");
            return StrategySignal::new(id, Action::Buy, unit(s), reason);
        }
        if c.close < b.lower {
            let s = vol_part + 0.5 * penetration(b.lower - c.close, half);
            let reason = format!("close below lower band on {ratio:.1}x volume");
            return StrategySignal::new(id, Action::Sell, unit(s), reason);
        }
    }
    StrategySignal::hold(id, format!("no band break on volume ({ratio:.1}x)"))
}

/// ATR breakout: close − previous close > `mult` × previous ATR → BUY, < −`mult` × ATR →
/// SELL. The previous candle's ATR is used so the move being judged does not widen its own
/// yardstick. Strength = (|move| / (mult·ATR)) / 2, so ≥ 0.5 and 1 at twice the threshold.
pub fn atr_breakout(p: &AtrBreakoutParams, ctx: &Context<'_>) -> StrategySignal {
    let (c, v) = (ctx.cur, ctx.prev);
    let id = StrategyId::AtrBreakout;
    let band = p.mult * v.atr;
    let change = c.close - v.close;
    if band > 0.0 && change.abs() > band {
        let ratio = change.abs() / band;
        let action = if change > 0.0 {
            Action::Buy
        } else {
            Action::Sell
        };
        let reason = format!("close moved {:.2} ATR", change / v.atr);
        return StrategySignal::new(id, action, unit(ratio / 2.0), reason);
    }
    StrategySignal::hold(id, "move within ATR band".into())
}
