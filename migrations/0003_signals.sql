-- Signals computed by kline-signals from closed candles: one row per (symbol, timeframe,
-- candle open time). Written with an upsert, so replaying closed-candle events is harmless.
--
-- action is BUY | SELL | HOLD (as in details), or insufficient_data while a series warms up (then confidence
-- is 0 and regime 'unknown'; never NaN). details is the full report as JSON (every strategy's
-- verdict and the indicator readings), or the reason for insufficient_data.
CREATE TABLE IF NOT EXISTS signals (
    symbol      VARCHAR(20)      NOT NULL,
    timeframe   VARCHAR(4)       NOT NULL,
    "timestamp" BIGINT           NOT NULL,  -- candle open time, epoch ms UTC
    action      TEXT             NOT NULL,
    confidence  DOUBLE PRECISION NOT NULL,
    regime      TEXT             NOT NULL,
    details     JSONB            NOT NULL,
    created_at  TIMESTAMPTZ      NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ      NOT NULL DEFAULT now(),
    CONSTRAINT signals_symbol_timeframe_timestamp_key
        PRIMARY KEY (symbol, timeframe, "timestamp"),
    CONSTRAINT signals_confidence_check
        CHECK (confidence >= 0 AND confidence <= 1 AND confidence <> 'NaN'::float8)
);
