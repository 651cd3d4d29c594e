//! Error kinds a caller matches to decide what to do: wait and retry, give up on the series, or
//! fix its input.

use std::time::Duration;

/// Binance's "invalid symbol" error code.
pub const CODE_BAD_SYMBOL: i64 = -1121;
/// Binance's "invalid interval" error code.
pub const CODE_BAD_INTERVAL: i64 = -1120;

/// Why a Binance request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinanceError {
    /// HTTP 429: the IP used too much request weight. Wait `retry_after`, then retry.
    #[error("rate limited by Binance (HTTP 429), retry after {retry_after:?}")]
    RateLimited {
        /// How long the exchange asked to wait.
        retry_after: Duration,
    },
    /// HTTP 418: the IP is banned until `retry_after` has passed.
    #[error("IP banned by Binance (HTTP 418) for {retry_after:?}")]
    IpBanned {
        /// Time until the ban ends.
        retry_after: Duration,
    },
    /// -1121: the exchange does not know the symbol. Not retried.
    #[error("Binance does not know symbol {symbol} (-1121: {msg})")]
    BadSymbol {
        /// The symbol sent.
        symbol: String,
        /// The exchange's message.
        msg: String,
    },
    /// -1120: the exchange does not know the interval. Not retried.
    #[error("Binance does not know interval {interval} (-1120: {msg})")]
    BadInterval {
        /// The interval sent.
        interval: String,
        /// The exchange's message.
        msg: String,
    },
    /// Any other 4xx: the request is wrong (or a WAF block, 403). Not retried.
    #[error("Binance rejected the request (HTTP {status}, code {code}): {msg}")]
    BadRequest {
        /// HTTP status.
        status: u16,
        /// Binance error code (0 when the body had none).
        code: i64,
        /// The exchange's message or the raw body.
        msg: String,
    },
    /// HTTP 5xx: the exchange failed; the outcome is unknown. Retried with backoff.
    #[error("Binance server error (HTTP {status}): {msg}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The exchange's message or the raw body.
        msg: String,
    },
    /// Connection, TLS or timeout failure. Retried with backoff.
    #[error("transport error talking to Binance: {0}")]
    Transport(String),
    /// The response did not have the documented shape.
    #[error("malformed Binance response: {0}")]
    Malformed(String),
}

impl BinanceError {
    /// True when the same request may succeed later (after a wait): 429, 418, 5xx, transport.
    /// Input errors (-1121, -1120, other 4xx) and malformed payloads are final.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::IpBanned { .. }
                | Self::Server { .. }
                | Self::Transport(_)
        )
    }
}
