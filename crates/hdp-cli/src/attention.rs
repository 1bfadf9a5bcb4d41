//! `hdp attention`: dense and HDP reference attention side by side on synthetic or loaded
//! Q/K/V, with a table, JSON, a kept-block heatmap and the trace.

use crate::args::HdpArgs;
use crate::io::load_problem;
use anyhow::{bail, Context, Result};
use clap::Args;
use hdp_attention::synthetic::{generate, SyntheticSpec};
use hdp_attention::{dense, hdp_with_trace};
use hdp_core::{Trace, TraceSummary};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// Flags of `hdp attention`.
#[derive(Args, Debug)]
pub struct AttentionArgs {
    /// Q/K/V from a file: .safetensors (tensors q, k, v as [heads, N, d] or [batch, heads, N, d],
    /// optional mask [batch, N]) or .npy ([3, heads, N, d]). Without it, synthetic inputs.
    #[arg(long)]
    pub qkv: Option<PathBuf>,
    /// Synthetic: tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Synthetic: heads.
    #[arg(long, default_value_t = 12)]
    pub heads: usize,
    /// Synthetic: head dimension.
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    /// Synthetic: sequences.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Synthetic: real tokens per sequence (the rest is padding).
    #[arg(long)]
    pub valid_len: Option<usize>,
    /// Synthetic: PRNG seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Apply a causal mask.
    #[arg(long)]
    pub causal: bool,
    #[command(flatten)]
    pub hdp: HdpArgs,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write a heatmap of kept blocks per head (SVG) for the first sequence.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the trace (JSON, docs/trace-format.md).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Save the Q/K/V used as one .npy array [3, batch, heads, N, d] (reusable with --qkv).
    #[arg(long)]
    pub save_qkv: Option<PathBuf>,
}

/// Largest synthetic problem accepted (batch x heads x N x N score entries); the reference
/// implementation is O(N^2 d) per head and meant for clarity, not scale.
const MAX_ENTRIES: usize = 1 << 28;

/// Errors when batch x heads x N^2 (checked) exceeds [`MAX_ENTRIES`].
fn check_reference_size(batch: usize, heads: usize, n: usize) -> Result<()> {
    let entries = [batch, heads, n, n]
        .iter()
        .try_fold(1usize, |acc, &x| acc.checked_mul(x));
    match entries {
        Some(e) if e <= MAX_ENTRIES => Ok(()),
        _ => bail!(
            "batch x heads x N^2 for batch {batch}, heads {heads}, N {n} exceeds the reference \
             path's budget of {MAX_ENTRIES} score entries (it is quadratic); use a smaller problem"
        ),
    }
}

/// Runs the command.
pub fn run(a: &AttentionArgs) -> Result<()> {
    let cfg = a.hdp.config()?;
    let problem = match &a.qkv {
        Some(path) => load_problem(path, a.causal)?,
        None => {
            if a.seq_len == 0 || a.heads == 0 || a.head_dim == 0 || a.batch == 0 {
                bail!("--seq-len, --heads, --head-dim and --batch must all be at least 1");
            }
            if let Some(l) = a.valid_len {
                if l == 0 || l > a.seq_len {
                    bail!("--valid-len {l} must be in 1..={} (--seq-len)", a.seq_len);
                }
            }
            check_reference_size(a.batch, a.heads, a.seq_len)?;
            generate(&SyntheticSpec {
                batch: a.batch,
                heads: a.heads,
                seq_len: a.seq_len,
                head_dim: a.head_dim,
                valid_len: a.valid_len,
                causal: a.causal,
                seed: a.seed,
            })?
        }
    };
    let dims = problem.dims();
    check_reference_size(dims.batch, dims.heads, dims.seq_len)?;
    if let Some(path) = &a.save_qkv {
        let mut data = problem.q().data().to_vec();
        data.extend_from_slice(problem.k().data());
        data.extend_from_slice(problem.v().data());
        let mut shape = vec![3];
        shape.extend_from_slice(problem.q().shape());
        hdp_core::npy::write(path, &shape, &data)?;
    }

    let t0 = Instant::now();
    let dense_out = dense::attention(&problem)?;
    let dense_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let (hdp_out, trace) = hdp_with_trace(&problem, &cfg)?;
    let hdp_ms = t1.elapsed().as_secs_f64() * 1e3;
    let rel = hdp_out.rel_l2_err(&dense_out)?;
    let s = trace.summary();
    // Dense work at the same (element) granularity: QK^T and P.V over valid entries.
    let valid_entries: u64 = (0..dims.batch)
        .map(|b| {
            (0..dims.seq_len)
                .flat_map(|i| (0..dims.seq_len).map(move |j| (i, j)))
                .filter(|&(i, j)| problem.entry_is_valid(b, i, j))
                .count() as u64
        })
        .sum::<u64>()
        * dims.heads as u64;
    let dense_macs = valid_entries * dims.head_dim as u64;
    let seq0 = &trace.layers[0].sequences[0];
    let saturated = trace.layers[0]
        .sequences
        .iter()
        .map(|s| s.q_saturated + s.k_saturated)
        .sum::<u64>();

    if let Some(path) = &a.trace {
        trace.write(path)?;
    }
    if let Some(path) = &a.plot {
        write_plot(path, &trace)?;
    }
    let input = match &a.qkv {
        Some(p) => json!({"file": p.display().to_string()}),
        None => json!({"synthetic": {"seed": a.seed, "valid_len": a.valid_len}}),
    };
    if a.json {
        let out = json!({
            "input": input,
            "batch": dims.batch, "heads": dims.heads, "seq_len": dims.seq_len, "head_dim": dims.head_dim,
            "causal": problem.causal(),
            "config": cfg,
            "block_sparsity": s.block_sparsity(),
            "effective_block_sparsity": s.effective_block_sparsity(),
            "head_sparsity": s.head_sparsity(),
            "rel_l2_err": rel,
            "valid_blocks": s.valid_blocks, "kept_blocks": s.kept_blocks, "computed_blocks": s.computed_blocks,
            "pruned_heads": s.pruned_heads, "heads_total": s.heads,
            "saturated_values": saturated,
            "q_prescale_exp": seq0.q_prescale_exp, "k_prescale_exp": seq0.k_prescale_exp,
            "counts": s.counts,
            "dense_counts": {"qk_macs": dense_macs, "exps": valid_entries, "sv_macs": dense_macs},
            "reference_ms": {"dense": dense_ms, "hdp": hdp_ms},
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(
            a,
            &dims,
            &s,
            rel,
            dense_macs,
            valid_entries,
            saturated,
            dense_ms,
            hdp_ms,
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn print_table(
    a: &AttentionArgs,
    dims: &hdp_attention::Dims,
    s: &TraceSummary,
    rel: f64,
    dense_macs: u64,
    valid_entries: u64,
    saturated: u64,
    dense_ms: f64,
    hdp_ms: f64,
) -> Result<()> {
    let src = a.qkv.as_ref().map_or_else(
        || format!("synthetic (seed {})", a.seed),
        |p| p.display().to_string(),
    );
    outln!("HDP attention, reference implementation: {src}");
    outln!(
        "  shape: batch {} x heads {} x N {} x d {}{}",
        dims.batch,
        dims.heads,
        dims.seq_len,
        dims.head_dim,
        if a.causal { ", causal" } else { "" }
    );
    let rows: Vec<(&str, String)> = vec![
        (
            "block sparsity (step 4)",
            format!(
                "{:.1}%  ({} of {} valid blocks kept)",
                100.0 * s.block_sparsity(),
                s.kept_blocks,
                s.valid_blocks
            ),
        ),
        (
            "head sparsity",
            format!(
                "{:.1}%  ({} of {} heads pruned)",
                100.0 * s.head_sparsity(),
                s.pruned_heads,
                s.heads
            ),
        ),
        (
            "effective block sparsity",
            format!("{:.1}%", 100.0 * s.effective_block_sparsity()),
        ),
        ("rel L2 error vs dense", format!("{rel:.4e}")),
        ("saturated Q/K values", saturated.to_string()),
        ("integer MACs (Qi.Ki)", fmt_count(s.counts.int_macs)),
        ("fraction MACs (kept)", fmt_count(s.counts.frac_macs)),
        (
            "exps",
            format!(
                "{}  (dense {})",
                fmt_count(s.counts.exps),
                fmt_count(valid_entries)
            ),
        ),
        (
            "S.V MACs",
            format!(
                "{}  (dense {})",
                fmt_count(s.counts.sv_macs),
                fmt_count(dense_macs)
            ),
        ),
        ("dense Q.K MACs (float)", fmt_count(dense_macs)),
        (
            "time, reference code",
            format!(
                "dense {dense_ms:.1} ms, hdp {hdp_ms:.1} ms (plain loops, not the fast kernels)"
            ),
        ),
    ];
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (k, v) in rows {
        outln!("  {k:<w$}  {v}");
    }
    Ok(())
}

fn fmt_count(x: u64) -> String {
    match x {
        x if x >= 1_000_000_000 => format!("{:.2} G", x as f64 / 1e9),
        x if x >= 1_000_000 => format!("{:.2} M", x as f64 / 1e6),
        x if x >= 1_000 => format!("{:.1} k", x as f64 / 1e3),
        x => x.to_string(),
    }
}

/// Heatmap of kept blocks per head of the first sequence of the first layer.
/// Kept-block masks of every head of every layer of the trace's first sequence, one panel per
/// (layer, head), a row of panels per layer.
pub fn write_plot(path: &std::path::Path, trace: &Trace) -> Result<()> {
    let mut panels = Vec::new();
    let mut columns = 4;
    for layer in &trace.layers {
        let Some(seq) = layer.sequences.first() else {
            continue;
        };
        let nb = seq.valid.rows();
        columns = if trace.layers.len() > 1 {
            layer.heads
        } else {
            4
        };
        for h in &seq.heads {
            let mut values = vec![f32::NAN; nb * nb];
            for r in 0..nb {
                for c in 0..nb {
                    if seq.valid.get(r, c) {
                        values[r * nb + c] = if h.kept.get(r, c) { 1.0 } else { 0.0 };
                    }
                }
            }
            let kept = h.kept.count() as f64 / seq.valid.count().max(1) as f64;
            let prefix = if trace.layers.len() > 1 {
                format!("L{} ", layer.layer)
            } else {
                String::new()
            };
            panels.push(hdp_plot::Heatmap {
                title: format!(
                    "{prefix}head {}: {:.0}% kept{}",
                    h.head,
                    100.0 * kept,
                    if h.pruned { ", PRUNED" } else { "" }
                ),
                rows: nb,
                cols: nb,
                values,
            });
        }
    }
    let first = trace.layers.first().context("the trace has no layers")?;
    let svg = hdp_plot::heatmap_grid_svg(
        &format!(
            "Kept blocks per {} (N={}, b={})",
            if trace.layers.len() > 1 { "layer (rows) and head" } else { "head" },
            first.seq_len,
            first.block_size
        ),
        "dark = kept, white = pruned, grey = masked; in each panel rows = query blocks, columns = key blocks",
        &panels,
        columns,
    );
    hdp_core::io::write_bytes_atomic(path, svg.as_bytes())
        .with_context(|| format!("cannot write plot {}", path.display()))
}
