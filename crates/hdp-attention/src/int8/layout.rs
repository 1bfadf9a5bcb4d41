//! Quantization and data layouts of the int8 kernel (step 1): codes, integer/fraction splits,
//! packed keys.

use super::*;

/// One head, quantized and laid out for the kernels.
pub(super) struct HeadData {
    /// `Q_int + A`, `rows_pad x dp` (rows padded to a multiple of [`TR`] with zeros).
    pub(super) qu: Vec<u8>,
    /// `K_int`, row-major `n x dp`.
    pub(super) k_int: Vec<i8>,
    /// `K_int` packed by [`pack_keys`].
    pub(super) k_pack: Vec<i8>,
    /// Per key, `sum_k K_int`.
    pub(super) k_int_sum: Vec<i32>,
    /// Per query, the left operand of the kept scores, `rows_pad x qw`: approximate scores
    /// `[Q_int + A, Q_frac]`, exact scores `Q + 128` (the code made non-negative), split
    /// exact scores its two nibbles `[(Q + 128) >> 4, (Q + 128) & 15]` (each `w` wide).
    pub(super) qz: Vec<u8>,
    /// Per key, the right operand, row-major `n x w` (sparse rows score from it):
    /// approximate `[K, K_int]`, exact `K`.
    pub(super) kz: Vec<i8>,
    /// `kz` packed by [`pack_keys`].
    pub(super) kz_pack: Vec<i8>,
    /// Per key, `sum_k K` (zero for the padding keys up to `n_pad`).
    pub(super) k_sum: Vec<i32>,
    pub(super) q_sat: u64,
    pub(super) k_sat: u64,
    /// Logit scale of the block importances (top-p), set by the caller.
    pub(super) logit_scale: hdp::LogitScale,
}

/// Shapes shared by every head of a sequence.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub(super) n: usize,
    pub(super) d: usize,
    /// `d` rounded up to a multiple of 4.
    pub(super) dp: usize,
    /// Width of `qz`/`kz` rows: `2 dp` (approximate) or `dp` (exact) rounded up to a
    /// multiple of 32.
    pub(super) w: usize,
    /// Exact scores: `Z = (Q + 128) . K`, one int8 dot product of the codes per entry.
    pub(super) exact: bool,
    /// Exact scores on a tier without `vpdpbusd` (`Kernels::exact_u8` false), whose i16 pair
    /// sums cannot hold `255 x 128` products: `Z = 16 (hi . K) + (lo . K)` with the nibbles
    /// `hi`, `lo` of `Q + 128`, two products of depth `w` (what one approximate product of
    /// depth `2w` costs).
    pub(super) split: bool,
    /// Width of `qz` rows: `w`, or `2 w` when split.
    pub(super) qw: usize,
    /// The offset of `qz`'s integer part: `A` (approximate) or 128 (exact), so that the
    /// score in units of `2^-2f` is `mul (Z - za sum K)` with `mul` = `2^f` or 1.
    pub(super) za: i32,
    /// Keys rounded up to a multiple of [`TC`].
    pub(super) n_pad: usize,
    /// Query rows rounded up to a multiple of [`TR`].
    pub(super) rows_pad: usize,
    /// The integer pass on centred operands `2 x_int + 1`.
    pub(super) centred: bool,
    /// The offset of the integer pass's left operand: `Q_e + A_e` is in `0..2 A_e`, with
    /// `A_e = A`, or `2 A` for centred operands ([`estimate_offset`]).
    pub(super) ae: i32,
    /// [`i16_run`] of the integer pass (`Q_e + A_e` times `K_e`, `|K_e| <= A_e`).
    pub(super) run_int: usize,
    /// [`i16_run`] of `Z` (`Q_int + A` times `K`, `Q_frac` times `K_int`; exact scores
    /// run only on tiers that need no i16 runs).
    pub(super) run_z: usize,
}

impl Dims {
    pub(super) fn new(
        n: usize,
        d: usize,
        fmt: QFormat,
        exact: bool,
        split: bool,
        centred: bool,
    ) -> Dims {
        let dp = d.div_ceil(4) * 4;
        let n_pad = n.div_ceil(TC) * TC;
        let a = offset(fmt) as i64;
        let ae = estimate_offset(fmt, centred) as i64;
        let (max_code, max_frac) = (1i64 << (fmt.bits - 1), fmt.one() as i64 - 1);
        let split = exact && split;
        let w = (if exact { dp } else { 2 * dp }).div_ceil(32) * 32;
        Dims {
            n,
            d,
            dp,
            w,
            exact,
            split,
            qw: if split { 2 * w } else { w },
            za: if exact { 128 } else { a as i32 },
            n_pad,
            rows_pad: n.div_ceil(TR) * TR,
            centred,
            ae: ae as i32,
            run_int: i16_run(2 * (2 * ae - 1) * ae),
            run_z: if split {
                i16_run(2 * 15 * 128)
            } else {
                i16_run((2 * (2 * a - 1) * max_code).max(2 * max_frac * a))
            },
        }
    }
}

/// Codes of `xs` into `codes`, exactly as [`QFormat::quantize_slice`] computes them (f32
/// products by powers of two are exact, so rounding the f32 product equals rounding the f64
/// one; rounding half away from zero like `f32::round`, in a form that vectorizes: the
/// fractional part `y - trunc(y)` is exact in f32); returns how many saturated. Branch-free
/// (selects and one count), so that the loop vectorizes.
#[inline(always)]
pub(super) fn quantize_row_body(
    xs: &[f32],
    s: f32,
    one: f32,
    min: i32,
    max: i32,
    codes: &mut [i32],
) -> u32 {
    let (minf, maxf) = (min as f32, max as f32);
    let mut sat = 0u32;
    for (c, &x) in codes.iter_mut().zip(xs) {
        let y = (x * s) * one;
        let t = y.trunc();
        let r = if (y - t).abs() >= 0.5 {
            t + 1f32.copysign(y)
        } else {
            t
        };
        let cl = if r > maxf {
            maxf
        } else if r < minf {
            minf
        } else {
            r
        };
        sat += (cl != r) as u32;
        // `cl` is an integer in [min, max] (|x| < 2^16): adding 1.5 * 2^23 puts it in the
        // low mantissa bits exactly, a bit subtraction reads it back. (`as i32` would be
        // exact too but saturates NaN/inf lane by lane, which stops the loop vectorizing.)
        const MAGIC: f32 = 12_582_912.0;
        *c = (cl + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32;
    }
    sat
}

multiversion! {
    /// [`quantize_row_body`] for `isa` (the tests run every tier; the kernel inlines the body
    /// into [`fill_rows`]).
    #[cfg(test)]
    pub(super) fn quantize_row => quantize_row_body(xs: &[f32], s: f32, one: f32, min: i32, max: i32,
        codes: &mut [i32]) -> u32
}

/// The integer pass's `Q_e + A_e` (`Q_e` = `Q_int`, or centred `2 Q_int + 1` when `cs` = 1),
/// the `Z` operand `Q_int + A` and `Q_frac` of one row of codes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn split_q_body(
    codes: &[i32],
    f: u32,
    mask: i32,
    a: i32,
    ae: i32,
    cs: i32,
    qu: &mut [u8],
    qzi: &mut [u8],
    qzf: &mut [u8],
) {
    for (((&c, u), zi), zf) in codes.iter().zip(qu).zip(qzi).zip(qzf) {
        *u = ((c >> f) * (1 + cs) + cs + ae) as u8;
        *zi = ((c >> f) + a) as u8;
        *zf = (c & mask) as u8;
    }
}

/// The integer pass's `K_e` (`K_int`, or centred `2 K_int + 1` when `cs` = 1), the `Z`
/// operands `K_int` and `K` of one row of codes; returns the sums of `K_e` and of `K`.
#[inline(always)]
pub(super) fn split_k_body(
    codes: &[i32],
    f: u32,
    cs: i32,
    ki: &mut [i8],
    kzc: &mut [i8],
    kzi: &mut [i8],
) -> (i32, i32) {
    let (mut sum_int, mut sum) = (0i32, 0i32);
    for (((&c, i), zc), zi) in codes.iter().zip(ki).zip(kzc).zip(kzi) {
        let x = c >> f;
        let e = x * (1 + cs) + cs;
        *i = e as i8;
        *zi = x as i8;
        *zc = c as i8;
        sum_int += e;
        sum += c;
    }
    (sum_int, sum)
}

/// Exact scores: `Q_e + A_e` (integer pass, as in [`split_q_body`]) and `Q + 128` (score
/// operand) of one row of codes.
#[inline(always)]
pub(super) fn split_q_exact_body(
    codes: &[i32],
    f: u32,
    ae: i32,
    cs: i32,
    qu: &mut [u8],
    qz: &mut [u8],
) {
    for ((&c, u), z) in codes.iter().zip(qu).zip(qz) {
        *u = ((c >> f) * (1 + cs) + cs + ae) as u8;
        *z = (c + 128) as u8;
    }
}

/// Exact scores: `K_e` (integer pass, as in [`split_k_body`]) and `K` (score operand) of one
/// row of codes; returns the sums of `K_e` and of `K`.
#[inline(always)]
pub(super) fn split_k_exact_body(
    codes: &[i32],
    f: u32,
    cs: i32,
    ki: &mut [i8],
    kz: &mut [i8],
) -> (i32, i32) {
    let (mut sum_int, mut sum) = (0i32, 0i32);
    for ((&c, i), z) in codes.iter().zip(ki).zip(kz) {
        let e = (c >> f) * (1 + cs) + cs;
        *i = e as i8;
        *z = c as i8;
        sum_int += e;
        sum += c;
    }
    (sum_int, sum)
}

/// Split exact scores: `Q_e + A_e` (integer pass, as in [`split_q_body`]) and the nibbles of
/// `Q + 128` (score operands) of one row of codes.
#[inline(always)]
pub(super) fn split_q_nibbles_body(
    codes: &[i32],
    f: u32,
    ae: i32,
    cs: i32,
    qu: &mut [u8],
    hi: &mut [u8],
    lo: &mut [u8],
) {
    // Equal lengths up front and one index, and the centred operand as `x (1 + cs) + cs`
    // rather than `(x << cs) | cs`: the zipped form with the shift ran scalar (half of
    // `fill_rows` on AVX2); this one vectorizes.
    let n = codes.len().min(qu.len()).min(hi.len()).min(lo.len());
    let (codes, qu, hi, lo) = (&codes[..n], &mut qu[..n], &mut hi[..n], &mut lo[..n]);
    for i in 0..n {
        let c = codes[i];
        qu[i] = ((c >> f) * (1 + cs) + cs + ae) as u8;
        let z = (c + 128) as u8;
        hi[i] = z >> 4;
        lo[i] = z & 15;
    }
}

/// Quantizes head `h` of sequence `b` and builds its layouts.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare_head(
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
        dp,
        w,
        qw,
        n_pad,
        rows_pad,
        ..
    } = dm;
    let (sq, sk) = ((2f64).powi(eq) as f32, (2f64).powi(ek) as f32);
    let mut hd = HeadData {
        qu: vec![0; rows_pad * dp],
        k_int: vec![0; n * dp],
        k_pack: Vec::new(),
        k_int_sum: vec![0; n],
        qz: vec![0; rows_pad * qw],
        kz: vec![0; n * w],
        kz_pack: Vec::new(),
        k_sum: vec![0; n_pad],
        q_sat: 0,
        k_sat: 0,
        logit_scale: hdp::LogitScale::new(1.0, false),
    };
    fill_rows(isa, p, b, h, dm, fmt, (sq, sk), valid_tok, &mut hd);
    pack_keys(&mut hd.k_pack, hd.k_int.chunks_exact(dp), n, dp);
    pack_keys(&mut hd.kz_pack, hd.kz.chunks_exact(w), n, w);
    hd
}

/// Steps of [`prepare_head`] per query and key row (quantize, split, sums): one body compiled
/// per tier, so the row primitives inline into one loop (dispatching each of them per row
/// cost a call and a `match` four times per row).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fill_rows_body(
    p: &AttentionProblem,
    b: usize,
    h: usize,
    dm: Dims,
    fmt: QFormat,
    (sq, sk): (f32, f32),
    valid_tok: &[bool],
    hd: &mut HeadData,
) {
    let Dims {
        n, d, dp, w, qw, ..
    } = dm;
    let a = offset(fmt);
    let (ae, cs) = (dm.ae, dm.centred as i32);
    let (one, min, max) = (fmt.one() as f32, fmt.min_code(), fmt.max_code());
    let f = fmt.frac_bits;
    let mask = fmt.one() - 1;
    let mut codes = vec![0i32; d];
    for (i, &valid_i) in valid_tok.iter().enumerate().take(n) {
        let off = p.row_offset(b, h, i);
        let (qx, kx) = (&p.q().data()[off..off + d], &p.k().data()[off..off + d]);
        let (qu, qz) = (&mut hd.qu[i * dp..][..dp], &mut hd.qz[i * qw..][..qw]);
        let sat = quantize_row_body(qx, sq, one, min, max, &mut codes);
        if dm.split {
            let (hi, lo) = qz.split_at_mut(w);
            split_q_nibbles_body(&codes, f, ae, cs, &mut qu[..d], &mut hi[..d], &mut lo[..d]);
        } else if dm.exact {
            split_q_exact_body(&codes, f, ae, cs, &mut qu[..d], &mut qz[..d]);
        } else {
            let (qzi, qzf) = qz.split_at_mut(dp);
            split_q_body(
                &codes,
                f,
                mask,
                a,
                ae,
                cs,
                &mut qu[..d],
                &mut qzi[..d],
                &mut qzf[..d],
            );
        }
        if valid_i {
            hd.q_sat += sat as u64;
        }
        let (ki, kz) = (&mut hd.k_int[i * dp..][..dp], &mut hd.kz[i * w..][..w]);
        let sat = quantize_row_body(kx, sk, one, min, max, &mut codes);
        let (sum_int, sum) = if dm.exact {
            split_k_exact_body(&codes, f, cs, &mut ki[..d], &mut kz[..d])
        } else {
            let (kzc, kzi) = kz.split_at_mut(dp);
            split_k_body(&codes, f, cs, &mut ki[..d], &mut kzc[..d], &mut kzi[..d])
        };
        if valid_i {
            hd.k_sat += sat as u64;
        }
        hd.k_int_sum[i] = sum_int;
        hd.k_sum[i] = sum;
    }
}

multiversion! {
    /// [`fill_rows_body`] for `isa`.
    fn fill_rows => fill_rows_body(p: &AttentionProblem, b: usize, h: usize, dm: Dims,
        fmt: QFormat, scales: (f32, f32), valid_tok: &[bool], hd: &mut HeadData)
}

/// Packs `m` key rows of `depth` bytes (a multiple of 4) for [`tile_rows`]:
/// `[key block of 8][dimension group of 4][8 keys][4 bytes]`, keys padded with zeros to a
/// multiple of [`TC`], plus one all-zero key block at the end ([`zero_block`]) that pads odd
/// block lists.
pub(super) fn pack_keys<'a>(
    out: &mut Vec<i8>,
    rows: impl Iterator<Item = &'a [i8]>,
    m: usize,
    depth: usize,
) {
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
pub(super) fn zero_block(m: usize) -> u32 {
    (m.div_ceil(TC) * TC / 8) as u32
}

/// How many 4-byte groups of `vpmaddubsw` pair sums (each at most `pair_max` in magnitude)
/// can be added in i16 before widening to i32 without overflow.
pub(super) fn i16_run(pair_max: i64) -> usize {
    (i16::MAX as i64 / pair_max.max(1)).clamp(1, 64) as usize
}
