//! AVX-512 BF16: P.V by `vdpbf16ps` (pairs of bf16 products into f32 lanes), on the layouts of
//! [`super::bf16`], whose portable twin fixes the meaning.

use std::arch::x86_64::*;

/// Up to `R` probability rows x `C` zmm columns (16 outputs each) of the output, over all
/// `m2` pairs: `R * C` accumulators live in registers (at most 16, plus `C` V loads and one
/// broadcast: 21 of the 32 zmm registers).
///
/// # Safety
/// The CPU has AVX-512 F and BF16; `p` holds rows `0..R` at `p_stride` words with `m2` words
/// each, `vp` holds `m2` rows of `d` words with `c0 + 16 C <= d`, `o` rows `0..R` at
/// `o_stride` with `c0 + 16 C` columns.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<const R: usize, const C: usize>(
    p: *const u32,
    p_stride: usize,
    m2: usize,
    vp: *const u32,
    d: usize,
    c0: usize,
    o: *mut f32,
    o_stride: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for t in 0..m2 {
        // SAFETY (whole loop): in bounds by the function's contract.
        let vrow = unsafe { vp.add(t * d + c0) };
        let mut vb = [_mm512_setzero_si512(); C];
        for (j, x) in vb.iter_mut().enumerate() {
            *x = unsafe { _mm512_loadu_si512(vrow.add(16 * j) as *const _) };
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let pw = unsafe { p.add(i * p_stride + t).read() };
            // SAFETY: __m512i and __m512bh are both 64 bytes of plain lanes.
            let pb: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(pw as i32)) };
            for (a, &x) in row.iter_mut().zip(&vb) {
                let xb: __m512bh = unsafe { std::mem::transmute(x) };
                *a = _mm512_dpbf16_ps(*a, pb, xb);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, a) in row.iter().enumerate() {
            unsafe { _mm512_storeu_ps(o.add(i * o_stride + c0 + 16 * j), *a) };
        }
    }
}

/// [`super::bf16::PvBf16`]: tiles of 4 rows x 64 columns, smaller at the edges.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pv_bf16(
    p: &[u32],
    p_stride: usize,
    rows: usize,
    m2: usize,
    vp: &[u32],
    d: usize,
    o: &mut [f32],
    o_stride: usize,
) {
    let (pp, vpp, op) = (p.as_ptr(), vp.as_ptr(), o.as_mut_ptr());
    let mut r0 = 0;
    while r0 < rows {
        let r = (rows - r0).min(4);
        // SAFETY (whole loop): the caller asserted the bounds (`Bf16Kernel::run`) and d % 16 == 0.
        let (pr, or) = unsafe { (pp.add(r0 * p_stride), op.add(r0 * o_stride)) };
        let mut c0 = 0;
        while c0 < d {
            let c = ((d - c0) / 16).min(4);
            macro_rules! go {
                ($r:literal, $c:literal) => {
                    unsafe { block::<$r, $c>(pr, p_stride, m2, vpp, d, c0, or, o_stride) }
                };
            }
            match (r, c) {
                (4, 4) => go!(4, 4),
                (4, 3) => go!(4, 3),
                (4, 2) => go!(4, 2),
                (4, _) => go!(4, 1),
                (3, 4) => go!(3, 4),
                (3, 3) => go!(3, 3),
                (3, 2) => go!(3, 2),
                (3, _) => go!(3, 1),
                (2, 4) => go!(2, 4),
                (2, 3) => go!(2, 3),
                (2, 2) => go!(2, 2),
                (2, _) => go!(2, 1),
                (_, 4) => go!(1, 4),
                (_, 3) => go!(1, 3),
                (_, 2) => go!(1, 2),
                _ => go!(1, 1),
            }
            c0 += 16 * c;
        }
        r0 += r;
    }
}

/// [`super::Probs`] followed by `bf16::probs_pairs` at its returned `1 / sum`, in one go: the
/// kept entries compacted ([`super::avx512::compact_probs`], into `scratch`, `n` floats), then
/// each 32 columns expanded from the prefix (`vexpandps`), normalized and rounded to bf16
/// pairs by `vcvtne2ps2bf16` (round to nearest even, as `bf16_round`; it flushes denormal
/// results to zero). The f32 row is never written. `n` is a multiple of 16, `out` holds
/// `n / 2` words. Returns `1 / sum` (0, and zero pairs, when nothing is kept).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,popcnt")]
pub(super) unsafe fn probs_pairs_direct(
    z: &[i32],
    kb: &[i32],
    ms: f32,
    comp: (f32, f32),
    words: &[u64],
    scratch: &mut [f32],
    out: &mut [u32],
) -> f32 {
    let n = scratch.len();
    assert!(n.is_multiple_of(16) && out.len() == n / 2);
    let (cnt, sum) = super::avx512::compact_probs(z, kb, ms, comp, words, scratch);
    if cnt == 0 {
        out.fill(0);
        return 0.0;
    }
    let inv = 1.0 / sum;
    let vinv = _mm512_set1_ps(inv);
    let sp = scratch.as_ptr();
    let mut off = 0usize;
    // The next `popcnt(kept)` compacted values expanded into the kept lanes, times 1 / sum.
    let mut take = |kept: u16| -> __m512 {
        let k = kept.count_ones() as usize;
        // SAFETY: the k values at off are within the prefix (off + k <= cnt <= n); a whole
        // vector is loaded where it stays inside scratch (lanes past k are not used).
        let x = unsafe {
            if off + 16 <= n {
                _mm512_loadu_ps(sp.add(off))
            } else {
                _mm512_maskz_loadu_ps(((1u32 << k) - 1) as u16, sp.add(off))
            }
        };
        off += k;
        _mm512_mul_ps(_mm512_maskz_expand_ps(kept, x), vinv)
    };
    let op = out.as_mut_ptr();
    for g in (0..n).step_by(32) {
        let bits = super::avx512::kept_word(words, n, g / 64) >> (g % 64);
        let lo = take(bits as u16);
        if g + 32 <= n {
            let hi = take((bits >> 16) as u16);
            let packed = _mm512_cvtne2ps_pbh(hi, lo);
            // SAFETY: words g/2..g/2 + 16 of out (g + 32 <= n); __m512bh is 32 bf16 in order.
            unsafe {
                _mm512_storeu_si512(
                    op.add(g / 2) as *mut _,
                    std::mem::transmute::<__m512bh, __m512i>(packed),
                )
            };
        } else {
            let packed = _mm512_cvtneps_pbh(lo);
            // SAFETY: words g/2..g/2 + 8 of out (g + 16 == n); __m256bh is 16 bf16 in order.
            unsafe {
                _mm256_storeu_si256(
                    op.add(g / 2) as *mut __m256i,
                    std::mem::transmute::<__m256bh, __m256i>(packed),
                )
            };
        }
    }
    debug_assert_eq!(off, cnt);
    inv
}
