//! Command line and environment. Every doc comment here is `--help` text.

use std::time::Duration;

use clap::Parser;
use klinebus_consume::StartFrom;
use klinebus_svc::{DbArgs, NatsArgs};

/// Consumes kline events from the KLINES JetStream stream through a durable pull consumer and
/// upserts them into PostgreSQL (`ohlcv_candles`, `ingestion_status`). Start several instances
/// with the same `--consumer` to split the work.
#[derive(Debug, Clone, Parser)]
#[command(name = "kline-pg-sink", version)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub db: DbArgs,

    /// Durable consumer name; instances sharing it split the messages. Also names the dead-letter
    /// subject `dlq.<consumer>`.
    #[arg(long = "consumer", env = "SINK_CONSUMER", default_value = klinebus_schemas::streams::PG_SINK_DURABLE)]
    pub consumer: String,

    /// Subject filter of the durable consumer (applies when it is created), e.g. `klines.ws.>`.
    /// Empty (the default) reads every subject of the KLINES stream without a filter: nats-server
    /// 2.9 delivers a wildcard-filtered consumer about 3× slower than an unfiltered one.
    #[arg(long, env = "SINK_FILTER_SUBJECT", default_value = "")]
    pub filter_subject: String,

    /// Flush (one transaction) once this many candles are collected: a single event is one, a
    /// page (`kline-page/1`, backfill) up to 1000. A page larger than this is a flush of its
    /// own. Only a backlog fills a flush; a lone candle is written at once (see
    /// --flush-interval-ms). Larger flushes cost PostgreSQL and the sink less per candle.
    #[arg(long, env = "SINK_BATCH_SIZE", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Flushes of at least this many candles (after duplicates within the flush are dropped)
    /// are written with COPY: straight into ohlcv_candles when it holds nothing yet in the time
    /// range of any of their series (history arriving for the first time), else into a
    /// temporary staging table and then one upsert from it. Smaller flushes (live traffic) use
    /// one UNNEST upsert, a single round trip. The same rule and the same result either way;
    /// 0 never uses COPY.
    #[arg(long, env = "SINK_COPY_MIN_ROWS", default_value_t = 1000)]
    pub copy_min_rows: u32,

    /// Flush at the latest this many milliseconds after a batch's first message (a quiet
    /// stream flushes sooner: a lone candle never waits for the next one).
    #[arg(long, env = "SINK_FLUSH_INTERVAL_MS", default_value_t = 200)]
    pub flush_interval_ms: u64,

    /// Seconds a delivered message may stay un-acked before the server redelivers it, e.g. to
    /// another instance after this one was killed. Batches this process still holds (queued,
    /// being written, awaiting their announcements' acks) are kept alive with progress acks
    /// every quarter of it, so a slow commit is never redelivered mid-flight. An existing
    /// durable consumer with another ack wait is updated to this one at start-up.
    #[arg(long, env = "SINK_ACK_WAIT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_wait_secs: u64,

    /// Batches written at once by this process: each worker pulls from the shared durable
    /// consumer and commits its own transactions, like separate instances, so one batch is
    /// decoded and acked while another is in PostgreSQL.
    #[arg(long, env = "SINK_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub workers: u32,

    /// Largest number of PostgreSQL connections (at least --workers + 1 are opened when needed).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 4)]
    pub max_connections: u32,

    /// Address of the /metrics and /health endpoint; `off` or empty disables it.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9101")]
    pub metrics_addr: String,

    /// Recovery: delete and recreate this sink's durable consumer, delivering from `all`, an
    /// RFC 3339 time, or a stream sequence number, then consume as usual. Start ONE instance
    /// with it (it resets the consumer the others share); the upsert makes the replay harmless.
    #[arg(long, value_parser = StartFrom::parse_replay)]
    pub replay_from: Option<StartFrom>,

    /// Do not apply pending database migrations at start-up.
    #[arg(long, env = "SINK_NO_MIGRATE")]
    pub no_migrate: bool,
}

impl Config {
    /// The flush interval as a duration.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    /// The telemetry address, `None` when disabled.
    pub fn metrics_addr(&self) -> Result<Option<std::net::SocketAddr>, std::net::AddrParseError> {
        klinebus_svc::parse_metrics_addr(&self.metrics_addr)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_and_flags() {
        let c = Config::try_parse_from(["kline-pg-sink"]).unwrap();
        assert_eq!(c.consumer, "pg-sink");
        assert_eq!(c.filter_subject, "");
        assert_eq!(c.batch_size, 5000);
        assert_eq!(c.copy_min_rows as usize, crate::upsert::COPY_MIN_ROWS);
        assert_eq!(c.workers, 2);
        assert_eq!(c.ack_wait_secs, 10);
        assert!(c.flush_interval() <= Duration::from_millis(200));
        assert!(c.metrics_addr().unwrap().is_some());
        let c = Config::try_parse_from([
            "kline-pg-sink",
            "--replay-from",
            "2025-06-04T00:00:00Z",
            "--metrics-addr",
            "off",
            "--database-url",
            "postgres://u:hunter2@h/db",
            "--nats-password",
            "s3cret",
        ])
        .unwrap();
        assert!(matches!(c.replay_from, Some(StartFrom::Time(_))));
        assert!(c.metrics_addr().unwrap().is_none());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("s3cret"), "{dbg}");
        assert!(Config::try_parse_from(["x", "--replay-from", "soon"]).is_err());
        assert!(Config::try_parse_from(["x", "--batch-size", "0"]).is_err());
    }
}
