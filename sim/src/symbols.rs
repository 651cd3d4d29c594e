//! Per-symbol parameters: price level, tick/step sizes, listing date, activity.

use crate::hash::fnv;
use crate::interval::utc_ms;

/// One unit = 1e-8 of an asset, Binance's finest precision.
pub(crate) const UNIT: u64 = 100_000_000;

/// The trading pairs served when `--symbols` is not given.
pub const DEFAULT_SYMBOLS: &str =
    "BTCUSDT,ETHUSDT,BNBUSDT,SOLUSDT,XRPUSDT,ADAUSDT,DOGEUSDT,LTCUSDT";

/// Static description of one symbol. Prices and sizes are integers in units of 1e-8.
#[derive(Clone, Debug)]
pub struct SymbolSpec {
    /// Upper-case pair name, e.g. `BTCUSDT`.
    pub name: String,
    /// Base asset, e.g. `BTC`.
    pub base_asset: String,
    /// Quote asset, e.g. `USDT`.
    pub quote_asset: String,
    /// Centre of the price path (1e-8 units of the quote asset).
    pub base_price: u64,
    /// Price tick (1e-8 units).
    pub tick: u64,
    /// Quantity step (1e-8 units of the base asset).
    pub step: u64,
    /// First candle's open time (ms, minute-aligned).
    pub listed_ms: i64,
    /// Typical 1m volume (1e-8 units of the base asset).
    pub volume_per_min: u64,
    /// Typical trades per minute.
    pub trades_per_min: u64,
    /// Daily volatility of the price path (fraction, e.g. 0.03).
    pub daily_vol: f64,
}

struct Row {
    name: &'static str,
    base: &'static str,
    price: f64,
    tick: u64,
    step: u64,
    listed: (i64, i64, i64, i64, i64),
    volume: f64,
    trades: u64,
    vol: f64,
}

/// Real-ish listing dates and mid-2025 price levels.
#[rustfmt::skip]
const KNOWN: &[Row] = &[
    Row { name: "BTCUSDT", base: "BTC", price: 105_000.0, tick: 1_000_000, step: 1_000, listed: (2017, 8, 17, 4, 0), volume: 10.0, trades: 1_200, vol: 0.025 },
    Row { name: "ETHUSDT", base: "ETH", price: 2_500.0, tick: 1_000_000, step: 10_000, listed: (2017, 8, 17, 4, 0), volume: 300.0, trades: 900, vol: 0.035 },
    Row { name: "BNBUSDT", base: "BNB", price: 650.0, tick: 1_000_000, step: 100_000, listed: (2017, 11, 6, 3, 30), volume: 400.0, trades: 300, vol: 0.03 },
    Row { name: "SOLUSDT", base: "SOL", price: 150.0, tick: 1_000_000, step: 100_000, listed: (2020, 8, 11, 6, 0), volume: 2_500.0, trades: 600, vol: 0.045 },
    Row { name: "XRPUSDT", base: "XRP", price: 2.2, tick: 10_000, step: 10_000_000, listed: (2019, 5, 4, 8, 0), volume: 400_000.0, trades: 500, vol: 0.04 },
    Row { name: "ADAUSDT", base: "ADA", price: 0.7, tick: 10_000, step: 10_000_000, listed: (2018, 4, 17, 4, 0), volume: 600_000.0, trades: 250, vol: 0.04 },
    Row { name: "DOGEUSDT", base: "DOGE", price: 0.19, tick: 1_000, step: UNIT, listed: (2019, 7, 5, 12, 0), volume: 3_000_000.0, trades: 400, vol: 0.05 },
    Row { name: "LTCUSDT", base: "LTC", price: 90.0, tick: 1_000_000, step: 100_000, listed: (2017, 12, 13, 3, 30), volume: 600.0, trades: 150, vol: 0.035 },
];

const QUOTES: &[&str] = &[
    "FDUSD", "USDT", "USDC", "TUSD", "BUSD", "EUR", "TRY", "BTC", "ETH", "BNB",
];

impl SymbolSpec {
    /// Parameters for `name`: the table above, or generic ones for other names.
    pub fn for_name(name: &str) -> Self {
        if let Some(r) = KNOWN.iter().find(|r| r.name == name) {
            let (y, mo, d, h, mi) = r.listed;
            return Self {
                name: r.name.to_owned(),
                base_asset: r.base.to_owned(),
                quote_asset: r.name[r.base.len()..].to_owned(),
                base_price: (r.price * UNIT as f64) as u64,
                tick: r.tick,
                step: r.step,
                listed_ms: utc_ms(y, mo, d, h, mi),
                volume_per_min: (r.volume * UNIT as f64) as u64,
                trades_per_min: r.trades,
                daily_vol: r.vol,
            };
        }
        let quote = QUOTES
            .iter()
            .find(|q| name.len() > q.len() && name.ends_with(*q))
            .copied()
            .unwrap_or("USDT");
        let base = name.strip_suffix(quote).unwrap_or(name);
        // Generic pairs still differ from each other: the price level comes from the name.
        let decade = (fnv(name) % 4) as u32; // 1, 10, 100 or 1000 quote units
        let price = 10u64.pow(decade) * UNIT;
        Self {
            name: name.to_owned(),
            base_asset: base.to_owned(),
            quote_asset: quote.to_owned(),
            base_price: price,
            tick: (price / 100_000).max(1),
            step: (UNIT / 10u64.pow(decade + 1)).max(1),
            listed_ms: utc_ms(2020, 1, 1, 0, 0),
            volume_per_min: 50_000 * UNIT / 10u64.pow(decade),
            trades_per_min: 100,
            daily_vol: 0.04,
        }
    }
}

/// Formats 1e-8 units as a plain decimal with 8 places (`"0.01000000"`).
pub(crate) fn units_str(v: u64) -> String {
    format!("{}.{:08}", v / UNIT, v % UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_generic() {
        let btc = SymbolSpec::for_name("BTCUSDT");
        assert_eq!(btc.listed_ms, 1_502_942_400_000);
        assert_eq!(btc.quote_asset, "USDT");
        assert_eq!(units_str(btc.tick), "0.01000000");
        let x = SymbolSpec::for_name("FOOBTC");
        assert_eq!(
            (x.base_asset.as_str(), x.quote_asset.as_str()),
            ("FOO", "BTC")
        );
        assert!(x.tick > 0 && x.step > 0 && x.base_price.is_multiple_of(x.tick));
    }
}
