//! `signals-bench`, two modes (build with `--release`):
//!
//! - `signals-bench [candles]` (default 100 000): per-candle latency of one series — all
//!   indicators, strategies and the aggregate. Prints p50/p99/max in microseconds; the target is
//!   p99 < 1 ms.
//! - `signals-bench replay [events] [series] [-- kline-signals flags…]` (default 100 000 events
//!   over 10 series of 1m candles): the whole sink. A private `nats-server -js` on a free port
//!   (`NATS_SERVER_BIN`, else `nats-server` on PATH) and a throwaway database on
//!   `DATABASE_ADMIN_URL` (else the local server), both from `klinebus_testkit`, get N closed-candle events on
//!   `candles.closed.binance.<SYM>.1m` (consecutive per series) and the matching
//!   `ohlcv_candles` rows plus `--warm-candles` of history before them, so every event yields a
//!   signal. Then the real service (`kline_signals::run`, metrics off) runs in this process and
//!   is timed from its start until its durable consumer has acked everything. Prints events/s,
//!   the signal rows and SIGNALS messages, and the peak RSS (VmHWM) of the run alone (reset
//!   through `/proc/self/clear_refs` after the set-up) and of the whole process.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use clap::{Parser, Subcommand};
use kline_signals::{Candle, Config, Outcome, SeriesState, StrategyConfig};
use klinebus_bench::harness::{percentile, reset_own_peak_rss, Usage};
use klinebus_schemas::streams::{Retention, CANDLES_STREAM, SIGNALS_STREAM};
use klinebus_schemas::{bus, Interval, KlineEvent, Source, Venue};
use klinebus_testkit::{NatsServer, TestDb};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

// The allocator of the service it runs in-process.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// kline-signals' per-candle cost (the default), or its whole-sink replay (`replay`).
#[derive(Debug, Parser)]
#[command(name = "signals-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Candles of one series to time, after its warm-up.
    #[arg(default_value_t = 100_000)]
    candles: usize,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole sink in this process: N closed-candle events from its start until all acked.
    Replay {
        /// Closed-candle events to publish.
        #[arg(default_value_t = 100_000)]
        events: usize,
        /// Series (symbols of 1m candles) they are spread over.
        #[arg(default_value_t = 10)]
        series: usize,
        /// kline-signals flags, after `--` (e.g. `-- --batch-size 500`).
        #[arg(last = true)]
        service_args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Replay {
            events,
            series,
            service_args,
        }) => {
            ensure!(
                series >= 1 && events >= series,
                "replay needs events >= series >= 1"
            );
            // The service's own log on stderr (RUST_LOG, default info).
            klinebus_svc::init_tracing();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(replay(events, series, service_args))
        }
        None => per_candle(cli.candles),
    }
}

fn per_candle(n: usize) -> anyhow::Result<()> {
    let cfg = StrategyConfig::default();
    let mut series = SeriesState::new(&cfg, "BTCUSDT".parse()?, "1m".parse()?);
    let candles = synthetic(n + series.lookback(), 0)?;
    let (warmup, measured) = candles.split_at(series.lookback());
    series.warm(warmup);

    let mut micros = Vec::with_capacity(measured.len());
    let mut signals = 0usize;
    for c in measured {
        let t = Instant::now();
        let out = black_box(series.apply(black_box(c)));
        micros.push(t.elapsed().as_secs_f64() * 1e6);
        if matches!(out, Outcome::Signal(ref r) if r.action != kline_signals::Action::Hold) {
            signals += 1;
        }
    }
    micros.sort_by(f64::total_cmp);
    println!(
        "candles {}  p50 {:.2} µs  p99 {:.2} µs  max {:.2} µs  (non-HOLD aggregates: {signals})",
        micros.len(),
        percentile(&micros, 0.50),
        percentile(&micros, 0.99),
        micros.last().copied().unwrap_or(0.0),
    );
    Ok(())
}

/// One synthetic candle as decimal text (8 places, as Binance sends them).
struct TextCandle {
    open_time: i64,
    open: String,
    high: String,
    low: String,
    close: String,
    volume: String,
}

/// Open time of the first synthetic candle (2023-11-14T22:13Z, minute-aligned).
const T0: i64 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000;

/// A deterministic random walk (xorshift, seeded per series), one-minute candles from `T0`.
fn walk(n: usize, seed: u64) -> Vec<TextCandle> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    if state == 0 {
        state = 1;
    }
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let mut price = 100_000.0_f64 / (1.0 + seed as f64);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let open = price;
        let close = (open * (1.0 + 0.004 * rnd())).max(1.0);
        let high = open.max(close) * (1.0 + 0.001 * rnd().abs());
        let low = open.min(close) * (1.0 - 0.001 * rnd().abs());
        let volume = 10.0 * (1.0 + rnd()).max(0.01);
        let f = |x: f64| format!("{x:.8}");
        out.push(TextCandle {
            open_time: T0 + i as i64 * 60_000,
            open: f(open),
            high: f(high),
            low: f(low),
            close: f(close),
            volume: f(volume),
        });
        price = close;
    }
    out
}

/// The per-candle mode's series.
fn synthetic(n: usize, seed: u64) -> Result<Vec<Candle>, kline_signals::CandleError> {
    walk(n, seed)
        .iter()
        .map(|c| Candle::from_text(c.open_time, &c.open, &c.high, &c.low, &c.close, &c.volume))
        .collect()
}

fn event(symbol: &klinebus_schemas::Symbol, c: &TextCandle) -> KlineEvent {
    let close_time = Interval::M1.close_time(c.open_time);
    KlineEvent {
        venue: Venue::binance(),
        symbol: symbol.clone(),
        interval: Interval::M1,
        open_time: c.open_time,
        close_time,
        open: c.open.clone(),
        high: c.high.clone(),
        low: c.low.clone(),
        close: c.close.clone(),
        volume: c.volume.clone(),
        quote_volume: "0".into(),
        taker_buy_base: "0".into(),
        taker_buy_quote: "0".into(),
        trades: 1,
        closed: true,
        event_time: close_time + 1,
        source: Source::Backfill,
        received_at: close_time + 2,
    }
}

async fn replay(events: usize, series: usize, service_args: Vec<String>) -> anyhow::Result<()> {
    let nats = NatsServer::try_start()?;
    let db = TestDb::try_named(klinebus_testkit::admin_url(), "kb_signals_bench").await?;
    measure(events, series, &service_args, &nats.url(), &db).await
}

async fn insert_candles(
    pool: &PgPool,
    symbol: &str,
    candles: &[TextCandle],
) -> Result<(), sqlx::Error> {
    for chunk in candles.chunks(10_000) {
        let t: Vec<i64> = chunk.iter().map(|c| c.open_time).collect();
        let col = |f: fn(&TextCandle) -> &String| -> Vec<String> {
            chunk.iter().map(|c| f(c).clone()).collect()
        };
        sqlx::query(
            r#"INSERT INTO ohlcv_candles (symbol, timeframe, "timestamp", open, high, low, close,
                 volume, quote_volume, taker_buy_base, taker_buy_quote, trades, close_time,
                 is_closed, event_time, source)
               SELECT $1, '1m', t, o::numeric, h::numeric, l::numeric, c::numeric, v::numeric,
                 0, 0, 0, 1, t + 59999, TRUE, t + 60000, 'backfill'
               FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
                 AS x(t, o, h, l, c, v)"#,
        )
        .bind(symbol)
        .bind(&t)
        .bind(col(|c| &c.open))
        .bind(col(|c| &c.high))
        .bind(col(|c| &c.low))
        .bind(col(|c| &c.close))
        .bind(col(|c| &c.volume))
        .execute(pool)
        .await?;
    }
    Ok(())
}

async fn measure(
    events: usize,
    series: usize,
    service_args: &[String],
    nats_url: &str,
    db: &TestDb,
) -> anyhow::Result<()> {
    let mut args: Vec<String> = [
        "kline-signals",
        "--nats-url",
        nats_url,
        "--database-url",
        &db.url,
        "--metrics-addr",
        "off",
        "--consumer",
        "bench",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(service_args.iter().cloned());
    let config = Config::try_parse_from(&args)?;
    let warm =
        (config.warm_candles as usize).max(kline_signals::lookback(&StrategyConfig::default()));

    // Set-up (not timed): history + event candles in ohlcv_candles, events on the bus.
    let t = Instant::now();
    let per_series = events.div_ceil(series);
    let pool = &db.pool;
    let client = async_nats::connect(nats_url).await?;
    let js = bus::jetstream(client, 20_000);
    bus::ensure_streams(&js, &Retention::default()).await?;
    let symbols: Vec<klinebus_schemas::Symbol> = (0..series)
        .map(|i| format!("SIG{i}USDT").parse())
        .collect::<Result<_, _>>()?;
    let mut walks = Vec::with_capacity(series);
    for (i, sym) in symbols.iter().enumerate() {
        let w = walk(warm + per_series, i as u64 + 1);
        insert_candles(pool, sym.as_str(), &w).await?;
        walks.push(w);
    }
    let mut published = 0usize;
    let mut acks = Vec::with_capacity(10_000);
    // Interleaved by time, as the live pipeline publishes them.
    'outer: for k in 0..per_series {
        for (sym, w) in symbols.iter().zip(&walks) {
            if published == events {
                break 'outer;
            }
            let e = event(sym, &w[warm + k]);
            // One candle per message: what kline-pg-sink publishes for live candles.
            acks.extend(bus::publish_closed(&js, &[&e]).await?);
            published += 1;
            if acks.len() == 10_000 {
                for a in acks.drain(..) {
                    a.await?;
                }
            }
        }
    }
    for a in acks.drain(..) {
        a.await?;
    }
    drop(walks);
    let last_seq = js
        .get_stream(CANDLES_STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    eprintln!(
        "set-up: {series} series × {warm} history candles, {published} events published \
         (stream seq {last_seq}) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The run: from the service's start until its consumer has acked everything.
    let setup = Usage::own()?;
    reset_own_peak_rss();
    let rss_before = Usage::own()?.rss_mib;
    let token = CancellationToken::new();
    let stop = token.clone();
    let started = Instant::now();
    let service = tokio::spawn(async move { kline_signals::run(config, stop).await });
    let deadline = Duration::from_secs(600);
    let seconds = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if service.is_finished() {
            match service.await? {
                Ok(()) => bail!("the service stopped before catching up"),
                Err(e) => bail!("the service failed: {e}"),
            }
        }
        if started.elapsed() > deadline {
            token.cancel();
            bail!("not caught up within 600 s");
        }
        let Ok(stream) = js.get_stream(CANDLES_STREAM).await else {
            continue;
        };
        let Ok(info) = stream.consumer_info("bench").await else {
            continue;
        };
        if info.num_pending == 0
            && info.num_ack_pending == 0
            && info.ack_floor.stream_sequence >= last_seq
        {
            break started.elapsed().as_secs_f64();
        }
    };
    let run_peak = Usage::own()?.peak_rss_mib;
    token.cancel();
    service.await??;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM signals")
        .fetch_one(pool)
        .await?;
    let signal_msgs = js
        .get_stream(SIGNALS_STREAM)
        .await?
        .info()
        .await?
        .state
        .messages;
    println!("replay events:    {published} ({series} series of 1m candles)");
    println!(
        "throughput:       {:.0} events/s ({seconds:.2} s, service start → all acked)",
        published as f64 / seconds
    );
    println!("signals:          {rows} rows, {signal_msgs} SIGNALS messages");
    println!(
        "peak RSS:         {:.1} MiB during the run (RSS at its start {:.1} MiB; whole process {:.1} MiB)",
        run_peak,
        rss_before,
        setup.peak_rss_mib.max(run_peak)
    );
    println!("service flags:    {}", args[9..].join(" "));
    ensure!(
        rows == published as i64 && signal_msgs == published as u64,
        "expected one signal per event ({published})"
    );
    Ok(())
}
