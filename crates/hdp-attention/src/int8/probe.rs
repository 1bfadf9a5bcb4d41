//! Measurements for `hdp bench attention`: integer-pass rate and the int8 peak.

use super::*;

/// Measured throughput of the int8 integer pass, for `hdp bench attention`.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct IntegerPassRate {
    /// Multiply-accumulates of one pass over every head (`heads x N_pad^2 x d_pad`).
    pub macs: u64,
    /// Median milliseconds of one pass (one thread).
    pub ms: f64,
    /// `macs / ms`, in GMAC/s.
    pub gmacs: f64,
}

/// Times the integer tile alone (`S_int` for every query and key of every head of the first
/// sequence, no decisions) on one thread: the part of HDP that runs at int8 rate. `None` when
/// the kernel does not support `cfg`.
pub fn integer_pass_rate(
    p: &AttentionProblem,
    cfg: &HdpConfig,
    isa: Isa,
    repeats: usize,
) -> Result<Option<IntegerPassRate>> {
    let dims = p.dims();
    let (heads, n, d) = (dims.heads, dims.seq_len, dims.head_dim);
    crate::fast::check_isa(isa)?;
    if !supported(cfg, d, isa) {
        return Ok(None);
    }
    let kn = crate::kernels::for_isa(isa);
    let fmt = cfg.q_format;
    let dm = Dims::new(n, d, fmt, false, false, false);
    let valid_tok: Vec<bool> = (0..n).map(|i| p.token_is_valid(0, i)).collect();
    let exps = hdp::prescale_exponents(p, cfg, 0, heads, n, d);
    let data: Vec<HeadData> = (0..heads)
        .map(|h| prepare_head(isa, p, fmt, exps, 0, h, dm, &valid_tok))
        .collect();
    let all: Vec<u32> = (0..dm.n_pad as u32 / 8).collect();
    let mut out = vec![0i32; TR * dm.n_pad];
    let mut sink = 0i64;
    let mut pass = || {
        let t0 = std::time::Instant::now();
        for hd in &data {
            for i0 in (0..n).step_by(TR) {
                let q = &hd.qu[i0 * dm.dp..];
                kn.tile_rows(
                    q, dm.dp, dm.dp, &hd.k_pack, &all, dm.run_int, &mut out, dm.n_pad,
                );
                sink = sink.wrapping_add(out[0] as i64);
            }
        }
        t0.elapsed().as_secs_f64() * 1e3
    };
    pass();
    let mut t: Vec<f64> = (0..repeats.max(1)).map(|_| pass()).collect();
    t.sort_by(f64::total_cmp);
    std::hint::black_box(sink);
    let ms = t[t.len() / 2];
    let macs = (heads * n.div_ceil(TR) * TR * dm.n_pad * dm.dp) as u64;
    Ok(Some(IntegerPassRate {
        macs,
        ms,
        gmacs: macs as f64 / ms / 1e6,
    }))
}

/// The int8 multiply-accumulate peak of one core for `isa`, measured: the tier's own int8
/// instruction mix on registers only, independent accumulators, for about `ms` milliseconds
/// (the best of 8 windows: a peak, not an average over interruptions). Returns the GMAC/s and
/// what was measured; `None` for the portable tier (no fixed instruction mix) or a tier this
/// CPU lacks.
pub fn int8_peak_gmacs(isa: Isa, ms: f64) -> Option<(f64, &'static str)> {
    if !isa.available() {
        return None;
    }
    let k = crate::kernels::for_isa(isa);
    let what = k.peak(1)?.1;
    let mut best = 0.0f64;
    for _ in 0..8 {
        let t0 = std::time::Instant::now();
        let mut macs = 0u64;
        while t0.elapsed().as_secs_f64() * 1e3 < ms / 8.0 {
            macs += k.peak(5_000).map_or(0, |x| x.0);
        }
        best = best.max(macs as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    Some((best, what))
}
