//! A Binance REST kline row (the 12-entry array of `GET /api/v3/klines`) and its conversion to a
//! [`KlineEvent`].
//!
//! Parsing is strict (exactly 12 entries, integers where Binance sends integers, strings where
//! it sends decimal text) but never panics: anything else is [`BinanceError::Malformed`] naming
//! the row and field.

use klinebus_schemas::{Interval, KlineEvent, Source, Symbol, Venue};
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::error::BinanceError;

/// One row of `GET /api/v3/klines`, values exactly as the exchange sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestKline {
    /// Open time (ms).
    pub open_time: i64,
    /// Open price.
    pub open: String,
    /// High price.
    pub high: String,
    /// Low price.
    pub low: String,
    /// Close price.
    pub close: String,
    /// Base volume.
    pub volume: String,
    /// Close time (ms), next open − 1.
    pub close_time: i64,
    /// Quote volume.
    pub quote_volume: String,
    /// Number of trades.
    pub trades: u64,
    /// Taker buy base volume.
    pub taker_buy_base: String,
    /// Taker buy quote volume.
    pub taker_buy_quote: String,
}

type Row = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    u64,
    String,
    String,
    IgnoredAny,
);

const FIELDS: [&str; 12] = [
    "open time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close time",
    "quote volume",
    "trades",
    "taker buy base",
    "taker buy quote",
    "ignore",
];

/// Parses a klines response body. The typed fast path handles well-formed bodies; on failure
/// the body is walked again to say which row and field is wrong.
pub fn parse_klines(body: &[u8]) -> Result<Vec<RestKline>, BinanceError> {
    match serde_json::from_slice::<Vec<Row>>(body) {
        Ok(rows) => Ok(rows.into_iter().map(from_row).collect()),
        Err(fast) => Err(diagnose(body)
            .unwrap_or_else(|| BinanceError::Malformed(format!("klines body: {fast}")))),
    }
}

fn from_row(r: Row) -> RestKline {
    RestKline {
        open_time: r.0,
        open: r.1,
        high: r.2,
        low: r.3,
        close: r.4,
        volume: r.5,
        close_time: r.6,
        quote_volume: r.7,
        trades: r.8,
        taker_buy_base: r.9,
        taker_buy_quote: r.10,
    }
}

/// The first problem in a body the fast path refused, with its position.
fn diagnose(body: &[u8]) -> Option<BinanceError> {
    let bad = |m: String| Some(BinanceError::Malformed(m));
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return bad(format!("klines body is not JSON: {e}")),
    };
    let Some(rows) = v.as_array() else {
        return bad(format!("klines body is not an array but {}", kind(&v)));
    };
    for (i, row) in rows.iter().enumerate() {
        let Some(cells) = row.as_array() else {
            return bad(format!("row {i} is not an array but {}", kind(row)));
        };
        if cells.len() != FIELDS.len() {
            return bad(format!("row {i} has {} entries, expected 12", cells.len()));
        }
        for (j, cell) in cells.iter().enumerate().take(11) {
            let ok = match j {
                0 | 6 => cell.as_i64().is_some(),
                8 => cell.as_u64().is_some(),
                _ => cell.is_string(),
            };
            if !ok {
                let want = match j {
                    0 | 6 => "an integer (ms)",
                    8 => "a non-negative integer",
                    _ => "a decimal string",
                };
                return bad(format!(
                    "row {i} field {j} ({}) is {}, expected {want}",
                    FIELDS[j],
                    kind(cell)
                ));
            }
        }
    }
    None
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(a) => format!("an array of {}", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

impl RestKline {
    /// True when the candle is final at exchange time `server_now_ms`: its close time has passed.
    pub fn is_closed(&self, server_now_ms: i64) -> bool {
        self.close_time < server_now_ms
    }

    /// The event for this row. `closed` is decided by `server_now_ms` (the exchange's clock);
    /// closed candles get `event_time = close_time + 1`, forming ones the server time.
    /// The result is validated (aligned open time, matching close time, sane decimals): a row
    /// that fails is [`BinanceError::Malformed`].
    pub fn to_event(
        &self,
        symbol: &Symbol,
        interval: Interval,
        source: Source,
        server_now_ms: i64,
        received_at_ms: i64,
    ) -> Result<KlineEvent, BinanceError> {
        self.clone()
            .into_event(symbol, interval, source, server_now_ms, received_at_ms)
    }

    /// [`RestKline::to_event`], moving the decimal strings instead of copying them.
    pub fn into_event(
        self,
        symbol: &Symbol,
        interval: Interval,
        source: Source,
        server_now_ms: i64,
        received_at_ms: i64,
    ) -> Result<KlineEvent, BinanceError> {
        let closed = self.is_closed(server_now_ms);
        let event = KlineEvent {
            venue: Venue::binance(),
            symbol: symbol.clone(),
            interval,
            open_time: self.open_time,
            close_time: self.close_time,
            open: self.open,
            high: self.high,
            low: self.low,
            close: self.close,
            volume: self.volume,
            quote_volume: self.quote_volume,
            taker_buy_base: self.taker_buy_base,
            taker_buy_quote: self.taker_buy_quote,
            trades: self.trades,
            closed,
            event_time: if closed {
                self.close_time + 1
            } else {
                server_now_ms
            },
            source,
            received_at: received_at_ms,
        };
        event.validate().map_err(|e| {
            BinanceError::Malformed(format!(
                "{symbol} {interval} kline at {}: {}",
                self.open_time,
                klinebus_svc::error_line(&e)
            ))
        })?;
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FIXTURE: &str = include_str!("../fixtures/klines_rest.json");

    fn malformed(body: &str) -> String {
        match parse_klines(body.as_bytes()) {
            Err(BinanceError::Malformed(m)) => m,
            other => panic!("expected Malformed for {body}, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_fixture_exactly() {
        let rows = parse_klines(FIXTURE.as_bytes()).unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0].open_time, 1_749_038_400_000);
        assert_eq!(rows[0].open, "105312.44000000");
        assert_eq!(rows[0].close_time, 1_749_038_459_999);
        assert_eq!(rows[0].trades, 1264);
        assert_eq!(rows[5].taker_buy_quote, "200754.09678375");
        let sym: Symbol = "BTCUSDT".parse().unwrap();
        let ev = rows[0]
            .to_event(&sym, Interval::M1, Source::Backfill, 1_749_038_800_000, 7)
            .unwrap();
        assert!(ev.closed);
        assert_eq!(ev.event_time, 1_749_038_460_000);
        assert_eq!(ev.received_at, 7);
        assert_eq!(ev.quote_volume, "885990.91189950");
        // The last row is still forming at its own close time.
        let last = rows[5]
            .to_event(&sym, Interval::M1, Source::Backfill, 1_749_038_759_999, 7)
            .unwrap();
        assert!(!last.closed);
    }

    #[test]
    fn empty_page_is_fine() {
        assert!(parse_klines(b"[]").unwrap().is_empty());
    }

    #[test]
    fn malformed_inputs_are_errors_with_context() {
        let row = r#"[1749038400000,"1.0","1.0","1.0","1.0","1.0",1749038459999,"1.0",3,"0.5","0.5","0"]"#;
        assert!(parse_klines(format!("[{row}]").as_bytes()).is_ok());
        assert!(malformed("not json").contains("not JSON"));
        assert!(malformed(r#"{"code":-1121}"#).contains("not an array"));
        assert!(malformed("[1]").contains("row 0 is not an array"));
        let short = r#"[[1749038400000,"1.0","1.0","1.0","1.0","1.0",1749038459999]]"#;
        assert!(malformed(short).contains("7 entries"));
        let long = format!("[{}]", row.replace(r#""0"]"#, r#""0","x"]"#));
        assert!(malformed(&long).contains("13 entries"));
        let num_price = row.replace(r#""1.0","1.0","1.0""#, r#"1.0,"1.0","1.0""#);
        assert!(malformed(&format!("[{row},{num_price}]")).contains("row 1 field 1 (open)"));
        let str_time = row.replace("1749038400000", r#""1749038400000""#);
        assert!(malformed(&format!("[{str_time}]")).contains("field 0 (open time)"));
        let neg_trades = row.replace(",3,", ",-3,");
        assert!(malformed(&format!("[{neg_trades}]")).contains("field 8 (trades)"));
        let float_time = row.replace("1749038459999", "1749038459999.5");
        assert!(malformed(&format!("[{float_time}]")).contains("field 6"));
        let null = row.replace(r#""0.5","0.5""#, r#"null,"0.5""#);
        assert!(malformed(&format!("[{null}]")).contains("null"));
    }

    #[test]
    fn implausible_rows_fail_conversion() {
        let mut r = parse_klines(FIXTURE.as_bytes()).unwrap().remove(0);
        let sym: Symbol = "BTCUSDT".parse().unwrap();
        r.close_time += 1;
        let e = r.to_event(&sym, Interval::M1, Source::Backfill, i64::MAX, 0);
        assert!(matches!(e, Err(BinanceError::Malformed(_))));
        let mut r = parse_klines(FIXTURE.as_bytes()).unwrap().remove(0);
        r.high = "abc".into();
        let e = r.to_event(&sym, Interval::M1, Source::Backfill, i64::MAX, 0);
        assert!(matches!(e, Err(BinanceError::Malformed(_))));
        // Wrong interval for the row: misaligned for 1h.
        let r = parse_klines(FIXTURE.as_bytes()).unwrap().remove(1);
        let e = r.to_event(&sym, Interval::H1, Source::Backfill, i64::MAX, 0);
        assert!(matches!(e, Err(BinanceError::Malformed(_))));
    }
}
