//! Per-candle latency of one series: all indicators, strategies and the aggregate.
//!
//! `cargo run --release -p kline-signals --bin signals-bench -- [candles]` (default 100 000).
//! Prints p50/p99/max in microseconds; the target is p99 < 1 ms.

use std::hint::black_box;
use std::time::Instant;

use kline_signals::{Candle, Config, Outcome, SeriesState};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 100_000,
    };
    let cfg = Config::default();
    let mut series = SeriesState::new(&cfg, "BTCUSDT".parse()?, "1m".parse()?);
    let candles = synthetic(n + series.lookback())?;
    let (warmup, measured) = candles.split_at(series.lookback());
    series.warm(warmup);

    let mut micros = Vec::with_capacity(measured.len());
    let mut signals = 0usize;
    for c in measured {
        let t = Instant::now();
        let out = black_box(series.apply(black_box(c)));
        micros.push(t.elapsed().as_secs_f64() * 1e6);
        if matches!(out, Outcome::Signal(ref r) if r.action != kline_signals::Action::Hold) {
            signals += 1;
        }
    }
    micros.sort_by(f64::total_cmp);
    let pct = |p: f64| micros[((micros.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "candles {}  p50 {:.2} µs  p99 {:.2} µs  max {:.2} µs  (non-HOLD aggregates: {signals})",
        micros.len(),
        pct(0.50),
        pct(0.99),
        micros.last().copied().unwrap_or(0.0),
    );
    Ok(())
}

/// A deterministic random walk (xorshift), one-minute candles.
fn synthetic(n: usize) -> Result<Vec<Candle>, kline_signals::CandleError> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let mut price = 100_000.0_f64;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let open = price;
        let close = (open * (1.0 + 0.004 * rnd())).max(1.0);
        let high = open.max(close) * (1.0 + 0.001 * rnd().abs());
        let low = open.min(close) * (1.0 - 0.001 * rnd().abs());
        let volume = 10.0 * (1.0 + rnd()).max(0.01);
        out.push(Candle::new(
            i as i64 * 60_000,
            open,
            high,
            low,
            close,
            volume,
        )?);
        price = close;
    }
    Ok(out)
}
