//! `pg-sink-bench [N] [SAMPLES] [-- sink args…]`: end-to-end benchmark of `kline-pg-sink`
//! (build with `--release`; needs `nats-server` on PATH and the local PostgreSQL).

use kline_pg_sink::bench::{run, BenchArgs};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut sink_args = Vec::new();
    while let Some(a) = argv.next() {
        if a == "--" {
            sink_args.extend(argv.by_ref());
        } else {
            positional.push(a);
        }
    }
    let n = positional.first().map_or(Ok(1_000_000), |s| s.parse())?;
    let samples = positional.get(1).map_or(Ok(500), |s| s.parse())?;
    let r = run(BenchArgs {
        n,
        samples,
        sink_args,
    })
    .await?;
    println!("candles:          {n}");
    println!(
        "throughput:       {:.0} candles/s ({:.2} s)",
        r.throughput, r.seconds
    );
    println!("sink peak RSS:    {:.1} MB", r.peak_rss_kb as f64 / 1024.0);
    let (p50, p99, max) = r.latency_ms;
    println!("live latency ms:  p50 {p50:.2}  p99 {p99:.2}  max {max:.2} ({samples} samples)");
    Ok(())
}
