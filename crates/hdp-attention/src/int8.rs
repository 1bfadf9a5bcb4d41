//! The int8 HDP kernel: the fast path of [`crate::fast::hdp_attention`] for formats of at most
//! 8 bits in approximate-score mode (the default operating point).
//!
//! Data layout per head (built while quantizing, O(N d)):
//! - `qu`: `Q_int + A` as u8, where `A = 2^(bits-1-f)` makes the integer part non-negative
//!   (`u8 x i8` products are what AVX2 `vpmaddubsw` and VNNI `vpdpbusd` multiply);
//! - `K_int` as i8, packed for the SIMD tile (8 keys x 4 dimensions per 32 bytes);
//! - per key `sum_k K_int`, so `S_int = qu . K_int - A sum K_int` is exact.
//!
//! Integer pass (steps 2-5): 4 query rows x 16 keys register tiles of i32 accumulators, then
//! block importances and the row decision of [`crate::hdp::HeadDecider::row_fast`].
//!
//! Kept entries (steps 6-7): one integer dot product per kept entry over `2d` bytes,
//! `Z = [Q_int + A, Q_frac] . [K, K_int]`, so that
//! `Q_int . K + Q_frac . K_int = Z - A sum_k K` (the approximated score of hdp.md step 6 in
//! units of `2^-f`), eight kept entries reduced at once; then a SIMD softmax over the kept
//! entries and a sparse P.V that keeps the output row in registers.
//!
//! Exactness: every pairwise i16 sum inside `vpmaddubsw` is bounded by `2 * 127 * 128 < 2^15`
//! when `A <= 64` ([`supported`] checks it), i32 sums by `d * 2^15`, so the integer results
//! (and with them every decision) equal the reference's exactly.

use crate::config::{BlockImportance, HdpConfig, PrunedHeadOutput, RowThreshold};
use crate::fast::{softmax_row, Isa};
use crate::hdp::{self, head_counts, prune_heads, HdpOutput, HeadDecider, RowScratch, RowStats};
use crate::problem::AttentionProblem;
use hdp_core::trace::{HeadTrace, SequenceTrace};
use hdp_core::{BlockMask, QFormat, Result, ScoreMode, Tensor};
use rayon::prelude::*;

/// Query rows per integer tile.
const TR: usize = 4;
/// Keys per integer tile (two AVX2 vectors of 8 i32).
const TC: usize = 16;

/// Whether the int8 kernel computes `cfg` at head dimension `d` exactly: codes fit i8, the
/// offset integer part keeps `vpmaddubsw`'s pairwise sums below 2^15, and the approximated
/// score `2^f |Z - A sum K| <= 2^f d (2A 2^(bits-1) + 2^f A)` stays below 2^24 (exact in f32).
pub fn supported(cfg: &HdpConfig, d: usize) -> bool {
    let f = cfg.q_format;
    if f.bits > 8 || f.frac_bits >= f.bits || cfg.score_mode != ScoreMode::Approx {
        return false;
    }
    let a = offset(f) as f64;
    let one = f.one() as f64;
    let score = one * d as f64 * (2.0 * a * 128.0 + one * a);
    a <= 64.0 && score < (1u64 << 24) as f64
}

/// `A = 2^(bits-1-f)`: `Q_int + A` is in `0..2A`.
fn offset(f: QFormat) -> i32 {
    1 << (f.bits - 1 - f.frac_bits)
}

/// One head, quantized and laid out for the kernels.
struct HeadData {
    /// `Q_int + A`, `rows_pad x dp` (rows padded to a multiple of [`TR`] with zeros).
    qu: Vec<u8>,
    /// `K_int`, row-major `n x dp` (portable kernel).
    k_int: Vec<i8>,
    /// `K_int` packed for the SIMD tile (empty for the portable kernel):
    /// `[key block of 8][dimension group of 4][8 keys][4 dims]`, keys padded to [`TC`].
    k_pack: Vec<i8>,
    /// Per key, `sum_k K_int`.
    k_int_sum: Vec<i32>,
    /// Per query, `[Q_int + A, Q_frac]`, `n x w`.
    qz: Vec<u8>,
    /// Per key, `[K, K_int]`, `n x w`.
    kz: Vec<i8>,
    /// Per key, `sum_k K`.
    k_sum: Vec<i32>,
    q_sat: u64,
    k_sat: u64,
}

/// Shapes shared by every head of a sequence.
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    d: usize,
    /// `d` rounded up to a multiple of 4.
    dp: usize,
    /// Width of `qz`/`kz` rows: `2 dp` rounded up to a multiple of 32.
    w: usize,
    /// Keys rounded up to a multiple of [`TC`].
    n_pad: usize,
    /// Query rows rounded up to a multiple of [`TR`].
    rows_pad: usize,
}

impl Dims {
    fn new(n: usize, d: usize) -> Dims {
        let dp = d.div_ceil(4) * 4;
        Dims {
            n,
            d,
            dp,
            w: (2 * dp).div_ceil(32) * 32,
            n_pad: n.div_ceil(TC) * TC,
            rows_pad: n.div_ceil(TR) * TR,
        }
    }
}

/// Quantizes `x` exactly as [`QFormat::quantize_slice`] does (f32 products by powers of two
/// are exact, so rounding the f32 product equals rounding the f64 one). Returns the code and
/// whether it saturated.
#[inline(always)]
fn quantize(x: f32, s: f32, one: f32, min: i32, max: i32) -> (i32, bool) {
    let y = ((x * s) * one).round();
    if y > max as f32 {
        (max, true)
    } else if y < min as f32 {
        (min, true)
    } else {
        (y as i32, false)
    }
}

/// Quantizes head `h` of sequence `b` and builds its layouts.
fn prepare_head(
    p: &AttentionProblem,
    fmt: QFormat,
    (eq, ek): (i32, i32),
    b: usize,
    h: usize,
    dm: Dims,
    valid_tok: &[bool],
    simd: bool,
) -> HeadData {
    let Dims {
        n,
        d,
        dp,
        w,
        n_pad,
        rows_pad,
    } = dm;
    let a = offset(fmt);
    let (one, min, max) = (fmt.one() as f32, fmt.min_code(), fmt.max_code());
    let f = fmt.frac_bits;
    let mask = fmt.one() - 1;
    let (sq, sk) = ((2f64).powi(eq) as f32, (2f64).powi(ek) as f32);
    let mut hd = HeadData {
        qu: vec![0; rows_pad * dp],
        k_int: vec![0; n * dp],
        k_pack: Vec::new(),
        k_int_sum: vec![0; n],
        qz: vec![0; n * w],
        kz: vec![0; n * w],
        k_sum: vec![0; n],
        q_sat: 0,
        k_sat: 0,
    };
    for i in 0..n {
        let off = p.row_offset(b, h, i);
        let (qx, kx) = (&p.q.data()[off..off + d], &p.k.data()[off..off + d]);
        let (qu, qz) = (&mut hd.qu[i * dp..][..dp], &mut hd.qz[i * w..][..w]);
        let mut sat = 0u64;
        for (m, &x) in qx.iter().enumerate() {
            let (c, s) = quantize(x, sq, one, min, max);
            sat += s as u64;
            let (ci, cf) = (c >> f, c & mask);
            qu[m] = (ci + a) as u8;
            qz[m] = (ci + a) as u8;
            qz[dp + m] = cf as u8;
        }
        if valid_tok[i] {
            hd.q_sat += sat;
        }
        let (ki, kz) = (&mut hd.k_int[i * dp..][..dp], &mut hd.kz[i * w..][..w]);
        let (mut sat, mut sum_int, mut sum) = (0u64, 0i32, 0i32);
        for (m, &x) in kx.iter().enumerate() {
            let (c, s) = quantize(x, sk, one, min, max);
            sat += s as u64;
            let ci = c >> f;
            ki[m] = ci as i8;
            kz[m] = c as i8;
            kz[dp + m] = ci as i8;
            sum_int += ci;
            sum += c;
        }
        if valid_tok[i] {
            hd.k_sat += sat;
        }
        hd.k_int_sum[i] = sum_int;
        hd.k_sum[i] = sum;
    }
    if simd {
        let groups = dp / 4;
        hd.k_pack = vec![0; n_pad * dp];
        for j in 0..n {
            let (cb, c) = (j / 8, j % 8);
            for g in 0..groups {
                let dst = (cb * groups + g) * 32 + c * 4;
                hd.k_pack[dst..dst + 4].copy_from_slice(&hd.k_int[j * dp + 4 * g..][..4]);
            }
        }
    }
    hd
}

/// `out[r * n_pad + j] = (Q_int + A)_{i0+r} . K_int_j` for `r < TR` and keys `j < cols`
/// (`cols` a multiple of [`TC`] within `n_pad`), portable.
fn int_rows_portable(hd: &HeadData, dm: Dims, i0: usize, cols: usize, out: &mut [i32]) {
    let dp = dm.dp;
    for r in 0..TR {
        let q = &hd.qu[(i0 + r) * dp..][..dp];
        for j in 0..cols.min(dm.n) {
            let k = &hd.k_int[j * dp..][..dp];
            let mut acc = 0i32;
            for (&x, &y) in q.iter().zip(k) {
                acc += x as i32 * y as i32;
            }
            out[r * dm.n_pad + j] = acc;
        }
    }
}

/// AVX2 twin of [`int_rows_portable`]: `vpmaddubsw` + `vpmaddwd` into 4 x 16 i32 tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn int_rows_avx2(hd: &HeadData, dm: Dims, i0: usize, cols: usize, out: &mut [i32]) {
    use std::arch::x86_64::*;
    let (dp, groups, n_pad) = (dm.dp, dm.dp / 4, dm.n_pad);
    assert!(hd.qu.len() >= (i0 + TR) * dp && cols <= n_pad && cols % TC == 0);
    assert!(hd.k_pack.len() >= cols * dp && out.len() >= TR * n_pad);
    let ones = _mm256_set1_epi16(1);
    let q = hd.qu[i0 * dp..].as_ptr();
    let mut t = 0;
    while t < cols {
        let kb = hd.k_pack[t * dp..].as_ptr();
        let mut acc = [[_mm256_setzero_si256(); 2]; TR];
        for g in 0..groups {
            // SAFETY: key blocks t/8 and t/8 + 1 hold `groups` 32-byte groups each, and the
            // TR query rows hold dp bytes each (asserted above).
            unsafe {
                let k0 = _mm256_loadu_si256(kb.add(g * 32) as *const __m256i);
                let k1 = _mm256_loadu_si256(kb.add((groups + g) * 32) as *const __m256i);
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = _mm256_set1_epi32(
                        (q.add(r * dp + 4 * g) as *const i32).read_unaligned(),
                    );
                    a[0] = _mm256_add_epi32(
                        a[0],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(qv, k0), ones),
                    );
                    a[1] = _mm256_add_epi32(
                        a[1],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(qv, k1), ones),
                    );
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: row r of `out` has n_pad >= t + 16 slots (asserted above).
            unsafe {
                let o = out.as_mut_ptr().add(r * n_pad + t);
                _mm256_storeu_si256(o as *mut __m256i, a[0]);
                _mm256_storeu_si256(o.add(8) as *mut __m256i, a[1]);
            }
        }
        t += TC;
    }
}

/// Scratch of the integer pass.
#[derive(Default)]
struct PassScratch {
    s: Vec<i32>,
    imp: Vec<i64>,
    ok: Vec<bool>,
    row: RowScratch,
    words: Vec<u64>,
    bias: Vec<i32>,
}

/// A masked entry of a one-block row (valid integer scores are far inside +-2^24).
const MASKED: i32 = i32::MIN;

/// Slack before `ceil` in top-k, as in the reference.
const TOPK_EPS: f64 = 1e-9;

/// Number of entries `>= t` (t > [`MASKED`], so masked entries never count).
#[inline(always)]
fn count_ge(row: &[i32], t: i32) -> usize {
    row.iter().map(|&v| (v >= t) as u32).sum::<u32>() as usize
}

/// Step 4 for a block-row of one-entry blocks (b = 1), the entries' `S_int` in `row`
/// ([`MASKED`] where masked): the same decision as [`HeadDecider::row`], by whole-row passes
/// that vectorize. Top-k finds its threshold by bisection over the row's value range (each
/// step one counting pass), ties going to the lower column. Writes the kept columns to `words`.
#[inline(always)]
fn decide_b1_body(
    simd: Isa,
    row: &[i32],
    threshold: RowThreshold,
    words: &mut [u64],
) -> RowStats {
    // Separate simple passes: each vectorizes on its own.
    let len = row.iter().map(|&v| (v != MASKED) as u32).sum::<u32>();
    let sum = row
        .iter()
        .map(|&v| if v == MASKED { 0 } else { v as i64 })
        .sum::<i64>();
    let max = row.iter().copied().max().unwrap_or(MASKED);
    let min = row
        .iter()
        .map(|&v| if v == MASKED { i32::MAX } else { v })
        .min()
        .unwrap_or(i32::MAX);
    words.fill(0);
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
        RowThreshold::TopK { keep } => {
            let k = ((keep * len as f64 - TOPK_EPS).ceil() as usize).clamp(1, len);
            // Invariant: count(v >= lo) >= k > count(v >= hi) = above.
            let (mut lo, mut hi, mut above) = (min as i64, max as i64 + 1, 0usize);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                let c = count_ge(row, mid as i32);
                if c >= k {
                    lo = mid;
                } else {
                    hi = mid;
                    above = c;
                }
            }
            (lo as i32, k - above)
        }
    };
    let kept_sum = row
        .iter()
        .map(|&v| if v > e { v as i64 } else { 0 })
        .sum::<i64>();
    let kept_pos = row
        .iter()
        .map(|&v| if v > e { v.max(0) as i64 } else { 0 })
        .sum::<i64>();
    let mut taken = 0i64;
    for (w, chunk) in words.iter_mut().zip(row.chunks(64)) {
        let (gt, mut eq) = compare_word(simd, chunk, e);
        let mut take = 0u64;
        if eq_left > 0 && eq != 0 {
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
        *w = gt | take;
    }
    RowStats {
        len,
        sum,
        max: max as i64,
        kept_sum: kept_sum + e as i64 * taken,
        kept_pos: kept_pos + (e.max(0) as i64) * taken,
    }
}

/// Bits of `v > e` and `v == e` for up to 64 entries.
#[inline(always)]
fn compare_word(simd: Isa, chunk: &[i32], e: i32) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    if chunk.len() == 64 && simd == Isa::Avx2 {
        // SAFETY: Isa::Avx2 is only produced after detecting avx2 and fma.
        return unsafe { crate::simd::compare_word64(chunk, e) };
    }
    let _ = simd;
    let (mut gt, mut eq) = (0u64, 0u64);
    for (l, &v) in chunk.iter().enumerate() {
        gt |= ((v > e) as u64) << l;
        eq |= ((v == e) as u64) << l;
    }
    (gt, eq)
}

multiversion! {
    /// [`decide_b1_body`] for `isa`.
    fn decide_b1 => decide_b1_body(simd: Isa, row: &[i32], threshold: RowThreshold,
        words: &mut [u64]) -> RowStats
}

/// `row[j] -= bias[j]` (then `|row[j]|` when `abs`), then [`MASKED`] at invalid keys
/// (`valid` = None: all valid).
#[inline(always)]
fn finish_row_body(row: &mut [i32], bias: &[i32], abs: bool, valid: Option<&[bool]>) {
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

multiversion! {
    /// [`finish_row_body`] for `isa`.
    fn finish_row => finish_row_body(row: &mut [i32], bias: &[i32], abs: bool,
        valid: Option<&[bool]>)
}

/// Steps 2-5 for one head: exact `S_int` by tiles of [`TR`] rows, block importances, the
/// row-balanced decision per block-row. Returns the kept blocks and the head importance.
#[allow(clippy::too_many_arguments)]
fn integer_pass(
    isa: Isa,
    hd: &HeadData,
    dm: Dims,
    valid_tok: &[bool],
    causal: bool,
    cfg: &HdpConfig,
    a: i32,
    sc: &mut PassScratch,
) -> (BlockMask, f64) {
    let (n, n_pad) = (dm.n, dm.n_pad);
    let bs = cfg.block_size;
    let nb = n.div_ceil(bs);
    let mut decider = HeadDecider::new(nb, cfg);
    sc.s.resize(TR * n_pad, 0);
    sc.imp.clear();
    sc.imp.resize(nb, 0);
    sc.ok.clear();
    sc.ok.resize(nb, false);
    sc.bias.clear();
    sc.bias.extend(hd.k_int_sum.iter().map(|&s| a * s));
    sc.words.resize(n.div_ceil(64), 0);
    let all_valid = valid_tok.iter().all(|&v| v);
    let mut i0 = 0;
    while i0 < n {
        // Keys past the last row of the tile are causally masked for all of its rows.
        let cols = if causal {
            (i0 + TR).min(n).div_ceil(TC) * TC
        } else {
            n_pad
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::Avx2 is only produced after detecting avx2 and fma.
            Isa::Avx2 => unsafe { int_rows_avx2(hd, dm, i0, cols, &mut sc.s) },
            _ => int_rows_portable(hd, dm, i0, cols, &mut sc.s),
        }
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
                finish_row(isa, row, &sc.bias[..end], abs, valid);
                let words = &mut sc.words[..end.div_ceil(64)];
                let stats = decide_b1(isa, isa, row, cfg.threshold, words);
                decider.row_decided(i, &stats, words);
            }
            i0 += TR;
            continue;
        }
        for r in 0..TR.min(n - i0) {
            let i = i0 + r;
            let br = i / bs;
            if i % bs == 0 {
                sc.imp.fill(0);
                sc.ok.fill(false);
            }
            if valid_tok[i] {
                let end = if causal { i + 1 } else { n };
                let row = &sc.s[r * n_pad..][..end];
                if bs == 1 {
                    for (j, (&v, &ks)) in row.iter().zip(&hd.k_int_sum).enumerate() {
                        sc.imp[j] = (v - a * ks) as i64;
                        sc.ok[j] = valid_tok[j];
                    }
                    sc.ok[end..].fill(false);
                } else {
                    for (j, (&v, &ks)) in row.iter().zip(&hd.k_int_sum).enumerate() {
                        if !valid_tok[j] {
                            continue;
                        }
                        let v = (v - a * ks) as i64;
                        let c = j / bs;
                        let slot = &mut sc.imp[c];
                        *slot = match (cfg.importance, sc.ok[c]) {
                            (BlockImportance::Sum, _) => *slot + v,
                            (BlockImportance::AbsSum, _) => *slot + v.abs(),
                            (BlockImportance::Max, true) => (*slot).max(v),
                            (BlockImportance::Max, false) => v,
                        };
                        sc.ok[c] = true;
                    }
                }
            } else if bs == 1 {
                sc.ok.fill(false);
            }
            if (i + 1) % bs == 0 || i + 1 == n {
                decider.row_fast(br, &sc.imp, &sc.ok, &mut sc.row);
            }
        }
        i0 += TR;
    }
    decider.finish()
}

/// Scratch of the kept-entry stage.
#[derive(Default)]
struct AttendScratch {
    idx: Vec<u32>,
    sc: Vec<f32>,
    words: Vec<u64>,
}

/// Kept key indices of query `i` (valid, unmasked, in kept blocks) into `idx`, ascending.
#[allow(clippy::too_many_arguments)]
fn kept_keys(
    kept: &BlockMask,
    i: usize,
    bs: usize,
    end: usize,
    valid_tok: &[bool],
    words: &mut Vec<u64>,
    idx: &mut Vec<u32>,
) {
    idx.clear();
    words.clear();
    words.resize(kept.cols().div_ceil(64), 0);
    kept.or_row_into(i / bs, words);
    for (wi, &word) in words.iter().enumerate() {
        let mut word = word;
        while word != 0 {
            let c = wi * 64 + word.trailing_zeros() as usize;
            word &= word - 1;
            for j in c * bs..((c + 1) * bs).min(end) {
                if valid_tok[j] {
                    idx.push(j as u32);
                }
            }
        }
    }
}

/// `Z_ij = qz_i . kz_j` for the keys in `idx`, as f32 scores `2^f (Z - A sum K) * scale`.
fn scores_portable(hd: &HeadData, dm: Dims, i: usize, idx: &[u32], sc: &mut Vec<f32>, k: Coef) {
    let q = &hd.qz[i * dm.w..][..dm.w];
    sc.clear();
    sc.extend(idx.iter().map(|&j| {
        let kz = &hd.kz[j as usize * dm.w..][..dm.w];
        let mut z = 0i32;
        for (&x, &y) in q.iter().zip(kz) {
            z += x as i32 * y as i32;
        }
        k.score(z, hd.k_sum[j as usize])
    }));
}

/// Turns `Z` into the f32 score the reference uses.
#[derive(Clone, Copy)]
struct Coef {
    a: i32,
    two_f: f32,
    scale: f32,
}

impl Coef {
    #[inline(always)]
    fn score(self, z: i32, k_sum: i32) -> f32 {
        // Exact integer, exact in f32 (|x| < 2^24, checked by `supported`'s bounds), then one
        // rounding by `scale`, as the f32 reference path does.
        ((z - self.a * k_sum) as f32 * self.two_f) * self.scale
    }
}

/// AVX2 twin of [`scores_portable`]: eight kept entries at a time, each a `w`-byte
/// `vpmaddubsw`/`vpmaddwd` dot product, reduced together by `vphaddd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn scores_avx2(hd: &HeadData, dm: Dims, i: usize, idx: &[u32], sc: &mut Vec<f32>, k: Coef) {
    use std::arch::x86_64::*;
    let w = dm.w;
    let chunks = w / 32;
    assert!(hd.qz.len() >= (i + 1) * w);
    assert!(idx.iter().all(|&j| (j as usize) < dm.n) && hd.kz.len() >= dm.n * w);
    let q = hd.qz[i * w..].as_ptr();
    let kz = hd.kz.as_ptr();
    let ones = _mm256_set1_epi16(1);
    // SAFETY (both closures): q holds w bytes; every key row j < n holds w bytes (asserted).
    let dot = |j: u32| -> __m256i {
        let kr = unsafe { kz.add(j as usize * w) };
        let mut acc = _mm256_setzero_si256();
        for c in 0..chunks {
            unsafe {
                let qv = _mm256_loadu_si256(q.add(32 * c) as *const __m256i);
                let kv = _mm256_loadu_si256(kr.add(32 * c) as *const __m256i);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(qv, kv), ones));
            }
        }
        acc
    };
    sc.clear();
    let mut e = 0;
    while e + 8 <= idx.len() {
        for &j in idx[(e + 8).min(idx.len())..(e + 16).min(idx.len())].iter() {
            // SAFETY: prefetching is a hint; the address is inside kz (asserted above).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(kz.add(j as usize * w) as *const i8) };
            if w > 64 {
                unsafe { _mm_prefetch::<_MM_HINT_T0>(kz.add(j as usize * w + 64) as *const i8) };
            }
        }
        let v: [__m256i; 8] = std::array::from_fn(|t| dot(idx[e + t]));
        let t0 = _mm256_hadd_epi32(v[0], v[1]);
        let t1 = _mm256_hadd_epi32(v[2], v[3]);
        let t2 = _mm256_hadd_epi32(v[4], v[5]);
        let t3 = _mm256_hadd_epi32(v[6], v[7]);
        let u0 = _mm256_hadd_epi32(t0, t1);
        let u1 = _mm256_hadd_epi32(t2, t3);
        let z = _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(u0, u1),
            _mm256_permute2x128_si256::<0x31>(u0, u1),
        );
        let mut zs = [0i32; 8];
        // SAFETY: zs holds 8 i32.
        unsafe { _mm256_storeu_si256(zs.as_mut_ptr() as *mut __m256i, z) };
        for (t, &z) in zs.iter().enumerate() {
            sc.push(k.score(z, hd.k_sum[idx[e + t] as usize]));
        }
        e += 8;
    }
    for &j in &idx[e..] {
        let v = dot(j);
        let mut zs = [0i32; 8];
        // SAFETY: zs holds 8 i32.
        unsafe { _mm256_storeu_si256(zs.as_mut_ptr() as *mut __m256i, v) };
        sc.push(k.score(zs.iter().sum(), hd.k_sum[j as usize]));
    }
}

/// `o = sum_e p[e] V[idx[e]]`, portable.
fn pv_portable(idx: &[u32], p: &[f32], v: &[f32], d: usize, o: &mut [f32]) {
    o.fill(0.0);
    for (&j, &pj) in idx.iter().zip(p) {
        for (y, &x) in o.iter_mut().zip(&v[j as usize * d..][..d]) {
            *y += pj * x;
        }
    }
}

/// AVX2 twin of [`pv_portable`]: 32 output columns held in four registers across all kept
/// entries, the rest (d not a multiple of 32) by the portable loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn pv_avx2(idx: &[u32], p: &[f32], v: &[f32], d: usize, o: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(o.len() == d && idx.len() == p.len());
    assert!(idx.iter().all(|&j| (j as usize + 1) * d <= v.len()));
    let full = d / 32 * 32;
    let mut c0 = 0;
    while c0 < full {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (e, (&j, &pj)) in idx.iter().zip(p).enumerate() {
            if let Some(&ahead) = idx.get(e + 8) {
                // SAFETY: a hint; the address is inside v (asserted above).
                unsafe { _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(ahead as usize * d + c0) as *const i8) };
                unsafe { _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(ahead as usize * d + c0 + 16) as *const i8) };
            }
            let pv = _mm256_set1_ps(pj);
            // SAFETY: row j of v holds d >= c0 + 32 floats (asserted above).
            let row = unsafe { v.as_ptr().add(j as usize * d + c0) };
            for (m, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(pv, unsafe { _mm256_loadu_ps(row.add(8 * m)) }, *a);
            }
        }
        for (m, a) in acc.iter().enumerate() {
            // SAFETY: o holds d >= c0 + 32 floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(c0 + 8 * m), *a) };
        }
        c0 += 32;
    }
    if full < d {
        let o = &mut o[full..];
        o.fill(0.0);
        for (&j, &pj) in idx.iter().zip(p) {
            for (y, &x) in o.iter_mut().zip(&v[j as usize * d + full..][..d - full]) {
                *y += pj * x;
            }
        }
    }
}

/// Steps 6-7 for one surviving head.
#[allow(clippy::too_many_arguments)]
fn attend(
    isa: Isa,
    hd: &HeadData,
    dm: Dims,
    kept: &BlockMask,
    valid_tok: &[bool],
    causal: bool,
    bs: usize,
    v: &[f32],
    k: Coef,
    out: &mut [f32],
    sc: &mut AttendScratch,
) {
    let (n, d) = (dm.n, dm.d);
    for i in 0..n {
        let o = &mut out[i * d..(i + 1) * d];
        if !valid_tok[i] {
            o.fill(0.0);
            continue;
        }
        let end = if causal { i + 1 } else { n };
        kept_keys(kept, i, bs, end, valid_tok, &mut sc.words, &mut sc.idx);
        if sc.idx.is_empty() {
            o.fill(0.0);
            continue;
        }
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::Avx2 is only produced after detecting avx2 and fma.
            Isa::Avx2 => unsafe { scores_avx2(hd, dm, i, &sc.idx, &mut sc.sc, k) },
            _ => scores_portable(hd, dm, i, &sc.idx, &mut sc.sc, k),
        }
        softmax_row(isa, &mut sc.sc);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { pv_avx2(&sc.idx, &sc.sc, v, d, o) },
            _ => pv_portable(&sc.idx, &sc.sc, v, d, o),
        }
    }
}

/// The int8 HDP kernel (see the module docs); the caller checked [`supported`].
pub(crate) fn hdp_attention(
    p: &AttentionProblem,
    cfg: &HdpConfig,
    layer: usize,
    isa: Isa,
) -> Result<HdpOutput> {
    let dims = p.validate()?;
    cfg.validate()?;
    debug_assert!(supported(cfg, dims.head_dim));
    let (heads, n, d, bs) = (dims.heads, dims.seq_len, dims.head_dim, cfg.block_size);
    let fmt = cfg.q_format;
    let a = offset(fmt);
    let dm = Dims::new(n, d);
    let mut out = Tensor::zeros(p.q.shape().to_vec());
    let mut trace = hdp::empty_layer_trace(p, cfg, layer)?;
    for b in 0..dims.batch {
        let (valid, valid_tokens) = hdp::valid_blocks(p, b, bs);
        let valid_tok: Vec<bool> = (0..n).map(|i| p.token_is_valid(b, i)).collect();
        let exps = hdp::prescale_exponents(p, cfg, b, heads, n, d);
        // Steps 1-5 per head, in parallel.
        let decided: Vec<(HeadData, BlockMask, f64)> = (0..heads)
            .into_par_iter()
            .map_init(PassScratch::default, |sc, h| {
                let hd = prepare_head(p, fmt, exps, b, h, dm, &valid_tok, isa != Isa::Portable);
                let (kept, imp) = integer_pass(isa, &hd, dm, &valid_tok, p.causal, cfg, a, sc);
                (hd, kept, imp)
            })
            .collect();
        let head_imp: Vec<f64> = decided.iter().map(|x| x.2).collect();
        let pruned = prune_heads(&head_imp, cfg.head_pruning);
        let coef = Coef {
            a,
            two_f: fmt.one() as f32,
            scale: ((2f64).powi(-(2 * fmt.frac_bits as i32 + exps.0 + exps.1))
                / (d as f64).sqrt()) as f32,
        };
        let seq_off = p.row_offset(b, 0, 0);
        let out_seq = &mut out.data_mut()[seq_off..seq_off + heads * n * d];
        out_seq.par_chunks_mut(n * d).enumerate().for_each_init(
            AttendScratch::default,
            |sc, (h, o)| {
                if pruned[h] {
                    return;
                }
                let off = p.row_offset(b, h, 0);
                let v = &p.v.data()[off..off + n * d];
                let (hd, kept, _) = &decided[h];
                attend(isa, hd, dm, kept, &valid_tok, p.causal, bs, v, coef, o, sc);
            },
        );
        for h in
            (0..heads).filter(|&h| pruned[h] && cfg.pruned_head_output == PrunedHeadOutput::MeanV)
        {
            hdp::write_mean_v(p, &mut out, b, h, n, d, valid_tokens);
        }
        let (mut q_sat, mut k_sat) = (0, 0);
        let heads_trace = decided
            .into_iter()
            .enumerate()
            .map(|(h, (hd, kept, importance))| {
                q_sat += hd.q_sat;
                k_sat += hd.k_sat;
                HeadTrace {
                    head: h,
                    importance,
                    pruned: pruned[h],
                    counts: head_counts(&valid, &kept, pruned[h], cfg, n, d, valid_tokens),
                    kept,
                }
            })
            .collect();
        trace.sequences.push(SequenceTrace {
            sequence: b,
            valid_tokens,
            valid,
            q_prescale_exp: exps.0,
            k_prescale_exp: exps.1,
            q_saturated: q_sat,
            k_saturated: k_sat,
            heads: heads_trace,
        });
    }
    Ok(HdpOutput { output: out, trace })
}
