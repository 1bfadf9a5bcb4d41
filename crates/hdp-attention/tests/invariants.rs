//! The invariants of `shared/design/hdp.md`, checked on random shapes, masks and options.
//! Tolerances come from `hdp_core::tolerance`.

use hdp_attention::synthetic::{generate, SyntheticSpec};
use hdp_attention::{
    dense, hdp, AttentionProblem, BlockImportance, HdpConfig, HeadImportance, HeadPruning,
    PrunedHeadOutput, RowThreshold,
};
use hdp_core::tolerance::{
    BF16_VS_F32_PER_V, FLOAT_SAME_MATH_ABS, FLOAT_SAME_MATH_REL, QUANT_BOUND_SLACK_ABS,
};
use hdp_core::{Compensation, PvPrecision, QFormat, ScoreMode, Tensor};
use proptest::prelude::*;

/// A random problem: shapes, padding and causality drawn by proptest.
fn problem_strategy() -> impl Strategy<Value = AttentionProblem> {
    (
        1usize..=2,
        1usize..=3,
        1usize..=23,
        1usize..=8,
        any::<bool>(),
        any::<u64>(),
        0usize..=3,
    )
        .prop_map(|(batch, heads, n, d, causal, seed, pad)| {
            let valid_len = if pad > 0 && n > pad {
                Some(n - pad)
            } else {
                None
            };
            generate(&SyntheticSpec {
                batch,
                heads,
                seq_len: n,
                head_dim: d,
                valid_len,
                causal,
                seed,
            })
            .unwrap()
        })
}

fn threshold_strategy() -> impl Strategy<Value = RowThreshold> {
    prop_oneof![
        Just(RowThreshold::KeepAll),
        (0.0f64..=1.0).prop_map(|rho| RowThreshold::MeanMax { rho }),
        (0.01f64..=1.0).prop_map(|keep| RowThreshold::TopK { keep, min: 1 }),
        (0.01f64..=1.0).prop_map(|mass| RowThreshold::TopP { mass }),
    ]
}

fn importance_strategy() -> impl Strategy<Value = BlockImportance> {
    prop_oneof![
        Just(BlockImportance::Sum),
        Just(BlockImportance::Max),
        Just(BlockImportance::AbsSum)
    ]
}

fn head_importance_strategy() -> impl Strategy<Value = HeadImportance> {
    prop_oneof![
        Just(HeadImportance::KeptSum),
        Just(HeadImportance::KeptPosSum),
        Just(HeadImportance::AllSum),
        Just(HeadImportance::Peakedness),
        Just(HeadImportance::KeptMass)
    ]
}

fn config_strategy() -> impl Strategy<Value = HdpConfig> {
    (
        1usize..=9,
        importance_strategy(),
        threshold_strategy(),
        head_importance_strategy(),
        prop_oneof![
            Just(HeadPruning::Off),
            (0.0f64..=1.0).prop_map(|tau| HeadPruning::Tau { tau }),
            (1usize..=3).prop_map(|heads| HeadPruning::TopK { heads }),
        ],
        prop_oneof![
            Just(ScoreMode::Approx),
            Just(ScoreMode::Exact),
            Just(ScoreMode::Float)
        ],
        (4u32..=16, 0u32..=15),
        prop_oneof![
            Just(Compensation::Off),
            Just(Compensation::MeanV),
            Just(Compensation::Auto)
        ],
    )
        .prop_map(
            |(
                block_size,
                importance,
                threshold,
                head_importance,
                head_pruning,
                score_mode,
                (bits, f),
                compensate,
            )| {
                HdpConfig {
                    compensate,
                    q_format: QFormat::new(bits, f.min(bits - 1)).unwrap(),
                    block_size,
                    importance,
                    threshold,
                    head_importance,
                    head_pruning,
                    score_mode,
                    ..HdpConfig::default()
                }
            },
        )
}

/// Analytic bound on |O_hdp - O_dense| for exact-mode HDP without pruning, per output element:
/// with quantization steps sq, sk (no saturation), each score is off by at most
/// eps = sum_m (|q_m| sk/2 + |k_m| sq/2 + sq sk/4) / sqrt(d); softmax weights then change by a
/// factor within e^(+-2 eps), so each output moves by at most (e^(2 eps) - 1) max_j |v_j|.
fn exact_mode_bound(
    p: &AttentionProblem,
    trace: &hdp_core::trace::LayerTrace,
    b: usize,
    h: usize,
    i: usize,
) -> f32 {
    let s = p.q().shape();
    let (n, d) = (s[2], s[3]);
    let seq = &trace.sequences[b];
    let f = trace.q_format.frac_bits as i32;
    let sq = (2f64).powi(-(f + seq.q_prescale_exp));
    let sk = (2f64).powi(-(f + seq.k_prescale_exp));
    let qi = &p.q().data()[p.row_offset(b, h, i)..][..d];
    let mut eps: f64 = 0.0;
    let mut vmax: f64 = 0.0;
    for j in (0..n).filter(|&j| p.entry_is_valid(b, i, j)) {
        let kj = &p.k().data()[p.row_offset(b, h, j)..][..d];
        let e: f64 = qi
            .iter()
            .zip(kj)
            .map(|(&q, &k)| {
                (q.abs() as f64) * sk / 2.0 + (k.abs() as f64) * sq / 2.0 + sq * sk / 4.0
            })
            .sum::<f64>()
            / (d as f64).sqrt();
        eps = eps.max(e);
        let vj = &p.v().data()[p.row_offset(b, h, j)..][..d];
        vmax = vmax.max(vj.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64)));
    }
    (((2.0 * eps).exp() - 1.0) * vmax) as f32
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Pruning off + float scores = dense attention to float tolerance.
    #[test]
    fn float_mode_without_pruning_equals_dense(p in problem_strategy(), bs in 1usize..=9) {
        let cfg = HdpConfig { block_size: bs, score_mode: ScoreMode::Float, pv: PvPrecision::F32, ..HdpConfig::default() }.no_pruning();
        let out = hdp::attention(&p, &cfg.validated().unwrap(), 0).unwrap();
        let dense = dense::attention(&p).unwrap();
        prop_assert!(out.output.max_abs_diff(&dense) <= FLOAT_SAME_MATH_ABS);
        prop_assert!(out.output.rel_l2_err(&dense).unwrap() <= FLOAT_SAME_MATH_REL);
    }

    /// Pruning off + exact mode + 16-bit format = dense within the quantization error bound.
    #[test]
    fn exact_mode_without_pruning_is_within_quantization_bound(p in problem_strategy(), bs in 1usize..=9) {
        let cfg = HdpConfig {
            block_size: bs,
            score_mode: ScoreMode::Exact,
            q_format: QFormat::new(16, 8).unwrap(),
            pv: PvPrecision::F32,
            ..HdpConfig::default()
        }.no_pruning();
        let out = hdp::attention(&p, &cfg.validated().unwrap(), 0).unwrap();
        let dense = dense::attention(&p).unwrap();
        let s = p.q().shape();
        let (batch, heads, n, d) = (s[0], s[1], s[2], s[3]);
        for b in 0..batch {
            prop_assert_eq!(out.trace.sequences[b].q_saturated + out.trace.sequences[b].k_saturated, 0);
            for h in 0..heads {
                for i in (0..n).filter(|&i| p.token_is_valid(b, i)) {
                    let bound = exact_mode_bound(&p, &out.trace, b, h, i) + QUANT_BOUND_SLACK_ABS;
                    let off = p.row_offset(b, h, i);
                    for m in 0..d {
                        let e = (out.output.data()[off + m] - dense.data()[off + m]).abs();
                        prop_assert!(e <= bound, "b={} h={} i={} err {} > bound {}", b, h, i, e, bound);
                    }
                }
            }
        }
    }

    /// Structural invariants of any configuration: kept blocks are valid blocks, no block-row
    /// with a valid block is empty, at least one head survives, the counts follow the
    /// conventions of the trace format, and the trace survives a JSON round trip.
    #[test]
    fn structural_invariants_hold_for_every_option(p in problem_strategy(), cfg in config_strategy()) {
        let out = hdp::attention(&p, &cfg.validated().unwrap(), 3).unwrap();
        let t = &out.trace;
        let s = p.q().shape();
        let (heads, n, d) = (s[1], s[2], s[3]);
        let nb = n.div_ceil(cfg.block_size);
        for seq in &t.sequences {
            // The valid-block mask equals a brute-force scan of the valid entries.
            let bs = cfg.block_size;
            for r in 0..nb {
                for c in 0..nb {
                    let any = (r * bs..((r + 1) * bs).min(n))
                        .any(|i| (c * bs..((c + 1) * bs).min(n)).any(|j| p.entry_is_valid(seq.sequence, i, j)));
                    prop_assert_eq!(seq.valid.get(r, c), any, "valid block ({}, {})", r, c);
                }
            }
            prop_assert!(seq.heads.iter().any(|h| !h.pruned), "every head pruned");
            for h in &seq.heads {
                prop_assert!(h.kept.is_subset_of(&seq.valid));
                for r in 0..nb {
                    if seq.valid.count_row(r) > 0 {
                        prop_assert!(h.kept.count_row(r) >= 1, "empty block-row {}", r);
                    }
                }
                if h.pruned {
                    prop_assert_eq!(h.counts.frac_macs + h.counts.exps, 0);
                    let off = p.row_offset(seq.sequence, h.head, 0);
                    if cfg.pruned_head_output == PrunedHeadOutput::Zero {
                        prop_assert!(out.output.data()[off..off + n * d].iter().all(|&x| x == 0.0));
                    }
                }
            }
            // Integer pass covers exactly the valid blocks' extents.
            let ext = |x: usize| cfg.block_size.min(n - x * cfg.block_size);
            let mut valid_entries = 0;
            for r in 0..nb { for c in 0..nb { if seq.valid.get(r, c) { valid_entries += ext(r) * ext(c); } } }
            prop_assert!(seq.heads.iter().all(|h| h.counts.int_macs == (valid_entries * d) as u64));
            for h in seq.heads.iter().filter(|h| !h.pruned) {
                let mut kept_entries = 0;
                let mut used = vec![false; nb];
                for r in 0..nb {
                    for (c, u) in used.iter_mut().enumerate() {
                        if h.kept.get(r, c) {
                            kept_entries += ext(r) * ext(c);
                            *u = true;
                        }
                    }
                }
                prop_assert_eq!(h.counts.exps, kept_entries as u64);
                // Compensation adds the V sum and one d-vector per query row, and reads
                // every valid V row (docs/trace-format.md).
                let comp = cfg.compensates();
                let extra = if comp { 2 * seq.valid_tokens * d } else { 0 };
                prop_assert_eq!(h.counts.sv_macs, (kept_entries * d + extra) as u64);
                let mut v_rows: usize = (0..nb).filter(|&c| used[c]).map(ext).sum();
                if comp {
                    v_rows = v_rows.max(seq.valid_tokens);
                }
                prop_assert_eq!(h.counts.v_bytes, (v_rows * d * 2) as u64);
            }
        }
        prop_assert_eq!(t.sequences[0].heads.len(), heads);
        let mut trace = hdp_core::Trace::new("test", Default::default());
        trace.layers.push(t.clone());
        prop_assert!(trace.validate().is_ok());
        let json = serde_json::to_string(&trace).unwrap();
        let back: hdp_core::Trace = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, trace);
    }

    /// Kept sets are nested: a larger rho keeps a subset, a larger keep a superset.
    #[test]
    fn kept_blocks_are_monotone_in_rho_and_keep(p in problem_strategy(), bs in 1usize..=5, a in 0.0f64..=1.0, b in 0.0f64..=1.0) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let run = |threshold| hdp::attention(&p, &(HdpConfig { block_size: bs, threshold, ..HdpConfig::default() }).validated().unwrap(), 0).unwrap().trace;
        let (t_lo, t_hi) = (run(RowThreshold::MeanMax { rho: lo }), run(RowThreshold::MeanMax { rho: hi }));
        let (k_lo, k_hi) = (run(RowThreshold::TopK { keep: lo.max(0.01), min: 1 }), run(RowThreshold::TopK { keep: hi.max(0.01), min: 1 }));
        for (s_lo, s_hi) in t_lo.sequences.iter().zip(&t_hi.sequences) {
            for (h_lo, h_hi) in s_lo.heads.iter().zip(&s_hi.heads) {
                prop_assert!(h_hi.kept.is_subset_of(&h_lo.kept));
            }
        }
        for (s_lo, s_hi) in k_lo.sequences.iter().zip(&k_hi.sequences) {
            for (h_lo, h_hi) in s_lo.heads.iter().zip(&s_hi.heads) {
                prop_assert!(h_lo.kept.is_subset_of(&h_hi.kept));
            }
        }
    }

    /// Masked entries never receive probability: changing V at padded tokens, or at future
    /// tokens under a causal mask, leaves every valid output row unchanged; padded rows are 0.
    #[test]
    fn masked_entries_get_zero_probability(p in problem_strategy(), cfg in config_strategy(), row in 0usize..23) {
        let s = p.q().shape().to_vec();
        let (batch, heads, n, d) = (s[0], s[1], s[2], s[3]);
        let row = row % n;
        let mut v = p.v().data().to_vec();
        for b in 0..batch {
            for h in 0..heads {
                for j in 0..n {
                    let masked_for_row = !p.entry_is_valid(b, row, j);
                    if masked_for_row {
                        for x in &mut v[p.row_offset(b, h, j)..][..d] { *x += 1000.0; }
                    }
                }
            }
        }
        let p2 = AttentionProblem::new(p.q().clone(), p.k().clone(), Tensor::new(s.clone(), v).unwrap(), p.token_valid().map(<[bool]>::to_vec), p.causal()).unwrap();
        let cfg = HdpConfig { pruned_head_output: PrunedHeadOutput::Zero, ..cfg };
        let base_zero = hdp::attention(&p, &cfg.validated().unwrap(), 0).unwrap().output;
        let other = hdp::attention(&p2, &cfg.validated().unwrap(), 0).unwrap().output;
        for b in 0..batch {
            for h in 0..heads {
                let off = p.row_offset(b, h, row);
                let (x, y) = (&base_zero.data()[off..off + d], &other.data()[off..off + d]);
                prop_assert_eq!(x, y);
                if !p.token_is_valid(b, row) {
                    prop_assert!(x.iter().all(|&z| z == 0.0));
                }
            }
        }
    }

    /// The pruning decisions come from integers only: the score mode never changes them.
    #[test]
    fn decisions_do_not_depend_on_score_mode(p in problem_strategy(), cfg in config_strategy()) {
        let run = |score_mode| hdp::attention(&p, &(HdpConfig { score_mode, ..cfg }).validated().unwrap(), 0).unwrap().trace;
        let (a, e, f) = (run(ScoreMode::Approx), run(ScoreMode::Exact), run(ScoreMode::Float));
        for ((sa, se), sf) in a.sequences.iter().zip(&e.sequences).zip(&f.sequences) {
            for ((ha, he), hf) in sa.heads.iter().zip(&se.heads).zip(&sf.heads) {
                prop_assert_eq!(&ha.kept, &he.kept);
                prop_assert_eq!(&ha.kept, &hf.kept);
                prop_assert_eq!(ha.pruned, he.pruned);
                prop_assert_eq!(ha.pruned, hf.pruned);
            }
        }
    }

    /// bf16 P.V operands change neither the decisions nor the trace, and move the output by
    /// at most the rounding of P and V ([`BF16_VS_F32_PER_V`] of `max |V|`).
    #[test]
    fn bf16_pv_only_rounds_the_output(p in problem_strategy(), cfg in config_strategy()) {
        let run = |pv| hdp::attention(&p, &(HdpConfig { pv, ..cfg }).validated().unwrap(), 0).unwrap();
        let (f, b) = (run(PvPrecision::F32), run(PvPrecision::Bf16));
        prop_assert_eq!(&f.trace, &b.trace);
        let vmax = p.v().data().iter().fold(0f32, |m, x| m.max(x.abs()));
        let e = f.output.max_abs_diff(&b.output);
        prop_assert!(e <= BF16_VS_F32_PER_V * vmax + 1e-6, "err {} vs max |V| {}", e, vmax);
    }
}

/// The bf16 option really rounds: on a problem whose values are not bf16 numbers, outputs
/// differ from f32's (a test of the test above).
#[test]
fn bf16_pv_is_not_a_no_op() {
    let p = generate(&SyntheticSpec {
        batch: 1,
        heads: 2,
        seq_len: 64,
        head_dim: 16,
        valid_len: None,
        causal: false,
        seed: 5,
    })
    .unwrap();
    let run = |pv| {
        hdp::attention(
            &p,
            &HdpConfig {
                pv,
                ..HdpConfig::default()
            }
            .validated()
            .unwrap(),
            0,
        )
        .unwrap()
        .output
    };
    let e = run(PvPrecision::F32).max_abs_diff(&run(PvPrecision::Bf16));
    assert!(e > 1e-5, "bf16 output equals f32 output (max diff {e})");
}

#[test]
fn approximation_differs_from_exact_only_by_the_frac_frac_term() {
    let p = generate(&SyntheticSpec {
        batch: 1,
        heads: 2,
        seq_len: 16,
        head_dim: 8,
        valid_len: None,
        causal: false,
        seed: 3,
    })
    .unwrap();
    let cfg = HdpConfig {
        score_mode: ScoreMode::Approx,
        ..HdpConfig::default()
    }
    .no_pruning();
    let approx = hdp::attention(&p, &cfg.validated().unwrap(), 0)
        .unwrap()
        .output;
    let exact = hdp::attention(
        &p,
        &HdpConfig {
            score_mode: ScoreMode::Exact,
            ..cfg
        }
        .validated()
        .unwrap(),
        0,
    )
    .unwrap()
    .output;
    let dense = dense::attention(&p).unwrap();
    let (ea, ee) = (
        approx.rel_l2_err(&dense).unwrap(),
        exact.rel_l2_err(&dense).unwrap(),
    );
    assert!(ea > 0.0 && ee > 0.0 && ea != ee, "approx {ea} exact {ee}");
    assert!(
        ea < hdp_core::tolerance::HDP8_NO_PRUNE_REL,
        "approx rel err {ea}"
    );
}

#[test]
fn mean_v_pruned_heads_output_the_mean_of_values() {
    let p = generate(&SyntheticSpec {
        batch: 1,
        heads: 4,
        seq_len: 10,
        head_dim: 4,
        valid_len: Some(8),
        causal: false,
        seed: 11,
    })
    .unwrap();
    let cfg = HdpConfig {
        head_pruning: HeadPruning::TopK { heads: 1 },
        pruned_head_output: PrunedHeadOutput::MeanV,
        ..HdpConfig::default()
    };
    let out = hdp::attention(&p, &cfg.validated().unwrap(), 0).unwrap();
    let seq = &out.trace.sequences[0];
    assert_eq!(seq.heads.iter().filter(|h| h.pruned).count(), 3);
    for h in seq.heads.iter().filter(|h| h.pruned) {
        for m in 0..4 {
            let mean: f64 = (0..8)
                .map(|j| p.v().data()[p.row_offset(0, h.head, j) + m] as f64)
                .sum::<f64>()
                / 8.0;
            let got = out.output.data()[p.row_offset(0, h.head, 0) + m] as f64;
            assert!((got - mean).abs() < 1e-5);
            assert_eq!(
                out.output.data()[p.row_offset(0, h.head, 9) + m],
                0.0,
                "padded row"
            );
        }
        assert!(h.counts.v_bytes > 0);
    }
}

#[test]
fn pruning_saves_work_on_structured_input() {
    let p = generate(&SyntheticSpec {
        batch: 1,
        heads: 4,
        seq_len: 64,
        head_dim: 16,
        valid_len: None,
        causal: false,
        seed: 5,
    })
    .unwrap();
    let out = hdp::attention(&p, &(HdpConfig::default()).validated().unwrap(), 0).unwrap();
    let mut trace = hdp_core::Trace::new("t", Default::default());
    trace.layers.push(out.trace);
    let s = trace.summary();
    assert!(
        s.block_sparsity() > 0.3 && s.block_sparsity() < 0.95,
        "{}",
        s.block_sparsity()
    );
    assert!(s.counts.frac_macs < 2 * s.counts.int_macs);
}
