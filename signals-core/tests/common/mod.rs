//! The committed candle fixture (see `klinebus_testkit::signals`), shared by the integration
//! tests.

#![allow(clippy::unwrap_used, dead_code)]

use klinebus_signals_core::Candle;

/// The 600 one-hour candles of `fixtures/candles.json` (from `make_reference.py`).
pub fn candles() -> Vec<Candle> {
    klinebus_testkit::fixture_candles()
        .iter()
        .map(|r| {
            Candle::from_text(r.open_time, &r.open, &r.high, &r.low, &r.close, &r.volume).unwrap()
        })
        .collect()
}
