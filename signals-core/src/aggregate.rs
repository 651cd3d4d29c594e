//! Regime classification and the vote that turns strategy signals into one action.
//!
//! **Regime**: trending when ADX ≥ `regime.adx_trending` (default 25) or the close is outside
//! the Keltner channel (EMA20 ± 1.5·ATR14); otherwise ranging.
//!
//! **Vote**: every enabled strategy votes, HOLDs included. Its weight is its configured weight,
//! times `aggregate.regime_boost` (default 1.5) when its family suits the regime
//! (trend-following when trending, mean-reversion when ranging). The score is
//! `Σ weight·sign·strength / Σ weight` with sign +1 BUY, −1 SELL, 0 HOLD, so it lies in
//! [−1, 1]. BUY when score ≥ `aggregate.threshold` (default 0.15), SELL when score ≤
//! −threshold, else HOLD. Confidence is |score|. Because HOLDs count in the denominator, one
//! lone signal rarely clears the threshold: agreement is what moves the aggregate.

use serde::{Deserialize, Serialize};

use crate::config::{AggregateParams, RegimeParams};
use crate::snapshot::IndicatorValues;
use crate::strategies::{Action, StrategyKind, StrategySignal};

/// Market regime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Regime {
    /// ADX high or price outside the Keltner channel.
    Trending,
    /// Neither.
    Ranging,
}

impl Regime {
    /// The family of strategies this regime favours.
    pub fn favours(self) -> StrategyKind {
        match self {
            Self::Trending => StrategyKind::TrendFollowing,
            Self::Ranging => StrategyKind::MeanReversion,
        }
    }
}

/// Classifies the regime, with a short reason.
pub fn classify(p: &RegimeParams, v: &IndicatorValues) -> (Regime, String) {
    let adx = v.adx.adx;
    let k = v.keltner;
    if adx >= p.adx_trending {
        (
            Regime::Trending,
            format!("ADX {adx:.1} >= {:.0}", p.adx_trending),
        )
    } else if v.close > k.upper {
        (Regime::Trending, "close above Keltner channel".into())
    } else if v.close < k.lower {
        (Regime::Trending, "close below Keltner channel".into())
    } else {
        (
            Regime::Ranging,
            format!("ADX {adx:.1}, close inside Keltner channel"),
        )
    }
}

/// The aggregate decision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    /// BUY / SELL / HOLD.
    pub action: Action,
    /// |score|, in [0, 1].
    pub confidence: f64,
    /// Weighted net score in [−1, 1]; positive leans BUY.
    pub score: f64,
}

/// Applies the regime boost to the signals' weights (so reports show the weights used) and
/// votes.
pub fn vote(p: &AggregateParams, regime: Regime, signals: &mut [StrategySignal]) -> Vote {
    let mut total = 0.0;
    let mut net = 0.0;
    for s in signals.iter_mut() {
        if s.name.kind() == regime.favours() {
            s.weight *= p.regime_boost;
        }
        total += s.weight;
        net += s.weight * s.action.sign() * s.strength;
    }
    let score = if total > 0.0 {
        (net / total).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let action = if score >= p.threshold && score > 0.0 {
        Action::Buy
    } else if score <= -p.threshold && score < 0.0 {
        Action::Sell
    } else {
        Action::Hold
    };
    Vote {
        action,
        confidence: score.abs(),
        score,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::StrategyId;

    fn sig(name: StrategyId, action: Action, strength: f64) -> StrategySignal {
        StrategySignal::new(name, action, strength, String::new())
    }

    #[test]
    fn weighted_vote_with_threshold() {
        let p = AggregateParams {
            threshold: 0.15,
            regime_boost: 1.0,
        };
        let mut one = vec![
            sig(StrategyId::EmaRsi, Action::Buy, 0.8),
            sig(StrategyId::MacdCross, Action::Hold, 0.0),
            sig(StrategyId::Momentum, Action::Hold, 0.0),
            sig(StrategyId::Stochastic, Action::Hold, 0.0),
            sig(StrategyId::IchimokuTrend, Action::Hold, 0.0),
            sig(StrategyId::AtrBreakout, Action::Hold, 0.0),
        ];
        // 0.8 / 6 ≈ 0.133 < 0.15: HOLD, but leaning.
        let v = vote(&p, Regime::Ranging, &mut one);
        assert_eq!(v.action, Action::Hold);
        assert!((v.score - 0.8 / 6.0).abs() < 1e-12);
        one[1] = sig(StrategyId::MacdCross, Action::Buy, 0.6);
        let v = vote(&p, Regime::Ranging, &mut one);
        assert_eq!(v.action, Action::Buy);
        assert!((v.confidence - 1.4 / 6.0).abs() < 1e-12);
        one[2] = sig(StrategyId::Momentum, Action::Sell, 1.0);
        one[3] = sig(StrategyId::Stochastic, Action::Sell, 1.0);
        let v = vote(&p, Regime::Ranging, &mut one);
        assert_eq!(v.action, Action::Hold);
        assert!(v.score < 0.0);
    }

    #[test]
    fn regime_boost_favours_the_matching_family() {
        let p = AggregateParams {
            threshold: 0.0,
            regime_boost: 3.0,
        };
        let signals = vec![
            sig(StrategyId::MacdCross, Action::Buy, 0.5),
            sig(StrategyId::Stochastic, Action::Sell, 0.5),
        ];
        let mut t = signals.clone();
        assert_eq!(vote(&p, Regime::Trending, &mut t).action, Action::Buy);
        assert_eq!(t[0].weight, 3.0);
        let mut r = signals;
        assert_eq!(vote(&p, Regime::Ranging, &mut r).action, Action::Sell);
        let mut none: Vec<StrategySignal> = Vec::new();
        assert_eq!(vote(&p, Regime::Ranging, &mut none).action, Action::Hold);
    }
}
