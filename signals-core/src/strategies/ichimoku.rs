//! Ichimoku strategies: the cloud trend alone and confirmed by ADX.

use super::{unit, Action, Context, StrategyId, StrategySignal};
use crate::config::IchimokuAdxParams;
use crate::indicators::IchimokuValue;

/// The cloud trend at the current candle: +1 when the close is above the cloud with tenkan >
/// kijun, −1 below the cloud with tenkan < kijun, else 0; plus the number of the three
/// confirmations (tenkan/kijun, chikou vs past close, leading cloud colour) in its favour.
fn cloud_trend(close: f64, i: &IchimokuValue) -> (i8, u8) {
    let top = i.cloud_a.max(i.cloud_b);
    let bottom = i.cloud_a.min(i.cloud_b);
    let confirm = |up: bool| {
        let s = |b: bool| if b == up { 1u8 } else { 0 };
        s(i.tenkan > i.kijun) + s(i.chikou > i.chikou_ref) + s(i.senkou_a > i.senkou_b)
    };
    if close > top && i.tenkan > i.kijun {
        (1, confirm(true))
    } else if close < bottom && i.tenkan < i.kijun {
        (-1, confirm(false))
    } else {
        (0, 0)
    }
}

/// Ichimoku trend: close above the (displaced) cloud and tenkan > kijun → BUY; below and
/// tenkan < kijun → SELL. Strength = (1 + confirmations) / 4 where the confirmations are
/// tenkan vs kijun, chikou vs the close `displacement` ago, and the leading cloud's colour.
pub fn ichimoku_trend(ctx: &Context<'_>) -> StrategySignal {
    let id = StrategyId::IchimokuTrend;
    let (dir, n) = cloud_trend(ctx.cur.close, &ctx.cur.ichimoku);
    let strength = (1.0 + f64::from(n)) / 4.0;
    match dir {
        1 => StrategySignal::new(
            id,
            Action::Buy,
            strength,
            format!("above cloud, tenkan>kijun, {n}/3 confirmations"),
        ),
        -1 => StrategySignal::new(
            id,
            Action::Sell,
            strength,
            format!("below cloud, tenkan<kijun, {n}/3 confirmations"),
        ),
        _ => StrategySignal::hold(id, "in or across the cloud".into()),
    }
}

/// Ichimoku + ADX: the Ichimoku trend direction, only when ADX ≥ `adx_min` and the DI agree
/// (+DI > −DI for BUY). Strength = ADX / 50, clamped (ADX 25 → 0.5, ≥ 50 → 1).
pub fn ichimoku_adx(p: &IchimokuAdxParams, ctx: &Context<'_>) -> StrategySignal {
    let id = StrategyId::IchimokuAdx;
    let a = ctx.cur.adx;
    let (dir, _) = cloud_trend(ctx.cur.close, &ctx.cur.ichimoku);
    if a.adx < p.adx_min {
        return StrategySignal::hold(id, format!("ADX {:.1} below {:.0}", a.adx, p.adx_min));
    }
    let strength = unit(a.adx / 50.0);
    if dir > 0 && a.plus_di > a.minus_di {
        let reason = format!("above cloud, ADX {:.1}, +DI>-DI", a.adx);
        return StrategySignal::new(id, Action::Buy, strength, reason);
    }
    if dir < 0 && a.minus_di > a.plus_di {
        let reason = format!("below cloud, ADX {:.1}, -DI>+DI", a.adx);
        return StrategySignal::new(id, Action::Sell, strength, reason);
    }
    StrategySignal::hold(id, "cloud and DI disagree".into())
}
