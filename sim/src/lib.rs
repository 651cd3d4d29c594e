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
//! - [`archive`]: Binance's public kline archive (data.binance.vision) on the same port:
//!   `file` (names, periods), `build` (CSV + zip + CHECKSUM, fault variants), `cache` (LRU by
//!   bytes), `fault` (per-file faults), `http` (the routes).
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
//! ## Kline archive
//!
//! Binance's bulk history, laid out as data.binance.vision lays it out, on the REST port
//! (point a client's archive base URL at [`SimHandle::base_url`]):
//!
//! - `GET /data/spot/monthly/klines/<SYM>/<iv>/<SYM>-<iv>-YYYY-MM.zip` for every interval (the
//!   month is `1mo`, the API's `1M`), `GET /data/spot/daily/klines/<SYM>/<iv>/<SYM>-<iv>-YYYY-MM-DD.zip`
//!   for 1s … 1d, and `<same>.zip.CHECKSUM` (`<sha256 hex>  <SYM>-<iv>-….zip\n`, as `sha256sum`).
//! - One CSV inside, named like the zip, no header, `\n` line ends, the twelve REST fields with
//!   REST's 8-decimal strings: exactly the candles REST returns for the period (open time in
//!   it), all closed; gaps, halts and the time before listing have no rows. Files of periods
//!   from 2025-01-01 on carry open/close times in microseconds (close = ms·1000 + 999), older
//!   ones milliseconds. Same seed, same bytes (fixed zip time and deflate level 1).
//! - Published on the sim clock: day D at D+1 00:00 UTC + `--archive-daily-lag` (default
//!   8h30m), month M on the 1st of M+1 + `--archive-monthly-lag` (default 3d); a 3d or 1w
//!   candle running past the period's end delays its file until it closed. Both are settable at
//!   run time (`archive_daily_lag_ms` / `archive_monthly_lag_ms` in `POST /_sim/faults`, or
//!   [`Archive::set_daily_lag`]).
//! - 404 with S3's `NoSuchKey` XML for anything unpublished, empty (no candle in the period),
//!   malformed, for an unknown or delisted symbol (as REST's -1121), or for any other path
//!   under `/data/`. No request weight is charged and REST faults (5xx, 429, delays) do not
//!   apply: on Binance this is a separate static host.
//! - Built files are cached, least recently used evicted past `--archive-cache-mb` (default
//!   1024; the 240 monthly 1m files of 4 symbols × 5 years take about 770 MiB). A 1m month
//!   builds in about 50 ms (release, one core; `cargo run --release -p binance-sim --example
//!   archive_build`), a cached one is served in microseconds. `POST /_sim/archive/prewarm`
//!   (`{"symbols": [...], "intervals": ["1m"], "kind": "monthly"|"daily", "from": "2021-01",
//!   "to": "2025-12"}`, symbols default all) builds a set ahead, one worker per core, and
//!   answers when done with counts (`built`, `cached`, `unpublished`, `not_found`, `evicted`)
//!   and `elapsed_ms`; `GET /_sim/archive` shows lags, cache and build counters.
//! - Faults, one per file, at start-up (`--archive-fault FILE=KIND[:N]`) and at run time
//!   (`POST /_sim/faults` with `add_archive_faults`, `remove_archive_faults`,
//!   `clear_archive_faults`; listed in `GET /_sim/faults` as `archive_faults`):
//!   `missing` (404 for zip and CHECKSUM), `bad_checksum` (CHECKSUM names another hash),
//!   `truncated_zip` (bytes cut after `keep_bytes`, default half: a broken zip),
//!   `missing_rows` (a valid zip with the first `keep_rows` rows, default half),
//!   `duplicate_rows` (the first `rows` rows, default all, `copies` times each, default 3),
//!   `wrong_values` (`rows` candles, default 1, with another close inside their high–low).
//!   All but `bad_checksum` are published with the checksum of the bytes served; clearing a
//!   fault re-publishes the correct file with its own checksum. A fault is
//!   `{"file": "BTCUSDT-1m-2024-06.zip", "kind": "missing_rows", "keep_rows": 100}` (a name or
//!   a `data/spot/…` path), or `"symbol"`, `"interval"`, `"period"` instead of `"file"`.
//!   Cached bytes are keyed by the fault and by the gaps and halts touching the file, so a
//!   change of either is never answered from stale bytes.
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
pub mod usage;
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
pub use usage::{IpUsage, MinuteUsage, UsageReport};
