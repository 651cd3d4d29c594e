//! The PostgreSQL schema, as sqlx migrations embedded at compile time.
//!
//! The `.sql` files sit beside this crate's `Cargo.toml` (`migrations/NNNN_name.sql`), so
//! `sqlx migrate run --source migrations` works on them too. Binaries call [`run`] at start-up;
//! sqlx takes a Postgres advisory lock while migrating, so several instances may start at once.

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::PgPool;

/// Every migration, embedded.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Applies pending migrations (idempotent; safe to race with other instances).
pub async fn run(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}
