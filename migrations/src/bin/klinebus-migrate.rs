//! Applies the klinebus PostgreSQL migrations to `DATABASE_URL` (used by `scripts/services`
//! and the compose migration job; the sinks also migrate at start-up unless told not to).

use anyhow::Context;
use clap::Parser;

/// Apply pending klinebus schema migrations (idempotent).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    db: klinebus_svc::DbArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    klinebus_svc::exit_with(migrate(Args::parse()).await)
}

async fn migrate(args: Args) -> anyhow::Result<()> {
    // With several hosts, the read-write one.
    let pool = args
        .db
        .connect(sqlx::postgres::PgPoolOptions::new())
        .await
        .context("cannot connect to the database")?;
    klinebus_migrations::run(&pool)
        .await
        .context("migration failed")?;
    let applied = klinebus_migrations::MIGRATOR.iter().count();
    eprintln!("klinebus-migrate: schema up to date ({applied} migrations)");
    Ok(())
}
