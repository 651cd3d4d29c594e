//! Non-empty, validated lists of symbols and intervals as operators type them
//! (`BTCUSDT,ETHUSDT`, `15m,1h`): the parsers every binary's `--symbols` / `--timeframes` use.

use crate::{Interval, Symbol};

/// A validated, non-empty list of symbols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolList(pub Vec<Symbol>);

/// A validated, non-empty list of intervals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalList(pub Vec<Interval>);

/// Parses `BTCUSDT,ETHUSDT` (usable as a clap `value_parser`).
pub fn parse_symbol_list(s: &str) -> Result<SymbolList, String> {
    let list = Symbol::parse_list(s).map_err(|e| e.to_string())?;
    if list.is_empty() {
        return Err("no symbols given (e.g. BTCUSDT,ETHUSDT)".into());
    }
    Ok(SymbolList(list))
}

/// Parses `15m,1h,4h,1d` (usable as a clap `value_parser`).
pub fn parse_interval_list(s: &str) -> Result<IntervalList, String> {
    let list = Interval::parse_list(s).map_err(|e| e.to_string())?;
    if list.is_empty() {
        return Err("no timeframes given (e.g. 15m,1h,4h,1d)".into());
    }
    Ok(IntervalList(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_validated_and_non_empty() {
        assert_eq!(
            parse_symbol_list("BTCUSDT, ETHUSDT").map(|l| l.0.len()),
            Ok(2)
        );
        assert!(parse_symbol_list(" , ").is_err());
        assert!(parse_symbol_list("BTC.USDT").is_err());
        assert_eq!(parse_interval_list("1m,1h").map(|l| l.0.len()), Ok(2));
        assert!(parse_interval_list("").is_err());
        assert!(parse_interval_list("2m").is_err());
    }
}
