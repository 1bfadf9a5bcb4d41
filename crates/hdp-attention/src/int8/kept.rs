//! The kept side (steps 6-7): scores of the kept entries, masked softmax, P.V.

use super::*;
use crate::kernels::bf16;
use hdp_core::PvPrecision;

/// Query rows per chunk of the kept-entry stage (their probabilities stay in L2 for P.V).
pub(super) const CH: usize = 64;

/// Scratch of the kept-entry stage.
#[derive(Default)]
pub(super) struct AttendScratch {
    /// Kept columns per row of the chunk, as `wn` words each.
    pub(super) rw: Vec<u64>,
    /// Union of the chunk's kept columns.
    pub(super) union: Vec<u64>,
    /// The union as key blocks of 8.
    pub(super) blocks: Vec<u32>,
    /// Per row, its kept columns in the numbering of `blocks`.
    pub(super) crw: Vec<u64>,
    /// V rows of the union's keys.
    pub(super) vg: Vec<f32>,
    /// `sum_k K` of the union's keys.
    pub(super) ksg: Vec<i32>,
    /// `a sum_k K` of the chunk's scored keys.
    pub(super) kb: Vec<i32>,
    /// One tile of `Z` (and of the low nibbles' product when split).
    pub(super) z: Vec<i32>,
    pub(super) z2: Vec<i32>,
    /// Probabilities of the chunk, `CH x m`.
    pub(super) p: Vec<f32>,
    /// Kept keys (with 8 entries of slack, [`kept_indices`]) and their scores/probabilities
    /// of one row (sparse chunks).
    pub(super) idx: Vec<u32>,
    pub(super) sc: Vec<f32>,
    /// Per row of the chunk, `1 / sum` of its unnormalized probabilities.
    pub(super) inv: Vec<f32>,
    /// One row's signed score operand (sparse chunks, [`signed_operand`]).
    pub(super) q16: Vec<i16>,
    /// bf16 P.V: the head's V rounded to bf16 (as f32), V as pairs (the head's, or the
    /// chunk's gathered rows), the chunk's probabilities as pairs.
    pub(super) vr: Vec<f32>,
    pub(super) vpk: Vec<u32>,
    pub(super) vpk_head: Vec<u32>,
    pub(super) ppk: Vec<u32>,
    /// bf16 P.V on the sparse path: the head's V as bf16 words (`bf16::pack_rows`).
    pub(super) vw: Vec<u32>,
    /// The sparse path's u8 scores: every key's offset term `a sum_k K`.
    pub(super) kbh: Vec<i32>,
    /// Compensation of each row of the chunk: `(1 - m, c)`, `(1, 0)` when none.
    pub(super) comp: Vec<(f32, f32)>,
}

/// `out = bf16_round(v)` elementwise.
#[inline(always)]
fn round_bf16_body(v: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o = hdp_core::bf16_round(x);
    }
}

multiversion! {
    /// [`round_bf16_body`] for `isa`.
    fn round_bf16 => round_bf16_body(v: &[f32], out: &mut [f32])
}

/// Adds `c` times row `i`'s valid V sum to each output row of a chunk starting at `c0`
/// (compensation, hdp.md step 7's option).
fn add_compensation(comp: &[(f32, f32)], vs: &hdp::VSums, c0: usize, d: usize, o: &mut [f32]) {
    for (r, (&(_, c), orow)) in comp.iter().zip(o.chunks_exact_mut(d)).enumerate() {
        if c != 0.0 {
            for (y, &x) in orow.iter_mut().zip(vs.sum32(c0 + r)) {
                *y += c * x;
            }
        }
    }
}

/// Turns `Z` into the f32 score the reference uses: `((Z - a sum K) as f32 * two_f) * scale`,
/// an exact integer, exact in f32 (|x| < 2^24, checked by `supported`), then one rounding by
/// `scale`, as the f32 reference path does; every tier's `probs` and `sparse_scores` compute
/// the same.
#[derive(Clone, Copy)]
pub(super) struct Coef {
    pub(super) a: i32,
    pub(super) two_f: f32,
    pub(super) scale: f32,
}

/// Sets bits `lo..hi` of a word set.
pub(super) fn set_range(words: &mut [u64], lo: usize, hi: usize) {
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

/// Per byte value, the positions of its set bits, one per byte, lowest first.
static BIT_POSITIONS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let (mut x, mut k, mut packed) = (b, 0, 0u64);
        let mut pos = 0;
        while x != 0 {
            if x & 1 == 1 {
                packed |= (pos as u64) << (8 * k);
                k += 1;
            }
            x >>= 1;
            pos += 1;
        }
        t[b] = packed;
        b += 1;
    }
    t
};

/// The set bits of `words` as indices into `idx`, ascending; returns how many. `idx` holds at
/// least that many plus 8 (each byte of a word writes 8 entries, of which its set bits are
/// kept). Branch-free per byte, so the loop vectorizes.
#[inline(always)]
fn kept_indices_body(words: &[u64], idx: &mut [u32]) -> usize {
    let mut len = 0;
    for (wi, &word) in words.iter().enumerate() {
        if word == 0 {
            continue;
        }
        for b in 0..8 {
            let byte = (word >> (8 * b)) & 0xff;
            let pos = BIT_POSITIONS[byte as usize];
            let base = (wi * 64 + 8 * b) as u32;
            for (t, x) in idx[len..len + 8].iter_mut().enumerate() {
                *x = base + ((pos >> (8 * t)) & 0xff) as u32;
            }
            len += byte.count_ones() as usize;
        }
    }
    len
}

/// [`kept_indices_body`] on the best code for `isa` (the tiers above portable: AVX2's).
pub(super) fn kept_indices(isa: Isa, words: &[u64], idx: &mut [u32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if isa.avx2() {
        // SAFETY: tiers above portable are only produced after detecting avx2 and popcnt.
        return unsafe { kept_indices_avx2(words, idx) };
    }
    let _ = isa;
    kept_indices_body(words, idx)
}

/// [`kept_indices_body`] by AVX2: per byte, its positions zero-extended (`vpmovzxbd`) plus
/// the byte's first column, 8 entries stored at once (the compiler's vectorization of the
/// body took 14 instructions per byte instead of 5).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
fn kept_indices_avx2(words: &[u64], idx: &mut [u32]) -> usize {
    use std::arch::x86_64::*;
    let total: usize = words.iter().map(|w| w.count_ones() as usize).sum();
    assert!(total + 8 <= idx.len(), "idx holds the set bits plus 8");
    let out = idx.as_mut_ptr();
    let eight = _mm256_set1_epi32(8);
    let mut len = 0;
    for (wi, &word) in words.iter().enumerate() {
        if word == 0 {
            continue;
        }
        let mut base = _mm256_set1_epi32((wi * 64) as i32);
        for byte in word.to_le_bytes() {
            // SAFETY: the table has 256 entries of 8 bytes; `len` counts the set bits before
            // this byte, so `len + 8 <= total + 8 <= idx.len()` (asserted).
            unsafe {
                let pos = _mm_loadl_epi64(BIT_POSITIONS.as_ptr().add(byte as usize) as *const _);
                let v = _mm256_add_epi32(_mm256_cvtepu8_epi32(pos), base);
                _mm256_storeu_si256(out.add(len) as *mut __m256i, v);
            }
            len += byte.count_ones() as usize;
            base = _mm256_add_epi32(base, eight);
        }
    }
    len
}

/// Row `qz` (`qw` bytes) as the signed operand of the sparse scores, `w` lanes:
/// `q16 . kz_j = Z - za sum K_j`, the tile path's `z - kb` (the integer lanes, the first `dp`,
/// lose the offset `za`; split exact scores join their nibbles first, `16 hi + lo`).
fn signed_operand(dm: Dims, qz: &[u8], q16: &mut [i16]) {
    for (c, x) in q16.iter_mut().enumerate().take(dm.w) {
        let base = if dm.split {
            16 * qz[c] as i16 + qz[dm.w + c] as i16
        } else {
            qz[c] as i16
        };
        *x = base - if c < dm.dp { dm.za as i16 } else { 0 };
    }
}

/// Steps 6-7 for one surviving head, a chunk of query rows at a time. Each row's kept
/// columns (its block-row's kept blocks, valid keys, causal prefix) are word sets. `Z` is
/// computed by the integer tile for the chunk's rows against a set of key blocks of 8: every
/// key when blocks are smaller than 8 (with one-entry blocks nearly every key is kept by some
/// row of a chunk, and dense work on the fractional side is cheaper on a CPU than gathering
/// scattered entries), else the union of the chunk's kept blocks (chunks are then whole
/// block-rows). A masked softmax gives the kept entries' probabilities, one GEMM `P . V`.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend(
    isa: Isa,
    hd: &HeadData,
    dm: Dims,
    all_blocks: &[u32],
    kept: &BlockMask,
    valid_words: &[u64],
    causal: bool,
    bs: usize,
    v: &[f32],
    pv: PvPrecision,
    mass: &[f64],
    k: Coef,
    out: &mut [f32],
    sc: &mut AttendScratch,
    clock: &mut Clock,
    st: &mut StageTimes,
) {
    let (n, d, w) = (dm.n, dm.d, dm.w);
    let kn = crate::kernels::for_isa(isa);
    let wn = n.div_ceil(64);
    // The one f32 factor of the scores (`two_f` is a power of two: `(x two_f) scale` and
    // `x (two_f scale)` round the same).
    let ms = k.two_f * k.scale;
    let gather = bs.is_multiple_of(8);
    let rows = if bs >= 8 { bs.div_ceil(TR) * TR } else { CH };
    // bf16 operands: V rounded once per head (every path below reads the rounded copy), the
    // hardware kernel where the CPU has one, packed V of the whole head when chunks use every
    // key.
    let bf16 = pv == PvPrecision::Bf16;
    let hw = if bf16 {
        bf16::fast_kernel(isa, d)
    } else {
        None
    };
    // With the hardware kernel, probabilities go straight to its bf16 pairs where the CPU can.
    let direct = hw.and_then(|_| bf16::DirectPairs::for_isa(isa));
    // Chunks sparser than this take the per-entry path (crossover measured per tier).
    let sparse_below = if hw.is_some() {
        crate::kernels::SPARSE_BELOW_BF16
    } else {
        kn.sparse_below
    };
    let mut vr = std::mem::take(&mut sc.vr);
    let mut head_vpk = std::mem::take(&mut sc.vpk_head);
    let mut head_vpk_ready = false;
    let v: &[f32] = if bf16 {
        vr.clear();
        vr.resize(v.len(), 0.0);
        round_bf16(isa, v, &mut vr);
        &vr
    } else {
        v
    };
    // Compensation: the V sums each row's pruned mass goes to.
    let vsums = (!mass.is_empty()).then(|| {
        let valid_tok: Vec<bool> = (0..n)
            .map(|i| valid_words[i / 64] >> (i % 64) & 1 == 1)
            .collect();
        hdp::VSums::new(v, &valid_tok, causal, d)
    });
    // The sparse path's bf16 V and key offsets, made at its first chunk.
    let packed_rows = bf16 && d.is_multiple_of(32);
    let mut sparse_ready = false;
    clock.lap(&mut st.kept_setup);
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
        sc.comp.clear();
        sc.comp.resize(ch, (1.0, 0.0));
        if let Some(vs) = &vsums {
            for r in 0..ch {
                let i = c0 + r;
                if valid_words[i / 64] >> (i % 64) & 1 == 0 {
                    continue;
                }
                let n_kept = hdp_core::bits::count_ones(&sc.rw[r * wn..(r + 1) * wn]);
                if let Some((keep, c)) = hdp::row_compensation(mass[i / bs], vs.count(i), n_kept) {
                    sc.comp[r] = (keep as f32, c as f32);
                }
            }
        }
        let o = &mut out[c0 * d..(c0 + ch) * d];
        if sc.rw.iter().all(|&x| x == 0) {
            o.fill(0.0);
            c0 += ch;
            continue;
        }
        let kept_entries = hdp_core::bits::count_ones(&sc.rw) as u64;
        if (kept_entries as f64) < sparse_below * (ch * n) as f64 {
            // Per row: its kept keys, their scores (the row's signed operand against the
            // keys' rows), probabilities, and V rows accumulated (`sparse_scores`,
            // `sparse_probs`, `pv`).
            sc.idx.resize(n + 8, 0);
            sc.q16.resize(w, 0);
            let u8_scores = kn.has_scores_u8(w) && !dm.split;
            if !sparse_ready {
                if packed_rows {
                    bf16::pack_rows(isa, v, n, d, &mut sc.vw);
                }
                if u8_scores {
                    sc.kbh.clear();
                    sc.kbh.extend(hd.k_sum[..n].iter().map(|&x| k.a * x));
                }
                sparse_ready = true;
            }
            for r in 0..ch {
                let i = c0 + r;
                let orow = &mut o[r * d..(r + 1) * d];
                let len = kept_indices(isa, &sc.rw[r * wn..(r + 1) * wn], &mut sc.idx);
                if len == 0 {
                    orow.fill(0.0);
                    continue;
                }
                let idx = &sc.idx[..len];
                sc.sc.resize(len, 0.0);
                let qz = &hd.qz[i * dm.qw..][..dm.qw];
                let max = if u8_scores {
                    clock.lap(&mut st.kept_setup);
                    kn.sparse_scores_u8(qz, &hd.kz, w, idx, &sc.kbh, ms, &mut sc.sc)
                } else {
                    signed_operand(dm, qz, &mut sc.q16);
                    clock.lap(&mut st.kept_setup);
                    kn.sparse_scores(&sc.q16, &hd.kz, w, idx, ms, &mut sc.sc)
                };
                clock.lap(&mut st.kept_scores);
                let inv = kn.sparse_probs(&mut sc.sc, max, sc.comp[r], bf16);
                clock.lap(&mut st.softmax);
                if packed_rows {
                    kn.pv_bf16(idx, &sc.sc, &sc.vw, d, orow);
                } else {
                    kn.pv(idx, &sc.sc, v, d, orow);
                }
                if !bf16 {
                    for x in orow.iter_mut() {
                        *x *= inv;
                    }
                }
                if let Some(vs) = &vsums {
                    add_compensation(&sc.comp[r..r + 1], vs, i, d, orow);
                }
                clock.lap(&mut st.pv);
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
        // The keys' offset terms `a sum_k K` once per chunk.
        sc.kb.clear();
        sc.kb.extend(ksg[..m].iter().map(|&x| k.a * x));
        // Z and probabilities, TR rows at a time.
        sc.z.resize(TR * m, 0);
        // Every entry of the chunk's rows is written below (`probs` writes zeros where
        // pruned), so the buffer is only grown, never cleared (clearing it cost a memset of
        // the whole chunk, ~5% of HDP's time at N = 2048).
        if sc.p.len() < ch * m {
            sc.p.resize(ch * m, 0.0);
        }
        sc.inv.clear();
        sc.inv.resize(ch, 0.0);
        let m2 = m / 2;
        if direct.is_some() && sc.ppk.len() < ch * m2 {
            sc.ppk.resize(ch * m2, 0);
        }
        clock.lap(&mut st.kept_setup);
        let mut r0 = 0;
        while r0 < ch {
            let q = &hd.qz[(c0 + r0) * dm.qw..];
            kn.tile_rows(q, dm.qw, w, &hd.kz_pack, blocks, dm.run_z, &mut sc.z, m);
            if dm.split {
                sc.z2.resize(TR * m, 0);
                kn.tile_rows(
                    &q[w..],
                    dm.qw,
                    w,
                    &hd.kz_pack,
                    blocks,
                    dm.run_z,
                    &mut sc.z2,
                    m,
                );
                for (z, &lo) in sc.z.iter_mut().zip(&sc.z2) {
                    *z = 16 * *z + lo;
                }
            }
            clock.lap(&mut st.kept_scores);
            for r in r0..(r0 + TR).min(ch) {
                let z = &sc.z[(r - r0) * m..][..m];
                let words = &crw[r * cwn..(r + 1) * cwn];
                let p = &mut sc.p[r * m..(r + 1) * m];
                // Compensation on the unnormalized kept entries: `(1 - m) e - c sum`, so
                // that the normalization below gives `(1 - m) p - c`.
                sc.inv[r] = match direct {
                    // Straight to the bf16 pairs P.V reads (`p` only a scratch row).
                    Some(dp) => {
                        let out = &mut sc.ppk[r * m2..][..m2];
                        dp.run(z, &sc.kb, ms, sc.comp[r], words, p, out)
                    }
                    None => kn.probs(z, &sc.kb, ms, sc.comp[r], words, p),
                };
            }
            clock.lap(&mut st.softmax);
            r0 += TR;
        }
        if let Some(hw) = hw {
            // bf16 pairs: the normalized probabilities and V (the head's, or the gathered
            // rows), then `vdpbf16ps` over all m scored keys (P is zero past the valid ones).
            if direct.is_none() {
                if sc.ppk.len() < ch * m2 {
                    sc.ppk.resize(ch * m2, 0);
                }
                for r in 0..ch {
                    bf16::probs_pairs(
                        isa,
                        &sc.p[r * m..][..m],
                        sc.inv[r],
                        &mut sc.ppk[r * m2..][..m2],
                    );
                }
            }
            let vpk: &[u32] = if gather {
                bf16::pack_v(isa, vsrc, m, d, m2, &mut sc.vpk);
                &sc.vpk
            } else {
                // The head's pairs, packed at its first tile chunk (sparse chunks never
                // read them).
                if !head_vpk_ready {
                    bf16::pack_v(isa, v, n, d, all_blocks.len() * 4, &mut head_vpk);
                    head_vpk_ready = true;
                }
                &head_vpk
            };
            clock.lap(&mut st.softmax);
            hw.run(&sc.ppk, m2, ch, m2, vpk, d, o, d);
            if let Some(vs) = &vsums {
                add_compensation(&sc.comp, vs, c0, d, o);
            }
            clock.lap(&mut st.pv);
            c0 += ch;
            continue;
        }
        if bf16 {
            // The same numbers by f32 arithmetic: normalized probabilities rounded in place.
            for (row, &inv) in sc.p.chunks_exact_mut(m).zip(&sc.inv) {
                for x in row {
                    *x = hdp_core::bf16_round(*x * inv);
                }
            }
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
        // The softmax's normalization, on the output rows (d values instead of m).
        if !bf16 {
            for (orow, &inv) in o.chunks_exact_mut(d).zip(&sc.inv) {
                for x in orow {
                    *x *= inv;
                }
            }
        }
        if let Some(vs) = &vsums {
            add_compensation(&sc.comp, vs, c0, d, o);
        }
        clock.lap(&mut st.pv);
        c0 += ch;
    }
    sc.vr = vr;
    sc.vpk_head = head_vpk;
}
