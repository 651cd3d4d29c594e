//! `DbArgs::connect_waiting` against the machine's PostgreSQL: a login it refuses ends the wait
//! at once, a server not listening is waited for until shutdown.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use clap::Parser;
use klinebus_svc::DbArgs;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    db: DbArgs,
}

fn db(url: &str) -> DbArgs {
    Args::parse_from(["test", "--database-url", url]).db
}

fn options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn a_refused_login_is_not_waited_out() {
    // Fails, saying what to start, when the machine's PostgreSQL is not running.
    let existing = klinebus_testkit::TestDb::fresh().await;
    let (_, rest) = existing.url.split_once("://").unwrap();
    let (_, at) = rest.split_once('@').unwrap_or(("", rest));
    let url = format!("postgres://klinebus_no_such_role@{at}");
    let stop = CancellationToken::new();
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        db(&url).connect_waiting(options(), &stop),
    )
    .await
    .expect("a refused login is not waited out");
    let e = refused.expect_err("no such role");
    assert!(e.is_lasting(), "{e:?}");
    let text = klinebus_svc::error_line(&e);
    assert!(text.contains("klinebus_no_such_role"), "{text}");
}

#[tokio::test]
async fn a_server_not_listening_is_waited_for_until_shutdown() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = db(&format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    let stop = CancellationToken::new();
    let waiting = {
        let stop = stop.clone();
        tokio::spawn(async move { args.connect_waiting(options(), &stop).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "gave up on a server that is not up");
    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("shutdown ends the wait")
        .unwrap();
    assert!(matches!(ended, Ok(None)), "{ended:?}");
}
