//! `binance-sim`: a Binance-compatible spot market-data exchange for tests, demos and benchmarks.
//!
//! It speaks Binance's REST (`/api/v3/ping|time|exchangeInfo|klines|uiKlines`) and WebSocket
//! (`/ws/<stream>`, `/stream?streams=`) protocols on one port, with real weights, limits, bans,
//! ping/pong rules and error bodies, and serves deterministic candles that can be checked to the
//! last digit. It shares no code with the producers, so a shared bug cannot pass every test.
//!
//! Map:
//! - [`market`]: the data model ([`Market::klines`]); `gen` (1m base series), `split` (1s
//!   candles), `agg` (aggregation), [`interval`] (calendar alignment), [`symbols`].
//! - [`clock`]: the one simulated clock; [`config`]: flags; [`faults`]: fault injection.
//! - `rest`, `ws`, `admin` (`/_sim/...`), `weights` (per-IP limits); `server`: [`run`],
//!   [`serve`], [`spawn`].
//!
//! Symbols have a lifecycle, switchable at run time (`POST /_sim/symbols`, or [`Market::halt`]
//! and friends in-process): a symbol can be listed (its first candle at its listing time, which
//! may be in the past), halted (`BREAK` in exchangeInfo), resumed, and delisted (gone from
//! exchangeInfo; REST answers -1121 "Invalid symbol."; its streams go silent, other streams on
//! the same connection carry on). A halt takes effect at the next minute boundary and leaves no
//! candles at all until the resume's minute, in REST and WebSocket alike: with the matching
//! engine stopped for the symbol there are no trades to form candles from, the same "real gap
//! with no rows" as an exchange outage (Binance's zero-trade rows with the price repeated are
//! for a trading symbol that simply had no trades). A coarser candle holding minutes from before
//! the halt still closes when its time is up. `POST /_sim/ws/shutdown` sends Binance's
//! `serverShutdown` event on every connection and closes each a grace period later.
//!
//! Decisions where Binance's documentation is silent: `limit` outside 1..=1000 and a bad
//! `timeZone` get -1130 "Data sent for parameter '…' is not valid."; startTime > endTime gets
//! -1023; unknown paths get 404 with an empty body; refused WS upgrades get 503.

mod admin;
mod agg;
pub mod archive;
mod candle;
pub mod clock;
pub mod config;
mod error;
pub mod faults;
mod format;
mod gen;
mod hash;
pub mod interval;
pub mod market;
mod rest;
mod server;
mod split;
pub mod symbols;
mod weights;
mod ws;

pub use archive::{
    Archive, ArchiveFault, ArchiveFaultKind, ArchiveFile, ArchiveStats, Period, PrewarmKind,
    PrewarmReport, PrewarmRequest,
};
pub use candle::Kline;
pub use clock::SimClock;
pub use config::Config;
pub use error::SimError;
pub use faults::{FaultPatch, FaultSnapshot, Faults};
pub use interval::Interval;
pub use market::{Gap, Halt, LifecycleError, Market, MarketError, SymbolState, SymbolStatus};
pub use server::{run, serve, spawn, SimHandle};
pub use symbols::SymbolSpec;
