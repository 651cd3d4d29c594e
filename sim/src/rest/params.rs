//! Query-string parsing and Binance's parameter validation for klines.

use super::ApiError;
use crate::interval::{parse_time_zone, Interval};
use crate::market::Market;

/// Klines/uiKlines default and maximum `limit`.
pub(crate) const DEFAULT_LIMIT: usize = 500;
pub(crate) const MAX_LIMIT: usize = 1000;

pub(crate) const SYMBOL_RANGE: &str = "^[A-Z0-9-_.]{1,20}$";
const NUMBER_RANGE: &str = "^[0-9]{1,20}$";

/// Splits and percent-decodes `a=1&b=2` (a `+` is a space, as in forms).
pub(crate) fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn symbol_ok(s: &str) -> bool {
    (1..=20).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

pub(crate) fn illegal(name: &str, range: &str) -> ApiError {
    ApiError::bad(
        -1100,
        format!("Illegal characters found in parameter '{name}'; legal range is '{range}'."),
    )
}

/// -1101 when a parameter name repeats.
pub(crate) fn check_duplicates(q: &[(String, String)]) -> Result<(), ApiError> {
    for (i, (k, _)) in q.iter().enumerate() {
        if q[..i].iter().any(|(k2, _)| k2 == k) {
            return Err(ApiError::bad(
                -1101,
                "Duplicate values for a parameter detected.",
            ));
        }
    }
    Ok(())
}

/// -1104 when some parameters were not read.
pub(crate) fn check_unread(q: &[(String, String)], known: &[&str]) -> Result<(), ApiError> {
    let read = q
        .iter()
        .filter(|(k, _)| known.contains(&k.as_str()))
        .count();
    if read != q.len() {
        return Err(ApiError::bad(
            -1104,
            format!(
                "Not all sent parameters were read; read '{read}' parameter(s) but was sent '{}'.",
                q.len()
            ),
        ));
    }
    Ok(())
}

/// Validated klines parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KlineParams {
    pub symbol: usize,
    pub interval: Interval,
    pub tz_ms: i64,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub limit: usize,
}

const KLINE_PARAMS: &[&str] = &[
    "symbol",
    "interval",
    "startTime",
    "endTime",
    "timeZone",
    "limit",
];

/// Validates in Binance's order: duplicates, mandatory, empty, characters, unread, values.
pub(crate) fn klines(raw: &str, market: &Market) -> Result<KlineParams, ApiError> {
    let q = parse_query(raw);
    check_duplicates(&q)?;
    let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mandatory = |name: &str| {
        get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            ApiError::bad(
                -1102,
                format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
            )
        })
    };
    let symbol = mandatory("symbol")?;
    let interval = mandatory("interval")?;
    for (k, v) in &q {
        if v.is_empty() && KLINE_PARAMS.contains(&k.as_str()) {
            return Err(ApiError::bad(-1105, format!("Parameter '{k}' was empty.")));
        }
    }
    if !symbol_ok(symbol) {
        return Err(illegal("symbol", SYMBOL_RANGE));
    }
    let number = |name: &str| -> Result<Option<u128>, ApiError> {
        match get(name) {
            None => Ok(None),
            Some(v) if v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(v.parse::<u128>().ok())
            }
            Some(_) => Err(illegal(name, NUMBER_RANGE)),
        }
    };
    let start = number("startTime")?;
    let end = number("endTime")?;
    let limit = number("limit")?;
    check_unread(&q, KLINE_PARAMS)?;
    let interval =
        Interval::parse(interval).ok_or_else(|| ApiError::bad(-1120, "Invalid interval."))?;
    let symbol = market
        .index(symbol)
        .ok_or_else(|| ApiError::bad(-1121, "Invalid symbol."))?;
    let not_valid = |name: &str| {
        ApiError::bad(
            -1130,
            format!("Data sent for parameter '{name}' is not valid."),
        )
    };
    let tz_ms = match get("timeZone") {
        None => 0,
        Some(tz) => parse_time_zone(tz).ok_or_else(|| not_valid("timeZone"))?,
    };
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(l) if (1..=MAX_LIMIT as u128).contains(&l) => l as usize,
        Some(_) => return Err(not_valid("limit")),
    };
    let clamp = |t: Option<u128>| t.map(|t| t.min(i64::MAX as u128) as i64);
    let (start, end) = (clamp(start), clamp(end));
    if let (Some(s), Some(e)) = (start, end) {
        if s > e {
            return Err(ApiError::bad(-1023, "Start time is greater than end time."));
        }
    }
    Ok(KlineParams {
        symbol,
        interval,
        tz_ms,
        start,
        end,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        let q = parse_query("a=1&b=%2B08%3A00&c=x+y&&d&e=%zz");
        assert_eq!(
            q,
            [
                ("a", "1"),
                ("b", "+08:00"),
                ("c", "x y"),
                ("d", ""),
                ("e", "%zz")
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn validation_order() {
        let m = Market::new(1, &["BTCUSDT".to_owned()], None);
        let code = |q: &str| klines(q, &m).err().map(|e| e.code);
        assert_eq!(code("symbol=BTCUSDT&interval=1m"), None);
        assert_eq!(
            code("symbol=BTCUSDT&symbol=BTCUSDT&interval=1m"),
            Some(-1101)
        );
        assert_eq!(code("interval=1m"), Some(-1102));
        assert_eq!(code("symbol=BTCUSDT&interval=1m&limit="), Some(-1105));
        assert_eq!(code("symbol=btcusdt&interval=1m"), Some(-1100));
        assert_eq!(code("symbol=BTCUSDT&interval=1m&endTime=-5"), Some(-1100));
        assert_eq!(code("symbol=BTCUSDT&interval=1m&x=1"), Some(-1104));
        assert_eq!(code("symbol=BTCUSDT&interval=1H"), Some(-1120));
        assert_eq!(code("symbol=ETHUSDT&interval=1h"), Some(-1121));
        assert_eq!(code("symbol=BTCUSDT&interval=1h&timeZone=15"), Some(-1130));
        assert_eq!(code("symbol=BTCUSDT&interval=1h&limit=1001"), Some(-1130));
        assert_eq!(code("symbol=BTCUSDT&interval=1h&limit=0"), Some(-1130));
        assert_eq!(
            code("symbol=BTCUSDT&interval=1h&startTime=5&endTime=4"),
            Some(-1023)
        );
        let p = klines("symbol=BTCUSDT&interval=1d&timeZone=-1:00&limit=7", &m);
        assert_eq!(p.map(|p| (p.tz_ms, p.limit)), Ok((-3_600_000, 7)));
    }
}
