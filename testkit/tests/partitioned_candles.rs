//! Migration 0007 (ohlcv_candles partitioned by timeframe, the fine timeframes by month) on a
//! table that already holds rows, and the partition function it creates.
#![allow(clippy::unwrap_used)]

use klinebus_testkit::TestDb;
use sqlx::PgPool;

/// Every row as text (every column, created_at and updated_at included), in key order.
async fn rows(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        r#"SELECT c::text FROM ohlcv_candles c ORDER BY symbol, timeframe, "timestamp""#,
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn partition_of(pool: &PgPool, symbol: &str, tf: &str, ts: i64) -> String {
    sqlx::query_scalar(
        r#"SELECT tableoid::regclass::text FROM ohlcv_candles
           WHERE symbol = $1 AND timeframe = $2 AND "timestamp" = $3"#,
    )
    .bind(symbol)
    .bind(tf)
    .bind(ts)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn insert_one(pool: &PgPool, symbol: &str, tf: &str, ts: i64) -> Result<u64, sqlx::Error> {
    sqlx::query(
        r#"INSERT INTO ohlcv_candles (symbol, timeframe, "timestamp", open, high, low, close,
             volume, quote_volume, taker_buy_base, taker_buy_quote, trades, close_time,
             is_closed, event_time, source)
           VALUES ($1, $2, $3, 1, 2, 1, 1.5, 10, 15, 5, 7.5, 3, $3 + 1, true, $3 + 2, 'ws')
           ON CONFLICT (symbol, timeframe, "timestamp") DO NOTHING"#,
    )
    .bind(symbol)
    .bind(tf)
    .bind(ts)
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
}

#[tokio::test]
async fn partitioning_a_populated_table_keeps_every_row() {
    let db = TestDb::fresh_up_to(6).await;
    // 50 000 rows over ten timeframes (an unknown one among them) and three years from
    // 2023-01-01, distinct prices and both closednesses, created at different times.
    sqlx::query(
        r#"INSERT INTO ohlcv_candles (symbol, timeframe, "timestamp", open, high, low, close,
             volume, quote_volume, taker_buy_base, taker_buy_quote, trades, close_time,
             is_closed, event_time, source, created_at, updated_at)
           SELECT 'S' || (i % 13), (ARRAY['1m','5m','15m','1h','1d','1M','7m','1s','3m','30m'])[1 + i % 10],
                  1672531200000 + i * 1897000::bigint,
                  i / 100.0, i / 50.0 + 1, i / 100.0, i / 70.0, i * 1.5, i * 2.25, i / 3.0, i / 7.0,
                  i, 1672531200000 + i * 1897000::bigint + 59999, i % 3 <> 0,
                  1672531200000 + i * 1897000::bigint + 60000, 'backfill',
                  now() - i * interval '1 minute', now() - i * interval '1 second'
           FROM generate_series(1, 50000) i"#,
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // Open times no month partition can hold: before 1970, 1970-01-01 itself, past year 9999.
    for (tf, ts) in [
        ("1m", -60_000),
        ("1m", 0),
        ("5m", 253_402_300_800_000),
        ("15m", 9_000_000_000_000_000),
    ] {
        assert_eq!(insert_one(&db.pool, "ODDUSDT", tf, ts).await.unwrap(), 1);
    }
    let before = rows(&db.pool).await;
    assert_eq!(before.len(), 50_004);

    klinebus_migrations::run(&db.pool).await.unwrap();

    let kind: String = sqlx::query_scalar(
        "SELECT relkind::text FROM pg_class WHERE oid = 'ohlcv_candles'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(kind, "p");
    assert_eq!(rows(&db.pool).await, before);
    // The same key and CHECKs under their names, the same byte-order collation.
    let constraints: Vec<String> = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'ohlcv_candles'::regclass ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        constraints,
        [
            "ohlcv_candles_close_time_check",
            "ohlcv_candles_prices_check",
            "ohlcv_candles_symbol_timeframe_timestamp_key"
        ]
    );
    let collations: Vec<String> = sqlx::query_scalar(
        "SELECT attname || ' ' || attcollation::regcollation::text FROM pg_attribute
         WHERE attrelid = 'ohlcv_candles'::regclass AND attname IN ('symbol', 'timeframe') ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(collations, [r#"symbol "C""#, r#"timeframe "C""#]);
    // Rows sit where the layout says: row i has timeframe i % 10 of the list (i = 10: 1m, 1: 5m,
    // 3: 1h, 5: 1M, 6: 7m), symbol S(i % 13), an open time in January 2023 for these.
    let t = |i: i64| 1_672_531_200_000 + i * 1_897_000;
    assert_eq!(
        partition_of(&db.pool, "S10", "1m", t(10)).await,
        "ohlcv_candles_1m_2023_01"
    );
    assert_eq!(
        partition_of(&db.pool, "S1", "5m", t(1)).await,
        "ohlcv_candles_5m_2023_01"
    );
    assert_eq!(
        partition_of(&db.pool, "S3", "1h", t(3)).await,
        "ohlcv_candles_1h"
    );
    assert_eq!(
        partition_of(&db.pool, "S5", "1M", t(5)).await,
        "ohlcv_candles_1mo"
    );
    assert_eq!(
        partition_of(&db.pool, "S6", "7m", t(6)).await,
        "ohlcv_candles_other"
    );
    assert_eq!(
        partition_of(&db.pool, "ODDUSDT", "1m", 0).await,
        "ohlcv_candles_1m_1970_01"
    );
    assert_eq!(
        partition_of(&db.pool, "ODDUSDT", "1m", -60_000).await,
        "ohlcv_candles_1m_default"
    );
    assert_eq!(
        partition_of(&db.pool, "ODDUSDT", "15m", 9_000_000_000_000_000).await,
        "ohlcv_candles_15m_default"
    );
    let in_defaults: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM ohlcv_candles_1m_default) + (SELECT count(*) FROM ohlcv_candles_5m_default)
              + (SELECT count(*) FROM ohlcv_candles_15m_default) + (SELECT count(*) FROM ohlcv_candles_1s_default)
              + (SELECT count(*) FROM ohlcv_candles_3m_default)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(in_defaults, 3);
    // The key still decides conflicts; the CHECKs still hold.
    assert_eq!(insert_one(&db.pool, "S10", "1m", t(10)).await.unwrap(), 0);
    let bad = sqlx::query(
        r#"INSERT INTO ohlcv_candles (symbol, timeframe, "timestamp", open, high, low, close, volume,
             quote_volume, taker_buy_base, taker_buy_quote, trades, close_time, event_time, source)
           VALUES ('X', '1m', 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 0, 'ws')"#,
    )
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert_eq!(
        bad.as_database_error().unwrap().code().as_deref(),
        Some("23514")
    );
}

#[tokio::test]
async fn ensuring_a_month_is_idempotent_races_safely_and_moves_rows_out_of_default() {
    let db = TestDb::fresh().await;
    // 2031-10-15: no partition; the row waits in the default partition.
    let ts = 1_949_961_600_000;
    assert_eq!(insert_one(&db.pool, "BTCUSDT", "1m", ts).await.unwrap(), 1);
    assert_eq!(
        partition_of(&db.pool, "BTCUSDT", "1m", ts).await,
        "ohlcv_candles_1m_default"
    );
    // Eight callers at once for October and November: two partitions, made once.
    let calls = (0..8).map(|_| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT klinebus_ensure_candle_partitions('1m', $1, $2)")
                .bind(ts)
                .bind(ts + 31 * 86_400_000)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    });
    let created: i32 = futures::future::join_all(calls).await.into_iter().sum();
    assert_eq!(created, 2);
    assert_eq!(
        partition_of(&db.pool, "BTCUSDT", "1m", ts).await,
        "ohlcv_candles_1m_2031_10"
    );
    let nov: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('ohlcv_candles_1m_2031_11')::text")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(nov.as_deref(), Some("ohlcv_candles_1m_2031_11"));
    // A timeframe kept in one table has no months: nothing to do.
    let none: i32 = sqlx::query_scalar("SELECT klinebus_ensure_candle_partitions('1h', $1, $1)")
        .bind(ts)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(none, 0);
}

/// Rows moved out of the default partition by an ensure stay visible to another connection that
/// queried them before (its prepared statement planned, and re-planned after the attach). Two
/// tests under heavy load once saw a table with fewer rows than the sink had committed; this
/// rules out the plainest way the move could hide them.
#[tokio::test]
async fn rows_moved_out_of_default_stay_visible_to_a_connection_that_read_them_before() {
    let db = TestDb::fresh().await;
    let reader = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    // 2031-10-15 onwards: no partition yet, the rows wait in the default partition.
    let ts0: i64 = 1_949_961_600_000;
    for i in 0..10 {
        assert_eq!(
            insert_one(&db.pool, "BTCUSDT", "1m", ts0 + i * 60_000)
                .await
                .unwrap(),
            1
        );
    }
    let query = r#"SELECT "timestamp" FROM ohlcv_candles
                   WHERE symbol = $1 AND timeframe = '1m' AND is_closed AND "timestamp" >= $2
                   ORDER BY 1"#;
    let read = || async {
        sqlx::query_scalar::<_, i64>(query)
            .bind("BTCUSDT")
            .bind(0i64)
            .fetch_all(&reader)
            .await
            .unwrap()
            .len()
    };
    // More than five runs: PostgreSQL may switch the prepared statement to a generic plan.
    for _ in 0..8 {
        assert_eq!(read().await, 10);
    }
    let made: i32 = sqlx::query_scalar("SELECT klinebus_ensure_candle_partitions('1m', $1, $2)")
        .bind(ts0)
        .bind(ts0 + 31 * 86_400_000)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(made, 2);
    assert_eq!(
        partition_of(&db.pool, "BTCUSDT", "1m", ts0).await,
        "ohlcv_candles_1m_2031_10"
    );
    assert_eq!(read().await, 10);
}
