//! The integer pass (steps 2-5): exact `S_int` tiles, block importances, row decisions.

use super::*;

/// Scratch of the integer pass.
#[derive(Default)]
pub(super) struct PassScratch {
    pub(super) s: Vec<i32>,
    pub(super) imp: Vec<i64>,
    pub(super) ok: Vec<bool>,
    pub(super) row: RowScratch,
    pub(super) words: Vec<u64>,
    pub(super) bias: Vec<i32>,
    pub(super) search: RowSearch,
}

/// State of the row decisions reused across rows: top-p's buffers (allocating them per row
/// was a third of top-p's time), and the normal model's quantile and density for the last
/// `(k, len)` of the top-k search (rows of a head share them; they change only with masks or
/// causal prefixes; the transcendental functions were about 8% of the decisions' time at
/// N = 512).
#[derive(Default)]
pub(super) struct RowSearch {
    /// Top-p's buffers: counts per gap below the row's maximum (or per value, for
    /// untabulated scales) and the (value, count) list.
    counts: Vec<u32>,
    desc: Vec<(i64, usize)>,
    /// The row tail's bits of the entries equal to the threshold.
    eq: Vec<u64>,
    weights: Vec<u32>,
    last_gap: i64,
    key: (usize, usize),
    /// `z_k`, and the standard normal density at it.
    z: f64,
    phi: f64,
}

impl RowSearch {
    fn get(&mut self, k: usize, len: usize) -> (f64, f64) {
        if self.key != (k, len) {
            let z = normal_quantile(1.0 - (k as f64 - 0.5) / len as f64);
            self.key = (k, len);
            self.z = z;
            self.phi = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
        }
        (self.z, self.phi)
    }
}

/// A masked entry of a one-block row (valid integer scores are far inside +-2^24).
pub(crate) const MASKED: i32 = i32::MIN;

/// Count, maximum and minimum (over unmasked entries; [`MASKED`] and `i32::MAX` when there
/// are none), exact sum and sum of squares of a row. The squares only seed the top-k search
/// (any rounding of them gives the same decisions), so the tiers sum them in f32 lanes in
/// their own order.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Moments {
    pub(crate) len: u32,
    pub(crate) max: i32,
    pub(crate) min: i32,
    pub(crate) sum: i64,
    pub(crate) sum_sq: f64,
}

impl Moments {
    /// The moments of a finished row (the plain definition).
    pub(crate) fn of(row: &[i32]) -> Moments {
        let (len, max, min, sum, sum_sq) = row_moments(row);
        Moments {
            len,
            max,
            min,
            sum,
            sum_sq,
        }
    }
}

/// The first pass of a one-entry-block row's decision, its plain definition: the row finished
/// ([`finish_row_body`]) and its [`Moments`].
pub(crate) fn finish_moments_portable(
    row: &mut [i32],
    bias: &[i32],
    abs: bool,
    valid: Option<&[bool]>,
) -> Moments {
    finish_row_body(row, bias, abs, valid);
    Moments::of(row)
}

/// [`finish_moments_portable`] on the best code for `simd`; `bound` is at least every finished
/// entry's magnitude (rows past [`crate::simd::FIRST_BOUND`] take the portable code).
#[inline(always)]
pub(crate) fn finish_moments(
    simd: Isa,
    row: &mut [i32],
    bias: &[i32],
    abs: bool,
    valid: Option<&[bool]>,
    bound: i64,
) -> Moments {
    #[cfg(target_arch = "x86_64")]
    if bound < crate::simd::FIRST_BOUND {
        if simd == Isa::Avx512Vnni {
            // SAFETY: the AVX-512 tier is only produced after detecting avx512f/bw/vl and fma.
            return unsafe { crate::simd::finish_moments_avx512(row, bias, abs, valid) };
        }
        if simd.avx2() {
            // SAFETY: tiers above portable are only produced after detecting avx2, fma and popcnt.
            return unsafe { crate::simd::finish_moments_avx2(row, bias, abs, valid) };
        }
    }
    let _ = (simd, bound);
    finish_moments_portable(row, bias, abs, valid)
}

/// The plain [`Moments`], by two passes.
#[inline(always)]
fn row_moments(row: &[i32]) -> (u32, i32, i32, i64, f64) {
    let (mut len, mut max, mut min) = (0u32, MASKED, i32::MAX);
    for &v in row {
        let ok = v != MASKED;
        len += ok as u32;
        max = max.max(v);
        min = min.min(if ok { v } else { i32::MAX });
    }
    // i32 lanes when no partial sum can overflow.
    let narrow = (row.len() as i64) * (max as i64).abs().max((min as i64).abs()) < i32::MAX as i64;
    const L: usize = 16;
    let mut sq = [0f32; L];
    let mut chunks = row.chunks_exact(L);
    let mut sum = 0i64;
    if narrow {
        let mut s = [0i32; L];
        for ch in &mut chunks {
            for j in 0..L {
                let x = if ch[j] == MASKED { 0 } else { ch[j] };
                s[j] += x;
                sq[j] += x as f32 * x as f32;
            }
        }
        sum += s.iter().map(|&x| x as i64).sum::<i64>();
    } else {
        let mut s = [0i64; L];
        for ch in &mut chunks {
            for j in 0..L {
                let x = if ch[j] == MASKED { 0 } else { ch[j] };
                s[j] += x as i64;
                sq[j] += x as f32 * x as f32;
            }
        }
        sum += s.iter().sum::<i64>();
    }
    let mut q = sq.iter().map(|&x| x as f64).sum::<f64>();
    for &v in chunks.remainder().iter().filter(|&&v| v != MASKED) {
        sum += v as i64;
        q += v as f64 * v as f64;
    }
    (len, max, min, sum, q)
}

/// Entries `>= t` and entries `== t` in one pass (so one pass tests two thresholds, `t` and
/// `t + 1`); masked entries never count (t > [`MASKED`]).
#[inline(always)]
fn count_ge_eq(row: &[i32], t: i32) -> (usize, usize) {
    let (mut ge, mut eq) = (0u32, 0u32);
    for &v in row {
        ge += (v >= t) as u32;
        eq += (v == t) as u32;
    }
    (ge as usize, eq as usize)
}

/// Top-p's threshold for a one-entry-block row with tabulated weights: `(e, eq_left)`, keep
/// `v > e` and the first `eq_left` entries `== e`, the same count as [`hdp::topp_count`] on
/// the row's value list (the same integer weights, summed in the same groups). Only entries
/// within the table's gaps below the maximum weigh anything, so one pass counts the entries
/// per gap over that window (a few hundred gaps, against a value range often several times
/// wider), the total is the counts' dot product with the table, and the walk down from the
/// maximum stops where the kept weight reaches the target.
#[inline(always)]
fn topp_threshold(
    row: &[i32],
    max: i32,
    min: i32,
    table: &[u32],
    mass: f64,
    counts: &mut Vec<u32>,
) -> (i32, usize) {
    // The table ends in its first 0: gaps from `zero` on weigh nothing; no entry is more
    // than `max - min` below the maximum. (Branch-free counting into a spill bin and four
    // interleaved sub-histograms measured slower: clearing them costs more than the branch.)
    let zero = (table.len() - 1).min((max as i64 - min as i64) as usize + 1);
    counts.clear();
    counts.resize(zero, 0);
    for &v in row {
        // Masked entries (i32::MIN) are far past the window.
        let gap = (max as i64 - v as i64) as u64;
        if gap < zero as u64 {
            counts[gap as usize] += 1;
        }
    }
    let counts = &counts[..];
    let total: u64 = counts
        .iter()
        .zip(table)
        .map(|(&c, &w)| c as u64 * w as u64)
        .sum();
    let target = hdp::topp_target(total, mass);
    let mut acc = 0u64;
    for (gap, (&c, &w)) in counts.iter().zip(table).enumerate() {
        let group = c as u64 * w as u64;
        if c > 0 && acc + group >= target {
            let need = (target - acc).div_ceil(w as u64) as usize;
            return (max - gap as i32, need.min(c as usize));
        }
        acc += group;
    }
    unreachable!("the target is at most the total")
}

/// Rows shorter than this sum their weights in u32 lanes (`len 2^20 < 2^32`) and search.
const SEARCH_ROW_MAX: usize = 4096;

/// Each entry's weight into `w` (0 at masked entries and past the table) and their total;
/// `row.len() < SEARCH_ROW_MAX`.
#[inline(always)]
fn topp_weights(row: &[i32], max: i32, table: &[u32], w: &mut [u32]) -> u32 {
    let zero = (table.len() - 1) as u32;
    let mut total = 0u32;
    for (x, &v) in w.iter_mut().zip(row) {
        // Valid scores are within +-2^24, so `max - v` fits u32 and a masked entry's
        // (i32::MIN) wraps above 2^31 - 2^24: past every table. 32-bit lanes gather 16 at a
        // time where 64-bit indices gathered 8.
        let gap = (max.wrapping_sub(v) as u32).min(zero) as usize;
        // SAFETY: gap <= zero = table.len() - 1.
        *x = unsafe { *table.get_unchecked(gap) };
        total += *x;
    }
    total
}

/// The weight of the entries `>= t`, and the weight and count of those `== t`.
#[inline(always)]
fn weight_ge_eq(row: &[i32], w: &[u32], t: i32) -> (u32, u32, u32) {
    let (mut m, mut me, mut ce) = (0u32, 0u32, 0u32);
    for (&v, &x) in row.iter().zip(w) {
        m += if v >= t { x } else { 0 };
        me += if v == t { x } else { 0 };
        ce += (v == t) as u32;
    }
    (m, me, ce)
}

/// [`topp_threshold`] by search (rows under [`SEARCH_ROW_MAX`]): one pass for the weights and
/// their total, then weighted counting passes at guessed thresholds (`M(t)`, the weight of
/// the entries `>= t`, falls as `t` rises): first the last row's gap below its maximum, then
/// interpolation of `log M` across the bracket, a bisection after two steps that fail to
/// halve it.
#[inline(always)]
fn topp_search(
    row: &[i32],
    max: i32,
    min: i32,
    table: &[u32],
    mass: f64,
    lambda: f64,
    g: &mut RowSearch,
) -> (i32, usize) {
    g.weights.resize(row.len(), 0);
    let w = &mut g.weights[..row.len()];
    let total = topp_weights(row, max, table, w) as u64;
    let target = hdp::topp_target(total, mass);
    // Invariant: M(lo) >= target > M(hi). The weight below t, `total - M(t)`, grows about
    // like exp(lambda t) (exponential weights over a locally even spread of entries), so
    // guesses come from the line through the last two points of `ln(total - M)` against t
    // (the first from the last row's answer, the second with slope lambda), clamped into the
    // bracket; a bisection after two steps that fail to halve it.
    let (mut lo, mut hi) = (min as i64, max as i64 + 1);
    let y_target = ((total - target) as f64 + 0.5).ln();
    let mut guess = max as i64 - g.last_gap;
    let mut last: Option<(i64, f64)> = None;
    let mut misses = 0;
    let mut found = None;
    while hi - lo > 1 {
        let width = hi - lo;
        let mid = if misses >= 2 {
            misses = 0;
            lo + width / 2
        } else {
            guess.clamp(lo + 1, hi - 1)
        };
        let (m, me, ce) = weight_ge_eq(row, w, mid as i32);
        let (m, me) = (m as u64, me as u64);
        if m >= target && m - me < target {
            found = Some((mid, m - me, ce));
            break;
        } else if m >= target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
        misses = if 2 * (hi - lo) > width { misses + 1 } else { 0 };
        let y = ((total - m) as f64 + 0.5).ln();
        let slope = match last {
            Some((t0, y0)) if t0 != mid && y0 != y => (y - y0) / (mid - t0) as f64,
            _ => lambda,
        };
        guess = mid + ((y_target - y) / slope.max(1e-12)).round() as i64;
        last = Some((mid, y));
    }
    let (t, above, eq_c) = found.unwrap_or_else(|| {
        let (m, me, ce) = weight_ge_eq(row, w, lo as i32);
        (lo, (m - me) as u64, ce)
    });
    g.last_gap = max as i64 - t;
    let wt = table[((max as i64 - t) as usize).min(table.len() - 1)] as u64;
    let need = (target - above).div_ceil(wt.max(1)) as usize;
    (t as i32, need.min(eq_c as usize))
}

/// The standard normal quantile `Phi^-1(p)`, to about 1e-3 (Abramowitz-Stegun 26.2.23; a
/// search's first guess only), p clamped into [1e-9, 1 - 1e-9].
fn normal_quantile(p: f64) -> f64 {
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    let (q, sign) = if p < 0.5 { (p, -1.0) } else { (1.0 - p, 1.0) };
    let t = (-2.0 * q.ln()).sqrt();
    let z = t
        - (2.515517 + 0.802853 * t + 0.010328 * t * t)
            / (1.0 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t);
    sign * z
}

/// Rows of at most this many entries find top-k's threshold by bisection of the value range
/// instead of the model-guided search.
const BISECT_ROW: usize = 128;

/// Step 4 for a block-row of one-entry blocks (b = 1), the entries' `S_int` in `row`
/// ([`MASKED`] where masked): the same decision as [`HeadDecider::row`], by whole-row passes
/// that vectorize. Top-k finds its threshold by a safeguarded search of counting passes at
/// model-guided guesses (below); top-p reads it off the row's value counts, the same list the
/// reference decides from. Ties go to the lower column. Writes the kept columns to `words`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn decide_b1_body(
    simd: Isa,
    row: &[i32],
    threshold: RowThreshold,
    moments: Moments,
    logit_scale: &hdp::LogitScale,
    kept: hdp::KeptSums,
    mass: Option<hdp::MassWeights>,
    words: &mut [u64],
    search: &mut RowSearch,
) -> RowStats {
    words.fill(0);
    // The count, extremes, sum and sum of squares, from the row's first pass.
    let Moments {
        len,
        max,
        min,
        sum,
        sum_sq,
    } = moments;
    if len == 0 {
        return RowStats::default();
    }
    let len = len as usize;
    // Kept: v > e, plus the first `eq_left` entries with v == e.
    let (e, mut eq_left) = match threshold {
        RowThreshold::KeepAll => (MASKED, 0),
        RowThreshold::MeanMax { rho } => {
            let mean = sum as f64 / len as f64;
            let t = mean + rho * (max as f64 - mean);
            // For integers, v as f64 >= t <=> v >= ceil(t); the maximum is always kept.
            let first = t.ceil().clamp(min as f64, max as f64) as i32;
            (first - 1, 0)
        }
        RowThreshold::TopP { mass } if logit_scale.complete_table().is_some() => {
            let table = logit_scale.complete_table().expect("checked by the guard");
            if row.len() < SEARCH_ROW_MAX {
                topp_search(row, max, min, table, mass, logit_scale.scale(), search)
            } else {
                topp_threshold(row, max, min, table, mass, &mut search.counts)
            }
        }
        RowThreshold::TopP { mass } => {
            // Weights not tabulated (scales so small that no gap weighs 0 within the table):
            // the same (value, count) list as the reference gives the count, and the
            // threshold is read off the same list.
            let valid = row.iter().filter(|&&v| v != MASKED).map(|&v| v as i64);
            let g = &mut *search;
            hdp::value_counts_into(
                valid,
                len,
                min as i64,
                max as i64,
                &mut g.counts,
                &mut g.desc,
            );
            let k = hdp::topp_count(&g.desc, logit_scale, mass);
            let mut above = 0usize;
            let mut e = max;
            for &(v, c) in &g.desc {
                if above + c >= k {
                    e = v as i32;
                    break;
                }
                above += c;
            }
            (e, k - above)
        }
        RowThreshold::TopK { keep, min: floor } => {
            let k = hdp::topk_count(keep, floor, len);
            // Invariant: count(v >= lo) >= k > count(v >= hi) = above; the answer
            // is the largest t with count(v >= t) >= k. Each step is one counting pass at a
            // guess g giving count(v >= g) and count(v >= g + 1) together: first the row's
            // normal model (mean + sd z_k), then secant steps through the last two counts
            // (Newton on the model's density after the first), all clamped inside the
            // bracket; a guess that lands on the answer ends the search in that pass. After
            // two steps in a row that fail to halve the bracket, one bisection, so the worst
            // case stays within three times the bisection's count (measured on synthetic
            // rows of 2,048: 2.8 passes per row, against 7.2 with linear interpolation over
            // the value range; `ARCHITECTURE.md`).
            let (mut lo, mut hi) = (min as i64, max as i64 + 1);
            let mut above = 0usize;
            // Short rows bisect: a pass over them costs less than the model's arithmetic
            // (a square root and a division per step, waited on).
            let short = row.len() <= BISECT_ROW;
            let (mut guess, mut slope) = if short {
                (f64::NAN, 0.0)
            } else {
                let mean = sum as f64 / len as f64;
                let sd = (sum_sq / len as f64 - mean * mean).max(0.0).sqrt().max(0.5);
                let (z, phi) = search.get(k, len);
                // Counts fall by about `slope` per unit of t near the guess.
                (mean + sd * z, len as f64 * phi / sd)
            };
            let mut misses = 0;
            let mut last: Option<(i64, usize)> = None;
            while hi - lo > 1 {
                let width = hi - lo;
                let mid = if misses >= 2 {
                    misses = 0;
                    lo + width / 2
                } else if guess.is_finite() {
                    (guess.round() as i64).clamp(lo + 1, hi - 1)
                } else {
                    lo + width / 2
                };
                let (c, eq) = count_ge_eq(row, mid as i32);
                if c >= k && c - eq < k {
                    // count(v >= mid) >= k > count(v >= mid + 1): the answer.
                    lo = mid;
                    hi = mid + 1;
                    above = c - eq;
                    break;
                } else if c >= k {
                    lo = mid + 1;
                } else {
                    hi = mid;
                    above = c;
                }
                if short {
                    continue;
                }
                misses = if 2 * (hi - lo) > width { misses + 1 } else { 0 };
                if let Some((t0, c0)) = last {
                    if t0 != mid && c0 != c {
                        slope = (c0 as f64 - c as f64) / (mid - t0) as f64;
                    }
                }
                // Aim between the last entry kept and the first dropped.
                guess = mid as f64 + (c as f64 - (k as f64 - 0.5)) / slope.max(1e-9);
                last = Some((mid, c));
            }
            debug_assert!(hi - lo == 1);
            (lo as i32, k - above)
        }
    };
    // One pass for the kept bits, the kept sums and compensation's weights.
    search.eq.clear();
    search.eq.resize(words.len(), 0);
    let bound = (max as i64).abs().max((min as i64).abs());
    let tail = row_tail(simd, row, e, max, bound, kept, mass, words, &mut search.eq);
    let mut taken = 0i64;
    for (w, &eq) in words.iter_mut().zip(&search.eq) {
        if eq_left == 0 {
            break;
        }
        let mut eq = eq;
        let mut take = 0u64;
        if eq != 0 {
            if (eq.count_ones() as usize) <= eq_left {
                take = eq;
            } else {
                for _ in 0..eq_left {
                    let low = eq & eq.wrapping_neg();
                    take |= low;
                    eq ^= low;
                }
            }
            eq_left -= take.count_ones() as usize;
            taken += take.count_ones() as i64;
        }
        *w |= take;
    }
    let w_tie = match mass {
        Some(mw) if taken > 0 => taken as u64 * mw.weight(max.wrapping_sub(e) as u32) as u64,
        _ => 0,
    };
    RowStats {
        len,
        sum,
        max: max as i64,
        kept_sum: if kept.sum {
            tail.kept_sum + e as i64 * taken
        } else {
            0
        },
        kept_pos: if kept.pos {
            tail.kept_pos + (e.max(0) as i64) * taken
        } else {
            0
        },
        w_total: tail.w_total,
        w_kept: tail.w_kept + w_tie,
    }
}

/// What one pass over a decided row gathers (`row_tail`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tail {
    /// Sums of the entries `v > e` and of their positive parts.
    pub(crate) kept_sum: i64,
    pub(crate) kept_pos: i64,
    /// Compensation's weights ([`hdp::MassWeights`]) of every entry (0 at masked ones) and of
    /// the entries `v > e`; 0 without weights.
    pub(crate) w_total: u64,
    pub(crate) w_kept: u64,
}

/// The last pass over a decided row (threshold `e`; `max`, the maximum of its unmasked
/// entries, of which there is at least one): bits of `v > e` into
/// `gt` and of `v == e` into `eq` (both cleared first), the kept sums asked for (0 otherwise), and with `mass` the
/// weights of compensation's pruned-mass estimate ([`MASKED`] entries weigh 0). The plain definition; the AVX2 and
/// AVX-512 tiers (`simd::row_tail_avx2`/`_avx512`) compute the same integers.
pub(crate) fn row_tail_portable(
    row: &[i32],
    e: i32,
    max: i32,
    kept: hdp::KeptSums,
    mass: Option<hdp::MassWeights>,
    gt: &mut [u64],
    eq: &mut [u64],
) -> Tail {
    let mut t = Tail::default();
    for (j, &v) in row.iter().enumerate() {
        let bit = 1u64 << (j % 64);
        if v == e {
            eq[j / 64] |= bit;
        }
        let w = match mass {
            Some(mw) if v != MASKED => mw.weight(max.wrapping_sub(v) as u32) as u64,
            _ => 0,
        };
        t.w_total += w;
        if v > e {
            gt[j / 64] |= bit;
            if kept.sum {
                t.kept_sum += v as i64;
            }
            if kept.pos {
                t.kept_pos += (v as i64).max(0);
            }
            t.w_kept += w;
        }
    }
    t
}

/// [`row_tail_portable`] on the best code for `simd`; `bound` is at least every unmasked
/// entry's magnitude (rows past [`crate::simd::TAIL_BOUND`] take the portable code).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn row_tail(
    simd: Isa,
    row: &[i32],
    e: i32,
    max: i32,
    bound: i64,
    kept: hdp::KeptSums,
    mass: Option<hdp::MassWeights>,
    gt: &mut [u64],
    eq: &mut [u64],
) -> Tail {
    #[cfg(target_arch = "x86_64")]
    if bound < crate::simd::TAIL_BOUND {
        if simd == Isa::Avx512Vnni {
            // SAFETY: the AVX-512 tier is only produced after detecting avx512f.
            return unsafe { crate::simd::row_tail_avx512(row, e, max, kept, mass, gt, eq) };
        }
        if simd.avx2() {
            // SAFETY: tiers above portable are only produced after detecting avx2, fma and popcnt.
            return unsafe { crate::simd::row_tail_avx2(row, e, max, kept, mass, gt, eq) };
        }
    }
    let _ = (simd, bound);
    let words = row.len().div_ceil(64);
    gt[..words].fill(0);
    eq[..words].fill(0);
    row_tail_portable(row, e, max, kept, mass, gt, eq)
}

multiversion! {
    /// [`decide_b1_body`] for `isa`.
    pub(super) fn decide_b1 => decide_b1_body(simd: Isa, row: &[i32], threshold: RowThreshold,
        moments: Moments, logit_scale: &hdp::LogitScale, kept: hdp::KeptSums,
        mass: Option<hdp::MassWeights>,
        words: &mut [u64],
        search: &mut RowSearch) -> RowStats
}

/// `row[j] -= bias[j]` (then `|row[j]|` when `abs`), then [`MASKED`] at invalid keys
/// (`valid` = None: all valid).
#[inline(always)]
pub(super) fn finish_row_body(row: &mut [i32], bias: &[i32], abs: bool, valid: Option<&[bool]>) {
    for (v, &b) in row.iter_mut().zip(bias) {
        *v -= b;
    }
    if abs {
        for v in row.iter_mut() {
            *v = v.abs();
        }
    }
    if let Some(valid) = valid {
        for (v, &ok) in row.iter_mut().zip(valid) {
            if !ok {
                *v = MASKED;
            }
        }
    }
}

/// Adds one row of entry importances (`row`, [`MASKED`] where masked, already made absolute
/// for abs-sum) into the block importances `imp` (blocks of `bs` keys).
#[inline(always)]
pub(super) fn accumulate_blocks_body(
    row: &[i32],
    bs: usize,
    importance: BlockImportance,
    imp: &mut [i64],
) {
    for (seg, slot) in row.chunks(bs).zip(imp.iter_mut()) {
        match importance {
            BlockImportance::Max => {
                let m = seg.iter().copied().max().unwrap_or(MASKED);
                if m != MASKED {
                    *slot = (*slot).max(m as i64);
                }
            }
            _ => {
                *slot += seg
                    .iter()
                    .map(|&v| if v == MASKED { 0 } else { v as i64 })
                    .sum::<i64>();
            }
        }
    }
}

multiversion! {
    /// [`accumulate_blocks_body`] for `isa`.
    fn accumulate_blocks => accumulate_blocks_body(row: &[i32], bs: usize,
        importance: BlockImportance, imp: &mut [i64])
}

multiversion! {
    /// [`finish_row_body`] for `isa`.
    fn finish_row => finish_row_body(row: &mut [i32], bias: &[i32], abs: bool,
        valid: Option<&[bool]>)
}

/// Steps 2-5 for one head when block importance is the sum over blocks larger than one entry.
/// By linearity the sum of `S_int` over a block's valid entries is
/// `(sum of its valid Q_int rows) . (sum of its valid K_int rows)`, exact in integers, so the
/// importances cost `nb^2 d` instead of `N^2 d` multiply-adds (the decisions are identical;
/// the trace still counts the method's `N^2 d`, which is what the accelerator does). Causal
/// diagonal blocks keep only `j <= i`: there, each query meets the running sum of the keys up
/// to it.
#[allow(clippy::too_many_arguments)]
pub(super) fn integer_pass_block_sums(
    hd: &HeadData,
    dm: Dims,
    valid: &BlockMask,
    valid_tok: &[bool],
    causal: bool,
    cfg: &HdpConfig,
    a: i32,
    sc: &mut PassScratch,
) -> hdp::Decided {
    let (n, d, dp, bs) = (dm.n, dm.d, dm.dp, cfg.block_size);
    let nb = n.div_ceil(bs);
    let q_int = |i: usize| {
        hd.qu[i * dp..i * dp + d]
            .iter()
            .map(move |&x| x as i64 - a as i64)
    };
    let k_int = |j: usize| hd.k_int[j * dp..j * dp + d].iter().map(|&x| x as i64);
    let (mut qs, mut ks) = (vec![0i64; nb * d], vec![0i64; nb * d]);
    for t in (0..n).filter(|&t| valid_tok[t]) {
        for (s, x) in qs[t / bs * d..][..d].iter_mut().zip(q_int(t)) {
            *s += x;
        }
        for (s, x) in ks[t / bs * d..][..d].iter_mut().zip(k_int(t)) {
            *s += x;
        }
    }
    let mut decider = HeadDecider::new(nb, cfg, hd.logit_scale.clone());
    sc.imp.clear();
    sc.imp.resize(nb, 0);
    sc.ok.clear();
    sc.ok.resize(nb, false);
    let mut prefix = vec![0i64; d];
    for br in 0..nb {
        let qb = &qs[br * d..][..d];
        for c in 0..nb {
            sc.ok[c] = valid.get(br, c);
            sc.imp[c] = if !sc.ok[c] {
                0
            } else if causal && c == br {
                // Diagonal block under the causal mask: sum_i Q_int_i . (sum_{j <= i} K_int_j).
                prefix.fill(0);
                let mut total = 0i64;
                let rows = br * bs..((br + 1) * bs).min(n);
                for t in rows.filter(|&t| valid_tok[t]) {
                    for (p, x) in prefix.iter_mut().zip(k_int(t)) {
                        *p += x;
                    }
                    total += q_int(t).zip(&prefix).map(|(x, p)| x * p).sum::<i64>();
                }
                total
            } else {
                qb.iter().zip(&ks[c * d..][..d]).map(|(x, y)| x * y).sum()
            };
        }
        decider.row_fast(br, &sc.imp, &sc.ok, &mut sc.row);
    }
    decider.finish()
}

/// Steps 2-5 for one head: exact `S_int` by tiles of [`TR`] rows, block importances, the
/// row-balanced decision per block-row. Returns the kept blocks and the head importance.
#[allow(clippy::too_many_arguments)]
pub(super) fn integer_pass(
    isa: Isa,
    hd: &HeadData,
    dm: Dims,
    all_blocks: &[u32],
    valid: &BlockMask,
    valid_tok: &[bool],
    causal: bool,
    cfg: &HdpConfig,
    a: i32,
    sc: &mut PassScratch,
    clock: &mut Clock,
    st: &mut StageTimes,
) -> hdp::Decided {
    let (n, n_pad) = (dm.n, dm.n_pad);
    let bs = cfg.block_size;
    if bs > 1 && cfg.importance == BlockImportance::Sum {
        let r = integer_pass_block_sums(hd, dm, valid, valid_tok, causal, cfg, a, sc);
        clock.lap(&mut st.decisions);
        return r;
    }
    let nb = n.div_ceil(bs);
    let kn = crate::kernels::for_isa(isa);
    let mut decider = HeadDecider::new(nb, cfg, hd.logit_scale.clone());
    sc.s.resize(TR * n_pad, 0);
    sc.imp.clear();
    sc.imp.resize(nb, 0);
    sc.ok.clear();
    sc.ok.resize(nb, false);
    sc.bias.clear();
    sc.bias.extend(hd.k_int_sum.iter().map(|&s| a * s));
    sc.words.resize(n.div_ceil(64), 0);
    let all_valid = valid_tok.iter().all(|&v| v);
    let forced = hdp::Forced::new(cfg, nb).any();
    // Compensation's weights come out of the decision's last pass.
    let mass = decider.wants_mass().then(|| hd.logit_scale.mass_weights());
    let kept_sums = decider.kept_sums();
    // Finished entries are `Q_e . K_int`: at most `d 2 A_e 128` in magnitude.
    let bound = dm.d as i64 * 2 * a as i64 * 128;
    let mut i0 = 0;
    while i0 < n {
        // Keys past the last row of the tile are causally masked for all of its rows.
        let cols = if causal {
            (i0 + TR).min(n).div_ceil(TC) * TC
        } else {
            n_pad
        };
        let q = &hd.qu[i0 * dm.dp..];
        let blocks = &all_blocks[..cols / 8];
        kn.tile_rows(
            q, dm.dp, dm.dp, &hd.k_pack, blocks, dm.run_int, &mut sc.s, n_pad,
        );
        clock.lap(&mut st.integer_pass);
        if bs == 1 {
            for r in 0..TR.min(n - i0) {
                let i = i0 + r;
                if !valid_tok[i] {
                    continue;
                }
                let end = if causal { i + 1 } else { n };
                let row = &mut sc.s[r * n_pad..][..end];
                let valid = (!all_valid).then_some(&valid_tok[..end]);
                // One-entry blocks: sum and max are the entry itself, abs-sum its magnitude.
                let abs = cfg.importance == BlockImportance::AbsSum;
                let moments = finish_moments(isa, row, &sc.bias[..end], abs, valid, bound);
                let words = &mut sc.words[..end.div_ceil(64)];
                let mut stats = decide_b1(
                    isa,
                    isa,
                    row,
                    cfg.threshold,
                    moments,
                    &hd.logit_scale,
                    kept_sums,
                    mass,
                    words,
                    &mut sc.search,
                );
                if forced {
                    // Sink and band columns (a few per row): kept whatever their scores.
                    for c in decider.forced_cols(i).filter(|&c| c < end) {
                        let (v, bit) = (row[c], 1u64 << (c % 64));
                        if v != MASKED && words[c / 64] & bit == 0 {
                            words[c / 64] |= bit;
                            stats.kept_sum += v as i64;
                            stats.kept_pos += (v as i64).max(0);
                            if let Some(mw) = mass {
                                let gap = (stats.max - v as i64) as u32;
                                stats.w_kept += mw.weight(gap) as u64;
                            }
                        }
                    }
                }
                decider.row_decided(i, &stats, words);
                if decider.wants_mass() {
                    let (t, k) = (stats.w_total, stats.w_kept);
                    let m = if t == 0 {
                        0.0
                    } else {
                        (t - k) as f64 / t as f64
                    };
                    decider.set_mass(i, m);
                }
            }
            clock.lap(&mut st.decisions);
            i0 += TR;
            continue;
        }
        let abs = cfg.importance == BlockImportance::AbsSum;
        let max_init = if cfg.importance == BlockImportance::Max {
            i64::MIN
        } else {
            0
        };
        for r in 0..TR.min(n - i0) {
            let i = i0 + r;
            let br = i / bs;
            if i % bs == 0 {
                sc.imp.fill(max_init);
            }
            if valid_tok[i] {
                let end = if causal { i + 1 } else { n };
                let row = &mut sc.s[r * n_pad..][..end];
                let valid = (!all_valid).then_some(&valid_tok[..end]);
                finish_row(isa, row, &sc.bias[..end], abs, valid);
                accumulate_blocks(isa, row, bs, cfg.importance, &mut sc.imp);
            }
            if (i + 1) % bs == 0 || i + 1 == n {
                for (c, ok) in sc.ok.iter_mut().enumerate() {
                    *ok = valid.get(br, c);
                }
                decider.row_fast(br, &sc.imp, &sc.ok, &mut sc.row);
            }
        }
        clock.lap(&mut st.decisions);
        i0 += TR;
    }
    let r = decider.finish();
    clock.lap(&mut st.decisions);
    r
}
