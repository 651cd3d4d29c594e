-- The key's text columns compare byte by byte (COLLATE "C"). Symbols and timeframes are ASCII
-- names, never language text, and sort the same either way; but under the database's default
-- collation (often C.UTF-8 or en_US.UTF-8) every B-tree comparison of an insert or lookup went
-- through the locale machinery, about an eighth of PostgreSQL's time in kline-pg-sink's bulk
-- upsert (perf, pg-sink-bench). The types are unchanged, so the table is not rewritten; the
-- primary-key index is rebuilt (an exclusive lock for as long as that takes on a large table).
ALTER TABLE ohlcv_candles
    ALTER COLUMN symbol TYPE VARCHAR(20) COLLATE "C",
    ALTER COLUMN timeframe TYPE VARCHAR(4) COLLATE "C";
