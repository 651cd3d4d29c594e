//! Start-up waits against real servers: `connect_bus` (a private nats-server) and
//! `DbArgs::connect_waiting` (the machine's PostgreSQL). A server not up yet is waited for
//! (forever, or within a patience), a refusal that trying again cannot mend is not, and shutdown
//! ends the wait.
#![allow(clippy::unwrap_used)]

use std::fmt::Debug;
use std::time::{Duration, Instant};

use async_nats::ConnectErrorKind;
use clap::Parser;
use klinebus_schemas::bus::{BusError, BusOptions};
use klinebus_svc::{connect_bus, DbArgs};
use klinebus_testkit::NatsServer;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Fires `stop`; the wait must end soon with `Ok(None)`.
async fn shutdown_ends<T: Debug, E: Debug>(
    stop: &CancellationToken,
    waiting: JoinHandle<Result<Option<T>, E>>,
) {
    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("shutdown ends the wait")
        .unwrap();
    assert!(matches!(ended, Ok(None)), "{ended:?}");
}

// --- NATS ---------------------------------------------------------------------------------

const CONFIG: &str = "authorization {\n  user: svc\n  password: right\n}\n";

fn bus_options(server: &NatsServer, password: &str) -> BusOptions {
    let mut o = BusOptions::new(server.url(), "connect-bus-test");
    o.user = Some("svc".into());
    o.password = Some(password.into());
    o
}

#[tokio::test]
async fn refused_credentials_fail_at_once_and_the_right_ones_connect() {
    let server = NatsServer::start_with_config(CONFIG, &[], &[]);
    let stop = CancellationToken::new();
    // Waiting would never end: there is no patience.
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        connect_bus(&bus_options(&server, "wrong"), &stop, None),
    )
    .await
    .expect("refused credentials are not waited out");
    match refused {
        Err(BusError::Connect { source, .. }) => {
            assert_eq!(
                source.kind(),
                ConnectErrorKind::AuthorizationViolation,
                "{source}"
            );
        }
        other => panic!("{other:?}"),
    }
    let client = connect_bus(&bus_options(&server, "right"), &stop, None)
        .await
        .unwrap()
        .unwrap();
    client.flush().await.unwrap();
}

#[tokio::test]
async fn a_server_not_up_yet_is_waited_for() {
    let mut server = NatsServer::start_with_config(CONFIG, &[], &[]);
    server.stop();
    let stop = CancellationToken::new();
    let opts = bus_options(&server, "right");
    let waiting = tokio::spawn(async move { connect_bus(&opts, &stop, None).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "gave up on a server that is not up yet"
    );
    server.start_again();
    let client = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("connected once the server is up")
        .unwrap()
        .unwrap()
        .unwrap();
    client.flush().await.unwrap();
}

#[tokio::test]
async fn patience_bounds_the_wait_and_shutdown_ends_it() {
    let mut server = NatsServer::start_with_config(CONFIG, &[], &[]);
    server.stop();
    let opts = bus_options(&server, "right");
    let stop = CancellationToken::new();
    let started = Instant::now();
    let gave_up = connect_bus(&opts, &stop, Some(Duration::from_secs(1))).await;
    assert!(
        matches!(gave_up, Err(BusError::Connect { .. })),
        "{gave_up:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));

    let waiting = {
        let stop = stop.clone();
        tokio::spawn(async move { connect_bus(&opts, &stop, None).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown_ends(&stop, waiting).await;
}

// --- PostgreSQL ---------------------------------------------------------------------------

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    db: DbArgs,
}

fn db(url: &str) -> DbArgs {
    Args::parse_from(["test", "--database-url", url]).db
}

fn pool_options() -> PgPoolOptions {
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
        db(&url).connect_waiting(pool_options(), &stop),
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
        tokio::spawn(async move { args.connect_waiting(pool_options(), &stop).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "gave up on a server that is not up");
    shutdown_ends(&stop, waiting).await;
}
