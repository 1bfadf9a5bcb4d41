//! The int8 HDP kernel: the fast path of [`crate::fast::hdp_attention`] for formats of at most
//! 8 bits in approximate-score mode (the default operating point). `ARCHITECTURE.md` has the
//! measurements behind each choice.
//!
//! Data layout per head (built while quantizing, O(N d)):
//! - `qu`: `Q_int + A` as u8, where `A = 2^(bits-1-f)` makes the integer part non-negative
//!   (`u8 x i8` products are what AVX2 `vpmaddubsw` and VNNI `vpdpbusd` multiply);
//! - `K_int` as i8, packed for the integer tile (8 keys x 4 dimensions per 32 bytes);
//! - per key `sum_k K_int`, so `S_int = qu . K_int - A sum K_int` is exact;
//! - `[Q_int + A, Q_frac]` per query and `[K, K_int]` per key (row-major and packed), so that
//!   `Z = [Q_int + A, Q_frac] . [K, K_int]` gives `Q_int . K + Q_frac . K_int = Z - A sum_k K`:
//!   the approximated score of hdp.md step 6 in units of `2^-f`.
//!
//! Integer pass (steps 2-5): 4 query rows x 16 keys register tiles (`tile_rows`); one-entry
//! blocks are decided row by row by vectorized passes (`decide_b1_body`); larger blocks with
//! `sum` importance take their importances from block sums of `Q_int` and `K_int`
//! (`integer_pass_block_sums`), other importances reduce the tile rows per block.
//!
//! Kept entries (steps 6-7), by chunks of rows: dense enough chunks compute `Z` with the same
//! tile over the key blocks they keep, a masked softmax and one GEMM for P.V; sparse chunks
//! score entry by entry and accumulate V rows (`attend`).
//!
//! Exactness: `vpmaddubsw` adds two u8 x i8 products into i16, at most `2 * 127 * 128 < 2^15`
//! when `A <= 64` ([`supported`] checks it); such pair sums are added in i16 only for as many
//! groups as cannot overflow (`i16_run`), then widened to i32. So the integer results, and
//! with them every decision, equal the reference's exactly.

use crate::config::{BlockImportance, HdpConfig, RowThreshold};
use crate::fast::{fast_exp, matmul, Isa, View};
use crate::hdp::{self, prune_heads, HdpOutput, HeadDecider, RowScratch, RowStats};
use crate::problem::AttentionProblem;
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
    /// `K_int`, row-major `n x dp`.
    k_int: Vec<i8>,
    /// `K_int` packed by [`pack_keys`].
    k_pack: Vec<i8>,
    /// Per key, `sum_k K_int`.
    k_int_sum: Vec<i32>,
    /// Per query, `[Q_int + A, Q_frac]`, `rows_pad x w`.
    qz: Vec<u8>,
    /// Per key, `[K, K_int]`, row-major `n x w` (sparse rows score from it).
    kz: Vec<i8>,
    /// `[K, K_int]` packed by [`pack_keys`].
    kz_pack: Vec<i8>,
    /// Per key, `sum_k K` (zero for the padding keys up to `n_pad`).
    k_sum: Vec<i32>,
    q_sat: u64,
    k_sat: u64,
    /// Logit scale of the block importances (top-p), set by the caller.
    logit_scale: hdp::LogitScale,
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
    /// [`i16_run`] of the integer pass (`Q_int + A` times `K_int`).
    run_int: usize,
    /// [`i16_run`] of `Z` (`Q_int + A` times `K`, `Q_frac` times `K_int`).
    run_z: usize,
}

impl Dims {
    fn new(n: usize, d: usize, fmt: QFormat) -> Dims {
        let dp = d.div_ceil(4) * 4;
        let n_pad = n.div_ceil(TC) * TC;
        let a = offset(fmt) as i64;
        let (max_code, max_frac) = (1i64 << (fmt.bits - 1), fmt.one() as i64 - 1);
        Dims {
            n,
            d,
            dp,
            w: (2 * dp).div_ceil(32) * 32,
            n_pad,
            rows_pad: n.div_ceil(TR) * TR,
            run_int: i16_run(2 * (2 * a - 1) * a),
            run_z: i16_run((2 * (2 * a - 1) * max_code).max(2 * max_frac * a)),
        }
    }
}

/// Quantizes `x` exactly as [`QFormat::quantize_slice`] does (f32 products by powers of two
/// are exact, so rounding the f32 product equals rounding the f64 one). Returns the code and
/// whether it saturated.
#[inline(always)]
fn quantize(x: f32, s: f32, one: f32, min: i32, max: i32) -> (i32, bool) {
    // Round half away from zero like `f32::round`, in a form that vectorizes: the fractional
    // part `y - trunc(y)` is exact in f32.
    let y = (x * s) * one;
    let t = y.trunc();
    let y = if (y - t).abs() >= 0.5 {
        t + 1f32.copysign(y)
    } else {
        t
    };
    if y > max as f32 {
        (max, true)
    } else if y < min as f32 {
        (min, true)
    } else {
        (y as i32, false)
    }
}

/// Codes of `xs` (see [`quantize`]) into `codes`; returns how many saturated.
#[inline(always)]
fn quantize_row_body(xs: &[f32], s: f32, one: f32, min: i32, max: i32, codes: &mut [i32]) -> u32 {
    let mut sat = 0u32;
    for (c, &x) in codes.iter_mut().zip(xs) {
        let (q, t) = quantize(x, s, one, min, max);
        *c = q;
        sat += t as u32;
    }
    sat
}

multiversion! {
    /// [`quantize_row_body`] for `isa`.
    fn quantize_row => quantize_row_body(xs: &[f32], s: f32, one: f32, min: i32, max: i32,
        codes: &mut [i32]) -> u32
}

/// `Q_int + A` (twice: integer pass and `Z` operand) and `Q_frac` of one row of codes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn split_q_body(
    codes: &[i32],
    f: u32,
    mask: i32,
    a: i32,
    qu: &mut [u8],
    qzi: &mut [u8],
    qzf: &mut [u8],
) {
    for (((&c, u), zi), zf) in codes.iter().zip(qu).zip(qzi).zip(qzf) {
        let x = ((c >> f) + a) as u8;
        *u = x;
        *zi = x;
        *zf = (c & mask) as u8;
    }
}

/// `K_int` (twice: integer pass and `Z` operand) and `K` of one row of codes; returns the
/// sums of `K_int` and of `K`.
#[inline(always)]
fn split_k_body(
    codes: &[i32],
    f: u32,
    ki: &mut [i8],
    kzc: &mut [i8],
    kzi: &mut [i8],
) -> (i32, i32) {
    let (mut sum_int, mut sum) = (0i32, 0i32);
    for (((&c, i), zc), zi) in codes.iter().zip(ki).zip(kzc).zip(kzi) {
        let x = c >> f;
        *i = x as i8;
        *zi = x as i8;
        *zc = c as i8;
        sum_int += x;
        sum += c;
    }
    (sum_int, sum)
}

multiversion! {
    /// [`split_q_body`] for `isa`.
    fn split_q => split_q_body(codes: &[i32], f: u32, mask: i32, a: i32, qu: &mut [u8],
        qzi: &mut [u8], qzf: &mut [u8])
}

multiversion! {
    /// [`split_k_body`] for `isa`.
    fn split_k => split_k_body(codes: &[i32], f: u32, ki: &mut [i8], kzc: &mut [i8],
        kzi: &mut [i8]) -> (i32, i32)
}

/// Quantizes head `h` of sequence `b` and builds its layouts.
#[allow(clippy::too_many_arguments)]
fn prepare_head(
    isa: Isa,
    p: &AttentionProblem,
    fmt: QFormat,
    (eq, ek): (i32, i32),
    b: usize,
    h: usize,
    dm: Dims,
    valid_tok: &[bool],
) -> HeadData {
    let Dims {
        n,
        d,
        dp,
        w,
        n_pad,
        rows_pad,
        ..
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
        qz: vec![0; rows_pad * w],
        kz: vec![0; n * w],
        kz_pack: Vec::new(),
        k_sum: vec![0; n_pad],
        q_sat: 0,
        k_sat: 0,
        logit_scale: hdp::LogitScale::new(1.0, false),
    };
    let mut codes = vec![0i32; d];
    for (i, &valid_i) in valid_tok.iter().enumerate().take(n) {
        let off = p.row_offset(b, h, i);
        let (qx, kx) = (&p.q().data()[off..off + d], &p.k().data()[off..off + d]);
        let (qu, qz) = (&mut hd.qu[i * dp..][..dp], &mut hd.qz[i * w..][..w]);
        let sat = quantize_row(isa, qx, sq, one, min, max, &mut codes);
        let (qzi, qzf) = qz.split_at_mut(dp);
        split_q(
            isa,
            &codes,
            f,
            mask,
            a,
            &mut qu[..d],
            &mut qzi[..d],
            &mut qzf[..d],
        );
        if valid_i {
            hd.q_sat += sat as u64;
        }
        let (ki, kz) = (&mut hd.k_int[i * dp..][..dp], &mut hd.kz[i * w..][..w]);
        let sat = quantize_row(isa, kx, sk, one, min, max, &mut codes);
        let (kzc, kzi) = kz.split_at_mut(dp);
        let (sum_int, sum) = split_k(isa, &codes, f, &mut ki[..d], &mut kzc[..d], &mut kzi[..d]);
        if valid_i {
            hd.k_sat += sat as u64;
        }
        hd.k_int_sum[i] = sum_int;
        hd.k_sum[i] = sum;
    }
    pack_keys(&mut hd.k_pack, hd.k_int.chunks_exact(dp), n, dp);
    pack_keys(&mut hd.kz_pack, hd.kz.chunks_exact(w), n, w);
    hd
}

/// Packs `m` key rows of `depth` bytes (a multiple of 4) for [`tile_rows`]:
/// `[key block of 8][dimension group of 4][8 keys][4 bytes]`, keys padded with zeros to a
/// multiple of [`TC`], plus one all-zero key block at the end ([`zero_block`]) that pads odd
/// block lists.
fn pack_keys<'a>(out: &mut Vec<i8>, rows: impl Iterator<Item = &'a [i8]>, m: usize, depth: usize) {
    let groups = depth / 4;
    out.clear();
    out.resize((m.div_ceil(TC) * TC + 8) * depth, 0);
    for (j, row) in rows.enumerate() {
        let (cb, c) = (j / 8, j % 8);
        for (g, quad) in row.chunks_exact(4).enumerate().take(groups) {
            let dst = (cb * groups + g) * 32 + c * 4;
            out[dst..dst + 4].copy_from_slice(quad);
        }
    }
}

/// Index of the all-zero key block of keys packed for `m` keys.
fn zero_block(m: usize) -> u32 {
    (m.div_ceil(TC) * TC / 8) as u32
}

/// How many 4-byte groups of `vpmaddubsw` pair sums (each at most `pair_max` in magnitude)
/// can be added in i16 before widening to i32 without overflow.
fn i16_run(pair_max: i64) -> usize {
    (i16::MAX as i64 / pair_max.max(1)).clamp(1, 64) as usize
}

/// `out[r * out_stride + 8 t + c] = q_r . K_(8 blocks[t] + c)` (u8 x i8, exact i32) for the
/// [`TR`] query rows `q[r * q_stride..][..depth]` and the packed key blocks `blocks` (an even
/// number of them). `run` = [`i16_run`] of the operands.
#[allow(clippy::too_many_arguments)]
fn tile_rows(
    isa: Isa,
    q: &[u8],
    q_stride: usize,
    depth: usize,
    kpack: &[i8],
    blocks: &[u32],
    run: usize,
    out: &mut [i32],
    out_stride: usize,
) {
    let cols = blocks.len() * 8;
    assert!(depth.is_multiple_of(4) && blocks.len().is_multiple_of(2));
    assert!(cols <= out_stride && run >= 1);
    assert!(q.len() >= (TR - 1) * q_stride + depth);
    assert!(blocks
        .iter()
        .all(|&b| (b as usize + 1) * 8 * depth <= kpack.len()));
    assert!(out.len() >= (TR - 1) * out_stride + cols);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Isa::Avx2 is only produced after detecting avx2 and fma; bounds asserted.
        Isa::Avx2 => unsafe {
            tile_rows_avx2(q, q_stride, depth, kpack, blocks, run, out, out_stride)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Isa::Avx512Vnni is only produced after detecting avx512f/bw/vl/vnni;
        // bounds asserted.
        Isa::Avx512Vnni => unsafe {
            tile_rows_vnni(q, q_stride, depth, kpack, blocks, out, out_stride)
        },
        _ => {
            let groups = depth / 4;
            for r in 0..TR {
                let qr = &q[r * q_stride..][..depth];
                for (t, &cb) in blocks.iter().enumerate() {
                    for c in 0..8 {
                        let mut acc = 0i32;
                        for g in 0..groups {
                            let k = &kpack[(cb as usize * groups + g) * 32 + c * 4..][..4];
                            for u in 0..4 {
                                acc += qr[4 * g + u] as i32 * k[u] as i32;
                            }
                        }
                        out[r * out_stride + 8 * t + c] = acc;
                    }
                }
            }
        }
    }
}

/// AVX2 body of [`tile_rows`]: 4 x 16 register tiles; `vpmaddubsw` pair sums are added in
/// i16 for `run` groups, then widened by `vpmaddwd` into the i32 accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows_avx2(
    q: &[u8],
    q_stride: usize,
    depth: usize,
    kpack: &[i8],
    blocks: &[u32],
    run: usize,
    out: &mut [i32],
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    let groups = depth / 4;
    let ones = _mm256_set1_epi16(1);
    let qp = q.as_ptr();
    for (t, pair) in blocks.chunks_exact(2).enumerate() {
        // SAFETY (whole loop): the caller asserted that the TR rows of q hold depth bytes, that
        // every listed key block lies inside kpack and that out's rows hold the columns.
        let kb0 = unsafe { kpack.as_ptr().add(pair[0] as usize * 8 * depth) };
        let kb1 = unsafe { kpack.as_ptr().add(pair[1] as usize * 8 * depth) };
        if run >= groups {
            // One i16 run covers the whole depth (the integer pass at 8 bits): no i32
            // accumulators live in the loop, 11 vector registers, nothing spills.
            let mut a16 = [[_mm256_setzero_si256(); 2]; TR];
            for g in 0..groups {
                unsafe {
                    let k0 = _mm256_loadu_si256(kb0.add(g * 32) as *const __m256i);
                    let k1 = _mm256_loadu_si256(kb1.add(g * 32) as *const __m256i);
                    for (r, a) in a16.iter_mut().enumerate() {
                        let qv = _mm256_set1_epi32(
                            (qp.add(r * q_stride + 4 * g) as *const i32).read_unaligned(),
                        );
                        a[0] = _mm256_add_epi16(a[0], _mm256_maddubs_epi16(qv, k0));
                        a[1] = _mm256_add_epi16(a[1], _mm256_maddubs_epi16(qv, k1));
                    }
                }
            }
            for (r, a) in a16.iter().enumerate() {
                unsafe {
                    let o = out.as_mut_ptr().add(r * out_stride + 16 * t);
                    _mm256_storeu_si256(o as *mut __m256i, _mm256_madd_epi16(a[0], ones));
                    _mm256_storeu_si256(o.add(8) as *mut __m256i, _mm256_madd_epi16(a[1], ones));
                }
            }
            continue;
        }
        // Several i16 runs (`Z`): one key block of 8 at a time, so that the i32 and i16
        // accumulators of 4 rows fit the 16 vector registers with the operands (11 live);
        // still bound by `vpmaddubsw`, not by the loads.
        for (half, kb) in [kb0, kb1].into_iter().enumerate() {
            let mut acc = [_mm256_setzero_si256(); TR];
            let mut g0 = 0;
            while g0 < groups {
                let g1 = (g0 + run).min(groups);
                let mut a16 = [_mm256_setzero_si256(); TR];
                for g in g0..g1 {
                    unsafe {
                        let k = _mm256_loadu_si256(kb.add(g * 32) as *const __m256i);
                        for (r, a) in a16.iter_mut().enumerate() {
                            let qv = _mm256_set1_epi32(
                                (qp.add(r * q_stride + 4 * g) as *const i32).read_unaligned(),
                            );
                            *a = _mm256_add_epi16(*a, _mm256_maddubs_epi16(qv, k));
                        }
                    }
                }
                for (a, s) in acc.iter_mut().zip(&a16) {
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(*s, ones));
                }
                g0 = g1;
            }
            for (r, a) in acc.iter().enumerate() {
                unsafe {
                    let o = out.as_mut_ptr().add(r * out_stride + 16 * t + 8 * half);
                    _mm256_storeu_si256(o as *mut __m256i, *a);
                }
            }
        }
    }
}

/// AVX-512 VNNI body of [`tile_rows`]: 4 rows x 16 keys, one `vpdpbusd` per row and group of
/// 4 dimensions (u8 x i8 products summed in i32, exact whatever the depth: no i16 runs).
/// The two packed key blocks of a pair (8 keys x 4 bytes each) fill one zmm.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_rows_vnni(
    q: &[u8],
    q_stride: usize,
    depth: usize,
    kpack: &[i8],
    blocks: &[u32],
    out: &mut [i32],
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    let groups = depth / 4;
    let qp = q.as_ptr();
    for (t, pair) in blocks.chunks_exact(2).enumerate() {
        // SAFETY (whole loop): the caller asserted that the TR rows of q hold depth bytes, that
        // every listed key block lies inside kpack and that out's rows hold the columns.
        let kb0 = unsafe { kpack.as_ptr().add(pair[0] as usize * 8 * depth) };
        let kb1 = unsafe { kpack.as_ptr().add(pair[1] as usize * 8 * depth) };
        let mut acc = [_mm512_setzero_si512(); TR];
        for g in 0..groups {
            unsafe {
                let k0 = _mm256_loadu_si256(kb0.add(g * 32) as *const __m256i);
                let k1 = _mm256_loadu_si256(kb1.add(g * 32) as *const __m256i);
                let k = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(k0), k1);
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = _mm512_set1_epi32(
                        (qp.add(r * q_stride + 4 * g) as *const i32).read_unaligned(),
                    );
                    *a = _mm512_dpbusd_epi32(*a, qv, k);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            unsafe {
                let o = out.as_mut_ptr().add(r * out_stride + 16 * t);
                _mm512_storeu_si512(o as *mut _, *a);
            }
        }
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

/// Number of entries `>= t` (t > [`MASKED`], so masked entries never count).
#[inline(always)]
fn count_ge(row: &[i32], t: i32) -> usize {
    row.iter().map(|&v| (v >= t) as u32).sum::<u32>() as usize
}

/// Step 4 for a block-row of one-entry blocks (b = 1), the entries' `S_int` in `row`
/// ([`MASKED`] where masked): the same decision as [`HeadDecider::row`], by whole-row passes
/// that vectorize. Top-k finds its threshold by a safeguarded interpolation search over the
/// row's value range (each step one counting pass), ties going to the lower column. Writes
/// the kept columns to `words`.
#[inline(always)]
fn decide_b1_body(
    simd: Isa,
    row: &[i32],
    threshold: RowThreshold,
    logit_scale: &hdp::LogitScale,
    words: &mut [u64],
) -> RowStats {
    // Separate simple passes: each vectorizes on its own.
    let len = row.iter().map(|&v| (v != MASKED) as u32).sum::<u32>();
    words.fill(0);
    if len == 0 {
        return RowStats::default();
    }
    let max = row.iter().copied().max().unwrap_or(MASKED);
    let min = row
        .iter()
        .map(|&v| if v == MASKED { i32::MAX } else { v })
        .min()
        .unwrap_or(i32::MAX);
    // Sums in i32 lanes (8 per vector) when no partial sum can overflow, else in i64.
    let narrow = (row.len() as i64) * (max as i64).abs().max((min as i64).abs()) < i32::MAX as i64;
    let masked_sum = |keep: &dyn Fn(i32) -> i32| -> i64 {
        if narrow {
            row.iter().map(|&v| keep(v)).sum::<i32>() as i64
        } else {
            row.iter().map(|&v| keep(v) as i64).sum::<i64>()
        }
    };
    let sum = masked_sum(&|v| if v == MASKED { 0 } else { v });
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
        RowThreshold::TopK { .. } | RowThreshold::TopP { .. } => {
            let k = match threshold {
                RowThreshold::TopP { mass } => {
                    // The same (value, count) list as the reference.
                    let valid = row.iter().filter(|&&v| v != MASKED).map(|&v| v as i64);
                    let desc =
                        hdp::value_counts_in(valid, len, min as i64, max as i64, &mut Vec::new());
                    hdp::topp_count(&desc, logit_scale, mass)
                }
                RowThreshold::TopK { keep } => hdp::topk_count(keep, len),
                _ => unreachable!("matched above"),
            };
            // Invariant: count(v >= lo) = at_lo >= k > count(v >= hi) = above. Each step
            // interpolates the count linearly between lo and hi (few steps on smooth rows);
            // a step that fails to halve the interval is followed by a bisection, so the
            // worst case stays within twice the bisection's count.
            let (mut lo, mut hi) = (min as i64, max as i64 + 1);
            let (mut at_lo, mut above) = (len, 0usize);
            let mut bisect = false;
            while hi - lo > 1 {
                let width = hi - lo;
                let mid = if bisect {
                    lo + width / 2
                } else {
                    let frac = (at_lo - k) as f64 / (at_lo - above) as f64;
                    (lo + (width as f64 * frac) as i64).clamp(lo + 1, hi - 1)
                };
                let c = count_ge(row, mid as i32);
                if c >= k {
                    lo = mid;
                    at_lo = c;
                } else {
                    hi = mid;
                    above = c;
                }
                bisect = !bisect && 2 * (hi - lo) > width;
            }
            (lo as i32, k - above)
        }
    };
    let kept_sum = masked_sum(&|v| if v > e { v } else { 0 });
    let kept_pos = masked_sum(&|v| if v > e { v.max(0) } else { 0 });
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
    if chunk.len() == 64 && simd.avx2() {
        // SAFETY: tiers above portable are only produced after detecting avx2 and fma.
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
        logit_scale: &hdp::LogitScale, words: &mut [u64]) -> RowStats
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

/// Adds one row of entry importances (`row`, [`MASKED`] where masked, already made absolute
/// for abs-sum) into the block importances `imp` (blocks of `bs` keys).
#[inline(always)]
fn accumulate_blocks_body(row: &[i32], bs: usize, importance: BlockImportance, imp: &mut [i64]) {
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
fn integer_pass_block_sums(
    hd: &HeadData,
    dm: Dims,
    valid: &BlockMask,
    valid_tok: &[bool],
    causal: bool,
    cfg: &HdpConfig,
    a: i32,
    sc: &mut PassScratch,
) -> (BlockMask, f64) {
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
fn integer_pass(
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
) -> (BlockMask, f64) {
    let (n, n_pad) = (dm.n, dm.n_pad);
    let bs = cfg.block_size;
    if bs > 1 && cfg.importance == BlockImportance::Sum {
        return integer_pass_block_sums(hd, dm, valid, valid_tok, causal, cfg, a, sc);
    }
    let nb = n.div_ceil(bs);
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
        tile_rows(
            isa, q, dm.dp, dm.dp, &hd.k_pack, blocks, dm.run_int, &mut sc.s, n_pad,
        );
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
                let stats = decide_b1(isa, isa, row, cfg.threshold, &hd.logit_scale, words);
                decider.row_decided(i, &stats, words);
            }
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
        i0 += TR;
    }
    decider.finish()
}

/// Query rows per chunk of the kept-entry stage (their probabilities stay in L2 for P.V).
const CH: usize = 64;

/// Scratch of the kept-entry stage.
#[derive(Default)]
struct AttendScratch {
    /// Kept columns per row of the chunk, as `wn` words each.
    rw: Vec<u64>,
    /// Union of the chunk's kept columns.
    union: Vec<u64>,
    /// The union as key blocks of 8.
    blocks: Vec<u32>,
    /// Per row, its kept columns in the numbering of `blocks`.
    crw: Vec<u64>,
    /// V rows of the union's keys.
    vg: Vec<f32>,
    /// `sum_k K` of the union's keys.
    ksg: Vec<i32>,
    /// One tile of `Z`.
    z: Vec<i32>,
    /// Probabilities of the chunk, `CH x m`.
    p: Vec<f32>,
    /// Kept keys and their scores/probabilities of one row (sparse chunks).
    idx: Vec<u32>,
    sc: Vec<f32>,
}

/// Turns `Z` into the f32 score the reference uses.
#[derive(Clone, Copy)]
struct Coef {
    a: i32,
    two_f: f32,
    scale: f32,
}

impl Coef {
    /// Exact integer, exact in f32 (|x| < 2^24, checked by `supported`), then one rounding by
    /// `scale`, as the f32 reference path does; [`row_probs_body`] computes the same.
    #[inline(always)]
    fn score(self, z: i32, k_sum: i32) -> f32 {
        ((z - self.a * k_sum) as f32 * self.two_f) * self.scale
    }
}

/// Chunks whose kept entries are below this fraction of their entries are scored entry by
/// entry and multiplied by V row by row (cost proportional to the kept entries); denser
/// chunks go through the integer tile and one GEMM (cost proportional to the chunk).
/// Measured crossover (`hdp bench attention --keep K` with each path forced): about 0.25 on
/// AVX2 (Zen 3), about 0.2 on AVX-512 VNNI (Zen 4: at keep 0.2 both paths within noise, at 0.1
/// the sparse path 1.5x faster, at 0.3 the dense path 1.4x faster); see `ARCHITECTURE.md`.
const SPARSE_BELOW: f64 = 0.25;

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
    push_scores(hd, w, idx, sc, k, dot)
}

/// The kept entries' scores from `dot` (8 i32 lanes per entry whose sum is the entry's `Z`),
/// eight entries reduced together by `vphaddd`, keys of the next eight prefetched; shared by
/// [`scores_avx2`] and [`scores_vnni`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn push_scores(
    hd: &HeadData,
    w: usize,
    idx: &[u32],
    sc: &mut Vec<f32>,
    k: Coef,
    dot: impl Fn(u32) -> std::arch::x86_64::__m256i,
) {
    use std::arch::x86_64::*;
    assert!(idx.iter().all(|&j| (j as usize + 1) * w <= hd.kz.len()));
    let kz = hd.kz.as_ptr();
    sc.clear();
    let mut e = 0;
    while e + 8 <= idx.len() {
        for &j in idx[(e + 8).min(idx.len())..(e + 16).min(idx.len())].iter() {
            // SAFETY: prefetching is a hint; the address is inside kz (asserted above).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(kz.add(j as usize * w)) };
            if w > 64 {
                unsafe { _mm_prefetch::<_MM_HINT_T0>(kz.add(j as usize * w + 64)) };
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

/// AVX-512 VNNI twin of [`scores_portable`]: each kept entry's `w`-byte dot product by
/// `vpdpbusd` (64 bytes per instruction, exact i32), folded to 8 lanes, then eight entries
/// reduced together as in [`scores_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
fn scores_vnni(hd: &HeadData, dm: Dims, i: usize, idx: &[u32], sc: &mut Vec<f32>, k: Coef) {
    use std::arch::x86_64::*;
    let w = dm.w;
    let (wide, tail) = (w / 64, w % 64 == 32);
    assert!(w.is_multiple_of(32));
    assert!(hd.qz.len() >= (i + 1) * w);
    assert!(idx.iter().all(|&j| (j as usize) < dm.n) && hd.kz.len() >= dm.n * w);
    let q = hd.qz[i * w..].as_ptr();
    let kz = hd.kz.as_ptr();
    // SAFETY (closure): q holds w bytes; every key row j < n holds w bytes (asserted).
    let dot = |j: u32| -> __m256i {
        let kr = unsafe { kz.add(j as usize * w) };
        let mut acc = _mm512_setzero_si512();
        for c in 0..wide {
            unsafe {
                let qv = _mm512_loadu_si512(q.add(64 * c) as *const _);
                let kv = _mm512_loadu_si512(kr.add(64 * c) as *const _);
                acc = _mm512_dpbusd_epi32(acc, qv, kv);
            }
        }
        let mut half = _mm256_add_epi32(
            _mm512_castsi512_si256(acc),
            _mm512_extracti64x4_epi64::<1>(acc),
        );
        if tail {
            unsafe {
                let qv = _mm256_loadu_si256(q.add(64 * wide) as *const __m256i);
                let kv = _mm256_loadu_si256(kr.add(64 * wide) as *const __m256i);
                half = _mm256_dpbusd_epi32(half, qv, kv);
            }
        }
        half
    };
    push_scores(hd, w, idx, sc, k, dot)
}

/// AVX-512 twin of [`pv_portable`]: up to 64 output columns in four zmm registers across all
/// kept entries, then 16 at a time, the rest (d not a multiple of 16) by the portable loop.
/// Each output is the same sequence of fused multiply-adds as [`pv_avx2`]'s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn pv_avx512(idx: &[u32], p: &[f32], v: &[f32], d: usize, o: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(o.len() == d && idx.len() == p.len());
    assert!(idx.iter().all(|&j| (j as usize + 1) * d <= v.len()));
    #[inline(always)]
    unsafe fn pass<const M: usize>(
        idx: &[u32],
        p: &[f32],
        v: &[f32],
        d: usize,
        c0: usize,
        o: &mut [f32],
    ) {
        let mut acc = [_mm512_setzero_ps(); M];
        for (e, (&j, &pj)) in idx.iter().zip(p).enumerate() {
            if let Some(&ahead) = idx.get(e + 8) {
                // SAFETY: a hint; the address is inside v (asserted by the caller).
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(ahead as usize * d + c0) as *const i8)
                };
            }
            let pv = _mm512_set1_ps(pj);
            // SAFETY: row j of v holds d >= c0 + 16 M floats (asserted by the caller).
            let row = unsafe { v.as_ptr().add(j as usize * d + c0) };
            for (m, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(pv, unsafe { _mm512_loadu_ps(row.add(16 * m)) }, *a);
            }
        }
        for (m, a) in acc.iter().enumerate() {
            // SAFETY: o holds d >= c0 + 16 M floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(c0 + 16 * m), *a) };
        }
    }
    let mut c0 = 0;
    // SAFETY (all passes): c0 + 16 M <= d in each call.
    while c0 + 64 <= d {
        unsafe { pass::<4>(idx, p, v, d, c0, o) };
        c0 += 64;
    }
    if c0 + 32 <= d {
        unsafe { pass::<2>(idx, p, v, d, c0, o) };
        c0 += 32;
    }
    if c0 + 16 <= d {
        unsafe { pass::<1>(idx, p, v, d, c0, o) };
        c0 += 16;
    }
    if c0 < d {
        let o = &mut o[c0..];
        o.fill(0.0);
        for (&j, &pj) in idx.iter().zip(p) {
            for (y, &x) in o.iter_mut().zip(&v[j as usize * d + c0..][..d - c0]) {
                *y = pj.mul_add(x, *y);
            }
        }
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
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(ahead as usize * d + c0) as *const i8)
                };
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(
                        v.as_ptr().add(ahead as usize * d + c0 + 16) as *const i8
                    )
                };
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

/// Sets bits `lo..hi` of a word set.
fn set_range(words: &mut [u64], lo: usize, hi: usize) {
    let mut c = lo;
    while c < hi {
        let (w, b) = (c / 64, c % 64);
        let take = (64 - b).min(hi - c);
        let mask = if take == 64 {
            !0
        } else {
            ((1u64 << take) - 1) << b
        };
        words[w] |= mask;
        c += take;
    }
}

/// Scores of one row from its `Z` values: `2^f (Z - A sum K) * scale` (exact integer, exact
/// in f32, one rounding by `scale`: the same f32 as the reference's score path), then softmax
/// over the kept entries (`words`, compact numbering); other entries get probability 0.
#[inline(always)]
fn row_probs_body(simd: Isa, z: &[i32], ksg: &[i32], k: Coef, words: &[u64], p: &mut [f32]) {
    for ((p, &z), &ks) in p.iter_mut().zip(z).zip(ksg) {
        *p = k.score(z, ks);
    }
    if words.iter().all(|&w| w == 0) {
        p.fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd.avx2() {
        // SAFETY: tiers above portable are only produced after detecting avx2 and fma.
        unsafe { crate::simd::softmax_words(p, words) };
        return;
    }
    let _ = simd;
    let kept = |t: usize| words[t / 64] >> (t % 64) & 1 == 1;
    let max = (0..p.len())
        .filter(|&t| kept(t))
        .map(|t| p[t])
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (t, x) in p.iter_mut().enumerate() {
        *x = if kept(t) { fast_exp(*x - max) } else { 0.0 };
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in p.iter_mut() {
        *x *= inv;
    }
}

multiversion! {
    /// [`row_probs_body`] for `isa`.
    fn row_probs => row_probs_body(simd: Isa, z: &[i32], ksg: &[i32], k: Coef, words: &[u64],
        p: &mut [f32])
}

/// Steps 6-7 for one surviving head, a chunk of query rows at a time. Each row's kept
/// columns (its block-row's kept blocks, valid keys, causal prefix) are word sets. `Z` is
/// computed by the integer tile for the chunk's rows against a set of key blocks of 8: every
/// key when blocks are smaller than 8 (with one-entry blocks nearly every key is kept by some
/// row of a chunk, and dense work on the fractional side is cheaper on a CPU than gathering
/// scattered entries), else the union of the chunk's kept blocks (chunks are then whole
/// block-rows). A masked softmax gives the kept entries' probabilities, one GEMM `P . V`.
#[allow(clippy::too_many_arguments)]
fn attend(
    isa: Isa,
    hd: &HeadData,
    dm: Dims,
    all_blocks: &[u32],
    kept: &BlockMask,
    valid_words: &[u64],
    causal: bool,
    bs: usize,
    v: &[f32],
    k: Coef,
    out: &mut [f32],
    sc: &mut AttendScratch,
) {
    let (n, d, w) = (dm.n, dm.d, dm.w);
    let wn = n.div_ceil(64);
    let gather = bs.is_multiple_of(8);
    let rows = if bs >= 8 { bs.div_ceil(TR) * TR } else { CH };
    let mut c0 = 0;
    while c0 < n {
        let ch = rows.min(n - c0);
        // Kept columns of each row.
        sc.rw.clear();
        sc.rw.resize(ch * wn, 0);
        for r in 0..ch {
            let i = c0 + r;
            if valid_words[i / 64] >> (i % 64) & 1 == 0 {
                continue;
            }
            let rw = &mut sc.rw[r * wn..(r + 1) * wn];
            let blocks = kept.row_words(i / bs);
            if bs == 1 {
                rw.copy_from_slice(blocks);
            } else {
                for (bw, &word) in blocks.iter().enumerate() {
                    let mut word = word;
                    while word != 0 {
                        let c = bw * 64 + word.trailing_zeros() as usize;
                        word &= word - 1;
                        set_range(rw, c * bs, ((c + 1) * bs).min(n));
                    }
                }
            }
            for (x, &m) in rw.iter_mut().zip(valid_words) {
                *x &= m;
            }
            if causal {
                let end = i + 1;
                if end % 64 != 0 {
                    rw[end / 64] &= (1u64 << (end % 64)) - 1;
                }
                for x in rw.iter_mut().skip(end.div_ceil(64)) {
                    *x = 0;
                }
            }
        }
        let o = &mut out[c0 * d..(c0 + ch) * d];
        if sc.rw.iter().all(|&x| x == 0) {
            o.fill(0.0);
            c0 += ch;
            continue;
        }
        let kept_entries: u64 = sc.rw.iter().map(|x| x.count_ones() as u64).sum();
        if (kept_entries as f64) < SPARSE_BELOW * (ch * n) as f64 {
            for r in 0..ch {
                let i = c0 + r;
                let orow = &mut o[r * d..(r + 1) * d];
                sc.idx.clear();
                for (bw, &word) in sc.rw[r * wn..(r + 1) * wn].iter().enumerate() {
                    let mut word = word;
                    while word != 0 {
                        sc.idx
                            .push((bw * 64 + word.trailing_zeros() as usize) as u32);
                        word &= word - 1;
                    }
                }
                if sc.idx.is_empty() {
                    orow.fill(0.0);
                    continue;
                }
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: Isa::Avx2 is only produced after detecting avx2 and fma.
                    Isa::Avx2 => unsafe { scores_avx2(hd, dm, i, &sc.idx, &mut sc.sc, k) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: Isa::Avx512Vnni is only produced after detecting its features.
                    Isa::Avx512Vnni => unsafe { scores_vnni(hd, dm, i, &sc.idx, &mut sc.sc, k) },
                    _ => scores_portable(hd, dm, i, &sc.idx, &mut sc.sc, k),
                }
                crate::fast::softmax_row(isa, &mut sc.sc);
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Isa::Avx2 => unsafe { pv_avx2(&sc.idx, &sc.sc, v, d, orow) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Isa::Avx512Vnni => unsafe { pv_avx512(&sc.idx, &sc.sc, v, d, orow) },
                    _ => pv_portable(&sc.idx, &sc.sc, v, d, orow),
                }
            }
            c0 += ch;
            continue;
        }
        // The key blocks to score, each row's kept columns in their numbering, and V.
        let (blocks, cwn, vsrc, kdim, ksg): (&[u32], usize, &[f32], usize, &[i32]) = if gather {
            sc.union.clear();
            sc.union.resize(wn, 0);
            for r in 0..ch {
                for (u, &x) in sc.union.iter_mut().zip(&sc.rw[r * wn..(r + 1) * wn]) {
                    *u |= x;
                }
            }
            let byte = |ws: &[u64], kb: usize| (ws[kb / 8] >> (8 * (kb % 8))) & 0xff;
            sc.blocks.clear();
            sc.blocks.extend(
                (0..n.div_ceil(8))
                    .filter(|&kb| byte(&sc.union, kb) != 0)
                    .map(|kb| kb as u32),
            );
            if sc.blocks.len() % 2 == 1 {
                sc.blocks.push(zero_block(n));
            }
            let m = sc.blocks.len() * 8;
            let cwn = m.div_ceil(64);
            sc.crw.clear();
            sc.crw.resize(ch * cwn, 0);
            for r in 0..ch {
                let rw = &sc.rw[r * wn..(r + 1) * wn];
                let crw = &mut sc.crw[r * cwn..(r + 1) * cwn];
                for (t, &kb) in sc.blocks.iter().enumerate() {
                    if (kb as usize) < n.div_ceil(8) {
                        crw[t / 8] |= byte(rw, kb as usize) << (8 * (t % 8));
                    }
                }
            }
            sc.ksg.clear();
            sc.vg.clear();
            for &kb in &sc.blocks {
                let (lo, hi) = ((kb as usize * 8).min(n), (kb as usize * 8 + 8).min(n));
                sc.ksg.extend_from_slice(&hd.k_sum[lo..hi]);
                sc.ksg.resize(sc.ksg.len() + 8 - (hi - lo), 0);
                sc.vg.extend_from_slice(&v[lo * d..hi * d]);
                sc.vg.resize(sc.vg.len() + (8 - (hi - lo)) * d, 0.0);
            }
            (&sc.blocks, cwn, &sc.vg, m, &sc.ksg)
        } else {
            (all_blocks, wn, v, n, &hd.k_sum)
        };
        let m = blocks.len() * 8;
        let crw: &[u64] = if gather { &sc.crw } else { &sc.rw };
        // Z and probabilities, TR rows at a time.
        sc.z.resize(TR * m, 0);
        sc.p.clear();
        sc.p.resize(ch * m, 0.0);
        let mut r0 = 0;
        while r0 < ch {
            let q = &hd.qz[(c0 + r0) * w..];
            tile_rows(isa, q, w, w, &hd.kz_pack, blocks, dm.run_z, &mut sc.z, m);
            for r in r0..(r0 + TR).min(ch) {
                let z = &sc.z[(r - r0) * m..][..m];
                let words = &crw[r * cwn..(r + 1) * cwn];
                row_probs(isa, isa, z, ksg, k, words, &mut sc.p[r * m..(r + 1) * m]);
            }
            r0 += TR;
        }
        // O = P . V over the scored keys (the first `kdim` columns of P).
        let pv = View {
            data: &sc.p,
            rs: m,
            cs: 1,
        };
        let vv = View {
            data: vsrc,
            rs: d,
            cs: 1,
        };
        matmul(ch, d, kdim, o, d, pv, vv, 1.0);
        c0 += ch;
    }
}

/// The int8 HDP kernel (see the module docs); the caller checked [`supported`].
pub(crate) fn hdp_attention(
    p: &AttentionProblem,
    cfg: &HdpConfig,
    layer: usize,
    isa: Isa,
) -> Result<HdpOutput> {
    let dims = p.dims();
    debug_assert!(supported(cfg, dims.head_dim));
    let (heads, n, d, bs) = (dims.heads, dims.seq_len, dims.head_dim, cfg.block_size);
    let fmt = cfg.q_format;
    let a = offset(fmt);
    let dm = Dims::new(n, d, fmt);
    // Every key block in order (the integer pass and one-entry-block chunks use all keys).
    let all: Vec<u32> = (0..dm.n_pad as u32 / 8).collect();
    let mut out = Tensor::zeros(p.q().shape().to_vec());
    let mut trace = hdp::empty_layer_trace(p, cfg, layer)?;
    for b in 0..dims.batch {
        let (valid, valid_tokens) = hdp::valid_blocks(p, b, bs);
        let valid_tok: Vec<bool> = (0..n).map(|i| p.token_is_valid(b, i)).collect();
        let mut valid_words = vec![0u64; n.div_ceil(64)];
        for (i, _) in valid_tok.iter().enumerate().filter(|x| *x.1) {
            valid_words[i / 64] |= 1 << (i % 64);
        }
        let exps = hdp::prescale_exponents(p, cfg, b, heads, n, d);
        // Steps 1-5 per head, in parallel.
        let decided: Vec<(HeadData, BlockMask, f64)> = (0..heads)
            .into_par_iter()
            .map_init(PassScratch::default, |sc, h| {
                let mut hd = prepare_head(isa, p, fmt, exps, b, h, dm, &valid_tok);
                hd.logit_scale = hdp::block_logit_scale(cfg, exps, d);
                let (kept, imp) = integer_pass(
                    isa,
                    &hd,
                    dm,
                    &all,
                    &valid,
                    &valid_tok,
                    p.causal(),
                    cfg,
                    a,
                    sc,
                );
                (hd, kept, imp)
            })
            .collect();
        let head_imp: Vec<f64> = decided.iter().map(|x| x.2).collect();
        let pruned = prune_heads(&head_imp, cfg.head_pruning);
        let coef = Coef {
            a,
            two_f: fmt.one() as f32,
            scale: ((2f64).powi(-(2 * fmt.frac_bits as i32 + exps.0 + exps.1)) / (d as f64).sqrt())
                as f32,
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
                let v = &p.v().data()[off..off + n * d];
                let (hd, kept, _) = &decided[h];
                attend(
                    isa,
                    hd,
                    dm,
                    &all,
                    kept,
                    &valid_words,
                    p.causal(),
                    bs,
                    v,
                    coef,
                    o,
                    sc,
                );
            },
        );
        let saturated = decided
            .iter()
            .fold((0, 0), |(q, k), x| (q + x.0.q_sat, k + x.0.k_sat));
        let decided = decided
            .into_iter()
            .map(|(_, kept, imp)| (kept, imp))
            .collect();
        trace.sequences.push(hdp::finish_sequence(
            p,
            cfg,
            &mut out,
            b,
            (valid, valid_tokens),
            exps,
            saturated,
            decided,
            &pruned,
        ));
    }
    Ok(HdpOutput { output: out, trace })
}

/// Measured throughput of the int8 integer pass, for `hdp bench attention`.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct IntegerPassRate {
    /// Multiply-accumulates of one pass over every head (`heads x N_pad^2 x d_pad`).
    pub macs: u64,
    /// Median milliseconds of one pass (one thread).
    pub ms: f64,
    /// `macs / ms`, in GMAC/s.
    pub gmacs: f64,
}

/// Times the integer tile alone (`S_int` for every query and key of every head of the first
/// sequence, no decisions) on one thread: the part of HDP that runs at int8 rate. `None` when
/// the kernel does not support `cfg`.
pub fn integer_pass_rate(
    p: &AttentionProblem,
    cfg: &HdpConfig,
    isa: Isa,
    repeats: usize,
) -> Result<Option<IntegerPassRate>> {
    let dims = p.dims();
    let (heads, n, d) = (dims.heads, dims.seq_len, dims.head_dim);
    if !supported(cfg, d) {
        return Ok(None);
    }
    let fmt = cfg.q_format;
    let dm = Dims::new(n, d, fmt);
    let valid_tok: Vec<bool> = (0..n).map(|i| p.token_is_valid(0, i)).collect();
    let exps = hdp::prescale_exponents(p, cfg, 0, heads, n, d);
    let data: Vec<HeadData> = (0..heads)
        .map(|h| prepare_head(isa, p, fmt, exps, 0, h, dm, &valid_tok))
        .collect();
    let all: Vec<u32> = (0..dm.n_pad as u32 / 8).collect();
    let mut out = vec![0i32; TR * dm.n_pad];
    let mut sink = 0i64;
    let mut pass = || {
        let t0 = std::time::Instant::now();
        for hd in &data {
            for i0 in (0..n).step_by(TR) {
                let q = &hd.qu[i0 * dm.dp..];
                tile_rows(
                    isa, q, dm.dp, dm.dp, &hd.k_pack, &all, dm.run_int, &mut out, dm.n_pad,
                );
                sink = sink.wrapping_add(out[0] as i64);
            }
        }
        t0.elapsed().as_secs_f64() * 1e3
    };
    pass();
    let mut t: Vec<f64> = (0..repeats.max(1)).map(|_| pass()).collect();
    t.sort_by(f64::total_cmp);
    std::hint::black_box(sink);
    let ms = t[t.len() / 2];
    let macs = (heads * n.div_ceil(TR) * TR * dm.n_pad * dm.dp) as u64;
    Ok(Some(IntegerPassRate {
        macs,
        ms,
        gmacs: macs as f64 / ms / 1e6,
    }))
}

/// The int8 multiply-accumulate peak of one core for `isa`, measured: the tile's own
/// instruction mix (`vpmaddubsw` pair products added in i16, widened by `vpmaddwd` every 16)
/// on registers only, 8 independent accumulators, for about `ms` milliseconds. `None` for the
/// portable path (no fixed instruction mix to measure).
/// On AVX-512 VNNI: independent `vpdpbusd zmm` chains (64 MACs each).
pub fn int8_peak_gmacs(isa: Isa, ms: f64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if isa.avx2() {
        // The best of several windows: a peak, not an average over interruptions.
        let mut best = 0.0f64;
        for _ in 0..8 {
            let t0 = std::time::Instant::now();
            let mut macs = 0u64;
            while t0.elapsed().as_secs_f64() * 1e3 < ms / 8.0 {
                macs += match isa {
                    // SAFETY: Isa::Avx512Vnni is only produced after detecting its features.
                    Isa::Avx512Vnni => unsafe { peak_loop_vnni(5_000) },
                    // SAFETY: tiers above portable are only produced after detecting avx2, fma.
                    _ => unsafe { peak_loop_avx2(5_000) },
                };
            }
            best = best.max(macs as f64 / t0.elapsed().as_secs_f64() / 1e9);
        }
        return Some(best);
    }
    let _ = (isa, ms);
    None
}

/// `iters` rounds of 16 steps of 8 independent `vpdpbusd zmm` (64 MACs each). Returns the
/// MACs done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn peak_loop_vnni(iters: u64) -> u64 {
    use std::arch::x86_64::*;
    const CHAINS: usize = 8;
    let a = std::hint::black_box(_mm512_set1_epi8(3));
    let b: [__m512i; 4] =
        std::hint::black_box(std::array::from_fn(|k| _mm512_set1_epi8(-1 - k as i8)));
    let mut acc = [_mm512_setzero_si512(); CHAINS];
    for _ in 0..iters {
        for _ in 0..16 {
            for (k, x) in acc.iter_mut().enumerate() {
                *x = _mm512_dpbusd_epi32(*x, a, b[k % 4]);
            }
        }
    }
    let mut total = _mm512_setzero_si512();
    for x in acc {
        total = _mm512_add_epi32(total, x);
    }
    std::hint::black_box(_mm512_reduce_add_epi32(total));
    iters * 16 * CHAINS as u64 * 64
}

/// `iters` rounds of 16 steps of 6 independent `vpmaddubsw` (32 MACs each) + i16 adds, then
/// 6 `vpmaddwd` widenings: 15 live vector registers, so nothing spills. Returns the MACs done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn peak_loop_avx2(iters: u64) -> u64 {
    use std::arch::x86_64::*;
    const CHAINS: usize = 6;
    let ones = _mm256_set1_epi16(1);
    // Operands hidden from the optimizer, so nothing is folded or hoisted.
    let mut a = std::hint::black_box(_mm256_set1_epi8(3));
    let step = std::hint::black_box(_mm256_set1_epi8(1));
    // Four different right operands: distinct products per step (no common subexpression).
    let b: [__m256i; 4] =
        std::hint::black_box(std::array::from_fn(|k| _mm256_set1_epi8(-1 - k as i8)));
    let mut acc32 = [_mm256_setzero_si256(); 2];
    for _ in 0..iters {
        let mut acc16 = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..16 {
            for (k, x) in acc16.iter_mut().enumerate() {
                *x = _mm256_add_epi16(*x, _mm256_maddubs_epi16(a, b[k % 4]));
            }
            a = _mm256_add_epi8(a, step);
        }
        for (k, x) in acc16.iter().enumerate() {
            acc32[k % 2] = _mm256_add_epi32(acc32[k % 2], _mm256_madd_epi16(*x, ones));
        }
    }
    let mut s = [0i32; 8];
    // SAFETY: s holds 8 i32.
    unsafe {
        _mm256_storeu_si256(
            s.as_mut_ptr() as *mut __m256i,
            _mm256_add_epi32(acc32[0], acc32[1]),
        )
    };
    std::hint::black_box(s);
    iters * 16 * CHAINS as u64 * 32
}

#[cfg(test)]
mod tests {
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
            (0.01f64..=1.0).prop_map(|keep| RowThreshold::TopK { keep }),
            (0.01f64..=1.0).prop_map(|mass| RowThreshold::TopP { mass }),
        ]
    }

    fn head_importance() -> impl Strategy<Value = HeadImportance> {
        prop_oneof![
            Just(HeadImportance::KeptSum),
            Just(HeadImportance::KeptPosSum),
            Just(HeadImportance::AllSum),
            Just(HeadImportance::Peakedness),
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
                tile_rows(isa, &q, depth, depth, &kpack, &blocks, run, &mut out, cols);
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
            threshold in threshold(), head_importance in head_importance(),
            scale in prop_oneof![Just(1e-3f64), Just(0.05), Just(1.0)],
        ) {
            let n = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
            let cfg = HdpConfig { threshold, head_importance, block_size: 1, ..HdpConfig::default() };
            for isa in isas() {
                let (mut fast, mut reference) = (HeadDecider::new(n, &cfg, LogitScale::new(scale, true)), HeadDecider::new(n, &cfg, LogitScale::new(scale, false)));
                for (r, row) in rows.iter().enumerate().take(n) {
                    // Entries with tag 0 are masked.
                    let vals: Vec<i32> = row.iter().map(|&(v, tag)| if tag == 0 { MASKED } else { v * spread }).collect();
                    let imp: Vec<Option<i64>> = (0..n)
                        .map(|j| vals.get(j).filter(|&&v| v != MASKED).map(|&v| v as i64))
                        .collect();
                    reference.row(r, &imp);
                    let mut words = vec![0u64; vals.len().div_ceil(64)];
                    let stats = decide_b1(isa, isa, &vals, threshold, &LogitScale::new(scale, true), &mut words);
                    fast.row_decided(r, &stats, &words);
                }
                let (fk, fi) = fast.finish();
                let (rk, ri) = reference.finish();
                prop_assert_eq!(&fk, &rk, "{:?}", isa);
                prop_assert_eq!(fi.to_bits(), ri.to_bits(), "{:?} importance {} vs {}", isa, fi, ri);
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
            let (fk, fi) = fast.finish();
            let (rk, ri) = reference.finish();
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
        assert!(supported(&HdpConfig::default(), 64));
        assert!(supported(&cfg(8, 1, ScoreMode::Approx), 64)); // A = 64
        assert!(!supported(&cfg(8, 0, ScoreMode::Approx), 64)); // A = 128 saturates i16 pairs
        assert!(supported(&cfg(4, 2, ScoreMode::Approx), 64));
        assert!(!supported(&cfg(9, 4, ScoreMode::Approx), 64)); // codes beyond i8
        assert!(!supported(&cfg(8, 3, ScoreMode::Exact), 64));
        assert!(!supported(&cfg(8, 3, ScoreMode::Float), 64));
        assert!(!supported(&cfg(8, 3, ScoreMode::Approx), 1 << 20)); // scores beyond 2^24
    }
}
