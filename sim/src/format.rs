//! Binance's wire formats, written straight into byte buffers (no JSON tree per row).

use crate::candle::Candle;

const UNIT: u128 = 100_000_000;

/// Appends an unsigned integer in decimal.
#[inline]
pub(crate) fn push_u128(buf: &mut Vec<u8>, v: u128) {
    // u128 division is a library call; nearly every figure fits u64.
    if let Ok(v) = u64::try_from(v) {
        return push_u64(buf, v);
    }
    push_u128_slow(buf, v);
}

#[inline]
fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

fn push_u128_slow(buf: &mut Vec<u8>, mut v: u128) {
    let mut tmp = [0u8; 40];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Appends a signed integer in decimal.
#[inline]
pub(crate) fn push_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    push_u128(buf, u128::from(v.unsigned_abs()));
}

/// Appends 1e-8 units as Binance's 8-decimal string body, e.g. `105312.44000000`.
#[inline]
pub(crate) fn push_units(buf: &mut Vec<u8>, v: u128) {
    let (int, frac) = match u64::try_from(v) {
        Ok(v) => (u128::from(v / UNIT as u64), (v % UNIT as u64) as u32),
        Err(_) => (v / UNIT, (v % UNIT) as u32),
    };
    push_u128(buf, int);
    buf.push(b'.');
    let mut frac = frac;
    let mut tmp = [b'0'; 8];
    for d in tmp.iter_mut().rev() {
        *d = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    buf.extend_from_slice(&tmp);
}

/// 1e-8 units as an owned decimal string.
pub(crate) fn units_string(v: u128) -> String {
    let mut b = Vec::with_capacity(24);
    push_units(&mut b, v);
    String::from_utf8_lossy(&b).into_owned()
}

#[inline]
fn push_quoted_units(buf: &mut Vec<u8>, v: u128) {
    buf.push(b'"');
    push_units(buf, v);
    buf.push(b'"');
}

/// One REST kline row: `[openTime,"o","h","l","c","v",closeTime,"q",n,"V","Q","0"]`.
pub(crate) fn push_rest_row(buf: &mut Vec<u8>, c: &Candle) {
    let a = &c.agg;
    buf.push(b'[');
    push_i64(buf, c.open_time);
    for v in [a.open, a.high, a.low, a.close] {
        buf.push(b',');
        push_quoted_units(buf, v.into());
    }
    buf.push(b',');
    push_quoted_units(buf, a.volume);
    buf.push(b',');
    push_i64(buf, c.close_time);
    buf.push(b',');
    push_quoted_units(buf, a.quote);
    buf.push(b',');
    push_u128(buf, a.trades.into());
    buf.push(b',');
    push_quoted_units(buf, a.taker_base);
    buf.push(b',');
    push_quoted_units(buf, a.taker_quote);
    buf.extend_from_slice(b",\"0\"]");
}

/// A REST klines body: a JSON array of rows.
pub(crate) fn rest_body(candles: &[Candle]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(2 + candles.len() * 200);
    buf.push(b'[');
    for (i, c) in candles.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_rest_row(&mut buf, c);
    }
    buf.push(b']');
    buf
}

/// A kline stream event in Binance's key order; wrapped as `{"stream":…,"data":…}` when
/// `stream` is given (combined mode).
pub(crate) fn ws_event(
    symbol: &str,
    interval: &str,
    event_ms: i64,
    c: &Candle,
    stream: Option<&str>,
) -> String {
    let a = &c.agg;
    let mut b = Vec::with_capacity(420);
    if let Some(name) = stream {
        b.extend_from_slice(b"{\"stream\":\"");
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(b"\",\"data\":");
    }
    b.extend_from_slice(b"{\"e\":\"kline\",\"E\":");
    push_i64(&mut b, event_ms);
    let sym = |b: &mut Vec<u8>| {
        b.push(b'"');
        b.extend_from_slice(symbol.as_bytes());
        b.push(b'"');
    };
    b.extend_from_slice(b",\"s\":");
    sym(&mut b);
    b.extend_from_slice(b",\"k\":{\"t\":");
    push_i64(&mut b, c.open_time);
    b.extend_from_slice(b",\"T\":");
    push_i64(&mut b, c.close_time);
    b.extend_from_slice(b",\"s\":");
    sym(&mut b);
    b.extend_from_slice(b",\"i\":\"");
    b.extend_from_slice(interval.as_bytes());
    b.extend_from_slice(b"\",\"f\":");
    push_i64(&mut b, a.first_id);
    b.extend_from_slice(b",\"L\":");
    push_i64(&mut b, a.last_id);
    for (k, v) in [("o", a.open), ("c", a.close), ("h", a.high), ("l", a.low)] {
        b.extend_from_slice(b",\"");
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(b"\":");
        push_quoted_units(&mut b, v.into());
    }
    b.extend_from_slice(b",\"v\":");
    push_quoted_units(&mut b, a.volume);
    b.extend_from_slice(b",\"n\":");
    push_u128(&mut b, a.trades.into());
    b.extend_from_slice(if c.closed {
        b",\"x\":true"
    } else {
        b",\"x\":false"
    });
    b.extend_from_slice(b",\"q\":");
    push_quoted_units(&mut b, a.quote);
    b.extend_from_slice(b",\"V\":");
    push_quoted_units(&mut b, a.taker_base);
    b.extend_from_slice(b",\"Q\":");
    push_quoted_units(&mut b, a.taker_quote);
    b.extend_from_slice(b",\"B\":\"0\"}}");
    if stream.is_some() {
        b.push(b'}');
    }
    String::from_utf8_lossy(&b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(units_string(10_531_244_000_000), "105312.44000000");
        assert_eq!(units_string(1), "0.00000001");
        assert_eq!(units_string(0), "0.00000000");
        assert_eq!(
            units_string(u128::from(u64::MAX) * 1000 + 7),
            "184467440737095.51615007"
        );
        let mut b = Vec::new();
        push_u128(&mut b, u128::from(u64::MAX) + 1);
        assert_eq!(b, b"18446744073709551616");
        let mut b = Vec::new();
        push_i64(&mut b, -42);
        push_u128(&mut b, 0);
        assert_eq!(b, b"-420");
    }
}
