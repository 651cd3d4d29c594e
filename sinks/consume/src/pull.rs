//! The pull loop: durable consumer → batches → decode/validate → dead letters → handler →
//! ack (after the handler's commit and its confirmation) or nak with backoff; progress acks
//! for batches still held.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::consumer::{pull, FromConsumer, PullConsumer};
use async_nats::jetstream::{self, AckKind, Context};
use futures::{FutureExt, StreamExt};
use klinebus_schemas::bus::consumer_config;
use klinebus_svc::Backoff;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batch::{collect, is_terminal, Collected, Limits};
use crate::decode::Poison;
use crate::dlq::dead_letter;
use crate::handler::{BoxError, Confirmation, Delivered, Handler, HandlerError};
use crate::lag::{look, RetentionHeadroom, Stats};
use crate::options::{ConsumeOptions, Retry, StartFrom};
use crate::progress::{self, InFlight, Tracked};

/// Pull-loop failures that stop it.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The stream does not exist or JetStream is unreachable.
    #[error("stream {stream}")]
    Stream {
        /// Stream name.
        stream: String,
        /// Why.
        #[source]
        source: async_nats::jetstream::context::GetStreamError,
    },
    /// The durable consumer could not be fetched, created or deleted.
    #[error("consumer {durable}")]
    Consumer {
        /// Durable name.
        durable: String,
        /// Why.
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
    /// The handler reported a fatal error.
    #[error("handler failed")]
    Handler(#[source] BoxError),
}

/// Consecutive non-terminal stream errors after which the pull stream is rebuilt anyway.
const MAX_STREAM_ERRORS: u32 = 5;
/// Committed batches awaiting their confirmation at once; the loop waits for the oldest beyond.
const MAX_CONFIRMING: usize = 64;
/// Longest wait at shutdown for the confirmations still running (each has its own deadline).
const CONFIRM_AT_SHUTDOWN: Duration = Duration::from_secs(15);
/// Longest pause before the retention headroom is read again after failing.
const HEADROOM_RETRY_MAX: Duration = Duration::from_secs(300);

/// A collected batch and its progress-ack registration.
type Batch = (Vec<jetstream::Message>, Tracked);

/// What the loop does after a batch.
enum Flow {
    Next,
    /// Shutdown came while a batch was retried in order ([`Retry::InOrder`]).
    Stop,
}

/// A durable pull consumer feeding a [`Handler`]. Several processes running it with the same
/// durable name split the messages between them.
pub struct Consumer {
    js: Context,
    opts: ConsumeOptions,
    stats: Arc<Stats>,
}

/// Pushes out the acks (fire-and-forget publishes) before a consumer stops, for at most 5 s.
/// Without a connection they cannot go out, and waiting for one would hold up the shutdown:
/// the server redelivers those messages instead, and sinks write idempotently.
pub async fn flush_acks(client: &async_nats::Client) {
    if client.connection_state() != State::Connected {
        tracing::warn!("NATS unreachable at shutdown; un-acked messages will be redelivered");
        return;
    }
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        tracing::warn!(error = %e, "flushing acks timed out");
    }
}

impl Consumer {
    /// A consumer loop on `js` (streams must exist: `bus::ensure_streams`).
    pub fn new(js: Context, opts: ConsumeOptions) -> Self {
        Self {
            js,
            opts,
            stats: Stats::shared(),
        }
    }

    /// Live counters (received, acked, dead letters, lag…).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Gets the durable consumer, creating it (deliver all) if missing. For a replay
    /// ([`StartFrom::is_replay`]) it is deleted and recreated with the matching deliver policy
    /// first — other instances sharing the durable lose their consumer too, so replay with one.
    pub async fn prepare(&self, start: &StartFrom) -> Result<PullConsumer, ConsumeError> {
        prepare(&self.js, &self.opts, start).await
    }

    /// Runs until `shutdown` fires (then finishes the batch in flight, acks it once confirmed
    /// and returns `Ok`) or the handler reports a fatal error. Broker outages and retryable
    /// handler errors never end it.
    pub async fn run<H: Handler>(
        &self,
        handler: &mut H,
        shutdown: CancellationToken,
    ) -> Result<(), ConsumeError> {
        // A cluster electing a leader (or a broker restarting) answers nothing for a while:
        // wait for it here as the pull loop does later, instead of stopping the process.
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut consumer = loop {
            match self.prepare(&self.opts.start).await {
                Ok(c) => break c,
                Err(e) if is_unanswered(&e) => {
                    let wait = backoff.fail();
                    tracing::warn!(error = %klinebus_svc::error_line(&e), retry_in_ms = wait.as_millis() as u64,
                        "cannot get the consumer yet; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let lag_stop = shutdown.child_token();
        let lag_task = tokio::spawn(refresh_lag(
            self.js.clone(),
            self.opts.clone(),
            self.stats.clone(),
            lag_stop.clone(),
        ));
        // The consumer's actual ack wait (an existing durable may keep another one).
        let every = progress::interval(consumer.cached_info().config.ack_wait);
        let in_flight = Arc::new(InFlight::default());
        let progress_stop = CancellationToken::new();
        let progress_task = tokio::spawn(progress::keep_alive(
            self.js.client(),
            in_flight.clone(),
            every,
            self.opts.spec.durable.clone(),
            progress_stop.clone(),
        ));
        let mut confirming = JoinSet::new();
        let result = self
            .pull_loop(
                &mut consumer,
                handler,
                &in_flight,
                &mut confirming,
                &shutdown,
            )
            .await;
        finish_confirming(&mut confirming, &self.js.client()).await;
        progress_stop.cancel();
        let _ = progress_task.await;
        lag_stop.cancel();
        let _ = lag_task.await;
        flush_acks(&self.js.client()).await;
        result
    }

    async fn pull_loop<H: Handler>(
        &self,
        consumer: &mut PullConsumer,
        handler: &mut H,
        in_flight: &Arc<InFlight>,
        confirming: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Result<(), ConsumeError> {
        // Fetching and decoding the next batch overlaps the handler's write of this one.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let stop_collector = shutdown.child_token();
        let collector = tokio::spawn(collect_loop(
            self.js.clone(),
            self.opts.clone(),
            consumer.clone(),
            H::weight,
            in_flight.clone(),
            tx,
            stop_collector.clone(),
        ));
        let mut backoff = Backoff::new(self.opts.backoff_min, self.opts.backoff_max);
        let in_order = self.opts.retry == Retry::InOrder;
        let mut result = Ok(());
        let mut stopped = false;
        while let Some((mut batch, tracked)) = rx.recv().await {
            if stopped || (in_order && shutdown.is_cancelled()) {
                // In order: what was pulled but not handled goes back at once, in stream
                // order, so that it comes before anything newer (the collector hands over
                // what its pull stream still buffers, then ends).
                self.nak_all(&batch, None).await;
                drop(tracked);
                continue;
            }
            let flow = self
                .process(
                    &mut batch,
                    tracked,
                    handler,
                    &mut backoff,
                    confirming,
                    shutdown,
                )
                .await;
            match flow {
                Ok(Flow::Next) => continue,
                Ok(Flow::Stop) => {}
                Err(e) => result = Err(e),
            }
            if !in_order {
                break;
            }
            stopped = true;
            stop_collector.cancel();
        }
        stop_collector.cancel();
        drop(rx);
        let _ = collector.await;
        result
    }

    fn count_error(&self, kind: &'static str) {
        count_error(&self.opts.spec.durable, kind);
    }

    /// Decodes a batch, dead-letters the poison, hands the rest to the handler, then acks (once
    /// the handler's confirmation succeeded) or naks.
    async fn process<H: Handler>(
        &self,
        raw: &mut Vec<jetstream::Message>,
        tracked: Tracked,
        handler: &mut H,
        backoff: &mut Backoff,
        confirming: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Result<Flow, ConsumeError> {
        let durable = &self.opts.spec.durable;
        Stats::add(&self.stats.received, raw.len());
        metrics::counter!("klinebus_sink_messages_received_total", "consumer" => durable.clone())
            .increment(raw.len() as u64);
        let mut good = Vec::with_capacity(raw.len());
        let mut good_msgs = Vec::with_capacity(raw.len());
        let mut lag = None;
        for m in raw.drain(..) {
            let (seq, delivered) = match m.info() {
                Ok(i) => {
                    lag = Some(i.pending);
                    (i.stream_sequence, i.delivered)
                }
                Err(_) => (0, 1),
            };
            match handler.decode(&m) {
                Ok(event) => {
                    good.push(Delivered {
                        event,
                        subject: m.subject.clone(),
                        stream_sequence: seq,
                        delivered,
                    });
                    good_msgs.push(m);
                }
                Err(p) => self.poison(&m, seq, &p).await,
            }
        }
        if let Some(l) = lag {
            self.set_lag(l);
        }
        if good.is_empty() {
            return Ok(Flow::Next);
        }
        let span = tracing::info_span!(
            "batch",
            consumer = %durable,
            size = good.len(),
            first_seq = good.first().map_or(0, |d| d.stream_sequence),
            last_seq = good.last().map_or(0, |d| d.stream_sequence),
        );
        let started = Instant::now();
        let mut outcome = handler.handle(&good).instrument(span.clone()).await;
        if self.opts.retry == Retry::InOrder {
            // The same batch again, in place: nothing after it may be handled first.
            while let Err(HandlerError::Retryable(e)) = &outcome {
                let delay = backoff.fail();
                self.count_error("handler_retryable");
                tracing::warn!(parent: &span, error = %klinebus_svc::error_line(e.as_ref()),
                    delay_ms = delay.as_millis() as u64, failures = backoff.failures(),
                    "batch failed; retrying it in place");
                for m in &good_msgs {
                    let _ = m.ack_with(AckKind::Progress).await;
                }
                if !pause(delay, shutdown).await {
                    self.nak_all(&good_msgs, None).await;
                    return Ok(Flow::Stop);
                }
                outcome = handler.handle(&good).instrument(span.clone()).await;
            }
        }
        match outcome {
            Ok(mut committed) => {
                backoff.reset();
                let rejected = handler.rejected(&mut committed);
                if !rejected.is_empty() {
                    good_msgs = self.settle_rejected(good_msgs, &good, rejected).await;
                }
                let confirmation = handler
                    .after_commit(committed)
                    .instrument(span.clone())
                    .await;
                let Some(confirmation) = confirmation else {
                    ack_all(&good_msgs, durable, &span).await;
                    Stats::add(&self.stats.acked, good_msgs.len());
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(parent: &span, elapsed_ms = started.elapsed().as_millis() as u64, "batch committed and acked");
                    return Ok(Flow::Next);
                };
                while confirming.try_join_next().is_some() {}
                while confirming.len() >= MAX_CONFIRMING {
                    let _ = confirming.join_next().await;
                }
                // A batch that keeps failing comes back less and less often.
                let times = good.iter().map(|d| d.delivered).max().unwrap_or(1);
                let retry_in = nak_delay(&self.opts, times);
                confirming.spawn(
                    settle(
                        confirmation,
                        good_msgs,
                        tracked,
                        self.stats.clone(),
                        durable.clone(),
                        retry_in,
                    )
                    .instrument(span),
                );
                Ok(Flow::Next)
            }
            Err(HandlerError::Retryable(e)) => {
                let delay = backoff.fail();
                self.count_error("handler_retryable");
                tracing::warn!(parent: &span, error = %klinebus_svc::error_line(e.as_ref()),
                    delay_ms = delay.as_millis() as u64, failures = backoff.failures(),
                    "batch failed; naked for retry");
                self.nak_all(&good_msgs, Some(delay)).await;
                pause(delay, shutdown).await;
                Ok(Flow::Next)
            }
            Err(HandlerError::Fatal(e)) => {
                self.count_error("handler_fatal");
                tracing::error!(parent: &span, error = %klinebus_svc::error_line(e.as_ref()),
                    "batch failed fatally; stopping");
                self.nak_all(&good_msgs, None).await;
                Err(ConsumeError::Handler(e))
            }
        }
    }

    /// Dead-letters the messages the handler rejected after all; returns the others, in stream
    /// order, to be acked (or confirmed) as usual.
    async fn settle_rejected<T>(
        &self,
        msgs: Vec<jetstream::Message>,
        good: &[Delivered<T>],
        rejected: Vec<(usize, Poison)>,
    ) -> Vec<jetstream::Message> {
        let mut reasons: Vec<Option<Poison>> = (0..msgs.len()).map(|_| None).collect();
        for (i, p) in rejected {
            if let Some(slot) = reasons.get_mut(i) {
                *slot = Some(p);
            }
        }
        let mut rest = Vec::with_capacity(msgs.len());
        for ((m, d), reason) in msgs.into_iter().zip(good).zip(reasons) {
            match reason {
                Some(p) => self.poison(&m, d.stream_sequence, &p).await,
                None => rest.push(m),
            }
        }
        rest
    }

    async fn nak_all(&self, msgs: &[jetstream::Message], delay: Option<Duration>) {
        nak_all(msgs, delay).await;
        Stats::add(&self.stats.naked, msgs.len());
    }

    async fn poison(&self, m: &jetstream::Message, seq: u64, p: &Poison) {
        let durable = &self.opts.spec.durable;
        let reason = p.to_string();
        tracing::warn!(subject = %m.subject, stream_seq = seq, reason = %reason, "poison message; dead-lettering");
        match dead_letter(&self.js, durable, m, seq, &reason).await {
            Ok(()) => {
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("klinebus_sink_dead_letters_total", "consumer" => durable.clone(), "reason" => p.kind())
                    .increment(1);
            }
            Err(e) => {
                self.count_error("dlq");
                tracing::warn!(stream_seq = seq, error = %klinebus_svc::error_line(&e), "dead-lettering failed; message naked for another try");
                let _ = m.ack_with(AckKind::Nak(Some(self.opts.backoff_max))).await;
            }
        }
    }

    fn set_lag(&self, lag: u64) {
        self.stats.lag.store(lag, Ordering::Relaxed);
        metrics::gauge!("klinebus_sink_consumer_lag", "consumer" => self.opts.spec.durable.clone())
            .set(lag as f64);
    }
}

fn count_error(durable: &str, kind: &'static str) {
    metrics::counter!("klinebus_sink_errors_total", "consumer" => durable.to_owned(), "kind" => kind)
        .increment(1);
}

/// Acks every message, one by one (never ack-all: other instances' messages).
async fn ack_all(msgs: &[jetstream::Message], durable: &str, span: &tracing::Span) {
    for m in msgs {
        if let Err(e) = m.ack().await {
            count_error(durable, "ack");
            tracing::warn!(parent: span, error = %e, "ack failed; message will be redelivered (idempotent)");
        }
    }
}

async fn nak_all(msgs: &[jetstream::Message], delay: Option<Duration>) {
    for m in msgs {
        if let Err(e) = m.ack_with(AckKind::Nak(delay)).await {
            tracing::debug!(error = %e, "nak failed; the ack wait brings it back anyway");
        }
    }
}

/// The redelivery delay of a batch whose messages were delivered `times` times: doubling from
/// `backoff_min` up to `backoff_max`.
fn nak_delay(o: &ConsumeOptions, times: i64) -> Duration {
    let times = u32::try_from(times.max(1)).unwrap_or(u32::MAX);
    Backoff::new(o.backoff_min, o.backoff_max).delay(times)
}

/// Awaits a committed batch's confirmation, then acks its messages, or naks them for
/// redelivery if it failed (the handler does its follow-up again then). `tracked` keeps the
/// progress acks going until then.
async fn settle(
    confirmation: Confirmation,
    msgs: Vec<jetstream::Message>,
    tracked: Tracked,
    stats: Arc<Stats>,
    durable: String,
    retry_in: Duration,
) {
    let span = tracing::Span::current();
    match confirmation.await {
        Ok(()) => {
            ack_all(&msgs, &durable, &span).await;
            Stats::add(&stats.acked, msgs.len());
            stats.batches.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("batch committed, confirmed and acked");
        }
        Err(e) => {
            count_error(&durable, "confirm");
            tracing::warn!(error = %klinebus_svc::error_line(e.as_ref()), messages = msgs.len(), retry_in_ms = retry_in.as_millis() as u64,
                "batch committed but not confirmed; naked for redelivery");
            nak_all(&msgs, Some(retry_in)).await;
            Stats::add(&stats.naked, msgs.len());
        }
    }
    drop(tracked);
}

/// At shutdown: lets the confirmations still running finish (their acks go out with the final
/// flush), but not without a connection to NATS, which could not confirm anything: those
/// batches are redelivered instead and the handler's follow-up is done again then.
async fn finish_confirming(set: &mut JoinSet<()>, client: &async_nats::Client) {
    while set.try_join_next().is_some() {}
    if set.is_empty() {
        return;
    }
    if client.connection_state() != State::Connected {
        tracing::warn!(
            batches = set.len(),
            "NATS unreachable at shutdown; unconfirmed batches left for redelivery"
        );
        set.abort_all();
        return;
    }
    let all = async { while set.join_next().await.is_some() {} };
    if tokio::time::timeout(CONFIRM_AT_SHUTDOWN, all)
        .await
        .is_err()
    {
        tracing::warn!("batches still unconfirmed at shutdown; left for redelivery");
        set.abort_all();
    }
}

/// Bytes one pull request asks for at most, for batches weighing `size`: 1 KiB a unit, more
/// than a single event (about 500 B with its headers) and three page candles (about 330 B
/// each), so batches of single events are bounded by the message count as before, and pages by
/// bytes: a few pages a request instead of `size` pages of a thousand candles. Never less than
/// two of the largest messages the server takes, or one would not fit in a request at all.
fn pull_bytes(size: usize, max_payload: usize) -> usize {
    let floor = 2 * max_payload.max(1 << 20);
    size.saturating_mul(1024).clamp(floor, floor.max(64 << 20))
}

/// Pulls batches and hands them over until `stop` fires (the partial batch is handed over
/// too). Survives broker outages: the pull stream is rebuilt and the consumer fetched again.
async fn collect_loop(
    js: Context,
    o: ConsumeOptions,
    mut consumer: PullConsumer,
    weigh: fn(&jetstream::Message) -> usize,
    in_flight: Arc<InFlight>,
    tx: tokio::sync::mpsc::Sender<Batch>,
    stop: CancellationToken,
) {
    let wanted = Limits {
        size: o.batch_size.max(1),
        flush_interval: o.flush_interval,
        idle_gap: o.idle_gap,
    };
    // The message that did not fit into the last batch begins the next one (kept across
    // rebuilds of the pull stream: its ack subject stays valid).
    let mut carry = None;
    let durable = &o.spec.durable;
    let in_order = o.retry == Retry::InOrder;
    let mut stream_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    while !stop.is_cancelled() {
        // With one un-acked message allowed (the consumer's setting, which may predate the
        // options) nothing more can arrive before this one is acked: never wait for company.
        let limits = if consumer.cached_info().config.max_ack_pending == 1 {
            Limits { size: 1, ..wanted }
        } else {
            wanted
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(limits.size.min(20_000))
            .max_bytes_per_batch(pull_bytes(
                limits.size,
                js.client().server_info().max_payload,
            ))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                count_error(durable, "pull");
                tracing::warn!(error = %e, "cannot start pulling; retrying");
                if !pause(stream_backoff.fail(), &stop).await {
                    return;
                }
                if let Ok(c) = prepare(&js, &o, &StartFrom::Resume).await {
                    consumer = c;
                }
                continue;
            }
        };
        let mut errors = 0;
        loop {
            let mut batch = Vec::with_capacity(limits.size.min(1024));
            let state = collect(&mut messages, &mut batch, &mut carry, limits, weigh, &stop).await;
            if !batch.is_empty() {
                errors = 0;
                stream_backoff.reset();
                // Kept alive from here: it may wait for the handler longer than the ack wait.
                let tracked = in_flight.track(&batch);
                if tx.send((batch, tracked)).await.is_err() {
                    return;
                }
            }
            match state {
                Collected::Ready => {}
                Collected::Shutdown if in_order => {
                    // Hand over what the pull already delivered, to be naked in order.
                    let mut rest: Vec<_> = carry.take().into_iter().collect();
                    rest.extend(buffered(&mut messages));
                    if !rest.is_empty() {
                        let tracked = in_flight.track(&rest);
                        let _ = tx.send((rest, tracked)).await;
                    }
                    return;
                }
                Collected::Shutdown => return,
                Collected::Error(e) if !is_terminal(&e) && errors < MAX_STREAM_ERRORS => {
                    errors += 1;
                    count_error(durable, "pull");
                    tracing::warn!(error = %e, "pull stream error; continuing");
                }
                Collected::Error(e) => {
                    count_error(durable, "pull");
                    tracing::warn!(error = %e, "pull stream broken; recreating it");
                    break;
                }
                Collected::Ended => {
                    tracing::warn!("pull stream ended; recreating it");
                    break;
                }
            }
        }
        drop(messages);
        if !pause(stream_backoff.fail(), &stop).await {
            return;
        }
        match prepare(&js, &o, &StartFrom::Resume).await {
            Ok(c) => consumer = c,
            Err(e) => {
                tracing::warn!(error = %klinebus_svc::error_line(&e), "cannot get the consumer yet")
            }
        }
    }
}

/// The messages a pull stream has already delivered, without waiting for more.
fn buffered<S>(messages: &mut S) -> Vec<jetstream::Message>
where
    S: futures::Stream<Item = Result<jetstream::Message, pull::MessagesError>> + Unpin,
{
    let mut out = Vec::new();
    while let Some(Some(Ok(m))) = messages.next().now_or_never() {
        out.push(m);
    }
    out
}

/// Sleeps `d` unless shutdown comes first; false if it did.
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Refreshes the lag and the retention headroom from the server now and then (messages only
/// report the lag while flowing, and nothing reports the headroom). The headroom needs one more
/// request (`$JS.API.STREAM.MSG.GET.<stream>`); when that fails, the lag is exported all the
/// same and the headroom tried again with a growing pause (a denied request is logged by the
/// server each time).
async fn refresh_lag(
    js: Context,
    opts: ConsumeOptions,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let (stream, durable) = (&opts.spec.stream, &opts.spec.durable);
    let mut cache = None;
    let mut retry = Backoff::new(opts.lag_interval, HEADROOM_RETRY_MAX);
    let mut headroom_at = Instant::now();
    let mut failing = false;
    loop {
        let failed = match look(&js, stream, durable).await {
            Ok(l) => {
                let lag = l.lag();
                stats.lag.store(lag.pending, Ordering::Relaxed);
                metrics::gauge!("klinebus_sink_consumer_lag", "consumer" => durable.clone())
                    .set(lag.pending as f64);
                if Instant::now() < headroom_at {
                    None
                } else {
                    match l.headroom(&mut cache).await {
                        Ok(h) => {
                            export_headroom(stream, durable, &h);
                            retry.reset();
                            failing = false;
                            None
                        }
                        Err(e) => {
                            headroom_at = Instant::now() + retry.fail();
                            Some(e)
                        }
                    }
                }
            }
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            count_error(durable, "probe");
            // Once per run of failures: the gauges keep their last values meanwhile.
            if !std::mem::replace(&mut failing, true) {
                tracing::warn!(consumer = %durable, error = %klinebus_svc::error_line(&e),
                    "cannot read consumer lag or retention headroom; retrying");
            }
        }
        if !pause(opts.lag_interval, &stop).await {
            return;
        }
    }
}

/// `klinebus_sink_retention_headroom_ratio{stream,consumer,limit}` (both limits, 1 when
/// unlimited), `_seconds` and `_bytes` (only for a limit the stream has).
fn export_headroom(stream: &str, durable: &str, h: &RetentionHeadroom) {
    let labels = [
        ("stream", stream.to_owned()),
        ("consumer", durable.to_owned()),
    ];
    for (limit, ratio) in [("age", h.age_ratio()), ("bytes", h.bytes_ratio())] {
        let mut l = labels.to_vec();
        l.push(("limit", limit.to_owned()));
        metrics::gauge!("klinebus_sink_retention_headroom_ratio", &l).set(ratio);
    }
    if let Some(left) = h.age_left() {
        metrics::gauge!("klinebus_sink_retention_headroom_seconds", &labels)
            .set(left.as_secs_f64());
    }
    if let Some(left) = h.bytes_left() {
        metrics::gauge!("klinebus_sink_retention_headroom_bytes", &labels).set(left as f64);
    }
}

/// Gets the durable consumer, creating it (deliver all) if missing; recreates it for a replay;
/// with `update_ack_wait`, brings an existing durable's ack wait to the spec's.
/// A request that timed out or could not be sent, or JetStream saying it is temporarily
/// unavailable (503: no leader yet): worth asking again.
fn is_unanswered(e: &ConsumeError) -> bool {
    use async_nats::jetstream::context::GetStreamErrorKind;
    use async_nats::jetstream::stream::ConsumerErrorKind;
    let unavailable = |e: &async_nats::jetstream::Error| e.code() == 503;
    match e {
        ConsumeError::Stream { source, .. } => match source.kind() {
            GetStreamErrorKind::Request => true,
            GetStreamErrorKind::JetStream(j) => unavailable(&j),
            _ => false,
        },
        ConsumeError::Consumer { source, .. } => match source.kind() {
            ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => true,
            ConsumerErrorKind::JetStream(j) => unavailable(&j),
            _ => false,
        },
        _ => false,
    }
}

async fn prepare(
    js: &Context,
    opts: &ConsumeOptions,
    start: &StartFrom,
) -> Result<PullConsumer, ConsumeError> {
    let spec = &opts.spec;
    let stream = js
        .get_stream(&spec.stream)
        .await
        .map_err(|source| ConsumeError::Stream {
            stream: spec.stream.clone(),
            source,
        })?;
    let cerr = |source| ConsumeError::Consumer {
        durable: spec.durable.clone(),
        source,
    };
    let config = consumer_config(spec, start.deliver_policy());
    if start.is_replay() {
        match stream.delete_consumer(&spec.durable).await {
            Ok(_) => tracing::info!(durable = %spec.durable, "replay: deleted consumer"),
            Err(e) => {
                tracing::info!(durable = %spec.durable, error = %e, "replay: no consumer to delete")
            }
        }
        let c = stream.create_consumer(config).await.map_err(cerr)?;
        tracing::info!(durable = %spec.durable, start = ?start, "replay: consumer recreated");
        return Ok(c);
    }
    let mut c: PullConsumer = stream
        .get_or_create_consumer(&spec.durable, config)
        .await
        .map_err(cerr)?;
    let current = c.cached_info().config.ack_wait;
    if opts.update_ack_wait && current != spec.ack_wait {
        // Only the ack wait changes: the rest (deliver policy of a replay, filter) must stay as
        // the server has it, or 2.9 refuses the update. A create with the same durable name and
        // an updatable difference is an update there.
        let updated = match pull::Config::try_from_consumer_config(c.cached_info().config.clone()) {
            Ok(mut config) => {
                config.ack_wait = spec.ack_wait;
                stream
                    .create_consumer(config)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match updated {
            Ok(u) => {
                tracing::info!(durable = %spec.durable, from_secs = current.as_secs_f64(),
                    to_secs = spec.ack_wait.as_secs_f64(), "durable consumer's ack wait updated");
                c = u;
            }
            Err(e) => tracing::warn!(durable = %spec.durable, error = %e,
                ack_wait_secs = current.as_secs_f64(),
                "cannot update the durable consumer's ack wait; keeping it"),
        }
    }
    let existing = &c.cached_info().config.filter_subject;
    if *existing != spec.filter_subject {
        tracing::warn!(
            durable = %spec.durable,
            existing = %existing,
            wanted = %spec.filter_subject,
            "durable consumer exists with another filter subject; keeping it (use --replay-from to recreate)"
        );
    }
    Ok(c)
}
