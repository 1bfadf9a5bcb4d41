//! Criterion benches of the attention kernels on the synthetic inputs of `hdp bench attention`
//! (12 heads, d 64): fast dense, fast HDP at the default operating point (one-entry blocks)
//! and with 16 x 16 blocks, and `int8::integer_pass_rate` (quantization plus a warm-up and a
//! timed run of the integer tile over every query and key: the int8 part of HDP).
//!
//! `cargo bench -p hdp-attention --bench kernels` (add `-- N=2048` to filter). Not run in CI;
//! `hdp bench attention` reports the same ratios from one command.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hdp_attention::fast::{self, Isa};
use hdp_attention::synthetic::{generate, SyntheticSpec};
use hdp_attention::{int8, HdpConfig};
use std::hint::black_box;
use std::time::Duration;

fn kernels(c: &mut Criterion) {
    let isa = Isa::detect();
    let mut g = c.benchmark_group(format!("attention-{}", isa.name()));
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    for n in [128usize, 512, 2048] {
        let p = generate(&SyntheticSpec {
            batch: 1,
            heads: 12,
            seq_len: n,
            head_dim: 64,
            valid_len: None,
            causal: false,
            seed: 0,
        })
        .expect("synthetic inputs");
        // Score-side multiply-accumulates of dense attention (Q.K^T and P.V).
        g.throughput(Throughput::Elements((2 * 12 * n * n * 64) as u64));
        g.bench_with_input(BenchmarkId::new("dense", format!("N={n}")), &p, |b, p| {
            b.iter(|| fast::dense_attention(black_box(p), isa).expect("dense"))
        });
        for bs in [1usize, 16] {
            let cfg = HdpConfig {
                block_size: bs,
                ..HdpConfig::default()
            }
            .validated()
            .expect("valid options");
            g.bench_with_input(
                BenchmarkId::new(format!("hdp-b{bs}"), format!("N={n}")),
                &p,
                |b, p| b.iter(|| fast::hdp_attention(black_box(p), &cfg, 0, isa).expect("hdp")),
            );
        }
        g.bench_with_input(
            BenchmarkId::new("integer-pass", format!("N={n}")),
            &p,
            |b, p| b.iter(|| int8::integer_pass_rate(black_box(p), &HdpConfig::default(), isa, 1)),
        );
    }
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
