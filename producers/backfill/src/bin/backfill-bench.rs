//! `backfill-bench`: see `kline_backfill::bench`. Run with `--release`.

use clap::Parser;
use kline_backfill::bench::{run_bench, BenchArgs};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    klinebus_svc::init_tracing();
    run_bench(BenchArgs::parse()).await
}
