-- Ranges where the exchange itself has no candles (maintenance windows), as confirmed by a
-- backfill. Verification subtracts them from the expected count instead of reporting them as
-- missing data forever.
CREATE TABLE IF NOT EXISTS exchange_gaps (
    symbol      VARCHAR(20)  NOT NULL,
    timeframe   VARCHAR(4)   NOT NULL,
    start_time  BIGINT       NOT NULL,  -- first missing open time, epoch ms
    end_time    BIGINT       NOT NULL,  -- exclusive: the next open time the exchange has
    candles     BIGINT       NOT NULL,
    detected_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT exchange_gaps_key PRIMARY KEY (symbol, timeframe, start_time),
    CONSTRAINT exchange_gaps_range_check CHECK (end_time > start_time)
);
