//! One WebSocket connection: pushes kline events on the clock, answers control messages, pings
//! and enforces the pong deadline, the lifetime and the incoming-message rate.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket};
use tokio::time::{sleep_until, timeout, Instant};

use super::control;
use super::subs::{Subs, MAX_STREAMS};
use crate::server::Shared;

/// Binance drops connections sending more than 5 messages (pings, pongs, JSON) per second.
const MAX_INCOMING_PER_SEC: usize = 5;
/// A client that cannot take a message for this long is dropped rather than buffered for.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

async fn send(socket: &mut WebSocket, msg: Message) -> bool {
    matches!(timeout(SEND_TIMEOUT, socket.send(msg)).await, Ok(Ok(())))
}

/// Binance's `serverShutdown` event, raw or wrapped in the combined form (stream
/// `!serverShutdown`), as in `ws_methods.json`.
fn shutdown_event(now_ms: i64, combined: bool) -> String {
    let data = format!(r#"{{"e":"serverShutdown","E":{now_ms}}}"#);
    if combined {
        format!(r#"{{"stream":"!serverShutdown","data":{data}}}"#)
    } else {
        data
    }
}

pub(super) async fn run(app: Shared, mut socket: WebSocket, streams: Vec<String>, combined: bool) {
    let _guard = app.faults.connection_guard();
    let cfg = &app.config;
    let (market, clock) = (&app.market, &app.clock);
    let opened = Instant::now();
    let lifetime_end = opened + Duration::from_secs(cfg.ws_max_lifetime_secs);
    let update_every = Duration::from_millis(cfg.ws_update_ms());
    let ping_every = Duration::from_secs(cfg.ws_ping_secs.max(1));
    let pong_timeout = Duration::from_secs(cfg.ws_pong_timeout_secs);
    let mut drops = app.faults.drop_signal();
    drops.borrow_and_update();
    let mut announcements = app.faults.shutdown_signal();
    announcements.borrow_and_update();
    // After a `serverShutdown` announcement: when this connection closes.
    let mut closing_at: Option<Instant> = None;
    let mut shutdown = app.shutdown.clone();

    let mut combined = combined;
    let mut subs = Subs::default();
    let mut streams = streams;
    streams.truncate(MAX_STREAMS);
    subs.subscribe(&streams, market, clock.now_ms());
    tracing::debug!(
        streams = subs.len(),
        combined,
        "WebSocket connection opened"
    );

    let mut next_update = opened + update_every;
    let mut next_ping = opened + ping_every;
    let mut ping_seq = 0u64;
    let mut unanswered: VecDeque<(Bytes, Instant)> = VecDeque::new();
    let mut incoming: VecDeque<Instant> = VecDeque::new();

    loop {
        let close_at = subs.next_close().map(|ms| clock.wall_at(ms));
        let pong_deadline = unanswered.front().map(|(_, t)| *t + pong_timeout);
        let wake = [
            Some(next_update),
            Some(next_ping),
            Some(lifetime_end),
            closing_at,
            close_at,
            pong_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(next_update);
        tokio::select! {
            msg = socket.recv() => {
                let Some(Ok(msg)) = msg else { break };
                let now = Instant::now();
                incoming.push_back(now);
                while incoming.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
                    incoming.pop_front();
                }
                if incoming.len() > MAX_INCOMING_PER_SEC {
                    tracing::debug!("dropping WebSocket client: more than 5 messages per second");
                    break;
                }
                match msg {
                    Message::Text(t) => {
                        let reply = control::handle(t.as_str(), &mut subs, &mut combined, market, clock.now_ms());
                        if !send(&mut socket, Message::Text(reply.into())).await {
                            break;
                        }
                    }
                    Message::Pong(p) => {
                        // Only an echo of a ping counts; unsolicited pongs do not keep a client alive.
                        if let Some(i) = unanswered.iter().position(|(b, _)| *b == p) {
                            unanswered.drain(..=i);
                        }
                    }
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Binary(_) => {}
                }
            }
            _ = sleep_until(wake) => {
                let now = Instant::now();
                if now >= lifetime_end || closing_at.is_some_and(|t| now >= t) {
                    tracing::debug!("closing WebSocket connection: lifetime reached or shutdown announced");
                    let _ = send(&mut socket, Message::Close(None)).await;
                    break;
                }
                if pong_deadline.is_some_and(|d| now >= d) {
                    tracing::debug!("dropping WebSocket client: no pong in time");
                    break;
                }
                if now >= next_ping {
                    ping_seq += 1;
                    let payload = Bytes::from(ping_seq.to_string());
                    unanswered.push_back((payload.clone(), now));
                    next_ping = now + ping_every;
                    if !send(&mut socket, Message::Ping(payload)).await {
                        break;
                    }
                }
                let updates = now >= next_update;
                if updates {
                    next_update = now + update_every;
                }
                let events = subs.poll(market, clock.now_ms(), updates, combined);
                if app.faults.ws_stalled() {
                    continue;
                }
                for e in events {
                    if !send(&mut socket, Message::Text(e.into())).await {
                        return;
                    }
                }
            }
            _ = announcements.changed() => {
                let after = announcements.borrow_and_update().1;
                tracing::debug!(?after, "announcing serverShutdown");
                closing_at.get_or_insert(Instant::now() + after);
                let event = shutdown_event(clock.now_ms(), combined);
                if !send(&mut socket, Message::Text(event.into())).await {
                    break;
                }
            }
            _ = drops.changed() => {
                tracing::debug!("dropping WebSocket connection (fault)");
                break;
            }
            _ = shutdown.changed() => {
                let _ = send(&mut socket, Message::Close(None)).await;
                break;
            }
        }
    }
}
