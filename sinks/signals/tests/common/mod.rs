//! The core's committed candle fixture as bus events, shared by the integration tests.

#![allow(clippy::unwrap_used, dead_code)]

use klinebus_schemas::{Interval, KlineEvent, Source, Venue};
use sqlx::PgPool;

/// The first `n` candles of the fixture (`signals-core/tests/fixtures/candles.json`) as closed BTCUSDT 1h events from `source`.
pub fn fixture_events(n: usize, source: Source) -> Vec<KlineEvent> {
    klinebus_testkit::fixture_candles()
        .into_iter()
        .take(n)
        .map(|r| {
            let close_time = Interval::H1.close_time(r.open_time);
            KlineEvent {
                venue: Venue::binance(),
                symbol: "BTCUSDT".parse().unwrap(),
                interval: Interval::H1,
                open_time: r.open_time,
                close_time,
                open: r.open,
                high: r.high,
                low: r.low,
                close: r.close,
                volume: r.volume,
                quote_volume: "0".into(),
                trades: 1,
                taker_buy_base: "0".into(),
                taker_buy_quote: "0".into(),
                closed: true,
                event_time: close_time + 1,
                source,
                received_at: close_time + 2,
            }
        })
        .collect()
}

/// What kline-pg-sink commits before it announces the candles.
pub async fn commit(pool: &PgPool, events: &[KlineEvent]) {
    for e in events {
        sqlx::query(
            r#"INSERT INTO ohlcv_candles (symbol, timeframe, "timestamp", open, high, low, close,
                 volume, quote_volume, taker_buy_base, taker_buy_quote, trades, close_time,
                 is_closed, event_time, source)
               VALUES ($1, $2, $3, $4::numeric, $5::numeric, $6::numeric, $7::numeric,
                 $8::numeric, 0, 0, 0, 1, $9, TRUE, $10, $11)"#,
        )
        .bind(e.symbol.as_str())
        .bind(e.interval.as_str())
        .bind(e.open_time)
        .bind(&e.open)
        .bind(&e.high)
        .bind(&e.low)
        .bind(&e.close)
        .bind(&e.volume)
        .bind(e.close_time)
        .bind(e.event_time)
        .bind(e.source.as_str())
        .execute(pool)
        .await
        .unwrap();
    }
}
