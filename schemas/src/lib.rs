//! # The klinebus wire contract
//!
//! Producers publish [`KlineEvent`]s to JetStream; sinks consume them. This crate is the only
//! place that says what those messages are:
//!
//! - [`symbol`]: [`Symbol`] and [`Venue`], validated before they become subjects or SQL.
//! - [`interval`]: [`Interval`] — every Binance interval, calendar alignment, default history
//!   depth, freshness limits, polling periods.
//! - [`event`]: [`KlineEvent`] and [`Source`]; exact decimal strings; the dedup key.
//! - [`page`]: a page of history (many closed candles of one series) in one message.
//! - [`list`]: non-empty symbol and interval lists for `--symbols` / `--timeframes`.
//! - [`decimal`]: reading the exchange's decimal text without floating point.
//! - [`subjects`]: `klines.<source>.<venue>.<symbol>.<interval>` and the other subjects.
//! - [`streams`]: stream and durable-consumer definitions.
//! - [`codec`]: MessagePack with named fields plus a schema-version header (golden vectors in
//!   `schemas/golden/`, format described in `schemas/README.md`).
//! - [`secret`]: [`Secret`](secret::Secret) and [`ConnUrl`](secret::ConnUrl), whose `Debug` redacts.
//! - `bus` (feature `nats`): creating streams and publishing with `Nats-Msg-Id`.

pub mod closed;
pub mod codec;
pub mod decimal;
pub mod event;
pub mod interval;
pub mod list;
pub mod page;
pub mod secret;
pub mod signal;
pub mod streams;
pub mod subjects;
pub mod symbol;

#[cfg(feature = "nats")]
pub mod bus;

pub use closed::ClosedCandles;
pub use event::{KlineEvent, Source};
pub use interval::Interval;
pub use symbol::{Symbol, Venue};
