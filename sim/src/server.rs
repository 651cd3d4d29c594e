//! Wiring: shared state, the router (REST + WS + admin on one port), `run`, `serve`, `spawn`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::archive::Archive;
use crate::clock::{wall_now_ms, SimClock};
use crate::config::Config;
use crate::error::SimError;
use crate::faults::Faults;
use crate::market::Market;
use crate::usage::{Usage, UsageReport};
use crate::weights::Limiter;
use crate::ws::Attempts;

pub(crate) struct AppState {
    pub config: Config,
    pub market: Arc<Market>,
    pub clock: SimClock,
    pub faults: Faults,
    pub archive: Archive,
    pub limiter: Limiter,
    pub ws_attempts: Attempts,
    pub usage: Usage,
    /// Flips to true when the server shuts down, so WS connections close.
    pub shutdown: watch::Receiver<bool>,
}

pub(crate) type Shared = Arc<AppState>;

fn build(config: Config) -> Result<(Shared, watch::Sender<bool>), SimError> {
    if config.symbols.is_empty() {
        return Err(SimError::Config("no symbols configured".into()));
    }
    if let Some(bad) = config
        .symbols
        .iter()
        .find(|s| !crate::rest::params::symbol_ok(s))
    {
        return Err(SimError::Config(format!(
            "symbol {bad:?} is not upper-case A-Z0-9-_. (1-20)"
        )));
    }
    let market = Arc::new(Market::new(
        config.seed,
        &config.symbols,
        config.listed_since,
    ));
    let clock = SimClock::new(config.start_time.unwrap_or_else(wall_now_ms), config.speed);
    let archive = Archive::new(market.clone(), clock.clone(), &config.archive());
    let faults = Faults::new(market.clone(), clock.clone(), archive.clone());
    for g in &config.gaps {
        faults.add_gap(g.clone());
    }
    faults.set_ws_refuse(config.refuse_ws);
    faults.set_ws_stall(config.stall_ws);
    faults.set_rest_delay_ms(config.delay_ms);
    faults.fail_next_rest(config.fail_next, config.fail_status);
    faults.throttle_next_rest(config.throttle_next, 10);
    let limiter = Limiter::new(
        config.weight_limit,
        !config.no_limits,
        config.ban_after,
        config.ban_seconds,
    );
    let (tx, rx) = watch::channel(false);
    let state = AppState {
        config,
        market,
        clock,
        faults,
        archive,
        limiter,
        ws_attempts: Attempts::default(),
        usage: Usage::default(),
        shutdown: rx,
    };
    Ok((Arc::new(state), tx))
}

fn router(app: Shared) -> axum::Router {
    crate::rest::router()
        .merge(crate::ws::router())
        .merge(crate::admin::router())
        .merge(crate::archive::router())
        .fallback(crate::rest::not_found)
        .with_state(app)
}

async fn serve_app(
    app: Shared,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    tx: watch::Sender<bool>,
) -> Result<(), SimError> {
    tracing::info!(
        addr = %listener.local_addr()?,
        speed = app.clock.speed(),
        start_ms = app.clock.start_ms(),
        symbols = app.config.symbols.len(),
        limits = !app.config.no_limits,
        "binance-sim serving"
    );
    let svc = router(app).into_make_service_with_connect_info::<SocketAddr>();
    // Every WS event is its own small write: without TCP_NODELAY, Nagle plus the peer's delayed
    // ACK holds some of them back ~40 ms, which Binance's servers do not do.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, svc)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = tx.send(true);
        })
        .await?;
    Ok(())
}

/// Binds `config.listen` and serves until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let listener = TcpListener::bind(config.listen).await?;
    serve(config, listener, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0 first) until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let (app, tx) = build(config)?;
    serve_app(app, listener, shutdown, tx).await
}

/// Starts the simulator in the background on an ephemeral loopback port (`config.listen` is
/// ignored). Dropping the handle shuts it down.
pub async fn spawn(config: Config) -> Result<SimHandle, SimError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (app, tx) = build(config)?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (market, clock, faults) = (app.market.clone(), app.clock.clone(), app.faults.clone());
    let archive = app.archive.clone();
    let usage = app.usage.clone();
    let limits = (app.config.weight_limit, app.config.ws_connect_limit);
    let stopped = async move {
        let _ = stop_rx.await;
    };
    let task = tokio::spawn(serve_app(app, listener, stopped, tx));
    Ok(SimHandle {
        addr,
        market,
        clock,
        faults,
        archive,
        usage,
        limits,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

/// A running in-process simulator.
pub struct SimHandle {
    addr: SocketAddr,
    market: Arc<Market>,
    clock: SimClock,
    faults: Faults,
    archive: Archive,
    usage: Usage,
    /// (weight per minute, WebSocket attempts per 5 minutes), per IP.
    limits: (u32, u32),
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), SimError>>>,
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the REST base URL (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT`, the WebSocket base URL (append `/ws/<stream>` or `/stream?streams=`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The data model, to compute expected candles.
    pub fn market(&self) -> Arc<Market> {
        self.market.clone()
    }

    /// The simulated clock.
    pub fn clock(&self) -> SimClock {
        self.clock.clone()
    }

    /// In-process fault controls.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// The kline archive: lags, prewarm, stats, files in-process.
    pub fn archive(&self) -> Archive {
        self.archive.clone()
    }

    /// What each client IP spent so far (as `GET /_sim/usage`).
    pub fn usage(&self) -> UsageReport {
        self.usage.report(self.limits.0, self.limits.1)
    }

    /// Stops the server and waits for it to finish.
    pub async fn shutdown(mut self) -> Result<(), SimError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(t) => t.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
