//! What the tests of this crate share: candles of one series.
#![allow(dead_code, clippy::unwrap_used)]

use klinebus_schemas::{Interval, KlineEvent, Source, Venue};

pub const MINUTE: i64 = 60_000;
/// 2025-06-04T12:00:00Z, the open time of candle 0.
pub const START: i64 = 1_749_038_400_000;

/// Closed BTCUSDT 1m candle number `i` from [`START`], from the WebSocket.
pub fn candle(i: i64) -> KlineEvent {
    let open_time = START + i * MINUTE;
    KlineEvent {
        venue: Venue::binance(),
        symbol: "BTCUSDT".parse().unwrap(),
        interval: Interval::M1,
        open_time,
        close_time: open_time + MINUTE - 1,
        open: "100.00000000".into(),
        high: "101.00000000".into(),
        low: "99.00000000".into(),
        close: "100.50000000".into(),
        volume: "1.00000000".into(),
        quote_volume: "100.00000000".into(),
        trades: 10,
        taker_buy_base: "0.50000000".into(),
        taker_buy_quote: "50.00000000".into(),
        closed: true,
        event_time: open_time + MINUTE,
        source: Source::Ws,
        received_at: open_time + MINUTE,
    }
}
