//! Synthetic Q/K/V with the structure real attention has, so pruning has something to find.
//! Random Gaussian Q and K give nearly uniform attention, which no pruning method can exploit
//! and no trained model produces. Per head h, token i (all draws from a seeded SplitMix64):
//!
//! - `g ~ N(0, 1)^d` independent noise for every Q, K and V row (score noise std ~1 after the
//!   1/sqrt(d) scale);
//! - `p_i`: a sinusoidal position code (as in the original transformer), scaled by
//!   [`LOCALITY`]: nearby tokens score higher (local attention);
//! - a unit direction `u_h`; every query carries `SALIENT_Q * u_h` and a random
//!   [`SALIENT_FRACTION`] of keys carry `SALIENT_K * u_h` (attention sinks / salient tokens);
//! - a head strength `t_h` uniform in `[0.3, 1.2]` multiplies Q, so some heads are weak.
//!
//! `q_i = t_h (g + LOCALITY p_i + SALIENT_Q u_h)`, `k_j = g + LOCALITY p_j + s_j SALIENT_K u_h`,
//! `v_j = g`.

use crate::problem::AttentionProblem;
use hdp_core::rng::SplitMix64;
use hdp_core::{Result, Tensor};

/// Scale of the position code in Q and K.
pub const LOCALITY: f64 = 1.0;
/// Salient-direction component of every query.
pub const SALIENT_Q: f64 = 3.0;
/// Salient-direction component of salient keys.
pub const SALIENT_K: f64 = 6.0;
/// Fraction of keys that are salient.
pub const SALIENT_FRACTION: f64 = 0.1;

/// Shape and masks of a synthetic problem.
#[derive(Clone, Copy, Debug)]
pub struct SyntheticSpec {
    /// Sequences.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Real tokens per sequence (the rest is padding); `None` = no padding.
    pub valid_len: Option<usize>,
    /// Causal mask.
    pub causal: bool,
    /// PRNG seed.
    pub seed: u64,
}

/// Builds the problem described in the module doc.
pub fn generate(s: &SyntheticSpec) -> Result<AttentionProblem> {
    let (b, h, n, d) = (s.batch, s.heads, s.seq_len, s.head_dim);
    let mut rng = SplitMix64::new(s.seed);
    // Sizes come from flags: check them before allocating (the problem's own budget check on
    // heads x N x N follows in AttentionProblem::new).
    let len = hdp_core::budget::check_elements("synthetic Q/K/V", &[b, h, n, d])?;
    hdp_core::budget::check_elements("attention scores (heads x N x N)", &[h, n, n])?;
    let (mut q, mut k, mut v) = (vec![0f32; len], vec![0f32; len], vec![0f32; len]);
    let pos = |i: usize, m: usize| {
        let freq = 1.0 / 10000f64.powf((2 * (m / 2)) as f64 / d as f64);
        let a = i as f64 * freq;
        if m.is_multiple_of(2) {
            a.sin()
        } else {
            a.cos()
        }
    };
    for bi in 0..b {
        for hi in 0..h {
            let mut u: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            u.iter_mut().for_each(|x| *x /= norm);
            let t = 0.3 + 0.9 * rng.uniform();
            for i in 0..n {
                let salient = rng.uniform() < SALIENT_FRACTION;
                let off = ((bi * h + hi) * n + i) * d;
                for m in 0..d {
                    let pm = LOCALITY * pos(i, m);
                    q[off + m] = (t * (rng.normal() + pm + SALIENT_Q * u[m])) as f32;
                    let sk = if salient { SALIENT_K * u[m] } else { 0.0 };
                    k[off + m] = (rng.normal() + pm + sk) as f32;
                    v[off + m] = rng.normal() as f32;
                }
            }
        }
    }
    let shape = vec![b, h, n, d];
    let mask = s
        .valid_len
        .map(|l| (0..b * n).map(|x| x % n < l).collect::<Vec<bool>>());
    AttentionProblem::new(
        Tensor::new(shape.clone(), q)?,
        Tensor::new(shape.clone(), k)?,
        Tensor::new(shape, v)?,
        mask,
        s.causal,
    )
}
