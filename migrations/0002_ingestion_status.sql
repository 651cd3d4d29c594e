-- One row per (symbol, timeframe): how ingestion of that series is doing.
CREATE TABLE IF NOT EXISTS ingestion_status (
    symbol                  VARCHAR(20)  NOT NULL,
    timeframe               VARCHAR(4)   NOT NULL,
    last_ingested_timestamp BIGINT,                   -- newest candle open time stored, epoch ms
    last_closed_timestamp   BIGINT,                   -- newest closed candle open time stored
    last_ingested_at        TIMESTAMPTZ,              -- when a candle of this series was last committed
    ingestion_mode          VARCHAR(16),              -- websocket | polling | backfill | repair
    status                  VARCHAR(16)  NOT NULL DEFAULT 'active', -- active | error
    error_message           TEXT,
    error_count             INTEGER      NOT NULL DEFAULT 0,         -- consecutive errors
    latency_ms              BIGINT,                   -- candle close (or event) to commit, last batch
    candles_ingested        BIGINT       NOT NULL DEFAULT 0,
    created_at              TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT ingestion_status_symbol_timeframe_key UNIQUE (symbol, timeframe)
);
