//! Validated exchange symbols and venue names.
//!
//! Both become NATS subject tokens and SQL values, so they are checked once,
//! here, before anything else sees them: `.`, `*`, `>` or whitespace would
//! silently change the meaning of a subject.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest symbol accepted; Binance's own symbol rule is `^[A-Z0-9-_.]{1,20}$`.
pub const MAX_SYMBOL_LEN: usize = 20;
/// Longest venue name accepted.
pub const MAX_VENUE_LEN: usize = 16;

/// Why a symbol or venue was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing was given.
    #[error("{kind} is empty")]
    Empty {
        /// "symbol" or "venue".
        kind: &'static str,
    },
    /// Longer than the bound.
    #[error("{kind} {value:?} is longer than {max} characters")]
    TooLong {
        /// "symbol" or "venue".
        kind: &'static str,
        /// The rejected input.
        value: String,
        /// The bound.
        max: usize,
    },
    /// A character outside the allowed set.
    #[error("{kind} {value:?} contains {bad:?}; only {allowed} are allowed")]
    BadChar {
        /// "symbol" or "venue".
        kind: &'static str,
        /// The rejected input.
        value: String,
        /// The first offending character.
        bad: char,
        /// The allowed set, in words.
        allowed: &'static str,
    },
}

fn check(
    kind: &'static str,
    value: &str,
    max: usize,
    ok: fn(char) -> bool,
    allowed: &'static str,
) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if let Some(bad) = value.chars().find(|c| !ok(*c)) {
        return Err(NameError::BadChar {
            kind,
            value: value.to_owned(),
            bad,
            allowed,
        });
    }
    if value.len() > max {
        return Err(NameError::TooLong {
            kind,
            value: value.to_owned(),
            max,
        });
    }
    Ok(())
}

/// An exchange symbol such as `BTCUSDT`: upper-case `A-Z` and `0-9` only, 1 to 20 characters.
///
/// ```
/// use klinebus_schemas::Symbol;
/// assert_eq!("BTCUSDT".parse::<Symbol>().unwrap().as_str(), "BTCUSDT");
/// assert!("btc.usdt".parse::<Symbol>().is_err());
/// assert!("BTC*".parse::<Symbol>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Symbol(String);

impl Symbol {
    /// Validates `value` as a symbol.
    pub fn new(value: &str) -> Result<Self, NameError> {
        check(
            "symbol",
            value,
            MAX_SYMBOL_LEN,
            |c| c.is_ascii_uppercase() || c.is_ascii_digit(),
            "upper-case letters A-Z and digits 0-9",
        )?;
        Ok(Self(value.to_owned()))
    }

    /// The symbol as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a comma-separated list such as `BTCUSDT,ETHUSDT` (spaces around items allowed,
    /// duplicates removed, order kept).
    pub fn parse_list(list: &str) -> Result<Vec<Self>, NameError> {
        let mut out: Vec<Self> = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let s = Self::new(item)?;
            if !out.contains(&s) {
                out.push(s);
            }
        }
        Ok(out)
    }
}

impl FromStr for Symbol {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Symbol {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<Symbol> for String {
    fn from(s: Symbol) -> Self {
        s.0
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Symbol {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A venue (exchange) name such as `binance`: lower-case `a-z`, `0-9` and `_`, 1 to 16 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Venue(String);

impl Venue {
    /// Validates `value` as a venue name.
    pub fn new(value: &str) -> Result<Self, NameError> {
        check(
            "venue",
            value,
            MAX_VENUE_LEN,
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_',
            "lower-case letters a-z, digits 0-9 and '_'",
        )?;
        Ok(Self(value.to_owned()))
    }

    /// Binance spot, the venue every klinebus producer speaks today.
    pub fn binance() -> Self {
        Self("binance".to_owned())
    }

    /// The venue as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Venue {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Venue {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<Venue> for String {
    fn from(v: Venue) -> Self {
        v.0
    }
}

impl fmt::Display for Venue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn accepts_real_symbols() {
        for s in [
            "BTCUSDT",
            "ETHBTC",
            "1INCHUSDT",
            "A",
            "ABCDEFGHIJ0123456789",
        ] {
            assert_eq!(Symbol::new(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn rejects_subject_and_sql_metacharacters() {
        for s in [
            "", "btcusdt", "BTC.USDT", "BTC*", "BTC>", "BTC USDT", "BTC'--", "BTC-USDT", "ÄBC",
        ] {
            assert!(Symbol::new(s).is_err(), "{s:?} accepted");
        }
        assert!(matches!(
            Symbol::new("ABCDEFGHIJ0123456789X"),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn error_names_the_bad_character() {
        let e = Symbol::new("BTC.USDT").unwrap_err().to_string();
        assert!(e.contains("'.'"), "{e}");
    }

    #[test]
    fn parses_lists() {
        let l = Symbol::parse_list(" BTCUSDT, ETHUSDT,,BTCUSDT ").unwrap();
        assert_eq!(l.len(), 2);
        assert!(Symbol::parse_list("BTCUSDT,eth").is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: Result<Symbol, _> = serde_json::from_str("\"BTCUSDT\"");
        assert!(ok.is_ok());
        let bad: Result<Symbol, _> = serde_json::from_str("\"BTC.*\"");
        assert!(bad.is_err());
    }

    #[test]
    fn venues() {
        assert!(Venue::new("binance").is_ok());
        assert!(Venue::new("Binance").is_err());
        assert!(Venue::new("bin.ance").is_err());
    }
}
