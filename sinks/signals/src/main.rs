//! `kline-signals`: see the library docs (`kline_signals::service`) and `--help`.

use clap::Parser;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = kline_signals::Config::parse();
    klinebus_svc::init_tracing();
    klinebus_svc::exit_with(kline_signals::run(config, klinebus_svc::shutdown_token()).await)
}
