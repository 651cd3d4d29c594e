# syntax=docker/dockerfile:1
#
# One image with every klinebus binary (compose/docker-compose.yml picks the binary per service
# with `command:`).
#
#   docker build -t klinebus:latest .
#
# Stage 1 builds the release binaries; stage 2 is a slim Debian with only what they link against
# (OpenSSL for the Binance REST/WebSocket client's TLS, CA certificates) and a non-root user.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target dir between builds (BuildKit); the binaries are
# copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin kline-backfill \
        --bin kline-live \
        --bin kline-pg-sink \
        --bin kline-signals \
        --bin klinectl \
        --bin klinebus-migrate \
        --bin binance-sim \
 && mkdir -p /out \
 && cp target/release/kline-backfill target/release/kline-live target/release/kline-pg-sink \
       target/release/kline-signals target/release/klinectl target/release/klinebus-migrate \
       target/release/binance-sim /out/

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 klinebus \
 && useradd --system --uid 10001 --gid klinebus --home-dir /app --shell /usr/sbin/nologin klinebus \
 && mkdir -p /app \
 && chown klinebus:klinebus /app
COPY --from=builder /out/ /usr/local/bin/
# Example strategy parameters for kline-signals (--config / SIGNALS_CONFIG).
COPY sinks/signals/signals.example.toml /app/signals.example.toml
WORKDIR /app
USER 10001:10001
ENV RUST_LOG=info \
    LOG_FORMAT=json
# /metrics and /health of kline-pg-sink, kline-live, kline-signals (each binary's METRICS_ADDR);
# binance-sim's REST + WebSocket.
EXPOSE 9101 9102 9103 9090
# No ENTRYPOINT: compose sets `command:` to the binary (e.g. ["kline-pg-sink"]).
CMD ["klinectl", "--help"]
