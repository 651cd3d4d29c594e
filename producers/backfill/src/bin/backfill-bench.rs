//! `backfill-bench`: see `kline_backfill::bench`. Run with `--release`.

use clap::Parser;
use kline_backfill::bench::{run_bench, BenchArgs};

// The allocator of the binary it measures.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    klinebus_svc::init_tracing();
    run_bench(BenchArgs::parse()).await
}
