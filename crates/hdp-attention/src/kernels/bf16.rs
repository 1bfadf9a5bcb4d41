//! P.V with bfloat16 operands (`PvPrecision::Bf16`): the layouts, the portable twin that fixes
//! the meaning, and the dispatch to the AVX-512 BF16 kernel (`vdpbf16ps`: 32 bf16 products
//! per instruction, twice the f32 FMA rate) where the CPU has it.
//!
//! Layouts (both "pairs", what `vdpbf16ps` multiplies): a probability row of `m` entries is
//! `m / 2` u32 words, word `t` holding `bf16(p[2t])` in its low and `bf16(p[2t+1])` in its
//! high half; V (`m` rows of `d`) is `m / 2` rows of `d` words, word `(t, c)` holding
//! `bf16(V[2t][c])` low and `bf16(V[2t+1][c])` high.
//!
//! Meaning: `o[r][c] = sum_t (p[2t+1] V[2t+1][c] + p[2t] V[2t][c])`, every product exact in
//! f32 (8-bit x 8-bit significands), the sum in f32 in `t` order, odd entry first (Intel's
//! definition of `vdpbf16ps`). CPUs may flush denormal operands and results (`vdpbf16ps`
//! does): outputs agree with the twin within [`tests::PV_BF16_REL`] of `sum |p| |V|`.

use crate::fast::Isa;
use hdp_core::bf16_round;

/// The upper half of `bf16_round(x)`.
#[inline(always)]
fn bits(x: f32) -> u32 {
    bf16_round(x).to_bits() >> 16
}

/// `out[t] = pairs(bf16(p[2t] * scale), bf16(p[2t + 1] * scale))`; `p.len() == 2 out.len()`.
#[inline(always)]
pub(crate) fn probs_pairs_body(p: &[f32], scale: f32, out: &mut [u32]) {
    assert_eq!(p.len(), 2 * out.len());
    for (o, pair) in out.iter_mut().zip(p.chunks_exact(2)) {
        *o = bits(pair[0] * scale) | bits(pair[1] * scale) << 16;
    }
}

multiversion! {
    /// [`probs_pairs_body`] for `isa`.
    pub(crate) fn probs_pairs => probs_pairs_body(p: &[f32], scale: f32, out: &mut [u32])
}

/// V rows `v[..rows * d]` (already bf16-rounded or not: they are rounded here) as pairs,
/// `out` = `m2` rows of `d` words; rows at or past `rows` are zero.
#[inline(always)]
pub(crate) fn pack_v_body(v: &[f32], rows: usize, d: usize, m2: usize, out: &mut Vec<u32>) {
    assert!(v.len() >= rows * d && 2 * m2 >= rows);
    out.clear();
    out.resize(m2 * d, 0);
    for (t, orow) in out.chunks_exact_mut(d).enumerate() {
        let (r0, r1) = (2 * t, 2 * t + 1);
        if r0 < rows {
            for (o, &x) in orow.iter_mut().zip(&v[r0 * d..(r0 + 1) * d]) {
                *o = bits(x);
            }
        }
        if r1 < rows {
            for (o, &x) in orow.iter_mut().zip(&v[r1 * d..(r1 + 1) * d]) {
                *o |= bits(x) << 16;
            }
        }
    }
}

multiversion! {
    /// [`pack_v_body`] for `isa`.
    pub(crate) fn pack_v => pack_v_body(v: &[f32], rows: usize, d: usize, m2: usize,
        out: &mut Vec<u32>)
}

/// V rows `v[..rows * d]` as bf16 words for the sparse path's P.V ([`super::PvBf16`]), `d`
/// a multiple of 32: row `j` is `d / 2` words, word `16 b + c` (block `b` of 32 columns,
/// `c < 16`) holding column `32 b + c` in its low half and `32 b + 16 + c` in its high half,
/// so that one load and a shift or a mask give 16 consecutive columns as f32. Values are
/// rounded to bf16 here (already rounded ones are unchanged).
#[inline(always)]
pub(crate) fn pack_rows_body(v: &[f32], rows: usize, d: usize, out: &mut Vec<u32>) {
    assert!(d.is_multiple_of(32) && v.len() >= rows * d);
    out.clear();
    out.resize(rows * d / 2, 0);
    for (orow, vrow) in out.chunks_exact_mut(d / 2).zip(v.chunks_exact(d)) {
        for (ob, vb) in orow.chunks_exact_mut(16).zip(vrow.chunks_exact(32)) {
            for (c, o) in ob.iter_mut().enumerate() {
                *o = bits(vb[c]) | bits(vb[16 + c]) << 16;
            }
        }
    }
}

multiversion! {
    /// [`pack_rows_body`] for `isa`.
    pub(crate) fn pack_rows => pack_rows_body(v: &[f32], rows: usize, d: usize,
        out: &mut Vec<u32>)
}

#[cfg(test)]
/// The f32 value of the bf16 in the low (`hi = false`) or high half of `w`.
#[inline(always)]
fn half(w: u32, hi: bool) -> f32 {
    f32::from_bits(if hi { w & 0xffff_0000 } else { w << 16 })
}

#[cfg(test)]
/// The portable twin: `o[r * o_stride + c]` for `rows` probability rows (`p_stride` words
/// apart, `m2` words each) against packed V (`m2` rows of `d` words).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pv_twin(
    p: &[u32],
    p_stride: usize,
    rows: usize,
    m2: usize,
    vp: &[u32],
    d: usize,
    o: &mut [f32],
    o_stride: usize,
) {
    for r in 0..rows {
        let orow = &mut o[r * o_stride..][..d];
        orow.fill(0.0);
        for t in 0..m2 {
            let pw = p[r * p_stride + t];
            let (p0, p1) = (half(pw, false), half(pw, true));
            for (c, acc) in orow.iter_mut().enumerate() {
                let vw = vp[t * d + c];
                *acc += p1 * half(vw, true);
                *acc += p0 * half(vw, false);
            }
        }
    }
}

/// A P.V kernel on the layouts above; see [`pv_twin`] for the arguments.
pub(crate) type PvBf16 = unsafe fn(
    p: &[u32],
    p_stride: usize,
    rows: usize,
    m2: usize,
    vp: &[u32],
    d: usize,
    o: &mut [f32],
    o_stride: usize,
);

/// A bf16 P.V kernel with hardware dot products for this tier, when the CPU has one
/// (AVX-512 BF16 on the AVX-512 tier) and `d` is a multiple of 16; `None`: compute the same
/// numbers by f32 arithmetic on the rounded operands.
pub(crate) fn fast_kernel(isa: Isa, d: usize) -> Option<Bf16Kernel> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni
        && isa.available()
        && d.is_multiple_of(16)
        && is_x86_feature_detected!("avx512bf16")
    {
        return Some(Bf16Kernel(super::avx512_bf16::pv_bf16));
    }
    let _ = (isa, d);
    None
}

/// [`super::Probs`] then [`probs_pairs`] at its `1 / sum` in one pass where the CPU has
/// `vcvtne2ps2bf16` (the AVX-512 tier with BF16): see `avx512_bf16::probs_pairs_direct`.
#[derive(Clone, Copy)]
pub(crate) struct DirectPairs(DirectPairsFn);

/// The fused kernel's signature: `Probs`' arguments, a scratch row, the pairs.
type DirectPairsFn =
    unsafe fn(&[i32], &[i32], f32, (f32, f32), &[u64], &mut [f32], &mut [u32]) -> f32;

impl DirectPairs {
    /// The fused kernel for `isa`, when the CPU has it.
    pub(crate) fn for_isa(isa: Isa) -> Option<DirectPairs> {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512Vnni && isa.available() && is_x86_feature_detected!("avx512bf16") {
            return Some(DirectPairs(super::avx512_bf16::probs_pairs_direct));
        }
        let _ = isa;
        None
    }

    /// Runs it: `scratch.len()` (a multiple of 16) entries, `out` half as many words.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        self,
        z: &[i32],
        kb: &[i32],
        ms: f32,
        comp: (f32, f32),
        words: &[u64],
        scratch: &mut [f32],
        out: &mut [u32],
    ) -> f32 {
        let n = scratch.len();
        assert!(n.is_multiple_of(16) && out.len() * 2 == n);
        assert!(z.len() >= n && kb.len() >= n && words.len() * 64 >= n);
        // SAFETY: only handed out for a CPU with the features (`for_isa`); bounds asserted.
        unsafe { (self.0)(z, kb, ms, comp, words, scratch, out) }
    }
}

/// A checked handle on a [`PvBf16`] kernel the CPU has.
#[derive(Clone, Copy)]
pub(crate) struct Bf16Kernel(PvBf16);

impl Bf16Kernel {
    /// Runs the kernel, bounds checked.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        self,
        p: &[u32],
        p_stride: usize,
        rows: usize,
        m2: usize,
        vp: &[u32],
        d: usize,
        o: &mut [f32],
        o_stride: usize,
    ) {
        assert!(d.is_multiple_of(16) && m2 <= p_stride && d <= o_stride);
        assert!(rows == 0 || (p.len() >= (rows - 1) * p_stride + m2));
        assert!(rows == 0 || (o.len() >= (rows - 1) * o_stride + d));
        assert!(vp.len() >= m2 * d);
        // SAFETY: `fast_kernel` hands out a kernel only after detecting its features; bounds
        // asserted above.
        unsafe { (self.0)(p, p_stride, rows, m2, vp, d, o, o_stride) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hdp_core::rng::SplitMix64;

    /// Kernel vs twin, relative to `sum |p| |V|` of the output: the same exact products summed
    /// in another grouping (the hardware's internal order), plus flushed denormals.
    pub(crate) const PV_BF16_REL: f32 = 1e-5;

    #[test]
    fn layouts_round_and_pair_as_documented() {
        let p = [1.0f32, 0.5, 1.0 + 2f32.powi(-7), 3.0];
        let mut out = [0u32; 2];
        probs_pairs(Isa::Portable, &p, 0.5, &mut out);
        assert_eq!(half(out[0], false), 0.5);
        assert_eq!(half(out[0], true), 0.25);
        assert_eq!(half(out[1], false), bf16_round(0.5 + 2f32.powi(-8)));
        assert_eq!(half(out[1], true), 1.5);
        // Three rows of two columns: row 3 (padding) is zero.
        let v = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut vp = Vec::new();
        pack_v(Isa::Portable, &v, 3, 2, 2, &mut vp);
        assert_eq!(vp.len(), 4);
        assert_eq!((half(vp[0], false), half(vp[0], true)), (1.0, 3.0));
        assert_eq!((half(vp[1], false), half(vp[1], true)), (2.0, 4.0));
        assert_eq!((half(vp[2], false), half(vp[2], true)), (5.0, 0.0));
        assert_eq!((half(vp[3], false), half(vp[3], true)), (6.0, 0.0));
    }

    /// The fused probabilities-to-pairs kernel (where this CPU has it) equals its tier's
    /// `probs` followed by the portable `probs_pairs` at the returned `1 / sum`, bit for bit up
    /// to flushed denormals; ragged word ends, densities from none to all, with and without
    /// compensation. Prints whether it ran.
    #[test]
    fn direct_pairs_equal_probs_then_pairs() {
        let Some(direct) = DirectPairs::for_isa(Isa::Avx512Vnni) else {
            println!("fused probs-to-pairs kernel: not on this CPU");
            return;
        };
        let k = crate::kernels::for_isa(Isa::Avx512Vnni);
        let mut rng = SplitMix64::new(9);
        for n in [16usize, 32, 48, 64, 80, 512, 528] {
            let z: Vec<i32> = (0..n)
                .map(|_| (rng.next_u64() % 40_000) as i32 - 20_000)
                .collect();
            let kb: Vec<i32> = (0..n)
                .map(|_| (rng.next_u64() % 4_000) as i32 - 2_000)
                .collect();
            for density in [0u64, 1, 3, 9, 10] {
                let words: Vec<u64> = (0..n.div_ceil(64))
                    .map(|_| {
                        (0..64).fold(0, |w, b| {
                            w | (((rng.next_u64() % 10) < density) as u64) << b
                        })
                    })
                    .collect();
                for comp in [(1.0, 0.0), (0.7, 0.3 / n as f32)] {
                    let mut p = vec![f32::NAN; n];
                    let inv = k.probs(&z, &kb, 1.2e-3, comp, &words, &mut p);
                    let mut want = vec![0u32; n / 2];
                    probs_pairs_body(&p, inv, &mut want);
                    let (mut scratch, mut got) = (vec![f32::NAN; n], vec![!0u32; n / 2]);
                    let gi = direct.run(&z, &kb, 1.2e-3, comp, &words, &mut scratch, &mut got);
                    assert_eq!(gi.to_bits(), inv.to_bits(), "n {n} density {density}");
                    for (t, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        for hi in [false, true] {
                            let (a, b) = (half(g, hi), half(w, hi));
                            assert!(
                                a.to_bits() == b.to_bits() || (a - b).abs() < f32::MIN_POSITIVE,
                                "n {n} density {density} comp {comp:?} word {t}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
        println!("fused probs-to-pairs kernel tested");
    }

    /// Every tier's conversions equal the portable ones bit for bit; the hardware kernel (where
    /// this CPU has one) equals the twin within [`PV_BF16_REL`]; prints whether it ran.
    #[test]
    fn kernel_matches_the_twin() {
        let mut rng = SplitMix64::new(11);
        let mut unif = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut hw_ran = false;
        for isa in Isa::available_tiers() {
            for &(rows, m, d) in &[
                (1usize, 2usize, 16usize),
                (3, 10, 32),
                (4, 64, 64),
                (7, 130, 48),
                (64, 96, 64),
                (5, 40, 80),
            ] {
                let p: Vec<f32> = (0..rows * m)
                    .map(|_| {
                        if unif() < 0.6 {
                            0.0
                        } else {
                            unif().powi(3) as f32
                        }
                    })
                    .collect();
                let v: Vec<f32> = (0..m * d).map(|_| (unif() * 6.0 - 3.0) as f32).collect();
                let m2 = m / 2;
                let (mut pp, mut want_pp) = (vec![0u32; rows * m2], vec![0u32; rows * m2]);
                for r in 0..rows {
                    probs_pairs(isa, &p[r * m..][..m], 0.7, &mut pp[r * m2..][..m2]);
                    probs_pairs_body(&p[r * m..][..m], 0.7, &mut want_pp[r * m2..][..m2]);
                }
                assert_eq!(pp, want_pp, "{} probs_pairs", isa.name());
                let (mut vp, mut want_vp) = (Vec::new(), Vec::new());
                pack_v(isa, &v, m, d, m2, &mut vp);
                pack_v_body(&v, m, d, m2, &mut want_vp);
                assert_eq!(vp, want_vp, "{} pack_v", isa.name());
                let mut want = vec![f32::NAN; rows * d];
                pv_twin(&pp, m2, rows, m2, &vp, d, &mut want, d);
                // The twin against a plain f64 sum of the same rounded operands.
                for r in 0..rows {
                    for c in 0..d {
                        let (mut exact, mut mag) = (0f64, 0f64);
                        for j in 0..m {
                            let pj = bf16_round(p[r * m + j] * 0.7) as f64;
                            let x = pj * bf16_round(v[j * d + c]) as f64;
                            exact += x;
                            mag += x.abs();
                        }
                        let got = want[r * d + c] as f64;
                        // f32 summation of m terms: at most m units of 2^-24 of the magnitude.
                        assert!(
                            (got - exact).abs() <= m as f64 * 6e-8 * mag + 1e-30,
                            "twin ({r}, {c})"
                        );
                    }
                }
                if let Some(k) = fast_kernel(isa, d) {
                    hw_ran = true;
                    let mut got = vec![f32::NAN; rows * d];
                    k.run(&pp, m2, rows, m2, &vp, d, &mut got, d);
                    for r in 0..rows {
                        for c in 0..d {
                            let mag: f32 = (0..m2)
                                .map(|t| {
                                    let (pw, vw) = (pp[r * m2 + t], vp[t * d + c]);
                                    (half(pw, false) * half(vw, false)).abs()
                                        + (half(pw, true) * half(vw, true)).abs()
                                })
                                .sum();
                            let (g, w) = (got[r * d + c], want[r * d + c]);
                            assert!(
                                (g - w).abs() <= PV_BF16_REL * mag + 1e-30,
                                "{} bf16 kernel rows {rows} m {m} d {d} ({r}, {c}): {g} vs {w}",
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
        println!(
            "bf16 P.V kernel tested: {}",
            if hw_ran {
                "avx512-bf16"
            } else {
                "none (this CPU lacks AVX-512 BF16): twin only"
            }
        );
    }
}
