//! The int8 primitives of the HDP kernel, one file per instruction-set tier, chosen once per
//! call through a table ([`Kernels`]): the way tract keeps per-ISA `Ops` tables and ggml keeps
//! `*_generic` twins. Every tier fills every entry of the table (a tier without one does not
//! compile); a tier that has nothing better for a primitive names a lower tier's function
//! explicitly. The meaning of each primitive is fixed by its portable twin in [`portable`],
//! and the tests run every tier the CPU has against it (`every_tier_matches_the_portable_twins`).
//!
//! Everything above these primitives (layouts, decisions, softmax bookkeeping, the driver) is
//! shared code in [`crate::int8`], tested on every machine.

use crate::fast::Isa;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_bf16;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx_vnni;
pub(crate) mod bf16;
pub(crate) mod portable;

/// Query rows per integer tile.
pub(crate) const TR: usize = 4;
/// Keys per integer tile.
pub(crate) const TC: usize = 16;

/// `out[r * out_stride + 8 t + c] = q_r . K_(8 blocks[t] + c)` (u8 x i8, exact i32) for the
/// [`TR`] query rows `q[r * q_stride..][..depth]` and the key blocks `blocks` (an even number)
/// packed by `int8::pack_keys`. `run`: how many 4-byte groups of pair sums may be added in i16
/// (only tiers without `vpdpbusd` use it).
pub(crate) type TileRows = unsafe fn(
    q: &[u8],
    q_stride: usize,
    depth: usize,
    kpack: &[i8],
    blocks: &[u32],
    run: usize,
    out: &mut [i32],
    out_stride: usize,
);

/// The sparse path's scores of one row: `s[e] = (q16 . kz[idx[e] w..][..w]) as f32 * ms`
/// for every kept key `idx[e]` (i16 x i8 products, an exact i32 sum, then one rounding: the
/// tile path's `(z - kb) ms`, since `q16` is the row's signed operand, `qz` less its offset);
/// `w` is a multiple of 16. Returns the largest score (`-inf` when `idx` is empty).
pub(crate) type SparseScores =
    unsafe fn(q16: &[i16], kz: &[i8], w: usize, idx: &[u32], ms: f32, s: &mut [f32]) -> f32;

/// [`SparseScores`] from the row's u8 operand as the tile path takes it (`qz`, `w` bytes,
/// `w` a multiple of 32), for tiers with `vpdpbusd`: `s[e] = (qz . kz_j - kb[j]) as f32 *
/// ms` for `j = idx[e]`, `kb[j] = a sum K_j` (the offset term), the tile path's score and
/// hence [`SparseScores`]' on the signed operand, bit for bit. Returns the largest score.
pub(crate) type SparseScoresU8 = unsafe fn(
    qz: &[u8],
    kz: &[i8],
    w: usize,
    idx: &[u32],
    kb: &[i32],
    ms: f32,
    s: &mut [f32],
) -> f32;

/// The sparse path's probabilities of one row's kept entries, in place: `e = exp(s - max)`
/// (`fast_exp`), `sum = sum e` (f32, any order), then `p = keep e - c sum` (compensation
/// `(keep, c)`, `(1, 0)` without), and with `bf16` the normalized `bf16_round(p / sum)` (as
/// `p * (1 / sum)`, what the tile path rounds). Returns `1 / sum`; without `bf16` the caller
/// scales the row's output by it. `s` is not empty and `max` is its maximum.
pub(crate) type SparseProbs =
    unsafe fn(s: &mut [f32], max: f32, comp: (f32, f32), bf16: bool) -> f32;

/// `o = sum_e p[e] V[idx[e]]` (rows of `d` floats) by fused multiply-adds in `e` order, in
/// one chain per output or in interleaved ones (AVX2: two, even and odd entries; AVX-512:
/// two to four) added at the end (the portable twin rounds each product: tolerance `PV_TOL`
/// in the tests).
pub(crate) type Pv = unsafe fn(idx: &[u32], p: &[f32], v: &[f32], d: usize, o: &mut [f32]);

/// [`Pv`] on V as bf16 words (`bf16::pack_rows`: `d` a multiple of 32, `d / 2` words per
/// row, word `16 b + c` holding columns `32 b + c` (low half) and `32 b + 16 + c` (high)).
/// Each tier gives bit for bit its own [`Pv`] on the widened rows (the same chains in the
/// same order): half the bytes per kept entry, and a 512 x 32 head's V (32 KiB) stays in L1.
pub(crate) type PvBf16 = unsafe fn(idx: &[u32], p: &[f32], vw: &[u32], d: usize, o: &mut [f32]);

/// One row of the tile path's kept-entry probabilities, unnormalized:
/// `e_t = exp(s_t - max)` (`fast_exp`) where bit `t` of `words` is set, else 0, with the score
/// `s_t = (z[t] - kb[t]) as f32 * ms`, `kb[t] = a ks[t]` (the key's offset term): an exact
/// integer and one rounding, the reference's f32 score `(x mul) scale`, since `ms = mul
/// scale` with `mul` a power of two (`2^f` or 1) rounds the same; `ms > 0`.
/// With compensation `(keep, c)` (`(1, 0)` without), the kept entries become
/// `p_t = keep e_t - c sum`, `sum = sum_t e_t` (f32, any order), so that `p / sum` is
/// `keep softmax - c`; pruned entries are 0. Returns `1 / sum` (0 when no entry is kept); the
/// caller scales the row's output by it, which saves a pass over the row.
pub(crate) type Probs = unsafe fn(
    z: &[i32],
    kb: &[i32],
    ms: f32,
    comp: (f32, f32),
    words: &[u64],
    p: &mut [f32],
) -> f32;

/// `iters` rounds of the tier's int8 instruction mix on registers only; returns the MACs done.
pub(crate) type PeakLoop = unsafe fn(iters: u64) -> u64;

/// One tier's primitives.
pub(crate) struct Kernels {
    /// The tier.
    pub isa: Isa,
    /// Whether `tile_rows` and `dots` take any u8 x i8 product exactly (`vpdpbusd`), or need
    /// pair sums below 2^15 (`vpmaddubsw`: at most `2 * 255 * 128` overflows).
    pub exact_u8: bool,
    tile_rows: TileRows,
    sparse_scores: SparseScores,
    /// Where the tier has a faster [`SparseScoresU8`] (AVX-512 VNNI), that one.
    sparse_scores_u8: Option<SparseScoresU8>,
    sparse_probs: SparseProbs,
    pv: Pv,
    pv_bf16: PvBf16,
    probs: Probs,
    peak: Option<(PeakLoop, &'static str)>,
    /// Chunks of rows with fewer kept entries than this fraction take the sparse path
    /// (per-entry scores, row-by-row P.V); denser ones the tile path. Measured per tier with
    /// each path forced (`ARCHITECTURE.md`): AVX2 0.45 on Zen 3 (real layer-2 Q/K/V at keep
    /// 0.25 / 0.4 / 0.6: sparse 0.75x / 0.63x / 0.51x of dense, tile 0.57x / 0.61x / 0.59x;
    /// with the per-entry primitives of 2026-12-03, `sparse_scores` and `sparse_probs`);
    /// AVX-512 VNNI 0.4 and AVX-VNNI 0.45 on Sapphire Rapids (same Q/K/V, one thread; AVX-512
    /// at keep 0.25 / 0.4 with i16 scores: sparse 5.7 / 7.3 ms, tile 6.6 / 6.6 ms, f32 or bf16
    /// P.V alike; `vpdpbusd` scores moved the crossover up, see [`SPARSE_BELOW_BF16`];
    /// AVX-VNNI at keep 0.25 / 0.4 / 0.55: sparse 6.4 / 8.0 / 9.1 ms, tile 8.7 / 8.7 / 8.8 ms);
    /// portable: untuned. With the bf16 P.V kernel: [`SPARSE_BELOW_BF16`].
    pub sparse_below: f64,
}

/// [`Kernels::sparse_below`] when the tile path's P.V runs on the AVX-512 BF16 kernel. Zen 4
/// (forced paths, keep 0.1-0.2, N = 512 and 2048) crossed at about keep 0.15 while the
/// sparse path's AVX-512 P.V ran one FMA chain per column (latency-bound) and scored by i16
/// products; Sapphire Rapids, with the chains interleaved, bf16 V rows and `vpdpbusd`
/// scores, crosses at about 0.42 (keep 0.35: sparse 6.5 ms, tile 7.0; keep 0.45: 7.2-7.5
/// against 7.0), where the bf16 kernel saves the tile path nothing.
pub(crate) const SPARSE_BELOW_BF16: f64 = 0.4;

/// The largest entry of `idx` (0 when empty), as a fold that vectorizes.
#[inline(always)]
fn max_index_body(idx: &[u32]) -> u32 {
    idx.iter().fold(0, |m, &j| m.max(j))
}

multiversion! {
    /// [`max_index_body`] for `isa` (baseline x86-64 has no unsigned 32-bit vector max).
    fn max_index => max_index_body(idx: &[u32]) -> u32
}

/// The table for `isa`. Panics when this CPU lacks the tier: the public entry points check
/// [`Isa::available`] first (`fast::check_isa`), so only a bug reaches the panic, never an
/// illegal instruction.
pub(crate) fn for_isa(isa: Isa) -> &'static Kernels {
    assert!(
        isa.available(),
        "instruction-set tier {} is not available on this CPU",
        isa.name()
    );
    match isa {
        Isa::Portable => &portable::KERNELS,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &avx2::KERNELS,
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => &avx_vnni::KERNELS,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => &avx512::KERNELS,
        #[cfg(not(target_arch = "x86_64"))]
        _ => &portable::KERNELS,
    }
}

impl Kernels {
    /// [`TileRows`], bounds checked.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn tile_rows(
        &self,
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
        // SAFETY: the table is only handed out for a tier this CPU has (`for_isa`); bounds
        // asserted above.
        unsafe { (self.tile_rows)(q, q_stride, depth, kpack, blocks, run, out, out_stride) }
    }

    /// [`SparseScores`], bounds checked.
    #[inline]
    pub fn sparse_scores(
        &self,
        q16: &[i16],
        kz: &[i8],
        w: usize,
        idx: &[u32],
        ms: f32,
        s: &mut [f32],
    ) -> f32 {
        assert!(w.is_multiple_of(16) && q16.len() >= w && s.len() == idx.len());
        // The largest index, by a fold that vectorizes (a check per index, or `max()`, was 3%
        // of HDP's time).
        assert!(idx.is_empty() || (max_index(self.isa, idx) as usize + 1) * w <= kz.len());
        // SAFETY: as in `tile_rows`.
        unsafe { (self.sparse_scores)(q16, kz, w, idx, ms, s) }
    }

    /// Whether [`Kernels::sparse_scores_u8`] serves rows of width `w`.
    pub fn has_scores_u8(&self, w: usize) -> bool {
        self.sparse_scores_u8.is_some() && w.is_multiple_of(32)
    }

    /// [`SparseScoresU8`], bounds checked; only where [`Kernels::has_scores_u8`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn sparse_scores_u8(
        &self,
        qz: &[u8],
        kz: &[i8],
        w: usize,
        idx: &[u32],
        kb: &[i32],
        ms: f32,
        s: &mut [f32],
    ) -> f32 {
        let f = self.sparse_scores_u8.expect("checked by has_scores_u8");
        assert!(w.is_multiple_of(32) && qz.len() >= w && s.len() == idx.len());
        assert!(
            idx.is_empty() || {
                let top = max_index(self.isa, idx) as usize;
                (top + 1) * w <= kz.len() && top < kb.len()
            }
        );
        // SAFETY: as in `tile_rows`.
        unsafe { f(qz, kz, w, idx, kb, ms, s) }
    }

    /// [`SparseProbs`], checked.
    #[inline]
    pub fn sparse_probs(&self, s: &mut [f32], max: f32, comp: (f32, f32), bf16: bool) -> f32 {
        assert!(!s.is_empty());
        // SAFETY: as in `tile_rows`.
        unsafe { (self.sparse_probs)(s, max, comp, bf16) }
    }

    /// [`Pv`], bounds checked.
    #[inline]
    pub fn pv(&self, idx: &[u32], p: &[f32], v: &[f32], d: usize, o: &mut [f32]) {
        assert!(o.len() == d && idx.len() == p.len());
        assert!(idx.is_empty() || (max_index(self.isa, idx) as usize + 1) * d <= v.len());
        // SAFETY: as in `tile_rows`.
        unsafe { (self.pv)(idx, p, v, d, o) }
    }

    /// [`PvBf16`], bounds checked.
    #[inline]
    pub fn pv_bf16(&self, idx: &[u32], p: &[f32], vw: &[u32], d: usize, o: &mut [f32]) {
        assert!(d.is_multiple_of(32) && o.len() == d && idx.len() == p.len());
        assert!(idx.is_empty() || (max_index(self.isa, idx) as usize + 1) * (d / 2) <= vw.len());
        // SAFETY: as in `tile_rows`.
        unsafe { (self.pv_bf16)(idx, p, vw, d, o) }
    }

    /// [`Probs`], bounds checked.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn probs(
        &self,
        z: &[i32],
        kb: &[i32],
        ms: f32,
        comp: (f32, f32),
        words: &[u64],
        p: &mut [f32],
    ) -> f32 {
        assert!(z.len() == p.len() && kb.len() == p.len() && words.len() * 64 >= p.len());
        // SAFETY: as in `tile_rows`.
        unsafe { (self.probs)(z, kb, ms, comp, words, p) }
    }

    /// Runs the peak loop for `iters` rounds: the MACs done and what was measured. `None` for
    /// the portable tier (no fixed instruction mix to measure).
    pub fn peak(&self, iters: u64) -> Option<(u64, &'static str)> {
        // SAFETY: as in `tile_rows`.
        self.peak.map(|(f, what)| (unsafe { f(iters) }, what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdp_core::rng::SplitMix64;

    /// The portable twin rounds each product; FMA tiers do not.
    const PV_TOL: f32 = 1e-5;
    /// Vector and scalar sums of the exponentials differ in order; every exp is the same
    /// polynomial (up to FMA contraction).
    const PROBS_REL: f32 = 1e-5;

    fn tables() -> Vec<&'static Kernels> {
        Isa::available_tiers().into_iter().map(for_isa).collect()
    }

    /// Every tier's sparse scores and probabilities and `pv` against the portable twins on
    /// awkward lengths, operands at the extremes of the codes; prints which tiers ran.
    #[test]
    fn every_tier_matches_the_portable_twins() {
        let mut rng = SplitMix64::new(7);
        let mut ran = Vec::new();
        for k in tables() {
            for &w in &[16usize, 32, 64, 96, 128, 160] {
                let n = 37;
                // Signed operands up to the exact scores' extremes: (Q + 128) - 128 and K.
                let q16: Vec<i16> = (0..w).map(|_| rng.next_u64() as i8 as i16).collect();
                let mut kz: Vec<i8> = (0..n * w).map(|_| rng.next_u64() as i8).collect();
                kz[..w].fill(-128);
                for len in [0usize, 1, 7, 8, 9, 16, 17, 32, 37] {
                    let idx: Vec<u32> = (0..len)
                        .map(|_| (rng.next_u64() % n as u64) as u32)
                        .collect();
                    let ms = 1e-3;
                    let (mut got, mut want) = (vec![0.0; len], vec![0.0; len]);
                    let gm = k.sparse_scores(&q16, &kz, w, &idx, ms, &mut got);
                    let wm = portable::KERNELS.sparse_scores(&q16, &kz, w, &idx, ms, &mut want);
                    assert_eq!(got, want, "{} sparse scores w {w} len {len}", k.isa.name());
                    assert_eq!(gm, wm, "{} sparse max w {w} len {len}", k.isa.name());
                    // Exact integers, one rounding.
                    for (e, &j) in idx.iter().enumerate() {
                        let z: i32 = q16
                            .iter()
                            .zip(&kz[j as usize * w..][..w])
                            .map(|(&a, &b)| a as i32 * b as i32)
                            .sum();
                        assert_eq!(want[e], z as f32 * ms);
                    }
                    if k.has_scores_u8(w) {
                        // The u8 operand with the offset 128 on its first half (the integer
                        // lanes): the same scores, bit for bit, through the offset terms.
                        let dp = w / 2;
                        let qz: Vec<u8> = (0..w).map(|_| rng.next_u64() as u8).collect();
                        let q16: Vec<i16> = qz
                            .iter()
                            .enumerate()
                            .map(|(c, &x)| x as i16 - if c < dp { 128 } else { 0 })
                            .collect();
                        let kb: Vec<i32> = kz
                            .chunks_exact(w)
                            .map(|r| 128 * r[..dp].iter().map(|&x| x as i32).sum::<i32>())
                            .collect();
                        let (mut got, mut want) = (vec![0.0; len], vec![0.0; len]);
                        let gm = k.sparse_scores_u8(&qz, &kz, w, &idx, &kb, ms, &mut got);
                        let wm = portable::KERNELS.sparse_scores(&q16, &kz, w, &idx, ms, &mut want);
                        assert_eq!(got, want, "{} u8 scores w {w} len {len}", k.isa.name());
                        assert_eq!(gm, wm, "{} u8 max w {w} len {len}", k.isa.name());
                    }
                }
            }
            for len in [1usize, 5, 8, 13, 64, 129] {
                let s: Vec<f32> = (0..len)
                    .map(|_| (rng.next_u64() % 20_000) as f32 / 1000.0 - 10.0)
                    .collect();
                let max = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                for comp in [(1.0, 0.0), (0.8, 0.2 / len as f32), (0.3, 0.7 / len as f32)] {
                    for bf16 in [false, true] {
                        let (mut got, mut want) = (s.clone(), s.clone());
                        let gi = k.sparse_probs(&mut got, max, comp, bf16);
                        let wi = portable::KERNELS.sparse_probs(&mut want, max, comp, bf16);
                        assert!(
                            (gi - wi).abs() <= PROBS_REL * wi.abs(),
                            "{} sparse probs len {len}: 1/sum {gi} vs {wi}",
                            k.isa.name()
                        );
                        // Relative to the row's largest weight (normalized: 1 / sum), plus
                        // one bf16 step when rounded.
                        let top = if bf16 { wi } else { 1.0 };
                        let step = if bf16 { 2.0f32.powi(-7) } else { 0.0 };
                        for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - w).abs() <= PROBS_REL * top + step * w.abs(),
                                "{} sparse probs len {len} comp {comp:?} bf16 {bf16} entry {t}: \
                                 {g} vs {w}",
                                k.isa.name()
                            );
                        }
                    }
                }
            }
            for &d in &[1usize, 16, 31, 32, 48, 64, 80, 96, 100, 128] {
                let n = 29;
                let v: Vec<f32> = (0..n * d)
                    .map(|_| rng.next_u64() as i32 as f32 / 2e9)
                    .collect();
                for len in [0usize, 1, 9, 29] {
                    let idx: Vec<u32> = (0..len)
                        .map(|_| (rng.next_u64() % n as u64) as u32)
                        .collect();
                    let p: Vec<f32> = (0..len)
                        .map(|_| (rng.next_u64() % 1000) as f32 / 1000.0)
                        .collect();
                    let (mut got, mut want) = (vec![f32::NAN; d], vec![f32::NAN; d]);
                    k.pv(&idx, &p, &v, d, &mut got);
                    portable::KERNELS.pv(&idx, &p, &v, d, &mut want);
                    for (c, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= PV_TOL,
                            "{} pv d {d} len {len} col {c}: {g} vs {w}",
                            k.isa.name()
                        );
                    }
                    if d % 32 == 0 {
                        // bf16 rows: bit for bit the tier's own pv on the rounded V, and the
                        // portable twin's within PV_TOL.
                        let vr: Vec<f32> = v.iter().map(|&x| hdp_core::bf16_round(x)).collect();
                        let mut vw = Vec::new();
                        bf16::pack_rows_body(&v, n, d, &mut vw);
                        let mut plain = vec![f32::NAN; d];
                        k.pv(&idx, &p, &vr, d, &mut plain);
                        let mut packed = vec![f32::NAN; d];
                        k.pv_bf16(&idx, &p, &vw, d, &mut packed);
                        assert!(
                            packed
                                .iter()
                                .zip(&plain)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{} pv_bf16 d {d} len {len} differs from its pv on bf16 V",
                            k.isa.name()
                        );
                        let mut twin = vec![f32::NAN; d];
                        portable::KERNELS.pv_bf16(&idx, &p, &vw, d, &mut twin);
                        for (c, (g, w)) in packed.iter().zip(&twin).enumerate() {
                            assert!(
                                (g - w).abs() <= PV_TOL,
                                "{} pv_bf16 d {d} len {len} col {c}: {g} vs {w}",
                                k.isa.name()
                            );
                        }
                    }
                }
            }
            for len in [1usize, 7, 16, 33, 64, 100, 517] {
                let z: Vec<i32> = (0..len)
                    .map(|_| (rng.next_u64() % 20_000) as i32 - 10_000)
                    .collect();
                let ks: Vec<i32> = (0..len)
                    .map(|_| (rng.next_u64() % 2_000) as i32 - 1_000)
                    .collect();
                for density in [0u64, 1, 3, 10] {
                    let words: Vec<u64> = (0..len.div_ceil(64))
                        .map(|_| {
                            (0..64).fold(0u64, |w, b| {
                                w | (((rng.next_u64() % 10) < density) as u64) << b
                            })
                        })
                        .collect();
                    // Exact scores (a = 128, mul = 1) and approximated ones (a = A, mul = 2^f),
                    // without and with compensation.
                    let cases = [
                        (128, 1.0, 1e-3, (1.0, 0.0)),
                        (16, 8.0, 1.5e-4, (1.0, 0.0)),
                        (16, 8.0, 1.5e-4, (0.8, 0.2 / len as f32)),
                        (128, 1.0, 1e-3, (0.3, 0.7 / len as f32)),
                    ];
                    for (a, mul, scale, comp) in cases {
                        let (mut got, mut want) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                        let kb: Vec<i32> = ks.iter().map(|&x| a * x).collect();
                        let ms = mul * scale;
                        let gi = k.probs(&z, &kb, ms, comp, &words, &mut got);
                        let wi = portable::KERNELS.probs(&z, &kb, ms, comp, &words, &mut want);
                        // The score is the reference's `(x mul) scale`.
                        for t in 0..len {
                            let x = (z[t] - a * ks[t]) as f32;
                            assert_eq!(x * ms, (x * mul) * scale);
                        }
                        assert!(
                            (gi - wi).abs() <= PROBS_REL * wi.abs(),
                            "{} probs len {len} a {a}: 1/sum {gi} vs {wi}",
                            k.isa.name()
                        );
                        // Compensated entries are differences: relative to the row's
                        // largest unnormalized weight (1, the maximum's).
                        let tol = |w: f32| PROBS_REL * w.abs().max(comp.1 / wi.max(1e-30));
                        for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - w).abs() <= tol(*w),
                                "{} probs len {len} a {a} comp {comp:?} entry {t}: {g} vs {w}",
                                k.isa.name()
                            );
                        }
                    }
                }
            }
            ran.push(k.isa.name());
        }
        let missing: Vec<&str> = Isa::ALL
            .iter()
            .filter(|t| !t.available())
            .map(|t| t.name())
            .collect();
        println!(
            "kernel tiers tested: {}; not on this CPU: {}",
            ran.join(", "),
            if missing.is_empty() {
                "none".into()
            } else {
                missing.join(", ")
            }
        );
    }
}
