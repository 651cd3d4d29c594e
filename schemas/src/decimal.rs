//! Checks for the exchange's decimal strings.
//!
//! Events carry prices and volumes as the exact text the exchange sent; this module reads that
//! text as a fixed-point integer (units of 1e-8) so it can be validated and compared without
//! ever going through `f64`.

/// Fraction digits Binance sends and the database stores.
pub const SCALE: u32 = 8;

/// Why a decimal string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// Not of the form `digits[.digits]`.
    #[error("{0:?} is not a plain non-negative decimal number")]
    Syntax(String),
    /// More than eight fraction digits: the database would round it.
    #[error("{0:?} has more than 8 fraction digits")]
    TooPrecise(String),
    /// Too many integer digits for the column it is going to.
    #[error("{value:?} has more than {max} integer digits")]
    TooLarge {
        /// The rejected text.
        value: String,
        /// The bound.
        max: u32,
    },
}

/// Parses `text` (e.g. `"105312.44000000"`) into units of 1e-8, allowing at most
/// `max_int_digits` digits before the point.
pub fn parse_units(text: &str, max_int_digits: u32) -> Result<u128, DecimalError> {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (text.contains('.') && frac.is_empty()) {
        return Err(DecimalError::Syntax(text.to_owned()));
    }
    if frac.len() > SCALE as usize {
        return Err(DecimalError::TooPrecise(text.to_owned()));
    }
    let int = int.trim_start_matches('0');
    if int.len() > max_int_digits as usize {
        return Err(DecimalError::TooLarge {
            value: text.to_owned(),
            max: max_int_digits,
        });
    }
    let mut units: u128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        units = units * 10 + u128::from(b - b'0');
    }
    Ok(units * 10u128.pow(SCALE - frac.len() as u32))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_exchange_text() {
        assert_eq!(
            parse_units("105312.44000000", 12).unwrap(),
            10_531_244_000_000
        );
        assert_eq!(parse_units("0", 12).unwrap(), 0);
        assert_eq!(parse_units("0.00000001", 12).unwrap(), 1);
        assert_eq!(parse_units("12", 12).unwrap(), 1_200_000_000);
    }

    #[test]
    fn rejects_what_the_database_would_mangle() {
        for bad in [
            "", "-1", "1e5", "NaN", "inf", "1.", ".5", "1.2.3", " 1", "0x10",
        ] {
            assert!(
                matches!(parse_units(bad, 12), Err(DecimalError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_units("1.123456789", 12),
            Err(DecimalError::TooPrecise(_))
        ));
        assert!(matches!(
            parse_units("1234567890123", 12),
            Err(DecimalError::TooLarge { .. })
        ));
        assert!(parse_units("000000000000001", 12).is_ok());
    }
}
