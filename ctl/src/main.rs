//! `klinectl`: parse, run one command, print, exit with its code.

use std::process::ExitCode;

use clap::Parser;
use klinectl::cli::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    klinebus_svc::init_tracing();
    let cli = Cli::parse();
    match klinectl::run(cli).await {
        Ok(out) => {
            print!("{}", out.output);
            ExitCode::from(out.code)
        }
        Err(e) => {
            eprintln!("klinectl: {}", klinebus_svc::error_line(&e));
            ExitCode::from(2)
        }
    }
}
