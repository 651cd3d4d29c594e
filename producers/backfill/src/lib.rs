//! # kline-backfill: historical Binance klines → `klines.backfill.binance.<SYMBOL>.<tf>`
//!
//! - [`config`]: flags and environment (`TRADING_PAIRS`, `TIMEFRAMES`, `BINANCE_REST_URL`, …).
//! - [`archive`]: history from Binance's public archive (monthly and daily zipped CSV files,
//!   checksum-verified), REST for today and for whatever a file lacks (`--source`).
//! - [`flow`]: publishing waits while the sink lags by more than the stream can hold.
//! - [`plan`]: one window of open times per (symbol, timeframe); the forming candle excluded.
//! - [`resume`]: what the `KLINES` stream already holds, so a re-run fetches only the rest.
//! - `series`: one series — REST pages of 1000 by startTime, closed candles only, many publish acks
//!   in flight (awaited a page at a time, republishing what a broker restart left
//!   unacknowledged for about a minute before the series fails), exchange gaps recorded.
//! - [`run`](mod@run): [`run()`] for the binary, [`run_backfill`] for benchmarks and tests.
//! - [`summary`]: per-series outcome, `Success: X/Y`, `Errors: Z/Y`, exit code.
//! - [`verify`]: waiting until a sink's durable consumer has consumed everything.
//!
//! Delivery: candles are published a page (up to 1000, `kline-page/1`) per message, whose
//! `Nats-Msg-Id` names the page's first and last candle, so a re-publication inside the
//! stream's duplicate window is dropped by the server; a re-run publishes only open
//! times the stream lacks (see [`resume`]), so it adds nothing for the sinks.

pub mod archive;
pub mod config;
pub mod flow;
pub mod plan;
pub mod progress;
pub mod resume;
pub mod run;
mod series;
pub mod summary;
pub mod verify;

pub use archive::{ArchiveSource, Fetch};
pub use config::{Config, ProgressMode, SourceMode};
pub use flow::FlowGuard;
pub use plan::{Plan, SeriesPlan, Window};
pub use run::{run, run_backfill, BackfillError, RunOptions, RunResult, VerifyError};
pub use summary::{ExchangeGap, FileFault, SeriesReport, Status, Summary};
