//! Command line and environment of the `kline-signals` binary. Every doc comment here is
//! `--help` text.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use klinebus_consume::StartFrom;
use klinebus_svc::{DbArgs, NatsArgs};

/// Consumes closed-candle events (`candles.closed.>` on the CANDLES stream, published by
/// kline-pg-sink after each commit) through a durable pull consumer, computes indicator and
/// strategy signals per (symbol, timeframe), upserts them into the `signals` table and publishes
/// each on `signals.<venue>.<symbol>.<interval>`.
///
/// Run exactly ONE instance per consumer name: indicator state needs every series in order. A
/// second instance waits on a PostgreSQL advisory lock until the first one stops.
#[derive(Debug, Clone, Parser)]
#[command(name = "kline-signals", version)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub db: DbArgs,

    /// Strategy and indicator parameters (TOML; see `signals.example.toml`). Without it the
    /// documented defaults apply.
    #[arg(long, env = "SIGNALS_CONFIG")]
    pub config: Option<PathBuf>,

    /// Durable consumer name on the CANDLES stream. Also names the dead-letter subject
    /// `dlq.<consumer>` and the ownership lock.
    #[arg(long = "consumer", env = "SIGNALS_CONSUMER", default_value = klinebus_schemas::streams::SIGNALS_DURABLE)]
    pub consumer: String,

    /// Subject filter of the durable consumer (applies when it is created), e.g.
    /// `candles.closed.binance.BTCUSDT.>` to compute only some series.
    #[arg(
        long,
        env = "SIGNALS_FILTER_SUBJECT",
        default_value = "candles.closed.>"
    )]
    pub filter_subject: String,

    /// Most messages pulled per request, and most processed as one batch (in stream order, one
    /// upsert statement, signal events published together, acked after).
    #[arg(long, env = "SIGNALS_BATCH_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// Most delivered, un-acked messages (applies when the consumer is created). 1, the default,
    /// makes the server itself keep stream order even across crashes and redeliveries: the next
    /// message is delivered only after the previous one was acked, but then every batch is one
    /// message. Larger values (e.g. 1000, at least --batch-size) let batches fill, which makes
    /// replays much faster; order is still kept: un-acked messages a dead previous owner left
    /// behind make the next owner restart the consumer at its ack floor.
    #[arg(long, env = "SIGNALS_MAX_ACK_PENDING", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_ack_pending: u32,

    /// Seconds a delivered message may stay un-acked before the server redelivers it (applies
    /// when the consumer is created, e.g. with --replay-from).
    #[arg(long, env = "SIGNALS_ACK_WAIT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_wait_secs: u64,

    /// Closed candles read from `ohlcv_candles` to warm a series the first time it is seen (and
    /// after a gap in the events). At least the strategies' lookback is always read. EMA and
    /// Wilder averages remember their seed; 1000 candles make that memory smaller than f64
    /// precision with the default periods, so a restart reproduces the continuous run.
    #[arg(long, env = "SIGNALS_WARM_CANDLES", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub warm_candles: u32,

    /// Most candles recomputed when an older candle arrives after newer ones and fills the hole
    /// before a series' run (a bootstrap landing after live candles, a gap repair, a
    /// redelivery): the series is rebuilt from `ohlcv_candles` (one read) and every candle from
    /// the filled hole to the newest that has no stored signal yet gets one, in candle order.
    /// If the hole is further back, only the newest this many are recomputed. 0 turns it off
    /// (older candles are only replays, as before).
    #[arg(long, env = "SIGNALS_MAX_RECOMPUTE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_recompute: u32,

    /// Also store warm-up/gap outcomes as rows with action `insufficient_data` (confidence 0,
    /// regime `unknown`). Without it they are only logged and counted.
    #[arg(long, env = "SIGNALS_STORE_INSUFFICIENT")]
    pub store_insufficient: bool,

    /// Largest number of PostgreSQL connections (plus one held for the ownership lock).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 2)]
    pub max_connections: u32,

    /// Address of the /metrics and /health endpoint; `off` or empty disables it.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9103")]
    pub metrics_addr: String,

    /// Recovery: delete and recreate the durable consumer, delivering from `all`, an RFC 3339
    /// time, or a stream sequence number. Signals are recomputed (warming from Postgres) and the
    /// upsert makes the replay harmless.
    #[arg(long, value_parser = StartFrom::parse_replay)]
    pub replay_from: Option<StartFrom>,

    /// Do not apply pending database migrations at start-up.
    #[arg(long, env = "SIGNALS_NO_MIGRATE")]
    pub no_migrate: bool,
}

impl Config {
    /// The ack wait as a duration.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
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
        let c = Config::try_parse_from(["kline-signals"]).unwrap();
        assert_eq!(c.consumer, "signals");
        assert_eq!(c.filter_subject, "candles.closed.>");
        assert_eq!(c.warm_candles, 1000);
        assert_eq!(c.max_ack_pending, 1);
        assert_eq!(
            c.max_recompute as usize,
            crate::service::engine::DEFAULT_MAX_RECOMPUTE
        );
        assert!(!c.store_insufficient && !c.no_migrate && c.config.is_none());
        assert_eq!(
            c.metrics_addr().unwrap(),
            Some("127.0.0.1:9103".parse().unwrap())
        );
        let c = Config::try_parse_from([
            "kline-signals",
            "--metrics-addr",
            "off",
            "--database-url",
            "postgres://u:hunter2@h/db",
            "--nats-token",
            "s3cret",
            "--config",
            "signals.toml",
            "--replay-from",
            "all",
        ])
        .unwrap();
        assert!(c.metrics_addr().unwrap().is_none());
        assert_eq!(c.replay_from, Some(StartFrom::All));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("s3cret"), "{dbg}");
        assert!(Config::try_parse_from(["x", "--warm-candles", "0"]).is_err());
    }
}
