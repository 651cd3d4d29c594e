-- ohlcv_candles becomes a partitioned table (same name, columns, types, collations, CHECKs and
-- primary key, so every query and `ON CONFLICT (symbol, timeframe, "timestamp")` is unchanged):
--
--   ohlcv_candles                 PARTITION BY LIST (timeframe)
--     ohlcv_candles_1s, _1m, _3m, _5m, _15m   PARTITION BY RANGE ("timestamp"), one a month:
--       ohlcv_candles_1m_2026_12  [2026-12-01, 2027-01-01) UTC, as epoch ms
--       ohlcv_candles_1m_default  any month without a partition of its own (normally empty)
--     ohlcv_candles_30m, _1h, _2h, _4h, _6h, _8h, _12h, _1d, _3d, _1w, _1mo ('1M')   one table each
--     ohlcv_candles_other           DEFAULT: any other timeframe text
--
-- Why: at 1m for 400 symbols the table grows by ~210 M rows a year. Monthly partitions of the
-- fine timeframes keep each B-tree small (an upsert descends into this month's index, not a
-- year's), and `klinectl prune` drops whole months instead of deleting row by row. 15m is split
-- too (~1.2 M rows a month at 400 symbols): its history is long-lived and prune drops it cheaply;
-- 30m and coarser stay one table each (≤ 7 M rows a year at 400 symbols).
--
-- Months are created on demand by klinebus_ensure_candle_partitions() (below), which kline-pg-sink
-- calls the first time a batch touches a (timeframe, month) it has not ensured yet. A row for a
-- month without a partition never fails: it lands in the timeframe's `_default` partition, and the
-- next ensure of that month moves it into the new partition.
--
-- Migration path of an existing installation (this file, one transaction): the old heap is
-- renamed to ohlcv_candles_unpartitioned, the partitioned table is created with the partitions of
-- every month holding data (and the current and next month), every row is copied with
-- INSERT … SELECT, the primary key is built on each partition afterwards (a sorted build, much
-- cheaper than maintaining it row by row), the old table is dropped and the new one analyzed.
-- Cost:
--   - It copies the whole table: free disk of about the table's size plus its index (both exist
--     until the commit) plus the WAL of the copy (the whole table again, at wal_level replica).
--   - It holds an ACCESS EXCLUSIVE lock on ohlcv_candles from the first statement to the commit:
--     every reader and writer (sinks, the backend, klinectl) waits for the whole migration. The
--     sinks only stall (their flushes wait and commit afterwards); run it at a quiet hour.
--   - Time is linear in the rows: measured figures are in bench/README-partitions.md (10 M rows
--     there; 100 M rows take about ten times as long). A fresh installation (empty table) takes
--     well under a second.

CREATE FUNCTION klinebus_candle_month_start(ms bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
-- Open time (epoch ms UTC) of the calendar month holding `ms`.
RETURN (extract(epoch FROM date_trunc('month', to_timestamp(ms / 1000.0) AT TIME ZONE 'UTC'))
        * 1000)::bigint;

-- Creates the monthly partitions of `p_timeframe` covering the months from the one holding
-- `p_from_ms` to the one holding `p_to_ms` (both included) that do not exist yet; returns how
-- many it created. A no-op (0) for a timeframe that is not split by month. Idempotent and safe to
-- race: callers are serialized by an advisory transaction lock, and a partition made meanwhile by
-- someone else (duplicate name, or an overlapping range under another name) is skipped. Rows of a
-- month already sitting in the `_default` partition are moved into the new one.
--
-- SECURITY DEFINER: the partitions belong to the tables' owner, and a sink role with only
-- INSERT/UPDATE/SELECT on ohlcv_candles may call it; a role without INSERT on ohlcv_candles may
-- not (checked below; EXECUTE stays granted to PUBLIC so no GRANT is needed per sink role).
CREATE FUNCTION klinebus_ensure_candle_partitions(p_timeframe text, p_from_ms bigint, p_to_ms bigint)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
-- Waiting behind a long transaction on the default partition would stall the caller's write:
-- give up instead (the rows go to the default partition meanwhile; the caller retries later).
SET lock_timeout = '5s'
AS $fn$
DECLARE
    parent   text := 'ohlcv_candles_' || CASE p_timeframe WHEN '1M' THEN '1mo' ELSE lower(p_timeframe) END;
    dflt     text;
    month    timestamp;
    last     timestamp;
    lo       bigint;
    hi       bigint;
    name     text;
    created  integer := 0;
BEGIN
    IF NOT has_table_privilege(session_user, 'ohlcv_candles', 'INSERT') THEN
        RAISE EXCEPTION 'permission denied: % may not insert into ohlcv_candles', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- Only the timeframes split by month (a partitioned child of ohlcv_candles) have months.
    IF NOT EXISTS (
        SELECT FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid
        WHERE c.oid = to_regclass(parent) AND c.relkind = 'p'
          AND i.inhparent = 'ohlcv_candles'::regclass
    ) OR p_from_ms IS NULL OR p_to_ms IS NULL THEN
        RETURN 0;
    END IF;
    -- Months of years 1970-9999 only (what a partition name and to_timestamp can hold); an open
    -- time outside stays in the default partition.
    p_from_ms := greatest(p_from_ms, 0);
    p_to_ms := least(p_to_ms, 253402300799999);
    IF p_from_ms > p_to_ms THEN
        RETURN 0;
    END IF;
    month := date_trunc('month', to_timestamp(p_from_ms / 1000.0) AT TIME ZONE 'UTC');
    last := date_trunc('month', to_timestamp(p_to_ms / 1000.0) AT TIME ZONE 'UTC');
    IF last > month + interval '100 years' THEN
        RAISE EXCEPTION 'klinebus_ensure_candle_partitions: % to % spans more than 100 years',
            p_from_ms, p_to_ms USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('klinebus_ensure_candle_partitions'));
    dflt := parent || '_default';
    WHILE month <= last LOOP
        lo := (extract(epoch FROM month) * 1000)::bigint;
        hi := (extract(epoch FROM month + interval '1 month') * 1000)::bigint;
        name := parent || to_char(month, '_YYYY_MM');
        IF to_regclass(name) IS NULL THEN
            BEGIN
                -- Built beside the table and attached: ATTACH takes only a SHARE UPDATE
                -- EXCLUSIVE lock on the parent (readers and writers go on), CREATE … PARTITION
                -- OF an ACCESS EXCLUSIVE one.
                EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               name, parent);
                IF to_regclass(dflt) IS NOT NULL THEN
                    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE "timestamp" >= %s AND "timestamp" < %s RETURNING *)
                                    INSERT INTO %I SELECT * FROM moved', dflt, lo, hi, name);
                END IF;
                EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                               parent, name, lo, hi);
                created := created + 1;
            EXCEPTION WHEN duplicate_table OR invalid_object_definition THEN
                -- Made meanwhile by someone not going through this function, or a range
                -- already covered by a partition of another name: nothing to do.
                NULL;
            END;
        END IF;
        month := month + interval '1 month';
    END LOOP;
    RETURN created;
END
$fn$;

-- The function's own schema first, pg_temp last: a SECURITY DEFINER function must not resolve
-- names through a schema the caller controls.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION klinebus_ensure_candle_partitions(text, bigint, bigint) '
                   'SET search_path = %I, pg_temp', current_schema());
END
$$;

-- The old heap steps aside; its key's name (an index name, unique in the schema) is freed for
-- the new table.
ALTER TABLE ohlcv_candles RENAME TO ohlcv_candles_unpartitioned;
ALTER TABLE ohlcv_candles_unpartitioned
    RENAME CONSTRAINT ohlcv_candles_symbol_timeframe_timestamp_key TO ohlcv_candles_unpartitioned_key;

-- Column for column the table of 0001 + 0005. The primary key comes after the copy.
CREATE TABLE ohlcv_candles (
    symbol          VARCHAR(20) COLLATE "C" NOT NULL,
    timeframe       VARCHAR(4)  COLLATE "C" NOT NULL,
    "timestamp"     BIGINT         NOT NULL,  -- candle open time, epoch ms UTC
    open            NUMERIC(20, 8) NOT NULL,
    high            NUMERIC(20, 8) NOT NULL,
    low             NUMERIC(20, 8) NOT NULL,
    close           NUMERIC(20, 8) NOT NULL,
    volume          NUMERIC(30, 8) NOT NULL,
    quote_volume    NUMERIC(30, 8) NOT NULL,
    taker_buy_base  NUMERIC(30, 8) NOT NULL,
    taker_buy_quote NUMERIC(30, 8) NOT NULL,
    trades          BIGINT         NOT NULL,
    close_time      BIGINT         NOT NULL,  -- epoch ms UTC, next open - 1
    is_closed       BOOLEAN        NOT NULL DEFAULT FALSE,
    event_time      BIGINT         NOT NULL,  -- exchange event time of the stored version, epoch ms
    source          VARCHAR(8)     NOT NULL,  -- ws | poll | backfill | repair
    created_at      TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ    NOT NULL DEFAULT now(),
    CONSTRAINT ohlcv_candles_prices_check CHECK (low <= high AND low > 0),
    CONSTRAINT ohlcv_candles_close_time_check CHECK (close_time > "timestamp")
) PARTITION BY LIST (timeframe);

DO $$
DECLARE
    tf   text;
    part text;
    r    record;
BEGIN
    FOREACH tf IN ARRAY ARRAY['1s', '1m', '3m', '5m', '15m'] LOOP
        part := 'ohlcv_candles_' || tf;
        EXECUTE format('CREATE TABLE %I PARTITION OF ohlcv_candles FOR VALUES IN (%L) '
                       'PARTITION BY RANGE ("timestamp")', part, tf);
        EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', part || '_default', part);
    END LOOP;
    FOREACH tf IN ARRAY ARRAY['30m', '1h', '2h', '4h', '6h', '8h', '12h', '1d', '3d', '1w', '1M'] LOOP
        part := 'ohlcv_candles_' || CASE tf WHEN '1M' THEN '1mo' ELSE tf END;
        EXECUTE format('CREATE TABLE %I PARTITION OF ohlcv_candles FOR VALUES IN (%L)', part, tf);
    END LOOP;
    CREATE TABLE ohlcv_candles_other PARTITION OF ohlcv_candles DEFAULT;

    -- The months holding data (through distinct days: integer division per row, the calendar
    -- arithmetic only per day), then the current and the next month so that writers that do
    -- not ensure (tests, hand-written inserts) start in the right partition.
    FOR r IN
        SELECT timeframe::text AS tf, min(day) * 86400000 AS lo, max(day) * 86400000 AS hi
        FROM (SELECT DISTINCT timeframe, "timestamp" / 86400000 AS day
              FROM ohlcv_candles_unpartitioned
              WHERE timeframe IN ('1s', '1m', '3m', '5m', '15m')
                AND "timestamp" >= 0 AND "timestamp" < 253402300800000) d
        GROUP BY timeframe, klinebus_candle_month_start(day * 86400000)
    LOOP
        PERFORM klinebus_ensure_candle_partitions(r.tf, r.lo, r.hi);
    END LOOP;
    FOREACH tf IN ARRAY ARRAY['1s', '1m', '3m', '5m', '15m'] LOOP
        PERFORM klinebus_ensure_candle_partitions(
            tf, (extract(epoch FROM now()) * 1000)::bigint,
            (extract(epoch FROM now() + interval '1 month') * 1000)::bigint);
    END LOOP;
END
$$;

INSERT INTO ohlcv_candles (symbol, timeframe, "timestamp", open, high, low, close, volume,
                           quote_volume, taker_buy_base, taker_buy_quote, trades, close_time,
                           is_closed, event_time, source, created_at, updated_at)
SELECT symbol, timeframe, "timestamp", open, high, low, close, volume, quote_volume,
       taker_buy_base, taker_buy_quote, trades, close_time, is_closed, event_time, source,
       created_at, updated_at
FROM ohlcv_candles_unpartitioned;

DROP TABLE ohlcv_candles_unpartitioned;

-- The same key as before, under the same name; each partition gets its own index
-- (ohlcv_candles_1m_2026_12_pkey, …), built after the copy in one sorted pass each.
ALTER TABLE ohlcv_candles
    ADD CONSTRAINT ohlcv_candles_symbol_timeframe_timestamp_key
    PRIMARY KEY (symbol, timeframe, "timestamp");

ANALYZE ohlcv_candles;
