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
    // The maximum in four independent chains (exact in any order; one chain waited on
    // `vmaxps`'s latency at every vector).
    let mut quads = s.chunks_exact(32);
    let mut vm = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
    for c in &mut quads {
        for (j, m) in vm.iter_mut().enumerate() {
            // SAFETY: `c` holds exactly 32 floats.
            *m = _mm256_max_ps(*m, unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * j)) });
        }
    }
    let mut vmax = _mm256_max_ps(_mm256_max_ps(vm[0], vm[1]), _mm256_max_ps(vm[2], vm[3]));
    let mut chunks = quads.remainder().chunks_exact(8);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 8 floats.
        vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(c.as_ptr()) });
    }
    let max = chunks.remainder().iter().fold(hmax(vmax), |a, &x| a.max(x));
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

/// Largest magnitude of a row's unmasked entries that the vector row tails take (valid integer
/// scores are far inside it; the caller sends other rows to the portable twin): masked entries
/// then weigh 0 without a test (`max - MASKED >= 2^31 - 2^24 > G`).
pub(crate) const TAIL_BOUND: i64 = 1 << 24;

/// Words (64 entries) between widenings of the 32-bit lane sums: at most 64 entries per lane
/// (AVX2), `64 * 2^24 = 2^30` for the kept sums, `64 * 2^20` for the weights.
const TAIL_WORDS: usize = 8;

/// The row tail of the int8 decision (`int8::pass::row_tail_portable`, its twin and
/// definition) by AVX-512, a word (64 entries, four vectors) at a time: comparisons straight
/// into mask registers and each word's bits stored once, the mass weights' mantissas looked
/// up by `vpermd` (a 16-entry table fills one register; it reads the index's low 4 bits).
/// Unmasked entries within [`TAIL_BOUND`] (the caller checks).
#[target_feature(enable = "avx512f")]
pub(crate) fn row_tail_avx512(
    row: &[i32],
    e: i32,
    max: i32,
    kept: crate::hdp::KeptSums,
    mass: Option<crate::hdp::MassWeights>,
    gt: &mut [u64],
    eq: &mut [u64],
) -> crate::int8::Tail {
    let n = row.len();
    let nw = n.div_ceil(64);
    assert!(gt.len() >= nw && eq.len() >= nw);
    let (ev, maxv, zero) = (
        _mm512_set1_epi32(e),
        _mm512_set1_epi32(max),
        _mm512_setzero_si512(),
    );
    let masked = _mm512_set1_epi32(crate::int8::MASKED);
    let (c, g) = mass.map_or((0, 0), |m| (m.c, m.g));
    let (cv, gv, half) = (
        _mm512_set1_epi32(c as i32),
        _mm512_set1_epi32(g as i32),
        _mm512_set1_epi32(1 << 15),
    );
    // SAFETY: 16 u32 = one register.
    let mant = unsafe { _mm512_loadu_si512(crate::hdp::MASS_MANTISSAS.as_ptr() as *const _) };
    let mut out = crate::int8::Tail::default();
    let (mut ks, mut kp, mut wt, mut wk) = (zero, zero, zero, zero);
    // One vector: its bits of v > e and v == e.
    macro_rules! step {
        ($v:expr, $live:expr) => {{
            let v = $v;
            let gm = _mm512_cmpgt_epi32_mask(v, ev);
            let qm = _mm512_mask_cmpeq_epi32_mask($live, v, ev);
            if kept.sum {
                ks = _mm512_mask_add_epi32(ks, gm, ks, v);
            }
            if kept.pos {
                kp = _mm512_mask_add_epi32(kp, gm, kp, _mm512_max_epi32(v, zero));
            }
            if mass.is_some() {
                // u = x >> 16, the mantissa index its low 4 bits, the shift x >> 20.
                let gap = _mm512_min_epu32(_mm512_sub_epi32(maxv, v), gv);
                let x = _mm512_add_epi32(_mm512_mullo_epi32(gap, cv), half);
                let m = _mm512_permutexvar_epi32(_mm512_srli_epi32::<16>(x), mant);
                let w = _mm512_srlv_epi32(m, _mm512_srli_epi32::<20>(x));
                wt = _mm512_add_epi32(wt, w);
                wk = _mm512_mask_add_epi32(wk, gm, wk, w);
            }
            (gm, qm)
        }};
    }
    for wi in 0..nw {
        let at = 64 * wi;
        let rem = n - at;
        let (gw, qw) = if rem >= 64 {
            // SAFETY: 64 entries from `at` are in the row.
            let p = unsafe { row.as_ptr().add(at) };
            let (g0, q0) = step!(unsafe { _mm512_loadu_si512(p as *const _) }, 0xffff);
            let (g1, q1) = step!(unsafe { _mm512_loadu_si512(p.add(16) as *const _) }, 0xffff);
            let (g2, q2) = step!(unsafe { _mm512_loadu_si512(p.add(32) as *const _) }, 0xffff);
            let (g3, q3) = step!(unsafe { _mm512_loadu_si512(p.add(48) as *const _) }, 0xffff);
            let word = |a: u16, b: u16, c: u16, d: u16| {
                a as u64 | (b as u64) << 16 | (c as u64) << 32 | (d as u64) << 48
            };
            let (g, q) = (word(g0, g1, g2, g3), word(q0, q1, q2, q3));
            (g, q)
        } else {
            let (mut gw, mut qw) = (0u64, 0u64);
            for off in (0..rem).step_by(16) {
                let live = if rem - off >= 16 {
                    0xffff
                } else {
                    ((1u32 << (rem - off)) - 1) as u16
                };
                // SAFETY: only the live lanes (below n) are read; the rest are MASKED.
                let v = unsafe {
                    _mm512_mask_loadu_epi32(masked, live, row.as_ptr().add(at + off) as *const _)
                };
                let (gm, qm) = step!(v, live);
                gw |= (gm as u64) << off;
                qw |= (qm as u64) << off;
            }
            (gw, qw)
        };
        gt[wi] = gw;
        eq[wi] = qw;
        if wi % TAIL_WORDS == TAIL_WORDS - 1 || wi + 1 == nw {
            out.kept_sum += _mm512_reduce_add_epi64(widen512(ks));
            out.kept_pos += _mm512_reduce_add_epi64(widen512(kp));
            out.w_total += _mm512_reduce_add_epi64(widen512(wt)) as u64;
            out.w_kept += _mm512_reduce_add_epi64(widen512(wk)) as u64;
            (ks, kp, wt, wk) = (zero, zero, zero, zero);
        }
    }
    out
}

/// Both halves of 16 i32 lanes sign-extended and added: 8 i64 lanes (the weights are below
/// 2^31, so sign extension is their value too).
#[inline]
#[target_feature(enable = "avx512f")]
fn widen512(v: __m512i) -> __m512i {
    _mm512_add_epi64(
        _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)),
        _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(v)),
    )
}

/// Sum of 8 i32 lanes in i64.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum_i32_wide(v: __m256i) -> i64 {
    let w = _mm256_add_epi64(
        _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
        _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(v)),
    );
    let mut x = [0i64; 4];
    // SAFETY: 4 i64.
    unsafe { _mm256_storeu_si256(x.as_mut_ptr() as *mut __m256i, w) };
    x.iter().sum()
}

/// [`row_tail_avx512`] by AVX2, a word at a time in eight vectors of 8 lanes: the mantissas by
/// two `vpermd` over the table's halves and a blend on the index's bit 3. One body per choice
/// of sums (no test inside the loop), whole words without a ragged-end check, the ragged end
/// through a padded copy.
#[target_feature(enable = "avx2,fma")]
pub(crate) fn row_tail_avx2(
    row: &[i32],
    e: i32,
    max: i32,
    kept: crate::hdp::KeptSums,
    mass: Option<crate::hdp::MassWeights>,
    gt: &mut [u64],
    eq: &mut [u64],
) -> crate::int8::Tail {
    match (kept.sum, kept.pos, mass.is_some()) {
        (false, false, false) => row_tail_avx2_n::<false, false, false>(row, e, max, mass, gt, eq),
        (false, false, true) => row_tail_avx2_n::<false, false, true>(row, e, max, mass, gt, eq),
        (false, true, false) => row_tail_avx2_n::<false, true, false>(row, e, max, mass, gt, eq),
        (false, true, true) => row_tail_avx2_n::<false, true, true>(row, e, max, mass, gt, eq),
        (true, false, false) => row_tail_avx2_n::<true, false, false>(row, e, max, mass, gt, eq),
        (true, false, true) => row_tail_avx2_n::<true, false, true>(row, e, max, mass, gt, eq),
        (true, true, false) => row_tail_avx2_n::<true, true, false>(row, e, max, mass, gt, eq),
        (true, true, true) => row_tail_avx2_n::<true, true, true>(row, e, max, mass, gt, eq),
    }
}

/// The constants of [`row_tail_avx2`]'s lanes.
#[derive(Clone, Copy)]
struct TailConsts {
    ev: __m256i,
    maxv: __m256i,
    cv: __m256i,
    gv: __m256i,
    half: __m256i,
    m_lo: __m256i,
    m_hi: __m256i,
}

/// [`row_tail_avx2`]'s running sums (32-bit lanes, widened every [`TAIL_WORDS`] words).
#[derive(Clone, Copy)]
struct TailAcc {
    ks: __m256i,
    kp: __m256i,
    wt: __m256i,
    wk: __m256i,
}

/// One vector of [`row_tail_avx2`]: the masks of `v > e` and `v == e`, and the sums.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn tail_vec<const SUM: bool, const POS: bool, const MASS: bool>(
    v: __m256i,
    k: &TailConsts,
    a: &mut TailAcc,
) -> (u64, u64) {
    let gmv = _mm256_cmpgt_epi32(v, k.ev);
    let gm = _mm256_movemask_ps(_mm256_castsi256_ps(gmv)) as u64;
    let qm = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, k.ev))) as u64;
    if SUM {
        a.ks = _mm256_add_epi32(a.ks, _mm256_and_si256(gmv, v));
    }
    if POS {
        let pos = _mm256_max_epi32(v, _mm256_setzero_si256());
        a.kp = _mm256_add_epi32(a.kp, _mm256_and_si256(gmv, pos));
    }
    if MASS {
        let gap = _mm256_min_epu32(_mm256_sub_epi32(k.maxv, v), k.gv);
        let x = _mm256_add_epi32(_mm256_mullo_epi32(gap, k.cv), k.half);
        let idx = _mm256_srli_epi32::<16>(x);
        // vpermd reads the index's low 3 bits; bit 3 (x's bit 19) to the sign bit selects
        // the upper half.
        let lo = _mm256_permutevar8x32_epi32(k.m_lo, idx);
        let hi = _mm256_permutevar8x32_epi32(k.m_hi, idx);
        let sel = _mm256_castsi256_ps(_mm256_slli_epi32::<12>(x));
        let m = _mm256_castps_si256(_mm256_blendv_ps(
            _mm256_castsi256_ps(lo),
            _mm256_castsi256_ps(hi),
            sel,
        ));
        // Shifts of 32 or more give 0, as the weight's definition wants (x < 2^32 keeps the
        // shift below 4096).
        let w = _mm256_srlv_epi32(m, _mm256_srli_epi32::<20>(x));
        a.wt = _mm256_add_epi32(a.wt, w);
        a.wk = _mm256_add_epi32(a.wk, _mm256_and_si256(gmv, w));
    }
    (gm, qm)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn row_tail_avx2_n<const SUM: bool, const POS: bool, const MASS: bool>(
    row: &[i32],
    e: i32,
    max: i32,
    mass: Option<crate::hdp::MassWeights>,
    gt: &mut [u64],
    eq: &mut [u64],
) -> crate::int8::Tail {
    let n = row.len();
    let nw = n.div_ceil(64);
    assert!(gt.len() >= nw && eq.len() >= nw);
    let (c, g) = match mass {
        Some(m) => (m.c, m.g),
        None => (0, 0),
    };
    let mt = &crate::hdp::MASS_MANTISSAS;
    // SAFETY: 8 u32 each.
    let (m_lo, m_hi) = unsafe {
        (
            _mm256_loadu_si256(mt.as_ptr() as *const __m256i),
            _mm256_loadu_si256(mt[8..].as_ptr() as *const __m256i),
        )
    };
    let k = TailConsts {
        ev: _mm256_set1_epi32(e),
        maxv: _mm256_set1_epi32(max),
        cv: _mm256_set1_epi32(c as i32),
        gv: _mm256_set1_epi32(g as i32),
        half: _mm256_set1_epi32(1 << 15),
        m_lo,
        m_hi,
    };
    let zero = _mm256_setzero_si256();
    let mut a = TailAcc {
        ks: zero,
        kp: zero,
        wt: zero,
        wk: zero,
    };
    let mut out = crate::int8::Tail::default();
    let flush = |a: &mut TailAcc, out: &mut crate::int8::Tail| {
        out.kept_sum += hsum_i32_wide(a.ks);
        out.kept_pos += hsum_i32_wide(a.kp);
        out.w_total += hsum_i32_wide(a.wt) as u64;
        out.w_kept += hsum_i32_wide(a.wk) as u64;
        *a = TailAcc {
            ks: zero,
            kp: zero,
            wt: zero,
            wk: zero,
        };
    };
    let full = n / 64;
    for wi in 0..full {
        let (mut gw, mut qw) = (0u64, 0u64);
        for t in 0..8 {
            // SAFETY: the word's 64 entries are inside the row.
            let v =
                unsafe { _mm256_loadu_si256(row.as_ptr().add(64 * wi + 8 * t) as *const __m256i) };
            let (gm, qm) = tail_vec::<SUM, POS, MASS>(v, &k, &mut a);
            gw |= gm << (8 * t);
            qw |= qm << (8 * t);
        }
        gt[wi] = gw;
        eq[wi] = qw;
        if wi % TAIL_WORDS == TAIL_WORDS - 1 {
            flush(&mut a, &mut out);
        }
    }
    if full < nw {
        // The ragged end: vectors of the MASKED-padded copy (never above e, never equal).
        let (mut gw, mut qw) = (0u64, 0u64);
        let mut buf = [crate::int8::MASKED; 8];
        let rest = &row[64 * full..];
        for (t, part) in rest.chunks(8).enumerate() {
            buf.fill(crate::int8::MASKED);
            buf[..part.len()].copy_from_slice(part);
            // SAFETY: 8 i32.
            let v = unsafe { _mm256_loadu_si256(buf.as_ptr() as *const __m256i) };
            let (gm, qm) = tail_vec::<SUM, POS, MASS>(v, &k, &mut a);
            let live = (1u64 << part.len()) - 1;
            gw |= (gm & live) << (8 * t);
            qw |= (qm & live) << (8 * t);
        }
        gt[full] = gw;
        eq[full] = qw;
    }
    flush(&mut a, &mut out);
    out
}

/// Largest `bound` on a finished row's magnitudes that the vector first passes take: their
/// 32-bit lane sums then hold 8 vectors' entries (`8 2^27 = 2^30`) between widenings.
pub(crate) const FIRST_BOUND: i64 = 1 << 27;

/// The int8 decision's first pass over a one-entry-block row
/// (`int8::pass::finish_moments_portable`, its twin and definition) by AVX-512: the entries
/// finished in place (`row - bias`, made absolute when `abs`, [`crate::int8::MASKED`] at
/// invalid keys) and their count, maximum, minimum, sum and sum of squares, in one pass.
/// Entries within [`FIRST_BOUND`] once finished (the caller checks).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,popcnt")]
pub(crate) fn finish_moments_avx512(
    row: &mut [i32],
    bias: &[i32],
    abs: bool,
    valid: Option<&[bool]>,
) -> crate::int8::Moments {
    let n = row.len();
    assert!(bias.len() >= n && valid.is_none_or(|v| v.len() >= n));
    let masked = _mm512_set1_epi32(crate::int8::MASKED);
    let (mut vmax, mut vmin) = (masked, _mm512_set1_epi32(i32::MAX));
    let (mut vsum, mut wide) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    let mut vsq = _mm512_setzero_ps();
    let mut len = 0u32;
    for (t, off) in (0..n).step_by(16).enumerate() {
        let live: __mmask16 = if n - off >= 16 {
            0xffff
        } else {
            ((1u32 << (n - off)) - 1) as u16
        };
        // SAFETY: live lanes only, all below n (and below bias/valid's lengths, asserted).
        unsafe {
            let s = _mm512_maskz_loadu_epi32(live, row.as_ptr().add(off) as *const _);
            let b = _mm512_maskz_loadu_epi32(live, bias.as_ptr().add(off) as *const _);
            let mut v = _mm512_sub_epi32(s, b);
            if abs {
                v = _mm512_abs_epi32(v);
            }
            let ok = match valid {
                Some(valid) => {
                    let bytes = _mm_maskz_loadu_epi8(live, valid.as_ptr().add(off) as *const _);
                    _mm_test_epi8_mask(bytes, bytes) & live
                }
                None => live,
            };
            v = _mm512_mask_mov_epi32(masked, ok, v);
            _mm512_mask_storeu_epi32(row.as_mut_ptr().add(off) as *mut _, live, v);
            len += ok.count_ones();
            vmax = _mm512_max_epi32(vmax, v);
            vmin = _mm512_mask_min_epi32(vmin, ok, vmin, v);
            vsum = _mm512_mask_add_epi32(vsum, ok, vsum, v);
            let f = _mm512_cvtepi32_ps(v);
            vsq = _mm512_mask3_fmadd_ps(f, f, vsq, ok);
        }
        if t % 8 == 7 {
            wide = _mm512_add_epi64(wide, widen512(vsum));
            vsum = _mm512_setzero_si512();
        }
    }
    wide = _mm512_add_epi64(wide, widen512(vsum));
    crate::int8::Moments {
        len,
        max: _mm512_reduce_max_epi32(vmax),
        min: _mm512_reduce_min_epi32(vmin),
        sum: _mm512_reduce_add_epi64(wide),
        sum_sq: _mm512_reduce_add_ps(vsq) as f64,
    }
}

/// [`finish_moments_avx2`]'s running maximum, minimum, sum (32-bit lanes) and count.
struct MomentsAcc {
    vmax: __m256i,
    vmin: __m256i,
    vsum: __m256i,
    len: u32,
}

/// One vector of [`finish_moments_avx2`] at entry `off`; squares into `vsq`.
///
/// # Safety
/// `off + 8` entries of the row and the bias (and of `valid`, when given) are readable, the
/// row's writable.
#[inline]
#[target_feature(enable = "avx2,fma,popcnt")]
#[allow(clippy::too_many_arguments)]
unsafe fn moments_step(
    rp: *mut i32,
    bp: *const i32,
    vp: Option<*const u8>,
    off: usize,
    abs: bool,
    masked: __m256i,
    a: &mut MomentsAcc,
    vsq: &mut __m256,
) {
    // SAFETY: the caller's; a bool is one byte, 0 or 1.
    unsafe {
        let s = _mm256_loadu_si256(rp.add(off) as *const __m256i);
        let b = _mm256_loadu_si256(bp.add(off) as *const __m256i);
        let mut v = _mm256_sub_epi32(s, b);
        if abs {
            v = _mm256_abs_epi32(v);
        }
        let bad = match vp {
            Some(p) => {
                let okv = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(off) as *const __m128i));
                _mm256_cmpeq_epi32(okv, _mm256_setzero_si256())
            }
            None => _mm256_setzero_si256(),
        };
        v = _mm256_blendv_epi8(v, masked, bad);
        _mm256_storeu_si256(rp.add(off) as *mut __m256i, v);
        a.len += 8 - _mm256_movemask_ps(_mm256_castsi256_ps(bad)).count_ones();
        a.vmax = _mm256_max_epi32(a.vmax, v);
        a.vmin = _mm256_min_epi32(
            a.vmin,
            _mm256_blendv_epi8(v, _mm256_set1_epi32(i32::MAX), bad),
        );
        let x = _mm256_andnot_si256(bad, v);
        a.vsum = _mm256_add_epi32(a.vsum, x);
        let f = _mm256_cvtepi32_ps(x);
        *vsq = _mm256_fmadd_ps(f, f, *vsq);
    }
}

/// [`finish_moments_avx512`] by AVX2, 8 lanes; a ragged end of under 8 entries by the
/// portable twin's arithmetic (exact integers; its squares join the sum in f64).
#[target_feature(enable = "avx2,fma,popcnt")]
pub(crate) fn finish_moments_avx2(
    row: &mut [i32],
    bias: &[i32],
    abs: bool,
    valid: Option<&[bool]>,
) -> crate::int8::Moments {
    let n = row.len();
    assert!(bias.len() >= n && valid.is_none_or(|v| v.len() >= n));
    let whole = n / 8 * 8;
    let masked = _mm256_set1_epi32(crate::int8::MASKED);
    let mut total = 0i64;
    let (rp, bp) = (row.as_mut_ptr(), bias.as_ptr());
    let vp = valid.map(|v| v.as_ptr() as *const u8);
    // Two vectors per step, their squares into two accumulators: one chain of fused
    // multiply-adds waits on its latency (4 cycles per vector).
    let (mut vsq, mut vsq2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut st = MomentsAcc {
        vmax: masked,
        vmin: _mm256_set1_epi32(i32::MAX),
        vsum: _mm256_setzero_si256(),
        len: 0,
    };
    let pairs = whole / 16;
    for t in 0..pairs {
        // SAFETY: both vectors lie below `whole <= n` (asserted lengths of row, bias, valid).
        unsafe {
            moments_step(rp, bp, vp, 16 * t, abs, masked, &mut st, &mut vsq);
            moments_step(rp, bp, vp, 16 * t + 8, abs, masked, &mut st, &mut vsq2);
        }
        if t % 4 == 3 {
            total += hsum_i32_wide(st.vsum);
            st.vsum = _mm256_setzero_si256();
        }
    }
    if whole % 16 == 8 {
        // SAFETY: as above.
        unsafe { moments_step(rp, bp, vp, whole - 8, abs, masked, &mut st, &mut vsq) };
    }
    vsq = _mm256_add_ps(vsq, vsq2);
    let MomentsAcc {
        vmax,
        vmin,
        vsum,
        len,
    } = st;
    total += hsum_i32_wide(vsum);
    let (mut mx, mut mn) = ([0i32; 8], [0i32; 8]);
    // SAFETY: 8 i32 each.
    unsafe {
        _mm256_storeu_si256(mx.as_mut_ptr() as *mut __m256i, vmax);
        _mm256_storeu_si256(mn.as_mut_ptr() as *mut __m256i, vmin);
    }
    let mut m = crate::int8::Moments {
        len,
        max: mx.into_iter().max().unwrap_or(crate::int8::MASKED),
        min: mn.into_iter().min().unwrap_or(i32::MAX),
        sum: total,
        sum_sq: hsum(vsq) as f64,
    };
    for j in whole..n {
        let mut v = row[j] - bias[j];
        if abs {
            v = v.abs();
        }
        if valid.is_some_and(|ok| !ok[j]) {
            v = crate::int8::MASKED;
        }
        row[j] = v;
        m.max = m.max.max(v);
        if v != crate::int8::MASKED {
            m.len += 1;
            m.min = m.min.min(v);
            m.sum += v as i64;
            m.sum_sq += v as f64 * v as f64;
        }
    }
    m
}
