//! The state of one (symbol, interval) series: every indicator, the small windows the
//! strategies need, and the last candle seen.
//!
//! Candle order rules, so that at-least-once delivery and restarts are harmless:
//! - **Replay**: a candle whose open time is the same as or older than the last one applied is
//!   ignored ([`Outcome::Replay`]); the state is unchanged, so redelivery is idempotent.
//! - **Gap**: a candle whose open time is later than the next expected one (a missing candle)
//!   resets all state, since every indicator would otherwise silently span the hole; the
//!   candle then starts a new warm-up and [`Outcome::InsufficientData`] says so until
//!   [`lookback`] consecutive candles have been applied. The caller can avoid the wait by
//!   re-warming from stored history ([`SeriesState::warm`]).
//! - **Late candles**: a state cannot take in a candle older than its last one; its run
//!   ([`SeriesState::run_start`], [`SeriesState::run_len`]) tells the caller which older
//!   candles it has applied, so that the caller can rebuild it with the late candle in (the
//!   service recomputes from the table).
//! - Otherwise the candle is applied; once warm every candle yields a [`SignalReport`].

use klinebus_schemas::{Interval, Symbol};
use serde::{Deserialize, Serialize};

use crate::aggregate::{classify, vote, Regime};
use crate::config::StrategyConfig;
use crate::indicators::window::{Extreme, RollingExtremum};
use crate::indicators::{
    Adx, Atr, Bollinger, Ema, Ichimoku, InvalidInput, Keltner, Macd, Rsi, Sma, Stochastic,
};
use crate::snapshot::IndicatorValues;
use crate::strategies::{evaluate_all, Action, Context, StrategySignal};
use crate::Candle;

/// The signal computed for one closed candle; serialisable as the `details` JSONB and the
/// published event payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalReport {
    /// Symbol.
    pub symbol: Symbol,
    /// Interval.
    pub interval: Interval,
    /// Open time (ms) of the candle this report is for.
    pub open_time: i64,
    /// Close time (ms) of that candle.
    pub close_time: i64,
    /// Aggregate action.
    pub action: Action,
    /// Aggregate confidence in [0, 1] (= |score|).
    pub confidence: f64,
    /// Weighted net score in [−1, 1].
    pub score: f64,
    /// Trending or ranging.
    pub regime: Regime,
    /// Why that regime.
    pub regime_reason: String,
    /// Every enabled strategy's verdict, in a fixed order.
    pub strategies: Vec<StrategySignal>,
    /// The indicator readings the strategies saw.
    pub indicators: IndicatorValues,
}

/// What applying one candle produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A full report.
    Signal(Box<SignalReport>),
    /// The candle was applied but there is not enough consecutive history yet.
    InsufficientData {
        /// Why (warming up, or a gap reset the state).
        reason: String,
        /// Consecutive candles applied so far.
        have: usize,
        /// Consecutive candles needed.
        need: usize,
    },
    /// The candle is not newer than the last one applied; nothing changed.
    Replay {
        /// The candle's open time.
        open_time: i64,
        /// The last open time applied.
        last_open_time: i64,
    },
}

/// How many consecutive candles a series needs before its first report: the longest
/// indicator warm-up (Ichimoku's senkou B plus displacement, 78 by default) plus one for the
/// previous readings crossovers compare with, or the RSI warm-up plus the divergence window if
/// that is longer. 79 with the defaults.
pub fn lookback(cfg: &StrategyConfig) -> usize {
    Indicators::new(cfg).lookback(cfg)
}

#[derive(Debug, Clone, PartialEq)]
struct Indicators {
    ema_fast: Ema,
    ema_slow: Ema,
    rsi: Rsi,
    macd: Macd,
    bollinger: Bollinger,
    atr: Atr,
    stochastic: Stochastic,
    adx: Adx,
    ichimoku: Ichimoku,
    keltner: Keltner,
    volume_sma: Sma,
}

impl Indicators {
    fn new(cfg: &StrategyConfig) -> Self {
        let i = &cfg.indicators;
        Self {
            ema_fast: Ema::new(i.ema_fast),
            ema_slow: Ema::new(i.ema_slow),
            rsi: Rsi::new(i.rsi),
            macd: Macd::new(i.macd_fast, i.macd_slow, i.macd_signal),
            bollinger: Bollinger::new(i.bollinger_period, i.bollinger_k),
            atr: Atr::new(i.atr),
            stochastic: Stochastic::new(i.stoch_k, i.stoch_k_smooth, i.stoch_d),
            adx: Adx::new(i.adx),
            ichimoku: Ichimoku::new(cfg.ichimoku()),
            keltner: Keltner::new(i.keltner_ema, i.keltner_atr, i.keltner_mult),
            volume_sma: Sma::new(i.volume_sma),
        }
    }

    fn lookback(&self, cfg: &StrategyConfig) -> usize {
        let longest = [
            self.ema_fast.warmup(),
            self.ema_slow.warmup(),
            self.rsi.warmup(),
            self.macd.warmup(),
            self.bollinger.warmup(),
            self.atr.warmup(),
            self.stochastic.warmup(),
            self.adx.warmup(),
            self.ichimoku.warmup(),
            self.keltner.warmup(),
            self.volume_sma.warmup(),
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let divergence = self.rsi.warmup() + cfg.strategies.rsi_divergence.lookback.max(1);
        (longest + 1).max(divergence)
    }

    /// Feeds one candle to every indicator; the readings once all are warm.
    fn update(&mut self, c: &Candle) -> Result<Option<IndicatorValues>, InvalidInput> {
        let close = c.close();
        let ema_fast = self.ema_fast.update(close)?;
        let ema_slow = self.ema_slow.update(close)?;
        let rsi = self.rsi.update(close)?;
        let macd = self.macd.update(close)?;
        let bollinger = self.bollinger.update(close)?;
        let atr = self.atr.update(c);
        let stochastic = self.stochastic.update(c);
        let adx = self.adx.update(c);
        let ichimoku = self.ichimoku.update(c);
        let keltner = self.keltner.update(c)?;
        let volume_sma = self.volume_sma.update(c.volume())?;
        Ok((|| {
            Some(IndicatorValues {
                close,
                high: c.high(),
                low: c.low(),
                volume: c.volume(),
                volume_sma: volume_sma?,
                ema_fast: ema_fast?,
                ema_slow: ema_slow?,
                rsi: rsi?,
                macd: macd?,
                bollinger: bollinger?,
                atr: atr?,
                stochastic: stochastic?,
                adx: adx?,
                ichimoku: ichimoku?,
                keltner: keltner?,
            })
        })())
    }
}

/// All state for one (symbol, interval) series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesState {
    cfg: StrategyConfig,
    symbol: Symbol,
    interval: Interval,
    ind: Indicators,
    /// Lowest low of the last `lookback` candles (with RSI), for bullish divergence.
    prior_low: RollingExtremum<f64>,
    /// Highest high of the last `lookback` candles (with RSI), for bearish divergence.
    prior_high: RollingExtremum<f64>,
    prev: Option<IndicatorValues>,
    last_open_time: Option<i64>,
    /// Open time of the first candle of the current consecutive run.
    run_start: Option<i64>,
    /// Consecutive candles applied since creation or the last reset.
    seen: usize,
    lookback: usize,
}

impl SeriesState {
    /// A fresh series. The config should have passed [`StrategyConfig::validate`] (loading does it);
    /// out-of-range periods are clamped rather than allowed to panic.
    pub fn new(cfg: &StrategyConfig, symbol: Symbol, interval: Interval) -> Self {
        let n = cfg.strategies.rsi_divergence.lookback;
        let ind = Indicators::new(cfg);
        Self {
            lookback: ind.lookback(cfg),
            cfg: cfg.clone(),
            symbol,
            interval,
            ind,
            prior_low: RollingExtremum::new(n, Extreme::Min),
            prior_high: RollingExtremum::new(n, Extreme::Max),
            prev: None,
            last_open_time: None,
            run_start: None,
            seen: 0,
        }
    }

    /// Consecutive candles needed before the first report (see [`lookback`]).
    pub fn lookback(&self) -> usize {
        self.lookback
    }

    /// The symbol.
    pub fn symbol(&self) -> &Symbol {
        &self.symbol
    }

    /// The interval.
    pub fn interval(&self) -> Interval {
        self.interval
    }

    /// Open time of the last candle applied.
    pub fn last_open_time(&self) -> Option<i64> {
        self.last_open_time
    }

    /// Open time of the first candle of the consecutive run ending at
    /// [`last_open_time`](Self::last_open_time): every candle from there to the last one has been
    /// applied, nothing before it has (since creation or the last reset).
    pub fn run_start(&self) -> Option<i64> {
        self.run_start
    }

    /// Consecutive candles applied since creation or the last reset (the length of the run).
    pub fn run_len(&self) -> usize {
        self.seen
    }

    /// True once the next candle in sequence will produce a report.
    pub fn is_warm(&self) -> bool {
        self.seen + 1 >= self.lookback
    }

    /// Applies one closed candle.
    pub fn apply(&mut self, candle: &Candle) -> Outcome {
        self.step(candle, true)
    }

    /// Applies candles in order, exactly as calling [`apply`](Self::apply) on each (same
    /// replay and gap rules) but computing strategies only for the last, which makes it the
    /// cheap way to warm a series from stored history. Returns the last candle's outcome.
    pub fn warm<'a, I>(&mut self, candles: I) -> Option<Outcome>
    where
        I: IntoIterator<Item = &'a Candle>,
    {
        let mut iter = candles.into_iter().peekable();
        let mut last = None;
        while let Some(c) = iter.next() {
            let evaluate = iter.peek().is_none();
            last = Some(self.step(c, evaluate));
        }
        last
    }

    /// Applies one closed candle without evaluating the strategies (its report is not
    /// wanted): the state afterwards is the same as after [`apply`](Self::apply).
    pub fn advance(&mut self, candle: &Candle) {
        self.step(candle, false);
    }

    /// Forgets everything (as after a gap).
    pub fn reset(&mut self) {
        *self = Self::new(&self.cfg, self.symbol.clone(), self.interval);
    }

    fn step(&mut self, c: &Candle, evaluate: bool) -> Outcome {
        let open_time = c.open_time();
        let mut gap = None;
        if let Some(last) = self.last_open_time {
            if open_time <= last {
                return Outcome::Replay {
                    open_time,
                    last_open_time: last,
                };
            }
            let expected = self.interval.next_open(last);
            if open_time != expected {
                self.reset();
                gap = Some(expected);
            }
        }

        let cur = match self.ind.update(c) {
            Ok(v) => v,
            Err(e) => {
                // Unreachable with a checked `Candle`; kept explicit rather than panicking.
                self.reset();
                return Outcome::InsufficientData {
                    reason: format!("{e}; state reset"),
                    have: 0,
                    need: self.lookback,
                };
            }
        };
        let prior_low = self.prior_low.get();
        let prior_high = self.prior_high.get();
        if let Some(rsi) = self.ind.rsi.value() {
            self.prior_low.push(c.low(), rsi);
            self.prior_high.push(c.high(), rsi);
        }
        let prev = std::mem::replace(&mut self.prev, cur);
        self.last_open_time = Some(open_time);
        if self.seen == 0 {
            self.run_start = Some(open_time);
        }
        self.seen += 1;

        let ready = (cur, prev, prior_low, prior_high);
        let (Some(cur), Some(prev), Some(_), Some(_)) = ready else {
            let reason = match gap {
                Some(expected) => format!(
                    "gap: expected open time {expected}, got {open_time}; state reset, warming up"
                ),
                None => "warming up".to_owned(),
            };
            return Outcome::InsufficientData {
                reason,
                have: self.seen,
                need: self.lookback,
            };
        };
        if !evaluate {
            return Outcome::InsufficientData {
                reason: "warming from history (strategies not evaluated)".to_owned(),
                have: self.seen,
                need: self.lookback,
            };
        }
        Outcome::Signal(Box::new(self.report(c, cur, prev, prior_low, prior_high)))
    }

    fn report(
        &self,
        c: &Candle,
        cur: IndicatorValues,
        prev: IndicatorValues,
        prior_low: Option<(f64, f64)>,
        prior_high: Option<(f64, f64)>,
    ) -> SignalReport {
        let ctx = Context {
            cur: &cur,
            prev: &prev,
            prior_low,
            prior_high,
        };
        let mut strategies = Vec::with_capacity(10);
        evaluate_all(&self.cfg.strategies, &ctx, &mut strategies);
        let (regime, regime_reason) = classify(&self.cfg.regime, &cur);
        let v = vote(&self.cfg.aggregate, regime, &mut strategies);
        SignalReport {
            symbol: self.symbol.clone(),
            interval: self.interval,
            open_time: c.open_time(),
            close_time: self.interval.close_time(c.open_time()),
            action: v.action,
            confidence: v.confidence,
            score: v.score,
            regime,
            regime_reason,
            strategies,
            indicators: cur,
        }
    }
}
