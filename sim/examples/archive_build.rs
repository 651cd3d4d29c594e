//! Times building archive files: `cargo run --release -p binance-sim --example archive_build`.
//! Prints the cost of one file from scratch (generation + CSV + deflate), of a cached second
//! request, and the zip's size; then prewarms 4 symbols × 5 years of 1m monthly files (the
//! archive benchmark's set) and pulls them all over HTTP.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use binance_sim::{ArchiveFile, Config, Interval, Period, PrewarmRequest};
use clap::Parser;

#[tokio::main]
async fn main() {
    let cfg = Config::parse_from(["binance-sim", "--start-time", "2026-02-01T00:00:00Z"]);
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

    let req = PrewarmRequest {
        symbols: ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"]
            .map(String::from)
            .into(),
        intervals: vec!["1m".into()],
        kind: binance_sim::PrewarmKind::Monthly,
        from: "2021-01".into(),
        to: Some("2025-12".into()),
    };
    let a2 = a.clone();
    let files = a.prewarm_files(&req).unwrap();
    let rep = tokio::task::spawn_blocking(move || a2.prewarm(&req).unwrap())
        .await
        .unwrap();
    println!(
        "prewarm {} files: built {} (cached {}, unpublished {}) in {} ms ({:.1} ms a file on {} cores), {:.0} MiB, evicted {}",
        rep.files,
        rep.built,
        rep.cached,
        rep.unpublished,
        rep.elapsed_ms,
        rep.elapsed_ms as f64 / rep.built.max(1) as f64,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        rep.bytes as f64 / (1 << 20) as f64,
        rep.evicted
    );
    let client = reqwest::Client::new();
    let t = Instant::now();
    let mut bytes = 0;
    for f in &files {
        let url = format!("{}/{}", sim.base_url(), f.path());
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        bytes += r.bytes().await.unwrap().len();
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "pulled {} prewarmed files over HTTP one at a time in {:.0} ms ({:.0} MiB/s)",
        files.len(),
        el * 1e3,
        bytes as f64 / (1 << 20) as f64 / el
    );
}
