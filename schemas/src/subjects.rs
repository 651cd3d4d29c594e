//! Subject names. Every token that comes from data (venue, symbol, interval) is validated
//! before it gets here, so no subject can contain `.`, `*`, `>` or whitespace by accident.
//!
//! | subject | carries | stream |
//! |---|---|---|
//! | `klines.<source>.<venue>.<symbol>.<interval>` | [`KlineEvent`](crate::KlineEvent) from producers | `KLINES` |
//! | `candles.closed.<venue>.<symbol>.<interval>` | closed candles committed to Postgres, one [`ClosedCandles`](crate::ClosedCandles) message per series and flush | `CANDLES` |
//! | `signals.<venue>.<symbol>.<interval>` | computed signals | `SIGNALS` |
//! | `dlq.<consumer>` | messages a sink could not use, with the reason in a header | `DLQ` |

use crate::{Interval, KlineEvent, Source, Symbol, Venue};

/// Prefix of every producer subject.
pub const KLINES_PREFIX: &str = "klines";
/// Prefix of post-commit closed-candle events.
pub const CLOSED_PREFIX: &str = "candles.closed";
/// Prefix of signal events.
pub const SIGNALS_PREFIX: &str = "signals";
/// Prefix of dead-letter subjects.
pub const DLQ_PREFIX: &str = "dlq";

/// `klines.<source>.<venue>.<symbol>.<interval>`
///
/// ```
/// use klinebus_schemas::{subjects, Interval, Source, Venue};
/// let s = subjects::kline(Source::Ws, &Venue::binance(), &"BTCUSDT".parse().unwrap(), Interval::M1);
/// assert_eq!(s, "klines.ws.binance.BTCUSDT.1m");
/// ```
pub fn kline(source: Source, venue: &Venue, symbol: &Symbol, interval: Interval) -> String {
    // Built by hand: it is made for every live event, and `format!` costs twice as much.
    let parts = [
        KLINES_PREFIX,
        source.as_str(),
        venue.as_str(),
        symbol.as_str(),
        interval.as_str(),
    ];
    let mut s = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        s.push_str(p);
    }
    s
}

/// The subject an event is published on.
pub fn for_event(e: &KlineEvent) -> String {
    kline(e.source, &e.venue, &e.symbol, e.interval)
}

/// `candles.closed.<venue>.<symbol>.<interval>`
pub fn closed(venue: &Venue, symbol: &Symbol, interval: Interval) -> String {
    format!("{CLOSED_PREFIX}.{venue}.{symbol}.{interval}")
}

/// `signals.<venue>.<symbol>.<interval>`
pub fn signals(venue: &Venue, symbol: &Symbol, interval: Interval) -> String {
    format!("{SIGNALS_PREFIX}.{venue}.{symbol}.{interval}")
}

/// `dlq.<consumer>`; the consumer name must be a valid subject token.
pub fn dlq(consumer: &str) -> String {
    format!("{DLQ_PREFIX}.{consumer}")
}

/// Filter for a subset of producer subjects; `None` means "any" for that token.
///
/// ```
/// use klinebus_schemas::subjects::KlineFilter;
/// use klinebus_schemas::Source;
/// assert_eq!(KlineFilter::default().subject(), "klines.>");
/// let live = KlineFilter { source: Some(Source::Ws), ..Default::default() };
/// assert_eq!(live.subject(), "klines.ws.>");
/// let btc = KlineFilter { symbol: Some("BTCUSDT".parse().unwrap()), ..Default::default() };
/// assert_eq!(btc.subject(), "klines.*.*.BTCUSDT.>");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KlineFilter {
    /// Only this source.
    pub source: Option<Source>,
    /// Only this venue.
    pub venue: Option<Venue>,
    /// Only this symbol.
    pub symbol: Option<Symbol>,
    /// Only this interval.
    pub interval: Option<Interval>,
}

impl KlineFilter {
    /// The NATS filter subject; trailing "any" tokens collapse into `>`.
    pub fn subject(&self) -> String {
        let mut tokens: Vec<&str> = vec![
            self.source.map_or("*", Source::as_str),
            self.venue.as_ref().map_or("*", Venue::as_str),
            self.symbol.as_ref().map_or("*", Symbol::as_str),
            self.interval.map_or("*", Interval::as_str),
        ];
        while tokens.last() == Some(&"*") {
            tokens.pop();
        }
        if tokens.len() < 4 {
            tokens.push(">");
        }
        format!("{KLINES_PREFIX}.{}", tokens.join("."))
    }
}

/// The parts of a producer subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlineSubject {
    /// Source token.
    pub source: Source,
    /// Venue token.
    pub venue: Venue,
    /// Symbol token.
    pub symbol: Symbol,
    /// Interval token.
    pub interval: Interval,
}

/// Parses `klines.<source>.<venue>.<symbol>.<interval>`; `None` if it is not one.
pub fn parse_kline(subject: &str) -> Option<KlineSubject> {
    let mut it = subject.split('.');
    if it.next()? != KLINES_PREFIX {
        return None;
    }
    let parsed = KlineSubject {
        source: Source::parse(it.next()?)?,
        venue: it.next()?.parse().ok()?,
        symbol: it.next()?.parse().ok()?,
        interval: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some(parsed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip() {
        let s = kline(
            Source::Backfill,
            &Venue::binance(),
            &"ETHUSDT".parse().unwrap(),
            Interval::Mo1,
        );
        assert_eq!(s, "klines.backfill.binance.ETHUSDT.1M");
        let p = parse_kline(&s).unwrap();
        assert_eq!(p.interval, Interval::Mo1);
        assert_eq!(p.source, Source::Backfill);
        assert!(parse_kline("klines.ws.binance.BTCUSDT").is_none());
        assert!(parse_kline("klines.ws.binance.BTCUSDT.1m.x").is_none());
        assert!(parse_kline("klines.xx.binance.BTCUSDT.1m").is_none());
    }

    #[test]
    fn filters() {
        let f = KlineFilter {
            source: Some(Source::Backfill),
            interval: Some(Interval::H1),
            ..Default::default()
        };
        assert_eq!(f.subject(), "klines.backfill.*.*.1h");
    }
}
