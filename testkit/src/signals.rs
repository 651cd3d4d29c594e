//! The committed 600-candle fixture of the signal tests (`signals-core/tests/fixtures/`, made
//! by `make_reference.py` with the TA-Lib reference values beside it), for the pure core's tests
//! and the service's alike.

use serde::Deserialize;

/// One one-hour candle of the fixture, prices as decimal text.
#[derive(Debug, Clone, Deserialize)]
pub struct FixtureCandle {
    /// Open time (ms).
    pub open_time: i64,
    /// Open.
    pub open: String,
    /// High.
    pub high: String,
    /// Low.
    pub low: String,
    /// Close.
    pub close: String,
    /// Volume.
    pub volume: String,
}

/// The fixture's candles, oldest first. Panics if the committed file is unreadable (a broken
/// checkout, not a test outcome).
pub fn fixture_candles() -> Vec<FixtureCandle> {
    match serde_json::from_str(include_str!(
        "../../signals-core/tests/fixtures/candles.json"
    )) {
        Ok(rows) => rows,
        Err(e) => panic!("signals-core/tests/fixtures/candles.json: {e}"),
    }
}
