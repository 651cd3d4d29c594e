//! The signal event on `signals.<venue>.<symbol>.<interval>` (stream `SIGNALS`): one per
//! closed candle a strategy evaluation gave a verdict for, published by kline-signals after
//! its row is committed. The payload is JSON (the report; its shape is documented in
//! `schemas/README.md` and defined by kline-signals' `SignalReport`).

use crate::codec::SCHEMA_HEADER;
use crate::{Interval, Symbol, Venue};

/// Header naming the payload format of a signal event (the same header as every klinebus
/// message).
pub const SIGNAL_SCHEMA_HEADER: &str = SCHEMA_HEADER;
/// Its value: a JSON signal report, `Content-Type: application/json`.
pub const SIGNAL_SCHEMA: &str = "signal/1";

/// The `Nats-Msg-Id` of the signal event for a candle: its candle key,
/// `<venue>:<symbol>:<interval>:<open_time>`, so a recomputed signal is deduplicated.
pub fn signal_msg_id(venue: &Venue, symbol: &Symbol, interval: Interval, open_time: i64) -> String {
    format!("{venue}:{symbol}:{}:{open_time}", interval.as_str())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::tests::sample;

    #[test]
    fn the_id_is_the_candle_key() {
        let e = sample();
        assert_eq!(
            signal_msg_id(&e.venue, &e.symbol, e.interval, e.open_time),
            e.candle_key()
        );
        assert_eq!(SIGNAL_SCHEMA_HEADER, "Klinebus-Schema");
    }
}
