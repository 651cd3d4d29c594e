//! The whole live pipeline under faults, end to end: `binance-sim` with an accelerated clock →
//! `kline-live` (WebSocket, REST gap repair) → a private nats-server → two `kline-pg-sink`
//! processes sharing one durable consumer → a private PostgreSQL cluster; a bootstrap
//! (`kline-backfill --days 1`) through the same bus fills the history before the faults.
//!
//! While over a hundred 1m candles close per series (≈ 45 s of wall time), it drops the
//! WebSockets (six times, twice with reconnects refused for a while), throttles REST with a 429
//! burst during the gap repair, stalls the streams until the watchdog trips, SIGKILLs each sink
//! process once and starts it again, kills and restarts nats-server, and stops PostgreSQL at once
//! (immediate shutdown, crash recovery) and starts it again. Then the faults stop, the pipeline
//! catches up (polled, with a generous deadline, never a fixed sleep), and every candle of the
//! window in `ohlcv_candles` must equal the simulator's own — nothing missing, nothing
//! duplicated, nothing different — and `klinebus_verify` must say `ok`. The sleeps between faults
//! only pace the run; no assertion depends on them.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kline_live::LiveStats;
use klinebus_schemas::streams::{Retention, DLQ_STREAM};
use klinebus_schemas::{bus, Interval, Symbol};
use klinebus_testkit::{NatsServer, PgServer, TestDb};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

mod support;
use support::{assert_table_equals_exchange, closed_count, sleep_ms, wait_until, Proc};

/// 2025-06-04T12:00:00Z
const T0: i64 = 1_749_038_400_000;
/// A 1m candle closes every 400 ms of wall time.
const SPEED: &str = "150";
const SYMBOLS: [&str; 3] = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
const TFS: [Interval; 2] = [Interval::M1, Interval::M5];
/// Every closed candle of the window must be in the table within this time after the faults.
const CATCH_UP: Duration = Duration::from_secs(90);

/// A `kline-pg-sink` process whose messages held when SIGKILLed come back after 3 s.
fn sink(nats_url: &str, db_url: &str) -> Proc {
    Proc::pg_sink(
        nats_url,
        db_url,
        &["--ack-wait-secs", "3", "--batch-size", "500"],
    )
}

/// Elapsed wall and simulated time, for the log of what happened when.
struct Timeline {
    started: Instant,
    clock: binance_sim::SimClock,
}

impl Timeline {
    fn mark(&self, what: &str) {
        eprintln!(
            "[{:6.1}s wall | sim {}] {what}",
            self.started.elapsed().as_secs_f64(),
            klinebus_verify::datetime(self.clock.now_ms())
        );
    }
}

/// The verification window of one day ending at `cutoff` (klinebus_verify's own rule).
fn window(tf: Interval, cutoff: i64) -> (i64, i64) {
    klinebus_verify::window(tf, 1, cutoff)
}

/// True once every series holds every closed candle of its window.
async fn caught_up(pool: &PgPool, cutoff: i64) -> bool {
    for symbol in SYMBOLS {
        for tf in TFS {
            let (start, end) = window(tf, cutoff);
            if closed_count(pool, symbol, tf, start, end).await != tf.count_between(start, end) {
                return false;
            }
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_pipeline_under_faults_stores_exactly_the_exchange_candles() {
    let sim = support::sim(T0, &["--speed", SPEED, "--symbols", &SYMBOLS.join(",")]).await;
    let t = Timeline {
        started: Instant::now(),
        clock: sim.clock(),
    };
    let faults = sim.faults();
    let mut nats = NatsServer::start();
    let mut pg = PgServer::start();
    let db = TestDb::fresh_on(pg.admin_url()).await;
    t.mark("sim, nats-server and a private PostgreSQL are up");

    // The bus's streams exist before anyone uses them (kline-live makes them too).
    let client = bus::connect(&bus::BusOptions::new(nats.url(), "e2e-faults"))
        .await
        .unwrap();
    let js = bus::jetstream(client, 10_000);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();

    let mut sink_a = sink(&nats.url(), &db.url);
    let mut sink_b = sink(&nats.url(), &db.url);

    // kline-live, configured from its flags, scaled to the ×150 clock.
    let symbols = SYMBOLS.join(",");
    let tfs = TFS.map(|i| i.as_str()).join(",");
    let live_cfg = kline_live::Config::parse_from([
        "kline-live",
        "--symbols",
        &symbols,
        "--timeframes",
        &tfs,
        "--ws-url",
        &sim.ws_url(),
        "--rest-url",
        &sim.base_url(),
        "--nats-url",
        &nats.url(),
        "--watchdog",
        "1500ms",
        "--backoff-min",
        "50ms",
        "--backoff-max",
        "500ms",
        "--request-timeout",
        "5s",
        "--ack-timeout",
        "1s",
        "--flush-timeout",
        "5s",
    ]);
    let stats = Arc::new(LiveStats::default());
    let stop_live = CancellationToken::new();
    let live = tokio::spawn(kline_live::run_live(
        live_cfg.settings().unwrap(),
        kline_live::rest_client(&live_cfg).unwrap(),
        js.clone(),
        stats.clone(),
        stop_live.clone(),
    ));
    wait_until(
        "the first WebSocket events",
        Duration::from_secs(20),
        || {
            let n = stats.ws_events.load(Relaxed);
            async move { n > 0 }
        },
    )
    .await;
    t.mark("kline-live streaming");

    // The bootstrap: a day of history through the same bus and sinks (after live started, so
    // the two overlap and nothing falls between them).
    let backfill_cfg = kline_backfill::Config::parse_from([
        "kline-backfill",
        "--symbols",
        &symbols,
        "--timeframes",
        &tfs,
        "--days",
        "1",
        "--rest-url",
        &sim.base_url(),
        "--archive-url",
        &sim.base_url(),
        "--nats-url",
        &nats.url(),
        "--progress",
        "quiet",
    ]);
    let backfill = kline_backfill::run(backfill_cfg, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(backfill.exit_code(), 0, "backfill");
    t.mark("backfill published a day of history");
    sleep_ms(1_000).await;

    // 1. A WebSocket drop: reconnect, repair the candles closed meanwhile.
    let reconnects = stats.reconnects.load(Relaxed);
    faults.drop_ws();
    t.mark("fault: WebSockets dropped");
    wait_until(
        "a reconnect after the drop",
        Duration::from_secs(20),
        || {
            let n = stats.reconnects.load(Relaxed);
            async move { n > reconnects }
        },
    )
    .await;
    sleep_ms(1_500).await;

    // 2. A longer outage: dropped, and reconnects refused for ~5 candles.
    faults.set_ws_refuse(true);
    faults.drop_ws();
    t.mark("fault: WebSockets dropped, reconnects refused");
    sleep_ms(2_000).await;
    faults.set_ws_refuse(false);
    t.mark("reconnects accepted again");
    sleep_ms(1_500).await;

    // 3. A 429 burst on REST, right when the reconnect's gap repair needs it.
    let repaired = stats.repaired.load(Relaxed);
    faults.throttle_next_rest(4, 1);
    faults.drop_ws();
    t.mark("fault: 429 burst (4 × Retry-After 1 s) + WebSockets dropped");
    wait_until(
        "the 429 burst to be served",
        Duration::from_secs(30),
        || {
            let left = faults.snapshot().rest_throttle_remaining;
            async move { left == 0 }
        },
    )
    .await;
    wait_until(
        "a gap repair after the 429s",
        Duration::from_secs(30),
        || {
            let n = stats.repaired.load(Relaxed);
            async move { n > repaired }
        },
    )
    .await;
    t.mark("429 burst served, gap repaired");
    sleep_ms(1_000).await;

    // 4. A stalled stream: connections open, pings answered, no klines; the watchdog trips
    //    (and, as the stall outlasts a few reconnects, polling may take over for a while).
    let trips = stats.watchdog_trips.load(Relaxed);
    faults.set_ws_stall(true);
    t.mark("fault: streams stalled");
    wait_until("the watchdog to trip", Duration::from_secs(20), || {
        let n = stats.watchdog_trips.load(Relaxed);
        async move { n > trips }
    })
    .await;
    sleep_ms(2_000).await;
    faults.set_ws_stall(false);
    t.mark("streams resumed");
    sleep_ms(2_500).await;

    // 5. SIGKILL one sink right after a burst of repairs; its un-acked messages return to the
    //    other after the ack wait; then it comes back.
    faults.drop_ws();
    sleep_ms(300).await;
    sink_a.kill();
    t.mark("fault: WebSockets dropped, sink A SIGKILLed");
    sleep_ms(2_500).await;
    let sink_a = sink(&nats.url(), &db.url);
    t.mark("sink A restarted");
    sleep_ms(2_500).await;

    // 6. nats-server killed and restarted on the same store: kline-live buffers and republishes,
    //    the sinks' pull consumers reconnect.
    nats.stop();
    t.mark("fault: nats-server killed");
    sleep_ms(3_000).await;
    nats.restart();
    t.mark("nats-server restarted");
    sleep_ms(2_500).await;

    // 7. PostgreSQL stopped at once (every connection cut, crash recovery on start) and started
    //    again: the sinks' batches fail, are naked and redelivered. A WebSocket drop in the
    //    middle adds repairs to what waits for the database.
    pg.stop();
    t.mark("fault: PostgreSQL stopped (immediate)");
    sleep_ms(2_000).await;
    faults.drop_ws();
    t.mark("fault: WebSockets dropped while PostgreSQL is down");
    sleep_ms(2_000).await;
    pg.restart();
    t.mark("PostgreSQL restarted");
    sleep_ms(500).await;

    // 8. The other sink SIGKILLed while it catches up after the outage, then restarted.
    sink_b.kill();
    t.mark("fault: sink B SIGKILLed");
    sleep_ms(1_500).await;
    let sink_b = sink(&nats.url(), &db.url);
    t.mark("sink B restarted");
    sleep_ms(2_500).await;

    // 9. One more WebSocket drop, with reconnects refused for a moment, then a quiet stretch.
    faults.set_ws_refuse(true);
    faults.drop_ws();
    t.mark("fault: WebSockets dropped, reconnects refused");
    sleep_ms(1_000).await;
    faults.set_ws_refuse(false);
    t.mark("reconnects accepted again");
    sleep_ms(5_000).await;

    // No more faults. Every candle closed by `cutoff` must arrive.
    let cutoff = sim.clock().now_ms();
    t.mark("faults over; cut-off");
    let deadline = Instant::now() + CATCH_UP;
    while Instant::now() < deadline && !caught_up(&db.pool, cutoff).await {
        sleep_ms(250).await;
    }
    t.mark("caught up (or deadline)");

    // Stop everything cleanly before the strict checks.
    stop_live.cancel();
    tokio::time::timeout(Duration::from_secs(15), live)
        .await
        .expect("kline-live stops within 15 s")
        .unwrap();
    for (name, sink) in [("A", sink_a), ("B", sink_b)] {
        let status = sink.terminate().await;
        assert!(status.success(), "sink {name} exit on SIGTERM: {status:?}");
    }
    t.mark("pipeline stopped");
    eprintln!("kline-live stats: {stats:?}");

    // The faults really happened.
    assert!(stats.reconnects.load(Relaxed) >= 7, "{stats:?}");
    assert!(stats.watchdog_trips.load(Relaxed) >= 1, "{stats:?}");
    assert!(stats.repaired.load(Relaxed) > 0, "{stats:?}");
    assert!(stats.publish_retries.load(Relaxed) > 0, "{stats:?}");
    assert_eq!(stats.malformed.load(Relaxed), 0, "{stats:?}");

    // Exactly the exchange's candles, and verification agrees.
    let mut live_candles = 0;
    for symbol in SYMBOLS {
        for tf in TFS {
            let (start, end) = window(tf, cutoff);
            let n = assert_table_equals_exchange(&db.pool, &sim, symbol, tf, start, end).await;
            assert!(n as i64 >= tf.count_between(start, end), "{symbol} {tf}");
            if tf == Interval::M1 {
                live_candles = tf.count_between(T0, end);
            }
        }
    }
    let req = klinebus_verify::VerifyRequest {
        symbols: SYMBOLS
            .iter()
            .map(|s| s.parse::<Symbol>().unwrap())
            .collect(),
        intervals: TFS.to_vec(),
        span: klinebus_verify::Span::Days(Some(1)),
        now_ms: cutoff,
    };
    let report = klinebus_verify::verify(&db.pool, &req).await;
    assert!(report.is_ok(), "{}", report.render_text());
    eprintln!("{}", report.render_text());
    assert!(
        live_candles >= 100,
        "only {live_candles} 1m candles closed during the run; the clock is too slow to prove much"
    );

    // Who delivered the candles closed during the run (for the log; any mix is fine).
    let sources: Vec<(String, i64)> = sqlx::query_as(
        r#"SELECT source::text, count(*) FROM ohlcv_candles
           WHERE "timestamp" >= $1 AND "timestamp" < $2 GROUP BY 1 ORDER BY 1"#,
    )
    .bind(T0)
    .bind(Interval::M1.align(cutoff))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    eprintln!("candles since the start by source: {sources:?}");

    // No message was poison.
    let mut dlq = js.get_stream(DLQ_STREAM).await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 0, "dead letters");
    t.mark(&format!(
        "done: {live_candles} 1m candles per symbol closed during the run"
    ));
}
