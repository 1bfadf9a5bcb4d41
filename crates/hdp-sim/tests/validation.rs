//! Checks that the cycle model is right where the answer is known (style.md habit 8): analytic
//! formulas in simple cases, bandwidth-bound when bandwidth is tiny, utilization never above 1,
//! monotone trends, boundary sizes, and the cost of a pruned head.

use hdp_sim::{load_preset, simulate, HwConfig, ModelShape, Workload};

const BERT: ModelShape = ModelShape {
    layers: 12,
    heads: 12,
    head_dim: 64,
};

fn unlimited_memory(mut hw: HwConfig) -> HwConfig {
    hw.dram.gb_per_s = 1e9;
    hw.dram.latency_ns = 0.0;
    hw.sram.bytes_per_cycle = 1e12;
    hw
}

#[test]
fn dense_compute_bound_cycles_match_the_analytic_formula() {
    let (hw, e) = load_preset("dense-edge").unwrap();
    let hw = unlimited_memory(hw);
    let (n, d) = (512.0f64, 64.0f64);
    let w = Workload::synthetic(&BERT, 512, 1, 0.0, 0.0).unwrap();
    let r = simulate(&hw, &e, &w);
    // One item per query row: n*d full-precision score MACs, n exps, n*d S.V MACs.
    let score_rate =
        hw.int_engine.multipliers as f64 / 4.0 + hw.frac_engine.multipliers as f64 / 2.0;
    let per_row = [
        (n * d / score_rate).ceil(),
        (n / hw.softmax_unit.exps_per_cycle as f64).ceil(),
        (n * d / hw.sv_engine.multipliers as f64).ceil(),
    ];
    let analytic = 12.0 * 12.0 * n * per_row.iter().cloned().fold(0.0, f64::max);
    let rel = (r.cycles - analytic).abs() / analytic;
    assert!(
        rel < 0.05,
        "simulated {} vs analytic {analytic} ({rel})",
        r.cycles
    );
}

#[test]
fn tiny_bandwidth_makes_it_memory_bound() {
    let (mut hw, e) = load_preset("edge").unwrap();
    hw.dram.gb_per_s = 0.01;
    let w = Workload::synthetic(&BERT, 256, 1, 0.5, 0.0).unwrap();
    let r = simulate(&hw, &e, &w);
    assert!(
        r.memory_bound_cycles / r.cycles > 0.95,
        "{} of {}",
        r.memory_bound_cycles,
        r.cycles
    );
    let pure = r.dram_bytes / hw.dram_bytes_per_cycle();
    assert!(
        (r.cycles - pure).abs() / pure < 0.05,
        "{} vs {pure}",
        r.cycles
    );
}

#[test]
fn utilization_and_efficiency_never_exceed_one() {
    for preset in ["edge", "server", "dense-edge", "dense-server"] {
        let (hw, e) = load_preset(preset).unwrap();
        for &(n, b, s, h) in &[
            (64usize, 1usize, 0.0, 0.0),
            (512, 1, 0.7, 0.2),
            (333, 8, 0.5, 0.5),
            (2048, 16, 0.9, 0.0),
        ] {
            let r = simulate(&hw, &e, &Workload::synthetic(&BERT, n, b, s, h).unwrap());
            assert!(
                r.mac_efficiency <= 1.0 + 1e-9,
                "{preset} {n}: {}",
                r.mac_efficiency
            );
            for u in &r.units {
                assert!(
                    u.utilization <= 1.0 + 1e-9,
                    "{preset} {} {}",
                    u.name,
                    u.utilization
                );
            }
            let sum = r.memory_bound_cycles + r.compute_bound_cycles + r.overhead_cycles;
            assert!((sum - r.cycles).abs() / r.cycles < 1e-9);
        }
    }
}

#[test]
fn cycles_never_increase_with_sparsity() {
    for preset in ["edge", "server"] {
        let (hw, e) = load_preset(preset).unwrap();
        let mut last = f64::INFINITY;
        for k in 0..=19 {
            let s = k as f64 * 0.05;
            let r = simulate(
                &hw,
                &e,
                &Workload::synthetic(&BERT, 512, 4, s, 0.0).unwrap(),
            );
            assert!(
                r.cycles <= last + 1e-6,
                "{preset}: sparsity {s} gives {} > {last}",
                r.cycles
            );
            last = r.cycles;
        }
        let (dense_hw, _) = load_preset(&format!("dense-{preset}")).unwrap();
        let dense = simulate(
            &dense_hw,
            &e,
            &Workload::synthetic(&BERT, 512, 4, 0.7, 0.0).unwrap(),
        );
        let hdpa = simulate(
            &hw,
            &e,
            &Workload::synthetic(&BERT, 512, 4, 0.7, 0.0).unwrap(),
        );
        assert!(
            hdpa.cycles < dense.cycles,
            "{preset}: HDPA {} vs dense {}",
            hdpa.cycles,
            dense.cycles
        );
    }
}

#[test]
fn boundary_sizes_around_the_block_size() {
    let (hw, e) = load_preset("edge").unwrap();
    let b = 8;
    let c: Vec<f64> = [b - 1, b, b + 1]
        .iter()
        .map(|&n| {
            simulate(
                &hw,
                &e,
                &Workload::synthetic(&BERT, n, b, 0.0, 0.0).unwrap(),
            )
            .cycles
        })
        .collect();
    assert!(c[0] > 0.0 && c[0] <= c[1] && c[1] < c[2], "{c:?}");
    let w = Workload::synthetic(&BERT, b + 1, b, 0.0, 0.0).unwrap();
    assert_eq!(w.layers[0].heads[0].rows.len(), 2);
    assert_eq!(w.layers[0].heads[0].rows[1].valid_entries, (b + 1) as u64);
}

#[test]
fn a_pruned_head_costs_only_its_integer_pass() {
    let (hw, e) = load_preset("edge").unwrap();
    let shape = ModelShape {
        layers: 1,
        heads: 4,
        head_dim: 64,
    };
    let pruned = Workload::synthetic(&shape, 256, 1, 0.5, 0.25).unwrap();
    assert!(pruned.layers[0].head_pruning && pruned.layers[0].heads[0].pruned);
    // The same workload with head pruning in use but no head pruned.
    let mut kept = pruned.clone();
    kept.layers[0].heads[0].pruned = false;
    let (none, one) = (simulate(&hw, &e, &kept), simulate(&hw, &e, &pruned));
    let busy = |r: &hdp_sim::Report, name: &str| {
        r.units.iter().find(|u| u.name == name).unwrap().busy_cycles
    };
    assert_eq!(busy(&none, "int_engine"), busy(&one, "int_engine"));
    assert_eq!(busy(&none, "pruning_unit"), busy(&one, "pruning_unit"));
    for unit in ["frac_engine", "softmax_unit", "sv_engine"] {
        let (a, b) = (busy(&none, unit), busy(&one, unit));
        assert!((b - 0.75 * a).abs() < 1e-6, "{unit}: {b} vs 3/4 of {a}");
    }
    assert!(one.cycles < none.cycles);
    // Without head pruning in the workload there is no barrier: integer and fractional work
    // stream together, so the same sparsity runs faster.
    let streaming = simulate(
        &hw,
        &e,
        &Workload::synthetic(&shape, 256, 1, 0.5, 0.0).unwrap(),
    );
    assert!(streaming.cycles < none.cycles);
}

#[test]
fn trace_workloads_carry_the_trace_counts() {
    use hdp_attention::synthetic::{generate, SyntheticSpec};
    let p = generate(&SyntheticSpec {
        batch: 2,
        heads: 3,
        seq_len: 37,
        head_dim: 16,
        valid_len: Some(30),
        causal: true,
        seed: 4,
    })
    .unwrap();
    let cfg = hdp_attention::HdpConfig {
        block_size: 4,
        head_pruning: hdp_attention::HeadPruning::Tau { tau: 0.6 },
        ..Default::default()
    };
    let (_, trace) = hdp_attention::hdp_with_trace(&p, &cfg.validated().unwrap()).unwrap();
    let w = Workload::from_trace(&trace);
    assert_eq!(w.layers.len(), 2);
    for (l, s) in w.layers.iter().zip(&trace.layers[0].sequences) {
        for (hw, ht) in l.heads.iter().zip(&s.heads) {
            let valid: u64 = hw.rows.iter().map(|r| r.valid_entries).sum();
            assert_eq!(valid * 16, ht.counts.int_macs);
            if !ht.pruned {
                assert_eq!(
                    hw.rows.iter().map(|r| r.kept_entries).sum::<u64>(),
                    ht.counts.exps
                );
                assert_eq!(hw.v_rows_kept * 16 * 2, ht.counts.v_bytes);
            }
        }
    }
    let (hw, e) = load_preset("edge").unwrap();
    assert!(simulate(&hw, &e, &w).cycles > 0.0);
}

#[test]
fn the_centred_estimate_costs_integer_engine_energy_and_area_not_cycles() {
    let (hw, e) = load_preset("edge").unwrap();
    let plain = Workload::synthetic(&BERT, 256, 1, 0.7, 0.0).unwrap();
    let mut centred = plain.clone();
    for l in &mut centred.layers {
        l.centred = true;
    }
    let (a, b) = (simulate(&hw, &e, &plain), simulate(&hw, &e, &centred));
    assert_eq!(a.cycles, b.cycles);
    let unit = |r: &hdp_sim::Report| {
        r.units
            .iter()
            .find(|u| u.name == "int_engine")
            .unwrap()
            .energy_pj
    };
    let ratio = unit(&b) / unit(&a);
    assert!(
        (ratio - hdp_sim::CENTRED_INT_MAC_COST).abs() < 1e-12,
        "{ratio}"
    );
    let extra = hw.int_engine.multipliers as f64
        * e.int_mac_um2
        * (hdp_sim::CENTRED_INT_MAC_COST - 1.0)
        * 1e-6;
    assert!((b.area_mm2 - a.area_mm2 - extra).abs() < 1e-12);
    // The dense accelerator has no integer pass: nothing changes.
    let (dh, de) = load_preset("dense-edge").unwrap();
    assert_eq!(
        simulate(&dh, &de, &plain).energy_uj,
        simulate(&dh, &de, &centred).energy_uj
    );
}

/// The pruning unit's passes follow the selection policy as the RTL runs it (top-k: a search
/// of 18 / R digits then the emitting pass), rows that keep everything cost one pass, and a
/// search width that does not divide the score is refused.
#[test]
fn pruning_passes_follow_the_policy() {
    use hdp_sim::{prune_passes, Selection};
    let (mut hw, _) = load_preset("edge").unwrap();
    assert_eq!(hw.pruning_unit.search_bits_per_pass, 3);
    assert_eq!(prune_passes(&hw, Selection::TopK, 1, 100, 30), 7);
    assert_eq!(prune_passes(&hw, Selection::TopK, 1, 100, 100), 1);
    assert_eq!(prune_passes(&hw, Selection::TopP, 1, 100, 30), 8);
    assert_eq!(prune_passes(&hw, Selection::Threshold, 1, 100, 30), 1);
    // b = 16: block sums of 256 scores need 8 more bits: ceil(26 / 3) + 1.
    assert_eq!(prune_passes(&hw, Selection::TopK, 16, 100, 30), 10);
    hw.pruning_unit.search_bits_per_pass = 1;
    assert_eq!(prune_passes(&hw, Selection::TopK, 1, 100, 30), 19);
    hw.pruning_unit.search_bits_per_pass = 4;
    let e = hw.validate().unwrap_err();
    assert!(e.contains("search_bits_per_pass"), "{e}");
    // More lanes never cost cycles; a policy with more passes never saves any.
    let w = Workload::synthetic(&BERT, 256, 1, 0.7, 0.0).unwrap();
    let (hw, e) = load_preset("edge").unwrap();
    let mut narrow = hw.clone();
    narrow.pruning_unit.blocks_per_cycle = 16;
    assert!(simulate(&narrow, &e, &w).cycles >= simulate(&hw, &e, &w).cycles);
    let mut mean_max = w.clone();
    for l in &mut mean_max.layers {
        l.selection = Selection::Threshold;
    }
    assert!(simulate(&hw, &e, &mean_max).cycles <= simulate(&hw, &e, &w).cycles);
    // Short rows share the lanes: 32-token rows on 64 lanes search two at a time.
    let short = Workload::synthetic(&BERT, 32, 1, 0.7, 0.0).unwrap();
    let mut one_row = hw.clone();
    one_row.pruning_unit.max_row_groups = 1;
    let busy = |hw: &HwConfig| {
        let r = simulate(hw, &e, &short);
        r.units
            .iter()
            .find(|u| u.name == "pruning_unit")
            .unwrap()
            .busy_cycles
    };
    assert_eq!(busy(&one_row), 2.0 * busy(&hw));
}
