//! `kline-live`: see `kline-live --help` and the library docs.

use clap::Parser;
use kline_live::Config;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A missing .env is fine; a broken one is worth a word.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("warning: cannot read .env: {e}");
        }
    }
    let config = Config::parse();
    klinebus_svc::init_tracing();
    klinebus_svc::exit_with(kline_live::run(config, klinebus_svc::shutdown_token()).await)
}
