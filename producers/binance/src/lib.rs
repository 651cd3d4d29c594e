//! # klinebus-binance: the Binance side of the producers
//!
//! - [`rest`]: [`RestClient`] — `time`, `exchangeInfo`, `klines`, with retries by error kind.
//! - [`limiter`]: [`WeightLimiter`] — one REQUEST_WEIGHT budget shared (`Arc`) by every
//!   concurrent request of a process, synced with `X-MBX-USED-WEIGHT-1M`, honouring 429/418.
//! - [`connect`]: [`ConnectBudget`] — WebSocket connection attempts per 5 minutes, shared by
//!   every connection of a process, under Binance's 300 per IP.
//! - [`kline`]: [`RestKline`] — strict parsing of the 12-entry REST rows and conversion to
//!   [`klinebus_schemas::KlineEvent`].
//! - [`ws`]: [`KlineSocket`] — combined kline streams, stream names, sharding (≤ 1024 per
//!   connection); [`ws_event`]: strict frame parsing into validated events.
//! - [`archive`]: [`ArchiveClient`] — the public kline archive (data.binance.vision):
//!   paths, checksum-verified downloads, streamed CSV rows.
//! - [`error`]: [`BinanceError`] kinds with [`BinanceError::is_retryable`].
//!
//! This crate knows HTTP and Binance, never NATS: publishing is the producers' job.
//!
//! ```no_run
//! # async fn demo() -> Result<(), klinebus_binance::BinanceError> {
//! use std::sync::Arc;
//! use klinebus_binance::{RestClient, RestConfig, WeightLimiter};
//! use klinebus_schemas::{Interval, Source};
//!
//! let client = RestClient::new(RestConfig::default(), Arc::new(WeightLimiter::default()))?;
//! let now = client.server_time().await?;
//! let sym = "BTCUSDT".parse().expect("valid symbol");
//! let rows = client.klines(&sym, Interval::H1, Some(now - 86_400_000), None, 1000).await?;
//! let closed: Vec<_> = rows
//!     .iter()
//!     .filter(|r| r.is_closed(now))
//!     .map(|r| r.to_event(&sym, Interval::H1, Source::Backfill, now, now))
//!     .collect::<Result<_, _>>()?;
//! # let _ = closed; Ok(()) }
//! ```

pub mod archive;
pub mod connect;
pub mod error;
pub mod kline;
pub mod limiter;
pub mod rest;
pub mod ws;
pub mod ws_event;

pub use archive::{ArchiveClient, ArchiveError, ArchiveFile, Period};
pub use connect::{ConnectBudget, BINANCE_CONNECT_LIMIT, DEFAULT_CONNECT_BUDGET};
pub use error::BinanceError;
pub use kline::{parse_klines, RestKline};
pub use limiter::{WeightLimiter, BINANCE_WEIGHT_LIMIT, DEFAULT_BUDGET};
pub use rest::{
    RestClient, RestConfig, RetryPolicy, SymbolStatus, DEFAULT_REST_URL, MAX_KLINES_LIMIT,
};
pub use ws::{KlineSocket, WsItem, DEFAULT_WS_URL, MAX_STREAMS_PER_CONNECTION};
pub use ws_event::{parse_frame, Frame, FrameError, WsKline};
