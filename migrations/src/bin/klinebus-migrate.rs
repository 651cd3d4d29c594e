//! Applies the klinebus PostgreSQL migrations to `DATABASE_URL` (used by `scripts/services`
//! and the compose migration job; the sinks also migrate at start-up unless told not to).

use anyhow::Context;
use clap::Parser;

/// Apply pending klinebus schema migrations (idempotent).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// PostgreSQL connection URL (sslmode and credentials as URL parameters).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/klinebus",
        hide_env_values = true
    )]
    database_url: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = sqlx::PgPool::connect(&args.database_url)
        .await
        .context("cannot connect to the database")?;
    klinebus_migrations::run(&pool)
        .await
        .context("migration failed")?;
    let applied = klinebus_migrations::MIGRATOR.iter().count();
    eprintln!("klinebus-migrate: schema up to date ({applied} migrations)");
    Ok(())
}
