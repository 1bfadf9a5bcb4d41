//! Fast CPU kernels with the semantics of the references in [`crate::dense`] and [`crate::hdp`]:
//! f32 SIMD arithmetic, rayon across heads, run-time ISA dispatch.
//!
//! Multiversioning: every kernel body is a generic `#[inline(always)]` function written with
//! independent lanes (no float reassociation needed), instantiated twice: inside an
//! `#[target_feature(enable = "avx2,fma")]` wrapper, where LLVM vectorizes it with 256-bit
//! FMAs, and as plain portable code (the `multiversion!` macro writes both and the dispatch).
//! [`Isa::detect`] picks one at run time; tests run both.
//!
//! HDP's integer arithmetic is done in f32, which is exact while every partial sum stays below
//! 2^24: `d * max|Q_int| * max|K_int|` for the integer pass and `d * (max|Q_int| max|K| +
//! max|Q_frac| max|K_int|)` for the approximated scores. 8-bit formats are far inside that
//! (64 * 8 * 128 = 2^16 for d = 64, f = 4); formats that are not fall back to the reference.
//! Hence the kept-block masks and pruned heads equal the reference's exactly, and outputs differ
//! only by f32 rounding of softmax and P.V (tolerance `FAST_VS_REFERENCE_ABS`).

use crate::config::{BlockImportance, HdpConfig, ValidConfig};
use crate::hdp::{self, prune_heads, HdpOutput, HeadDecider};
use crate::problem::AttentionProblem;
use hdp_core::{BlockMask, Result, ScoreMode, Tensor};
use rayon::prelude::*;

/// Instruction set a kernel runs with, in order of preference. Every tier above portable
/// includes AVX2 + FMA; the two VNNI tiers are independent of each other (Zen 4 has AVX-512
/// VNNI without AVX-VNNI, Alder Lake the reverse, Sapphire Rapids both), so a tier's
/// availability is checked on its own ([`Isa::available`]). The int8 primitives of each tier
/// live in `kernels/` (one file per tier, one table); a tier that has nothing better for a
/// primitive names a lower tier's code there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, whatever the compiler targets by default (SSE2 on x86-64).
    Portable,
    /// AVX2 + FMA (x86-64), chosen at run time.
    Avx2,
    /// AVX-VNNI (VEX `vpdpbusd ymm`) plus AVX2 + FMA.
    AvxVnni,
    /// AVX-512 F/BW/VL with VNNI (`vpdpbusd zmm`), plus AVX2 + FMA.
    Avx512Vnni,
}

/// The environment variable that caps the tier ([`Isa::detect`]).
pub const ISA_ENV: &str = "HDP_ISA";

impl Isa {
    /// Every tier, lowest first.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni];

    /// Whether this CPU can run the tier.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            // popcnt comes with every AVX2 CPU; checked so the tiers may use it.
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("popcnt");
            match self {
                Isa::Portable => true,
                Isa::Avx2 => avx2,
                Isa::AvxVnni => avx2 && is_x86_feature_detected!("avxvnni"),
                Isa::Avx512Vnni => {
                    avx2 && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// Every tier this CPU runs, lowest first.
    pub fn available_tiers() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|t| t.available()).collect()
    }

    /// The tier to run: the best this CPU supports, or the one `HDP_ISA` names when it is set
    /// (call [`Isa::from_env`] first to turn a bad value into an error; here a bad value
    /// falls back to the best tier).
    pub fn detect() -> Isa {
        Isa::from_env()
            .ok()
            .flatten()
            .unwrap_or_else(|| *Isa::available_tiers().last().unwrap_or(&Isa::Portable))
    }

    /// The tier `HDP_ISA` asks for: `None` when unset, an error when the name is unknown or
    /// this CPU lacks the tier.
    pub fn from_env() -> Result<Option<Isa>> {
        match std::env::var(ISA_ENV) {
            Err(_) => Ok(None),
            Ok(v) if v.is_empty() => Ok(None),
            Ok(v) => Ok(Some(Isa::by_name(&v)?)),
        }
    }

    /// The tier named `name` (`portable`, `avx2`, `avx-vnni`, `avx512-vnni` or `avx512`), if
    /// this CPU runs it.
    pub fn by_name(name: &str) -> Result<Isa> {
        let isa = Isa::ALL
            .into_iter()
            .find(|t| t.name() == name || (name == "avx512" && *t == Isa::Avx512Vnni))
            .ok_or_else(|| hdp_core::Error::InvalidOption {
                name: "instruction-set tier (HDP_ISA, --isa)",
                value: name.into(),
                expected: "portable, avx2, avx-vnni or avx512-vnni (avx512)".into(),
            })?;
        if !isa.available() {
            return Err(hdp_core::Error::InvalidOption {
                name: "instruction-set tier (HDP_ISA, --isa)",
                value: name.into(),
                expected: format!(
                    "a tier this CPU has: {}",
                    Isa::available_tiers()
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok(isa)
    }

    /// Whether the AVX2 + FMA code paths may run (true for every tier above portable).
    pub fn avx2(self) -> bool {
        self >= Isa::Avx2
    }

    /// Name for reports, `HDP_ISA` and `--isa`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// Refuses a tier this CPU lacks (an `Isa` value can be built by hand; the kernels must never
/// run instructions the CPU does not have).
pub(crate) fn check_isa(isa: Isa) -> Result<()> {
    if isa.available() {
        Ok(())
    } else {
        Isa::by_name(isa.name()).map(|_| ())
    }
}

/// `e^x` for f32 without a libm call, vectorizable: range reduction by ln 2 (split in two
/// constants), degree-6 polynomial, exponent bits. Relative error below 2e-7 on [-87, 88];
/// inputs below -87.3 give about 1e-38 (callers zero masked entries themselves).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to nearest
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // The integer n sits in t's low mantissa bits: integer arithmetic on the bits (no float to
    // int conversion, whose saturating semantics would block vectorization).
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    p * scale
}

/// Dot product with 8 independent accumulators (vectorizes without reassociation).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `y += a * x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Softmax in place over all of `s` (not empty), in 8 independent lanes so that the max, the
/// exponentials and the sum vectorize.
#[inline(always)]
fn softmax_dense(s: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; 8];
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
    }
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    for x in m {
        max = max.max(x);
    }
    let mut sum = [0.0f32; 8];
    let mut chunks = s.chunks_exact_mut(8);
    for c in &mut chunks {
        for l in 0..8 {
            let e = fast_exp(c[l] - max);
            c[l] = e;
            sum[l] += e;
        }
    }
    let mut total = 0.0f32;
    for x in chunks.into_remainder() {
        *x = fast_exp(*x - max);
        total += *x;
    }
    total += ((sum[0] + sum[4]) + (sum[1] + sum[5])) + ((sum[2] + sum[6]) + (sum[3] + sum[7]));
    let inv = 1.0 / total;
    for x in s.iter_mut() {
        *x *= inv;
    }
}

/// [`softmax_dense`] with hand-written AVX2 when `isa` allows.
#[inline(always)]
pub(crate) fn softmax_row(isa: Isa, s: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa.avx2() {
        // SAFETY: tiers above portable are only produced after detecting avx2 and fma.
        unsafe { crate::simd::softmax_dense(s) };
        return;
    }
    let _ = isa;
    softmax_dense(s);
}

/// Softmax in place over `s[j]` where `ok[j]`; other entries become 0. False if none valid.
/// `all_ok`: whether every `ok[j]` is true, which the caller knows once per head (scanning
/// the flags per row, a byte at a time, was a third of the dense kernel's softmax).
#[inline(always)]
fn softmax_masked(isa: Isa, s: &mut [f32], ok: &[bool], all_ok: bool) -> bool {
    debug_assert_eq!(all_ok, ok.iter().all(|&o| o));
    if !s.is_empty() && all_ok {
        softmax_row(isa, s);
        return true;
    }
    let mut max = f32::NEG_INFINITY;
    for (&v, &o) in s.iter().zip(ok) {
        if o && v > max {
            max = v;
        }
    }
    if max == f32::NEG_INFINITY {
        s.fill(0.0);
        return false;
    }
    for v in s.iter_mut() {
        *v = fast_exp(*v - max);
    }
    let mut sum = 0.0f32;
    for (v, &o) in s.iter_mut().zip(ok) {
        if !o {
            *v = 0.0;
        }
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in s.iter_mut() {
        *v *= inv;
    }
    true
}

/// The first key that is not valid (`valid.len()` if all are): a row's keys `..end` are all
/// valid iff `end <= first_invalid`.
#[inline(always)]
fn first_invalid(valid: &[bool]) -> usize {
    valid.iter().position(|&v| !v).unwrap_or(valid.len())
}

/// Transposes a row-major `n x d` matrix into `d x n` (`out` has `d * n` elements).
#[inline(always)]
fn transpose(x: &[f32], n: usize, d: usize, out: &mut [f32]) {
    for j in 0..n {
        for m in 0..d {
            out[m * n + j] = x[j * d + m];
        }
    }
}

/// Query rows processed together by the row-group kernels.
const ROWS: usize = 4;
/// Columns of a register tile (two AVX2 vectors).
const TILE: usize = 16;

/// `s[r] = scale * q_r K^T` for the (at most [`ROWS`]) rows of `q` (`r x d`), from the
/// transposed keys `kt` (`d x n`); `s` holds `r x n`. Each K^T row is loaded once per group.
#[inline(always)]
fn scores_rows(q: &[f32], kt: &[f32], n: usize, d: usize, scale: f32, s: &mut [f32]) {
    let r = q.len() / d;
    let full = if r == ROWS { n / TILE * TILE } else { 0 };
    // Register tile: ROWS x TILE accumulators stay in registers across the whole d loop.
    let mut j0 = 0;
    while j0 < full {
        let mut acc = [[0.0f32; TILE]; ROWS];
        for m in 0..d {
            let Ok(k) = <&[f32; TILE]>::try_from(&kt[m * n + j0..m * n + j0 + TILE]) else {
                return;
            };
            let qs = [q[m], q[d + m], q[2 * d + m], q[3 * d + m]];
            for (a, &qv) in acc.iter_mut().zip(&qs) {
                for l in 0..TILE {
                    a[l] += qv * k[l];
                }
            }
        }
        for (rr, a) in acc.iter().enumerate() {
            for l in 0..TILE {
                s[rr * n + j0 + l] = a[l] * scale;
            }
        }
        j0 += TILE;
    }
    // Remaining columns (and groups of fewer than ROWS rows): K^T row streamed per row.
    for rr in 0..r {
        s[rr * n + full..(rr + 1) * n].fill(0.0);
    }
    for m in 0..d {
        let ktm = &kt[m * n + full..(m + 1) * n];
        for rr in 0..r {
            axpy(
                q[rr * d + m] * scale,
                ktm,
                &mut s[rr * n + full..(rr + 1) * n],
            );
        }
    }
}

/// `out[r] += sum_j p[r][j] v_j` for a group of rows (`p` is `r x n`, rows of dead or causal
/// entries already zero), over keys `0..end`.
#[inline(always)]
fn pv_rows(p: &[f32], v: &[f32], n: usize, d: usize, end: usize, out: &mut [f32]) {
    let r = p.len() / n;
    let full = if r == ROWS { d / TILE * TILE } else { 0 };
    let mut c0 = 0;
    while c0 < full {
        let mut acc = [[0.0f32; TILE]; ROWS];
        for j in 0..end {
            let Ok(vv) = <&[f32; TILE]>::try_from(&v[j * d + c0..j * d + c0 + TILE]) else {
                return;
            };
            let ps = [p[j], p[n + j], p[2 * n + j], p[3 * n + j]];
            for (a, &pv) in acc.iter_mut().zip(&ps) {
                for l in 0..TILE {
                    a[l] += pv * vv[l];
                }
            }
        }
        for (rr, a) in acc.iter().enumerate() {
            out[rr * d + c0..rr * d + c0 + TILE].copy_from_slice(a);
        }
        c0 += TILE;
    }
    for rr in 0..r {
        let o = &mut out[rr * d + full..(rr + 1) * d];
        o.fill(0.0);
        for j in 0..end {
            let pj = p[rr * n + j];
            if pj != 0.0 {
                axpy(pj, &v[j * d + full..(j + 1) * d], o);
            }
        }
    }
}

/// Dense attention of one head: `q, k, v` are `n x d`, `valid` the token mask, `causal` the
/// causal mask; writes `out` (`n x d`). `kt`, `s` are scratch of `d * n` and `n` floats.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dense_head_body(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    valid: &[bool],
    causal: bool,
    n: usize,
    d: usize,
    out: &mut [f32],
    kt: &mut [f32],
    s: &mut [f32],
    ok: &mut [bool],
) {
    transpose(k, n, d, kt);
    let scale = 1.0 / (d as f32).sqrt();
    ok.copy_from_slice(valid);
    let first_bad = first_invalid(valid);
    // Groups of ROWS query rows share every load of a K^T row and of a V row (L1 reuse instead
    // of streaming K and V from L2 once per query row).
    let mut i0 = 0;
    while i0 < n {
        let r = ROWS.min(n - i0);
        scores_rows(&q[i0 * d..(i0 + r) * d], kt, n, d, scale, &mut s[..r * n]);
        for rr in 0..r {
            let i = i0 + rr;
            let end = if causal { i + 1 } else { n };
            let row = &mut s[rr * n..(rr + 1) * n];
            let all_ok = end <= first_bad;
            if valid[i] && softmax_masked(Isa::Portable, &mut row[..end], &ok[..end], all_ok) {
                row[end..].fill(0.0);
            } else {
                row.fill(0.0);
            }
        }
        let end_max = if causal { i0 + r } else { n };
        pv_rows(
            &s[..r * n],
            v,
            n,
            d,
            end_max,
            &mut out[i0 * d..(i0 + r) * d],
        );
        i0 += r;
    }
}

multiversion! {
    /// [`dense_head_body`] for `isa`.
    fn dense_head => dense_head_body(q: &[f32], k: &[f32], v: &[f32], valid: &[bool], causal: bool,
        n: usize, d: usize, out: &mut [f32], kt: &mut [f32], s: &mut [f32], ok: &mut [bool])
}

multiversion! {
    /// [`integer_pass_body`] for `isa`.
    fn integer_pass => integer_pass_body(c: &HeadCodes, valid_tok: &[bool], causal: bool, n: usize,
        d: usize, cfg: &HdpConfig, kt: &mut [f32], s: &mut [f32]) -> hdp::Decided
}

multiversion! {
    /// [`sparse_attend_body`] for `isa`.
    fn sparse_attend => sparse_attend_body(c: &HeadCodes, qf: &[f32], kf: &[f32], v: &[f32],
        kept: &BlockMask, valid_tok: &[bool], causal: bool, n: usize, d: usize, bs: usize,
        mode: ScoreMode, score_scale: f32, bf16: bool, comp: Option<(&[f64], &hdp::VSums)>,
        out: &mut [f32], idx: &mut Vec<usize>, sc: &mut Vec<f32>)
}

/// A read-only matrix view: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// `dst[r * ldd + c] = scale * sum_t a(r, t) b(t, c)` for an `m x n` result over `k` terms, on
/// the `gemm` crate's f32 kernels (which pick their instruction set at run time) without
/// threads of their own. Bounds are checked here, so callers need no unsafe code.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    ldd: usize,
    a: View,
    b: View,
    scale: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldd >= n && dst.len() >= (m - 1) * ldd + n);
    if k == 0 {
        for r in 0..m {
            dst[r * ldd..r * ldd + n].fill(0.0);
        }
        return;
    }
    let last = |v: View, r: usize, c: usize| (r - 1) * v.rs + (c - 1) * v.cs;
    assert!(a.data.len() > last(a, m, k) && b.data.len() > last(b, k, n));
    // SAFETY: every element the views and the destination describe is in bounds (asserted);
    // `dst` is a unique borrow, so it aliases neither source.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Query rows per chunk of the GEMM dense kernel: the chunk's score rows (`GEMM_ROWS x n`
/// floats, 256 KiB at n = 1024) stay in L2 between Q.K^T, softmax and P.V.
const GEMM_ROWS: usize = 64;

/// Softmax of the rows `i0..i0 + r` of one head, in place in `s` (`r x n`, columns `0..cols`
/// computed): row `i` covers keys `0..end(i)` where `ok`; everything else becomes 0.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn softmax_chunk_body(
    simd: Isa,
    s: &mut [f32],
    n: usize,
    cols: usize,
    i0: usize,
    r: usize,
    valid: &[bool],
    causal: bool,
    inv: &mut [f32],
) {
    let first_bad = first_invalid(valid);
    for rr in 0..r {
        let i = i0 + rr;
        let end = if causal { i + 1 } else { cols };
        let row = &mut s[rr * n..rr * n + cols];
        inv[rr] = 1.0;
        #[cfg(target_arch = "x86_64")]
        if simd == Isa::Avx512Vnni && valid[i] && end > 0 && end <= first_bad {
            // SAFETY: the AVX-512 tier is only produced after detecting avx512f.
            inv[rr] = unsafe { crate::kernels::avx512::softmax_unnormalized(&mut row[..end]) };
            row[end..].fill(0.0);
            continue;
        }
        if valid[i] && softmax_masked(simd, &mut row[..end], &valid[..end], end <= first_bad) {
            row[end..].fill(0.0);
        } else {
            row.fill(0.0);
        }
    }
}

multiversion! {
    /// [`softmax_chunk_body`] for `isa`: each row's probabilities, normalized, with `inv[r]`
    /// = 1; on AVX-512 the fully valid rows keep their exponentials and `inv[r]` is their
    /// sum's reciprocal, applied to the row's output after P.V (`d` multiplies instead of
    /// `n`).
    fn softmax_chunk => softmax_chunk_body(simd: Isa, s: &mut [f32], n: usize, cols: usize, i0: usize,
        r: usize, valid: &[bool], causal: bool, inv: &mut [f32])
}

/// Dense attention of one head with the `gemm` crate's f32 kernels for Q.K^T and P.V (which
/// pick their own instruction set at run time) and our SIMD softmax in between, `GEMM_ROWS`
/// query rows at a time. `s` is scratch of `GEMM_ROWS * n` floats.
#[allow(clippy::too_many_arguments)]
fn dense_head_gemm(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    valid: &[bool],
    causal: bool,
    n: usize,
    d: usize,
    out: &mut [f32],
    s: &mut [f32],
) {
    let scale = 1.0 / (d as f32).sqrt();
    let mut i0 = 0;
    while i0 < n {
        let r = GEMM_ROWS.min(n - i0);
        // Keys beyond the chunk's last row are causally masked for every row of the chunk.
        let cols = if causal { i0 + r } else { n };
        let qv = View {
            data: &q[i0 * d..],
            rs: d,
            cs: 1,
        };
        // K^T: element (t, j) = K[j][t].
        let kt = View {
            data: k,
            rs: 1,
            cs: d,
        };
        matmul(r, cols, d, s, n, qv, kt, scale);
        let mut inv = [1.0f32; GEMM_ROWS];
        softmax_chunk(isa, isa, s, n, cols, i0, r, valid, causal, &mut inv[..r]);
        let p = View {
            data: s,
            rs: n,
            cs: 1,
        };
        let vv = View {
            data: v,
            rs: d,
            cs: 1,
        };
        let o = &mut out[i0 * d..(i0 + r) * d];
        matmul(r, d, cols, o, d, p, vv, 1.0);
        if isa == Isa::Avx512Vnni {
            for (row, &f) in o.chunks_exact_mut(d).zip(&inv) {
                for x in row {
                    *x *= f;
                }
            }
        }
        i0 += r;
    }
}

/// Fast dense attention (same semantics as [`crate::dense::attention`]). With a SIMD `isa`,
/// Q.K^T and P.V run on the `gemm` crate's kernels; [`Isa::Portable`] runs our own tiled
/// portable code.
pub fn dense_attention(p: &AttentionProblem, isa: Isa) -> Result<Tensor> {
    check_isa(isa)?;
    let dims = p.dims();
    let (heads, n, d) = (dims.heads, dims.seq_len, dims.head_dim);
    let mut out = Tensor::zeros(p.q().shape().to_vec());
    out.data_mut()
        .par_chunks_mut(n * d)
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new(), vec![false; n]),
            |(kt, s, ok), (bh, o)| {
                let b = bh / heads;
                let off = bh * n * d;
                let (q, k, v) = (
                    &p.q().data()[off..off + n * d],
                    &p.k().data()[off..off + n * d],
                    &p.v().data()[off..off + n * d],
                );
                let valid: Vec<bool> = (0..n).map(|i| p.token_is_valid(b, i)).collect();
                if isa == Isa::Portable {
                    kt.resize(n * d, 0.0);
                    s.resize(ROWS * n, 0.0);
                    dense_head(isa, q, k, v, &valid, p.causal(), n, d, o, kt, s, ok);
                } else {
                    s.resize(GEMM_ROWS * n, 0.0);
                    dense_head_gemm(isa, q, k, v, &valid, p.causal(), n, d, o, s);
                }
            },
        );
    Ok(out)
}

/// Per-head inputs of the HDP kernel, all exact small integers held as f32.
struct HeadCodes {
    /// The integer pass's left operand, `n x d`: `Q_int`, or centred `2 Q_int + 1`.
    q_est: Vec<f32>,
    /// The integer pass's right operand, `n x d`: `K_int`, or centred `2 K_int + 1`.
    k_est: Vec<f32>,
    /// Per query, the left operand of the score as one dot product, `n x w`:
    /// approx `[2^f Q_int, 2^f Q_frac]` (w = 2d), exact `[2^f Q_int, 2^f Q_frac, Q_frac]` (3d).
    qq: Vec<f32>,
    /// Per key, the right operand: approx `[K, K_int]`, exact `[K, K_int, K_frac]`.
    kk: Vec<f32>,
    /// Width of `qq`/`kk` rows (0 in float mode, which uses the float Q and K).
    w: usize,
    /// Logit scale of the block importances (top-p).
    logit_scale: hdp::LogitScale,
}

/// Integer pass of one head (steps 2-4): each block-row's importances are reduced from exact
/// integer scores and decided at once (the kept mask and the head importance come back).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn integer_pass_body(
    c: &HeadCodes,
    valid_tok: &[bool],
    causal: bool,
    n: usize,
    d: usize,
    cfg: &HdpConfig,
    kt: &mut [f32],
    s: &mut [f32],
) -> hdp::Decided {
    let bs = cfg.block_size;
    let nb = n.div_ceil(bs);
    transpose(&c.k_est, n, d, kt);
    let mut decider = HeadDecider::new(nb, cfg, c.logit_scale.clone());
    let mut acc: Vec<Option<i64>> = vec![None; nb];
    for br in 0..nb {
        acc.fill(None);
        let rows_end = ((br + 1) * bs).min(n);
        let mut i0 = br * bs;
        while i0 < rows_end {
            let r = ROWS.min(rows_end - i0);
            scores_rows(
                &c.q_est[i0 * d..(i0 + r) * d],
                kt,
                n,
                d,
                1.0,
                &mut s[..r * n],
            );
            for rr in 0..r {
                let i = i0 + rr;
                if !valid_tok[i] {
                    continue;
                }
                let row = &s[rr * n..(rr + 1) * n];
                let end = if causal { i + 1 } else { n };
                for j in (0..end).filter(|&j| valid_tok[j]) {
                    let v = row[j] as i64; // exact: |s| < 2^24 is checked by the caller
                    let slot = &mut acc[j / bs];
                    *slot = Some(match (cfg.importance, *slot) {
                        (BlockImportance::Sum, a) => a.unwrap_or(0) + v,
                        (BlockImportance::AbsSum, a) => a.unwrap_or(0) + v.abs(),
                        (BlockImportance::Max, a) => a.map_or(v, |x| x.max(v)),
                    });
                }
            }
            i0 += r;
        }
        decider.row(br, &acc);
    }
    decider.finish()
}

/// Steps 6-7 for one surviving head: scores of kept entries, sparse softmax, sparse P.V.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn sparse_attend_body(
    c: &HeadCodes,
    qf: &[f32],
    kf: &[f32],
    v: &[f32],
    kept: &BlockMask,
    valid_tok: &[bool],
    causal: bool,
    n: usize,
    d: usize,
    bs: usize,
    mode: ScoreMode,
    score_scale: f32,
    bf16: bool,
    comp: Option<(&[f64], &hdp::VSums)>,
    out: &mut [f32],
    idx: &mut Vec<usize>,
    sc: &mut Vec<f32>,
) {
    let inv_sqrt_d = 1.0 / (d as f32).sqrt();
    let nb = kept.rows();
    for i in 0..n {
        let o = &mut out[i * d..(i + 1) * d];
        o.fill(0.0);
        if !valid_tok[i] {
            continue;
        }
        let end = if causal { i + 1 } else { n };
        idx.clear();
        sc.clear();
        let r = i / bs;
        let (qrow, krows, w, scale) = match mode {
            ScoreMode::Float => (&qf[i * d..(i + 1) * d], kf, d, inv_sqrt_d),
            _ => (&c.qq[i * c.w..(i + 1) * c.w], &c.kk[..], c.w, score_scale),
        };
        for blk in (0..nb).filter(|&blk| kept.get(r, blk)) {
            for j in (blk * bs..((blk + 1) * bs).min(end)).filter(|&j| valid_tok[j]) {
                // One dot product: 2^f (Q_int.K + Q_frac.K_int) [+ Q_frac.K_frac] (hdp.md step 6).
                let score = dot(qrow, &krows[j * w..(j + 1) * w]) * scale;
                idx.push(j);
                sc.push(score);
            }
        }
        if idx.is_empty() {
            continue;
        }
        let max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in sc.iter_mut() {
            *x = fast_exp(*x - max);
            sum += *x;
        }
        let inv = 1.0 / sum;
        // Compensation (hdp.md step 7's option): kept weights `(1 - m) p - c` and `c` times
        // the row's valid V sum.
        let rc = comp.and_then(|(mass, vs)| {
            hdp::row_compensation(mass[r], vs.count(i), idx.len())
                .map(|(keep, c)| (keep as f32, c as f32, vs))
        });
        let (keep, c) = rc.map_or((1.0, 0.0), |x| (x.0, x.1));
        for (&j, &pj) in idx.iter().zip(sc.iter()) {
            // bf16: the normalized probability rounded (V comes rounded by the caller).
            let pj = keep * (pj * inv) - c;
            let pj = if bf16 { hdp_core::bf16_round(pj) } else { pj };
            axpy(pj, &v[j * d..(j + 1) * d], o);
        }
        if let Some((_, c, vs)) = rc {
            axpy(c, vs.sum32(i), o);
        }
    }
}

/// Whether f32 arithmetic is exact for every integer sum of this format and head dimension.
pub fn f32_exact(cfg: &HdpConfig, d: usize) -> bool {
    let f = cfg.q_format;
    let max_code = (1i64 << (f.bits - 1)) as f64;
    let max_int = (max_code / f.one() as f64).ceil();
    let max_frac = (f.one() - 1) as f64;
    let bound = d as f64 * (max_int * max_code + max_frac * max_int + max_frac * max_frac);
    // The integer pass on centred operands: |2 x_int + 1| <= 2 max_int + 1.
    let est = if cfg.centred {
        2.0 * max_int + 1.0
    } else {
        max_int
    };
    let bound = bound.max(d as f64 * est * est);
    // The fused score is the full code product in the worst case: d * max_code^2.
    let fused = d as f64 * max_code * max_code;
    bound.max(fused) < (1u64 << 24) as f64
}

/// [`hdp_attention`] with the time of each stage, where the int8 kernel runs (`None` for the
/// f32 kernel and the reference fallback).
pub fn hdp_attention_staged(
    p: &AttentionProblem,
    cfg: &ValidConfig,
    layer: usize,
    isa: Isa,
) -> Result<(HdpOutput, Option<crate::int8::StageTimes>)> {
    check_isa(isa)?;
    if crate::int8::supported(cfg, p.dims().head_dim, isa) {
        return crate::int8::hdp_attention(p, cfg, layer, isa, true);
    }
    Ok((hdp_attention(p, cfg, layer, isa)?, None))
}

/// Fast HDP attention, same decisions and trace as [`crate::hdp::attention`]. Falls back to
/// the reference when the format is too wide for exact f32 integer arithmetic.
pub fn hdp_attention(
    p: &AttentionProblem,
    cfg: &ValidConfig,
    layer: usize,
    isa: Isa,
) -> Result<HdpOutput> {
    let dims = p.dims();
    let (heads, n, d, bs) = (dims.heads, dims.seq_len, dims.head_dim, cfg.block_size);
    check_isa(isa)?;
    if crate::int8::supported(cfg, d, isa) {
        return crate::int8::hdp_attention(p, cfg, layer, isa, false).map(|x| x.0);
    }
    if !f32_exact(cfg, d) {
        return hdp::attention(p, cfg, layer);
    }
    let fmt = cfg.q_format;
    let mut out = Tensor::zeros(p.q().shape().to_vec());
    let mut trace = hdp::empty_layer_trace(p, cfg, layer)?;
    for b in 0..dims.batch {
        let (valid, valid_tokens) = hdp::valid_blocks(p, b, bs);
        let valid_tok: Vec<bool> = (0..n).map(|i| p.token_is_valid(b, i)).collect();
        let (eq, ek) = hdp::prescale_exponents(p, cfg, b, heads, n, d);
        let (qc, q_sat) = hdp::quantize_sequence(p, p.q(), fmt, eq, b);
        let (kc, k_sat) = hdp::quantize_sequence(p, p.k(), fmt, ek, b);
        let one = fmt.one() as f32;
        let codes: Vec<HeadCodes> = (0..heads)
            .map(|h| {
                let r = h * n * d..(h + 1) * n * d;
                let split = |cs: &[i32]| -> (Vec<f32>, Vec<f32>, Vec<f32>) {
                    let mut out = (
                        Vec::with_capacity(cs.len()),
                        Vec::with_capacity(cs.len()),
                        Vec::with_capacity(cs.len()),
                    );
                    for &c in cs {
                        let (i, f) = fmt.split(c);
                        out.0.push(i as f32);
                        out.1.push(f as f32);
                        out.2.push(c as f32);
                    }
                    out
                };
                let (q_int, q_frac, _) = split(&qc[r.clone()]);
                let (k_int, k_frac, k_code) = split(&kc[r.clone()]);
                // Step 2's operands: the integer parts, or centred `2 x_int + 1`.
                let estimate = |cs: &[i32]| -> Vec<f32> {
                    cs.iter()
                        .map(|&c| fmt.estimate(c, cfg.centred) as f32)
                        .collect()
                };
                let w = match cfg.score_mode {
                    ScoreMode::Approx => 2 * d,
                    ScoreMode::Exact => 3 * d,
                    ScoreMode::Float => 0,
                };
                let (mut qq, mut kk) = (Vec::with_capacity(n * w), Vec::with_capacity(n * w));
                for t in 0..n {
                    if w == 0 {
                        break;
                    }
                    let row = t * d..(t + 1) * d;
                    qq.extend(q_int[row.clone()].iter().map(|x| x * one));
                    qq.extend(q_frac[row.clone()].iter().map(|x| x * one));
                    kk.extend_from_slice(&k_code[row.clone()]);
                    kk.extend_from_slice(&k_int[row.clone()]);
                    if w == 3 * d {
                        qq.extend_from_slice(&q_frac[row.clone()]);
                        kk.extend_from_slice(&k_frac[row]);
                    }
                }
                HeadCodes {
                    q_est: if cfg.centred {
                        estimate(&qc[r.clone()])
                    } else {
                        q_int
                    },
                    k_est: if cfg.centred { estimate(&kc[r]) } else { k_int },
                    qq,
                    kk,
                    w,
                    logit_scale: hdp::block_logit_scale(cfg, (eq, ek), d),
                }
            })
            .collect();
        // Steps 2-5 per head, in parallel.
        let decided: Vec<hdp::Decided> = codes
            .par_iter()
            .map_init(
                || (vec![0.0f32; d * n], vec![0.0f32; ROWS * n]),
                |(kt, s), c| integer_pass(isa, c, &valid_tok, p.causal(), n, d, cfg, kt, s),
            )
            .collect();
        let head_imp: Vec<f64> = decided.iter().map(|x| x.1).collect();
        let pruned = prune_heads(&head_imp, cfg.head_pruning);
        let score_scale =
            ((2f64).powi(-(2 * fmt.frac_bits as i32 + eq + ek)) / (d as f64).sqrt()) as f32;
        let seq_off = p.row_offset(b, 0, 0);
        let out_seq = &mut out.data_mut()[seq_off..seq_off + heads * n * d];
        out_seq.par_chunks_mut(n * d).enumerate().for_each_init(
            || (Vec::with_capacity(n), Vec::with_capacity(n)),
            |(idx, sc), (h, o)| {
                let off = p.row_offset(b, h, 0);
                let (qf, kf, v) = (
                    &p.q().data()[off..off + n * d],
                    &p.k().data()[off..off + n * d],
                    &p.v().data()[off..off + n * d],
                );
                if pruned[h] {
                    return;
                }
                let bf16 = cfg.pv == hdp_core::PvPrecision::Bf16;
                let vr: Vec<f32> = if bf16 {
                    v.iter().map(|&x| hdp_core::bf16_round(x)).collect()
                } else {
                    Vec::new()
                };
                let v = if bf16 { &vr[..] } else { v };
                let c = &codes[h];
                let (kept, _, mass) = &decided[h];
                let vsums =
                    (!mass.is_empty()).then(|| hdp::VSums::new(v, &valid_tok, p.causal(), d));
                let comp = vsums.as_ref().map(|vs| (&mass[..], vs));
                sparse_attend(
                    isa,
                    c,
                    qf,
                    kf,
                    v,
                    kept,
                    &valid_tok,
                    p.causal(),
                    n,
                    d,
                    bs,
                    cfg.score_mode,
                    score_scale,
                    bf16,
                    comp,
                    o,
                    idx,
                    sc,
                );
            },
        );
        trace.sequences.push(hdp::finish_sequence(
            p,
            cfg,
            &mut out,
            b,
            (valid, valid_tokens),
            (eq, ek),
            (q_sat, k_sat),
            decided,
            &pruned,
        ));
    }
    Ok(HdpOutput { output: out, trace })
}
