//! `connect_bus` against a real nats-server: a server not up yet is waited for (forever, or
//! within a patience), refused credentials are not, and shutdown ends the wait.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use async_nats::ConnectErrorKind;
use klinebus_schemas::bus::{BusError, BusOptions};
use klinebus_svc::connect_bus;
use klinebus_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = "authorization {\n  user: svc\n  password: right\n}\n";

fn options(server: &NatsServer, password: &str) -> BusOptions {
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
        connect_bus(&options(&server, "wrong"), &stop, None),
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
    let client = connect_bus(&options(&server, "right"), &stop, None)
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
    let opts = options(&server, "right");
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
    let opts = options(&server, "right");
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
    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("shutdown ends the wait")
        .unwrap();
    assert!(matches!(ended, Ok(None)), "{ended:?}");
}
