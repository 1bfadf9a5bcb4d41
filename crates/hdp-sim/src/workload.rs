//! Workloads: what attention has to compute, separate from the hardware. Built from an HDP
//! trace (real sparsity from real inputs) or synthetically from a model shape and sparsity.

use crate::{Error, Result};
use hdp_core::{BlockMask, Trace};

/// One block-row of one head: entries (query x key pairs) at block granularity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowWork {
    /// Query rows in this block-row (b, or fewer at a ragged edge).
    pub rows: u64,
    /// Entries of the valid blocks (what the integer pass and a dense engine compute).
    pub valid_entries: u64,
    /// Valid blocks (what the pruning unit accumulates and compares).
    pub valid_blocks: u64,
    /// Entries of the kept blocks (what the fraction engine, softmax and S.V compute).
    pub kept_entries: u64,
    /// Kept blocks (a top-k row that keeps every valid block needs no search).
    pub kept_blocks: u64,
}

/// How a layer's block-rows were selected, which decides the pruning unit's passes over a
/// block-row's importances (see [`crate::sim`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Selection {
    /// A threshold from the row's max and mean (mean-max) or none (keep-all): the max and sum
    /// accumulate while the integer scores stream in; one pass compares and emits.
    #[default]
    Threshold,
    /// Top-k: a digit-serial search for the k-th largest importance, then the emitting pass;
    /// what the RTL implements.
    TopK,
    /// Top-p: top-k's search with probability-weighted counts, after one pass that sums the
    /// row's estimated probabilities (modelled; not in the RTL).
    TopP,
}

impl Selection {
    /// The selection a row threshold implies.
    pub fn of(t: &hdp_core::RowThreshold) -> Selection {
        match t {
            hdp_core::RowThreshold::TopK { .. } => Selection::TopK,
            hdp_core::RowThreshold::TopP { .. } => Selection::TopP,
            _ => Selection::Threshold,
        }
    }
}

/// One head of one sequence of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadWork {
    /// Removed by early head pruning.
    pub pruned: bool,
    /// Block-rows.
    pub rows: Vec<RowWork>,
    /// Tokens whose V rows are read: those a kept block uses (every valid one under
    /// compensation, which sums V over all valid keys).
    pub v_rows_kept: u64,
}

/// One layer applied to one sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWork {
    /// Tokens (N), valid ones only for traffic.
    pub valid_tokens: u64,
    /// Head dimension d.
    pub head_dim: u64,
    /// Q/K code width, bits.
    pub qk_bits: u64,
    /// The integer pass ranked with the centred estimate `(2 Q_int + 1).(2 K_int + 1)`: one
    /// more bit per integer-engine operand.
    pub centred: bool,
    /// Pruned-mass compensation (hdp.md step 7's option): the V sum over valid keys and one
    /// d-vector per query row in S.V, every valid V row read.
    pub compensate: bool,
    /// Whether early head pruning was in use (its decision is a barrier between the integer
    /// pass of all heads and any fractional work; without it the two stream together).
    pub head_pruning: bool,
    /// How block-rows were selected.
    pub selection: Selection,
    /// Block size b (the importances the pruning unit searches sum b x b integer scores).
    pub block_size: u64,
    /// Heads.
    pub heads: Vec<HeadWork>,
}

/// A whole workload: layer-sequence pairs run one after another.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    /// In execution order.
    pub layers: Vec<LayerWork>,
}

fn row_work(valid: &BlockMask, kept: &BlockMask, r: usize, n: usize, bs: usize) -> RowWork {
    let ext = |x: usize| bs.min(n - x * bs) as u64;
    let mut w = RowWork {
        rows: ext(r),
        ..RowWork::default()
    };
    for c in 0..valid.cols() {
        if valid.get(r, c) {
            w.valid_entries += ext(r) * ext(c);
            w.valid_blocks += 1;
            if kept.get(r, c) {
                w.kept_entries += ext(r) * ext(c);
                w.kept_blocks += 1;
            }
        }
    }
    w
}

impl Workload {
    /// From a trace (`hdp attention --trace`, `hdp eval --trace`).
    pub fn from_trace(t: &Trace) -> Workload {
        let policy_on = t.config.head_pruning != hdp_core::HeadPruning::Off;
        let compensate = t.config.compensates();
        let mut layers = Vec::new();
        for l in &t.layers {
            let (n, bs) = (l.seq_len, l.block_size);
            for s in &l.sequences {
                let heads = s
                    .heads
                    .iter()
                    .map(|h| {
                        let mut used = vec![false; s.valid.cols()];
                        for r in 0..h.kept.rows() {
                            for (c, u) in used.iter_mut().enumerate() {
                                *u |= h.kept.get(r, c);
                            }
                        }
                        HeadWork {
                            pruned: h.pruned,
                            rows: (0..s.valid.rows())
                                .map(|r| row_work(&s.valid, &h.kept, r, n, bs))
                                .collect(),
                            v_rows_kept: (0..used.len())
                                .filter(|&c| used[c])
                                .map(|c| bs.min(n - c * bs) as u64)
                                .sum::<u64>()
                                .max(if compensate { s.valid_tokens as u64 } else { 0 }),
                        }
                    })
                    .collect();
                layers.push(LayerWork {
                    head_pruning: policy_on || s.heads.iter().any(|h| h.pruned),
                    selection: Selection::of(l.threshold.as_ref().unwrap_or(&t.config.threshold)),
                    block_size: bs as u64,
                    valid_tokens: s.valid_tokens as u64,
                    head_dim: l.head_dim as u64,
                    qk_bits: l.q_format.bits as u64,
                    centred: t.config.centred,
                    compensate,
                    heads,
                });
            }
        }
        Workload { layers }
    }

    /// A model shape with uniform sparsity: every block-row keeps
    /// `round((1 - block_sparsity) * blocks)` blocks (at least one, the diagonal first, then its
    /// neighbours), chosen by top-k (the default policy), and the first
    /// `round(head_sparsity * heads)` heads of each layer are pruned. No padding, no causal
    /// mask.
    pub fn synthetic(
        shape: &ModelShape,
        seq_len: usize,
        block_size: usize,
        block_sparsity: f64,
        head_sparsity: f64,
    ) -> Result<Workload> {
        if seq_len == 0 || block_size == 0 {
            return Err(Error::Invalid(
                "--seq-len and --block-size must be at least 1".into(),
            ));
        }
        for (name, v) in [
            ("block sparsity", block_sparsity),
            ("head sparsity", head_sparsity),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::Invalid(format!("{name} {v} is outside [0, 1]")));
            }
        }
        let nb = seq_len.div_ceil(block_size);
        // The model is walked block by block: bound that work (and its per-row records).
        hdp_core::budget::check_elements(
            "simulated blocks (layers x heads x block-rows x blocks)",
            &[shape.layers, shape.heads, nb, nb],
        )?;
        let keep = (((1.0 - block_sparsity) * nb as f64).round() as usize).clamp(1, nb);
        let pruned = ((head_sparsity * shape.heads as f64).round() as usize)
            .min(shape.heads.saturating_sub(1));
        let mut valid = BlockMask::new(nb, nb);
        let mut kept = BlockMask::new(nb, nb);
        for r in 0..nb {
            for c in 0..nb {
                valid.set(r, c, true);
                // Keep the `keep` blocks nearest the diagonal (ties to the left).
                let lo = r.saturating_sub(keep / 2).min(nb - keep);
                kept.set(r, c, c >= lo && c < lo + keep);
            }
        }
        let rows: Vec<RowWork> = (0..nb)
            .map(|r| row_work(&valid, &kept, r, seq_len, block_size))
            .collect();
        let layer = LayerWork {
            head_pruning: head_sparsity > 0.0,
            selection: Selection::TopK,
            block_size: block_size as u64,
            valid_tokens: seq_len as u64,
            head_dim: shape.head_dim as u64,
            qk_bits: 8,
            centred: false,
            compensate: false,
            heads: (0..shape.heads)
                .map(|h| HeadWork {
                    pruned: h < pruned,
                    rows: rows.clone(),
                    v_rows_kept: seq_len as u64,
                })
                .collect(),
        };
        Ok(Workload {
            layers: vec![layer; shape.layers],
        })
    }
}

/// Transformer shape for synthetic workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    /// Layers.
    pub layers: usize,
    /// Heads per layer.
    pub heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

impl ModelShape {
    /// Known shapes: `bert-base` (12 x 12 x 64), `bert-large` (24 x 16 x 64),
    /// `minilm-l6` (6 x 12 x 32, all-MiniLM-L6-v2).
    pub fn named(name: &str) -> Result<ModelShape> {
        Ok(match name {
            "bert-base" => ModelShape {
                layers: 12,
                heads: 12,
                head_dim: 64,
            },
            "bert-large" => ModelShape {
                layers: 24,
                heads: 16,
                head_dim: 64,
            },
            "minilm-l6" => ModelShape {
                layers: 6,
                heads: 12,
                head_dim: 32,
            },
            other => {
                return Err(Error::Invalid(format!(
                    "unknown model shape {other:?}; use bert-base, bert-large or minilm-l6"
                )))
            }
        })
    }
}
