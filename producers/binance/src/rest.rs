//! The Binance spot REST client: `time`, `exchangeInfo` (symbol statuses) and `klines`, every
//! request weighted through the shared [`WeightLimiter`] and retried by kind:
//!
//! | answer | what happens |
//! |---|---|
//! | 429 + `Retry-After` | every request of the process pauses that long, then this one retries |
//! | 418 + `Retry-After` | everyone pauses until the ban ends (if within `max_ban_wait`), then retries |
//! | 5xx, timeout, transport | jittered exponential backoff, at most `max_attempts` tries, or for as long as `patience` allows |
//! | -1121, -1120, other 4xx, malformed body | returned at once, never retried |

use std::sync::Arc;
use std::time::Duration;

use klinebus_schemas::{Interval, Symbol};
use klinebus_svc::Backoff;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::error::{BinanceError, CODE_BAD_INTERVAL, CODE_BAD_SYMBOL};
use crate::kline::{parse_klines, RestKline};
use crate::limiter::{wall_now_ms, WeightLimiter};

/// Binance's production REST base URL.
pub const DEFAULT_REST_URL: &str = "https://api.binance.com";
/// Most klines per request.
pub const MAX_KLINES_LIMIT: u16 = 1000;
/// Weight of `GET /api/v3/klines`.
pub const KLINES_WEIGHT: u32 = 2;
/// Weight of `GET /api/v3/time`.
pub const TIME_WEIGHT: u32 = 1;
/// Weight of `GET /api/v3/exchangeInfo`.
pub const EXCHANGE_INFO_WEIGHT: u32 = 20;

/// How failed requests are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per request for 5xx / timeout / transport failures (at least 1).
    pub max_attempts: u32,
    /// First backoff; doubles per failure, with full jitter.
    pub base_delay: Duration,
    /// Longest backoff.
    pub max_delay: Duration,
    /// 429/418 answers tolerated per request before giving up.
    pub max_throttled: u32,
    /// Longest 418 ban to wait out; a longer one is returned as [`BinanceError::IpBanned`].
    pub max_ban_wait: Duration,
    /// With `Some`, 5xx / timeout / transport failures are retried past `max_attempts` until
    /// this long has passed since the request's first failure: an exchange incident or
    /// maintenance window of minutes is waited out (each wait logged) instead of failing.
    pub patience: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(15),
            max_throttled: 20,
            max_ban_wait: Duration::from_secs(15 * 60),
            patience: None,
        }
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// Base URL without trailing slash, e.g. `https://api.binance.com`.
    pub base_url: String,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retry rules.
    pub retry: RetryPolicy,
}

impl Default for RestConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_REST_URL.into(),
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

/// One symbol of `exchangeInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SymbolStatus {
    /// The symbol, e.g. `BTCUSDT`.
    pub symbol: String,
    /// `TRADING`, `BREAK`, `HALT`, …
    pub status: String,
}

/// Request counters, for reports and tests.
#[derive(Debug, Default)]
struct Counters {
    requests: std::sync::atomic::AtomicU64,
    retries: std::sync::atomic::AtomicU64,
}

/// A snapshot of [`RestClient`] counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent (retries included).
    pub requests: u64,
    /// Requests repeated after a retryable failure.
    pub retries: u64,
}

/// The REST client; cheap to clone, clones share the connection pool, limiter and counters.
#[derive(Debug, Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base: Arc<str>,
    retry: RetryPolicy,
    limiter: Arc<WeightLimiter>,
    counters: Arc<Counters>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: i64,
    msg: String,
}

#[derive(Deserialize)]
struct TimeBody {
    #[serde(rename = "serverTime")]
    server_time: i64,
}

#[derive(Deserialize)]
struct InfoBody {
    symbols: Vec<SymbolStatus>,
}

/// Which request failed, to name input errors precisely.
struct Ctx<'a> {
    symbol: Option<&'a str>,
    interval: Option<&'a str>,
}

impl RestClient {
    /// A client for `config.base_url` spending weight through `limiter`.
    pub fn new(config: RestConfig, limiter: Arc<WeightLimiter>) -> Result<Self, BinanceError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("klinebus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BinanceError::Transport(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: config.base_url.trim_end_matches('/').into(),
            retry: config.retry,
            limiter,
            counters: Arc::default(),
        })
    }

    /// One line per minute in which requests were made: this process's weight and the IP's
    /// (the server's count, every process on the IP together) against the budget.
    fn report_finished_minute(&self) {
        let Some(m) = self.limiter.take_finished_minute(wall_now_ms()) else {
            return;
        };
        let minute = chrono::DateTime::from_timestamp_millis(m.minute_start_ms)
            .map(|t| t.format("%Y-%m-%dT%H:%MZ").to_string())
            .unwrap_or_default();
        tracing::info!(%minute, weight = m.reserved, ip_weight = m.server_used,
            budget = self.limiter.budget(), "REST weight used in the minute");
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &Arc<WeightLimiter> {
        &self.limiter
    }

    /// Counters so far.
    pub fn stats(&self) -> ClientStats {
        use std::sync::atomic::Ordering::Relaxed;
        ClientStats {
            requests: self.counters.requests.load(Relaxed),
            retries: self.counters.retries.load(Relaxed),
        }
    }

    /// `GET /api/v3/time`: the exchange's clock (ms).
    pub async fn server_time(&self) -> Result<i64, BinanceError> {
        let ctx = Ctx {
            symbol: None,
            interval: None,
        };
        let body = self.get("/api/v3/time", &[], TIME_WEIGHT, &ctx).await?;
        let t: TimeBody = serde_json::from_slice(&body)
            .map_err(|e| BinanceError::Malformed(format!("time body: {e}")))?;
        Ok(t.server_time)
    }

    /// `GET /api/v3/exchangeInfo`: the status of every listed symbol.
    pub async fn exchange_info(&self) -> Result<Vec<SymbolStatus>, BinanceError> {
        let ctx = Ctx {
            symbol: None,
            interval: None,
        };
        let body = self
            .get("/api/v3/exchangeInfo", &[], EXCHANGE_INFO_WEIGHT, &ctx)
            .await?;
        let info: InfoBody = serde_json::from_slice(&body)
            .map_err(|e| BinanceError::Malformed(format!("exchangeInfo body: {e}")))?;
        Ok(info.symbols)
    }

    /// `GET /api/v3/klines`: up to `limit` (1..=1000) candles opening in `[start, end]`, oldest
    /// first (Binance's selection rules). Forming candles are included; see
    /// [`RestKline::is_closed`].
    pub async fn klines(
        &self,
        symbol: &Symbol,
        interval: Interval,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        limit: u16,
    ) -> Result<Vec<RestKline>, BinanceError> {
        let limit = limit.clamp(1, MAX_KLINES_LIMIT);
        let mut q: Vec<(&str, String)> = vec![
            ("symbol", symbol.as_str().to_owned()),
            ("interval", interval.as_str().to_owned()),
            ("limit", limit.to_string()),
        ];
        if let Some(s) = start_ms {
            q.push(("startTime", s.to_string()));
        }
        if let Some(e) = end_ms {
            q.push(("endTime", e.to_string()));
        }
        let ctx = Ctx {
            symbol: Some(symbol.as_str()),
            interval: Some(interval.as_str()),
        };
        let body = self.get("/api/v3/klines", &q, KLINES_WEIGHT, &ctx).await?;
        parse_klines(&body)
    }

    /// One GET with weight accounting and the retry rules of the module docs.
    async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
        weight: u32,
        ctx: &Ctx<'_>,
    ) -> Result<bytes_body::Body, BinanceError> {
        use std::sync::atomic::Ordering::Relaxed;
        // Every value is a validated symbol, an interval name or a number: nothing to escape.
        let mut url = format!("{}{path}", self.base);
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(v);
        }
        let mut failures = 0u32;
        let mut throttled = 0u32;
        let mut first_failure: Option<std::time::Instant> = None;
        loop {
            let permit = self.limiter.acquire(weight).await;
            self.report_finished_minute();
            self.counters.requests.fetch_add(1, Relaxed);
            let result = self.http.get(&url).send().await;
            let outcome: Result<std::convert::Infallible, BinanceError> = match result {
                Err(e) => {
                    self.limiter.on_response(permit, None, wall_now_ms());
                    metrics::counter!("klinebus_rest_requests_total", "status" => "transport_error")
                        .increment(1);
                    Err(BinanceError::Transport(transport_message(&e)))
                }
                Ok(resp) => {
                    let status = resp.status();
                    metrics::counter!("klinebus_rest_requests_total", "status" => status.as_str().to_owned())
                        .increment(1);
                    let used = used_weight(resp.headers());
                    if let Some(u) = used {
                        metrics::gauge!("klinebus_rest_used_weight_1m").set(u as f64);
                    }
                    let retry_after = retry_after(resp.headers());
                    let body = resp.bytes().await;
                    let now = wall_now_ms();
                    self.limiter.on_response(permit, used, now);
                    match body {
                        Err(e) => Err(BinanceError::Transport(transport_message(&e))),
                        Ok(b) if status.is_success() => return Ok(b.to_vec()),
                        Ok(b) => Err(classify(status, &b, retry_after, ctx)),
                    }
                }
            };
            let Err(err) = outcome;
            let now = wall_now_ms();
            let wait = match &err {
                BinanceError::RateLimited { retry_after } => {
                    self.limiter.on_rate_limited(*retry_after, now);
                    throttled += 1;
                    tracing::warn!(
                        ?retry_after,
                        path,
                        "Binance rate limit (429); pausing all requests"
                    );
                    (throttled <= self.retry.max_throttled).then_some(Duration::ZERO)
                }
                BinanceError::IpBanned { retry_after } => {
                    self.limiter.on_banned(*retry_after, now);
                    throttled += 1;
                    tracing::error!(
                        ?retry_after,
                        path,
                        "Binance IP ban (418); pausing all requests"
                    );
                    (throttled <= self.retry.max_throttled
                        && *retry_after <= self.retry.max_ban_wait)
                        .then_some(Duration::ZERO)
                }
                BinanceError::Server { .. } | BinanceError::Transport(_) => {
                    failures += 1;
                    let since = *first_failure.get_or_insert_with(std::time::Instant::now);
                    if failures < self.retry.max_attempts.max(1) {
                        Some(self.backoff(failures))
                    } else {
                        self.patient_wait(since, failures, &err, path)
                    }
                }
                _ => None,
            };
            let Some(wait) = wait else {
                return Err(err);
            };
            self.counters.retries.fetch_add(1, Relaxed);
            tracing::debug!(error = %err, ?wait, path, "retrying Binance request");
            // 429/418 waits happen in the limiter (shared by every request).
            tokio::time::sleep(wait).await;
        }
    }

    /// The wait before another try once `max_attempts` are spent, while `patience` lasts.
    fn patient_wait(
        &self,
        since: std::time::Instant,
        failures: u32,
        err: &BinanceError,
        path: &str,
    ) -> Option<Duration> {
        let left = self.retry.patience?.checked_sub(since.elapsed())?;
        let wait = self.backoff(failures).min(left);
        tracing::warn!(error = %err, path, failures, retry_in = ?wait, patience_left = ?left,
            "Binance unavailable; waiting for it");
        metrics::counter!("klinebus_rest_patient_retries_total").increment(1);
        (!wait.is_zero()).then_some(wait)
    }

    fn backoff(&self, failures: u32) -> Duration {
        Backoff::jittered(self.retry.base_delay, self.retry.max_delay).delay(failures)
    }
}

mod bytes_body {
    /// A response body.
    pub type Body = Vec<u8>;
}

fn transport_message(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    if e.is_timeout() {
        msg.push_str(" (timeout)");
    }
    msg
}

fn used_weight(h: &HeaderMap) -> Option<u32> {
    h.get("x-mbx-used-weight-1m")
        .or_else(|| h.get("x-mbx-used-weight"))
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Maps a non-2xx answer to an error kind.
fn classify(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
    ctx: &Ctx<'_>,
) -> BinanceError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let msg = parsed.as_ref().map_or_else(
        || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
        |e| e.msg.clone(),
    );
    let code = parsed.as_ref().map_or(0, |e| e.code);
    match status.as_u16() {
        429 => BinanceError::RateLimited {
            // Without the header: wait for the minute to turn.
            retry_after: retry_after
                .unwrap_or_else(|| Duration::from_millis((60_000 - wall_now_ms() % 60_000) as u64)),
        },
        418 => BinanceError::IpBanned {
            retry_after: retry_after.unwrap_or(Duration::from_secs(120)),
        },
        s if s >= 500 => BinanceError::Server { status: s, msg },
        s => match code {
            CODE_BAD_SYMBOL => BinanceError::BadSymbol {
                symbol: ctx.symbol.unwrap_or("?").to_owned(),
                msg,
            },
            CODE_BAD_INTERVAL => BinanceError::BadInterval {
                interval: ctx.interval.unwrap_or("?").to_owned(),
                msg,
            },
            _ => BinanceError::BadRequest {
                status: s,
                code,
                msg,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CTX: Ctx<'static> = Ctx {
        symbol: Some("NOSUCH"),
        interval: Some("2m"),
    };

    #[test]
    fn classifies_binance_errors() {
        let e = classify(
            StatusCode::BAD_REQUEST,
            br#"{"code":-1121,"msg":"Invalid symbol."}"#,
            None,
            &CTX,
        );
        assert!(matches!(&e, BinanceError::BadSymbol { symbol, .. } if symbol == "NOSUCH"));
        assert!(!e.is_retryable());
        let e = classify(
            StatusCode::BAD_REQUEST,
            br#"{"code":-1120,"msg":"Invalid interval."}"#,
            None,
            &CTX,
        );
        assert!(matches!(e, BinanceError::BadInterval { .. }));
        let e = classify(
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"code":-1003,"msg":"x"}"#,
            Some(Duration::from_secs(18)),
            &CTX,
        );
        assert_eq!(
            e,
            BinanceError::RateLimited {
                retry_after: Duration::from_secs(18)
            }
        );
        assert!(e.is_retryable());
        let e = classify(
            StatusCode::IM_A_TEAPOT,
            b"",
            Some(Duration::from_secs(318)),
            &CTX,
        );
        assert!(
            matches!(e, BinanceError::IpBanned { retry_after } if retry_after.as_secs() == 318)
        );
        let e = classify(StatusCode::SERVICE_UNAVAILABLE, b"<html>", None, &CTX);
        assert!(matches!(e, BinanceError::Server { status: 503, .. }));
        assert!(e.is_retryable());
        let e = classify(StatusCode::FORBIDDEN, b"waf", None, &CTX);
        assert!(matches!(
            e,
            BinanceError::BadRequest {
                status: 403,
                code: 0,
                ..
            }
        ));
        assert!(!e.is_retryable());
    }

    #[test]
    fn reads_weight_headers() {
        let mut h = HeaderMap::new();
        h.insert("X-MBX-USED-WEIGHT-1M", "14".parse().unwrap());
        h.insert("Retry-After", "18".parse().unwrap());
        assert_eq!(used_weight(&h), Some(14));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(18)));
        assert_eq!(used_weight(&HeaderMap::new()), None);
    }
}
