//! AVX2 + FMA: `vpmaddubsw` pair products added in i16 for as many groups as cannot overflow
//! (`run`), widened by `vpmaddwd`; P.V by 256-bit FMAs.

use super::{Kernels, TR};
use crate::fast::Isa;
use std::arch::x86_64::*;

pub(crate) static KERNELS: Kernels = Kernels {
    isa: Isa::Avx2,
    exact_u8: false,
    tile_rows,
    sparse_scores,
    sparse_scores_u8: None,
    sparse_probs,
    pv,
    pv_bf16,
    probs,
    peak: Some((peak_loop, "vpmaddubsw + i16 adds, registers only")),
    sparse_below: 0.45,
};

/// [`super::TileRows`]: 4 x 16 register tiles; `vpmaddubsw` pair sums are added in i16 for
/// `run` groups, then widened by `vpmaddwd` into the i32 accumulators.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows(
    q: &[u8],
    q_stride: usize,
    depth: usize,
    kpack: &[i8],
    blocks: &[u32],
    run: usize,
    out: &mut [i32],
    out_stride: usize,
) {
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

/// Sums of the 8 lanes of each of `v[0..8]`, as the 8 lanes of the result.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn reduce8(v: [__m256i; 8]) -> __m256i {
    let t0 = _mm256_hadd_epi32(v[0], v[1]);
    let t1 = _mm256_hadd_epi32(v[2], v[3]);
    let t2 = _mm256_hadd_epi32(v[4], v[5]);
    let t3 = _mm256_hadd_epi32(v[6], v[7]);
    let u0 = _mm256_hadd_epi32(t0, t1);
    let u1 = _mm256_hadd_epi32(t2, t3);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(u0, u1),
        _mm256_permute2x128_si256::<0x31>(u0, u1),
    )
}

/// [`super::SparseScores`]: eight kept keys at a time, each key row sign-extended to i16
/// (`vpmovsxbw`) and multiplied by the row's i16 operand with `vpmaddwd` (exact i32 pair
/// sums whatever the codes), the eight sums reduced together, converted and scaled as one
/// vector. Widths of 16, 32 and 64 lanes have their own unrolled loops (the kernel's `w` is
/// 32 for exact scores at d <= 32, 64 for exact scores at d <= 64 or approximated ones at
/// d <= 32; 16 only in the tests); the operands (16 KiB of keys at N = 512, d = 32) sit in L1
/// or L2, so nothing is prefetched (the first version's per-key prefetch loop was the
/// primitive's hottest instruction in a Zen 3 profile).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn sparse_scores(
    q16: &[i16],
    kz: &[i8],
    w: usize,
    idx: &[u32],
    ms: f32,
    s: &mut [f32],
) -> f32 {
    // SAFETY (all arms): the caller checked the bounds; the CPU has AVX2 and FMA.
    unsafe {
        match w / 16 {
            1 => sparse_scores_n::<1>(q16, kz, w, idx, ms, s),
            2 => sparse_scores_n::<2>(q16, kz, w, idx, ms, s),
            4 => sparse_scores_n::<4>(q16, kz, w, idx, ms, s),
            _ => sparse_scores_n::<0>(q16, kz, w, idx, ms, s),
        }
    }
}

/// One key row's `vpmaddwd` products with the row operand, 8 i32 lanes to be summed: `q`
/// holds the operand's first chunks when `C` > 0, else it is read from `qp`.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // `q[c]` only where `chunks` = C <= 4
unsafe fn dot_i16<const C: usize>(
    q: &[__m256i; 4],
    qp: *const i16,
    kr: *const i8,
    chunks: usize,
) -> __m256i {
    let mut acc = _mm256_setzero_si256();
    for c in 0..chunks {
        // SAFETY: the caller's row holds `16 chunks` bytes, the operand as many lanes.
        unsafe {
            let k = _mm256_cvtepi8_epi16(_mm_loadu_si128(kr.add(16 * c) as *const __m128i));
            let qc = if C != 0 {
                q[c]
            } else {
                _mm256_loadu_si256(qp.add(16 * c) as *const __m256i)
            };
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(qc, k));
        }
    }
    acc
}

/// [`sparse_scores`] with `C` chunks of 16 lanes per row (0: `w / 16`, not unrolled).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn sparse_scores_n<const C: usize>(
    q16: &[i16],
    kz: &[i8],
    w: usize,
    idx: &[u32],
    ms: f32,
    s: &mut [f32],
) -> f32 {
    use crate::simd::hmax;
    let chunks = if C == 0 { w / 16 } else { C };
    let (qp, kp) = (q16.as_ptr(), kz.as_ptr());
    // SAFETY (whole function): the caller checked that q16 holds w lanes, every key row
    // idx[e] w bytes of kz, and s one entry per index.
    let mut q = [_mm256_setzero_si256(); 4];
    for (c, x) in q.iter_mut().enumerate().take(chunks.min(4)) {
        *x = unsafe { _mm256_loadu_si256(qp.add(16 * c) as *const __m256i) };
    }
    // No closures in this loop: they do not inherit the target features, and one was not
    // inlined (a call per key, half the primitive's time).
    let vms = _mm256_set1_ps(ms);
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut e = 0;
    while e + 8 <= idx.len() {
        let mut v = [_mm256_setzero_si256(); 8];
        for (t, x) in v.iter_mut().enumerate() {
            *x = unsafe { dot_i16::<C>(&q, qp, kp.add(idx[e + t] as usize * w), chunks) };
        }
        let sv = _mm256_mul_ps(_mm256_cvtepi32_ps(reduce8(v)), vms);
        unsafe { _mm256_storeu_ps(s.as_mut_ptr().add(e), sv) };
        vmax = _mm256_max_ps(vmax, sv);
        e += 8;
    }
    let mut max = hmax(vmax);
    for t in e..idx.len() {
        let mut lanes = [0i32; 8];
        unsafe {
            let x = dot_i16::<C>(&q, qp, kp.add(idx[t] as usize * w), chunks);
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, x)
        };
        s[t] = lanes.iter().sum::<i32>() as f32 * ms;
        max = max.max(s[t]);
    }
    max
}

/// [`super::SparseProbs`]: eight entries at a time (`exp8`, the polynomial of `fast_exp`),
/// the tail by `fast_exp`; compensation as one fused multiply-subtract, bf16 rounding as
/// integer adds on the bits (round to nearest even, as `hdp_core::bf16_round`).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn sparse_probs(
    s: &mut [f32],
    max: f32,
    (keep, c): (f32, f32),
    bf16: bool,
) -> f32 {
    use crate::simd::{exp8, hsum};
    let n = s.len();
    let full = n / 8 * 8;
    let ptr = s.as_mut_ptr();
    let vm = _mm256_set1_ps(max);
    let mut vsum = _mm256_setzero_ps();
    for t in (0..full).step_by(8) {
        // SAFETY: t + 8 <= n.
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(t)), vm));
            _mm256_storeu_ps(ptr.add(t), e);
            vsum = _mm256_add_ps(vsum, e);
        }
    }
    let mut total = 0.0f32;
    for x in s[full..].iter_mut() {
        *x = crate::fast::fast_exp(*x - max);
        total += *x;
    }
    let sum = total + hsum(vsum);
    let inv = 1.0 / sum;
    if c == 0.0 && !bf16 {
        return inv;
    }
    let (vk, vc, vinv) = (
        _mm256_set1_ps(keep),
        _mm256_set1_ps(c * sum),
        _mm256_set1_ps(inv),
    );
    let (half, odd, hi) = (
        _mm256_set1_epi32(0x7fff),
        _mm256_set1_epi32(1),
        _mm256_set1_epi32(0xffff_0000u32 as i32),
    );
    for t in (0..full).step_by(8) {
        // SAFETY: t + 8 <= n.
        unsafe {
            let mut x = _mm256_loadu_ps(ptr.add(t));
            if c != 0.0 {
                x = _mm256_fmsub_ps(vk, x, vc);
            }
            if bf16 {
                let b = _mm256_castps_si256(_mm256_mul_ps(x, vinv));
                let r = _mm256_add_epi32(
                    b,
                    _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32::<16>(b), odd)),
                );
                x = _mm256_castsi256_ps(_mm256_and_si256(r, hi));
            }
            _mm256_storeu_ps(ptr.add(t), x);
        }
    }
    for x in s[full..].iter_mut() {
        if c != 0.0 {
            *x = keep * *x - c * sum;
        }
        if bf16 {
            *x = hdp_core::bf16_round(*x * inv);
        }
    }
    inv
}

/// [`super::Pv`]: 32 output columns at a time in two sets of four registers, even entries
/// into one and odd entries into the other (one set alone waits on the FMA latency: each
/// accumulator gets one product per entry), added at the end; the rest (d not a multiple of
/// 32) by the portable loop. V rows of a head sit in L2 (64 KiB at N = 512, d = 32): no
/// prefetching.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn pv(idx: &[u32], p: &[f32], v: &[f32], d: usize, o: &mut [f32]) {
    let full = d / 32 * 32;
    let vp = v.as_ptr();
    let mut c0 = 0;
    while c0 < full {
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        let pairs = idx.len() / 2;
        for e in 0..pairs {
            for (h, acc) in acc.iter_mut().enumerate() {
                let (j, pj) = (idx[2 * e + h], p[2 * e + h]);
                let pv = _mm256_set1_ps(pj);
                // SAFETY: row j of v holds d >= c0 + 32 floats (asserted by the caller).
                let row = unsafe { vp.add(j as usize * d + c0) };
                for (m, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(pv, unsafe { _mm256_loadu_ps(row.add(8 * m)) }, *a);
                }
            }
        }
        if idx.len() % 2 == 1 {
            let e = idx.len() - 1;
            let pv = _mm256_set1_ps(p[e]);
            // SAFETY: as above.
            let row = unsafe { vp.add(idx[e] as usize * d + c0) };
            for (m, a) in acc[0].iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(pv, unsafe { _mm256_loadu_ps(row.add(8 * m)) }, *a);
            }
        }
        for (m, (&a, &b)) in acc[0].iter().zip(&acc[1]).enumerate() {
            // SAFETY: o holds d >= c0 + 32 floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(c0 + 8 * m), _mm256_add_ps(a, b)) };
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

/// [`super::PvBf16`]: [`pv`]'s chains (even and odd entries, four ymm of 8 columns per 32),
/// each ymm of 8 words giving 8 columns by a shift and 8 more by a mask.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn pv_bf16(idx: &[u32], p: &[f32], vw: &[u32], d: usize, o: &mut [f32]) {
    /// Columns 0-7, 8-15, 16-23, 24-31 of block `b` of row `j` (`half` words per row), as
    /// pv's accumulators 0-3.
    #[inline(always)]
    unsafe fn load(vw: &[u32], half: usize, j: u32, b: usize) -> [__m256; 4] {
        let hi_mask = _mm256_set1_epi32(0xffff_0000u32 as i32);
        // SAFETY: row j holds `half` words, 16 per block (asserted by the caller).
        let w = unsafe { vw.as_ptr().add(j as usize * half + 16 * b) };
        let (w0, w1) = unsafe {
            (
                _mm256_loadu_si256(w as *const __m256i),
                _mm256_loadu_si256(w.add(8) as *const __m256i),
            )
        };
        [
            _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)),
            _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16)),
            _mm256_castsi256_ps(_mm256_and_si256(w0, hi_mask)),
            _mm256_castsi256_ps(_mm256_and_si256(w1, hi_mask)),
        ]
    }
    let half = d / 2;
    for b in 0..d / 32 {
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        let pairs = idx.len() / 2;
        for e in 0..pairs {
            for (h, acc) in acc.iter_mut().enumerate() {
                let pv = _mm256_set1_ps(p[2 * e + h]);
                let x = unsafe { load(vw, half, idx[2 * e + h], b) };
                for (a, x) in acc.iter_mut().zip(x) {
                    *a = _mm256_fmadd_ps(pv, x, *a);
                }
            }
        }
        if idx.len() % 2 == 1 {
            let e = idx.len() - 1;
            let pv = _mm256_set1_ps(p[e]);
            let x = unsafe { load(vw, half, idx[e], b) };
            for (a, x) in acc[0].iter_mut().zip(x) {
                *a = _mm256_fmadd_ps(pv, x, *a);
            }
        }
        for (m, (&a, &b2)) in acc[0].iter().zip(&acc[1]).enumerate() {
            // SAFETY: o holds d >= 32 b + 32 floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(32 * b + 8 * m), _mm256_add_ps(a, b2)) };
        }
    }
}

/// [`super::PeakLoop`]: 16 steps of 6 independent `vpmaddubsw` (32 MACs each) + i16 adds per
/// round, then 6 `vpmaddwd` widenings: 15 live vector registers, so nothing spills.
#[target_feature(enable = "avx2,fma")]
unsafe fn peak_loop(iters: u64) -> u64 {
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

/// [`super::Probs`]: 8 lanes, kept lanes selected by a mask built from each byte of `words`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn probs(
    z: &[i32],
    kb: &[i32],
    ms: f32,
    (keep, c): (f32, f32),
    words: &[u64],
    p: &mut [f32],
) -> f32 {
    use crate::simd::{exp8, hmax, hsum};
    let n = p.len();
    let full = n / 8 * 8;
    let bitsel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let lane_mask = |t: usize| -> __m256 {
        let byte = (words[t / 64] >> (t % 64)) as i32 & 0xff;
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(
            _mm256_and_si256(_mm256_set1_epi32(byte), bitsel),
            bitsel,
        ))
    };
    let kept = |t: usize| words[t / 64] >> (t % 64) & 1 == 1;
    let vms = _mm256_set1_ps(ms);
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut vmax = ninf;
    for t in (0..full).step_by(8) {
        // SAFETY: t + 8 <= n for z, kb and p (lengths checked by the caller).
        unsafe {
            let zi = _mm256_loadu_si256(z.as_ptr().add(t) as *const __m256i);
            let ki = _mm256_loadu_si256(kb.as_ptr().add(t) as *const __m256i);
            let s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(zi, ki)), vms);
            _mm256_storeu_ps(p.as_mut_ptr().add(t), s);
            vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(ninf, s, lane_mask(t)));
        }
    }
    let mut max = hmax(vmax);
    for t in full..n {
        p[t] = (z[t] - kb[t]) as f32 * ms;
        if kept(t) {
            max = max.max(p[t]);
        }
    }
    if max == f32::NEG_INFINITY {
        p.fill(0.0);
        return 0.0;
    }
    let vm = _mm256_set1_ps(max);
    let mut vsum = _mm256_setzero_ps();
    for t in (0..full).step_by(8) {
        // SAFETY: t + 8 <= n.
        unsafe {
            let x = _mm256_loadu_ps(p.as_ptr().add(t));
            let e = _mm256_and_ps(exp8(_mm256_sub_ps(x, vm)), lane_mask(t));
            _mm256_storeu_ps(p.as_mut_ptr().add(t), e);
            vsum = _mm256_add_ps(vsum, e);
        }
    }
    let mut total = 0.0f32;
    for (t, x) in p.iter_mut().enumerate().skip(full) {
        *x = if kept(t) {
            crate::fast::fast_exp(*x - max)
        } else {
            0.0
        };
        total += *x;
    }
    let sum = total + hsum(vsum);
    if c != 0.0 {
        let cs = c * sum;
        let (vk, vc) = (_mm256_set1_ps(keep), _mm256_set1_ps(cs));
        for t in (0..full).step_by(8) {
            // SAFETY: t + 8 <= n; pruned entries (0) stay 0.
            unsafe {
                let x = _mm256_loadu_ps(p.as_ptr().add(t));
                let y = _mm256_fmsub_ps(vk, x, vc);
                _mm256_storeu_ps(p.as_mut_ptr().add(t), _mm256_and_ps(y, lane_mask(t)));
            }
        }
        for (t, x) in p.iter_mut().enumerate().skip(full) {
            if kept(t) {
                *x = keep * *x - cs;
            }
        }
    }
    1.0 / sum
}
