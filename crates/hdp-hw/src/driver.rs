//! The host side of the core: quantizes a layer's Q, K, V as the reference does (the same
//! pre-scales, so the decisions are the same), loads each head's valid tokens, computes the
//! per-row keep counts and the exponent scale, runs the core model, decides the heads from the
//! layer's importances (hdp.md step 5) and dequantizes the outputs.

use crate::core::{run_head, CoreParams, HeadJob, HeadRun, HwError, Result, C_FRAC, OUT_FRAC};
use hdp_attention::config::{
    BlockImportance, Compensation, HdpConfig, HeadImportance, HeadPruning, Prescale,
    PrunedHeadOutput, RowThreshold,
};
use hdp_attention::hdp::{prune_heads, topk_count};
use hdp_attention::AttentionProblem;
use hdp_core::{QFormat, Tensor};

/// One head of one sequence as the core ran it.
#[derive(Clone, Debug)]
pub struct HeadResult {
    /// Sequence.
    pub batch: usize,
    /// Head.
    pub head: usize,
    /// Whether the layer's head decision pruned it.
    pub pruned: bool,
    /// The job the host loaded (codes, counts, scale).
    pub job: HeadJob,
    /// What the core produced.
    pub run: HeadRun,
    /// Valid token positions of the sequence (row `r` of the core is token `tokens[r]`).
    pub tokens: Vec<usize>,
}

/// A layer run on the hardware datapath.
#[derive(Clone, Debug)]
pub struct LayerRun {
    /// Output, dequantized, shape of Q (zero at padded rows and pruned heads).
    pub output: Tensor,
    /// Every head of every sequence.
    pub heads: Vec<HeadResult>,
    /// Q and K pre-scale exponents per sequence.
    pub prescales: Vec<(i32, i32)>,
}

/// The configuration the user's options describe on the core: as [`hdp_core::HdpOptions::config`],
/// except that compensation, which the core lacks, defaults to off; checked by [`check_config`].
pub fn hw_config(opts: &hdp_core::HdpOptions) -> Result<hdp_core::ValidConfig> {
    let mut opts = opts.clone();
    if opts.compensate.is_none() {
        opts.compensate = Some(hdp_attention::config::Compensation::Off);
    }
    let cfg = opts.config()?;
    check_config(cfg.get())?;
    Ok(cfg)
}

/// What the core supports of an [`HdpConfig`]; anything else is a clear error.
pub fn check_config(cfg: &HdpConfig) -> Result<(f64, usize)> {
    let bad = |what: &str| {
        Err(HwError::Invalid(format!(
            "the HDPA core does not implement {what}; it runs block size 1, top-k, \
             8-bit codes, no sink/local band, no compensation, head pruning by tau or top-k \
             over kept (positive) sums with zero output (e.g. `-b 1 --keep 0.3 --compensate off`)"
        )))
    };
    if cfg.block_size != 1 {
        return bad("block sizes above 1");
    }
    if cfg.q_format.bits != 8 || !(1..=6).contains(&cfg.q_format.frac_bits) {
        return bad("Q/K formats other than 8 bits with 1..=6 fraction bits");
    }
    if cfg.keep_sink != 0 || cfg.keep_local != 0 {
        return bad("forced sink or local-band keys");
    }
    if cfg.compensates() {
        return bad("pruned-mass compensation");
    }
    if !matches!(cfg.importance, BlockImportance::Sum | BlockImportance::Max) {
        return bad("abs-sum block importance");
    }
    if cfg.head_pruning != HeadPruning::Off
        && (!matches!(
            cfg.head_importance,
            HeadImportance::KeptSum | HeadImportance::KeptPosSum
        ) || cfg.pruned_head_output != PrunedHeadOutput::Zero)
    {
        return bad(
            "head importances other than kept-sum/kept-pos-sum, or a mean-V pruned-head output",
        );
    }
    match cfg.threshold {
        RowThreshold::TopK { keep, min } => Ok((keep, min)),
        _ => bad("row thresholds other than top-k"),
    }
}

fn max_abs(t: &Tensor, prob: &AttentionProblem, b: usize, heads: std::ops::Range<usize>) -> f32 {
    let (n, d) = (prob.dims().seq_len, prob.dims().head_dim);
    let mut m = 0f32;
    for h in heads {
        for i in (0..n).filter(|&i| prob.token_is_valid(b, i)) {
            for &x in &t.data()[prob.row_offset(b, h, i)..][..d] {
                m = m.max(x.abs());
            }
        }
    }
    m
}

/// The exponent scale `C = log2(e) / (2^(f + e_q + e_k) sqrt d)` in 12.20 fixed point.
pub fn exponent_scale(f: u32, eq: i32, ek: i32, d: usize) -> Result<u32> {
    let c = (C_FRAC as f64).exp2() * std::f64::consts::LOG2_E
        / ((f as i32 + eq + ek) as f64).exp2()
        / (d as f64).sqrt();
    let r = c.round();
    if !(0.0..=u32::MAX as f64).contains(&r) {
        return Err(HwError::Invalid(format!(
            "exponent scale {c:.3e} does not fit the core's 32-bit register \
             (pre-scales e_q {eq}, e_k {ek}: inputs of extreme magnitude)"
        )));
    }
    Ok(r as u32)
}

/// Runs one attention layer on the core model, head by head, with the reference's
/// quantization and the layer's head decision.
pub fn attention_layer(
    p: &CoreParams,
    prob: &AttentionProblem,
    cfg: &HdpConfig,
) -> Result<LayerRun> {
    let keep = check_config(cfg)?;
    let dims = prob.dims();
    if dims.head_dim != p.d {
        return Err(HwError::Invalid(format!(
            "the core has d = {}, the layer's heads d = {}",
            p.d, dims.head_dim
        )));
    }
    let fmt = QFormat::new(8, cfg.q_format.frac_bits)?;
    let vfmt = QFormat::new(8, 0)?;
    let (n, d) = (dims.seq_len, dims.head_dim);
    let mut output = vec![0f32; prob.q().data().len()];
    let mut heads_out = Vec::new();
    let mut prescales = Vec::new();
    for b in 0..dims.batch {
        let tokens: Vec<usize> = (0..n).filter(|&i| prob.token_is_valid(b, i)).collect();
        if tokens.is_empty() {
            prescales.push((0, 0));
            continue;
        }
        if tokens.len() > p.n_max {
            return Err(HwError::Invalid(format!(
                "sequence {b} has {} tokens; the core's buffers hold {} (raise n_max)",
                tokens.len(),
                p.n_max
            )));
        }
        let (eq, ek) = match cfg.prescale {
            Prescale::None => (0, 0),
            Prescale::Fixed { q_exp, k_exp } => (q_exp, k_exp),
            Prescale::RunTime => (
                fmt.fill_exponent(max_abs(prob.q(), prob, b, 0..dims.heads)),
                fmt.fill_exponent(max_abs(prob.k(), prob, b, 0..dims.heads)),
            ),
        };
        prescales.push((eq, ek));
        let c_exp = exponent_scale(fmt.frac_bits, eq, ek, d)?;
        let mut seq_heads = Vec::with_capacity(dims.heads);
        for h in 0..dims.heads {
            let ev = vfmt.fill_exponent(max_abs(prob.v(), prob, b, h..h + 1));
            let codes = |t: &Tensor, e: i32, f: QFormat| -> Vec<i8> {
                tokens
                    .iter()
                    .flat_map(|&i| {
                        f.quantize_slice(&t.data()[prob.row_offset(b, h, i)..][..d], e)
                            .codes
                    })
                    .map(|c| c as i8)
                    .collect()
            };
            let nn = tokens.len();
            let job = HeadJob {
                n: nn,
                causal: prob.causal(),
                centred: cfg.centred,
                importance_pos: cfg.head_importance == HeadImportance::KeptPosSum,
                c_exp,
                q: codes(prob.q(), eq, fmt),
                k: codes(prob.k(), ek, fmt),
                v: codes(prob.v(), ev, vfmt),
                kcount: (0..nn)
                    .map(|i| {
                        let nv = if prob.causal() { i + 1 } else { nn };
                        topk_count(keep.0, keep.1, nv) as u16
                    })
                    .collect(),
            };
            seq_heads.push((job, ev));
        }
        // Phase A of every head, the layer's decision, then phase B of the survivors.
        let mut runs = Vec::with_capacity(dims.heads);
        for (job, _) in &seq_heads {
            runs.push(run_head(p, job, true)?);
        }
        let imp: Vec<f64> = runs.iter().map(|r| r.importance as f64).collect();
        let pruned = prune_heads(&imp, cfg.head_pruning);
        for (h, ((job, ev), mut run)) in seq_heads.into_iter().zip(runs).enumerate() {
            if !pruned[h] {
                run = run_head(p, &job, false)?;
                let scale = 1.0 / ((OUT_FRAC as i32 + ev) as f64).exp2();
                for (r, &i) in tokens.iter().enumerate() {
                    let dst = &mut output[prob.row_offset(b, h, i)..][..d];
                    for (o, &c) in dst.iter_mut().zip(&run.out[r * d..][..d]) {
                        *o = (c as f64 * scale) as f32;
                    }
                }
            }
            heads_out.push(HeadResult {
                batch: b,
                head: h,
                pruned: pruned[h],
                job,
                run,
                tokens: tokens.clone(),
            });
        }
    }
    Ok(LayerRun {
        output: Tensor::new(prob.q().shape().to_vec(), output)?,
        heads: heads_out,
        prescales,
    })
}

/// Whether a configuration's compensation setting would be silently changed by the core
/// (`auto` compensates at b = 1): callers that want the hardware as built pass `off`.
pub fn without_compensation(mut cfg: HdpConfig) -> HdpConfig {
    cfg.compensate = Compensation::Off;
    cfg
}
