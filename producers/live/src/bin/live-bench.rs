//! `live-bench`: see `kline_live::bench`. Run with `--release`; `--mode latency` measures the
//! whole pipeline (exchange event → row committed in PostgreSQL).

use clap::Parser;
use kline_live::bench::{run_bench, BenchArgs};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    klinebus_svc::init_tracing();
    run_bench(BenchArgs::parse()).await
}
