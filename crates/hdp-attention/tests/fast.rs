//! The fast kernels against the references, on every instruction set this CPU has: identical
//! integer decisions (kept blocks, pruned heads, counts) and outputs within a named tolerance.

use hdp_attention::fast::{self, Isa};
use hdp_attention::synthetic::{generate, SyntheticSpec};
use hdp_attention::{
    dense, hdp, BlockImportance, HdpConfig, HeadImportance, HeadPruning, PrunedHeadOutput,
    RowThreshold,
};
use hdp_core::tolerance::{FAST_EXP_REL, FAST_VS_REFERENCE_ABS, FAST_VS_REFERENCE_BF16_PER_V};
use hdp_core::{Compensation, PvPrecision, QFormat, ScoreMode, Tensor};

/// [`FAST_VS_REFERENCE_ABS`], plus the bf16 allowance for `pv = bf16`.
fn tolerance(pv: PvPrecision, v: &Tensor) -> f32 {
    match pv {
        PvPrecision::F32 => FAST_VS_REFERENCE_ABS,
        PvPrecision::Bf16 => {
            let vmax = v.data().iter().fold(0f32, |m, x| m.max(x.abs()));
            FAST_VS_REFERENCE_ABS + FAST_VS_REFERENCE_BF16_PER_V * vmax
        }
    }
}

fn pv_precision() -> impl Strategy<Value = PvPrecision> {
    prop_oneof![Just(PvPrecision::F32), Just(PvPrecision::Bf16)]
}
use proptest::prelude::*;

fn isas() -> Vec<Isa> {
    // Every tier this CPU runs (HDP_ISA does not narrow the tests); printed once.
    let v = Isa::available_tiers();
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let names: Vec<&str> = v.iter().map(|t| t.name()).collect();
        let missing: Vec<&str> = Isa::ALL
            .iter()
            .filter(|t| !t.available())
            .map(|t| t.name())
            .collect();
        eprintln!(
            "kernel tiers tested: {}; not on this CPU (untested here): {}",
            names.join(", "),
            if missing.is_empty() {
                "none".to_string()
            } else {
                missing.join(", ")
            }
        );
    });
    v
}

#[test]
fn fast_exp_is_accurate() {
    let mut x = -87.0f32;
    while x < 88.0 {
        let (a, b) = (fast::fast_exp(x) as f64, (x as f64).exp());
        assert!(((a - b) / b).abs() < FAST_EXP_REL, "x={x}: {a} vs {b}");
        x += 0.0137;
    }
    assert_eq!(fast::fast_exp(0.0), 1.0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn fast_kernels_match_references(
        (batch, heads, n, d) in (1usize..=2, 1usize..=4, 1usize..=40, prop_oneof![Just(1usize), Just(7), Just(8), Just(16), Just(32)]),
        pad in 0usize..4, causal in any::<bool>(), seed in any::<u64>(),
        bs in 1usize..=9,
        threshold in prop_oneof![Just(RowThreshold::KeepAll), (0.0f64..=1.0).prop_map(|rho| RowThreshold::MeanMax { rho }), (0.05f64..=1.0, 1usize..=6).prop_map(|(keep, min)| RowThreshold::TopK { keep, min }), (0.05f64..=1.0).prop_map(|mass| RowThreshold::TopP { mass })],
        importance in prop_oneof![Just(BlockImportance::Sum), Just(BlockImportance::Max), Just(BlockImportance::AbsSum)],
        head_pruning in prop_oneof![Just(HeadPruning::Off), (0.0f64..=1.0).prop_map(|tau| HeadPruning::Tau { tau })],
        score_mode in prop_oneof![Just(ScoreMode::Approx), Just(ScoreMode::Exact), Just(ScoreMode::Float)],
        mean_v in any::<bool>(), f in 2u32..=5, pv in pv_precision(),
        (centred, keep_sink, keep_local) in (any::<bool>(), 0usize..6, prop_oneof![Just(0usize), 1usize..20]),
        compensate in prop_oneof![Just(Compensation::Off), Just(Compensation::MeanV), Just(Compensation::Auto)],
    ) {
        let valid_len = (pad > 0 && n > pad).then(|| n - pad);
        let p = generate(&SyntheticSpec { batch, heads, seq_len: n, head_dim: d, valid_len, causal, seed }).unwrap();
        let cfg = HdpConfig {
            q_format: QFormat::new(8, f).unwrap(), block_size: bs, importance, threshold, head_pruning,
            head_importance: HeadImportance::KeptPosSum, score_mode,
            pruned_head_output: if mean_v { PrunedHeadOutput::MeanV } else { PrunedHeadOutput::Zero },
            pv, centred, keep_sink, keep_local, compensate,
            ..HdpConfig::default()
        };
        let reference = hdp::attention(&p, &cfg.validated().unwrap(), 0).unwrap();
        let dense_ref = dense::attention(&p).unwrap();
        for isa in isas() {
            let got = fast::hdp_attention(&p, &cfg.validated().unwrap(), 0, isa).unwrap();
            prop_assert_eq!(&got.trace, &reference.trace, "{:?}", isa);
            let e = got.output.max_abs_diff(&reference.output);
            prop_assert!(e <= tolerance(pv, p.v()), "{:?} {:?} hdp err {}", isa, pv, e);
            let dense_fast = fast::dense_attention(&p, isa).unwrap();
            let e = dense_fast.max_abs_diff(&dense_ref);
            prop_assert!(e <= FAST_VS_REFERENCE_ABS, "{:?} dense err {}", isa, e);
        }
    }
}

#[test]
fn wide_formats_fall_back_to_the_reference() {
    let p = generate(&SyntheticSpec {
        batch: 1,
        heads: 2,
        seq_len: 12,
        head_dim: 64,
        valid_len: None,
        causal: false,
        seed: 2,
    })
    .unwrap();
    let cfg = HdpConfig {
        q_format: QFormat::new(16, 4).unwrap(),
        ..HdpConfig::default()
    };
    assert!(!fast::f32_exact(&cfg, 64));
    assert!(fast::f32_exact(&HdpConfig::default(), 64));
    let a = fast::hdp_attention(&p, &cfg.validated().unwrap(), 0, Isa::detect()).unwrap();
    let b = hdp::attention(&p, &cfg.validated().unwrap(), 0).unwrap();
    assert_eq!(a.output, b.output);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The int8 kernel (approximated or exact scores, formats of at most 8 bits) on longer,
    /// ragged sequences and every kind of block size: identical traces, outputs within
    /// tolerance. Exact scores run in the int8 kernel on every tier (as two nibble products on
    /// AVX2).
    #[test]
    fn int8_kernel_matches_the_reference(
        (heads, n, d) in (1usize..=3, 1usize..=150, prop_oneof![Just(4usize), Just(12), Just(32), Just(48), Just(64)]),
        pad in 0usize..20, causal in any::<bool>(), seed in any::<u64>(),
        bs in prop_oneof![Just(1usize), Just(2), Just(5), Just(8), Just(16), Just(24), Just(32)],
        threshold in prop_oneof![Just(RowThreshold::KeepAll), (0.0f64..=1.0).prop_map(|rho| RowThreshold::MeanMax { rho }), (0.05f64..=1.0, 1usize..=6).prop_map(|(keep, min)| RowThreshold::TopK { keep, min }), (0.05f64..=1.0).prop_map(|mass| RowThreshold::TopP { mass })],
        importance in prop_oneof![Just(BlockImportance::Sum), Just(BlockImportance::Max), Just(BlockImportance::AbsSum)],
        head_pruning in prop_oneof![Just(HeadPruning::Off), (0.0f64..=1.0).prop_map(|tau| HeadPruning::Tau { tau })],
        (bits, f) in (4u32..=8).prop_flat_map(|bits| (Just(bits), (bits.saturating_sub(7)).max(1)..bits)),
        score_mode in prop_oneof![Just(ScoreMode::Approx), Just(ScoreMode::Exact)],
        pv in pv_precision(),
        (centred, keep_sink, keep_local) in (any::<bool>(), 0usize..6, prop_oneof![Just(0usize), 1usize..40]),
        compensate in prop_oneof![Just(Compensation::Off), Just(Compensation::MeanV), Just(Compensation::Auto)],
    ) {
        let valid_len = (pad > 0 && n > pad).then(|| n - pad);
        let p = generate(&SyntheticSpec { batch: 2, heads, seq_len: n, head_dim: d, valid_len, causal, seed }).unwrap();
        let cfg = HdpConfig {
            q_format: QFormat::new(bits, f).unwrap(), block_size: bs, importance, threshold, head_pruning,
            score_mode, pv, centred, keep_sink, keep_local, compensate,
            ..HdpConfig::default()
        };
        let reference = hdp::attention(&p, &cfg.validated().unwrap(), 0).unwrap();
        for isa in isas() {
            // Centred operands need one more bit: `2 Q_int + 1 + 2A` must fit u8, and i16
            // pair sums on tiers without vpdpbusd (A <= 32 there).
            let int8 = hdp_attention::int8::supported(&cfg, d, isa);
            if !centred || bits - 1 - f <= 5 {
                prop_assert!(int8, "{:?}", isa);
            }
            let got = fast::hdp_attention(&p, &cfg.validated().unwrap(), 0, isa).unwrap();
            prop_assert_eq!(&got.trace, &reference.trace, "{:?}", isa);
            let e = got.output.max_abs_diff(&reference.output);
            prop_assert!(e <= tolerance(pv, p.v()), "{:?} {:?} hdp err {}", isa, pv, e);
        }
    }
}

/// The sparse kept-entry path (chunks with under 15-25% of entries kept: per-entry scores and a
/// row-by-row P.V) on every tier, at the head dimensions whose SIMD loops differ (16-, 32- and
/// 64-column passes, 32-byte and 64-byte score chunks): identical traces, outputs within
/// tolerance.
#[test]
fn sparse_kept_path_matches_the_reference_on_every_tier() {
    for (d, score_mode, pv) in [16usize, 32, 48, 64, 80].into_iter().flat_map(|d| {
        [
            (d, ScoreMode::Approx, PvPrecision::F32),
            (d, ScoreMode::Exact, PvPrecision::F32),
            (d, ScoreMode::Exact, PvPrecision::Bf16),
        ]
    }) {
        let p = generate(&SyntheticSpec {
            batch: 1,
            heads: 2,
            seq_len: 300,
            head_dim: d,
            valid_len: Some(290),
            causal: false,
            seed: d as u64,
        })
        .unwrap();
        let cfg = HdpConfig {
            threshold: RowThreshold::TopK { keep: 0.1, min: 1 },
            score_mode,
            pv,
            ..HdpConfig::default()
        }
        .validated()
        .unwrap();
        let reference = hdp::attention(&p, &cfg, 0).unwrap();
        for isa in isas() {
            let got = fast::hdp_attention(&p, &cfg, 0, isa).unwrap();
            assert_eq!(got.trace, reference.trace, "{isa:?} d {d} {score_mode:?}");
            let e = got.output.max_abs_diff(&reference.output);
            assert!(
                e <= tolerance(pv, p.v()),
                "{isa:?} d {d} {score_mode:?} {pv:?}: err {e}"
            );
        }
    }
}
