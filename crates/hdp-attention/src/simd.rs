//! Hand-written AVX2 + FMA helpers for the hot loops the compiler does not vectorize well on its
//! own (the exponential and row softmax). Every function here has a portable twin in
//! [`crate::fast`] with the same arithmetic (up to FMA contraction), and the tests run both.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(crate) const LN2_HI: f32 = 0.693_145_75;
pub(crate) const LN2_LO: f32 = 1.428_606_8e-6;
pub(crate) const ROUND: f32 = 12_582_912.0;

/// Eight lanes of [`crate::fast::fast_exp`].
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
        _mm256_set1_ps(88.7),
    );
    let t = _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), _mm256_set1_ps(ROUND));
    let n = _mm256_sub_ps(t, _mm256_set1_ps(ROUND));
    let ni = _mm256_sub_epi32(
        _mm256_castps_si256(t),
        _mm256_set1_epi32(ROUND.to_bits() as i32),
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(ni, _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(scale))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
    _mm_cvtss_f32(m)
}

/// Horizontal sum of eight f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn hsum(v: __m256) -> f32 {
    let m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_add_ss(m, _mm_shuffle_ps::<1>(m, m));
    _mm_cvtss_f32(m)
}

/// Softmax in place over all of `s` (not empty): the AVX2 twin of `fast::softmax_dense`.
#[target_feature(enable = "avx2,fma")]
pub(crate) fn softmax_dense(s: &mut [f32]) {
    let mut chunks = s.chunks_exact_mut(8);
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 8 floats.
        vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(c.as_ptr()) });
    }
    let max = chunks
        .into_remainder()
        .iter()
        .fold(hmax(vmax), |a, &x| a.max(x));
    let vm = _mm256_set1_ps(max);
    let mut vsum = _mm256_setzero_ps();
    let mut chunks = s.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 8 floats.
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), vm));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            vsum = _mm256_add_ps(vsum, e);
        }
    }
    let mut total = 0.0f32;
    for x in chunks.into_remainder() {
        *x = crate::fast::fast_exp(*x - max);
        total += *x;
    }
    let inv = _mm256_set1_ps(1.0 / (total + hsum(vsum)));
    let mut chunks = s.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 8 floats.
        unsafe {
            _mm256_storeu_ps(
                c.as_mut_ptr(),
                _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), inv),
            )
        };
    }
    let inv = _mm256_cvtss_f32(inv);
    for x in chunks.into_remainder() {
        *x *= inv;
    }
}

/// [`compare_word64`] by AVX-512 compares straight into mask registers.
#[target_feature(enable = "avx512f")]
pub(crate) fn compare_word64_avx512(chunk: &[i32], e: i32) -> (u64, u64) {
    assert_eq!(chunk.len(), 64);
    let ev = _mm512_set1_epi32(e);
    let (mut gt, mut eq) = (0u64, 0u64);
    for (t, c) in chunk.chunks_exact(16).enumerate() {
        // SAFETY: `c` holds exactly 16 i32.
        let v = unsafe { _mm512_loadu_si512(c.as_ptr() as *const _) };
        gt |= (_mm512_cmpgt_epi32_mask(v, ev) as u64) << (16 * t);
        eq |= (_mm512_cmpeq_epi32_mask(v, ev) as u64) << (16 * t);
    }
    (gt, eq)
}

/// Bits of `v > e` and `v == e` for exactly 64 entries (`chunk.len() == 64`).
#[target_feature(enable = "avx2,fma")]
pub(crate) fn compare_word64(chunk: &[i32], e: i32) -> (u64, u64) {
    assert_eq!(chunk.len(), 64);
    let ev = _mm256_set1_epi32(e);
    let (mut gt, mut eq) = (0u64, 0u64);
    for (t, c) in chunk.chunks_exact(8).enumerate() {
        // SAFETY: `c` holds exactly 8 i32.
        let v = unsafe { _mm256_loadu_si256(c.as_ptr() as *const __m256i) };
        let g = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(v, ev))) as u8;
        let q = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, ev))) as u8;
        gt |= (g as u64) << (8 * t);
        eq |= (q as u64) << (8 * t);
    }
    (gt, eq)
}
