//! HDP attention, the reference implementation of `shared/design/hdp.md` steps 1-7. Written for
//! clarity, not speed: it is the oracle for the fast kernels and the source of traces for the
//! simulator. Integer arithmetic is exact (i64); softmax and P.V accumulate in f64.
//!
//! The pruning decisions ([`select_blocks`], [`prune_heads`]) are public so the fast kernels
//! reuse exactly the same rules; they work on per-block importances, never on scores.

use crate::config::{
    BlockImportance, HdpConfig, HeadImportance, HeadPruning, Prescale, PrunedHeadOutput,
    RowThreshold, ValidConfig,
};
use crate::dense::masked_softmax;
use crate::problem::AttentionProblem;
use hdp_core::trace::{HeadTrace, LayerTrace, SequenceTrace};
use hdp_core::{BlockMask, OpCounts, PvPrecision, QFormat, Result, ScoreMode, Tensor};

/// Bits per V element assumed by the traffic counts (V is held as 16-bit values).
pub const V_BITS: u64 = 16;

/// Output of one HDP attention layer: the attention output and the layer's trace.
#[derive(Clone, Debug)]
pub struct HdpOutput {
    /// Attention output, shape of Q.
    pub output: Tensor,
    /// What was decided and computed.
    pub trace: LayerTrace,
}

/// Slack subtracted before `ceil` in top-k so that e.g. `0.3 * 10` (= 3.0000000000000004 in
/// binary floating point) keeps 3 blocks, not 4.
const TOPK_EPS: f64 = 1e-9;

/// Blocks a top-k block-row with `len` valid blocks keeps: `ceil(keep * len)`, at least `min`
/// (and one), at most `len`.
pub fn topk_count(keep: f64, min: usize, len: usize) -> usize {
    ((keep * len as f64 - TOPK_EPS).ceil() as usize)
        .max(min)
        .clamp(1, len)
}

/// The scale from integer block importances to estimated logits that top-p uses:
/// `S_int ~ Q.K 2^(e_q + e_k)`, so a score's logit is about `S_int 2^-(e_q + e_k) / sqrt(d)`;
/// sum and abs-sum importances add `b^2` entries, so their block logit is the mean entry's.
pub fn block_logit_scale(cfg: &HdpConfig, (eq, ek): (i32, i32), d: usize) -> LogitScale {
    // The centred operands are about twice the integer parts: products four times larger.
    let centred = if cfg.centred { 0.25 } else { 1.0 };
    let base = centred * (2f64).powi(-(eq + ek)) / (d.max(1) as f64).sqrt();
    let scale = match cfg.importance {
        BlockImportance::Max => base,
        _ => base / (cfg.block_size as f64 * cfg.block_size as f64),
    };
    LogitScale::new(scale, matches!(cfg.threshold, RowThreshold::TopP { .. }))
}

/// Fixed-point unit of top-p's block weights: a block `gap` integer units below its row's
/// maximum weighs `round(2^20 exp(-scale gap))`, an integer (the hardware's lookup table of
/// exponentials), so every implementation sums weights exactly, in any order, and decides the
/// same. Weights below 2^-21 of the maximum's are 0.
pub const TOPP_ONE: f64 = 1_048_576.0;

/// Longest weight table kept: scales so small that weights stay nonzero over more gaps than
/// this compute the rest on demand (same values).
const TOPP_TABLE_MAX: usize = 1 << 16;

fn topp_weight(scale: f64, gap: i64) -> u32 {
    (TOPP_ONE * (-scale * gap as f64).exp()).round() as u32
}

/// `round(2^20 2^(-j/16))`, `j = 0..16`: the mantissas of [`MassWeights`] (computed in f64;
/// `mass_mantissas_are_the_rounded_powers` recomputes them).
pub(crate) const MASS_MANTISSAS: [u32; 16] = [
    1_048_576, 1_004_120, 961_548, 920_782, 881_744, 844_361, 808_563, 774_282, 741_455, 710_020,
    679_917, 651_091, 623_487, 597_053, 571_740, 547_500,
];

/// Right shifts at or past which every mantissa is 0 (`MASS_MANTISSAS[0] = 2^20`).
const MASS_ZERO_SHIFT: u32 = 21;

/// The first `u` (gap in 16ths of an octave) whose weight is 0: `2^20 >> 20 = 1`, every other
/// mantissa `>> 20` is 0.
const MASS_ZERO_U: u64 = 16 * 20 + 1;

/// The integer weights of compensation's and the kept-mass head importance's pruned-mass
/// estimate (our addition to hdp.md step 7): an entry `gap` integer units below its row's
/// maximum weighs about `2^20 exp(-scale gap)`, computed exactly in 32-bit integers the way a
/// hardware exponential unit would, by a shift and a 16-entry mantissa table:
/// `u = (min(gap, G) c + 2^15) >> 16` (the gap in 16ths of an octave, `c = round(scale / ln 2
/// 2^20)`, at least 1), weight `MASS_MANTISSAS[u % 16] >> (u / 16)` (0 from `u = 16 * 20 + 1` on).
/// `G`, the first gap with `u >= 16 * 20 + 1`, is the first that weighs 0, so every larger
/// gap is clamped to it, and `G c + 2^15 < 2^32`. Within 2.5% of the exponential where it is
/// not 0 (the gap rounds to 1/16 octave). Every implementation (the reference's
/// [`pruned_mass`], the int8 kernel's vector tiers) computes these same integers: the vector
/// tiers look the mantissa up by a lane permute instead of a table gather.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MassWeights {
    /// `c`: `scale / ln 2` in units of `2^-20` octaves per gap.
    pub(crate) c: u32,
    /// `G`: the clamp, the first gap that weighs 0.
    pub(crate) g: u32,
}

impl MassWeights {
    /// The weights of logit scale `scale` (a positive finite scale; anything else gets the
    /// flattest weights, `c = 1`, rather than a division by zero).
    pub fn new(scale: f64) -> MassWeights {
        let x = (scale / std::f64::consts::LN_2 * (1u64 << 20) as f64).round();
        let c = if x.is_nan() {
            1
        } else {
            x.clamp(1.0, (i32::MAX - (1 << 16)) as f64) as u32
        };
        // The first gap with g c + 2^15 >= 2^16 MASS_ZERO_U.
        let g = ((MASS_ZERO_U << 16) - (1 << 15)).div_ceil(c as u64) as u32;
        MassWeights { c, g }
    }

    /// The weight of an entry `gap` units below its row's maximum (any gap, clamped to `G`).
    #[inline(always)]
    pub fn weight(self, gap: u32) -> u32 {
        let u = (gap.min(self.g) * self.c + (1 << 15)) >> 16;
        let shift = u >> 4;
        if shift >= MASS_ZERO_SHIFT {
            0
        } else {
            MASS_MANTISSAS[(u & 15) as usize] >> shift
        }
    }
}

/// A logit scale (integer importance units to logits) with top-p's weight table: the weights
/// of gaps `0, 1, 2, ...` up to the first that is 0 (weights never increase with the gap), so
/// that a table ending in 0 covers every gap.
#[derive(Clone, Debug)]
pub struct LogitScale {
    scale: f64,
    table: Vec<u32>,
    complete: bool,
    mass: MassWeights,
}

impl LogitScale {
    /// `scale`, with the weight table when `cache` (top-p runs).
    pub fn new(scale: f64, cache: bool) -> LogitScale {
        let mut table = Vec::new();
        let mut complete = false;
        if cache {
            for g in 0..TOPP_TABLE_MAX as i64 {
                let w = topp_weight(scale, g);
                table.push(w);
                if w == 0 {
                    complete = true;
                    break;
                }
            }
        }
        LogitScale {
            scale,
            table,
            complete,
            mass: MassWeights::new(scale),
        }
    }

    /// The pruned-mass estimate's weights at this scale.
    pub fn mass_weights(&self) -> MassWeights {
        self.mass
    }

    /// The weight of a block `gap >= 0` units below its row's maximum ([`TOPP_ONE`] units).
    pub fn weight(&self, gap: i64) -> u64 {
        match self.table.get(gap as usize) {
            Some(&w) => w as u64,
            None if self.complete => 0,
            None => topp_weight(self.scale, gap) as u64,
        }
    }

    /// Integer importance units to logits.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The table when it covers every gap (it ends in 0 and larger gaps weigh 0 too).
    pub(crate) fn complete_table(&self) -> Option<&[u32]> {
        self.complete.then_some(self.table.as_slice())
    }
}

/// The weight a top-p row keeps: `ceil(mass total)` in weight units, at least 1 and at most
/// `total` (every implementation computes it with this function).
pub(crate) fn topp_target(total: u64, mass: f64) -> u64 {
    ((mass * total as f64).ceil() as u64).clamp(1, total.max(1))
}

/// Blocks a top-p block-row keeps: `desc` holds its valid importances as `(value, count)` in
/// decreasing value order; each block weighs `round(2^20 exp(scale (v - max)))`
/// ([`TOPP_ONE`]), and the row keeps the fewest top blocks whose weight reaches
/// [`topp_target`] of the total (ties by column, as top-k). Integer weights: the walk here and
/// the fast kernels' threshold search give the same count.
pub fn topp_count(desc: &[(i64, usize)], scale: &LogitScale, mass: f64) -> usize {
    let Some(&(max, _)) = desc.first() else {
        return 0;
    };
    let len: usize = desc.iter().map(|x| x.1).sum();
    let total: u64 = desc
        .iter()
        .map(|&(v, c)| c as u64 * scale.weight(max - v))
        .sum();
    let target = topp_target(total, mass);
    let (mut acc, mut k) = (0u64, 0usize);
    for &(v, c) in desc {
        let w = scale.weight(max - v);
        if acc + c as u64 * w >= target {
            // Part of this group of equal values: the fewest that reach the target.
            let need = (target - acc).div_ceil(w) as usize;
            return (k + need.min(c)).clamp(1, len);
        }
        acc += c as u64 * w;
        k += c;
    }
    len.max(1)
}

/// Valid importances as `(value, count)` in decreasing value order (plain: by sorting).
fn value_counts(values: impl Iterator<Item = i64>) -> Vec<(i64, usize)> {
    let mut v: Vec<i64> = values.collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    let mut out: Vec<(i64, usize)> = Vec::new();
    for x in v {
        match out.last_mut() {
            Some((y, c)) if *y == x => *c += 1,
            _ => out.push((x, 1)),
        }
    }
    out
}

/// Indices of the blocks a block-row keeps (step 4), given `(column, importance)` of its valid
/// blocks in column order. Never empty when `row` is not; the result is sorted by column.
/// Top-p estimates masses with a logit scale of 1 here; see [`select_blocks_scaled`].
pub fn select_blocks(row: &[(usize, i64)], threshold: RowThreshold) -> Vec<usize> {
    select_blocks_owned(row.to_vec(), threshold, &LogitScale::new(1.0, false))
}

/// [`select_blocks`] with the logit scale of the importances ([`block_logit_scale`]).
pub fn select_blocks_scaled(
    row: &[(usize, i64)],
    threshold: RowThreshold,
    logit_scale: f64,
) -> Vec<usize> {
    select_blocks_owned(
        row.to_vec(),
        threshold,
        &LogitScale::new(logit_scale, false),
    )
}

/// The top-k selection of `k` blocks: most important first, ties to the lower column.
fn top_blocks(mut order: Vec<(usize, i64)>, k: usize) -> Vec<usize> {
    // Most important first; ties go to the lower column, a total order, so the chosen set is
    // deterministic and nested in k. Selection (O(n)) picks the same set as a full sort would.
    let by_rank = |a: &(usize, i64), b: &(usize, i64)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_rank);
    }
    order.truncate(k);
    order.into_iter().map(|(c, _)| c).collect()
}

/// [`select_blocks`] on a row the caller no longer needs (no copy).
fn select_blocks_owned(
    row: Vec<(usize, i64)>,
    threshold: RowThreshold,
    logit_scale: &LogitScale,
) -> Vec<usize> {
    if row.is_empty() {
        return Vec::new();
    }
    let mut kept: Vec<usize> = match threshold {
        RowThreshold::KeepAll => row.iter().map(|&(c, _)| c).collect(),
        RowThreshold::MeanMax { rho } => {
            let max = row.iter().map(|&(_, v)| v).max().unwrap_or(0) as f64;
            let mean = row.iter().map(|&(_, v)| v as f64).sum::<f64>() / row.len() as f64;
            let t = mean + rho * (max - mean);
            // The row maximum always satisfies `max >= t` for rho in [0, 1], so never empty.
            row.iter()
                .filter(|&&(_, v)| v as f64 >= t || v as f64 == max)
                .map(|&(c, _)| c)
                .collect()
        }
        RowThreshold::TopK { keep, min: floor } => {
            let k = topk_count(keep, floor, row.len());
            top_blocks(row, k)
        }
        RowThreshold::TopP { mass } => {
            let k = topp_count(&value_counts(row.iter().map(|x| x.1)), logit_scale, mass);
            top_blocks(row, k)
        }
    };
    kept.sort_unstable();
    kept
}

/// Which heads of one layer (one sequence) early head pruning removes (step 5), given their
/// importances. The most important head (lowest index on ties) always survives.
pub fn prune_heads(importance: &[f64], policy: HeadPruning) -> Vec<bool> {
    let h = importance.len();
    let mut best = 0;
    for (i, &v) in importance.iter().enumerate() {
        if v > importance[best] {
            best = i;
        }
    }
    let mut pruned = vec![false; h];
    match policy {
        HeadPruning::Off => {}
        HeadPruning::Tau { tau } => {
            let t = tau * importance.get(best).copied().unwrap_or(0.0);
            for (i, &v) in importance.iter().enumerate() {
                pruned[i] = i != best && v < t;
            }
        }
        HeadPruning::TopK { heads } => {
            let mut order: Vec<usize> = (0..h).collect();
            order.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]).then(a.cmp(&b)));
            for &i in order.iter().skip(heads.max(1)) {
                pruned[i] = true;
            }
        }
    }
    pruned
}

/// Power-of-two exponents (Q, K) for one sequence under the pre-scale policy.
pub(crate) fn prescale_exponents(
    p: &AttentionProblem,
    cfg: &HdpConfig,
    b: usize,
    heads: usize,
    n: usize,
    d: usize,
) -> (i32, i32) {
    match cfg.prescale {
        Prescale::None => (0, 0),
        Prescale::Fixed { q_exp, k_exp } => (q_exp, k_exp),
        Prescale::RunTime => {
            // Max |x| via the magnitude bits (same order as the values for finite floats,
            // which `validate` guarantees): integer max, vectorizes.
            let all_valid = (0..n).all(|i| p.token_is_valid(b, i));
            let max_abs = |t: &Tensor| {
                let mut m = 0u32;
                for h in 0..heads {
                    if all_valid {
                        // A head's rows are contiguous.
                        m = m.max(max_magnitude(&t.data()[p.row_offset(b, h, 0)..][..n * d]));
                        continue;
                    }
                    for i in (0..n).filter(|&i| p.token_is_valid(b, i)) {
                        m = m.max(max_magnitude(&t.data()[p.row_offset(b, h, i)..][..d]));
                    }
                }
                f32::from_bits(m)
            };
            (
                cfg.q_format.fill_exponent(max_abs(p.q())),
                cfg.q_format.fill_exponent(max_abs(p.k())),
            )
        }
    }
}

/// The largest magnitude's bits, `max |x|.to_bits()` (the same order as the values for finite
/// floats): an integer maximum, on AVX2 where the CPU has it (the baseline's SSE2 has no
/// unsigned 32-bit maximum, so the loop ran scalar: 1.5% of an HDP run).
fn max_magnitude(xs: &[f32]) -> u32 {
    #[inline(always)]
    fn body(xs: &[f32]) -> u32 {
        xs.iter().fold(0, |m, x| m.max(x.to_bits() & 0x7fff_ffff))
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn avx2(xs: &[f32]) -> u32 {
        body(xs)
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked).
        return unsafe { avx2(xs) };
    }
    body(xs)
}

/// Quantized codes of one sequence (all heads, all tokens, layout `[heads, N, d]`) and the
/// number of saturated values at valid tokens.
pub(crate) fn quantize_sequence(
    p: &AttentionProblem,
    t: &Tensor,
    fmt: QFormat,
    exp: i32,
    b: usize,
) -> (Vec<i32>, u64) {
    let s = t.shape();
    let (heads, n, d) = (s[1], s[2], s[3]);
    let mut codes = Vec::with_capacity(heads * n * d);
    let mut saturated = 0;
    for h in 0..heads {
        for i in 0..n {
            let q = fmt.quantize_slice(&t.data()[p.row_offset(b, h, i)..][..d], exp);
            if p.token_is_valid(b, i) {
                saturated += q.saturated as u64;
            }
            codes.extend_from_slice(&q.codes);
        }
    }
    (codes, saturated)
}

/// Blocks of sequence `b` with at least one valid entry, and the number of valid tokens.
pub(crate) fn valid_blocks(p: &AttentionProblem, b: usize, bs: usize) -> (BlockMask, usize) {
    let n = p.q().shape()[2];
    let nb = n.div_ceil(bs);
    let mut valid = BlockMask::new(nb, nb);
    // Block (r, c) has a valid entry iff some valid query of r and valid key of c exist (and,
    // causally, the smallest such key is at most the largest such query): O(n + nb^2).
    let mut last_valid = vec![None; nb];
    let mut first_valid = vec![None; nb];
    for i in (0..n).filter(|&i| p.token_is_valid(b, i)) {
        last_valid[i / bs] = Some(i);
        first_valid[i / bs].get_or_insert(i);
    }
    // Whole rows of words: the valid key blocks, and causally only the prefix up to the
    // query's own block (for c <= q / bs the block's first valid key is at most q; past it,
    // every key is later than q).
    let wn = nb.div_ceil(64);
    let mut cols = vec![0u64; wn];
    for (c, k) in first_valid.iter().enumerate() {
        if k.is_some() {
            cols[c / 64] |= 1 << (c % 64);
        }
    }
    let mut row = vec![0u64; wn];
    for (r, q) in last_valid.iter().enumerate() {
        let Some(q) = *q else { continue };
        row.copy_from_slice(&cols);
        if p.causal() {
            let end = q / bs + 1;
            if !end.is_multiple_of(64) {
                row[end / 64] &= (1u64 << (end % 64)) - 1;
            }
            for x in row.iter_mut().skip(end.div_ceil(64)) {
                *x = 0;
            }
        }
        valid.or_row_from(r, &row);
    }
    (valid, (0..n).filter(|&i| p.token_is_valid(b, i)).count())
}

/// Steps 4 and 5 (first half) for one head, one block-row at a time, so that an
/// implementation can decide a block-row as soon as its importances exist (no `nb x nb` store).
pub(crate) struct HeadDecider {
    kept: BlockMask,
    threshold: RowThreshold,
    forced: Forced,
    logit_scale: LogitScale,
    head_importance: HeadImportance,
    kept_sum: f64,
    kept_pos: f64,
    all_sum: f64,
    peak: f64,
    rows_with_blocks: usize,
    /// Per block-row, the estimated softmax mass of its pruned blocks (compensation or the
    /// kept-mass head importance; empty otherwise).
    mass: Vec<f64>,
    /// Whether the output compensates (else `finish` drops the masses).
    compensates: bool,
}

/// What one head's decision pass produces: the kept blocks, the head's importance, and per
/// block-row the estimated pruned mass (empty without compensation).
pub(crate) type Decided = (BlockMask, f64, Vec<f64>);

/// The estimated softmax mass of a block-row's pruned blocks (compensation, hdp.md step 7):
/// `W_pruned / W_valid` with each valid block weighing its [`MassWeights`] weight (about
/// `2^20 exp(-scale gap)`) below the row's maximum, so every implementation computes the same
/// ratio of exact integer sums. `blocks` yields `(importance, kept)` per valid block.
pub(crate) fn pruned_mass(
    blocks: impl Iterator<Item = (i64, bool)> + Clone,
    scale: &LogitScale,
) -> f64 {
    let Some(max) = blocks.clone().map(|b| b.0).max() else {
        return 0.0;
    };
    let mw = scale.mass_weights();
    let (mut total, mut pruned) = (0u64, 0u64);
    for (v, kept) in blocks {
        let w = mw.weight((max - v).min(u32::MAX as i64) as u32) as u64;
        total += w;
        if !kept {
            pruned += w;
        }
    }
    if total == 0 {
        0.0
    } else {
        pruned as f64 / total as f64
    }
}

/// Per query row, the coefficients of compensation (hdp.md step 7's option): the kept
/// probabilities are scaled by `1 - m` and every valid pruned key of the row gets weight
/// `c = m / n_pruned`; `None` when nothing is pruned in the row, its mass is 0, or it keeps
/// nothing (a padding row: every valid row keeps at least one entry). Applied as
/// kept weights `(1 - m) p_j - c` plus `c` times the sum of V over the row's valid keys, which
/// is the same sum.
pub(crate) fn row_compensation(mass: f64, n_valid: usize, n_kept: usize) -> Option<(f64, f64)> {
    (mass > 0.0 && n_kept > 0 && n_valid > n_kept)
        .then(|| (1.0 - mass, mass / (n_valid - n_kept) as f64))
}

/// Sums of V over the valid keys each query row sees (all valid keys, or causally those up to
/// the row), accumulated in f64, for compensation; and their counts.
pub(crate) struct VSums {
    causal: bool,
    d: usize,
    sums: Vec<f64>,
    sums32: Vec<f32>,
    counts: Vec<usize>,
}

impl VSums {
    /// From one head's V (`n x d`, already rounded as P.V reads it).
    pub(crate) fn new(v: &[f32], valid_tok: &[bool], causal: bool, d: usize) -> VSums {
        let n = valid_tok.len();
        let mut acc = vec![0.0f64; d];
        let mut count = 0usize;
        let (mut sums, mut counts) = (Vec::new(), Vec::new());
        for (i, &ok) in valid_tok.iter().enumerate() {
            if ok {
                count += 1;
                for (a, &x) in acc.iter_mut().zip(&v[i * d..(i + 1) * d]) {
                    *a += x as f64;
                }
            }
            if causal {
                sums.extend_from_slice(&acc);
                counts.push(count);
            }
        }
        if !causal || n == 0 {
            sums = acc;
            counts = vec![count];
        }
        let sums32 = sums.iter().map(|&x| x as f32).collect();
        VSums {
            causal,
            d,
            sums,
            sums32,
            counts,
        }
    }

    fn at(&self, i: usize) -> usize {
        if self.causal {
            i.min(self.counts.len().saturating_sub(1))
        } else {
            0
        }
    }

    /// Valid keys row `i` sees.
    pub(crate) fn count(&self, i: usize) -> usize {
        self.counts[self.at(i)]
    }

    /// Their V sum (f64).
    pub(crate) fn sum(&self, i: usize) -> &[f64] {
        &self.sums[self.at(i) * self.d..][..self.d]
    }

    /// Their V sum (f32, for the fast kernels).
    pub(crate) fn sum32(&self, i: usize) -> &[f32] {
        &self.sums32[self.at(i) * self.d..][..self.d]
    }
}

impl HeadDecider {
    /// A decider for `nb x nb` blocks whose importances have logit scale `logit_scale`
    /// ([`block_logit_scale`], used by top-p).
    pub(crate) fn new(nb: usize, cfg: &HdpConfig, logit_scale: LogitScale) -> Self {
        HeadDecider {
            kept: BlockMask::new(nb, nb),
            threshold: cfg.threshold,
            forced: Forced::new(cfg, nb),
            logit_scale,
            head_importance: cfg.head_importance,
            kept_sum: 0.0,
            kept_pos: 0.0,
            all_sum: 0.0,
            peak: 0.0,
            rows_with_blocks: 0,
            mass: if cfg.compensates() || cfg.head_importance == HeadImportance::KeptMass {
                vec![0.0; nb]
            } else {
                Vec::new()
            },
            compensates: cfg.compensates(),
        }
    }

    /// The kept sums [`HeadDecider::row_decided`] reads (the others may be left 0).
    pub(crate) fn kept_sums(&self) -> KeptSums {
        KeptSums {
            sum: self.head_importance == HeadImportance::KeptSum,
            pos: self.head_importance == HeadImportance::KeptPosSum,
        }
    }

    /// Whether the decision estimates pruned masses (compensation, or the kept-mass head
    /// importance).
    pub(crate) fn wants_mass(&self) -> bool {
        !self.mass.is_empty()
    }

    /// Records the pruned mass of block-row `r` computed by the caller ([`pruned_mass`]).
    pub(crate) fn set_mass(&mut self, r: usize, m: f64) {
        if let Some(x) = self.mass.get_mut(r) {
            *x = m;
        }
    }

    /// Decides block-row `r` from its block importances (`None` = fully masked block).
    pub(crate) fn row(&mut self, r: usize, imp: &[Option<i64>]) {
        let row_imp: Vec<(usize, i64)> = imp
            .iter()
            .enumerate()
            .filter_map(|(c, v)| v.map(|v| (c, v)))
            .collect();
        if row_imp.is_empty() {
            return;
        }
        let vals = row_imp.iter().map(|&(_, v)| v as f64);
        let sum: f64 = vals.clone().sum();
        let max = vals.fold(f64::NEG_INFINITY, f64::max);
        self.all_sum += sum;
        self.peak += max - sum / row_imp.len() as f64;
        self.rows_with_blocks += 1;
        for c in select_blocks_owned(row_imp, self.threshold, &self.logit_scale) {
            self.kept.set(r, c, true);
            let v = imp[c].unwrap_or(0) as f64;
            self.kept_sum += v;
            self.kept_pos += v.max(0.0);
        }
        for c in self.forced.cols(r) {
            if let Some(v) = imp[c] {
                if !self.kept.get(r, c) {
                    self.kept.set(r, c, true);
                    self.kept_sum += v as f64;
                    self.kept_pos += (v as f64).max(0.0);
                }
            }
        }
        if self.wants_mass() {
            let kept = &self.kept;
            let blocks = imp
                .iter()
                .enumerate()
                .filter_map(|(c, v)| v.map(|v| (v, kept.get(r, c))));
            self.mass[r] = pruned_mass(blocks, &self.logit_scale);
        }
    }

    /// The block columns block-row `r` keeps whatever its importances (`keep_sink`,
    /// `keep_local`), valid or not: the caller keeps the valid ones.
    pub(crate) fn forced_cols(&self, r: usize) -> impl Iterator<Item = usize> + '_ {
        self.forced.cols(r)
    }

    /// [`HeadDecider::row`] for the fast kernels: the same decision and head-importance updates
    /// (tested equal), from dense importances `imp` with `ok[c]` = block `c` has a valid entry,
    /// without allocation. Top-k finds its threshold with a counting pass when the row's value
    /// range is small (integer scores usually are) and by selection on `scratch` otherwise.
    pub(crate) fn row_fast(
        &mut self,
        r: usize,
        imp: &[i64],
        ok: &[bool],
        scratch: &mut RowScratch,
    ) {
        let (mut len, mut sum, mut max, mut min) = (0usize, 0i64, i64::MIN, i64::MAX);
        for (&v, &o) in imp.iter().zip(ok) {
            if o {
                len += 1;
                sum += v;
                max = max.max(v);
                min = min.min(v);
            }
        }
        if len == 0 {
            return;
        }
        // Integer sums below 2^53 are exact in f64 in any order, as in `row`.
        let (sum_f, max_f) = (sum as f64, max as f64);
        self.all_sum += sum_f;
        self.peak += max_f - sum_f / len as f64;
        self.rows_with_blocks += 1;
        // Kept = v > gt, plus the first `eq_left` valid columns with v == eq (top-k ties go to
        // the lower column), or v as f64 >= t (mean-max).
        enum Rule {
            All,
            Above(f64, f64),
            Rank { gt: i64, eq_left: usize },
        }
        let rule = match self.threshold {
            RowThreshold::KeepAll => Rule::All,
            RowThreshold::MeanMax { rho } => {
                let mean = sum_f / len as f64;
                Rule::Above(mean + rho * (max_f - mean), max_f)
            }
            RowThreshold::TopK { .. } | RowThreshold::TopP { .. } => {
                let k = match self.threshold {
                    RowThreshold::TopP { mass } => {
                        let valid = imp.iter().zip(ok).filter(|x| *x.1).map(|x| *x.0);
                        let desc = value_counts_in(valid, len, min, max, &mut scratch.counts);
                        topp_count(&desc, &self.logit_scale, mass)
                    }
                    RowThreshold::TopK { keep, min: floor } => topk_count(keep, floor, len),
                    _ => unreachable!("matched above"),
                };
                let t = kth_largest(imp, ok, k, min, max, len, scratch);
                let above = imp.iter().zip(ok).filter(|&(&v, &o)| o && v > t).count();
                Rule::Rank {
                    gt: t,
                    eq_left: k - above,
                }
            }
        };
        let mut eq_left = match rule {
            Rule::Rank { eq_left, .. } => eq_left,
            _ => 0,
        };
        for (c, (&v, &o)) in imp.iter().zip(ok).enumerate() {
            if !o {
                continue;
            }
            let keep = match rule {
                Rule::All => true,
                Rule::Above(t, m) => v as f64 >= t || v as f64 == m,
                Rule::Rank { gt, .. } => {
                    v > gt
                        || (v == gt && eq_left > 0 && {
                            eq_left -= 1;
                            true
                        })
                }
            };
            if keep {
                self.kept.set(r, c, true);
                self.kept_sum += v as f64;
                self.kept_pos += (v as f64).max(0.0);
            }
        }
        for c in self.forced.cols(r) {
            if ok[c] && !self.kept.get(r, c) {
                let v = imp[c] as f64;
                self.kept.set(r, c, true);
                self.kept_sum += v;
                self.kept_pos += v.max(0.0);
            }
        }
        if self.wants_mass() {
            let kept = &self.kept;
            let blocks = imp
                .iter()
                .zip(ok)
                .enumerate()
                .filter(|x| *x.1 .1)
                .map(|(c, (&v, _))| (v, kept.get(r, c)));
            self.mass[r] = pruned_mass(blocks, &self.logit_scale);
        }
    }

    /// Records block-row `r` decided elsewhere from the same rules (the fast kernels' one-block
    /// rows): `len` valid blocks with importance sum `sum` and maximum `max`, the kept columns
    /// as words, and the sums of the kept importances and of their positive parts. The same
    /// f64 updates as [`HeadDecider::row`] (integer sums below 2^53 are exact in any order).
    pub(crate) fn row_decided(&mut self, r: usize, stats: &RowStats, kept: &[u64]) {
        if stats.len == 0 {
            return;
        }
        let (sum_f, max_f) = (stats.sum as f64, stats.max as f64);
        self.all_sum += sum_f;
        self.peak += max_f - sum_f / stats.len as f64;
        self.rows_with_blocks += 1;
        self.kept.or_row_from(r, kept);
        self.kept_sum += stats.kept_sum as f64;
        self.kept_pos += stats.kept_pos as f64;
    }

    /// The kept blocks, the head's importance and the pruned masses (empty unless the output
    /// compensates).
    pub(crate) fn finish(self) -> Decided {
        let importance = match self.head_importance {
            HeadImportance::KeptSum => self.kept_sum,
            HeadImportance::KeptPosSum => self.kept_pos,
            HeadImportance::AllSum => self.all_sum,
            HeadImportance::Peakedness => self.peak / self.rows_with_blocks.max(1) as f64,
            HeadImportance::KeptMass => {
                // Rows without valid blocks have mass 0; they do not count. Summed in row
                // order from the same masses in every implementation.
                let blank = (self.mass.len() - self.rows_with_blocks) as f64;
                let kept: f64 = self.mass.iter().map(|m| 1.0 - m).sum::<f64>() - blank;
                kept / self.rows_with_blocks.max(1) as f64
            }
        };
        let mass = if self.compensates {
            self.mass
        } else {
            Vec::new()
        };
        (self.kept, importance, mass)
    }
}

/// The blocks every block-row keeps whatever its importances (hdp.md step 4's options): the
/// block columns holding the first `keep_sink` keys, and the blocks holding an entry within
/// `keep_local` of the diagonal. Block `c` holds key `c b`, so the sink is columns
/// `0..ceil(keep_sink / b)`; the nearest entries of blocks `r` and `c != r` are
/// `(|r - c| - 1) b + 1` apart, so the band is `|r - c| <= ceil((keep_local - 1) / b)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Forced {
    nb: usize,
    sink_cols: usize,
    /// Half-width of the band in blocks, `None` without a band.
    band: Option<usize>,
}

impl Forced {
    pub(crate) fn new(cfg: &HdpConfig, nb: usize) -> Forced {
        let bs = cfg.block_size;
        Forced {
            nb,
            sink_cols: cfg.keep_sink.div_ceil(bs).min(nb),
            band: (cfg.keep_local > 0).then(|| (cfg.keep_local - 1).div_ceil(bs)),
        }
    }

    /// Whether any block is forced.
    pub(crate) fn any(&self) -> bool {
        self.sink_cols > 0 || self.band.is_some()
    }

    /// The forced columns of block-row `r`, each once, in increasing order.
    pub(crate) fn cols(&self, r: usize) -> impl Iterator<Item = usize> {
        let band = match self.band {
            Some(t) => {
                r.saturating_sub(t).max(self.sink_cols)..(r.saturating_add(t) + 1).min(self.nb)
            }
            None => 0..0,
        };
        (0..self.sink_cols).chain(band)
    }
}

/// Which kept sums a head's decision needs ([`HeadDecider::kept_sums`]): the kept-sum and the
/// kept-pos-sum head importances read one each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeptSums {
    pub(crate) sum: bool,
    pub(crate) pos: bool,
}

/// Aggregates of one decided block-row, for [`HeadDecider::row_decided`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RowStats {
    /// Valid blocks.
    pub len: usize,
    /// Sum and maximum of their importances.
    pub sum: i64,
    pub max: i64,
    /// Sum of the kept importances and of their positive parts.
    pub kept_sum: i64,
    pub kept_pos: i64,
    /// Compensation only: the integer weights ([`pruned_mass`]) of the valid and of the kept
    /// entries (0 otherwise).
    pub w_total: u64,
    pub w_kept: u64,
}

/// Reusable buffers of [`HeadDecider::row_fast`].
#[derive(Default)]
pub(crate) struct RowScratch {
    counts: Vec<u32>,
    values: Vec<i64>,
}

/// Value ranges up to this many distinct integers are counted instead of selected.
const COUNTING_RANGE: i64 = 1 << 14;

/// Values (`len` of them, in `min..=max`) as `(value, count)` in decreasing value order, the
/// same list as [`value_counts`]: by counting into `counts` when the range is small (integer
/// scores usually are), else by sorting.
pub(crate) fn value_counts_in(
    values: impl Iterator<Item = i64>,
    len: usize,
    min: i64,
    max: i64,
    counts: &mut Vec<u32>,
) -> Vec<(i64, usize)> {
    let mut out = Vec::new();
    value_counts_into(values, len, min, max, counts, &mut out);
    out
}

/// [`value_counts_in`] into a reusable list.
pub(crate) fn value_counts_into(
    values: impl Iterator<Item = i64>,
    len: usize,
    min: i64,
    max: i64,
    counts: &mut Vec<u32>,
    out: &mut Vec<(i64, usize)>,
) {
    out.clear();
    let range = max.saturating_sub(min);
    if range < COUNTING_RANGE && range as usize <= 4 * len + 64 {
        counts.clear();
        counts.resize(range as usize + 1, 0);
        for v in values {
            counts[(v - min) as usize] += 1;
        }
        // The non-zero counts as a bitmap (a compare per count, vectorizable), then only
        // the values present are visited, from the top: a branch per count over the whole
        // range was most of top-p's decision time.
        out.reserve(len.min(counts.len()));
        for (wi, chunk) in counts.chunks(64).enumerate().rev() {
            let mut word = 0u64;
            for (b, &c) in chunk.iter().enumerate() {
                word |= ((c != 0) as u64) << b;
            }
            while word != 0 {
                let b = 63 - word.leading_zeros() as usize;
                word &= !(1u64 << b);
                let x = wi * 64 + b;
                out.push((min + x as i64, counts[x] as usize));
            }
        }
    } else {
        out.extend(value_counts(values));
    }
}

/// The `k`-th largest (1-based, with multiplicity) of the valid values of a row whose valid
/// values lie in `min..=max` (`len` of them, `1 <= k <= len`).
fn kth_largest(
    imp: &[i64],
    ok: &[bool],
    k: usize,
    min: i64,
    max: i64,
    len: usize,
    scratch: &mut RowScratch,
) -> i64 {
    let range = max.saturating_sub(min);
    if range < COUNTING_RANGE && range as usize <= 4 * len + 64 {
        let counts = &mut scratch.counts;
        counts.clear();
        counts.resize(range as usize + 1, 0);
        for (&v, &o) in imp.iter().zip(ok) {
            if o {
                counts[(v - min) as usize] += 1;
            }
        }
        let mut seen = 0usize;
        for (x, &c) in counts.iter().enumerate().rev() {
            seen += c as usize;
            if seen >= k {
                return min + x as i64;
            }
        }
        min
    } else {
        let values = &mut scratch.values;
        values.clear();
        values.extend(imp.iter().zip(ok).filter(|x| *x.1).map(|x| *x.0));
        let (_, t, _) = values.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        *t
    }
}

/// [`HeadDecider`] over a whole `nb x nb` importance matrix (row-major).
pub(crate) fn decide_blocks(
    imp: &[Option<i64>],
    nb: usize,
    cfg: &HdpConfig,
    logit_scale: LogitScale,
) -> Decided {
    let mut d = HeadDecider::new(nb, cfg, logit_scale);
    for r in 0..nb {
        d.row(r, &imp[r * nb..(r + 1) * nb]);
    }
    d.finish()
}

/// The end of one sequence in the fast kernels: mean-V outputs of pruned heads (if chosen) and
/// the sequence's trace from each head's `(kept blocks, importance)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_sequence(
    p: &AttentionProblem,
    cfg: &HdpConfig,
    out: &mut Tensor,
    b: usize,
    (valid, valid_tokens): (BlockMask, usize),
    (q_prescale_exp, k_prescale_exp): (i32, i32),
    (q_saturated, k_saturated): (u64, u64),
    decided: Vec<Decided>,
    pruned: &[bool],
) -> SequenceTrace {
    let s = p.q().shape();
    let (n, d) = (s[2], s[3]);
    for h in (0..decided.len())
        .filter(|&h| pruned[h] && cfg.pruned_head_output == PrunedHeadOutput::MeanV)
    {
        write_mean_v(p, out, b, h, n, d, valid_tokens);
    }
    let heads = decided
        .into_iter()
        .enumerate()
        .map(|(h, (kept, importance, _))| HeadTrace {
            head: h,
            importance,
            pruned: pruned[h],
            counts: head_counts(&valid, &kept, pruned[h], cfg, n, d, valid_tokens),
            kept,
        })
        .collect();
    SequenceTrace {
        sequence: b,
        valid_tokens,
        valid,
        q_prescale_exp,
        k_prescale_exp,
        q_saturated,
        k_saturated,
        heads,
    }
}

/// The trace of one layer before any sequence is added.
pub(crate) fn empty_layer_trace(
    p: &AttentionProblem,
    cfg: &HdpConfig,
    layer: usize,
) -> Result<LayerTrace> {
    let dims = p.dims();
    Ok(LayerTrace {
        layer,
        seq_len: dims.seq_len,
        head_dim: dims.head_dim,
        heads: dims.heads,
        block_size: cfg.block_size,
        q_format: cfg.q_format,
        score_mode: cfg.score_mode,
        threshold: Some(cfg.threshold),
        causal: p.causal(),
        sequences: Vec::with_capacity(dims.batch),
    })
}

/// Work of one head under the trace's counting convention (`docs/trace-format.md`).
pub(crate) fn head_counts(
    valid: &BlockMask,
    kept: &BlockMask,
    pruned: bool,
    cfg: &HdpConfig,
    n: usize,
    d: usize,
    valid_tokens: usize,
) -> OpCounts {
    let bs = cfg.block_size;
    let nb = valid.rows();
    let extent = |blk: usize| bs.min(n - blk * bs);
    let qk_bytes = (valid_tokens as u64 * d as u64 * cfg.q_format.bits as u64).div_ceil(8);
    let mut counts = OpCounts {
        q_bytes: qk_bytes,
        k_bytes: qk_bytes,
        ..OpCounts::default()
    };
    // Entries of the set blocks of row r: extent(r) x (bs x set blocks - the shortfall of a
    // ragged last column block when it is set). O(nb) per head via popcounts.
    let last = nb - 1;
    let ragged = (bs - extent(last)) as u64;
    let entries = |m: &BlockMask, r: usize| {
        extent(r) as u64
            * (bs as u64 * m.count_row(r) as u64 - if m.get(r, last) { ragged } else { 0 })
    };
    counts.int_macs = (0..nb).map(|r| entries(valid, r)).sum::<u64>() * d as u64;
    if pruned {
        if cfg.pruned_head_output == PrunedHeadOutput::MeanV {
            counts.v_bytes = valid_tokens as u64 * d as u64 * V_BITS / 8;
        }
        return counts;
    }
    let per_entry = match cfg.score_mode {
        ScoreMode::Approx => 2 * d,
        ScoreMode::Exact => 3 * d,
        ScoreMode::Float => d,
    } as u64;
    let kept_entries: u64 = (0..nb).map(|r| entries(kept, r)).sum();
    counts.frac_macs = kept_entries * per_entry;
    counts.exps = kept_entries;
    counts.sv_macs = kept_entries * d as u64;
    if cfg.compensates() {
        // The V sum over valid keys and one `c . sum` per query row (step 7's option).
        counts.sv_macs += 2 * valid_tokens as u64 * d as u64;
    }
    let mut used = vec![0u64; nb.div_ceil(64)];
    for r in 0..nb {
        kept.or_row_into(r, &mut used);
    }
    let used_blocks = hdp_core::bits::count_ones(&used) as u64;
    let used_rows = bs as u64 * used_blocks
        - if used[last / 64] >> (last % 64) & 1 == 1 {
            ragged
        } else {
            0
        };
    // Compensation reads every valid V row (for the sum).
    let v_rows = if cfg.compensates() {
        used_rows.max(valid_tokens as u64)
    } else {
        used_rows
    };
    counts.v_bytes = v_rows * d as u64 * V_BITS / 8;
    counts
}

/// Runs HDP attention on one layer. `layer` is recorded in the trace.
pub fn attention(p: &AttentionProblem, cfg: &ValidConfig, layer: usize) -> Result<HdpOutput> {
    let dims = p.dims();
    let (heads, n, d, bs) = (dims.heads, dims.seq_len, dims.head_dim, cfg.block_size);
    let fmt = cfg.q_format;
    let f = fmt.frac_bits;
    let nb = n.div_ceil(bs);
    let inv_sqrt_d = 1.0 / (d as f64).sqrt();
    let mut out = Tensor::zeros(p.q().shape().to_vec());
    let mut trace = empty_layer_trace(p, cfg, layer)?;

    for b in 0..dims.batch {
        let (valid, valid_tokens) = valid_blocks(p, b, bs);

        // Step 1: pre-scale, quantize, split.
        let (eq, ek) = prescale_exponents(p, cfg, b, heads, n, d);
        let (qc, q_sat) = quantize_sequence(p, p.q(), fmt, eq, b);
        let (kc, k_sat) = quantize_sequence(p, p.k(), fmt, ek, b);
        let split = |codes: &[i32]| -> (Vec<i64>, Vec<i64>) {
            codes
                .iter()
                .map(|&c| {
                    let (i, r) = fmt.split(c);
                    (i as i64, r as i64)
                })
                .unzip()
        };
        let (q_int, q_frac) = split(&qc);
        let (k_int, k_frac) = split(&kc);
        // Step 2's operands: the integer parts, or centred `2 x_int + 1`.
        let estimate = |codes: &[i32]| -> Vec<i64> {
            codes
                .iter()
                .map(|&c| fmt.estimate(c, cfg.centred) as i64)
                .collect()
        };
        let (q_est, k_est) = (estimate(&qc), estimate(&kc));
        let k_codes: Vec<i64> = kc.iter().map(|&c| c as i64).collect();
        let row = |h: usize, i: usize| (h * n + i) * d..(h * n + i + 1) * d;

        // Steps 2-4 per head: integer scores, block importance, row-balanced selection.
        let mut kept_masks = Vec::with_capacity(heads);
        let mut head_imp = Vec::with_capacity(heads);
        for h in 0..heads {
            let mut imp: Vec<Option<i64>> = vec![None; nb * nb];
            for i in 0..n {
                for j in 0..n {
                    if !p.entry_is_valid(b, i, j) {
                        continue;
                    }
                    let s_int: i64 = q_est[row(h, i)]
                        .iter()
                        .zip(&k_est[row(h, j)])
                        .map(|(a, c)| a * c)
                        .sum();
                    let slot = &mut imp[(i / bs) * nb + j / bs];
                    *slot = Some(match (cfg.importance, *slot) {
                        (BlockImportance::Sum, acc) => acc.unwrap_or(0) + s_int,
                        (BlockImportance::AbsSum, acc) => acc.unwrap_or(0) + s_int.abs(),
                        (BlockImportance::Max, acc) => acc.map_or(s_int, |a| a.max(s_int)),
                    });
                }
            }
            let scale = block_logit_scale(cfg, (eq, ek), d);
            let (kept, importance, mass) = decide_blocks(&imp, nb, cfg, scale);
            head_imp.push(importance);
            kept_masks.push((kept, mass));
        }

        // Step 5: early head pruning, from integer information only.
        let pruned = prune_heads(&head_imp, cfg.head_pruning);

        // Steps 6-7 for surviving heads.
        let score_scale = (2f64).powi(-(2 * f as i32 + eq + ek)) * inv_sqrt_d;
        let one = fmt.one() as i64;
        let mut seq = SequenceTrace {
            sequence: b,
            valid_tokens,
            valid,
            q_prescale_exp: eq,
            k_prescale_exp: ek,
            q_saturated: q_sat,
            k_saturated: k_sat,
            heads: Vec::with_capacity(heads),
        };
        let valid_tok: Vec<bool> = (0..n).map(|i| p.token_is_valid(b, i)).collect();
        for (h, (kept, mass)) in kept_masks.into_iter().enumerate() {
            let counts = head_counts(&seq.valid, &kept, pruned[h], cfg, n, d, valid_tokens);
            if pruned[h] {
                if cfg.pruned_head_output == PrunedHeadOutput::MeanV {
                    write_mean_v(p, &mut out, b, h, n, d, valid_tokens);
                }
            } else {
                let score = |i: usize, j: usize| -> f64 {
                    let (qi, kj) = (row(h, i), row(h, j));
                    match cfg.score_mode {
                        ScoreMode::Float => {
                            let qf = &p.q().data()[p.row_offset(b, h, i)..][..d];
                            let kf = &p.k().data()[p.row_offset(b, h, j)..][..d];
                            qf.iter()
                                .zip(kf)
                                .map(|(&a, &c)| a as f64 * c as f64)
                                .sum::<f64>()
                                * inv_sqrt_d
                        }
                        ScoreMode::Approx | ScoreMode::Exact => {
                            // Q.K = 2^f (Q_int.K + Q_frac.K_int) + Q_frac.K_frac  (hdp.md step 6)
                            let dot = |x: &[i64], y: &[i64]| -> i64 {
                                x.iter().zip(y).map(|(a, c)| a * c).sum()
                            };
                            let mut s = one
                                * (dot(&q_int[qi.clone()], &k_codes[kj.clone()])
                                    + dot(&q_frac[qi.clone()], &k_int[kj.clone()]));
                            if cfg.score_mode == ScoreMode::Exact {
                                s += dot(&q_frac[qi], &k_frac[kj]);
                            }
                            s as f64 * score_scale
                        }
                    }
                };
                let mut scores = vec![0.0f64; n];
                let mut ok = vec![false; n];
                let mut acc = vec![0.0f64; d];
                // Step 7's operands at the configured precision (bf16: P and V rounded).
                let bf16 = cfg.pv == PvPrecision::Bf16;
                let round = |x: f32| if bf16 { hdp_core::bf16_round(x) } else { x };
                // Compensation: sums of (rounded) V over each row's valid keys.
                let vsums = (!mass.is_empty()).then(|| {
                    let off = p.row_offset(b, h, 0);
                    let v: Vec<f32> = p.v().data()[off..off + n * d]
                        .iter()
                        .map(|&x| round(x))
                        .collect();
                    VSums::new(&v, &valid_tok, p.causal(), d)
                });
                for i in (0..n).filter(|&i| p.token_is_valid(b, i)) {
                    for j in 0..n {
                        ok[j] = kept.get(i / bs, j / bs) && p.entry_is_valid(b, i, j);
                        if ok[j] {
                            scores[j] = score(i, j);
                        }
                    }
                    if !masked_softmax(&mut scores, &ok) {
                        continue;
                    }
                    acc.fill(0.0);
                    // Compensation (step 7's option): kept weights `(1 - m) p - c`, plus
                    // `c` times the row's valid V sum.
                    let comp = vsums.as_ref().and_then(|vs| {
                        let n_kept = ok.iter().filter(|&&o| o).count();
                        row_compensation(mass[i / bs], vs.count(i), n_kept).map(|x| (x, vs))
                    });
                    if let Some(((_, c), vs)) = comp {
                        for (a, &x) in acc.iter_mut().zip(vs.sum(i)) {
                            *a = c * x;
                        }
                    }
                    for j in (0..n).filter(|&j| ok[j]) {
                        let pj = match comp {
                            Some(((keep, c), _)) => keep * scores[j] - c,
                            None => scores[j],
                        };
                        let pj = if bf16 { round(pj as f32) as f64 } else { pj };
                        for (a, &x) in acc
                            .iter_mut()
                            .zip(&p.v().data()[p.row_offset(b, h, j)..][..d])
                        {
                            *a += pj * round(x) as f64;
                        }
                    }
                    let o = &mut out.data_mut()[p.row_offset(b, h, i)..][..d];
                    for (o, &a) in o.iter_mut().zip(&acc) {
                        *o = a as f32;
                    }
                }
            }
            seq.heads.push(HeadTrace {
                head: h,
                importance: head_imp[h],
                pruned: pruned[h],
                kept,
                counts,
            });
        }
        trace.sequences.push(seq);
    }
    Ok(HdpOutput { output: out, trace })
}

/// Writes the mean of V over valid tokens into every valid query row of head `h`.
pub(crate) fn write_mean_v(
    p: &AttentionProblem,
    out: &mut Tensor,
    b: usize,
    h: usize,
    n: usize,
    d: usize,
    valid_tokens: usize,
) {
    let mut mean = vec![0.0f64; d];
    for j in (0..n).filter(|&j| p.token_is_valid(b, j)) {
        for (m, &x) in mean
            .iter_mut()
            .zip(&p.v().data()[p.row_offset(b, h, j)..][..d])
        {
            *m += x as f64 / valid_tokens as f64;
        }
    }
    for i in (0..n).filter(|&i| p.token_is_valid(b, i)) {
        for (o, &m) in out.data_mut()[p.row_offset(b, h, i)..][..d]
            .iter_mut()
            .zip(&mean)
        {
            *o = m as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Compensation;

    #[test]
    fn max_magnitude_is_the_largest_absolute_value() {
        let mut rng = hdp_core::rng::SplitMix64::new(3);
        for len in [0, 1, 7, 8, 31, 32, 33, 1000] {
            let mut xs: Vec<f32> = (0..len)
                .map(|_| (rng.uniform() as f32 - 0.5) * 1e3)
                .collect();
            if len > 2 {
                xs[len / 2] = -0.0;
                xs[1] = -f32::MIN_POSITIVE / 4.0;
            }
            let plain = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert_eq!(f32::from_bits(max_magnitude(&xs)), plain, "len {len}");
        }
    }

    #[test]
    fn pruned_mass_is_the_ratio_of_integer_weights() {
        // Weights halve per unit of gap: 2^20, 2^19, 2^18 below the maximum 3.
        let scale = LogitScale::new(std::f64::consts::LN_2, true);
        let m = pruned_mass([(3, true), (2, false), (1, false)].into_iter(), &scale);
        assert!((m - 3.0 / 7.0).abs() < 1e-12, "{m}");
        assert_eq!(pruned_mass([(5, true), (5, true)].into_iter(), &scale), 0.0);
        assert_eq!(pruned_mass(std::iter::empty(), &scale), 0.0);
    }

    /// With V the identity (d = N), output row i is row i's attention weights: compensation
    /// must scale the kept weights by `1 - m`, give every pruned valid key the same weight, in
    /// total `m`, with `m` the integer-weight ratio of the row's pruned entries (b = 1,
    /// recomputed here from the integer scores), and leave padding rows zero.
    #[test]
    fn compensation_moves_the_estimated_pruned_mass_to_the_mean_of_v() {
        let n = 24;
        let g = crate::synthetic::generate(&crate::synthetic::SyntheticSpec {
            batch: 1,
            heads: 1,
            seq_len: n,
            head_dim: n,
            valid_len: Some(21),
            causal: false,
            seed: 7,
        })
        .unwrap();
        let mut eye = vec![0.0f32; n * n];
        for i in 0..n {
            eye[i * n + i] = 1.0;
        }
        for causal in [false, true] {
            for bs in [1, 3] {
                let p = AttentionProblem::new(
                    g.q().clone(),
                    g.k().clone(),
                    Tensor::new(vec![1, 1, n, n], eye.clone()).unwrap(),
                    g.token_valid().map(|v| v.to_vec()),
                    causal,
                )
                .unwrap();
                let cfg = |compensate| {
                    HdpConfig {
                        block_size: bs,
                        threshold: RowThreshold::TopK { keep: 0.3, min: 1 },
                        pv: PvPrecision::F32,
                        compensate,
                        ..HdpConfig::default()
                    }
                    .validated()
                    .unwrap()
                };
                let off = attention(&p, &cfg(Compensation::Off), 0).unwrap();
                let on = attention(&p, &cfg(Compensation::MeanV), 0).unwrap();
                let kept = &off.trace.sequences[0].heads[0].kept;
                // Integer scores for the b = 1 mass.
                let c = cfg(Compensation::MeanV);
                let exps = prescale_exponents(&p, &c, 0, 1, n, n);
                let codes = |t: &Tensor, e| quantize_sequence(&p, t, c.q_format, e, 0).0;
                let (qc, kc) = (codes(p.q(), exps.0), codes(p.k(), exps.1));
                let s_int = |i: usize, j: usize| -> i64 {
                    (0..n)
                        .map(|t| {
                            c.q_format.estimate(qc[i * n + t], false) as i64
                                * c.q_format.estimate(kc[j * n + t], false) as i64
                        })
                        .sum()
                };
                let scale = block_logit_scale(&c, exps, n);
                for i in 0..n {
                    let w = &on.output.data()[i * n..(i + 1) * n];
                    let w0 = &off.output.data()[i * n..(i + 1) * n];
                    if !p.token_is_valid(0, i) {
                        assert!(w.iter().all(|&x| x == 0.0));
                        continue;
                    }
                    let valid: Vec<usize> = (0..n).filter(|&j| p.entry_is_valid(0, i, j)).collect();
                    let (k_set, p_set): (Vec<usize>, Vec<usize>) =
                        valid.iter().partition(|&&j| kept.get(i / bs, j / bs));
                    let m: f64 = p_set.iter().map(|&j| w[j] as f64).sum();
                    for &j in &p_set {
                        assert!((w[j] - w[p_set[0]]).abs() < 1e-6, "pruned weights equal");
                    }
                    for &j in &k_set {
                        let want = (1.0 - m) * w0[j] as f64;
                        assert!(
                            (w[j] as f64 - want).abs() < 1e-5,
                            "kept {j}: {} vs {want}",
                            w[j]
                        );
                    }
                    if p_set.is_empty() {
                        assert_eq!(w, w0);
                    } else if bs == 1 {
                        let max = valid.iter().map(|&j| s_int(i, j)).max().unwrap();
                        let mw = scale.mass_weights();
                        let wt = |j: usize| mw.weight((max - s_int(i, j)) as u32) as f64;
                        let total: f64 = valid.iter().map(|&j| wt(j)).sum();
                        let pruned: f64 = p_set.iter().map(|&j| wt(j)).sum();
                        assert!(
                            (m - pruned / total).abs() < 1e-5,
                            "row {i}: m {m} vs {}",
                            pruned / total
                        );
                    } else {
                        assert!(m > 0.0 && m < 1.0, "row {i}: m {m}");
                    }
                }
            }
        }
    }

    #[test]
    fn valid_blocks_equal_their_definition() {
        // Definition: block (r, c) is valid iff some valid query i of block r and valid key j
        // of block c exist with (not causal or j <= i). Padding patterns at the start, in the
        // middle and at the end; block sizes that do and do not divide N; both mask kinds.
        let n = 150;
        let pads: [Box<dyn Fn(usize) -> bool>; 4] = [
            Box::new(|_| true),
            Box::new(|i| i < 97),
            Box::new(|i| i % 7 != 3 && !(40..70).contains(&i)),
            Box::new(|i| i >= 130),
        ];
        for pad in &pads {
            let flags: Vec<bool> = (0..n).map(pad).collect();
            for causal in [false, true] {
                let t = || Tensor::zeros(vec![1, 1, n, 4]);
                let p = AttentionProblem::new(t(), t(), t(), Some(flags.clone()), causal).unwrap();
                for bs in [1, 3, 8, 64, 70] {
                    let (valid, tokens) = valid_blocks(&p, 0, bs);
                    assert_eq!(tokens, flags.iter().filter(|&&v| v).count());
                    let nb = n.div_ceil(bs);
                    for r in 0..nb {
                        for c in 0..nb {
                            let want = (r * bs..((r + 1) * bs).min(n)).any(|i| {
                                flags[i]
                                    && (c * bs..((c + 1) * bs).min(n))
                                        .any(|j| flags[j] && (!causal || j <= i))
                            });
                            assert_eq!(valid.get(r, c), want, "bs {bs} causal {causal} ({r}, {c})");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn forced_blocks_are_the_blocks_holding_sink_keys_or_band_entries() {
        for (n, bs, sink, local) in [
            (1usize, 1usize, 0usize, 0usize),
            (10, 1, 2, 3),
            (37, 4, 5, 1),
            (37, 4, 0, 6),
            (50, 7, 9, 15),
            (50, 16, 1, 17),
            (64, 8, 100, 100),
            (33, 32, 3, 2),
        ] {
            let cfg = HdpConfig {
                block_size: bs,
                keep_sink: sink,
                keep_local: local,
                ..HdpConfig::default()
            };
            let nb = n.div_ceil(bs);
            let f = Forced::new(&cfg, nb);
            assert_eq!(f.any(), sink > 0 || local > 0);
            for r in 0..nb {
                let got: Vec<usize> = f.cols(r).collect();
                let rows = r * bs..((r + 1) * bs).min(n);
                let want: Vec<usize> = (0..nb)
                    .filter(|&c| {
                        let keys = c * bs..((c + 1) * bs).min(n);
                        keys.clone().any(|j| j < sink)
                            || rows
                                .clone()
                                .any(|i| keys.clone().any(|j| i.abs_diff(j) < local))
                    })
                    .collect();
                assert_eq!(got, want, "n {n} b {bs} sink {sink} local {local} row {r}");
            }
        }
    }

    #[test]
    fn forced_blocks_are_kept_and_counted() {
        let p = crate::synthetic::generate(&crate::synthetic::SyntheticSpec {
            batch: 1,
            heads: 2,
            seq_len: 40,
            head_dim: 16,
            valid_len: Some(36),
            causal: false,
            seed: 4,
        })
        .unwrap();
        let base = HdpConfig {
            threshold: RowThreshold::TopK { keep: 0.01, min: 1 },
            ..HdpConfig::default()
        };
        let plain = attention(&p, &base.validated().unwrap(), 0).unwrap();
        let cfg = HdpConfig {
            keep_sink: 2,
            keep_local: 2,
            ..base
        };
        let forced = attention(&p, &cfg.validated().unwrap(), 0).unwrap();
        let s = &forced.trace.sequences[0];
        for h in &s.heads {
            for i in 0..36usize {
                for j in 0..36usize {
                    if j < 2 || i.abs_diff(j) < 2 {
                        assert!(h.kept.get(i, j), "head {} ({i}, {j})", h.head);
                    }
                }
                // Padding is never kept, forced or not.
                assert!((36..40).all(|j| !h.kept.get(i, j)));
            }
            assert!(plain.trace.sequences[0].heads[h.head]
                .kept
                .is_subset_of(&h.kept));
        }
        assert!(forced.trace.summary().kept_blocks > plain.trace.summary().kept_blocks);
    }

    #[test]
    fn mass_mantissas_are_the_rounded_powers() {
        for (j, &m) in MASS_MANTISSAS.iter().enumerate() {
            assert_eq!(m, (TOPP_ONE * (-(j as f64) / 16.0).exp2()).round() as u32);
        }
    }

    /// The mass weights: exactly `M[u % 16] >> (u / 16)` by the documented formula (computed
    /// here in u64), within 2.5% of `2^20 exp(-scale gap)` while above 2^10 (where the shift
    /// has not yet eaten the mantissa's precision), never increasing with the gap, 0 from `G` on
    /// and for any larger gap (masked entries), for scales from tiny to huge.
    #[test]
    fn mass_weights_follow_the_exponential_by_shift_and_mantissa() {
        for scale in [1e-9, 1e-4, 0.011, 0.044, 0.177, 0.7, 5.0, 1e3, 1e6] {
            let mw = MassWeights::new(scale);
            let c = (scale / std::f64::consts::LN_2 * 1_048_576.0)
                .round()
                .clamp(1.0, (i32::MAX - (1 << 16)) as f64) as u64;
            assert_eq!(mw.c as u64, c);
            assert!(mw.g as u64 * c + (1 << 15) < 1 << 32, "scale {scale}");
            assert_eq!(mw.weight(0), 1 << 20);
            assert_eq!(mw.weight(mw.g), 0, "scale {scale}: G weighs 0");
            assert!(
                mw.g == 1 || mw.weight(mw.g - 1) > 0,
                "scale {scale}: G is the first 0"
            );
            let mut last = u32::MAX;
            let gaps = (0..4000u32).chain([mw.g, mw.g + 1, 1 << 24, u32::MAX - 5, u32::MAX]);
            // Degenerate scales never divide by zero: the flattest weights.
            for bad in [f64::NAN, 0.0, -1.0, f64::INFINITY] {
                let w = MassWeights::new(bad);
                assert!(w.c >= 1 && w.weight(0) == 1 << 20, "{bad}");
            }
            for gap in gaps {
                let w = mw.weight(gap);
                let u = (gap.min(mw.g) as u64 * c + (1 << 15)) >> 16;
                let want = if u / 16 >= 21 {
                    0
                } else {
                    MASS_MANTISSAS[(u % 16) as usize] >> (u / 16)
                };
                assert_eq!(w, want, "scale {scale} gap {gap}");
                if gap < 4000 {
                    assert!(w <= last, "scale {scale} gap {gap}: never increases");
                    last = w;
                    let exact = TOPP_ONE * (-scale * gap as f64).exp();
                    if exact > 1024.0 {
                        assert!(
                            (w as f64 / exact - 1.0).abs() < 0.025,
                            "scale {scale} gap {gap}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn topp_weight_table_equals_the_weights_it_caches() {
        for scale in [1e-9, 1e-3, 0.05, 1.0, 30.0] {
            let (table, plain) = (LogitScale::new(scale, true), LogitScale::new(scale, false));
            assert_eq!(table.weight(0), TOPP_ONE as u64);
            let mut last = u64::MAX;
            for g in (0..200_000i64).step_by(7) {
                let w = table.weight(g);
                assert_eq!(w, plain.weight(g), "scale {scale} gap {g}");
                assert!(w <= last, "weights never increase with the gap");
                last = w;
            }
            // A complete table ends in its first zero.
            if let Some(t) = table.complete_table() {
                assert_eq!(*t.last().unwrap(), 0);
                assert!(t[..t.len() - 1].iter().all(|&w| w > 0));
            }
        }
        assert!(LogitScale::new(1e-9, true).complete_table().is_none());
    }

    #[test]
    fn topp_keeps_the_fewest_blocks_reaching_the_mass() {
        // Masses exp(0)=1, exp(-1)=0.37 (x2), exp(-3)=0.05: total 1.79.
        let desc = [(10i64, 1usize), (9, 2), (7, 1)];
        assert_eq!(topp_count(&desc, &LogitScale::new(1.0, true), 0.5), 1); // 1 / 1.79 = 0.56
        assert_eq!(topp_count(&desc, &LogitScale::new(1.0, true), 0.6), 2);
        assert_eq!(topp_count(&desc, &LogitScale::new(1.0, true), 0.9), 3);
        assert_eq!(topp_count(&desc, &LogitScale::new(1.0, true), 1.0), 4);
        // A tiny scale makes every block equally likely: top-p becomes top-k by fraction.
        assert_eq!(topp_count(&desc, &LogitScale::new(1e-12, true), 0.5), 2);
        // A huge scale puts all the mass on the maximum.
        assert_eq!(topp_count(&desc, &LogitScale::new(1e6, true), 0.99), 1);
        assert_eq!(topp_count(&[], &LogitScale::new(1.0, true), 0.9), 0);
        // The same as selecting from the (column, importance) row.
        let row = [(0usize, 9i64), (1, 10), (2, 7), (3, 9)];
        assert_eq!(
            select_blocks_scaled(&row, RowThreshold::TopP { mass: 0.6 }, 1.0),
            vec![0, 1]
        );
        assert_eq!(
            value_counts([3i64, 5, 3, 1].into_iter()),
            vec![(5, 1), (3, 2), (1, 1)]
        );
    }

    #[test]
    fn mean_max_keeps_at_or_above_threshold() {
        let row = [(0, 1), (1, 5), (2, 3), (3, -1)];
        // mean 2, max 5
        assert_eq!(
            select_blocks(&row, RowThreshold::MeanMax { rho: 0.0 }),
            vec![1, 2]
        );
        assert_eq!(
            select_blocks(&row, RowThreshold::MeanMax { rho: 1.0 }),
            vec![1]
        );
        assert_eq!(select_blocks(&row, RowThreshold::KeepAll), vec![0, 1, 2, 3]);
    }

    #[test]
    fn top_k_rounds_up_and_breaks_ties_by_column() {
        let row: Vec<(usize, i64)> = (0..10).map(|c| (c, 7)).collect();
        assert_eq!(
            select_blocks(&row, RowThreshold::TopK { keep: 0.3, min: 1 }),
            vec![0, 1, 2]
        );
        assert_eq!(
            select_blocks(&row, RowThreshold::TopK { keep: 0.31, min: 1 }).len(),
            4
        );
        assert_eq!(
            select_blocks(&row, RowThreshold::TopK { keep: 1e-6, min: 1 }).len(),
            1
        );
        // The floor: at least `min`, never more than the row.
        assert_eq!(
            select_blocks(&row, RowThreshold::TopK { keep: 0.3, min: 5 }),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(topk_count(0.3, 4, 3), 3);
        assert_eq!(topk_count(0.3, 4, 100), 30);
        assert_eq!(topk_count(0.3, 0, 2), 1);
    }

    #[test]
    fn head_pruning_keeps_the_best_even_if_negative() {
        assert_eq!(
            prune_heads(&[-5.0, -9.0], HeadPruning::Tau { tau: 0.5 }),
            vec![false, true]
        );
        assert_eq!(
            prune_heads(&[1.0, 10.0, 4.0], HeadPruning::Tau { tau: 0.4 }),
            vec![true, false, false]
        );
        assert_eq!(
            prune_heads(&[1.0, 10.0, 4.0], HeadPruning::TopK { heads: 1 }),
            vec![true, false, true]
        );
        assert_eq!(
            prune_heads(&[3.0, 3.0], HeadPruning::TopK { heads: 5 }),
            vec![false, false]
        );
    }
}
