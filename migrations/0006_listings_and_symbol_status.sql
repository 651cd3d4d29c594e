-- What the exchange says about each symbol's life, recorded by whoever talks to the exchange
-- (kline-backfill, klinectl verify --repair) so verification, which reads only PostgreSQL, can
-- use it.

-- The first candle per (symbol, timeframe) on the exchange (Binance:
-- GET /api/v3/klines?startTime=0&limit=1). History starts there: open times before it are
-- neither missing nor gaps.
CREATE TABLE IF NOT EXISTS symbol_listings (
    symbol          VARCHAR(20) COLLATE "C" NOT NULL,
    timeframe       VARCHAR(4)  COLLATE "C" NOT NULL,
    first_open_time BIGINT      NOT NULL,  -- open time of the first candle, epoch ms
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT symbol_listings_key PRIMARY KEY (symbol, timeframe)
);

-- The latest trading status seen per symbol: exchangeInfo's `status` (TRADING, BREAK, HALT, …)
-- or DELISTED when the symbol is absent from exchangeInfo. `observed_at` is the exchange's
-- clock when it was seen; `since` when this status was first seen (kept while it stays the same).
CREATE TABLE IF NOT EXISTS symbol_status (
    symbol      VARCHAR(20) COLLATE "C" NOT NULL,
    status      VARCHAR(20) NOT NULL,
    observed_at BIGINT      NOT NULL,  -- epoch ms, exchange clock
    since       BIGINT      NOT NULL,  -- epoch ms, exchange clock
    CONSTRAINT symbol_status_key PRIMARY KEY (symbol),
    CONSTRAINT symbol_status_since_check CHECK (since <= observed_at)
);
