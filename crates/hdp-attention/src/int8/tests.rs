use super::*;
use crate::config::{HeadImportance, RowThreshold};
use crate::hdp::LogitScale;
use proptest::prelude::*;

fn isas() -> Vec<Isa> {
    // Every tier this CPU runs (HDP_ISA does not narrow the tests).
    Isa::available_tiers()
}

fn threshold() -> impl Strategy<Value = RowThreshold> {
    prop_oneof![
        Just(RowThreshold::KeepAll),
        (0.0f64..=1.0).prop_map(|rho| RowThreshold::MeanMax { rho }),
        (0.01f64..=1.0, 1usize..=6).prop_map(|(keep, min)| RowThreshold::TopK { keep, min }),
        (0.01f64..=1.0).prop_map(|mass| RowThreshold::TopP { mass }),
    ]
}

fn head_importance() -> impl Strategy<Value = HeadImportance> {
    prop_oneof![
        Just(HeadImportance::KeptSum),
        Just(HeadImportance::KeptPosSum),
        Just(HeadImportance::AllSum),
        Just(HeadImportance::Peakedness),
        Just(HeadImportance::KeptMass),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The integer tile (every ISA) equals a plain i64 dot product, including operands at
    /// the extremes the i16 runs are sized for.
    #[test]
    fn tile_rows_is_exact(
        groups in 1usize..=40, nblocks in 1usize..=6, extreme in any::<bool>(),
        a_exp in 0u32..=6, seed in any::<u64>(), with_zero in any::<bool>(),
    ) {
        let depth = 4 * groups;
        let a = 1i64 << a_exp;
        let mut rng = hdp_core::rng::SplitMix64::new(seed);
        let mut pick = |lo: i64, hi: i64| lo + (rng.next_u64() % (hi - lo + 1) as u64) as i64;
        let q: Vec<u8> = (0..TR * depth)
            .map(|_| if extreme { (2 * a - 1) as u8 } else { pick(0, 2 * a - 1) as u8 })
            .collect();
        let m = nblocks * 8;
        let keys: Vec<Vec<i8>> = (0..m)
            .map(|_| (0..depth).map(|_| if extreme { -128 } else { pick(-128, 127) as i8 }).collect())
            .collect();
        let mut kpack = Vec::new();
        pack_keys(&mut kpack, keys.iter().map(|k| k.as_slice()), m, depth);
        let mut blocks: Vec<u32> = (0..m.div_ceil(8) as u32).rev().collect();
        if with_zero || blocks.len() % 2 == 1 {
            blocks.push(zero_block(m));
        }
        if blocks.len() % 2 == 1 {
            blocks.push(0);
        }
        let run = i16_run(2 * (2 * a - 1) * 128);
        let cols = blocks.len() * 8;
        for isa in isas() {
            let mut out = vec![0i32; TR * cols];
            crate::kernels::for_isa(isa).tile_rows(&q, depth, depth, &kpack, &blocks, run, &mut out, cols);
            for r in 0..TR {
                for (t, &kb) in blocks.iter().enumerate() {
                    for c in 0..8 {
                        let j = kb as usize * 8 + c;
                        let want: i64 = if j < m {
                            q[r * depth..][..depth].iter().zip(&keys[j]).map(|(&x, &y)| x as i64 * y as i64).sum()
                        } else {
                            0
                        };
                        prop_assert_eq!(out[r * cols + 8 * t + c] as i64, want, "{:?} r {} key {}", isa, r, j);
                    }
                }
            }
        }
    }

    /// One-entry-block rows decided by `decide_b1` update the head exactly as the
    /// reference's `HeadDecider::row` does (kept entries, ties, head importance).
    #[test]
    fn decide_b1_matches_the_reference_rows(
        rows in prop::collection::vec(prop::collection::vec((-20i32..=20, 0u8..10), 0..150), 1..6),
        spread in prop_oneof![Just(1i32), Just(7), Just(100_000)],
        // 1: flat; 3: heavy tails, far from the normal model the top-k search starts from.
        power in 1u32..=3,
        threshold in threshold(), head_importance in head_importance(),
        scale in prop_oneof![Just(1e-3f64), Just(0.05), Just(1.0)],
    ) {
        let n = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let cfg = HdpConfig { threshold, head_importance, block_size: 1, ..HdpConfig::default() };
        for isa in isas() {
            let (mut fast, mut reference) = (HeadDecider::new(n, &cfg, LogitScale::new(scale, true)), HeadDecider::new(n, &cfg, LogitScale::new(scale, false)));
            // One cache across rows of different lengths, as in a causal head.
            let mut cache = RowSearch::default();
            for (r, row) in rows.iter().enumerate().take(n) {
                // Entries with tag 0 are masked.
                let vals: Vec<i32> = row
                    .iter()
                    .map(|&(v, tag)| if tag == 0 { MASKED } else { v.signum() * v.abs().pow(power) * spread })
                    .collect();
                let imp: Vec<Option<i64>> = (0..n)
                    .map(|j| vals.get(j).filter(|&&v| v != MASKED).map(|&v| v as i64))
                    .collect();
                reference.row(r, &imp);
                let mut words = vec![0u64; vals.len().div_ceil(64)];
                // As the integer pass: the masses (compensation, the kept-mass importance) from
                // the decision's own weight sums.
                let tabulated = LogitScale::new(scale, true);
                let mass = fast.wants_mass().then(|| tabulated.mass_weights());
                let stats = decide_b1(isa, isa, &vals, threshold, Moments::of(&vals), &tabulated, fast.kept_sums(), mass, &mut words, &mut cache);
                fast.row_decided(r, &stats, &words);
                if fast.wants_mass() {
                    let m = if stats.w_total == 0 {
                        0.0
                    } else {
                        (stats.w_total - stats.w_kept) as f64 / stats.w_total as f64
                    };
                    fast.set_mass(r, m);
                }
            }
            let (fk, fi, _) = fast.finish();
            let (rk, ri, _) = reference.finish();
            prop_assert_eq!(&fk, &rk, "{:?}", isa);
            prop_assert_eq!(fi.to_bits(), ri.to_bits(), "{:?} importance {} vs {}", isa, fi, ri);
        }
    }

    /// Quantization (every tier) equals `QFormat::quantize_slice` code for code, saturation
    /// counts included: ties at .5, values beyond the range, both signs, tiny values.
    #[test]
    fn quantize_row_matches_quantize_slice(
        xs in prop::collection::vec(prop_oneof![
            -300.0f32..300.0,
            (-2000i32..2000).prop_map(|k| k as f32 / 8.0 + 1.0 / 16.0), // ties after x 8
            Just(0.0f32), Just(-0.0f32), Just(1e-30f32), Just(-3e38f32), Just(3e38f32),
        ], 0..100),
        bits in 4u32..=8, f in 0u32..4, e in -3i32..=3,
    ) {
        let fmt = QFormat::new(bits, f.min(bits - 1)).unwrap();
        let want = fmt.quantize_slice(&xs, e);
        for isa in isas() {
            let mut codes = vec![0i32; xs.len()];
            let s = (2f64).powi(e) as f32;
            let sat = quantize_row(isa, &xs, s, fmt.one() as f32, fmt.min_code(), fmt.max_code(), &mut codes);
            prop_assert_eq!(&codes, &want.codes, "{:?}", isa);
            prop_assert_eq!(sat as usize, want.saturated, "{:?}", isa);
        }
    }

    /// `row_fast` (counting or selection) decides block-rows as `row` does.
    #[test]
    fn row_fast_matches_the_reference_rows(
        rows in prop::collection::vec(prop::collection::vec((-50i64..=50, any::<bool>()), 1..80), 1..5),
        spread in prop_oneof![Just(1i64), Just(3), Just(1_000_000)],
        threshold in threshold(), head_importance in head_importance(),
        scale in prop_oneof![Just(1e-6f64), Just(0.01), Just(0.5)],
    ) {
        let nb = rows.iter().map(|r| r.len()).max().unwrap_or(1);
        let cfg = HdpConfig { threshold, head_importance, block_size: 2, ..HdpConfig::default() };
        let (mut fast, mut reference) = (HeadDecider::new(nb, &cfg, LogitScale::new(scale, true)), HeadDecider::new(nb, &cfg, LogitScale::new(scale, false)));
        let mut scratch = RowScratch::default();
        for (r, row) in rows.iter().enumerate().take(nb) {
            let mut imp = vec![0i64; nb];
            let mut ok = vec![false; nb];
            for (c, &(v, o)) in row.iter().enumerate() {
                imp[c] = v * spread;
                ok[c] = o;
            }
            let opt: Vec<Option<i64>> = (0..nb).map(|c| ok[c].then_some(imp[c])).collect();
            reference.row(r, &opt);
            fast.row_fast(r, &imp, &ok, &mut scratch);
        }
        let (fk, fi, _) = fast.finish();
        let (rk, ri, _) = reference.finish();
        prop_assert_eq!(&fk, &rk);
        prop_assert_eq!(fi.to_bits(), ri.to_bits());
    }
}

#[test]
fn supported_formats() {
    let cfg = |bits, f, score_mode| HdpConfig {
        q_format: QFormat::new(bits, f).unwrap(),
        score_mode,
        ..HdpConfig::default()
    };
    for isa in isas() {
        let vnni = crate::kernels::for_isa(isa).exact_u8;
        assert!(supported(&HdpConfig::default(), 64, isa));
        // A = 64 fits; A = 128 saturates vpmaddubsw's i16 pairs, vpdpbusd takes it.
        assert!(supported(&cfg(8, 1, ScoreMode::Approx), 64, isa));
        assert_eq!(supported(&cfg(8, 0, ScoreMode::Approx), 64, isa), vnni);
        assert!(supported(&cfg(4, 2, ScoreMode::Approx), 64, isa));
        assert!(!supported(&cfg(9, 4, ScoreMode::Approx), 64, isa)); // codes beyond i8
                                                                     // Exact scores on every tier: one u8 x i8 product of `Q + 128` and `K` with
                                                                     // vpdpbusd, two of its nibbles without.
        assert!(supported(&cfg(8, 3, ScoreMode::Exact), 64, isa));
        assert!(!supported(&cfg(8, 3, ScoreMode::Exact), 1024, isa)); // 1024 * 2^14 = 2^24
        assert!(!supported(&cfg(8, 3, ScoreMode::Float), 64, isa));
        assert!(!supported(&cfg(8, 3, ScoreMode::Approx), 1 << 20, isa)); // scores beyond 2^24
    }
}

/// Top-p on long rows (at least `SEARCH_ROW_MAX` entries take the per-gap counting path, the
/// shorter ones the weighted search) and on rows whose values sit in a few groups: the same
/// kept entries and head importance as the reference, every tier, several scales and masses.
#[test]
fn topp_long_rows_and_both_paths_match_the_reference() {
    let mut rng = hdp_core::rng::SplitMix64::new(11);
    for (len, spread) in [
        (5000usize, 40i64),
        (4096, 3),
        (4095, 1000),
        (2000, 7),
        (300, 1),
    ] {
        for scale in [1e-3f64, 0.05, 1.0] {
            for mass in [0.3, 0.9, 0.999] {
                let cfg = HdpConfig {
                    threshold: RowThreshold::TopP { mass },
                    block_size: 1,
                    ..HdpConfig::default()
                };
                for isa in isas() {
                    let mut reference = HeadDecider::new(len, &cfg, LogitScale::new(scale, false));
                    let mut fast = HeadDecider::new(len, &cfg, LogitScale::new(scale, true));
                    let mut cache = RowSearch::default();
                    for r in 0..3 {
                        let vals: Vec<i32> = (0..len)
                            .map(|_| {
                                let x = rng.next_u64();
                                if x.is_multiple_of(17) {
                                    MASKED
                                } else {
                                    ((x >> 8) % 64) as i32 * spread as i32 - 500
                                }
                            })
                            .collect();
                        let imp: Vec<Option<i64>> = vals
                            .iter()
                            .map(|&v| (v != MASKED).then_some(v as i64))
                            .collect();
                        reference.row(r, &imp);
                        let mut words = vec![0u64; len.div_ceil(64)];
                        let tabulated = LogitScale::new(scale, true);
                        let stats = decide_b1(
                            isa,
                            isa,
                            &vals,
                            cfg.threshold,
                            Moments::of(&vals),
                            &tabulated,
                            fast.kept_sums(),
                            Some(tabulated.mass_weights()),
                            &mut words,
                            &mut cache,
                        );
                        fast.row_decided(r, &stats, &words);
                        // Compensation's weights from the same pass: the reference's mass.
                        {
                            let entries = vals
                                .iter()
                                .enumerate()
                                .filter(|x| *x.1 != MASKED)
                                .map(|(j, &v)| (v as i64, words[j / 64] >> (j % 64) & 1 == 1));
                            let want = hdp::pruned_mass(entries, &tabulated);
                            let got = (stats.w_total - stats.w_kept) as f64 / stats.w_total as f64;
                            assert_eq!(got.to_bits(), want.to_bits(), "{isa:?} len {len}");
                        }
                    }
                    let ((fk, fi, _), (rk, ri, _)) = (fast.finish(), reference.finish());
                    assert_eq!(fk, rk, "{isa:?} len {len} scale {scale} mass {mass}");
                    assert_eq!(fi.to_bits(), ri.to_bits());
                }
            }
        }
    }
}

/// The row tail of every tier equals its portable definition bit for bit: ragged lengths,
/// masked entries, ties at the threshold, magnitudes up to the i32 range (the lane sums'
/// widening), thresholds from the masked sentinel to above the maximum, with and without
/// mass weights at scales from tiny to huge; prints which tiers ran.
#[test]
fn every_tier_computes_the_row_tail_of_its_definition() {
    use hdp_core::rng::SplitMix64;
    let mut rng = SplitMix64::new(11);
    let mut ran = Vec::new();
    for isa in isas() {
        for len in [
            1usize, 7, 8, 15, 16, 17, 63, 64, 65, 255, 256, 257, 512, 1000, 4099,
        ] {
            for magnitude in [3i64, 300, 1 << 20, (1 << 24) - 1, 1 << 24, i32::MAX as i64] {
                let vals: Vec<i32> = (0..len)
                    .map(|_| {
                        let x = rng.next_u64();
                        if x.is_multiple_of(13) {
                            MASKED
                        } else {
                            (((x >> 8) % (2 * magnitude as u64 + 1)) as i64 - magnitude) as i32
                        }
                    })
                    .collect();
                let valid = vals.iter().filter(|&&v| v != MASKED);
                let max = valid.clone().copied().max().unwrap_or(MASKED);
                let min = valid.copied().min().unwrap_or(MASKED);
                if max == MASKED {
                    // The tail's precondition: a row with an unmasked entry.
                    continue;
                }
                let bound = (max as i64).abs().max((min as i64).abs());
                let mid = vals[len / 2];
                let sums = [(false, false), (true, false), (false, true), (true, true)];
                for (i, e) in [MASKED, min.saturating_sub(1), mid, max]
                    .into_iter()
                    .enumerate()
                {
                    for scale in [None, Some(1e-6), Some(0.044), Some(0.7), Some(1e4)] {
                        let mass = scale.map(hdp::MassWeights::new);
                        let (sum, pos) = sums[i];
                        let kept = hdp::KeptSums { sum, pos };
                        let wn = len.div_ceil(64);
                        let (mut g1, mut q1) = (vec![!0u64; wn], vec![!0u64; wn]);
                        let (mut g2, mut q2) = (vec![0u64; wn], vec![0u64; wn]);
                        let got = row_tail(isa, &vals, e, max, bound, kept, mass, &mut g1, &mut q1);
                        let want = row_tail_portable(&vals, e, max, kept, mass, &mut g2, &mut q2);
                        let what = format!("{isa:?} len {len} magnitude {magnitude} e {e}");
                        assert_eq!(got, want, "{what} scale {scale:?}");
                        assert_eq!(g1, g2, "{what}: bits of v > e");
                        assert_eq!(q1, q2, "{what}: bits of v == e");
                    }
                }
            }
        }
        ran.push(isa.name());
    }
    println!("row tail tiers tested: {}", ran.join(", "));
}

/// The first pass of every tier equals its portable definition: the finished row bit for
/// bit, the count, extremes and sum exactly, the sum of squares (f32 lanes, any order) within
/// a relative 1e-5; ragged lengths, invalid keys, abs, magnitudes up to the vector bound.
#[test]
fn every_tier_computes_the_first_pass_of_its_definition() {
    use hdp_core::rng::SplitMix64;
    let mut rng = SplitMix64::new(5);
    let mut ran = Vec::new();
    for isa in isas() {
        for len in [1usize, 7, 8, 9, 15, 16, 17, 100, 128, 129, 512, 1031] {
            for magnitude in [5i64, 1 << 12, (1 << 26) - 1] {
                for (abs, with_valid) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    let row: Vec<i32> = (0..len)
                        .map(|_| {
                            ((rng.next_u64() % (magnitude as u64 + 1)) as i64 - magnitude / 2)
                                as i32
                        })
                        .collect();
                    let bias: Vec<i32> = (0..len)
                        .map(|_| {
                            ((rng.next_u64() % (magnitude as u64 + 1)) as i64 - magnitude / 2)
                                as i32
                        })
                        .collect();
                    let valid: Vec<bool> = (0..len)
                        .map(|_| !rng.next_u64().is_multiple_of(5))
                        .collect();
                    let valid = with_valid.then_some(&valid[..]);
                    let (mut a, mut b) = (row.clone(), row.clone());
                    let got = finish_moments(isa, &mut a, &bias, abs, valid, magnitude);
                    let want = finish_moments_portable(&mut b, &bias, abs, valid);
                    let what = format!(
                        "{isa:?} len {len} magnitude {magnitude} abs {abs} valid {with_valid}"
                    );
                    assert_eq!(a, b, "{what}: finished row");
                    assert_eq!(
                        (got.len, got.max, got.min, got.sum),
                        (want.len, want.max, want.min, want.sum),
                        "{what}"
                    );
                    assert!(
                        (got.sum_sq - want.sum_sq).abs() <= 1e-5 * want.sum_sq,
                        "{what}: {} vs {}",
                        got.sum_sq,
                        want.sum_sq
                    );
                }
            }
        }
        ran.push(isa.name());
    }
    println!("first pass tiers tested: {}", ran.join(", "));
}

/// The sparse path's kept indices: every tier lists the set bits in order, on ragged lengths
/// and densities from empty to full, and writes only inside its 8 entries of slack.
#[test]
fn every_tier_lists_the_kept_indices_in_order() {
    use hdp_core::rng::SplitMix64;
    let mut rng = SplitMix64::new(11);
    for isa in isas() {
        for n in [1usize, 7, 63, 64, 65, 130, 512, 515] {
            for density in [0u64, 1, 4, 9, 10] {
                let mut words = vec![0u64; n.div_ceil(64)];
                for j in 0..n {
                    if rng.next_u64() % 10 < density {
                        words[j / 64] |= 1 << (j % 64);
                    }
                }
                let want: Vec<u32> = (0..n as u32)
                    .filter(|&j| words[j as usize / 64] >> (j % 64) & 1 == 1)
                    .collect();
                let mut idx = vec![u32::MAX; n + 8];
                let len = kept_indices(isa, &words, &mut idx);
                assert_eq!(
                    &idx[..len],
                    &want[..],
                    "{} n {n} density {density}",
                    isa.name()
                );
            }
        }
    }
}
