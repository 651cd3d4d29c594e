//! Candles as served: the internal integer form and the public string form [`Kline`].

use serde::Serialize;

use crate::agg::Agg;
use crate::format::units_string;

/// A candle in integer form with its window; `closed` is relative to the clock it was built at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candle {
    pub open_time: i64,
    pub close_time: i64,
    pub agg: Agg,
    pub closed: bool,
}

/// A candle with Binance's 12 REST fields already as Binance writes them, plus whether it is
/// closed and its first/last trade ids (the WS `f`/`L`). Compare stored rows to this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Kline {
    pub open_time: i64,
    pub open: String,
    pub high: String,
    pub low: String,
    pub close: String,
    pub volume: String,
    pub close_time: i64,
    pub quote_volume: String,
    pub trades: u64,
    pub taker_buy_base: String,
    pub taker_buy_quote: String,
    /// False for the forming candle (the one containing "now").
    pub closed: bool,
    pub first_trade_id: i64,
    pub last_trade_id: i64,
}

impl From<&Candle> for Kline {
    fn from(c: &Candle) -> Self {
        let a = &c.agg;
        Self {
            open_time: c.open_time,
            open: units_string(a.open.into()),
            high: units_string(a.high.into()),
            low: units_string(a.low.into()),
            close: units_string(a.close.into()),
            volume: units_string(a.volume),
            close_time: c.close_time,
            quote_volume: units_string(a.quote),
            trades: a.trades,
            taker_buy_base: units_string(a.taker_base),
            taker_buy_quote: units_string(a.taker_quote),
            closed: c.closed,
            first_trade_id: a.first_id,
            last_trade_id: a.last_id,
        }
    }
}
