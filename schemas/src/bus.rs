//! JetStream plumbing (feature `nats`): connecting, creating the streams, publishing events with
//! their dedup id and schema headers, and turning [`ConsumerSpec`]s into server configs.
//!
//! Everything here works on nats-server 2.9 (one filter subject per consumer, no per-message
//! TTL) and later releases.

use std::path::PathBuf;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{
    CreateStreamErrorKind, GetStreamErrorKind, PublishAckFuture, PublishError, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use async_nats::{Client, ConnectOptions, HeaderMap};

use crate::closed::{ClosedCandles, ClosedCandlesRef, CLOSED_SCHEMA_VERSION};
use crate::codec::{self, CONTENT_TYPE, CONTENT_TYPE_HEADER, SCHEMA_HEADER, SCHEMA_VERSION};
use crate::page::PAGE_SCHEMA_VERSION;
use crate::secret::{ConnUrl, Secret};
use crate::streams::{all_streams, ConsumerSpec, Retention, StreamSpec};
use crate::{subjects, KlineEvent};

/// Bus failures, by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Could not reach or authenticate to the server.
    #[error("cannot connect to NATS at {url}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// A server URL could not be parsed.
    #[error("invalid NATS URL {url:?}: {reason}")]
    Url {
        /// The URL (password redacted).
        url: String,
        /// Why.
        reason: String,
    },
    /// A credentials file could not be read.
    #[error("cannot read NATS credentials file {path}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stream could not be created or updated (e.g. JetStream disabled on the server).
    #[error("cannot create or update stream {stream}")]
    Stream {
        /// The stream name.
        stream: String,
        /// Why.
        source: async_nats::jetstream::context::CreateStreamError,
    },
    /// A stream is missing and this user could not create it: the server refused or did not
    /// answer. nats-server drops a request its permissions deny without a reply, so a denied
    /// create is a timeout; a deployment with least privilege gives only the admin user that
    /// right.
    #[error(
        "stream {stream} does not exist and this NATS user may not create it (refused or not \
         answered): the streams are the operator's, create them with `klinectl streams apply` \
         as the admin user"
    )]
    Missing {
        /// The stream name.
        stream: String,
        /// What the create request met.
        source: async_nats::jetstream::context::CreateStreamError,
    },
    /// `klinectl streams apply` was refused or not answered (see [`BusError::Missing`]).
    #[error(
        "cannot create or update stream {stream} (refused or not answered): `klinectl streams \
         apply` needs a NATS user allowed the whole JetStream API, the admin user"
    )]
    ApplyRefused {
        /// The stream name.
        stream: String,
        /// What the request met.
        source: async_nats::jetstream::context::CreateStreamError,
    },
    /// An existing stream cannot serve klinebus as it is configured.
    #[error("stream {stream}: {reason}")]
    Incompatible {
        /// The stream name.
        stream: String,
        /// Why.
        reason: String,
    },
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] codec::EncodeError),
    /// The publish was not accepted for sending.
    #[error("publish to {subject}")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        source: PublishError,
    },
    /// A core-NATS publish (no JetStream ack) was not accepted for sending.
    #[error("publish to {subject}")]
    CorePublish {
        /// The subject.
        subject: String,
        /// Why.
        source: async_nats::PublishError,
    },
}

/// How to reach NATS. Secrets are never printed by `Debug`.
#[derive(Debug, Clone, Default)]
pub struct BusOptions {
    /// Server URL(s), comma-separated; `tls://` forces TLS.
    pub url: ConnUrl,
    /// Client name shown in server monitoring.
    pub name: String,
    /// `.creds` file (JWT + NKey seed).
    pub creds_file: Option<PathBuf>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<Secret>,
    /// Token authentication.
    pub token: Option<Secret>,
    /// Require TLS even for `nats://` URLs.
    pub require_tls: bool,
    /// PEM file of the CA that signed the server certificate (implies TLS).
    pub tls_ca: Option<PathBuf>,
}

pub use crate::secret::redact_url;

impl BusOptions {
    /// Options for `url` with no credentials.
    pub fn new(url: impl Into<ConnUrl>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: name.into(),
            ..Self::default()
        }
    }
}

/// Connects; the client then reconnects by itself forever if the server goes away.
pub async fn connect(opts: &BusOptions) -> Result<Client, BusError> {
    let mut o = ConnectOptions::new()
        .name(&opts.name)
        .require_tls(
            opts.require_tls || opts.tls_ca.is_some() || opts.url.expose().starts_with("tls://"),
        )
        .max_reconnects(None)
        .event_callback(|event| async move {
            tracing::info!(%event, "nats connection event");
        });
    if let Some(ca) = &opts.tls_ca {
        o = o.add_root_certificates(ca.clone());
    }
    if let Some(path) = &opts.creds_file {
        o = o
            .credentials_file(path)
            .await
            .map_err(|source| BusError::Credentials {
                path: path.clone(),
                source,
            })?;
    }
    // Credentials in the URL go to the options, and the client gets the URLs without them:
    // async-nats logs server addresses (userinfo included) at debug level.
    let (plain, from_url) = split_credentials(opts.url.expose());
    match (&opts.user, &opts.password, &opts.token, from_url) {
        (Some(u), Some(p), _, _) => o = o.user_and_password(u.clone(), p.expose().to_owned()),
        (_, _, Some(t), _) => o = o.token(t.expose().to_owned()),
        (_, _, _, Some(UrlCredentials::UserPassword(u, p))) => o = o.user_and_password(u, p),
        (_, _, _, Some(UrlCredentials::Token(t))) => o = o.token(t),
        _ => {}
    }
    let servers = server_addrs(&plain)?;
    o.connect(servers)
        .await
        .map_err(|source| BusError::Connect {
            url: opts.url.to_string(),
            source,
        })
}

/// Credentials written into a NATS URL.
#[derive(Debug, PartialEq, Eq)]
enum UrlCredentials {
    UserPassword(String, String),
    Token(String),
}

/// The URL list without userinfo, and the first credentials found in it.
fn split_credentials(urls: &str) -> (String, Option<UrlCredentials>) {
    let mut found = None;
    let plain: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .map(|u| {
            let Some((scheme, rest)) = u.split_once("://") else {
                return u.to_owned();
            };
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let Some((auth, host)) = authority.rsplit_once('@') else {
                return u.to_owned();
            };
            if found.is_none() {
                found = Some(match auth.split_once(':') {
                    Some((user, pass)) => UrlCredentials::UserPassword(user.into(), pass.into()),
                    None => UrlCredentials::Token(auth.into()),
                });
            }
            format!("{scheme}://{host}{path}")
        })
        .collect();
    (plain.join(","), found)
}

/// Parses `nats://a:4222,nats://b:4222` (a cluster's seed list) into server addresses.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, BusError> {
    let addrs = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| BusError::Url {
                    url: redact_url(u),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(BusError::Url {
            url: url.to_owned(),
            reason: "no server given".into(),
        });
    }
    Ok(addrs)
}

/// A JetStream context that keeps at most `max_inflight` publish acks outstanding and waits
/// (instead of failing) when that many are in flight.
pub fn jetstream(client: Client, max_inflight: usize) -> Context {
    jetstream::ContextBuilder::new()
        .max_ack_inflight(max_inflight)
        .backpressure_on_inflight(true)
        .build(client)
}

/// The server config for a stream spec.
pub fn stream_config(spec: &StreamSpec) -> Config {
    Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        description: Some(spec.description.clone()),
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        max_age: spec.max_age,
        max_bytes: spec.max_bytes,
        duplicate_window: spec.duplicate_window,
        num_replicas: spec.replicas,
        ..Config::default()
    }
}

/// What [`apply_streams`] did to one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It did not exist.
    Created,
    /// It existed with other settings, now the given ones.
    Updated,
    /// It already had exactly these settings.
    Unchanged,
}

/// Creates the klinebus streams that are missing, with `retention`; streams that exist keep
/// the settings their operator gave them (retention, replicas, limits): this is what every
/// service calls at start-up. An existing stream that does not capture the klinebus subjects
/// is an error (messages would go nowhere). The operator's step that sets the settings is
/// [`apply_streams`] (`klinectl streams apply`). A missing stream this user may not create
/// (compose's roles may not) is [`BusError::Missing`], which says to run that step.
pub async fn ensure_streams(js: &Context, retention: &Retention) -> Result<(), BusError> {
    for spec in all_streams(retention) {
        match js.get_stream(&spec.name).await {
            Ok(mut stream) => {
                let info = stream.info().await.map_err(|e| BusError::Incompatible {
                    stream: spec.name.clone(),
                    reason: format!("cannot read its configuration: {e}"),
                })?;
                for subject in &spec.subjects {
                    if !info.config.subjects.iter().any(|s| s == subject) {
                        return Err(BusError::Incompatible {
                            stream: spec.name.clone(),
                            reason: format!(
                                "it does not capture {subject} (subjects {:?}); run `klinectl streams apply`",
                                info.config.subjects
                            ),
                        });
                    }
                }
                tracing::debug!(stream = %spec.name, "stream exists; its settings are the operator's");
            }
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                create_stream(js, &spec).await?;
            }
            Err(e) => {
                return Err(BusError::Incompatible {
                    stream: spec.name.clone(),
                    reason: format!("cannot look it up: {e}"),
                })
            }
        }
    }
    Ok(())
}

async fn create_stream(js: &Context, spec: &StreamSpec) -> Result<(), BusError> {
    // Another instance may create it at the same moment: creating again is then harmless
    // (the server answers with the existing stream when the configuration is the same), or
    // refused as overlapping the one just made (nats-server 2.9, error 10065): it exists then.
    if let Err(source) = js.get_or_create_stream(stream_config(spec)).await {
        let stream = spec.name.clone();
        if refused(&source) {
            return Err(BusError::Missing { stream, source });
        }
        if js.get_stream(&spec.name).await.is_err() {
            return Err(BusError::Stream { stream, source });
        }
        tracing::debug!(stream = %spec.name, "stream created meanwhile by another instance");
        return Ok(());
    }
    tracing::info!(stream = %spec.name, "stream created");
    Ok(())
}

/// Whether a create or update request met what a permission denial looks like: no answer
/// (nats-server 2.9 and later drop a denied publish and only tell the connection with an
/// `-ERR`) or no responder.
fn refused(e: &async_nats::jetstream::context::CreateStreamError) -> bool {
    matches!(
        e.kind(),
        CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable
    )
}

/// Creates or updates every klinebus stream to `retention` (the operator's step:
/// `klinectl streams apply`); says per stream what it did.
pub async fn apply_streams(
    js: &Context,
    retention: &Retention,
) -> Result<Vec<(StreamSpec, Applied)>, BusError> {
    let mut out = Vec::new();
    for spec in all_streams(retention) {
        let wanted = stream_config(&spec);
        let before = match js.get_stream(&spec.name).await {
            Ok(mut s) => s.info().await.ok().map(|i| i.config.clone()),
            Err(_) => None,
        };
        js.create_or_update_stream(wanted.clone())
            .await
            .map_err(|source| {
                let stream = spec.name.clone();
                if refused(&source) {
                    BusError::ApplyRefused { stream, source }
                } else {
                    BusError::Stream { stream, source }
                }
            })?;
        let applied = match before {
            None => Applied::Created,
            Some(c)
                if c.subjects == wanted.subjects
                    && c.max_age == wanted.max_age
                    && c.max_bytes == wanted.max_bytes
                    && c.duplicate_window == wanted.duplicate_window
                    && c.num_replicas == wanted.num_replicas =>
            {
                Applied::Unchanged
            }
            Some(_) => Applied::Updated,
        };
        out.push((spec, applied));
    }
    Ok(out)
}

/// The server config for a durable pull consumer, delivering from `deliver`.
pub fn consumer_config(spec: &ConsumerSpec, deliver: DeliverPolicy) -> pull::Config {
    pull::Config {
        durable_name: Some(spec.durable.clone()),
        description: Some(format!("klinebus consumer {}", spec.durable)),
        filter_subject: spec.filter_subject.clone(),
        deliver_policy: deliver,
        ack_policy: AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_ack_pending: spec.max_ack_pending,
        // Poison messages are terminated and dead-lettered by the sink, never redelivered forever.
        max_deliver: -1,
        ..pull::Config::default()
    }
}

/// The `Klinebus-Schema` value of a message's headers, if any.
pub fn schema_of(headers: Option<&HeaderMap>) -> Option<&str> {
    headers
        .and_then(|h| h.get(SCHEMA_HEADER))
        .map(|v| v.as_str())
}

/// The candles of a message on a producer subject, oldest first: one event or a page
/// ([`crate::page::decode_klines`], dispatching on the schema header).
pub fn decode_klines(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Vec<KlineEvent>, crate::page::KlinesError> {
    crate::page::decode_klines(schema_of(headers), payload)
}

/// Headers every klinebus message carries.
pub fn schema_headers() -> HeaderMap {
    headers_for(SCHEMA_VERSION)
}

/// The schema header naming `version`, and the content type.
fn headers_for(version: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(SCHEMA_HEADER, version);
    h.insert(CONTENT_TYPE_HEADER, CONTENT_TYPE);
    h
}

/// Awaits publish acks in order, all against ONE deadline; what is not acknowledged by then
/// fails as timed out. An ack future starts its own timeout only when first polled, so
/// awaiting many one after another once their acks are lost (a broker restart) would wait one
/// whole timeout per message. One timer for all of them: this runs once per published candle.
pub async fn await_acks<I>(
    acks: I,
    deadline: tokio::time::Instant,
) -> Vec<Result<PublishAck, PublishError>>
where
    I: IntoIterator<Item = PublishAckFuture>,
{
    let mut acks = acks.into_iter();
    let mut out = Vec::with_capacity(acks.size_hint().0);
    let all = async {
        for ack in acks.by_ref() {
            out.push(ack.await);
        }
    };
    if tokio::time::timeout_at(deadline, all).await.is_err() {
        // The deadline can only pass while an ack is awaited: that one, then the rest.
        let timed_out = || Err(PublishError::new(PublishErrorKind::TimedOut));
        out.push(timed_out());
        out.extend(acks.map(|_| timed_out()));
    }
    out
}

/// Publishes `event` on `subject` with schema headers and, for closed candles, the dedup
/// `Nats-Msg-Id`. Returns the ack future: await it (possibly later, many at once) to know the
/// stream stored it.
pub async fn publish_event_to(
    js: &Context,
    subject: String,
    event: &KlineEvent,
) -> Result<PublishAckFuture, BusError> {
    let payload = codec::encode(event)?;
    let mut msg = PublishMessage::build()
        .headers(schema_headers())
        .payload(payload.into());
    if let Some(id) = event.msg_id() {
        msg = msg.message_id(id);
    }
    js.send_publish(subject.clone(), msg)
        .await
        .map_err(|source| BusError::Publish { subject, source })
}

/// Publishes a forming update (no `Nats-Msg-Id`) on its `klines.…` subject without asking for
/// JetStream's ack: the stream stores it all the same. A forming update is superseded by the
/// next one seconds later, so one lost in a reconnect costs nothing, while not tracking acks
/// saves the producer and the server a reply per update (live forming updates are most of the
/// traffic). Closed candles always go through [`publish_event`] and its ack.
pub async fn publish_forming(client: &Client, event: &KlineEvent) -> Result<(), BusError> {
    let subject = subjects::for_event(event);
    let payload = codec::encode(event)?;
    client
        .publish_with_headers(subject.clone(), schema_headers(), payload.into())
        .await
        .map_err(|source| BusError::CorePublish { subject, source })
}

/// Publishes a producer event on its `klines.…` subject (see [`publish_event_to`]).
pub async fn publish_event(js: &Context, event: &KlineEvent) -> Result<PublishAckFuture, BusError> {
    publish_event_to(js, subjects::for_event(event), event).await
}

/// Publishes a page of closed candles of ONE series (ascending, at most
/// [`MAX_PER_PAGE`](crate::page::MAX_PER_PAGE)) on a producer `subject` as one message, header
/// `Klinebus-Schema: kline-page/1`, `Nats-Msg-Id` per [`ClosedCandles::msg_id`]. Returns the
/// ack future; `None` for no candles.
pub async fn publish_page(
    js: &Context,
    subject: String,
    candles: &[KlineEvent],
) -> Result<Option<PublishAckFuture>, BusError> {
    let Some(id) = ClosedCandles::msg_id(candles) else {
        return Ok(None);
    };
    publish_page_as(js, subject, candles, id).await.map(Some)
}

/// [`publish_page`] with another `Nats-Msg-Id`: a correction of candles published before must
/// not be dropped as their duplicate (`klinectl verify --deep --repair` appends `@<event_time>`).
pub async fn publish_page_as(
    js: &Context,
    subject: String,
    candles: &[KlineEvent],
    msg_id: String,
) -> Result<PublishAckFuture, BusError> {
    publish_candles(js, subject, PAGE_SCHEMA_VERSION, candles, msg_id).await
}

/// One `{"candles": [...]}` message of schema `version` with its dedup id.
async fn publish_candles<E: serde::Serialize>(
    js: &Context,
    subject: String,
    version: &str,
    candles: &[E],
    msg_id: String,
) -> Result<PublishAckFuture, BusError> {
    let payload = codec::encode(&ClosedCandlesRef { candles })?;
    let msg = PublishMessage::build()
        .headers(headers_for(version))
        .payload(payload.into())
        .message_id(msg_id);
    js.send_publish(subject.clone(), msg)
        .await
        .map_err(|source| BusError::Publish { subject, source })
}

/// Publishes committed closed candles of ONE series (ascending, at most
/// [`MAX_PER_MESSAGE`](crate::closed::MAX_PER_MESSAGE)) as one [`ClosedCandles`] message on
/// `candles.closed.<venue>.<symbol>.<interval>`, header `Klinebus-Schema: closed/1`. Returns the
/// ack future; `None` for no candles.
pub async fn publish_closed(
    js: &Context,
    candles: &[&KlineEvent],
) -> Result<Option<PublishAckFuture>, BusError> {
    let (Some(first), Some(id)) = (candles.first(), ClosedCandles::msg_id(candles)) else {
        return Ok(None);
    };
    let subject = subjects::closed(&first.venue, &first.symbol, first.interval);
    publish_candles(js, subject, CLOSED_SCHEMA_VERSION, candles, id)
        .await
        .map(Some)
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    #[test]
    fn credentials_leave_the_urls() {
        assert_eq!(
            split_credentials("nats://tok@a:4222,nats://b:4222"),
            (
                "nats://a:4222,nats://b:4222".into(),
                Some(UrlCredentials::Token("tok".into()))
            )
        );
        assert_eq!(
            split_credentials("tls://u:p@a:4222"),
            (
                "tls://a:4222".into(),
                Some(UrlCredentials::UserPassword("u".into(), "p".into()))
            )
        );
        assert_eq!(
            split_credentials("nats://a:4222"),
            ("nats://a:4222".into(), None)
        );
    }
}
