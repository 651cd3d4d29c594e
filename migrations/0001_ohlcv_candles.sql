-- Candles, keyed by (symbol, timeframe, open time). Table and column names are the existing
-- backend's, so it keeps reading this table unchanged.
--
-- The primary key is the UNIQUE (symbol, timeframe, "timestamp") constraint and the only index:
-- every lookup (latest candle, a range of one series, gap detection) is a prefix of it.
CREATE TABLE IF NOT EXISTS ohlcv_candles (
    symbol          VARCHAR(20)    NOT NULL,
    timeframe       VARCHAR(4)     NOT NULL,
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
    -- Correctness columns: a closed candle is final and never overwritten by a forming update;
    -- among updates the later exchange event time wins.
    is_closed       BOOLEAN        NOT NULL DEFAULT FALSE,
    event_time      BIGINT         NOT NULL,  -- exchange event time of the stored version, epoch ms
    source          VARCHAR(8)     NOT NULL,  -- ws | poll | backfill | repair
    created_at      TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ    NOT NULL DEFAULT now(),
    CONSTRAINT ohlcv_candles_symbol_timeframe_timestamp_key
        PRIMARY KEY (symbol, timeframe, "timestamp"),
    CONSTRAINT ohlcv_candles_prices_check CHECK (low <= high AND low > 0),
    CONSTRAINT ohlcv_candles_close_time_check CHECK (close_time > "timestamp")
);
