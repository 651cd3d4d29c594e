//! Grafana's read-only PostgreSQL role, created by compose's `grafana-db-role` job: the real
//! `compose/postgres/grafana-reader.sql` run with psql against a fresh migrated database on this
//! machine's PostgreSQL (as the job runs it, under a role name of the test's own: roles are
//! server-wide).
//!
//! - the role logs in and reads what the dashboard shows (`ingestion_status`, `ohlcv_candles`);
//! - with its read-only default switched off, as any session may, INSERT, UPDATE, DELETE,
//!   TRUNCATE, CREATE TABLE, CREATE SCHEMA, and reading any other table are refused for want of
//!   privilege (SQLSTATE 42501), and the role holds no attribute beyond LOGIN;
//! - its password is the file's (SCRAM), an empty file fails the script, and running the script
//!   again (every compose `up`) changes nothing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/postgres/grafana-reader.sql")
}

/// psql on `db` as the admin user with the script, the role `role` and the password file.
fn run_script(db: &klinebus_testkit::TestDb, role: &str, password_file: &Path) -> Output {
    let output = Command::new("psql")
        .args(["-q", "-v", &format!("role={role}"), "-d", &db.url, "-f"])
        .arg(script())
        .env("GRAFANA_DB_PASSWORD_FILE", password_file)
        .env("PGCONNECT_TIMEOUT", "5")
        .output();
    match output {
        Ok(o) => o,
        Err(e) => {
            panic!("cannot run psql (PostgreSQL's client; scripts/services installs it): {e}")
        }
    }
}

/// The SQLSTATE of a refused statement.
async fn refused(conn: &mut PgConnection, sql: &str) -> String {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
    {
        Ok(_) => panic!("allowed: {sql}"),
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()).unwrap_or_default(),
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[tokio::test]
async fn the_grafana_role_reads_the_dashboard_tables_and_nothing_more() {
    let db = klinebus_testkit::TestDb::fresh().await;
    let role = format!("kb_test_grafana_{}", db.name.trim_start_matches("kb_test_"));
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let password = dir.path().join("postgres_grafana_password");
    std::fs::write(&password, "grafana-test-password\n").unwrap();

    // An empty password would silently clear it: the script refuses.
    let out = run_script(&db, &role, &empty);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..2 {
        let out = run_script(&db, &role, &password);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    sqlx::query(
        "INSERT INTO ingestion_status (symbol, timeframe, ingestion_mode, status)
         VALUES ('BTCUSDT', '1m', 'websocket', 'ok')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (superuser, attributes, password_hash): (bool, bool, Option<String>) = sqlx::query_as(
        "SELECT rolsuper, rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls
                OR rolinherit, rolpassword
         FROM pg_authid WHERE rolname = $1 AND rolcanlogin",
    )
    .bind(&role)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(!superuser && !attributes);
    assert!(password_hash.is_some_and(|h| h.starts_with("SCRAM-SHA-256$")));

    let url: PgConnectOptions = db.url.parse().unwrap();
    let mut conn = url
        .username(&role)
        .password("grafana-test-password")
        .connect()
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ingestion_status")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ohlcv_candles")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
    // Read-only by default (25006) …
    assert_eq!(
        refused(&mut conn, "DELETE FROM ingestion_status").await,
        "25006"
    );
    // … and, with that guard off, refused by the grants themselves.
    sqlx::raw_sql("SET default_transaction_read_only = off")
        .execute(&mut conn)
        .await
        .unwrap();
    for sql in [
        "INSERT INTO ohlcv_candles (symbol, timeframe, \"timestamp\") VALUES ('X', '1m', 0)",
        "UPDATE ingestion_status SET status = 'x'",
        "DELETE FROM ingestion_status",
        "DELETE FROM ohlcv_candles",
        "TRUNCATE ohlcv_candles",
        "CREATE TABLE public.grafana_was_here (x int)",
        "CREATE SCHEMA grafana_was_here",
        "SELECT count(*) FROM signals",
        "SELECT count(*) FROM _sqlx_migrations",
    ] {
        assert_eq!(refused(&mut conn, sql).await, "42501", "{sql}");
    }
    conn.close().await.unwrap();

    // Roles outlive databases: remove this one's grants, then the role.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP OWNED BY {role}")))
        .execute(&db.pool)
        .await
        .unwrap();
    let admin = sqlx::PgPool::connect(&klinebus_testkit::admin_url())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(&admin)
        .await
        .unwrap();
}
