//! AVX-VNNI (VEX-encoded `vpdpbusd ymm`, Alder Lake and later, Sapphire Rapids, Zen 5) on top
//! of AVX2 + FMA: 32 u8 x i8 products into exact i32 lanes per instruction, no i16 runs. P.V
//! and the softmax have no AVX-VNNI instruction: they are the AVX2 tier's, named here.

use super::{Kernels, TR};
use crate::fast::Isa;
use std::arch::x86_64::*;

pub(crate) static KERNELS: Kernels = Kernels {
    isa: Isa::AvxVnni,
    exact_u8: true,
    tile_rows,
    // The sparse path's scores and probabilities are AVX2's (i16 products, 8 lanes).
    sparse_scores: super::avx2::sparse_scores,
    sparse_scores_u8: None,
    sparse_probs: super::avx2::sparse_probs,
    pv: super::avx2::pv,
    pv_bf16: super::avx2::pv_bf16,
    probs: super::avx2::probs,
    peak: Some((peak_loop, "vpdpbusd ymm (AVX-VNNI), registers only")),
    sparse_below: 0.45,
};

/// [`super::TileRows`]: 4 rows x 16 keys in 8 ymm accumulators, one `vpdpbusd` per row, key
/// block and group of 4 dimensions (exact whatever the depth and operands).
#[target_feature(enable = "avx2,fma,avxvnni")]
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
    for (t, pair) in blocks.chunks_exact(2).enumerate() {
        // SAFETY (whole loop): the caller asserted that the TR rows of q hold depth bytes, that
        // every listed key block lies inside kpack and that out's rows hold the columns.
        let kb0 = unsafe { kpack.as_ptr().add(pair[0] as usize * 8 * depth) };
        let kb1 = unsafe { kpack.as_ptr().add(pair[1] as usize * 8 * depth) };
        let mut acc = [[_mm256_setzero_si256(); 2]; TR];
        for g in 0..groups {
            unsafe {
                let k0 = _mm256_loadu_si256(kb0.add(g * 32) as *const __m256i);
                let k1 = _mm256_loadu_si256(kb1.add(g * 32) as *const __m256i);
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = _mm256_set1_epi32(
                        (qp.add(r * q_stride + 4 * g) as *const i32).read_unaligned(),
                    );
                    a[0] = _mm256_dpbusd_avx_epi32(a[0], qv, k0);
                    a[1] = _mm256_dpbusd_avx_epi32(a[1], qv, k1);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            unsafe {
                let o = out.as_mut_ptr().add(r * out_stride + 16 * t);
                _mm256_storeu_si256(o as *mut __m256i, a[0]);
                _mm256_storeu_si256(o.add(8) as *mut __m256i, a[1]);
            }
        }
    }
}

/// [`super::PeakLoop`]: 16 steps of 8 independent `vpdpbusd ymm` (32 MACs each) per round.
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn peak_loop(iters: u64) -> u64 {
    const CHAINS: usize = 8;
    let a = std::hint::black_box(_mm256_set1_epi8(3));
    let b: [__m256i; 4] =
        std::hint::black_box(std::array::from_fn(|k| _mm256_set1_epi8(-1 - k as i8)));
    let mut acc = [_mm256_setzero_si256(); CHAINS];
    for _ in 0..iters {
        for _ in 0..16 {
            for (k, x) in acc.iter_mut().enumerate() {
                *x = _mm256_dpbusd_avx_epi32(*x, a, b[k % 4]);
            }
        }
    }
    let mut total = _mm256_setzero_si256();
    for x in acc {
        total = _mm256_add_epi32(total, x);
    }
    let mut s = [0i32; 8];
    // SAFETY: s holds 8 i32.
    unsafe { _mm256_storeu_si256(s.as_mut_ptr() as *mut __m256i, total) };
    std::hint::black_box(s);
    iters * 16 * CHAINS as u64 * 32
}
