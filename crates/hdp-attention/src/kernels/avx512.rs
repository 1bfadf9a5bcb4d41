//! AVX-512 F/BW/VL with VNNI: `vpdpbusd zmm` (64 u8 x i8 products into exact i32 lanes per
//! instruction, no i16 runs); P.V by 512-bit FMAs.

use super::{Kernels, TR};
use crate::fast::Isa;
use std::arch::x86_64::*;

pub(crate) static KERNELS: Kernels = Kernels {
    isa: Isa::Avx512Vnni,
    exact_u8: true,
    tile_rows,
    // The i16 sparse scores are AVX2's (8 lanes); `sparse_scores_u8` serves w % 32 == 0.
    sparse_scores: super::avx2::sparse_scores,
    sparse_scores_u8: Some(sparse_scores_u8),
    sparse_probs,
    pv,
    pv_bf16,
    probs,
    peak: Some((peak_loop, "vpdpbusd zmm, registers only")),
    sparse_below: 0.4,
};

/// [`super::TileRows`]: 4 rows x 32 keys (two pairs of packed key blocks, 8 accumulators),
/// one `vpdpbusd` per row, 16 keys and group of 4 dimensions (exact whatever the depth and
/// operands); a last single pair as 4 rows x 16 keys. The two packed key blocks of a pair
/// (8 keys x 4 bytes each) fill one zmm; each row's 4 bytes are broadcast once per group for
/// both pairs (at 4 x 16 the broadcasts and key loads outnumbered the products: 58% of the
/// `vpdpbusd` peak on Zen 4).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows(
    q: &[u8],
    q_stride: usize,
    depth: usize,
    kpack: &[i8],
    blocks: &[u32],
    _run: usize,
    out: &mut [i32],
    out_stride: usize,
) {
    let groups = depth / 4;
    let qp = q.as_ptr();
    // SAFETY (whole function): the caller asserted that the TR rows of q hold depth bytes,
    // that every listed key block lies inside kpack and that out's rows hold the columns.
    let block = |b: u32| unsafe { kpack.as_ptr().add(b as usize * 8 * depth) };
    let load = |k0: *const i8, k1: *const i8, g: usize| unsafe {
        let lo = _mm256_loadu_si256(k0.add(g * 32) as *const __m256i);
        let hi = _mm256_loadu_si256(k1.add(g * 32) as *const __m256i);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    };
    let bcast = |r: usize, g: usize| unsafe {
        _mm512_set1_epi32((qp.add(r * q_stride + 4 * g) as *const i32).read_unaligned())
    };
    let quads = blocks.len() / 4;
    for u in 0..quads {
        let quad = &blocks[4 * u..4 * u + 4];
        let (b0, b1, b2, b3) = (
            block(quad[0]),
            block(quad[1]),
            block(quad[2]),
            block(quad[3]),
        );
        let mut acc = [[_mm512_setzero_si512(); 2]; TR];
        for g in 0..groups {
            let (ka, kb) = (load(b0, b1, g), load(b2, b3, g));
            for (r, a) in acc.iter_mut().enumerate() {
                let qv = bcast(r, g);
                a[0] = _mm512_dpbusd_epi32(a[0], qv, ka);
                a[1] = _mm512_dpbusd_epi32(a[1], qv, kb);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            unsafe {
                let o = out.as_mut_ptr().add(r * out_stride + 32 * u);
                _mm512_storeu_si512(o as *mut _, a[0]);
                _mm512_storeu_si512(o.add(16) as *mut _, a[1]);
            }
        }
    }
    if blocks.len() % 4 == 2 {
        let t = 2 * quads;
        let (b0, b1) = (block(blocks[2 * t]), block(blocks[2 * t + 1]));
        let mut acc = [_mm512_setzero_si512(); TR];
        for g in 0..groups {
            let k = load(b0, b1, g);
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_dpbusd_epi32(*a, bcast(r, g), k);
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

/// [`super::SparseScoresU8`]: 16 keys at a time, two per `vpdpbusd zmm` (a key's 32 bytes in
/// each half, the row's operand broadcast to both), the eight vectors of partial sums reduced
/// together by unpacks and a 128-bit shuffle (keys are dealt so that the reduction leaves
/// them in order), then the offsets, one conversion and one scaling for all 16. A tail of
/// fewer than 16 keys repeats its first key into the missing lanes and stores its own.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn sparse_scores_u8(
    qz: &[u8],
    kz: &[i8],
    w: usize,
    idx: &[u32],
    kb: &[i32],
    ms: f32,
    s: &mut [f32],
) -> f32 {
    /// The scores of the 16 keys `j` (raw i32 dot products).
    #[inline(always)]
    unsafe fn dots16(qz: *const u8, kz: *const i8, w: usize, j: *const u32) -> __m512i {
        let mut v = [_mm512_setzero_si512(); 8];
        for c in 0..w / 32 {
            // SAFETY: the operand and every key row hold `w` bytes (checked by the caller).
            let q =
                unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(qz.add(32 * c) as *const _)) };
            for (t, v) in v.iter_mut().enumerate() {
                // Vector t holds keys (t, t + 4) for t < 4 and (t + 4, t + 8) after, so
                // that the reduction below leaves key i in lane i.
                let (a, b) = if t < 4 { (t, t + 4) } else { (t + 4, t + 8) };
                let (ka, kb) = unsafe {
                    (
                        _mm256_loadu_si256(kz.add(*j.add(a) as usize * w + 32 * c) as *const _),
                        _mm256_loadu_si256(kz.add(*j.add(b) as usize * w + 32 * c) as *const _),
                    )
                };
                let k = _mm512_inserti64x4(_mm512_castsi256_si512(ka), kb, 1);
                *v = _mm512_dpbusd_epi32(*v, q, k);
            }
        }
        // Within each 128-bit lane: four lanes of vectors 0-3 into one lane each.
        let u01 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(v[0], v[1]),
            _mm512_unpackhi_epi32(v[0], v[1]),
        );
        let u23 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(v[2], v[3]),
            _mm512_unpackhi_epi32(v[2], v[3]),
        );
        let u45 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(v[4], v[5]),
            _mm512_unpackhi_epi32(v[4], v[5]),
        );
        let u67 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(v[6], v[7]),
            _mm512_unpackhi_epi32(v[6], v[7]),
        );
        let wa = _mm512_add_epi32(
            _mm512_unpacklo_epi64(u01, u23),
            _mm512_unpackhi_epi64(u01, u23),
        );
        let wb = _mm512_add_epi32(
            _mm512_unpacklo_epi64(u45, u67),
            _mm512_unpackhi_epi64(u45, u67),
        );
        // Each key's two 128-bit halves added: lanes 0-3 keys 0-3, 4-7 keys 4-7, and so on.
        _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(wa, wb),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(wa, wb),
        )
    }
    let (qp, kp) = (qz.as_ptr(), kz.as_ptr());
    let vms = _mm512_set1_ps(ms);
    let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
    // 16 scores from the keys at `j` (16 indices); `k` selects the lanes stored at `out`.
    let mut block = |j: *const u32, k: __mmask16, out: *mut f32| {
        // SAFETY: every index is a key row of kz and below kb.len() (checked by the caller);
        // the lanes in `k` are entries of s.
        unsafe {
            let z = dots16(qp, kp, w, j);
            let off = _mm512_i32gather_epi32::<4>(
                _mm512_loadu_si512(j as *const _),
                kb.as_ptr() as *const _,
            );
            let sv = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(z, off)), vms);
            vmax = _mm512_mask_max_ps(vmax, k, vmax, sv);
            _mm512_mask_storeu_ps(out, k, sv);
        }
    };
    let full = idx.len() / 16 * 16;
    for e in (0..full).step_by(16) {
        block(idx.as_ptr().add(e), !0, s.as_mut_ptr().add(e));
    }
    if full < idx.len() {
        let take = idx.len() - full;
        let mut j = [idx[full]; 16];
        j[..take].copy_from_slice(&idx[full..]);
        block(j.as_ptr(), (1u16 << take) - 1, s.as_mut_ptr().add(full));
    }
    _mm512_reduce_max_ps(vmax)
}

/// [`super::Pv`]: up to 64 output columns in zmm registers across all kept entries, the
/// entries dealt round-robin to `C` chains of accumulators added at the end, so that `C M`
/// independent FMAs cover the FMA latency (with d = 32, one chain per column ran at one
/// entry per FMA latency: 1.26 ms of P.V on real layer-2 Q/K/V at keep 0.25 on Sapphire
/// Rapids, against 0.89 ms for AVX2's two chains); 16 columns at a time after that, the rest
/// (d not a multiple of 16) by a scalar FMA loop.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn pv(idx: &[u32], p: &[f32], v: &[f32], d: usize, o: &mut [f32]) {
    #[inline(always)]
    unsafe fn pass<const M: usize, const C: usize>(
        idx: &[u32],
        p: &[f32],
        v: &[f32],
        d: usize,
        c0: usize,
        o: &mut [f32],
    ) {
        let mut acc = [[_mm512_setzero_ps(); M]; C];
        let groups = idx.len() / C;
        let vp = v.as_ptr();
        for g in 0..groups {
            for (h, acc) in acc.iter_mut().enumerate() {
                let e = g * C + h;
                let pv = _mm512_set1_ps(p[e]);
                // SAFETY: row idx[e] of v holds d >= c0 + 16 M floats (asserted by the caller).
                let row = unsafe { vp.add(idx[e] as usize * d + c0) };
                for (m, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(pv, unsafe { _mm512_loadu_ps(row.add(16 * m)) }, *a);
                }
            }
        }
        for e in groups * C..idx.len() {
            let pv = _mm512_set1_ps(p[e]);
            // SAFETY: as above.
            let row = unsafe { vp.add(idx[e] as usize * d + c0) };
            for (m, a) in acc[0].iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(pv, unsafe { _mm512_loadu_ps(row.add(16 * m)) }, *a);
            }
        }
        for m in 0..M {
            let mut sum = acc[0][m];
            for a in &acc[1..] {
                sum = _mm512_add_ps(sum, a[m]);
            }
            // SAFETY: o holds d >= c0 + 16 M floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(c0 + 16 * m), sum) };
        }
    }
    let mut c0 = 0;
    // SAFETY (all passes): c0 + 16 M <= d in each call.
    while c0 + 64 <= d {
        unsafe { pass::<4, 2>(idx, p, v, d, c0, o) };
        c0 += 64;
    }
    if c0 + 32 <= d {
        unsafe { pass::<2, 4>(idx, p, v, d, c0, o) };
        c0 += 32;
    }
    if c0 + 16 <= d {
        unsafe { pass::<1, 4>(idx, p, v, d, c0, o) };
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

/// [`super::PvBf16`]: [`pv`]'s passes and chains, each zmm of 16 words giving 16 columns by a
/// shift and the 16 after them by a mask.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn pv_bf16(idx: &[u32], p: &[f32], vw: &[u32], d: usize, o: &mut [f32]) {
    /// Blocks `c0 / 32..c0 / 32 + M / 2` of the rows: `M` accumulators of 16 columns.
    #[inline(always)]
    unsafe fn pass<const M: usize, const C: usize>(
        idx: &[u32],
        p: &[f32],
        vw: &[u32],
        d: usize,
        c0: usize,
        o: &mut [f32],
    ) {
        /// One entry's FMAs into one chain.
        #[inline(always)]
        unsafe fn step<const M: usize>(acc: &mut [__m512; M], pj: f32, row: *const u32) {
            let hi_mask = _mm512_set1_epi32(0xffff_0000u32 as i32);
            let pv = _mm512_set1_ps(pj);
            for b in 0..M / 2 {
                // SAFETY: the row holds 8 M words from here (asserted by the caller).
                let w = unsafe { _mm512_loadu_si512(row.add(16 * b) as *const _) };
                let lo = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
                let hi = _mm512_castsi512_ps(_mm512_and_si512(w, hi_mask));
                acc[2 * b] = _mm512_fmadd_ps(pv, lo, acc[2 * b]);
                acc[2 * b + 1] = _mm512_fmadd_ps(pv, hi, acc[2 * b + 1]);
            }
        }
        let mut acc = [[_mm512_setzero_ps(); M]; C];
        // SAFETY: row idx[e] holds d / 2 >= c0 / 2 + 8 M words (asserted by the caller).
        let row = |e: usize| unsafe { vw.as_ptr().add(idx[e] as usize * (d / 2) + c0 / 2) };
        let groups = idx.len() / C;
        for g in 0..groups {
            for (h, acc) in acc.iter_mut().enumerate() {
                unsafe { step(acc, p[g * C + h], row(g * C + h)) };
            }
        }
        for (e, &pj) in p.iter().enumerate().skip(groups * C) {
            unsafe { step(&mut acc[0], pj, row(e)) };
        }
        for m in 0..M {
            let mut sum = acc[0][m];
            for a in &acc[1..] {
                sum = _mm512_add_ps(sum, a[m]);
            }
            // SAFETY: o holds d >= c0 + 16 M floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(c0 + 16 * m), sum) };
        }
    }
    // The passes of `pv` for d a multiple of 32.
    let mut c0 = 0;
    // SAFETY (both passes): c0 + 16 M <= d in each call.
    while c0 + 64 <= d {
        unsafe { pass::<4, 2>(idx, p, vw, d, c0, o) };
        c0 += 64;
    }
    if c0 + 32 <= d {
        unsafe { pass::<2, 4>(idx, p, vw, d, c0, o) };
    }
}

/// [`super::PeakLoop`]: 16 steps of 8 independent `vpdpbusd zmm` (64 MACs each) per round.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn peak_loop(iters: u64) -> u64 {
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

/// [`super::SparseProbs`]: AVX2's steps 16 lanes wide, the tail (fewer than 16 entries) in
/// masked lanes instead of scalar code: exponentials by [`exp16`] (lane for lane `fast_exp`),
/// their sum in two vectors, compensation as one fused multiply-subtract, bf16 rounding as
/// integer adds on the bits (round to nearest even, as `hdp_core::bf16_round`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn sparse_probs(s: &mut [f32], max: f32, (keep, c): (f32, f32), bf16: bool) -> f32 {
    let n = s.len();
    let ptr = s.as_mut_ptr();
    let mask = |t: usize| -> __mmask16 {
        if n - t >= 16 {
            !0
        } else {
            (1u16 << (n - t)) - 1
        }
    };
    let vm = _mm512_set1_ps(max);
    let mut sums = [_mm512_setzero_ps(); 2];
    for (i, t) in (0..n).step_by(16).enumerate() {
        let k = mask(t);
        // SAFETY: lanes in `k` are entries t..n of s.
        unsafe {
            let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, ptr.add(t)), vm));
            _mm512_mask_storeu_ps(ptr.add(t), k, e);
            sums[i % 2] = _mm512_mask_add_ps(sums[i % 2], k, sums[i % 2], e);
        }
    }
    let sum = _mm512_reduce_add_ps(_mm512_add_ps(sums[0], sums[1]));
    let inv = 1.0 / sum;
    if c == 0.0 && !bf16 {
        return inv;
    }
    let (vk, vc, vinv) = (
        _mm512_set1_ps(keep),
        _mm512_set1_ps(c * sum),
        _mm512_set1_ps(inv),
    );
    let (half, odd, hi) = (
        _mm512_set1_epi32(0x7fff),
        _mm512_set1_epi32(1),
        _mm512_set1_epi32(0xffff_0000u32 as i32),
    );
    for t in (0..n).step_by(16) {
        let k = mask(t);
        // SAFETY: as above.
        unsafe {
            let mut x = _mm512_maskz_loadu_ps(k, ptr.add(t));
            if c != 0.0 {
                x = _mm512_fmsub_ps(vk, x, vc);
            }
            if bf16 {
                let b = _mm512_castps_si512(_mm512_mul_ps(x, vinv));
                let r = _mm512_add_epi32(
                    b,
                    _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32::<16>(b), odd)),
                );
                x = _mm512_castsi512_ps(_mm512_and_si512(r, hi));
            }
            _mm512_mask_storeu_ps(ptr.add(t), k, x);
        }
    }
    inv
}

/// The dense kernel's softmax numerators of a row (not empty, every entry valid), in place:
/// `e_j = fast_exp(s_j - max)` lane for lane ([`exp16`]), and the reciprocal of their sum
/// (summed in two chains of 16 lanes), which the caller applies to the row's P.V output.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn softmax_unnormalized(s: &mut [f32]) -> f32 {
    let n = s.len();
    let ptr = s.as_mut_ptr();
    let full = n / 16 * 16;
    let tail: __mmask16 = ((1u32 << (n - full)) - 1) as u16;
    // The maximum in four chains (exact in any order).
    let mut vm = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
    // SAFETY (loads and stores below): entries below `full`, and the tail's live lanes only.
    for (i, t) in (0..full).step_by(16).enumerate() {
        vm[i % 4] = _mm512_max_ps(vm[i % 4], unsafe { _mm512_loadu_ps(ptr.add(t)) });
    }
    let neg = _mm512_set1_ps(f32::NEG_INFINITY);
    let last = unsafe { _mm512_mask_loadu_ps(neg, tail, ptr.add(full)) };
    vm[0] = _mm512_max_ps(vm[0], last);
    let max = _mm512_reduce_max_ps(_mm512_max_ps(
        _mm512_max_ps(vm[0], vm[1]),
        _mm512_max_ps(vm[2], vm[3]),
    ));
    let vmax = _mm512_set1_ps(max);
    let mut sums = [_mm512_setzero_ps(); 2];
    for (i, t) in (0..full).step_by(16).enumerate() {
        unsafe {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(ptr.add(t)), vmax));
            _mm512_storeu_ps(ptr.add(t), e);
            sums[i % 2] = _mm512_add_ps(sums[i % 2], e);
        }
    }
    if tail != 0 {
        unsafe {
            let e = exp16(_mm512_sub_ps(
                _mm512_maskz_loadu_ps(tail, ptr.add(full)),
                vmax,
            ));
            _mm512_mask_storeu_ps(ptr.add(full), tail, e);
            sums[0] = _mm512_mask_add_ps(sums[0], tail, sums[0], e);
        }
    }
    1.0 / _mm512_reduce_add_ps(_mm512_add_ps(sums[0], sums[1]))
}

/// Sixteen lanes of `fast_exp` (the same steps as `simd::exp8`).
#[inline]
#[target_feature(enable = "avx512f")]
fn exp16(x: __m512) -> __m512 {
    use crate::simd::{LN2_HI, LN2_LO, LOG2E, ROUND};
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.3)),
        _mm512_set1_ps(88.7),
    );
    let t = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), _mm512_set1_ps(ROUND));
    let n = _mm512_sub_ps(t, _mm512_set1_ps(ROUND));
    let ni = _mm512_sub_epi32(
        _mm512_castps_si512(t),
        _mm512_set1_epi32(ROUND.to_bits() as i32),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127)));
    _mm512_mul_ps(p, _mm512_castsi512_ps(scale))
}

/// A word's kept bits, with the lanes at or past `n` cleared.
#[inline(always)]
pub(super) fn kept_word(words: &[u64], n: usize, w: usize) -> u64 {
    let rem = n - 64 * w;
    if rem >= 64 {
        words[w]
    } else {
        words[w] & ((1u64 << rem) - 1)
    }
}

/// The kept entries of [`super::Probs`], compacted: their unnormalized (compensated) values in
/// column order at the front of `p`; returns their count and `sum` (0 and 0 when none is
/// kept). Only the kept entries' exponentials are computed: one pass compresses the kept
/// scores to the front of `p` (`vcompressps` into a register, then a masked store: the memory
/// form is slow on Zen 4), the exponentials and compensation run over that dense prefix.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,popcnt")]
pub(super) fn compact_probs(
    z: &[i32],
    kb: &[i32],
    ms: f32,
    (keep, c): (f32, f32),
    words: &[u64],
    p: &mut [f32],
) -> (usize, f32) {
    let n = p.len();
    assert!(z.len() >= n && kb.len() >= n && words.len() * 64 >= n);
    let vms = _mm512_set1_ps(ms);
    let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut cnt = 0usize;
    let pp = p.as_mut_ptr();
    for w in 0..n.div_ceil(64) {
        let bits = kept_word(words, n, w);
        for q in 0..4 {
            let kept = (bits >> (16 * q)) as u16;
            if kept == 0 {
                continue;
            }
            let t = 64 * w + 16 * q;
            // SAFETY: whole vectors below n, kept lanes (below n) of the last; the compressed
            // store writes `popcnt(kept)` floats at `cnt <= t`, within p.
            unsafe {
                let (zi, ki) = if t + 16 <= n {
                    (
                        _mm512_loadu_si512(z.as_ptr().add(t) as *const _),
                        _mm512_loadu_si512(kb.as_ptr().add(t) as *const _),
                    )
                } else {
                    (
                        _mm512_maskz_loadu_epi32(kept, z.as_ptr().add(t)),
                        _mm512_maskz_loadu_epi32(kept, kb.as_ptr().add(t)),
                    )
                };
                let s = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(zi, ki)), vms);
                vmax = _mm512_mask_max_ps(vmax, kept, vmax, s);
                let k = kept.count_ones() as usize;
                let packed = _mm512_maskz_compress_ps(kept, s);
                _mm512_mask_storeu_ps(pp.add(cnt), ((1u32 << k) - 1) as u16, packed);
                cnt += k;
            }
        }
    }
    if cnt == 0 {
        return (0, 0.0);
    }
    let vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    let mut vsum = _mm512_setzero_ps();
    let tail = |i: usize| -> __mmask16 {
        if i + 16 <= cnt {
            0xffff
        } else {
            ((1u32 << (cnt - i)) - 1) as u16
        }
    };
    for i in (0..cnt).step_by(16) {
        let m = tail(i);
        // SAFETY: lanes below cnt <= n.
        unsafe {
            let x = _mm512_maskz_loadu_ps(m, pp.add(i));
            let e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(x, vm)));
            _mm512_mask_storeu_ps(pp.add(i), m, e);
            vsum = _mm512_add_ps(vsum, e);
        }
    }
    let sum = _mm512_reduce_add_ps(vsum);
    if c != 0.0 {
        let (vk, vc) = (_mm512_set1_ps(keep), _mm512_set1_ps(c * sum));
        for i in (0..cnt).step_by(16) {
            let m = tail(i);
            // SAFETY: lanes below cnt.
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, pp.add(i));
                _mm512_mask_storeu_ps(pp.add(i), m, _mm512_fmsub_ps(vk, x, vc));
            }
        }
    }
    (cnt, sum)
}

/// [`super::Probs`]: [`compact_probs`], then a pass walking back from the end expands each
/// vector's kept values into place (`vexpandps`), zeros elsewhere. In place is safe: the
/// prefix a vector's values sit in ends at or before the vector's own position, so writing
/// from the back never overwrites values still to be read.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,popcnt")]
unsafe fn probs(
    z: &[i32],
    kb: &[i32],
    ms: f32,
    comp: (f32, f32),
    words: &[u64],
    p: &mut [f32],
) -> f32 {
    let n = p.len();
    let (cnt, sum) = compact_probs(z, kb, ms, comp, words, p);
    if cnt == 0 {
        p.fill(0.0);
        return 0.0;
    }
    let pp = p.as_mut_ptr();
    let nw = n.div_ceil(64);
    let word = |w: usize| kept_word(words, n, w);
    // Expand from the back: vector t's values are the `popcnt` floats before `off`.
    let mut off = cnt;
    for w in (0..nw).rev() {
        let bits = word(w);
        let rem = n - 64 * w;
        for q in (0..4).rev() {
            if 16 * q >= rem {
                continue;
            }
            let t = 64 * w + 16 * q;
            let kept = (bits >> (16 * q)) as u16;
            let live: __mmask16 = if rem - 16 * q >= 16 {
                0xffff
            } else {
                ((1u32 << (rem - 16 * q)) - 1) as u16
            };
            let k = kept.count_ones() as usize;
            off -= k;
            // SAFETY: reads `k` floats at off (off + k <= the previous off <= n), writes the
            // live lanes of t..t+16 (below n).
            unsafe {
                // A whole-vector load where it stays inside p (masked loads measured 1.7x
                // slower on Zen 4 here); lanes past the k values are not used.
                let x = if off + 16 <= n {
                    _mm512_loadu_ps(pp.add(off))
                } else {
                    _mm512_maskz_loadu_ps(((1u32 << k) - 1) as u16, pp.add(off))
                };
                _mm512_mask_storeu_ps(pp.add(t), live, _mm512_maskz_expand_ps(kept, x));
            }
        }
    }
    debug_assert_eq!(off, 0);
    1.0 / sum
}
