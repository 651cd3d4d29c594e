//! One flush = one transaction: a bulk `UNNEST` upsert of the batch's winning candle versions
//! (ordering rules of [`crate::dedup`], enforced again in the `WHERE` of `ON CONFLICT` so that
//! versions from different batches or instances converge too), then the `ingestion_status` rows
//! of the series in the batch. Numbers travel as text and are cast to `numeric` by Postgres:
//! what the exchange sent is what is stored.

use std::collections::HashSet;

use klinebus_schemas::KlineEvent;
use sqlx::{PgPool, Postgres, Transaction};

use crate::status::{series_of, upsert_status};

const UPSERT_CANDLES: &str = r#"
INSERT INTO ohlcv_candles AS c (
    symbol, timeframe, "timestamp", open, high, low, close, volume, quote_volume,
    taker_buy_base, taker_buy_quote, trades, close_time, is_closed, event_time, source)
SELECT t.symbol, t.timeframe, t.ts, t.open, t.high, t.low, t.close, t.volume, t.quote_volume,
       t.tbb, t.tbq, t.trades, t.close_time, t.is_closed, t.event_time, t.source
FROM UNNEST(
    $1::text[], $2::text[], $3::int8[],
    $4::text[]::numeric[], $5::text[]::numeric[], $6::text[]::numeric[], $7::text[]::numeric[],
    $8::text[]::numeric[], $9::text[]::numeric[], $10::text[]::numeric[], $11::text[]::numeric[],
    $12::int8[], $13::int8[], $14::bool[], $15::int8[], $16::text[]
) AS t(symbol, timeframe, ts, open, high, low, close, volume, quote_volume, tbb, tbq,
       trades, close_time, is_closed, event_time, source)
ON CONFLICT (symbol, timeframe, "timestamp") DO UPDATE SET
    open = EXCLUDED.open,
    high = EXCLUDED.high,
    low = EXCLUDED.low,
    close = EXCLUDED.close,
    volume = EXCLUDED.volume,
    quote_volume = EXCLUDED.quote_volume,
    taker_buy_base = EXCLUDED.taker_buy_base,
    taker_buy_quote = EXCLUDED.taker_buy_quote,
    trades = EXCLUDED.trades,
    close_time = EXCLUDED.close_time,
    is_closed = EXCLUDED.is_closed,
    event_time = EXCLUDED.event_time,
    source = EXCLUDED.source,
    updated_at = now()
WHERE (EXCLUDED.is_closed AND NOT c.is_closed)
   OR (EXCLUDED.is_closed = c.is_closed AND EXCLUDED.event_time > c.event_time)
RETURNING c.symbol::text, c.timeframe::text, c."timestamp"
"#;

/// The key of a stored row: symbol, timeframe, open time.
pub type RowKey = (String, String, i64);

/// What one committed flush did.
#[derive(Debug, Default)]
pub struct Written {
    /// Candle versions sent (after in-batch dedup).
    pub rows: usize,
    /// Keys of the rows actually inserted or replaced.
    pub changed: HashSet<RowKey>,
}

/// Column arrays for the upsert, built in one pass.
#[derive(Default)]
struct Columns {
    symbol: Vec<String>,
    timeframe: Vec<String>,
    ts: Vec<i64>,
    open: Vec<String>,
    high: Vec<String>,
    low: Vec<String>,
    close: Vec<String>,
    volume: Vec<String>,
    quote_volume: Vec<String>,
    tbb: Vec<String>,
    tbq: Vec<String>,
    trades: Vec<i64>,
    close_time: Vec<i64>,
    is_closed: Vec<bool>,
    event_time: Vec<i64>,
    source: Vec<String>,
}

impl Columns {
    fn of(rows: &[&KlineEvent]) -> Self {
        let n = rows.len();
        let mut c = Self {
            symbol: Vec::with_capacity(n),
            timeframe: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            open: Vec::with_capacity(n),
            high: Vec::with_capacity(n),
            low: Vec::with_capacity(n),
            close: Vec::with_capacity(n),
            volume: Vec::with_capacity(n),
            quote_volume: Vec::with_capacity(n),
            tbb: Vec::with_capacity(n),
            tbq: Vec::with_capacity(n),
            trades: Vec::with_capacity(n),
            close_time: Vec::with_capacity(n),
            is_closed: Vec::with_capacity(n),
            event_time: Vec::with_capacity(n),
            source: Vec::with_capacity(n),
        };
        for e in rows {
            c.symbol.push(e.symbol.as_str().to_owned());
            c.timeframe.push(e.interval.as_str().to_owned());
            c.ts.push(e.open_time);
            c.open.push(e.open.clone());
            c.high.push(e.high.clone());
            c.low.push(e.low.clone());
            c.close.push(e.close.clone());
            c.volume.push(e.volume.clone());
            c.quote_volume.push(e.quote_volume.clone());
            c.tbb.push(e.taker_buy_base.clone());
            c.tbq.push(e.taker_buy_quote.clone());
            // validate() bounds nothing here, but no exchange reports 2^63 trades.
            c.trades.push(i64::try_from(e.trades).unwrap_or(i64::MAX));
            c.close_time.push(e.close_time);
            c.is_closed.push(e.closed);
            c.event_time.push(e.event_time);
            c.source.push(e.source.as_str().to_owned());
        }
        c
    }
}

/// Upserts the candles (already deduplicated and key-ordered) inside `tx`; returns changed keys.
pub async fn upsert_candles(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&KlineEvent],
) -> Result<HashSet<RowKey>, sqlx::Error> {
    let c = Columns::of(rows);
    let changed: Vec<RowKey> = sqlx::query_as(UPSERT_CANDLES)
        .bind(c.symbol)
        .bind(c.timeframe)
        .bind(c.ts)
        .bind(c.open)
        .bind(c.high)
        .bind(c.low)
        .bind(c.close)
        .bind(c.volume)
        .bind(c.quote_volume)
        .bind(c.tbb)
        .bind(c.tbq)
        .bind(c.trades)
        .bind(c.close_time)
        .bind(c.is_closed)
        .bind(c.event_time)
        .bind(c.source)
        .fetch_all(&mut **tx)
        .await?;
    Ok(changed.into_iter().collect())
}

/// One transaction: candles, then status rows; committed before returning `Ok`.
pub async fn write_batch(pool: &PgPool, rows: &[&KlineEvent]) -> Result<Written, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let changed = upsert_candles(&mut tx, rows).await?;
    let series = series_of(rows, &changed);
    upsert_status(&mut tx, &series).await?;
    tx.commit().await?;
    Ok(Written {
        rows: rows.len(),
        changed,
    })
}
