//! Binance's market-data WebSocket: stream names, combined-stream URLs, sharding over
//! connections (at most [`MAX_STREAMS_PER_CONNECTION`] each) and [`KlineSocket`], one
//! connection that yields parsed frames.
//!
//! Pings: tungstenite answers every server ping with a pong echoing its payload, queued while a
//! frame is read and flushed on the next read, so a caller only has to keep calling
//! [`KlineSocket::next`] (Binance pings every 20 s and drops a client without a pong in 1 min).

use std::time::Duration;

use futures::StreamExt;
use klinebus_schemas::{Interval, Symbol};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::BinanceError;
use crate::ws_event::{parse_frame, Frame, FrameError};

/// Binance's production WebSocket base URL.
pub const DEFAULT_WS_URL: &str = "wss://stream.binance.com:9443";
/// Binance's cap on streams per connection.
pub const MAX_STREAMS_PER_CONNECTION: usize = 1024;

/// `<lower-case symbol>@kline_<interval>`.
pub fn stream_name(symbol: &Symbol, interval: Interval) -> String {
    format!(
        "{}@kline_{}",
        symbol.as_str().to_ascii_lowercase(),
        interval.as_str()
    )
}

/// `<base>/stream?streams=a/b/c`.
pub fn combined_url(base: &str, streams: &[String]) -> String {
    format!(
        "{}/stream?streams={}",
        base.trim_end_matches('/'),
        streams.join("/")
    )
}

/// Splits `items` into the fewest shards of at most `cap` (≥ 1) items, sizes as even as
/// possible so no connection carries much more than another.
pub fn shard<T: Clone>(items: &[T], cap: usize) -> Vec<Vec<T>> {
    if items.is_empty() {
        return Vec::new();
    }
    let cap = cap.clamp(1, MAX_STREAMS_PER_CONNECTION);
    let shards = items.len().div_ceil(cap);
    let per = items.len().div_ceil(shards);
    items.chunks(per).map(<[T]>::to_vec).collect()
}

/// One item read from a [`KlineSocket`].
#[derive(Debug)]
pub enum WsItem {
    /// A text frame, parsed (or why it could not be).
    Frame(Result<Frame, FrameError>),
    /// A ping, pong or binary frame: the connection is alive, there is no data.
    Other,
}

/// One open combined-stream connection.
pub struct KlineSocket {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl std::fmt::Debug for KlineSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KlineSocket").finish_non_exhaustive()
    }
}

impl KlineSocket {
    /// Opens `url` (see [`combined_url`]) within `timeout`. A refused upgrade (e.g. HTTP 503 or
    /// 429) is [`BinanceError::Transport`] naming the status.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, BinanceError> {
        // No Nagle: pongs and control frames are tiny and latency-sensitive.
        let attempt = tokio_tungstenite::connect_async_with_config(url, None, true);
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => Err(BinanceError::Transport(format!(
                "WebSocket connect timed out after {timeout:?}"
            ))),
            Ok(Err(e)) => Err(BinanceError::Transport(format!(
                "WebSocket connect failed: {e}"
            ))),
            Ok(Ok((inner, _response))) => Ok(Self { inner }),
        }
    }

    /// The next item; `None` once the connection is closed or broken.
    pub async fn next(&mut self) -> Option<WsItem> {
        loop {
            let msg = match self.inner.next().await? {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket read failed");
                    return None;
                }
            };
            return Some(match msg {
                Message::Text(t) => WsItem::Frame(parse_frame(t.as_str())),
                Message::Close(_) => return None,
                Message::Ping(_) | Message::Pong(_) | Message::Binary(_) => WsItem::Other,
                Message::Frame(_) => continue,
            });
        }
    }

    /// Sends a close frame and waits briefly for the close to complete.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_urls_and_shards() {
        let s: Symbol = "BTCUSDT".parse().unwrap();
        assert_eq!(stream_name(&s, Interval::M1), "btcusdt@kline_1m");
        assert_eq!(stream_name(&s, Interval::Mo1), "btcusdt@kline_1M");
        let names = vec!["a@kline_1m".to_owned(), "b@kline_1m".to_owned()];
        assert_eq!(
            combined_url("wss://x:9443/", &names),
            "wss://x:9443/stream?streams=a@kline_1m/b@kline_1m"
        );
        let items: Vec<u32> = (0..2050).collect();
        let shards = shard(&items, 5000);
        assert_eq!(shards.len(), 3, "1024 cap is enforced");
        assert!(shards.iter().all(|s| s.len() <= 1024));
        assert_eq!(shards.concat(), items);
        assert_eq!(shard(&items[..4], 2).len(), 2);
        assert_eq!(shard(&items[..5], 2).len(), 3);
        assert_eq!(shard(&items[..3], 0).len(), 3);
        assert!(shard::<u32>(&[], 10).is_empty());
    }
}
