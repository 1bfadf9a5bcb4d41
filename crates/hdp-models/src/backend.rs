//! Pluggable attention for the model runtime. The model computes Q, K, V of each sequence
//! (`[1, heads, N, d]`, exactly its tokens, no padding) and hands a layer's sequences to an
//! [`AttentionBackend`]; everything else in the forward pass is fixed.
//!
//! - [`DenseFast`]: dense attention with the fast kernels (`hdp_attention::fast`);
//! - [`DenseReference`]: `hdp_attention::dense`, the plain f64 reference;
//! - [`HdpBackend`]: HDP attention with the fast kernels (`hdp_attention::fast`, the default)
//!   or the reference (`hdp_attention::hdp`); it also accumulates sparsity statistics and, on
//!   request, the full trace. Both kernels make identical pruning decisions.

use crate::Result;
use hdp_attention::fast::Isa;
use hdp_attention::{AttentionProblem, ValidConfig};
use hdp_core::trace::LayerTrace;
use hdp_core::{Tensor, Trace, TraceSummary};
use rayon::prelude::*;

/// One layer's attention inputs as the model hands them over.
pub struct LayerInput<'a> {
    /// Layer index.
    pub layer: usize,
    /// One problem per sequence: Q, K, V `[1, heads, N_s, d]`, no padding, not causal.
    pub problems: &'a [AttentionProblem],
    /// Caller's identifiers of the sequences (their index in the input), for traces.
    pub sequence_ids: &'a [usize],
}

/// An attention implementation the model can run.
pub trait AttentionBackend: Send {
    /// Attention output `[1, heads, N_s, d]` of each sequence of one layer, in order.
    fn attend(&mut self, x: &LayerInput) -> Result<Vec<Tensor>>;
}

/// Dense softmax attention with the fast kernels (`hdp_attention::fast::dense_attention`),
/// sequences in parallel.
#[derive(Clone, Copy, Debug)]
pub struct DenseFast(pub Isa);

impl Default for DenseFast {
    fn default() -> Self {
        DenseFast(Isa::detect())
    }
}

impl AttentionBackend for DenseFast {
    fn attend(&mut self, x: &LayerInput) -> Result<Vec<Tensor>> {
        let isa = self.0;
        Ok(x.problems
            .par_iter()
            .map(|p| hdp_attention::fast::dense_attention(p, isa))
            .collect::<hdp_core::Result<Vec<_>>>()?)
    }
}

/// The plain f64 dense reference (`hdp_attention::dense`).
#[derive(Clone, Copy, Debug, Default)]
pub struct DenseReference;

impl AttentionBackend for DenseReference {
    fn attend(&mut self, x: &LayerInput) -> Result<Vec<Tensor>> {
        Ok(x.problems
            .par_iter()
            .map(hdp_attention::dense::attention)
            .collect::<hdp_core::Result<Vec<_>>>()?)
    }
}

/// Per-head sparsity accumulated over a run (for heatmaps over layers x heads).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct HeadStats {
    /// Valid blocks seen.
    pub valid_blocks: u64,
    /// Blocks kept by block pruning.
    pub kept_blocks: u64,
    /// Times the head was pruned.
    pub pruned: u64,
    /// Times the head was run.
    pub runs: u64,
}

/// Which HDP implementation a [`HdpBackend`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HdpKernel {
    /// The plain f64 reference.
    Reference,
    /// The fast f32 SIMD kernels with this instruction set.
    Fast(hdp_attention::fast::Isa),
    /// The HDPA core's bit-accurate datapath (`hdp_hw`, what the RTL computes): its outputs;
    /// the decisions and the trace come from the fast kernels with this instruction set and
    /// are checked equal to the core's on every head.
    Hardware(hdp_attention::fast::Isa),
}

/// HDP attention with sparsity bookkeeping.
#[derive(Debug)]
pub struct HdpBackend {
    cfg: ValidConfig,
    /// Per-layer thresholds of a calibration (`None`: `cfg`'s for every layer).
    layer_thresholds: Option<Vec<hdp_core::RowThreshold>>,
    /// Implementation used; [`HdpBackend::new`] picks the fast kernels for this CPU.
    pub kernel: HdpKernel,
    /// Totals per layer.
    pub layer_summaries: Vec<TraceSummary>,
    /// Per layer, per head statistics.
    pub head_stats: Vec<Vec<HeadStats>>,
    /// Full trace, when requested: every layer of the first `trace_limit` sequences.
    pub trace: Option<Trace>,
    /// Valid score entries (query, key) over every layer, head and sequence: what dense
    /// attention computes (exponentials).
    pub dense_entries: u64,
    /// Dense Q.K^T MACs over the same entries (equal to dense P.V MACs).
    pub dense_qk_macs: u64,
    /// Per sequence id, over all layers: valid and kept blocks summed over heads, heads pruned
    /// (`pruned`) out of heads run (`runs`).
    pub sequence_stats: std::collections::BTreeMap<usize, HeadStats>,
    trace_limit: usize,
}

impl HdpBackend {
    /// A backend running HDP with `cfg`; keeps the full trace of up to `trace_limit` sequences
    /// (0 = no trace).
    pub fn new(cfg: ValidConfig, trace_limit: usize) -> Result<Self> {
        let trace = (trace_limit > 0).then(|| Trace::new(hdp_attention::REFERENCE_PRODUCER, cfg));
        Ok(HdpBackend {
            cfg,
            layer_thresholds: None,
            kernel: HdpKernel::Fast(hdp_attention::fast::Isa::detect()),
            layer_summaries: Vec::new(),
            head_stats: Vec::new(),
            trace,
            trace_limit,
            dense_entries: 0,
            dense_qk_macs: 0,
            sequence_stats: Default::default(),
        })
    }

    /// Runs layer `l` with `thresholds[l]` instead of the configuration's threshold (a
    /// calibration); every threshold is checked like the configuration's, and a run on a model
    /// with more layers than thresholds fails with an error that says so.
    pub fn with_layer_thresholds(
        mut self,
        thresholds: Vec<hdp_core::RowThreshold>,
    ) -> Result<Self> {
        for &threshold in &thresholds {
            hdp_attention::HdpConfig {
                threshold,
                ..*self.cfg
            }
            .validate()?;
        }
        self.layer_thresholds = Some(thresholds);
        Ok(self)
    }

    /// The configuration of layer `layer`.
    fn layer_config(&self, layer: usize) -> Result<ValidConfig> {
        match &self.layer_thresholds {
            None => Ok(self.cfg),
            Some(t) => {
                let threshold = *t.get(layer).ok_or_else(|| {
                    crate::Error::InvalidInput(format!(
                        "the calibration has thresholds for {} layers but the model reached                          layer {layer}: calibrate for this model (hdp calibrate --model ...)",
                        t.len()
                    ))
                })?;
                Ok(hdp_attention::HdpConfig {
                    threshold,
                    ..*self.cfg
                }
                .validated()?)
            }
        }
    }

    /// Totals over every layer.
    pub fn summary(&self) -> TraceSummary {
        let mut s = TraceSummary::default();
        for l in &self.layer_summaries {
            s += *l;
        }
        s
    }

    fn record(&mut self, mut lt: LayerTrace) {
        let layer = lt.layer;
        if self.layer_summaries.len() <= layer {
            self.layer_summaries
                .resize(layer + 1, TraceSummary::default());
            self.head_stats.resize(layer + 1, Vec::new());
        }
        self.layer_summaries[layer] += lt.summary();
        let stats = &mut self.head_stats[layer];
        stats.resize(lt.heads.max(stats.len()), HeadStats::default());
        for seq in &lt.sequences {
            let t = seq.valid_tokens as u64;
            let entries = if lt.causal { t * (t + 1) / 2 } else { t * t } * lt.heads as u64;
            self.dense_entries += entries;
            self.dense_qk_macs += entries * lt.head_dim as u64;
            let valid = seq.valid.count() as u64;
            for h in &seq.heads {
                let kept = h.kept.count() as u64;
                for s in [
                    &mut stats[h.head],
                    self.sequence_stats.entry(seq.sequence).or_default(),
                ] {
                    s.valid_blocks += valid;
                    s.kept_blocks += kept;
                    s.pruned += h.pruned as u64;
                    s.runs += 1;
                }
            }
        }
        if let Some(trace) = &mut self.trace {
            trace.producer = match self.kernel {
                HdpKernel::Reference => hdp_attention::REFERENCE_PRODUCER,
                HdpKernel::Fast(_) | HdpKernel::Hardware(_) => hdp_attention::FAST_PRODUCER,
            }
            .into();
            lt.sequences.retain(|s| s.sequence < self.trace_limit);
            if lt.sequences.is_empty() {
                return;
            }
            // Sequences are not padded, so one layer can appear once per sequence length.
            let n = lt.seq_len;
            match trace
                .layers
                .iter_mut()
                .find(|l| l.layer == layer && l.seq_len == n)
            {
                Some(existing) => existing.sequences.extend(lt.sequences),
                None => trace.layers.push(lt),
            }
        }
    }
}

impl AttentionBackend for HdpBackend {
    fn attend(&mut self, x: &LayerInput) -> Result<Vec<Tensor>> {
        let cfg = self.layer_config(x.layer)?;
        let kernel = self.kernel;
        let results = x
            .problems
            .par_iter()
            .map(|p| -> Result<_> {
                Ok(match kernel {
                    HdpKernel::Reference => hdp_attention::hdp::attention(p, &cfg, x.layer)?,
                    HdpKernel::Fast(isa) => {
                        hdp_attention::fast::hdp_attention(p, &cfg, x.layer, isa)?
                    }
                    HdpKernel::Hardware(isa) => hardware_attention(p, &cfg, x.layer, isa)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut outs = Vec::with_capacity(results.len());
        // One record per sequence: sequences differ in length (no padding).
        for (r, &id) in results.into_iter().zip(x.sequence_ids) {
            outs.push(r.output);
            let mut lt = r.trace;
            for s in &mut lt.sequences {
                s.sequence = id;
            }
            self.record(lt);
        }
        Ok(outs)
    }
}

/// One layer on the HDPA core's datapath: the core's outputs, the fast kernel's trace, and an
/// error if their decisions (kept keys, pruned heads) ever differ.
fn hardware_attention(
    p: &AttentionProblem,
    cfg: &ValidConfig,
    layer: usize,
    isa: Isa,
) -> Result<hdp_attention::HdpOutput> {
    let mut r = hdp_attention::fast::hdp_attention(p, cfg, layer, isa)?;
    let dims = p.dims();
    let params = hdp_hw::CoreParams {
        d: dims.head_dim,
        n_max: dims.seq_len,
        frac_bits: cfg.q_format.frac_bits,
        int_keys: 1,
        prune_lanes: 1,
        // The outputs do not depend on the core's parallelism; the model selects directly
        // and, in debug builds, checks against the digit search, cheapest at one bit a pass.
        search_bits: 1,
        frac_keys: 1,
        exps: 1,
        sv_keys: 1,
        norm_lanes: 1,
    };
    let hw = hdp_hw::attention_layer(&params, p, cfg)
        .map_err(|e| crate::Error::InvalidInput(format!("--datapath hw: {e}")))?;
    for h in &hw.heads {
        let t = &r.trace.sequences[h.batch].heads[h.head];
        let same_kept = h.run.kept.iter().enumerate().all(|(row, kept)| {
            let i = h.tokens[row];
            kept.len() == t.kept.count_row(i)
                && kept.iter().all(|&j| t.kept.get(i, h.tokens[j as usize]))
        });
        if h.pruned != t.pruned || !same_kept {
            return Err(crate::Error::InvalidInput(format!(
                "layer {layer} head {}: the HDPA core's decisions differ from the kernel's \
                 (a bug: please report it with this input)",
                h.head
            )));
        }
    }
    r.output = hw.output;
    Ok(r)
}

/// Wraps a backend and keeps a copy of one layer's Q, K, V (`[1, heads, N, d]`) of the first
/// sequence that reaches it: real attention inputs for benchmarks (`hdp bench attention --qkv`)
/// and for `hdp attention --qkv`.
pub struct CaptureQkv<B> {
    /// The backend doing the work.
    pub inner: B,
    /// Layer to capture.
    pub layer: usize,
    /// Captured Q, K, V and the key mask (all true: sequences are never padded).
    pub captured: Option<(Tensor, Tensor, Tensor, Vec<bool>)>,
}

impl<B: AttentionBackend> AttentionBackend for CaptureQkv<B> {
    fn attend(&mut self, x: &LayerInput) -> Result<Vec<Tensor>> {
        if x.layer == self.layer && self.captured.is_none() {
            if let Some(p) = x.problems.first() {
                self.captured = Some((
                    p.q().clone(),
                    p.k().clone(),
                    p.v().clone(),
                    vec![true; p.dims().seq_len],
                ));
            }
        }
        self.inner.attend(x)
    }
}
