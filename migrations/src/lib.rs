//! The PostgreSQL schema, as sqlx migrations embedded at compile time.
//!
//! The `.sql` files sit beside this crate's `Cargo.toml` (`migrations/NNNN_name.sql`), so
//! `sqlx migrate run --source migrations` works on them too. Binaries call [`run`] at start-up;
//! sqlx takes a Postgres advisory lock while migrating, so several instances may start at once.

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::PgPool;
use std::borrow::Cow;

/// Every migration, embedded.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Applies pending migrations (idempotent; safe to race with other instances).
pub async fn run(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}

/// Applies the pending migrations numbered up to `version` only (tests and benchmarks that need
/// the schema as it was, e.g. `ohlcv_candles` before partitioning at 7); [`run`] applies the rest
/// later.
pub async fn run_up_to(pool: &PgPool, version: i64) -> Result<(), MigrateError> {
    let subset: Vec<_> = MIGRATOR
        .iter()
        .filter(|m| m.version <= version)
        .cloned()
        .collect();
    let migrator = Migrator {
        migrations: Cow::Owned(subset),
        ..Migrator::DEFAULT
    };
    migrator.run(pool).await
}
