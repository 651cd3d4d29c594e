//! One flush = one transaction: a bulk upsert of the batch's winning candle versions (ordering
//! rules of [`crate::dedup`], enforced again in the `WHERE` of `ON CONFLICT` so that versions
//! from different batches or instances converge too), then the `ingestion_status` rows of the
//! series in the batch. Numbers travel as text and are cast to `numeric` by Postgres: what the
//! exchange sent is what is stored.
//!
//! Three ways to the same effect and the same [`Written`]: one `INSERT … SELECT FROM
//! UNNEST(arrays)` statement ([`upsert_candles`], one round trip: live-sized flushes); for large
//! flushes, `COPY` into a temporary staging table of the connection, then one `INSERT … SELECT
//! FROM` it with the same `ON CONFLICT` clause ([`copy_upsert`]); and, when the table holds no
//! row in the key range of any of the flush's series (history arriving for the first time),
//! `COPY` straight into the table ([`copy_insert`]): every row is new, so inserting them all is
//! what the upsert would do, at half the index work (one B-tree descent a row instead of the
//! speculative insertion's two) and without the staging table.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use klinebus_schemas::KlineEvent;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::status::{series_of, upsert_status};

/// The columns the sink writes, in the order of both statements and of the staging COPY.
macro_rules! columns {
    () => {
        r#"symbol, timeframe, "timestamp", open, high, low, close, volume, quote_volume,
    taker_buy_base, taker_buy_quote, trades, close_time, is_closed, event_time, source"#
    };
}

/// The winning rule of [`crate::dedup`] in SQL, shared by both ways in: a stored row is
/// replaced only by a closed version over a forming one, or by a strictly newer event of the
/// same closedness; `RETURNING` names the rows inserted or replaced.
macro_rules! on_conflict {
    () => {
        r#"
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
"#
    };
}

const UPSERT_CANDLES: &str = concat!(
    "INSERT INTO ohlcv_candles AS c (",
    columns!(),
    r#")
SELECT t.symbol, t.timeframe, t.ts, t.open, t.high, t.low, t.close, t.volume, t.quote_volume,
       t.tbb, t.tbq, t.trades, t.close_time, t.is_closed, t.event_time, t.source
FROM UNNEST(
    $1::text[], $2::text[], $3::int8[],
    $4::text[]::numeric[], $5::text[]::numeric[], $6::text[]::numeric[], $7::text[]::numeric[],
    $8::text[]::numeric[], $9::text[]::numeric[], $10::text[]::numeric[], $11::text[]::numeric[],
    $12::int8[], $13::int8[], $14::bool[], $15::int8[], $16::text[]
) AS t(symbol, timeframe, ts, open, high, low, close, volume, quote_volume, tbb, tbq,
       trades, close_time, is_closed, event_time, source)"#,
    on_conflict!()
);

/// The connection's staging table, created on its first bulk flush: the table's own column
/// types (so COPY parses each number once, straight into the stored type), emptied at every
/// commit, never WAL-logged.
const CREATE_STAGING: &str = r#"
DO $$ BEGIN
    IF to_regclass('pg_temp.ohlcv_staging') IS NULL THEN
        CREATE TEMP TABLE ohlcv_staging (LIKE ohlcv_candles) ON COMMIT DELETE ROWS;
        ALTER TABLE ohlcv_staging DROP COLUMN created_at, DROP COLUMN updated_at;
    END IF;
END $$"#;

const COPY_STAGING: &str = concat!("COPY ohlcv_staging (", columns!(), ") FROM STDIN");

const COPY_TABLE: &str = concat!("COPY ohlcv_candles (", columns!(), ") FROM STDIN");

/// Whether the table holds any row from the first to the last open time of one of the series
/// (one index probe a series).
const ANY_STORED: &str = r#"
SELECT EXISTS (
    SELECT 1 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[]) AS s(symbol, timeframe, lo, hi)
    WHERE EXISTS (
        SELECT 1 FROM ohlcv_candles c
        WHERE c.symbol = s.symbol AND c.timeframe = s.timeframe
          AND c."timestamp" BETWEEN s.lo AND s.hi))
"#;

const UPSERT_FROM_STAGING: &str = concat!(
    "INSERT INTO ohlcv_candles AS c (",
    columns!(),
    ")\nSELECT ",
    columns!(),
    // In the order the rows were copied (key order): the lock order of the small path.
    "\nFROM ohlcv_staging",
    on_conflict!()
);

/// The stored version (closedness, event time) of some keys, read in the upsert's transaction.
const STORED_VERSIONS: &str = r#"
SELECT c.symbol::text, c.timeframe::text, c."timestamp", c.is_closed, c.event_time
FROM ohlcv_candles c
JOIN UNNEST($1::text[], $2::text[], $3::int8[]) AS k(symbol, timeframe, ts)
  ON c.symbol = k.symbol AND c.timeframe = k.timeframe AND c."timestamp" = k.ts
"#;

/// What one committed flush did.
#[derive(Debug, Default)]
pub struct Written {
    /// Per candle version sent (after in-batch dedup, same order): whether it was inserted or
    /// replaced.
    pub changed: Vec<bool>,
    /// Per candle version sent, for the rows asked to be rechecked (else empty): unchanged
    /// because the table already holds exactly this version (same closedness and event time).
    pub already: Vec<bool>,
}

impl Written {
    /// Candle versions sent.
    pub fn rows(&self) -> usize {
        self.changed.len()
    }

    /// Rows actually inserted or replaced.
    pub fn changed_count(&self) -> usize {
        self.changed.iter().filter(|c| **c).count()
    }

    /// Whether row `i` was unchanged because the table already held exactly it.
    pub fn already(&self, i: usize) -> bool {
        self.already.get(i).copied().unwrap_or(false)
    }

    /// Rows unchanged because the table already held exactly them.
    pub fn already_count(&self) -> usize {
        self.already.iter().filter(|c| **c).count()
    }
}

/// Column arrays for the upsert, built in one pass. They borrow the events: sqlx encodes at
/// bind time, so nothing is copied twice.
struct Columns<'a> {
    symbol: Vec<&'a str>,
    timeframe: Vec<&'static str>,
    ts: Vec<i64>,
    open: Vec<&'a str>,
    high: Vec<&'a str>,
    low: Vec<&'a str>,
    close: Vec<&'a str>,
    volume: Vec<&'a str>,
    quote_volume: Vec<&'a str>,
    tbb: Vec<&'a str>,
    tbq: Vec<&'a str>,
    trades: Vec<i64>,
    close_time: Vec<i64>,
    is_closed: Vec<bool>,
    event_time: Vec<i64>,
    source: Vec<&'static str>,
}

impl<'a> Columns<'a> {
    fn of(rows: &[&'a KlineEvent]) -> Self {
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
            c.symbol.push(e.symbol.as_str());
            c.timeframe.push(e.interval.as_str());
            c.ts.push(e.open_time);
            c.open.push(&e.open);
            c.high.push(&e.high);
            c.low.push(&e.low);
            c.close.push(&e.close);
            c.volume.push(&e.volume);
            c.quote_volume.push(&e.quote_volume);
            c.tbb.push(&e.taker_buy_base);
            c.tbq.push(&e.taker_buy_quote);
            // validate() bounds nothing here, but no exchange reports 2^63 trades.
            c.trades.push(i64::try_from(e.trades).unwrap_or(i64::MAX));
            c.close_time.push(e.close_time);
            c.is_closed.push(e.closed);
            c.event_time.push(e.event_time);
            c.source.push(e.source.as_str());
        }
        c
    }
}

/// Upserts the candles (already deduplicated and key-ordered) inside `tx`; returns, per row,
/// whether it was inserted or replaced.
pub async fn upsert_candles(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&KlineEvent],
) -> Result<Vec<bool>, sqlx::Error> {
    let c = Columns::of(rows);
    let returned = sqlx::query(UPSERT_CANDLES)
        .bind(&c.symbol)
        .bind(&c.timeframe)
        .bind(&c.ts)
        .bind(&c.open)
        .bind(&c.high)
        .bind(&c.low)
        .bind(&c.close)
        .bind(&c.volume)
        .bind(&c.quote_volume)
        .bind(&c.tbb)
        .bind(&c.tbq)
        .bind(&c.trades)
        .bind(&c.close_time)
        .bind(&c.is_closed)
        .bind(&c.event_time)
        .bind(&c.source)
        .fetch_all(&mut **tx)
        .await?;
    changed_of(rows, &returned)
}

/// Per row, whether the upsert's `RETURNING` named it.
fn changed_of(rows: &[&KlineEvent], returned: &[PgRow]) -> Result<Vec<bool>, sqlx::Error> {
    // The usual case (new candles, newer versions): every row changed.
    if returned.len() == rows.len() {
        return Ok(vec![true; rows.len()]);
    }
    let mut keys = Vec::with_capacity(returned.len());
    for r in returned {
        keys.push((
            r.try_get::<&str, _>(0)?,
            r.try_get::<&str, _>(1)?,
            r.try_get::<i64, _>(2)?,
        ));
    }
    Ok(mark_changed(rows, keys))
}

/// COPY data is sent in pieces of about this size, so PostgreSQL parses one while the next is
/// encoded.
const COPY_CHUNK: usize = 256 * 1024;

/// The same upsert as [`upsert_candles`] for a large flush: the rows are `COPY`ed (text format)
/// into the connection's staging table, then one `INSERT … SELECT` from it with the same
/// `ON CONFLICT` rule. Cheaper per row than binding sixteen arrays: no array building and
/// unnesting, and each number is parsed once, into the column's type.
pub async fn copy_upsert(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&KlineEvent],
) -> Result<Vec<bool>, sqlx::Error> {
    sqlx::raw_sql(CREATE_STAGING).execute(&mut **tx).await?;
    copy_rows(tx, COPY_STAGING, rows).await?;
    let returned = sqlx::query(UPSERT_FROM_STAGING)
        .fetch_all(&mut **tx)
        .await?;
    changed_of(rows, &returned)
}

/// Whether the table holds a row anywhere in the key range of one of the series of `rows`
/// (key-ordered). When it holds none, every row is new.
pub async fn any_stored(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&KlineEvent],
) -> Result<bool, sqlx::Error> {
    let mut symbols = Vec::new();
    let mut timeframes = Vec::new();
    let mut los = Vec::new();
    let mut his = Vec::new();
    for series in rows.chunk_by(|a, b| a.symbol == b.symbol && a.interval == b.interval) {
        if let (Some(first), Some(last)) = (series.first(), series.last()) {
            symbols.push(first.symbol.as_str());
            timeframes.push(first.interval.as_str());
            los.push(first.open_time);
            his.push(last.open_time);
        }
    }
    sqlx::query_scalar(ANY_STORED)
        .bind(&symbols)
        .bind(&timeframes)
        .bind(&los)
        .bind(&his)
        .fetch_one(&mut **tx)
        .await
}

/// `COPY`s rows that are all new straight into the table. A key stored meanwhile by another
/// writer fails it with a unique violation (`23505`), and nothing of it stays.
pub async fn copy_insert(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&KlineEvent],
) -> Result<(), sqlx::Error> {
    copy_rows(tx, COPY_TABLE, rows).await
}

/// Streams `rows` to a `COPY … FROM STDIN` statement.
async fn copy_rows(
    tx: &mut Transaction<'_, Postgres>,
    statement: &str,
    rows: &[&KlineEvent],
) -> Result<(), sqlx::Error> {
    let mut copy = tx.copy_in_raw(statement).await?;
    let mut buf = Vec::with_capacity(COPY_CHUNK + 1024);
    for e in rows {
        copy_row(&mut buf, e);
        if buf.len() >= COPY_CHUNK {
            copy.send(buf.as_slice()).await?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        copy.send(buf.as_slice()).await?;
    }
    copy.finish().await?;
    Ok(())
}

/// One row of COPY text format, the columns of [`COPY_STAGING`]. The numbers are the
/// exchange's decimal text as it came (validated: digits and a point), never reformatted.
fn copy_row(buf: &mut Vec<u8>, e: &KlineEvent) {
    let text = |buf: &mut Vec<u8>, s: &str| {
        copy_text(buf, s);
        buf.push(b'\t');
    };
    let int = |buf: &mut Vec<u8>, n: i64| {
        copy_int(buf, n);
        buf.push(b'\t');
    };
    text(buf, e.symbol.as_str());
    text(buf, e.interval.as_str());
    int(buf, e.open_time);
    for s in [
        &e.open,
        &e.high,
        &e.low,
        &e.close,
        &e.volume,
        &e.quote_volume,
        &e.taker_buy_base,
        &e.taker_buy_quote,
    ] {
        text(buf, s);
    }
    // As in the small path: no exchange reports 2^63 trades.
    int(buf, i64::try_from(e.trades).unwrap_or(i64::MAX));
    int(buf, e.close_time);
    buf.extend_from_slice(if e.closed { b"t\t" } else { b"f\t" });
    int(buf, e.event_time);
    copy_text(buf, e.source.as_str());
    buf.push(b'\n');
}

/// A text value, escaped for COPY's text format. Validated events never hold a tab, line
/// break or backslash; escaping keeps anything else from breaking the row.
fn copy_text(buf: &mut Vec<u8>, s: &str) {
    if !s
        .bytes()
        .any(|b| matches!(b, b'\t' | b'\n' | b'\r' | b'\\'))
    {
        buf.extend_from_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            _ => buf.push(b),
        }
    }
}

/// A decimal integer, without the formatting machinery (five a row).
fn copy_int(buf: &mut Vec<u8>, n: i64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `rows` (key-ordered, unique) marked by whether their key is among `keys` (any order).
fn mark_changed(rows: &[&KlineEvent], mut keys: Vec<(&str, &str, i64)>) -> Vec<bool> {
    keys.sort_unstable();
    let mut changed = vec![false; rows.len()];
    let mut k = keys.into_iter().peekable();
    for (i, e) in rows.iter().enumerate() {
        let key = (e.symbol.as_str(), e.interval.as_str(), e.open_time);
        while k.next_if(|r| *r < key).is_some() {}
        if k.next_if(|r| *r == key).is_some() {
            changed[i] = true;
        }
    }
    changed
}

/// For the rows flagged in `recheck` that `changed` says were left alone: whether the table
/// holds exactly that version. Read inside the upsert's transaction, whose `ON CONFLICT` locked
/// those rows, so the answer is what this commit leaves.
pub async fn stored_same(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&KlineEvent],
    changed: &[bool],
    recheck: &[bool],
) -> Result<Vec<bool>, sqlx::Error> {
    let ask: Vec<usize> = (0..rows.len())
        .filter(|&i| recheck.get(i).copied().unwrap_or(false) && !changed[i])
        .collect();
    let mut same = vec![false; rows.len()];
    if ask.is_empty() {
        return Ok(same);
    }
    let symbols: Vec<&str> = ask.iter().map(|&i| rows[i].symbol.as_str()).collect();
    let timeframes: Vec<&str> = ask.iter().map(|&i| rows[i].interval.as_str()).collect();
    let opens: Vec<i64> = ask.iter().map(|&i| rows[i].open_time).collect();
    let found = sqlx::query(STORED_VERSIONS)
        .bind(&symbols)
        .bind(&timeframes)
        .bind(&opens)
        .fetch_all(&mut **tx)
        .await?;
    let mut stored = HashMap::with_capacity(found.len());
    for r in &found {
        stored.insert(
            (
                r.try_get::<String, _>(0)?,
                r.try_get::<String, _>(1)?,
                r.try_get::<i64, _>(2)?,
            ),
            (r.try_get::<bool, _>(3)?, r.try_get::<i64, _>(4)?),
        );
    }
    for &i in &ask {
        let e = rows[i];
        let k = (
            e.symbol.as_str().to_owned(),
            e.interval.as_str().to_owned(),
            e.open_time,
        );
        same[i] = stored.get(&k) == Some(&(e.closed, e.event_time));
    }
    Ok(same)
}

/// Ensures the monthly partitions of `ohlcv_candles` (migration 0007) for the (timeframe,
/// month) pairs of the batches, calling `klinebus_ensure_candle_partitions` only for a pair this
/// value has not ensured yet: one round trip the first time a month is seen, none in the steady
/// state. Each call also asks for the next month, so the partition a series rolls over into
/// already exists at midnight on the 1st.
///
/// Never a reason for a write to fail: a row of a month without a partition lands in its
/// timeframe's default partition (and is moved out by the next ensure of that month).
#[derive(Debug, Default)]
pub struct Partitions {
    ensured: HashSet<(&'static str, i64)>,
    /// After a failed ensure, none is tried again before this (a lock held for long on the
    /// default partition, e.g. by pg_dump, must not cost every batch the function's lock wait).
    retry_after: Option<Instant>,
}

/// How long to wait after a failed ensure before the next one.
const ENSURE_BACKOFF: Duration = Duration::from_secs(60);

const ENSURE_PARTITIONS: &str = r#"
SELECT coalesce(sum(klinebus_ensure_candle_partitions(t.tf, t.lo, t.hi)), 0)::int8
FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS t(tf, lo, hi)
"#;

/// Open times the function makes partitions for: years 1970 to 9999.
const PARTITIONED_MS: std::ops::Range<i64> = 0..253_402_300_800_000;

impl Partitions {
    /// The (timeframe, month) pairs of `rows` not ensured yet, in order of first appearance.
    fn missing(&self, rows: &[&KlineEvent]) -> Vec<(&'static str, i64)> {
        let mut out: Vec<(&'static str, i64)> = Vec::new();
        for e in rows {
            if !PARTITIONED_MS.contains(&e.open_time) {
                continue;
            }
            let key = (e.interval.as_str(), month_of(e.open_time));
            // Rows come key-ordered: a series' months are consecutive runs.
            if out.last() == Some(&key) || self.ensured.contains(&key) || out.contains(&key) {
                continue;
            }
            out.push(key);
        }
        out
    }

    /// Makes sure the partitions of the months `rows` touch exist (and of the month after
    /// each). Errors are logged, not returned: the rows have a place either way.
    pub async fn ensure(&mut self, pool: &PgPool, rows: &[&KlineEvent]) {
        let missing = self.missing(rows);
        if missing.is_empty() || self.retry_after.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let timeframes: Vec<&str> = missing.iter().map(|k| k.0).collect();
        let from: Vec<i64> = missing.iter().map(|k| month_start_ms(k.1)).collect();
        let to: Vec<i64> = missing.iter().map(|k| month_start_ms(k.1 + 1)).collect();
        match sqlx::query_scalar::<_, i64>(ENSURE_PARTITIONS)
            .bind(&timeframes)
            .bind(&from)
            .bind(&to)
            .fetch_one(pool)
            .await
        {
            Ok(created) => {
                if created > 0 {
                    tracing::info!(created, "created monthly partitions of ohlcv_candles");
                }
                self.ensured.extend(missing);
                self.retry_after = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, months = missing.len(),
                    "could not ensure the monthly partitions of ohlcv_candles; the rows go to the \
                     default partition meanwhile");
                self.retry_after = Some(Instant::now() + ENSURE_BACKOFF);
            }
        }
    }
}

/// Calendar months since 1970-01 (UTC) of an epoch-ms time in [`PARTITIONED_MS`].
fn month_of(ms: i64) -> i64 {
    // Howard Hinnant's civil_from_days, year and month only.
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year - 1970) * 12 + month - 1
}

/// Epoch ms of the first instant of month `m` of [`month_of`].
fn month_start_ms(m: i64) -> i64 {
    // days_from_civil for the 1st of the month.
    let (mut year, month) = (1970 + m.div_euclid(12), m.rem_euclid(12) + 1);
    if month <= 2 {
        year -= 1;
    }
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400_000
}

/// Flushes of at least this many candle versions go through COPY by default
/// (`--copy-min-rows`); fewer through [`upsert_candles`], one round trip instead of four.
pub const COPY_MIN_ROWS: usize = 1000;

/// How a flush's candles go into the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// [`upsert_candles`].
    Unnest,
    /// [`copy_insert`] if [`any_stored`] says every row is new, else [`copy_upsert`].
    Fresh,
    /// [`copy_upsert`].
    Staged,
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23505")
}

/// One transaction: candles, then status rows; committed before returning `Ok`. Rows flagged
/// in `recheck` (may be empty) that change nothing are looked up ([`stored_same`]). Fewer than
/// `copy_min_rows` rows (or 0) go through [`upsert_candles`]; more through COPY, straight into
/// the table when none of their series' key ranges is stored yet ([`copy_insert`]), else
/// through the staging table ([`copy_upsert`]). The same effect and the same [`Written`]
/// whichever way.
pub async fn write_batch(
    pool: &PgPool,
    rows: &[&KlineEvent],
    recheck: &[bool],
    copy_min_rows: usize,
) -> Result<Written, sqlx::Error> {
    if copy_min_rows == 0 || rows.len() < copy_min_rows {
        return write_with(pool, rows, recheck, Way::Unnest).await;
    }
    match write_with(pool, rows, recheck, Way::Fresh).await {
        // Another writer stored some of these keys between the look and the COPY: the upsert
        // decides between its versions and these.
        Err(e) if is_unique_violation(&e) => {
            tracing::debug!("keys stored meanwhile by another writer; upserting instead");
            write_with(pool, rows, recheck, Way::Staged).await
        }
        written => written,
    }
}

async fn write_with(
    pool: &PgPool,
    rows: &[&KlineEvent],
    recheck: &[bool],
    way: Way,
) -> Result<Written, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let changed = match way {
        Way::Unnest => upsert_candles(&mut tx, rows).await?,
        Way::Fresh if !any_stored(&mut tx, rows).await? => {
            copy_insert(&mut tx, rows).await?;
            vec![true; rows.len()]
        }
        Way::Fresh | Way::Staged => copy_upsert(&mut tx, rows).await?,
    };
    let already = if recheck.iter().any(|r| *r) {
        stored_same(&mut tx, rows, &changed, recheck).await?
    } else {
        Vec::new()
    };
    let series = series_of(rows, &changed);
    upsert_status(&mut tx, &series).await?;
    tx.commit().await?;
    Ok(Written { changed, already })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dedup::tests::candle;
    use crate::dedup::winners;

    #[test]
    fn marks_returned_keys_in_any_order() {
        let (b0, b1, e0) = (
            candle("BTCUSDT", 0, true, 0),
            candle("BTCUSDT", 1, true, 0),
            candle("ETHUSDT", 0, true, 0),
        );
        let rows = winners([&e0, &b1, &b0]);
        let keys = vec![
            ("ETHUSDT", "1m", e0.open_time),
            ("BTCUSDT", "1m", b0.open_time),
        ];
        assert_eq!(mark_changed(&rows, keys), vec![true, false, true]);
        assert_eq!(mark_changed(&rows, vec![]), vec![false; 3]);
    }

    #[test]
    fn months_are_calendar_months() {
        // 1970-01-01, 2024-02-01, 2024-03-01 (leap year), 2025-01-01, 2100-03-01.
        for (ms, m) in [
            (0, 0),
            (1_706_745_600_000, 54 * 12 + 1),
            (1_709_251_200_000, 54 * 12 + 2),
            (1_735_689_600_000, 55 * 12),
            (4_107_542_400_000, 130 * 12 + 2),
        ] {
            assert_eq!(month_of(ms), m, "{ms}");
            assert_eq!(month_of(ms - 1), m - 1, "{ms}");
            assert_eq!(month_of(ms + 27 * 86_400_000), m, "{ms}");
            assert_eq!(month_start_ms(m), ms, "{ms}");
        }
        assert_eq!(month_of(PARTITIONED_MS.end - 1), (9999 - 1970) * 12 + 11);
        let mut p = Partitions::default();
        let (a, b) = (candle("BTCUSDT", 0, true, 0), candle("BTCUSDT", 1, true, 0));
        let rows = winners([&a, &b]);
        let m = month_of(a.open_time);
        assert_eq!(p.missing(&rows), vec![("1m", m)]);
        p.ensured.insert(("1m", m));
        assert!(p.missing(&rows).is_empty());
    }

    #[test]
    fn copy_rows_are_the_text_sent() {
        let mut e = candle("BTCUSDT", 0, true, 0);
        e.trades = 1264;
        let mut buf = Vec::new();
        copy_row(&mut buf, &e);
        let line = String::from_utf8(buf).unwrap();
        let want = format!(
            "BTCUSDT\t1m\t{}\t100.00000000\t110.00000000\t90.00000000\t100.00000000\t\
             10.00000000\t1000.00000000\t5.00000000\t500.00000000\t1264\t{}\tt\t{}\tws\n",
            e.open_time, e.close_time, e.event_time
        );
        assert_eq!(line, want);
        let mut buf = Vec::new();
        copy_text(&mut buf, "a\tb\\c\nd\re");
        assert_eq!(buf, b"a\\tb\\\\c\\nd\\re");
        for n in [0, 7, -1, 1_749_038_400_000, i64::MAX, i64::MIN] {
            let mut buf = Vec::new();
            copy_int(&mut buf, n);
            assert_eq!(String::from_utf8(buf).unwrap(), n.to_string());
        }
    }
}
