//! The portable twins: plain Rust, what every other tier must equal.

use super::{Kernels, TR};
use crate::fast::{fast_exp, Isa};

pub(crate) static KERNELS: Kernels = Kernels {
    isa: Isa::Portable,
    exact_u8: true,
    tile_rows,
    sparse_scores,
    sparse_scores_u8: Some(sparse_scores_u8),
    sparse_probs,
    pv,
    pv_bf16,
    probs,
    peak: None,
    sparse_below: 0.25,
};

/// [`super::TileRows`], scalar: exact i32 products of the packed layout.
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
    for r in 0..TR {
        let qr = &q[r * q_stride..][..depth];
        for (t, &cb) in blocks.iter().enumerate() {
            let kb = &kpack[cb as usize * 8 * depth..][..8 * depth];
            let mut acc = [0i32; 8];
            for g in 0..groups {
                let qg = &qr[4 * g..4 * g + 4];
                for (c, a) in acc.iter_mut().enumerate() {
                    let k = &kb[g * 32 + c * 4..][..4];
                    for u in 0..4 {
                        *a += qg[u] as i32 * k[u] as i32;
                    }
                }
            }
            out[r * out_stride + 8 * t..][..8].copy_from_slice(&acc);
        }
    }
}

/// [`super::SparseScores`], scalar.
pub(super) unsafe fn sparse_scores(
    q16: &[i16],
    kz: &[i8],
    w: usize,
    idx: &[u32],
    ms: f32,
    s: &mut [f32],
) -> f32 {
    let q = &q16[..w];
    let mut max = f32::NEG_INFINITY;
    for (s, &j) in s.iter_mut().zip(idx) {
        let kr = &kz[j as usize * w..][..w];
        let z: i32 = q.iter().zip(kr).map(|(&x, &y)| x as i32 * y as i32).sum();
        *s = z as f32 * ms;
        max = max.max(*s);
    }
    max
}

/// [`super::SparseProbs`], scalar.
pub(super) unsafe fn sparse_probs(
    s: &mut [f32],
    max: f32,
    (keep, c): (f32, f32),
    bf16: bool,
) -> f32 {
    let mut sum = 0.0f32;
    for x in s.iter_mut() {
        *x = fast_exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    if c != 0.0 {
        let cs = c * sum;
        for x in s.iter_mut() {
            *x = keep * *x - cs;
        }
    }
    if bf16 {
        for x in s.iter_mut() {
            *x = hdp_core::bf16_round(*x * inv);
        }
    }
    inv
}

/// [`super::Pv`], scalar (a product and an add per term).
unsafe fn pv(idx: &[u32], p: &[f32], v: &[f32], d: usize, o: &mut [f32]) {
    o.fill(0.0);
    for (&j, &pj) in idx.iter().zip(p) {
        for (y, &x) in o.iter_mut().zip(&v[j as usize * d..][..d]) {
            *y += pj * x;
        }
    }
}

/// [`super::SparseScoresU8`], scalar.
unsafe fn sparse_scores_u8(
    qz: &[u8],
    kz: &[i8],
    w: usize,
    idx: &[u32],
    kb: &[i32],
    ms: f32,
    s: &mut [f32],
) -> f32 {
    let mut max = f32::NEG_INFINITY;
    for (x, &j) in s.iter_mut().zip(idx) {
        let j = j as usize;
        let z: i32 = qz[..w]
            .iter()
            .zip(&kz[j * w..][..w])
            .map(|(&a, &b)| a as i32 * b as i32)
            .sum();
        *x = (z - kb[j]) as f32 * ms;
        max = max.max(*x);
    }
    max
}

/// [`super::PvBf16`]: [`pv`] on the widened rows.
unsafe fn pv_bf16(idx: &[u32], p: &[f32], vw: &[u32], d: usize, o: &mut [f32]) {
    o.fill(0.0);
    for (&j, &pj) in idx.iter().zip(p) {
        let row = &vw[j as usize * (d / 2)..][..d / 2];
        for (ob, wb) in o.chunks_exact_mut(32).zip(row.chunks_exact(16)) {
            for (c, &w) in wb.iter().enumerate() {
                ob[c] += pj * f32::from_bits(w << 16);
                ob[16 + c] += pj * f32::from_bits(w & 0xffff_0000);
            }
        }
    }
}

/// [`super::Probs`], scalar.
unsafe fn probs(
    z: &[i32],
    kb: &[i32],
    ms: f32,
    (keep, c): (f32, f32),
    words: &[u64],
    p: &mut [f32],
) -> f32 {
    let kept = |t: usize| words[t / 64] >> (t % 64) & 1 == 1;
    let mut max = f32::NEG_INFINITY;
    for (t, x) in p.iter_mut().enumerate() {
        *x = (z[t] - kb[t]) as f32 * ms;
        if kept(t) {
            max = max.max(*x);
        }
    }
    if max == f32::NEG_INFINITY {
        p.fill(0.0);
        return 0.0;
    }
    let mut sum = 0.0f32;
    for (t, x) in p.iter_mut().enumerate() {
        *x = if kept(t) { fast_exp(*x - max) } else { 0.0 };
        sum += *x;
    }
    if c != 0.0 {
        let cs = c * sum;
        for (t, x) in p.iter_mut().enumerate() {
            if kept(t) {
                *x = keep * *x - cs;
            }
        }
    }
    1.0 / sum
}
