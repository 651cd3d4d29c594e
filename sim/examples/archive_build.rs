//! Times building archive files: `cargo run --release -p binance-sim --example archive_build`.
//! Prints the cost of one 1m month from scratch (generation + CSV + deflate), of a cached
//! second request, and the zip's size.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use binance_sim::{ArchiveFile, Config, Interval, Period};
use clap::Parser;

#[tokio::main]
async fn main() {
    let cfg = Config::parse_from(["binance-sim", "--start-time", "2026-01-01T00:00:00Z"]);
    let sim = binance_sim::spawn(cfg).await.unwrap();
    let a = sim.archive();
    let file = |iv, p: &str| ArchiveFile::new("BTCUSDT", iv, Period::parse(p).unwrap()).unwrap();
    for (iv, p) in [
        (Interval::M1, "2024-06"),
        (Interval::M1, "2025-06"),
        (Interval::M1, "2025-06-04"),
        (Interval::H1, "2025-06"),
        (Interval::S1, "2025-06-04"),
    ] {
        let f = file(iv, p);
        let mut best = f64::MAX;
        let mut size = 0;
        for _ in 0..5 {
            let t = Instant::now();
            size = a.build_uncached(&f).unwrap().len();
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        let a2 = a.clone();
        let f2 = f.clone();
        let (first, again) = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            a2.zip_bytes(&f2).unwrap().unwrap();
            let first = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            a2.zip_bytes(&f2).unwrap().unwrap();
            (first, t.elapsed().as_secs_f64() * 1e6)
        })
        .await
        .unwrap();
        println!(
            "{:<28} build best of 5 {best:7.1} ms, first request {first:7.1} ms, cached {again:6.1} µs, zip {:.2} MiB",
            f.zip_name(),
            size as f64 / (1 << 20) as f64
        );
    }
}
