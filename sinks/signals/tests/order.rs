//! Signals whatever the order of the announcements: an older candle after newer ones, a
//! bootstrap landing after live candles of a series without history, redeliveries, a hole
//! filled later. Against a private NATS server and a fresh database, as kline-pg-sink would
//! leave them (a candle is in `ohlcv_candles` before it is announced); the rows and the SIGNALS
//! stream must hold exactly one signal per candle, in candle order, equal to an in-order run's.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use clap::Parser;
use kline_signals::{Candle, Config, Outcome, SeriesState, SignalReport, StrategyConfig};
use klinebus_schemas::streams::{Retention, CANDLES_STREAM, SIGNALS_STREAM};
use klinebus_schemas::{bus, codec, Interval, KlineEvent, Source};
use klinebus_testkit::{NatsServer, TestDb};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::{commit, fixture_events};

/// With `source` set on each.
fn from_source(events: &[KlineEvent], source: Source) -> Vec<KlineEvent> {
    events
        .iter()
        .cloned()
        .map(|mut e| {
            e.source = source;
            e
        })
        .collect()
}

/// Announces as kline-pg-sink does after its commits, `per_message` candles a message.
async fn announce(js: &Context, events: &[KlineEvent], per_message: usize) {
    let refs: Vec<&KlineEvent> = events.iter().collect();
    let mut acks = Vec::new();
    for chunk in refs.chunks(per_message) {
        acks.extend(bus::publish_closed(js, chunk).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// Commits, then announces (one candle a message for live candles).
async fn deliver(js: &Context, pool: &PgPool, events: &[KlineEvent], per_message: usize) {
    commit(pool, events).await;
    announce(js, events, per_message).await;
}

/// Announces again without a `Nats-Msg-Id`, so the stream keeps them: a sink's redelivery.
async fn redeliver(js: &Context, events: &[KlineEvent]) {
    for e in events {
        let payload = codec::encode(e).unwrap();
        js.publish_with_headers(
            "candles.closed.binance.BTCUSDT.1h",
            bus::schema_headers(),
            payload.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
}

/// The reports of feeding every candle, in order, to one `SeriesState`.
fn in_order(events: &[KlineEvent]) -> Vec<SignalReport> {
    let mut s = SeriesState::new(
        &StrategyConfig::default(),
        events[0].symbol.clone(),
        Interval::H1,
    );
    events
        .iter()
        .filter_map(|e| match s.apply(&Candle::from_event(e).unwrap()) {
            Outcome::Signal(r) => Some(*r),
            _ => None,
        })
        .collect()
}

struct Setup {
    nats: NatsServer,
    db: TestDb,
    js: Context,
}

async fn setup() -> Setup {
    let nats = NatsServer::start();
    let db = TestDb::fresh().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = bus::jetstream(client, 1024);
    bus::ensure_streams(&js, &Retention::default())
        .await
        .unwrap();
    Setup { nats, db, js }
}

fn spawn(s: &Setup, extra: &[&str]) -> (CancellationToken, JoinHandle<()>) {
    let nats = s.nats.url();
    let mut args = vec![
        "kline-signals",
        "--nats-url",
        &nats,
        "--database-url",
        &s.db.url,
        "--metrics-addr",
        "off",
        "--ack-wait-secs",
        "5",
    ];
    args.extend_from_slice(extra);
    let cfg = Config::try_parse_from(args).unwrap();
    let token = CancellationToken::new();
    let t = token.clone();
    let h = tokio::spawn(async move { kline_signals::run(cfg, t).await.unwrap() });
    (token, h)
}

/// Waits until the durable has acked every message the CANDLES stream holds.
async fn caught_up(js: &Context) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut stream = js.get_stream(CANDLES_STREAM).await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        if let Ok(info) = stream.consumer_info("signals").await {
            if info.num_pending == 0
                && info.num_ack_pending == 0
                && info.ack_floor.stream_sequence >= last
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the consumer did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Stored = (
    i64,
    String,
    f64,
    sqlx::types::Json<serde_json::Value>,
    String,
);

async fn stored(pool: &PgPool) -> Vec<Stored> {
    sqlx::query_as(
        r#"SELECT "timestamp", action, confidence, details, updated_at::text FROM signals
           ORDER BY "timestamp""#,
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The signal rows (not `insufficient_data`) and the SIGNALS stream, message by message, are
/// exactly `want`: one each, in candle order, same values.
async fn assert_exactly(js: &Context, pool: &PgPool, want: &[SignalReport]) {
    assert_rows(pool, want).await;
    assert_events(js, want).await;
}

/// The signal rows (not `insufficient_data`) are exactly `want`.
async fn assert_rows(pool: &PgPool, want: &[SignalReport]) {
    let rows: Vec<Stored> = stored(pool)
        .await
        .into_iter()
        .filter(|r| r.1 != "insufficient_data")
        .collect();
    let got: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let expected: Vec<i64> = want.iter().map(|r| r.open_time).collect();
    assert_eq!(got, expected, "one signal row per candle");
    for (row, r) in rows.iter().zip(want) {
        assert_eq!(row.2, r.confidence, "confidence at {}", r.open_time);
        let details: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
        assert_eq!(row.3 .0, details, "details at {}", r.open_time);
    }
}

/// The SIGNALS stream holds exactly `want`, in this order.
async fn assert_events(js: &Context, want: &[SignalReport]) {
    let stream = js.get_stream(SIGNALS_STREAM).await.unwrap();
    let state = stream.get_info().await.unwrap().state;
    assert_eq!(state.messages, want.len() as u64, "each signal event once");
    for (i, r) in want.iter().enumerate() {
        let m = stream
            .get_raw_message(state.first_sequence + i as u64)
            .await
            .unwrap();
        assert_eq!(
            m.payload.as_ref(),
            serde_json::to_vec(r).unwrap().as_slice(),
            "SIGNALS message {i} is the signal of open time {}",
            r.open_time
        );
    }
}

/// Redelivered candles (the hole fillers, live ones, history) change no row and add no event.
async fn assert_redelivery_changes_nothing(s: &Setup, events: &[KlineEvent]) {
    let before = stored(&s.db.pool).await;
    let published =
        s.js.get_stream(SIGNALS_STREAM)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .messages;
    redeliver(&s.js, events).await;
    caught_up(&s.js).await;
    assert_eq!(stored(&s.db.pool).await, before, "rows untouched");
    let now =
        s.js.get_stream(SIGNALS_STREAM)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .messages;
    assert_eq!(now, published, "no event added");
}

#[tokio::test]
async fn an_older_candle_after_newer_ones_fills_its_hole() {
    let s = setup().await;
    let events = fixture_events(200, Source::Ws);
    let (stop, h) = spawn(&s, &[]);
    deliver(&s.js, &s.db.pool, &events[..150], 1).await;
    // Candle 150 is late (a buffered publish): 151..160 are committed and announced first.
    deliver(&s.js, &s.db.pool, &events[151..161], 1).await;
    caught_up(&s.js).await;
    deliver(&s.js, &s.db.pool, &events[150..151], 1).await;
    deliver(&s.js, &s.db.pool, &events[161..], 1).await;
    caught_up(&s.js).await;
    assert_exactly(&s.js, &s.db.pool, &in_order(&events)).await;

    let mut again = events[148..156].to_vec();
    again.extend_from_slice(&events[10..20]);
    assert_redelivery_changes_nothing(&s, &again).await;
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_bootstrap_after_live_candles_gives_them_their_signals() {
    let s = setup().await;
    let all = fixture_events(600, Source::Ws);
    let history = from_source(&all[..500], Source::Backfill);
    let (stop, h) = spawn(&s, &[]);
    // Live candles of a series without history: not enough data yet.
    deliver(&s.js, &s.db.pool, &all[500..520], 1).await;
    caught_up(&s.js).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM signals")
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "no signal without history");
    // The bootstrap lands, oldest first, in 100-candle announcements; live candles go on.
    for chunk in history.chunks(100) {
        deliver(&s.js, &s.db.pool, chunk, 100).await;
    }
    deliver(&s.js, &s.db.pool, &all[520..], 1).await;
    caught_up(&s.js).await;
    // A signal for every live candle, none for the history, values of an in-order run.
    let want: Vec<SignalReport> = in_order(&all)
        .into_iter()
        .filter(|r| r.open_time >= all[500].open_time)
        .collect();
    assert_eq!(want.len(), 100);
    assert_exactly(&s.js, &s.db.pool, &want).await;

    let mut again = history[400..].to_vec();
    again.extend_from_slice(&all[505..510]);
    assert_redelivery_changes_nothing(&s, &again).await;
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_recompute_is_bounded_by_max_recompute() {
    let s = setup().await;
    let all = fixture_events(560, Source::Ws);
    let (stop, h) = spawn(&s, &["--max-recompute", "5"]);
    deliver(&s.js, &s.db.pool, &all[500..520], 1).await;
    caught_up(&s.js).await;
    deliver(
        &s.js,
        &s.db.pool,
        &from_source(&all[..500], Source::Backfill),
        500,
    )
    .await;
    deliver(&s.js, &s.db.pool, &all[520..], 1).await;
    caught_up(&s.js).await;
    stop.cancel();
    h.await.unwrap();
    // Only the newest five of the twenty waiting live candles were recomputed.
    let want: Vec<SignalReport> = in_order(&all)
        .into_iter()
        .filter(|r| r.open_time >= all[515].open_time)
        .collect();
    assert_exactly(&s.js, &s.db.pool, &want).await;
}

#[tokio::test]
async fn a_hole_filled_later_by_a_repair_gets_its_signals_batched() {
    // Batched processing and --store-insufficient: the warm-up rows of the live candles after
    // the hole are replaced by their signals.
    let s = setup().await;
    let events = fixture_events(200, Source::Ws);
    let (stop, h) = spawn(
        &s,
        &[
            "--max-ack-pending",
            "1000",
            "--batch-size",
            "64",
            "--store-insufficient",
        ],
    );
    deliver(&s.js, &s.db.pool, &events[..120], 1).await;
    // A disconnect: 120..124 never came; 125..160 did.
    deliver(&s.js, &s.db.pool, &events[125..161], 1).await;
    caught_up(&s.js).await;
    let waiting: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM signals WHERE action = 'insufficient_data' AND "timestamp" >= $1"#,
    )
    .bind(events[125].open_time)
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(waiting, 36, "the candles after the hole wait for it");
    // The gap repair commits and announces the five in one message.
    let repaired = from_source(&events[120..125], Source::Repair);
    deliver(&s.js, &s.db.pool, &repaired, 5).await;
    deliver(&s.js, &s.db.pool, &events[161..], 1).await;
    caught_up(&s.js).await;
    let want = in_order(&events);
    assert_exactly(&s.js, &s.db.pool, &want).await;
    let lookback = kline_signals::lookback(&StrategyConfig::default());
    let rows = stored(&s.db.pool).await;
    assert_eq!(rows.len(), 200, "one row per candle");
    assert!(rows[..lookback - 1]
        .iter()
        .all(|r| r.1 == "insufficient_data"));

    assert_redelivery_changes_nothing(&s, &events[118..130]).await;
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_late_live_candle_before_the_first_one_seen_gets_its_signal() {
    // History 0..99 is in the table; live 100 (a gap repair) is announced after live 101, the
    // first candle the service sees. 101 is signalled at once; 100, late, still gets one.
    let s = setup().await;
    let all = fixture_events(140, Source::Ws);
    commit(&s.db.pool, &from_source(&all[..100], Source::Backfill)).await;
    let repaired = from_source(&all[100..101], Source::Repair);
    commit(&s.db.pool, &repaired).await;
    let (stop, h) = spawn(&s, &[]);
    deliver(&s.js, &s.db.pool, &all[101..102], 1).await;
    caught_up(&s.js).await;
    announce(&s.js, &repaired, 1).await;
    deliver(&s.js, &s.db.pool, &all[102..], 1).await;
    caught_up(&s.js).await;
    stop.cancel();
    h.await.unwrap();
    let want: Vec<SignalReport> = in_order(&all)
        .into_iter()
        .filter(|r| r.open_time >= all[100].open_time)
        .collect();
    assert_eq!(want.len(), 40);
    assert_rows(&s.db.pool, &want).await;
    // The events too, once each; 101's before 100's, as it was out first.
    let mut published = want.clone();
    published.swap(0, 1);
    assert_events(&s.js, &published).await;
}

#[tokio::test]
async fn a_candle_stored_before_the_next_but_announced_after_it_gets_its_signal() {
    // The sink's two workers: 150 is committed first, but 151's announcement is out before
    // 150's. 151 finds 150 in the table (the series warms over it); 150 must still get its
    // signal, once, and before 151's.
    let s = setup().await;
    let events = fixture_events(200, Source::Ws);
    let (stop, h) = spawn(&s, &[]);
    deliver(&s.js, &s.db.pool, &events[..150], 1).await;
    caught_up(&s.js).await;
    commit(&s.db.pool, &events[150..151]).await;
    deliver(&s.js, &s.db.pool, &events[151..152], 1).await;
    caught_up(&s.js).await;
    announce(&s.js, &events[150..151], 1).await;
    deliver(&s.js, &s.db.pool, &events[152..], 1).await;
    caught_up(&s.js).await;
    assert_exactly(&s.js, &s.db.pool, &in_order(&events)).await;
    assert_redelivery_changes_nothing(&s, &events[148..154]).await;
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_hole_a_later_gap_rebuilds_over_gets_its_signals_when_announced_last() {
    // After an outage kline-live's buffered candles come at once and the sink's two workers
    // split them: 151 and 152 are committed and announced before 150 is even committed (the
    // series runs into a hole in the table and warms up again: no signals), then 150 is
    // committed, 153 and 154 committed but not yet announced, and 155 announced: that gap
    // rebuilds the series over the filled hole. 150, 153 and 154 are announced last.
    let s = setup().await;
    let events = fixture_events(200, Source::Ws);
    let (stop, h) = spawn(&s, &[]);
    deliver(&s.js, &s.db.pool, &events[..150], 1).await;
    caught_up(&s.js).await;
    deliver(&s.js, &s.db.pool, &events[151..153], 1).await;
    caught_up(&s.js).await;
    commit(&s.db.pool, &events[150..151]).await;
    commit(&s.db.pool, &events[153..155]).await;
    deliver(&s.js, &s.db.pool, &events[155..156], 1).await;
    caught_up(&s.js).await;
    announce(&s.js, &events[150..151], 1).await;
    announce(&s.js, &events[153..155], 1).await;
    deliver(&s.js, &s.db.pool, &events[156..], 1).await;
    caught_up(&s.js).await;
    assert_exactly(&s.js, &s.db.pool, &in_order(&events)).await;
    assert_redelivery_changes_nothing(&s, &events[148..158]).await;
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_hole_filled_from_its_end_first_gets_all_its_signals() {
    // 150 and 151 are missing when 152 and 153 come (a hole in the table); then both are
    // committed and 151 is announced before 150: the recompute it triggers must reach back to
    // 150, which the table now holds, not start at 151 and leave 150 a replay.
    let s = setup().await;
    let events = fixture_events(200, Source::Ws);
    let (stop, h) = spawn(&s, &[]);
    deliver(&s.js, &s.db.pool, &events[..150], 1).await;
    caught_up(&s.js).await;
    deliver(&s.js, &s.db.pool, &events[152..154], 1).await;
    caught_up(&s.js).await;
    commit(&s.db.pool, &events[150..152]).await;
    announce(&s.js, &events[151..152], 1).await;
    caught_up(&s.js).await;
    announce(&s.js, &events[150..151], 1).await;
    deliver(&s.js, &s.db.pool, &events[154..], 1).await;
    caught_up(&s.js).await;
    assert_exactly(&s.js, &s.db.pool, &in_order(&events)).await;
    assert_redelivery_changes_nothing(&s, &events[148..156]).await;
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_hole_filled_in_the_table_but_never_announced_gets_its_signals() {
    // 150 is missing when 151 and 152 come; it is committed later but its announcement never
    // comes (the sink's redelivery found it stored and did not announce it again), and every
    // candle after 152 follows in order: the first one that finds the hole filled rebuilds the
    // series over it instead of letting it warm up for the lookback.
    let s = setup().await;
    let events = fixture_events(200, Source::Ws);
    let (stop, h) = spawn(&s, &[]);
    deliver(&s.js, &s.db.pool, &events[..150], 1).await;
    caught_up(&s.js).await;
    deliver(&s.js, &s.db.pool, &events[151..153], 1).await;
    caught_up(&s.js).await;
    commit(&s.db.pool, &events[150..151]).await;
    deliver(&s.js, &s.db.pool, &events[153..], 1).await;
    caught_up(&s.js).await;
    assert_exactly(&s.js, &s.db.pool, &in_order(&events)).await;
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn live_candles_before_history_and_a_hole_get_their_signals_when_the_hole_fills() {
    // Live candles of a series without history (insufficient data), then one of them missing
    // from the table when the next comes (the sink's other worker is busy with the bootstrap);
    // the bootstrap and the missing candle are committed, and the missing one is announced
    // first: its recompute must reach back to the first live candle, whose history is in the
    // table now, not only to the hole (the bootstrap's announcements then find a continuous
    // run and are replays).
    let s = setup().await;
    let all = fixture_events(600, Source::Ws);
    let history = from_source(&all[..500], Source::Backfill);
    let (stop, h) = spawn(&s, &[]);
    deliver(&s.js, &s.db.pool, &all[500..520], 1).await;
    caught_up(&s.js).await;
    deliver(&s.js, &s.db.pool, &all[521..522], 1).await;
    caught_up(&s.js).await;
    commit(&s.db.pool, &history).await;
    deliver(&s.js, &s.db.pool, &all[520..521], 1).await;
    caught_up(&s.js).await;
    announce(&s.js, &history, 100).await;
    deliver(&s.js, &s.db.pool, &all[522..], 1).await;
    caught_up(&s.js).await;
    let want: Vec<SignalReport> = in_order(&all)
        .into_iter()
        .filter(|r| r.open_time >= all[500].open_time)
        .collect();
    assert_eq!(want.len(), 100);
    assert_exactly(&s.js, &s.db.pool, &want).await;
    stop.cancel();
    h.await.unwrap();
}
