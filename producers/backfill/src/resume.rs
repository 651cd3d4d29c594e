//! Resuming: which parts of a series' window are not in the `KLINES` stream yet.
//!
//! The rule: a run fetches only the open times of its window that the stream does not hold on
//! the series' backfill subject.
//!
//! 1. `get_last_raw_message_by_subject` gives the newest stored candle. None, or older than the
//!    window: the whole window is missing (no scan).
//! 2. Otherwise the stream's messages on that subject are read once, up to that newest
//!    sequence, and every open time in `[from, newest]` is marked present. The unmarked runs
//!    below the newest, plus everything after it, are what is fetched.
//!
//! Reading needs no consumer: each message is one `$JS.API.STREAM.MSG.GET.KLINES` request for
//! the first message on the subject at or after a sequence (`{"seq": N, "next_by_subj": …}`),
//! the next one asked from the sequence after it. A producer's NATS user may therefore not
//! create consumers at all (one could deliver into the sinks' subjects). One request is in
//! flight per series (the series themselves run `--concurrency` at a time); a message is a
//! page of up to 1000 candles, so a year of 1m is about 525 requests.
//!
//! Why not simply "start after the newest": publishes are pipelined (thousands of acks in
//! flight), so the newest stored message does not prove that everything below it was stored —
//! a publish in the middle can fail or be lost in a reconnect while later ones land, and a run
//! killed mid-page leaves whatever subset the server had received. Marking what is actually
//! present makes the resume independent of publish order: holes are refetched, present candles
//! are never re-requested or re-published. Candles the exchange itself lacks (gaps) are absent
//! too, so each run asks for them again (a cheap request) and reports them again.
//!
//! A message that cannot be decoded counts as absent (refetched), the safe direction. Messages
//! aged out of the stream also count as absent: they are refetched, and Nats-Msg-Id dedup plus
//! the sinks' idempotent upsert make that harmless.

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageErrorKind};
use async_nats::jetstream::Context;
use klinebus_schemas::bus;
use klinebus_schemas::streams::KLINES_STREAM;
use klinebus_schemas::Interval;

use crate::plan::SeriesPlan;

/// Why the stream could not be inspected.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {subject} from stream {KLINES_STREAM}: {msg}")]
pub struct ResumeError {
    /// The subject inspected.
    pub subject: String,
    /// What went wrong.
    pub msg: String,
}

/// What is left to fetch for one series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// Ranges of open times `[start, end)` to fetch, ascending.
    pub ranges: Vec<(i64, i64)>,
    /// Candles of the window already in the stream.
    pub present: u64,
}

/// Open times of the window that the stream does not hold; see the module docs.
pub async fn missing(js: &Context, series: &SeriesPlan) -> Result<Missing, ResumeError> {
    let subject = series.subject();
    let err = |msg: String| ResumeError {
        subject: subject.clone(),
        msg,
    };
    let (from, to, iv) = (series.from_ms, series.to_ms, series.interval);
    let whole = Missing {
        ranges: if from < to { vec![(from, to)] } else { vec![] },
        present: 0,
    };
    let stream = match js.get_stream(KLINES_STREAM).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(_)) => return Ok(whole),
        Err(e) => return Err(err(e.to_string())),
    };
    let last = match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => m,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(whole),
        Err(e) => return Err(err(e.to_string())),
    };
    let newest = match bus::decode_klines(Some(&last.headers), &last.payload)
        .map(|c| c.last().map(|ev| ev.open_time))
    {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(whole),
        Err(e) => {
            tracing::warn!(%subject, error = %klinebus_svc::error_line(&e), "newest stored message undecodable; refetching the window");
            return Ok(whole);
        }
    };
    if newest < from || from >= to {
        return Ok(whole);
    }
    let scan_to = to.min(iv.next_open(newest));
    let mut present = Bits::new(iv.count_between(from, scan_to).max(0) as usize);
    // Below the stream's first sequence the server starts at its first message.
    let mut seq = 1;
    while seq <= last.sequence {
        let msg = match stream.get_first_raw_message_by_subject(&subject, seq).await {
            Ok(m) => m,
            // Nothing from `seq` on: the newest was removed meanwhile (age or byte limit).
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(err(format!("reading from sequence {seq}: {e}"))),
        };
        if msg.sequence > last.sequence {
            break;
        }
        for ev in bus::decode_klines(Some(&msg.headers), &msg.payload).unwrap_or_default() {
            if ev.closed
                && ev.open_time >= from
                && ev.open_time < scan_to
                && iv.align(ev.open_time) == ev.open_time
            {
                present.set(index(iv, from, ev.open_time));
            }
        }
        seq = msg.sequence + 1;
    }
    let mut ranges = Vec::new();
    let mut run_start: Option<i64> = None;
    let mut t = from;
    let mut i = 0;
    while t < scan_to {
        match (present.get(i), run_start) {
            (false, None) => run_start = Some(t),
            (true, Some(s)) => {
                ranges.push((s, t));
                run_start = None;
            }
            _ => {}
        }
        t = iv.next_open(t);
        i += 1;
    }
    // The run below the newest, if open, joins the tail after it.
    let tail_start = run_start.unwrap_or(scan_to);
    if tail_start < to {
        ranges.push((tail_start, to));
    }
    Ok(Missing {
        ranges,
        present: present.count(),
    })
}

/// Position of `open` among the window's open times.
fn index(iv: Interval, from: i64, open: i64) -> usize {
    iv.count_between(from, open).max(0) as usize
}

/// A fixed-size bit set.
struct Bits {
    words: Vec<u64>,
    len: usize,
}

impl Bits {
    fn new(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    fn set(&mut self, i: usize) {
        if i < self.len {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    fn get(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        let mut b = Bits::new(130);
        b.set(0);
        b.set(129);
        b.set(500);
        assert!(b.get(0) && b.get(129) && !b.get(1) && !b.get(500));
        assert_eq!(b.count(), 2);
        assert_eq!(index(Interval::M1, 0, 120_000), 2);
        assert_eq!(
            index(Interval::Mo1, 1_748_736_000_000, 1_754_006_400_000),
            2
        );
    }
}
