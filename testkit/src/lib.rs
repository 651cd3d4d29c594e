//! Helpers for tests and benchmarks, one module a service (a dev-dependency of the services, a normal one only of
//! `klinebus-bench`):
//!
//! - [`NatsServer`]: a private `nats-server -js` on a free port with a temporary store, so each
//!   test owns its streams and can stop/restart the broker for fault injection.
//! - [`TestDb`]: a fresh, migrated PostgreSQL database on the machine's server, dropped afterwards.
//! - [`fixture_candles`] ([`signals`]): the signal tests' committed candle fixture.
//! - [`PgServer`]: a private PostgreSQL cluster (initdb in a temporary directory, on a free
//!   port) that a test may stop and restart without disturbing the machine's shared server,
//!   or SIGKILL after making a streaming standby of it to promote.
//!
//! A missing service is a loud failure that says what to start — never a silent skip: a panic
//! in tests, a [`SetupError`] from the `try_` constructors the benchmark programs use.

mod nats;
mod postgres;
pub mod signals;

use std::net::TcpListener;
use std::time::{Duration, Instant};

pub use nats::{stored_payloads, NatsServer};
pub use postgres::{admin_url, leaf_counts, PgServer, TestDb};
pub use signals::{fixture_candles, FixtureCandle};

/// How to start the services the tests need.
pub const START_HINT: &str =
    "run `scripts/services` (installs and starts nats-server and PostgreSQL, applies migrations)";

/// Why a service could not be set up, with what to start; the panicking constructors panic with
/// the same message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

pub(crate) fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => panic!("no free local port: {e}"),
    }
}

pub(crate) fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn private_nats_with_jetstream() {
        let mut nats = NatsServer::start();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "T".into(),
            subjects: vec!["t.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js.publish("t.a", "x".into()).await.unwrap().await.unwrap();
        nats.restart();
        // The store survives a restart.
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream("T").await.unwrap();
        assert_eq!(s.info().await.unwrap().state.messages, 1);
    }

    #[tokio::test]
    async fn private_postgres_survives_a_restart() {
        let mut pg = PgServer::start();
        let db = TestDb::fresh_on(pg.admin_url()).await;
        sqlx::query("INSERT INTO exchange_gaps (symbol, timeframe, start_time, end_time, candles) VALUES ('X', '1m', 0, 60000, 1)")
            .execute(&db.pool)
            .await
            .unwrap();
        pg.stop();
        // Down: a new connection is refused (the pool would retry until its acquire timeout).
        use sqlx::Connection as _;
        assert!(sqlx::PgConnection::connect(&db.url).await.is_err());
        pg.restart();
        // The pool reconnects; the committed row survived the immediate shutdown.
        let deadline = Instant::now() + Duration::from_secs(10);
        let n: i64 = loop {
            match sqlx::query_scalar("SELECT count(*) FROM exchange_gaps")
                .fetch_one(&db.pool)
                .await
            {
                Ok(n) => break n,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn a_synchronous_standby_takes_over_every_commit() {
        let mut primary = PgServer::start();
        let mut standby = primary.standby(true);
        assert!(standby.in_recovery() && !primary.in_recovery());
        let pool = sqlx::PgPool::connect(&primary.admin_url()).await.unwrap();
        sqlx::query("CREATE TABLE t (n int PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        for n in 0..50 {
            sqlx::query("INSERT INTO t VALUES ($1)")
                .bind(n)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
        primary.kill();
        use sqlx::Connection as _;
        assert!(sqlx::PgConnection::connect(&primary.admin_url())
            .await
            .is_err());
        standby.promote();
        assert!(!standby.in_recovery());
        let pool = sqlx::PgPool::connect(&standby.admin_url()).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 50, "every confirmed commit is on the new primary");
        sqlx::query("INSERT INTO t VALUES (50)")
            .execute(&pool)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn fresh_db_is_migrated() {
        let db = TestDb::fresh().await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('ohlcv_candles','ingestion_status')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(n, 2);
        // No redundant indexes: the key constraints are the only ones.
        let idx: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE tablename IN ('ohlcv_candles','ingestion_status') ORDER BY 1",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            idx,
            [
                "ingestion_status_symbol_timeframe_key",
                "ohlcv_candles_symbol_timeframe_timestamp_key"
            ]
        );
    }
}
