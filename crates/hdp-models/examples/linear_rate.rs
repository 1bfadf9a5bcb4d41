//! Throughput of the packed dense layers per tier: `cargo run --release --example linear_rate
//! -p hdp-models [M K N]` (default: 4096 rows, 384 -> 1536, BERT-small's FFN up-projection).

use hdp_models::linear::{Epilogue, Linear, Tier};
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (m, k, n) = match a[..] {
        [m, k, n] => (m, k, n),
        _ => (4096, 384, 1536),
    };
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let b = vec![0.1f32; n];
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 104_729) % 997) as f32 * 1e-3 - 0.5)
        .collect();
    let lin = Linear::new(&w, &b, n, k);
    let mut out = vec![0.0f32; m * n];
    for tier in Tier::ALL.into_iter().filter(|t| t.available()) {
        for (name, epi) in [("none", Epilogue::None), ("gelu", Epilogue::Gelu)] {
            let mut times = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                lin.forward(&x, m, &mut out, epi, tier);
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let t = times[2];
            println!(
                "{:<9} {name:<5} m={m} k={k} n={n}: {:.2} ms, {:.1} GFLOP/s ({} threads)",
                tier.name(),
                t * 1e3,
                2.0 * (m * n * k) as f64 / t * 1e-9,
                rayon::current_num_threads()
            );
        }
    }
}
