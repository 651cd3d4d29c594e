-- klinebus_ensure_candle_partitions() attaches a new month under an ACCESS EXCLUSIVE lock on
-- the timeframe's table. Under 0007 (ATTACH alone, SHARE UPDATE EXCLUSIVE) a pooled connection
-- that planned `SELECT … FROM ohlcv_candles` while a month was being attached kept returning
-- none of that month's rows (a test saw 0 of 360 for 150 s while count(*) on a fresh statement
-- saw 360). The lock makes such readers wait for the attach and plan after it. Otherwise the
-- function is 0007's.

CREATE OR REPLACE FUNCTION klinebus_ensure_candle_partitions(p_timeframe text, p_from_ms bigint, p_to_ms bigint)
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
                -- Built beside the table, filled, then attached under an ACCESS EXCLUSIVE lock
                -- on the parent: ATTACH alone takes SHARE UPDATE EXCLUSIVE, and a connection
                -- planning a query on ohlcv_candles meanwhile could keep a plan without the new
                -- partition (0 rows of it, seen in tests); readers now wait the instant it takes.
                EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               name, parent);
                IF to_regclass(dflt) IS NOT NULL THEN
                    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE "timestamp" >= %s AND "timestamp" < %s RETURNING *)
                                    INSERT INTO %I SELECT * FROM moved', dflt, lo, hi, name);
                END IF;
                EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', parent);
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

-- CREATE OR REPLACE keeps the owner and SECURITY DEFINER but takes its settings from the new
-- definition: the search path again, as in 0007.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION klinebus_ensure_candle_partitions(text, bigint, bigint) '
                   'SET search_path = %I, pg_temp', current_schema());
END
$$;
