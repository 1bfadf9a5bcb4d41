//! The bit-accurate core model against the reference implementation (same decisions, outputs
//! within the fixed-point datapath's tolerance), against exact arithmetic (exponential,
//! reciprocal) and against the simulator's per-stage cycle model; and the generated RTL table.

use hdp_attention::config::{
    Compensation, HdpConfig, HeadImportance, HeadPruning, RowThreshold, ScoreMode,
};
use hdp_attention::synthetic::{generate, SyntheticSpec};
use hdp_hw::core::{exp_lut, exp_unit, reciprocal, run_head, CoreParams, HeadJob, HeadRun, C_FRAC};
use hdp_hw::driver::attention_layer;
use hdp_hw::vectors::{lut_svh, synthetic_cases};

fn params(d: usize, n_max: usize) -> CoreParams {
    CoreParams {
        d,
        n_max,
        frac_bits: 3,
        int_keys: 8,
        prune_lanes: 16,
        search_bits: 3,
        frac_keys: 2,
        exps: 8,
        sv_keys: 2,
        norm_lanes: 4,
    }
}

fn config(keep: f64, centred: bool, head_pruning: HeadPruning, imp: HeadImportance) -> HdpConfig {
    HdpConfig {
        q_format: hdp_core::QFormat::new(8, 3).unwrap(),
        block_size: 1,
        threshold: RowThreshold::TopK { keep, min: 1 },
        score_mode: ScoreMode::Approx,
        compensate: Compensation::Off,
        centred,
        head_pruning,
        head_importance: imp,
        ..HdpConfig::default()
    }
}

/// Worst-case tolerance of the core's outputs against the reference's float softmax over the
/// same kept keys: V's 8-bit codes (half a step of the head's largest |V| / 127), the
/// exponential table (0.14% per weight) and the 8 output fraction bits; measured worst 0.006.
const OUT_TOL_OF_VMAX: f64 = 0.01;

#[test]
fn decisions_and_outputs_match_the_reference() {
    let (mut checked, mut pruned, mut worst) = (0, 0, 0f64);
    for (seed, (batch, valid_len, causal, keep, centred, pruning, imp)) in [
        (
            1,
            None,
            false,
            0.3,
            false,
            HeadPruning::Off,
            HeadImportance::KeptSum,
        ),
        (
            2,
            Some(37),
            false,
            0.1,
            true,
            HeadPruning::Tau { tau: 0.5 },
            HeadImportance::KeptSum,
        ),
        (
            3,
            None,
            true,
            0.5,
            false,
            HeadPruning::TopK { heads: 2 },
            HeadImportance::KeptPosSum,
        ),
        (
            4,
            Some(20),
            true,
            0.3,
            true,
            HeadPruning::Tau { tau: 0.8 },
            HeadImportance::KeptPosSum,
        ),
        (
            5,
            None,
            false,
            1.0,
            false,
            HeadPruning::Off,
            HeadImportance::KeptPosSum,
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (a, b, c, d, e, f, g))| (i as u64 + 7, ((a % 2) + 1, b, c, d, e, f, g)))
    {
        let prob = generate(&SyntheticSpec {
            batch,
            heads: 4,
            seq_len: 48,
            head_dim: 32,
            valid_len,
            causal,
            seed,
        })
        .unwrap();
        let cfg = config(keep, centred, pruning, imp);
        let reference = hdp_attention::hdp::attention(&prob, &cfg.validated().unwrap(), 0).unwrap();
        let hw = attention_layer(&params(32, 64), &prob, &cfg).unwrap();
        for h in &hw.heads {
            let seq = &reference.trace.sequences[h.batch];
            assert_eq!(
                hw.prescales[h.batch],
                (seq.q_prescale_exp, seq.k_prescale_exp)
            );
            let rt = &seq.heads[h.head];
            assert_eq!(h.pruned, rt.pruned, "seed {seed}: head {} decision", h.head);
            assert_eq!(
                h.run.importance as f64, rt.importance,
                "seed {seed}: importance"
            );
            for (r, kept) in h.run.kept.iter().enumerate() {
                let i = h.tokens[r];
                let want: Vec<usize> = (0..rt.kept.cols()).filter(|&c| rt.kept.get(i, c)).collect();
                let got: Vec<usize> = kept.iter().map(|&j| h.tokens[j as usize]).collect();
                assert_eq!(got, want, "seed {seed}: head {} row {i}", h.head);
            }
            // Outputs against the reference's (float softmax over the same kept keys).
            let d = 32;
            let vmax = h.tokens.iter().flat_map(|&i| {
                prob.v().data()[prob.row_offset(h.batch, h.head, i)..][..d]
                    .iter()
                    .map(|x| x.abs())
            });
            let vmax = vmax.fold(0f32, f32::max) as f64;
            for &i in &h.tokens {
                let o = prob.row_offset(h.batch, h.head, i);
                for k in 0..d {
                    let (a, b) = (
                        hw.output.data()[o + k] as f64,
                        reference.output.data()[o + k] as f64,
                    );
                    if !h.pruned {
                        worst = worst.max((a - b).abs() / vmax);
                    }
                    assert!(
                        (a - b).abs() <= OUT_TOL_OF_VMAX * vmax,
                        "seed {seed}: head {} row {i} dim {k}: core {a} vs reference {b} (|V| max {vmax})",
                        h.head
                    );
                }
            }
            checked += 1;
            pruned += h.pruned as usize;
        }
    }
    println!("{checked} heads, {pruned} pruned; worst |core - reference| = {worst:.4} of max |V|");
    assert!(checked >= 20 && pruned > 0 && pruned < checked);
}

#[test]
fn exponential_and_reciprocal_are_what_they_claim() {
    let lut = exp_lut();
    assert_eq!(lut[0], 65536);
    for c in [1u32, 300, 5_000, 90_000, 3_000_000] {
        for x in (0u64..200_000).step_by(97) {
            let exact = 65536.0 * (-(x as f64) * c as f64 / (C_FRAC as f64).exp2()).exp2();
            let got = exp_unit(&lut, x, c) as f64;
            // Table step (2^(1/512) - 1 = 0.14%) plus the table's and the shift's truncation.
            assert!(
                (got - exact).abs() <= 0.0014 * exact + 1.0,
                "x {x} c {c}: {got} vs {exact}"
            );
        }
    }
    for z in (65536u64..(1 << 27))
        .step_by(1_000_003)
        .chain([65536, 65537, (1 << 27) - 1])
    {
        assert_eq!(reciprocal(z), (1u64 << 40) / z);
    }
}

#[test]
fn the_rtl_table_is_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rtl/exp2_lut.svh");
    let file = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        file,
        lut_svh(),
        "regenerate with `hdp hw lut -o rtl/exp2_lut.svh`"
    );
}

/// The simulator's per-stage cycles for the rows `run` decided, one head, as a sum over rows:
/// (int, prune, frac, exp, sv_div, norm) where sv_div is the row's slower of S.V and the divider.
fn simulator_stages(hw: &hdp_sim::HwConfig, job: &HeadJob, run: &HeadRun, d: usize) -> [u64; 6] {
    let (_, e) = hdp_sim::load_preset("edge").unwrap();
    let rows = (0..job.n)
        .map(|i| {
            let (nv, k) = (job.valid_keys(i) as u64, run.kept[i].len() as u64);
            hdp_sim::RowWork {
                rows: 1,
                valid_entries: nv,
                valid_blocks: nv,
                kept_entries: k,
                kept_blocks: k,
            }
        })
        .collect();
    let layer = hdp_sim::LayerWork {
        valid_tokens: job.n as u64,
        head_dim: d as u64,
        qk_bits: 8,
        centred: job.centred,
        compensate: false,
        // The barrier splits each row into its phase-A and phase-B items, as the core runs them.
        head_pruning: true,
        selection: hdp_sim::Selection::TopK,
        block_size: 1,
        heads: vec![hdp_sim::HeadWork {
            pruned: false,
            rows,
            v_rows_kept: job.n as u64,
        }],
    };
    let (names, items) = hdp_sim::stage_cycles(hw, &e, &layer);
    let at = |name: &str| names.iter().position(|n| *n == name).unwrap();
    let (a, b) = items.split_at(job.n);
    let sum = |it: &[Vec<f64>], u: usize| it.iter().map(|c| c[u] as u64).sum::<u64>();
    let sv_div = b
        .iter()
        .map(|c| c[at("sv_engine")].max(c[at("divider")]) as u64)
        .sum();
    [
        sum(a, at("int_engine")),
        sum(a, at("pruning_unit")),
        sum(b, at("frac_engine")),
        sum(b, at("softmax_unit")),
        sv_div,
        sum(b, at("normalizer")),
    ]
}

#[test]
fn stage_cycles_equal_the_simulators() {
    // The simulator charges each block-row ceil(work / rate) per unit; the core's stages take
    // exactly that when the multipliers divide into whole keys (edge and server presets at
    // d = 32 and 64), the pruning unit its digit-serial passes, S.V at least the divider's 41
    // cycles. The core runs its stages one after another, so its cycles are their sum.
    for (preset, d, n_max, seed) in [
        ("edge", 32, 64, 11),
        ("edge", 64, 96, 12),
        ("server", 64, 128, 13),
    ] {
        let (mut hw, _) = hdp_sim::load_preset(preset).unwrap();
        // The presets overlap rows' reciprocals in pipelined dividers; the core runs one row at
        // a time with one iterative divider.
        hw.softmax_unit.dividers = 1;
        hw.softmax_unit.divider_cycles = hdp_hw::core::DIV_CYCLES;
        // The core searches one row at a time.
        hw.pruning_unit.max_row_groups = 1;
        let p = CoreParams::from_preset(&hw, d, n_max, 3);
        for case in synthetic_cases(&p, 12, seed) {
            let run = run_head(&p, &case.job, false).unwrap();
            let c = run.cycles;
            let sim = simulator_stages(&hw, &case.job, &run, d);
            assert_eq!(
                [c.int, c.prune, c.frac, c.exp, c.sv_div, c.norm],
                sim,
                "{preset} d {d}: core (int, prune, frac, exp, sv_div, norm) vs simulator"
            );
            assert_eq!(c.phase_a + c.phase_b, sim.iter().sum::<u64>());
        }
    }
}

#[test]
fn the_simulator_searches_the_cores_score_width() {
    assert_eq!(hdp_sim::sim::SCORE_BITS, hdp_hw::core::SCORE_BITS as u64);
}

#[test]
fn the_digit_search_finds_the_kth_largest_and_the_count_above() {
    // Random offset-binary scores, with many ties (narrow ranges) and the full 18-bit range.
    let mut rng = hdp_hw::vectors::Rng::new(5);
    for trial in 0..400 {
        let n = 1 + (rng.next_u64() % 70) as usize;
        let span = [4u64, 40, 4000, 1 << 18][trial % 4];
        let base = (rng.next_u64() % ((1 << 18) - span + 1)) as i64;
        let u: Vec<i64> = (0..n)
            .map(|_| base + (rng.next_u64() % span) as i64)
            .collect();
        let mut sorted = u.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        for k in 1..=n {
            let t = sorted[k - 1];
            let gt = u.iter().filter(|&&x| x > t).count();
            for r in hdp_hw::core::SEARCH_BITS {
                assert_eq!(
                    hdp_hw::core::digit_search(&u, k, r),
                    (t, gt),
                    "n {n} k {k} R {r} scores {u:?}"
                );
            }
        }
    }
}

#[test]
fn every_search_width_decides_the_same() {
    // The digit width R changes the pruning unit's passes, never its decisions.
    let base = params(32, 64);
    let cases = synthetic_cases(&base, 24, 21);
    let runs: Vec<Vec<HeadRun>> = [1u32, 2, 3, 6]
        .iter()
        .map(|&r| {
            let p = CoreParams {
                search_bits: r,
                ..base
            };
            cases
                .iter()
                .map(|c| run_head(&p, &c.job, c.pruned).unwrap())
                .collect()
        })
        .collect();
    for (r, rs) in [1u32, 2, 3, 6].iter().zip(&runs) {
        for (a, b) in rs.iter().zip(&runs[0]) {
            assert_eq!(a.kept, b.kept, "R = {r}");
            assert_eq!(a.importance, b.importance);
            assert_eq!(a.out, b.out);
        }
    }
    let prune: Vec<u64> = runs
        .iter()
        .map(|rs| rs.iter().map(|r| r.cycles.prune).sum())
        .collect();
    assert!(
        prune.windows(2).all(|w| w[1] < w[0]),
        "passes fall with R: {prune:?}"
    );
    let bad = CoreParams {
        search_bits: 4,
        ..base
    };
    let e = run_head(&bad, &cases[0].job, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("search_bits 4"), "{e}");
}

#[test]
fn bad_jobs_and_parameters_are_clear_errors() {
    let p = params(32, 16);
    let job = HeadJob {
        n: 17,
        causal: false,
        centred: false,
        importance_pos: false,
        c_exp: 1,
        q: vec![0; 17 * 32],
        k: vec![0; 17 * 32],
        v: vec![0; 17 * 32],
        kcount: vec![1; 17],
    };
    let e = run_head(&p, &job, false).unwrap_err().to_string();
    assert!(e.contains("n = 17 outside 1..=16"), "{e}");
    let mut j2 = job.clone();
    j2.n = 4;
    j2.q.truncate(4 * 32);
    j2.k.truncate(4 * 32);
    j2.v.truncate(4 * 32);
    j2.kcount = vec![1, 0, 1, 1];
    let e = run_head(&p, &j2, false).unwrap_err().to_string();
    assert!(e.contains("row 1 keeps 0 of 4"), "{e}");
    let wide = CoreParams { frac_bits: 1, ..p };
    let e = run_head(&wide, &j2, false).unwrap_err().to_string();
    assert!(e.contains("overflows"), "{e}");
    let e = attention_layer(
        &params(32, 64),
        &generate(&SyntheticSpec {
            batch: 1,
            heads: 1,
            seq_len: 8,
            head_dim: 32,
            valid_len: None,
            causal: false,
            seed: 1,
        })
        .unwrap(),
        &HdpConfig {
            block_size: 8,
            ..config(0.3, false, HeadPruning::Off, HeadImportance::KeptSum)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("block sizes above 1"), "{e}");
}
