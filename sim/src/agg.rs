//! A candle's figures as integers, and how candles combine into coarser ones.

/// Candle figures in 1e-8 units. Volumes are u128: a month of DOGE volume overflows u64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Agg {
    pub open: u64,
    pub high: u64,
    pub low: u64,
    pub close: u64,
    pub volume: u128,
    pub quote: u128,
    pub taker_base: u128,
    pub taker_quote: u128,
    pub trades: u64,
    pub first_id: i64,
    pub last_id: i64,
}

impl Agg {
    /// Appends a later candle: first open, last close, extremes, sums, first/last trade ids.
    #[inline]
    pub fn push(&mut self, later: &Agg) {
        self.high = self.high.max(later.high);
        self.low = self.low.min(later.low);
        self.close = later.close;
        self.volume += later.volume;
        self.quote += later.quote;
        self.taker_base += later.taker_base;
        self.taker_quote += later.taker_quote;
        self.trades += later.trades;
        self.last_id = later.last_id;
    }
}

/// Folds `later` into an optional accumulator (None = no candle yet).
#[inline]
pub(crate) fn merge(acc: &mut Option<Agg>, later: Option<Agg>) {
    match (acc.as_mut(), later) {
        (_, None) => {}
        (None, Some(l)) => *acc = Some(l),
        (Some(a), Some(l)) => a.push(&l),
    }
}
