//! The int8 HDP kernel: the fast path of [`crate::fast::hdp_attention`] for formats of at most
//! 8 bits in approximate-score mode (the default operating point). `ARCHITECTURE.md` has the
//! measurements behind each choice.
//!
//! Data layout per head (built while quantizing, O(N d)):
//! - `qu`: `Q_int + A` as u8, where `A = 2^(bits-1-f)` makes the integer part non-negative
//!   (`u8 x i8` products are what AVX2 `vpmaddubsw` and VNNI `vpdpbusd` multiply);
//! - `K_int` as i8, packed for the integer tile (8 keys x 4 dimensions per 32 bytes);
//! - per key `sum_k K_int`, so `S_int = qu . K_int - A sum K_int` is exact;
//! - `[Q_int + A, Q_frac]` per query and `[K, K_int]` per key (row-major and packed), so that
//!   `Z = [Q_int + A, Q_frac] . [K, K_int]` gives `Q_int . K + Q_frac . K_int = Z - A sum_k K`:
//!   the approximated score of hdp.md step 6 in units of `2^-f`.
//!
//! Integer pass (steps 2-5): 4 query rows x 16 keys register tiles (`tile_rows`); one-entry
//! blocks are decided row by row by vectorized passes (`decide_b1_body`); larger blocks with
//! `sum` importance take their importances from block sums of `Q_int` and `K_int`
//! (`integer_pass_block_sums`), other importances reduce the tile rows per block.
//!
//! Kept entries (steps 6-7), by chunks of rows: dense enough chunks compute `Z` with the same
//! tile over the key blocks they keep, a masked softmax and one GEMM for P.V; sparse chunks
//! score entry by entry and accumulate V rows (`attend`).
//!
//! Exactness: `vpmaddubsw` adds two u8 x i8 products into i16, at most `2 * 127 * 128 < 2^15`
//! when `A <= 64` ([`supported`] checks it); such pair sums are added in i16 only for as many
//! groups as cannot overflow (`i16_run`), then widened to i32. So the integer results, and
//! with them every decision, equal the reference's exactly.

use crate::config::{BlockImportance, HdpConfig, RowThreshold};
use crate::fast::{matmul, Isa, View};
use crate::hdp::{self, prune_heads, HdpOutput, HeadDecider, RowScratch, RowStats};
use crate::problem::AttentionProblem;
use hdp_core::{BlockMask, QFormat, Result, ScoreMode, Tensor};
use rayon::prelude::*;

mod kept;
mod layout;
mod pass;
mod probe;
#[cfg(test)]
mod tests;

pub(crate) use crate::kernels::{TC, TR};
use kept::*;
use layout::*;
use pass::*;
pub(crate) use pass::{Moments, Tail, MASKED};
pub use probe::{int8_peak_gmacs, integer_pass_rate, IntegerPassRate};

/// Whether the int8 kernel computes `cfg` at head dimension `d` exactly on tier `isa`: codes
/// fit i8; on tiers whose int8 products go through `vpmaddubsw` (`Kernels::exact_u8` false)
/// the offset integer part keeps its pairwise sums below 2^15 (exact scores are split into
/// the nibbles of `Q + 128` there, see `Dims::split`); and every score in units of `2^-2f`
/// stays below 2^24 (exact in f32): approximate `2^f |Z - A sum K| <= 2^f d (2A 2^(bits-1) +
/// 2^f A)`, exact `|Q . K| <= d 2^(2 (bits-1))`.
pub fn supported(cfg: &HdpConfig, d: usize, isa: Isa) -> bool {
    let f = cfg.q_format;
    if f.bits > 8 || f.frac_bits >= f.bits || !isa.available() {
        return false;
    }
    let exact_u8 = crate::kernels::for_isa(isa).exact_u8;
    let a = offset(f) as f64;
    // A_e >= A: the condition on A_e covers the integer pass on either operand.
    let ae = estimate_offset(f, cfg.centred) as f64;
    let one = f.one() as f64;
    let code = (1u64 << (f.bits - 1)) as f64;
    let score = match cfg.score_mode {
        ScoreMode::Approx => one * d as f64 * (2.0 * a * 128.0 + one * a),
        ScoreMode::Exact => d as f64 * code * code,
        ScoreMode::Float => return false,
    };
    // `Q_e + A_e` fits u8 and `K_e` i8; without vpdpbusd, the pass's i16 pair sums
    // `2 (2 A_e - 1) A_e` stay below 2^15.
    ae <= 128.0 && (ae <= 64.0 || exact_u8) && score < (1u64 << 24) as f64
}

/// Milliseconds per stage of one int8 HDP run, summed over heads (with several threads, CPU
/// time, not wall time), for `hdp bench attention`. Measured only when asked
/// (`fast::hdp_attention_staged`): reading the clock costs about 2% at b = 1.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StageTimes {
    /// Step 1: quantization, integer/fraction splits, packed layouts.
    pub quantize: f64,
    /// Steps 2-3: the integer tiles `S_int`.
    pub integer_pass: f64,
    /// Steps 3-5: block importances, row decisions, head decisions.
    pub decisions: f64,
    /// Kept-side bookkeeping: each row's kept columns, gathered keys and V rows.
    pub kept_setup: f64,
    /// Step 6: scores of the kept entries (`Z` tiles or per-entry dot products).
    pub kept_scores: f64,
    /// Step 7: softmax over the kept entries (with the scores' conversion to f32 on the tile
    /// path).
    pub softmax: f64,
    /// Step 7: `P . V`.
    pub pv: f64,
    /// Everything else (pre-scale exponents, masks, the trace), wall time minus the above on
    /// one thread.
    pub other: f64,
}

impl StageTimes {
    fn add(&mut self, o: &StageTimes) {
        self.quantize += o.quantize;
        self.integer_pass += o.integer_pass;
        self.decisions += o.decisions;
        self.kept_setup += o.kept_setup;
        self.kept_scores += o.kept_scores;
        self.softmax += o.softmax;
        self.pv += o.pv;
    }

    /// Sum of the measured stages (without `other`).
    pub fn measured(&self) -> f64 {
        self.quantize
            + self.integer_pass
            + self.decisions
            + self.kept_setup
            + self.kept_scores
            + self.softmax
            + self.pv
    }
}

/// A stopwatch that reads the clock only when profiling.
#[derive(Default)]
struct Clock(Option<std::time::Instant>);

impl Clock {
    fn new(on: bool) -> Clock {
        Clock(on.then(std::time::Instant::now))
    }

    /// Adds the time since the last lap to `slot`.
    #[inline]
    fn lap(&mut self, slot: &mut f64) {
        if let Some(t) = &mut self.0 {
            let now = std::time::Instant::now();
            *slot += (now - *t).as_secs_f64() * 1e3;
            *t = now;
        }
    }
}

/// `A = 2^(bits-1-f)`: `Q_int + A` is in `0..2A`.
fn offset(f: QFormat) -> i32 {
    1 << (f.bits - 1 - f.frac_bits)
}

/// `A_e`, the offset of the integer pass's left operand: `A`, or `2 A` for centred operands
/// (`2 Q_int + 1` is in `-2A + 1..2A`), so that `Q_e + A_e` is in `0..2 A_e`.
fn estimate_offset(f: QFormat, centred: bool) -> i32 {
    offset(f) << centred as i32
}

/// The int8 HDP kernel (see the module docs); the caller checked [`supported`].
pub(crate) fn hdp_attention(
    p: &AttentionProblem,
    cfg: &HdpConfig,
    layer: usize,
    isa: Isa,
    profile: bool,
) -> Result<(HdpOutput, Option<StageTimes>)> {
    let t_start = std::time::Instant::now();
    let times = std::sync::Mutex::new(StageTimes::default());
    let dims = p.dims();
    debug_assert!(supported(cfg, dims.head_dim, isa));
    let (heads, n, d, bs) = (dims.heads, dims.seq_len, dims.head_dim, cfg.block_size);
    let fmt = cfg.q_format;
    let exact_u8 = crate::kernels::for_isa(isa).exact_u8;
    let exact = cfg.score_mode == ScoreMode::Exact;
    let dm = Dims::new(n, d, fmt, exact, !exact_u8, cfg.centred);
    let a = dm.ae;
    // Every key block in order (the integer pass and one-entry-block chunks use all keys).
    let all: Vec<u32> = (0..dm.n_pad as u32 / 8).collect();
    let mut out = Tensor::zeros(p.q().shape().to_vec());
    let mut trace = hdp::empty_layer_trace(p, cfg, layer)?;
    // Sequences go in groups, each group's heads in one parallel region per step: called from
    // outside the thread pool, every region hands the work to the pool and back (at one
    // thread on Zen 3 the two regions of a 32-token call took about 170 us, half of the
    // call), so a batch no longer pays that per sequence. A group holds at most GROUP_ROWS
    // query rows of all its heads, which bounds the head data kept between the steps.
    const GROUP_ROWS: usize = 1 << 14;
    let per_seq = (heads * n).max(1);
    let group = (GROUP_ROWS / per_seq).clamp(1, dims.batch.max(1));
    let mut b0 = 0;
    while b0 < dims.batch {
        let b1 = (b0 + group).min(dims.batch);
        struct Seq {
            valid: (BlockMask, usize),
            valid_tok: Vec<bool>,
            valid_words: Vec<u64>,
            exps: (i32, i32),
        }
        let seqs: Vec<Seq> = (b0..b1)
            .map(|b| {
                let valid = hdp::valid_blocks(p, b, bs);
                let valid_tok: Vec<bool> = (0..n).map(|i| p.token_is_valid(b, i)).collect();
                let mut valid_words = vec![0u64; n.div_ceil(64)];
                for (i, _) in valid_tok.iter().enumerate().filter(|x| *x.1) {
                    valid_words[i / 64] |= 1 << (i % 64);
                }
                let exps = hdp::prescale_exponents(p, cfg, b, heads, n, d);
                Seq {
                    valid,
                    valid_tok,
                    valid_words,
                    exps,
                }
            })
            .collect();
        // Steps 1-5 per (sequence, head), in parallel.
        let decided: Vec<(HeadData, hdp::Decided)> = (0..(b1 - b0) * heads)
            .into_par_iter()
            .map_init(PassScratch::default, |sc, t| {
                let (sq, h) = (&seqs[t / heads], t % heads);
                let b = b0 + t / heads;
                let mut st = StageTimes::default();
                let mut clock = Clock::new(profile);
                let mut hd = prepare_head(isa, p, fmt, sq.exps, b, h, dm, &sq.valid_tok);
                clock.lap(&mut st.quantize);
                hd.logit_scale = hdp::block_logit_scale(cfg, sq.exps, d);
                let decision = integer_pass(
                    isa,
                    &hd,
                    dm,
                    &all,
                    &sq.valid.0,
                    &sq.valid_tok,
                    p.causal(),
                    cfg,
                    a,
                    sc,
                    &mut clock,
                    &mut st,
                );
                if profile {
                    times.lock().expect("no panics while held").add(&st);
                }
                (hd, decision)
            })
            .collect();
        // Step 5's head pruning, per sequence.
        let pruned: Vec<bool> = decided
            .chunks(heads)
            .flat_map(|seq| {
                let imp: Vec<f64> = seq.iter().map(|x| x.1 .1).collect();
                prune_heads(&imp, cfg.head_pruning)
            })
            .collect();
        let coefs: Vec<Coef> = seqs
            .iter()
            .map(|sq| Coef {
                a: dm.za,
                two_f: if dm.exact { 1.0 } else { fmt.one() as f32 },
                scale: ((2f64).powi(-(2 * fmt.frac_bits as i32 + sq.exps.0 + sq.exps.1))
                    / (d as f64).sqrt()) as f32,
            })
            .collect();
        // Steps 6-7 per surviving (sequence, head), in parallel: the group's output rows are
        // contiguous, `[sequence][head][N][d]`.
        let seq_off = p.row_offset(b0, 0, 0);
        let out_group = &mut out.data_mut()[seq_off..seq_off + (b1 - b0) * heads * n * d];
        out_group.par_chunks_mut(n * d).enumerate().for_each_init(
            AttendScratch::default,
            |sc, (t, o)| {
                if pruned[t] {
                    return;
                }
                let (sq, h) = (&seqs[t / heads], t % heads);
                let b = b0 + t / heads;
                let mut st = StageTimes::default();
                let mut clock = Clock::new(profile);
                let off = p.row_offset(b, h, 0);
                let v = &p.v().data()[off..off + n * d];
                let (hd, (kept, _, mass)) = &decided[t];
                attend(
                    isa,
                    hd,
                    dm,
                    &all,
                    kept,
                    &sq.valid_words,
                    p.causal(),
                    bs,
                    v,
                    cfg.pv,
                    mass,
                    coefs[t / heads],
                    o,
                    sc,
                    &mut clock,
                    &mut st,
                );
                if profile {
                    times.lock().expect("no panics while held").add(&st);
                }
            },
        );
        let mut decided = decided.into_iter();
        for (i, sq) in seqs.into_iter().enumerate() {
            let seq: Vec<(HeadData, hdp::Decided)> = decided.by_ref().take(heads).collect();
            let saturated = seq
                .iter()
                .fold((0, 0), |(q, k), x| (q + x.0.q_sat, k + x.0.k_sat));
            let seq_decided = seq.into_iter().map(|(_, x)| x).collect();
            trace.sequences.push(hdp::finish_sequence(
                p,
                cfg,
                &mut out,
                b0 + i,
                sq.valid,
                sq.exps,
                saturated,
                seq_decided,
                &pruned[i * heads..(i + 1) * heads],
            ));
        }
        b0 = b1;
    }
    let stages = profile.then(|| {
        let mut t = times.into_inner().expect("no panics while held");
        t.other = (t_start.elapsed().as_secs_f64() * 1e3 - t.measured()).max(0.0);
        t
    });
    Ok((HdpOutput { output: out, trace }, stages))
}
