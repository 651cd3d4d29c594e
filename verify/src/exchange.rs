//! What the exchange says about a symbol's life, recorded in PostgreSQL by whoever talks to the
//! exchange (kline-backfill, `klinectl verify --repair`) because verification reads only the
//! database:
//! - `symbol_listings`: the first candle per (symbol, timeframe) on the exchange. A series'
//!   history starts there; nothing before it is missing.
//! - `symbol_status`: the latest trading status seen per symbol (exchangeInfo's `status`, or
//!   [`DELISTED`] when the symbol is absent from exchangeInfo).
//!
//! Every `record_*` function is idempotent: recording the same observation twice changes nothing.

use klinebus_schemas::{Interval, Symbol};
use serde::Serialize;
use sqlx::PgPool;

/// exchangeInfo's status of a symbol that trades.
pub const TRADING: &str = "TRADING";
/// The status recorded for a symbol that exchangeInfo no longer lists (Binance has no word for
/// it: the symbol just disappears, and REST answers -1121 "Invalid symbol.").
pub const DELISTED: &str = "DELISTED";

/// The first candle of a series on the exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// Symbol.
    pub symbol: String,
    /// Timeframe (Binance interval name).
    pub timeframe: String,
    /// Open time of the first candle (epoch ms).
    pub first_open_time: i64,
}

/// Records the first candle of `symbol`/`interval` on the exchange. The exchange's latest
/// answer wins (its first candle does not change, so a repeat changes nothing).
pub async fn record_listing(
    pool: &PgPool,
    symbol: &Symbol,
    interval: Interval,
    first_open_time: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO symbol_listings (symbol, timeframe, first_open_time) VALUES ($1, $2, $3)
         ON CONFLICT (symbol, timeframe) DO UPDATE
           SET first_open_time = EXCLUDED.first_open_time, recorded_at = now()
           WHERE symbol_listings.first_open_time <> EXCLUDED.first_open_time",
    )
    .bind(symbol.as_str())
    .bind(interval.as_str())
    .bind(first_open_time)
    .execute(pool)
    .await?;
    Ok(())
}

/// The recorded first candle's open time of `symbol`/`interval`, if any.
pub async fn listing(
    pool: &PgPool,
    symbol: &Symbol,
    interval: Interval,
) -> Result<Option<i64>, sqlx::Error> {
    listing_of(pool, symbol.as_str(), interval).await
}

pub(crate) async fn listing_of(
    pool: &PgPool,
    symbol: &str,
    interval: Interval,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT first_open_time FROM symbol_listings WHERE symbol = $1 AND timeframe = $2",
    )
    .bind(symbol)
    .bind(interval.as_str())
    .fetch_optional(pool)
    .await
}

/// Every recorded listing, by symbol then timeframe.
pub async fn listings(pool: &PgPool) -> Result<Vec<Listing>, sqlx::Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT symbol, timeframe, first_open_time FROM symbol_listings ORDER BY symbol, timeframe",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(symbol, timeframe, first_open_time)| Listing {
            symbol,
            timeframe,
            first_open_time,
        })
        .collect())
}

/// The latest trading status seen for a symbol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExchangeStatus {
    /// Symbol.
    pub symbol: String,
    /// exchangeInfo's status (`TRADING`, `BREAK`, `HALT`, …) or [`DELISTED`].
    pub status: String,
    /// When it was last seen (epoch ms, the exchange's clock).
    pub observed_at: i64,
    /// When this status was first seen, in the run of observations with the same status.
    pub since: i64,
}

impl ExchangeStatus {
    /// True when the symbol trades (candles keep forming).
    pub fn is_trading(&self) -> bool {
        self.status == TRADING
    }
}

/// Records that `symbol` had `status` at `observed_at` (epoch ms, the exchange's clock). An
/// observation older than the recorded one is ignored, so racing recorders converge; `since`
/// stays while the status stays the same.
pub async fn record_symbol_status(
    pool: &PgPool,
    symbol: &Symbol,
    status: &str,
    observed_at: i64,
) -> Result<(), sqlx::Error> {
    // In SET, `symbol_status.*` is the row before the update.
    sqlx::query(
        "INSERT INTO symbol_status (symbol, status, observed_at, since) VALUES ($1, $2, $3, $3)
         ON CONFLICT (symbol) DO UPDATE
           SET since = CASE WHEN symbol_status.status = EXCLUDED.status
                            THEN symbol_status.since ELSE EXCLUDED.observed_at END,
               status = EXCLUDED.status,
               observed_at = EXCLUDED.observed_at
           WHERE symbol_status.observed_at <= EXCLUDED.observed_at",
    )
    .bind(symbol.as_str())
    .bind(status)
    .bind(observed_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// The latest status recorded for `symbol`, if any.
pub async fn symbol_status(
    pool: &PgPool,
    symbol: &Symbol,
) -> Result<Option<ExchangeStatus>, sqlx::Error> {
    status_of(pool, symbol.as_str()).await
}

pub(crate) async fn status_of(
    pool: &PgPool,
    symbol: &str,
) -> Result<Option<ExchangeStatus>, sqlx::Error> {
    let row: Option<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT symbol, status, observed_at, since FROM symbol_status WHERE symbol = $1",
    )
    .bind(symbol)
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map(|(symbol, status, observed_at, since)| ExchangeStatus {
            symbol,
            status,
            observed_at,
            since,
        }),
    )
}

/// Every recorded symbol status, by symbol.
pub async fn symbol_statuses(pool: &PgPool) -> Result<Vec<ExchangeStatus>, sqlx::Error> {
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT symbol, status, observed_at, since FROM symbol_status ORDER BY symbol",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(symbol, status, observed_at, since)| ExchangeStatus {
            symbol,
            status,
            observed_at,
            since,
        })
        .collect())
}
