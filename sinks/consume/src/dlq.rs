//! Dead letters: a poison message is copied to `dlq.<consumer>` with its original payload and
//! headers plus the reason, the copy's publish ack is awaited, and only then is the original
//! terminated. A failed copy leaves the original un-terminated (it is naked and comes back).

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind, Context};
use async_nats::HeaderMap;
use klinebus_schemas::subjects;

/// Header carrying why the message was dead-lettered (`<kind>: <detail>`).
pub const REASON_HEADER: &str = "Klinebus-Dlq-Reason";
/// Header carrying the subject the message was originally published on.
pub const SUBJECT_HEADER: &str = "Klinebus-Dlq-Subject";
/// Header carrying the consumer that rejected it.
pub const CONSUMER_HEADER: &str = "Klinebus-Dlq-Consumer";
/// Header carrying the original stream sequence.
pub const SEQUENCE_HEADER: &str = "Klinebus-Dlq-Sequence";
/// The original `Nats-Msg-Id`, if any (the copy gets its own id, `<consumer>:<sequence>`).
pub const MSG_ID_HEADER: &str = "Klinebus-Dlq-Msg-Id";

const NATS_MSG_ID: &str = "Nats-Msg-Id";
const MAX_REASON: usize = 1000;

/// The dead-letter copy could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The publish was not sent.
    #[error("dead-letter publish to {subject}")]
    Publish {
        /// DLQ subject.
        subject: String,
        /// Why.
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    /// Terminating the original failed (the copy is stored; a redelivery is deduplicated).
    #[error("terminating the original")]
    Term(#[source] async_nats::Error),
}

/// Header values cannot hold line breaks; keep them short too.
fn header_safe(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The headers of the dead-letter copy: the original ones (its `Nats-Msg-Id` moved to
/// [`MSG_ID_HEADER`]) plus reason, subject, consumer and sequence.
pub fn dlq_headers(
    original: Option<&HeaderMap>,
    subject: &str,
    consumer: &str,
    sequence: u64,
    reason: &str,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(orig) = original {
        for (name, values) in orig.iter() {
            let name: &str = name.as_ref();
            let target = if name == NATS_MSG_ID {
                MSG_ID_HEADER
            } else {
                name
            };
            for v in values {
                h.append(target, v.as_str());
            }
        }
    }
    h.insert(REASON_HEADER, header_safe(reason).as_str());
    h.insert(SUBJECT_HEADER, subject);
    h.insert(CONSUMER_HEADER, consumer);
    h.insert(SEQUENCE_HEADER, sequence.to_string().as_str());
    h
}

/// Copies `msg` to `dlq.<consumer>`, waits for the stream to store it, then terminates `msg`.
pub async fn dead_letter(
    js: &Context,
    consumer: &str,
    msg: &jetstream::Message,
    sequence: u64,
    reason: &str,
) -> Result<(), DlqError> {
    let subject = subjects::dlq(consumer);
    let headers = dlq_headers(
        msg.headers.as_ref(),
        msg.subject.as_str(),
        consumer,
        sequence,
        reason,
    );
    // Our own id: a retry of the same copy (term lost, message redelivered) is dropped.
    let publish = PublishMessage::build()
        .headers(headers)
        .payload(msg.payload.clone())
        .message_id(format!("{consumer}:{sequence}"));
    let fail = |source| DlqError::Publish {
        subject: subject.clone(),
        source,
    };
    js.send_publish(subject.clone(), publish)
        .await
        .map_err(fail)?
        .await
        .map_err(fail)?;
    msg.ack_with(AckKind::Term).await.map_err(DlqError::Term)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn headers_keep_the_original_and_add_the_reason() {
        let mut orig = HeaderMap::new();
        orig.insert("Klinebus-Schema", "kline/1");
        orig.insert(NATS_MSG_ID, "binance:BTCUSDT:1m:1");
        let h = dlq_headers(Some(&orig), "klines.ws.x", "pg-sink", 7, "invalid: a\r\nb");
        assert_eq!(h.get("Klinebus-Schema").unwrap().as_str(), "kline/1");
        assert!(h.get(NATS_MSG_ID).is_none());
        assert_eq!(
            h.get(MSG_ID_HEADER).unwrap().as_str(),
            "binance:BTCUSDT:1m:1"
        );
        assert_eq!(h.get(REASON_HEADER).unwrap().as_str(), "invalid: a  b");
        assert_eq!(h.get(SUBJECT_HEADER).unwrap().as_str(), "klines.ws.x");
        assert_eq!(h.get(CONSUMER_HEADER).unwrap().as_str(), "pg-sink");
        assert_eq!(h.get(SEQUENCE_HEADER).unwrap().as_str(), "7");
        let long = "é".repeat(2000);
        assert!(header_safe(&long).len() <= MAX_REASON);
    }
}
