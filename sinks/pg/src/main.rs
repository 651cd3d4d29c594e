//! `kline-pg-sink`: see the library docs and `--help`.

use clap::Parser;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = kline_pg_sink::Config::parse();
    klinebus_svc::init_tracing();
    klinebus_svc::exit_with(kline_pg_sink::run(config, klinebus_svc::shutdown_token()).await)
}
