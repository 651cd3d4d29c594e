//! `Retry::InOrder` on a real JetStream: a retried batch is handed over again, unchanged and
//! before anything newer, without a redelivery; `Handler::rejected` dead-letters a message of a
//! committed batch instead of acking it.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::Message;
use klinebus_consume::{
    consumer_lag, decode_closed, ConsumeOptions, Consumer, Delivered, Handler, HandlerError,
    Poison, Retry,
};
use klinebus_schemas::bus;
use klinebus_schemas::streams::{ConsumerSpec, Retention, CANDLES_STREAM, DLQ_STREAM};
use klinebus_schemas::KlineEvent;
use klinebus_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

mod common;
use common::{candle, MINUTE, START};

/// Per handler call, each message's candle index and delivery count.
type Calls = Arc<Mutex<Vec<Vec<(i64, i64)>>>>;

/// Fails the first `fail` calls (retryable), records every call's open times and deliveries,
/// rejects the message of candle `reject`.
struct Recorder {
    fail: usize,
    reject: i64,
    calls: Calls,
    done: CancellationToken,
    total: usize,
    handled: usize,
}

impl Handler for Recorder {
    type Item = Vec<KlineEvent>;
    type Committed = Vec<(usize, Poison)>;

    fn decode(&self, msg: &Message) -> Result<Vec<KlineEvent>, Poison> {
        decode_closed(msg.subject.as_str(), msg.headers.as_ref(), &msg.payload)
    }

    async fn handle(
        &mut self,
        batch: &[Delivered<Vec<KlineEvent>>],
    ) -> Result<Self::Committed, HandlerError> {
        let seen = batch
            .iter()
            .map(|d| ((d.event[0].open_time - START) / MINUTE, d.delivered))
            .collect();
        self.calls.lock().unwrap().push(seen);
        if self.fail > 0 {
            self.fail -= 1;
            return Err(HandlerError::Retryable("database away".into()));
        }
        self.handled += batch.len();
        if self.handled >= self.total {
            self.done.cancel();
        }
        Ok(batch
            .iter()
            .enumerate()
            .filter(|(_, d)| (d.event[0].open_time - START) / MINUTE == self.reject)
            .map(|(i, _)| (i, Poison::Invalid("unusable".into())))
            .collect())
    }

    fn rejected(&self, committed: &mut Self::Committed) -> Vec<(usize, Poison)> {
        std::mem::take(committed)
    }
}

#[tokio::test]
async fn a_retried_batch_comes_again_unchanged_before_anything_newer() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = bus::jetstream(client, 1024);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    let total = 20;
    for i in 0..total {
        let c = candle(i);
        bus::publish_closed(&js, &[&c])
            .await
            .unwrap()
            .unwrap()
            .await
            .unwrap();
    }
    let spec = ConsumerSpec {
        stream: CANDLES_STREAM.into(),
        durable: "in-order".into(),
        filter_subject: "candles.closed.>".into(),
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
    };
    let mut opts = ConsumeOptions::new(spec);
    opts.batch_size = 4;
    opts.retry = Retry::InOrder;
    opts.backoff_min = Duration::from_millis(20);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let done = CancellationToken::new();
    let mut handler = Recorder {
        fail: 2,
        reject: 7,
        calls: calls.clone(),
        done: done.clone(),
        total: total as usize,
        handled: 0,
    };
    let consumer = Consumer::new(js.clone(), opts);
    tokio::time::timeout(Duration::from_secs(30), consumer.run(&mut handler, done))
        .await
        .unwrap()
        .unwrap();

    let calls = calls.lock().unwrap().clone();
    // The first batch three times (two failures), as it was, never redelivered meanwhile.
    assert!(calls.len() >= 3, "{calls:?}");
    assert_eq!(calls[0], calls[1]);
    assert_eq!(calls[1], calls[2]);
    assert!(
        calls[0].iter().all(|&(_, delivered)| delivered == 1),
        "{calls:?}"
    );
    // The successful calls give every candle once, in stream order.
    let handled: Vec<i64> = calls[2..].iter().flatten().map(|&(i, _)| i).collect();
    assert_eq!(handled, (0..total).collect::<Vec<_>>());
    // Candle 7 was dead-lettered instead of acked; all others acked.
    let lag = consumer_lag(&js, CANDLES_STREAM, "in-order").await.unwrap();
    assert!(lag.is_caught_up(), "{lag:?}");
    let dlq = js.get_stream(DLQ_STREAM).await.unwrap();
    assert_eq!(dlq.get_info().await.unwrap().state.messages, 1);
}
