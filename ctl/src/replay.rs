//! `klinectl replay`: reset a durable consumer to a start time or sequence.
//!
//! JetStream cannot move an existing consumer's start, so the consumer is re-created under the
//! same name with the same settings and a new deliver policy. Sinks that are running see their
//! pull fail once, fetch the consumer again by name and carry on from the new position;
//! messages they had in flight are redelivered, which the idempotent sinks absorb.

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use klinebus_schemas::bus::{self, BusOptions};

use crate::cli::ReplayArgs;
use crate::{CtlError, Outcome};

/// Parses `all`, `seq:N` or an RFC 3339 time.
pub fn parse_from(s: &str) -> Result<DeliverPolicy, CtlError> {
    if s == "all" {
        return Ok(DeliverPolicy::All);
    }
    if let Some(n) = s.strip_prefix("seq:") {
        let start_sequence = n
            .parse()
            .map_err(|_| CtlError::Usage(format!("--from {s:?}: seq:N needs a whole number")))?;
        return Ok(DeliverPolicy::ByStartSequence { start_sequence });
    }
    let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| {
        CtlError::Usage(format!(
            "--from {s:?}: expected all, seq:N or an RFC 3339 time such as 2024-06-01T00:00:00Z ({e})"
        ))
    })?;
    let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(t.timestamp_millis()) * 1_000_000,
    )
    .map_err(|e| CtlError::Usage(format!("--from {s:?}: {e}")))?;
    Ok(DeliverPolicy::ByStartTime { start_time })
}

/// Re-creates `consumer` on `stream` starting at `from` (and optionally a new filter).
pub async fn reset(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer_name: &str,
    from: DeliverPolicy,
    filter: Option<&str>,
) -> Result<consumer::Info, CtlError> {
    let s = js
        .get_stream(stream)
        .await
        .map_err(CtlError::nats("reading the stream"))?;
    let mut c: consumer::Consumer<consumer::Config> =
        s.get_consumer(consumer_name).await.map_err(|e| {
            CtlError::Usage(format!(
                "no consumer {consumer_name:?} on stream {stream}: {e}"
            ))
        })?;
    let mut config = c
        .info()
        .await
        .map_err(CtlError::nats("reading the consumer"))?
        .config
        .clone();
    config.deliver_policy = from;
    if let Some(f) = filter {
        config.filter_subject = f.to_owned();
    }
    s.delete_consumer(consumer_name)
        .await
        .map_err(CtlError::nats("deleting the consumer"))?;
    let mut created = s
        .create_consumer(config)
        .await
        .map_err(CtlError::nats("creating the consumer"))?;
    let info = created
        .info()
        .await
        .map_err(CtlError::nats("reading the new consumer"))?
        .clone();
    Ok(info)
}

/// Runs `replay`.
pub async fn run(opts: &BusOptions, a: &ReplayArgs) -> Result<Outcome, CtlError> {
    let from = parse_from(&a.from)?;
    let client = bus::connect(opts)
        .await
        .map_err(CtlError::nats("connecting"))?;
    let js = async_nats::jetstream::new(client);
    let info = reset(&js, &a.stream, &a.consumer, from, a.subjects.as_deref()).await?;
    Ok(Outcome {
        output: format!(
            "consumer {} on {} reset (from {}); {} messages to re-deliver\n",
            info.name, a.stream, a.from, info.num_pending
        ),
        code: 0,
    })
}
