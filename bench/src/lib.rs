//! # klinebus-bench: the benchmark programs
//!
//! Each binary measures one part of the pipeline against an in-process binance-sim, a private
//! nats-server and a throwaway database (both from `klinebus-testkit`), never the machine's
//! klinebus data:
//!
//! - `live-bench`: kline-live's CPU, memory and publish latency, or the whole pipeline's
//!   exchange event → committed row latency (`--mode latency`).
//! - `backfill-bench`: kline-backfill's sim REST → NATS ack throughput, or its weight use
//!   against the budget (`--mode limits`).
//! - `pg-sink-bench`: kline-pg-sink's replay of N retained klines into an empty table.
//! - `signals-bench`: kline-signals' per-candle cost, or its whole-sink replay (`replay`).
//!
//! [`harness`] is what they share: percentiles, CPU and peak RSS from `/proc`, child processes.
//! `scripts/bench` runs them all and prints one summary table.

pub mod harness;
