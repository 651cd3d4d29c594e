//! `kline-backfill`: see `kline-backfill --help` and the library docs.

use clap::Parser;
use kline_backfill::Config;

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
    match kline_backfill::run(config, klinebus_svc::shutdown_token()).await {
        Ok(result) => std::process::ExitCode::from(result.exit_code() as u8),
        Err(e) => klinebus_svc::exit_with(Err(e)),
    }
}
