//! The bit-accurate model of one HDPA attention core: every register width, rounding and cycle
//! of `rtl/hdpa_core.sv`, written as plain integer Rust. The RTL testbench compares the RTL with
//! this model bit for bit (`rtl/test.sh`); the tests in this crate compare this model's
//! decisions with the reference implementation's (`hdp_attention::hdp`).
//!
//! One head, block size 1, top-k row thresholds, approximated scores. Per query row `i` with
//! `nv` valid keys (`n`, or `i + 1` with a causal mask):
//!
//! * **Phase A** (every row, before any head decision):
//!   - integer engine: `S_j = sum_d est(q_id) est(k_jd)` for `j < nv`, `int_keys` keys per
//!     cycle (`est` = the code's integer part `code >> f`, or centred `2 (code >> f) + 1`);
//!   - pruning unit: keep the `k_i` largest `S_j`, ties to the lower `j` (the reference's total
//!     order), by a digit-serial threshold search over the offset-binary scores, `search_bits`
//!     (`R`) bits per pass: each pass of `ceil(nv / prune_lanes)` cycles compares every score
//!     with the `2^R - 1` candidates that extend the threshold by one digit and counts them, and
//!     the threshold takes the largest candidate that at least `k_i` scores reach
//!     ([`SCORE_BITS`]` / R` passes); the count of scores above the final threshold (which the
//!     tie rule needs) falls out of the same counts; one more pass emits the kept indices in
//!     column order. A row that keeps every key takes the emitting pass only. The head
//!     importance accumulates the kept `S_j` (hdp.md step 5, `kept-sum`), or their positive
//!     parts (`kept-pos-sum`).
//! * **Phase B** (only if the head survives; the host decides from the importances of every
//!   head of the layer):
//!   - fraction engine: `A_j = sum_d q_int k_code + q_frac k_int` for the kept `j`
//!     (`2^f A_j = Q.K - Q_frac.K_frac`, hdp.md step 6), `frac_keys` per cycle, and the row max;
//!   - softmax unit: `e_j = LUT[t & 255] >> (t >> 8)` with `t = round((max - A_j) C / 2^12)`,
//!     i.e. `2^16 2^-((max - A_j) C / 2^20)`, `C` the host's `log2(e) / (2^(f+e_q+e_k) sqrt d)`
//!     in 12.20 fixed point; `exps` per cycle; `Z = sum e_j`;
//!   - S.V engine and divider together: `acc_d = sum e_j v_jd` (`sv_keys` keys per cycle) while
//!     a restoring divider computes `R = floor(2^40 / Z)` in [`DIV_CYCLES`] cycles;
//!   - normalization, `norm_lanes` dimensions per cycle: `out_d = (acc_d R + 2^31) >> 32`,
//!     V's code with
//!     [`OUT_FRAC`] more fractional bits.

use serde::Serialize;

/// Width of the offset-binary scores the pruning unit searches (holds `|S| <= d 31^2` for
/// `d <= 128`, the centred estimate's range at 8 bits with `f >= 3`).
pub const SCORE_BITS: u32 = 18;
/// The pruning unit's digit widths: the divisors of [`SCORE_BITS`] up to 6.
pub const SEARCH_BITS: [u32; 4] = [1, 2, 3, 6];
/// Index bits of the exponential's lookup table (256 entries of `2^16 2^(-t/256)`).
pub const LUT_BITS: u32 = 8;
/// Fractional bits of the exponent scale `C`.
pub const C_FRAC: u32 = 20;
/// The reciprocal is `floor(2^RECIP_SHIFT / Z)`.
pub const RECIP_SHIFT: u32 = 40;
/// Cycles of the restoring divider (one quotient bit per cycle, bits 40..0).
pub const DIV_CYCLES: u64 = RECIP_SHIFT as u64 + 1;
/// Fractional bits the output adds to V's code.
pub const OUT_FRAC: u32 = 8;
/// The code width of Q, K and V (8-bit fixed point).
pub const CODE_BITS: u32 = 8;

/// The exponential's lookup table, `round(2^16 2^(-t / 256))` for `t` in `0..256` (entry 0 is
/// `2^16`, 17 bits). `rtl/exp2_lut.svh` is generated from it (`hdp hw lut`).
pub fn exp_lut() -> Vec<u32> {
    (0..1u32 << LUT_BITS)
        .map(|t| (65536.0 * (-(t as f64) / (1u32 << LUT_BITS) as f64).exp2()).round() as u32)
        .collect()
}

/// The parameters of one core, the RTL's module parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CoreParams {
    /// Head dimension.
    pub d: usize,
    /// Largest sequence the buffers hold.
    pub n_max: usize,
    /// Fractional bits of Q and K's 8-bit codes.
    pub frac_bits: u32,
    /// Keys per cycle of the integer engine (`d` low-bit multipliers each).
    pub int_keys: usize,
    /// Scores per cycle of the pruning unit's comparators.
    pub prune_lanes: usize,
    /// Bits of the top-k threshold the pruning unit decides per pass (`R`, a divisor of
    /// [`SCORE_BITS`]: 1, 2, 3 or 6); each lane has `2^R - 1` comparators.
    pub search_bits: u32,
    /// Kept keys per cycle of the fraction engine (`2 d` multipliers each).
    pub frac_keys: usize,
    /// Exponentials per cycle.
    pub exps: usize,
    /// Kept keys per cycle of the S.V engine (`d` multipliers each).
    pub sv_keys: usize,
    /// Output dimensions normalized per cycle (one 40 x 25-bit multiplier each).
    pub norm_lanes: usize,
}

/// Errors of the hardware model and its driver.
#[derive(Debug, thiserror::Error)]
pub enum HwError {
    /// Parameters or inputs outside what the core supports.
    #[error("{0}")]
    Invalid(String),
    /// A reference or core error.
    #[error(transparent)]
    Core(#[from] hdp_core::Error),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, HwError>;

impl CoreParams {
    /// Checks the ranges the RTL supports.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(HwError::Invalid(s));
        if !(1..=128).contains(&self.d) {
            return bad(format!(
                "head dimension {} outside 1..=128 (the score width holds d <= 128)",
                self.d
            ));
        }
        if !(1..=1024).contains(&self.n_max) {
            return bad(format!("n_max {} outside 1..=1024", self.n_max));
        }
        if !(1..=6).contains(&self.frac_bits) {
            return bad(format!(
                "frac_bits {} outside 1..=6 for 8-bit codes",
                self.frac_bits
            ));
        }
        // The integer score (centred operands are the widest) must fit SCORE_BITS - 1 magnitude
        // bits, the approximated score the RTL's 20-bit register.
        let f = self.frac_bits;
        let est_max = (1u64 << (8 - f)) - 1;
        if self.d as u64 * est_max * est_max >= 1 << (SCORE_BITS - 1) {
            return bad(format!(
                "d = {} with {f} fraction bits overflows the {SCORE_BITS}-bit integer scores \
                 (d (2^(8-f) - 1)^2 must stay below 2^{})",
                self.d,
                SCORE_BITS - 1
            ));
        }
        let a_max = (1u64 << (7 - f)) * 128 + ((1u64 << f) - 1) * (1u64 << (7 - f));
        if self.d as u64 * a_max >= 1 << 19 {
            return bad(format!(
                "d = {} with {f} fraction bits overflows the 20-bit approximated scores",
                self.d
            ));
        }
        if !(1..=self.d).contains(&self.norm_lanes) {
            return bad(format!(
                "norm_lanes = {} outside 1..=d ({})",
                self.norm_lanes, self.d
            ));
        }
        if !SEARCH_BITS.contains(&self.search_bits) {
            return bad(format!(
                "search_bits {} is not one of {SEARCH_BITS:?} (divisors of the {SCORE_BITS}-bit score)",
                self.search_bits
            ));
        }
        if !(1..=1024).contains(&self.prune_lanes) {
            return bad(format!(
                "prune_lanes = {} outside 1..=1024",
                self.prune_lanes
            ));
        }
        // A lane past the longest row would never work (and the RTL's lane offsets are
        // index-wide).
        for (name, v) in [
            ("int_keys", self.int_keys),
            ("prune_lanes", self.prune_lanes),
            ("frac_keys", self.frac_keys),
            ("exps", self.exps),
            ("sv_keys", self.sv_keys),
        ] {
            if v > self.n_max {
                return bad(format!("{name} = {v} exceeds n_max = {}", self.n_max));
            }
        }
        for (name, v) in [
            ("int_keys", self.int_keys),
            ("frac_keys", self.frac_keys),
            ("exps", self.exps),
            ("sv_keys", self.sv_keys),
        ] {
            if !(1..=64).contains(&v) {
                return bad(format!("{name} = {v} outside 1..=64"));
            }
        }
        Ok(())
    }

    /// The core an HDPA preset describes for head dimension `d`: each engine's multipliers
    /// divided by the multipliers one key needs (`d` for the integer and S.V engines, `2 d` for
    /// the fraction engine's two products), at least one key per cycle and at most `n_max`.
    pub fn from_preset(hw: &hdp_sim::HwConfig, d: usize, n_max: usize, frac_bits: u32) -> Self {
        let per =
            |m: u64, per_key: usize| (m as usize / per_key.max(1)).clamp(1, 64).min(n_max.max(1));
        CoreParams {
            d,
            n_max,
            frac_bits,
            int_keys: per(hw.int_engine.multipliers, d),
            prune_lanes: (hw.pruning_unit.blocks_per_cycle as usize)
                .clamp(1, 1024)
                .min(n_max.max(1)),
            search_bits: hw.pruning_unit.search_bits_per_pass as u32,
            frac_keys: per(hw.frac_engine.multipliers, 2 * d),
            exps: (hw.softmax_unit.exps_per_cycle as usize)
                .clamp(1, 64)
                .min(n_max.max(1)),
            sv_keys: per(hw.sv_engine.multipliers, d),
            norm_lanes: (hw.softmax_unit.norm_lanes as usize).clamp(1, d.max(1)),
        }
    }

    /// The Verilator/Yosys parameter overrides of this core (`-GNAME=VALUE`).
    pub fn rtl_overrides(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("D", self.d),
            ("NMAX", self.n_max),
            ("F", self.frac_bits as usize),
            ("KI", self.int_keys),
            ("P", self.prune_lanes),
            ("R", self.search_bits as usize),
            ("KF", self.frac_keys),
            ("E", self.exps),
            ("KS", self.sv_keys),
            ("NL", self.norm_lanes),
        ]
    }
}

/// One head's work as the host hands it to the core: 8-bit codes (row-major `n x d`), the
/// per-row keep counts and the exponent scale.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadJob {
    /// Valid tokens (queries and keys `0..n`; padding is never loaded).
    pub n: usize,
    /// Causal mask: row `i` sees keys `0..=i`.
    pub causal: bool,
    /// Rank with the centred estimate `2 (code >> f) + 1`.
    pub centred: bool,
    /// Head importance over positive kept scores only (`kept-pos-sum`) instead of all kept
    /// scores (`kept-sum`).
    pub importance_pos: bool,
    /// `C`, the exponent scale in 12.20 fixed point.
    pub c_exp: u32,
    /// Q codes.
    pub q: Vec<i8>,
    /// K codes.
    pub k: Vec<i8>,
    /// V codes.
    pub v: Vec<i8>,
    /// Keys each row keeps (`ceil(keep nv)`, the host's top-k count), `1..=nv`.
    pub kcount: Vec<u16>,
}

/// Cycles per stage (sums over rows) and per phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cycles {
    /// Integer engine.
    pub int: u64,
    /// Pruning unit.
    pub prune: u64,
    /// Fraction engine.
    pub frac: u64,
    /// Softmax unit (exponentials).
    pub exp: u64,
    /// S.V engine with the divider alongside.
    pub sv_div: u64,
    /// Normalization.
    pub norm: u64,
    /// Phase A, start to done.
    pub phase_a: u64,
    /// Phase B, start to done (0 for a pruned head).
    pub phase_b: u64,
}

/// What the core produced for one head.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadRun {
    /// Kept key indices per row, ascending.
    pub kept: Vec<Vec<u16>>,
    /// Sum of the kept integer scores (or of their positive parts).
    pub importance: i64,
    /// Output codes (row-major `n x d`, V's code times `2^OUT_FRAC`); zero for a pruned head.
    pub out: Vec<i16>,
    /// Cycle counts.
    pub cycles: Cycles,
}

fn est(code: i8, f: u32, centred: bool) -> i32 {
    let int = (code as i32) >> f;
    if centred {
        2 * int + 1
    } else {
        int
    }
}

impl HeadJob {
    /// Checks the job against the core's parameters.
    pub fn validate(&self, p: &CoreParams) -> Result<()> {
        let bad = |s: String| Err(HwError::Invalid(s));
        if self.n == 0 || self.n > p.n_max {
            return bad(format!(
                "n = {} outside 1..={} (the core's buffers)",
                self.n, p.n_max
            ));
        }
        let len = self.n * p.d;
        if self.q.len() != len || self.k.len() != len || self.v.len() != len {
            return bad(format!(
                "Q/K/V must hold n x d = {len} codes, got {}/{}/{}",
                self.q.len(),
                self.k.len(),
                self.v.len()
            ));
        }
        if self.kcount.len() != self.n {
            return bad(format!(
                "{} keep counts for {} rows",
                self.kcount.len(),
                self.n
            ));
        }
        for (i, &k) in self.kcount.iter().enumerate() {
            let nv = self.valid_keys(i);
            if k == 0 || k as usize > nv {
                return bad(format!("row {i} keeps {k} of {nv} keys (must be 1..={nv})"));
            }
        }
        Ok(())
    }

    /// Valid keys of row `i`.
    pub fn valid_keys(&self, i: usize) -> usize {
        if self.causal {
            i + 1
        } else {
            self.n
        }
    }
}

/// The pruning unit's search, as the RTL runs it: over offset-binary scores `u` (below
/// `2^SCORE_BITS`), `R` bits per pass, the largest threshold `t` that at least `k` scores reach
/// (the k-th largest score) and the number of scores above it. Each pass counts the scores at
/// or above the `2^R - 1` candidates that extend `t` by one digit and takes the largest digit
/// whose count reaches `k`; `above` keeps the count at the smallest candidate that failed so
/// far, which after the last digit is the count at `t + 1`.
pub fn digit_search(u: &[i64], k: usize, r: u32) -> (i64, usize) {
    let digits = 1i64 << r;
    let (mut t, mut above) = (0i64, 0usize);
    for pass in (0..SCORE_BITS / r).rev() {
        let b = pass * r;
        let counts: Vec<usize> = (1..digits)
            .map(|m| u.iter().filter(|&&x| x >= t | (m << b)).count())
            .collect();
        let m = (1..digits)
            .rev()
            .find(|&m| counts[m as usize - 1] >= k)
            .unwrap_or(0);
        if m + 1 < digits {
            above = counts[m as usize];
        }
        t |= m << b;
    }
    (t, above)
}

/// Phase A: integer scores, top-k selection, head importance.
pub fn phase_a(p: &CoreParams, job: &HeadJob) -> (Vec<Vec<u16>>, i64, Cycles) {
    let (d, f) = (p.d, p.frac_bits);
    let mut cyc = Cycles::default();
    let mut kept_all = Vec::with_capacity(job.n);
    let mut importance = 0i64;
    let off = 1i64 << (SCORE_BITS - 1);
    for i in 0..job.n {
        let nv = job.valid_keys(i);
        let qi: Vec<i32> = job.q[i * d..][..d]
            .iter()
            .map(|&c| est(c, f, job.centred))
            .collect();
        let s: Vec<i64> = (0..nv)
            .map(|j| {
                job.k[j * d..][..d]
                    .iter()
                    .zip(&qi)
                    .map(|(&kc, &q)| q * est(kc, f, job.centred))
                    .sum::<i32>() as i64
            })
            .collect();
        cyc.int += nv.div_ceil(p.int_keys) as u64;
        let k = job.kcount[i] as usize;
        let pass = nv.div_ceil(p.prune_lanes) as u64;
        let kept: Vec<u16> = if k >= nv {
            cyc.prune += pass;
            (0..nv as u16).collect()
        } else {
            let u: Vec<i64> = s.iter().map(|&x| x + off).collect();
            // The threshold and the count above it, as the digit-serial search finds them
            // (`digit_search`, tested equal); selection is faster to model.
            let mut sorted = u.clone();
            let (_, &mut t, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
            let gt = u.iter().filter(|&&x| x > t).count();
            debug_assert_eq!((t, gt), digit_search(&u, k, p.search_bits));
            cyc.prune += (SCORE_BITS / p.search_bits + 1) as u64 * pass;
            let mut eq_left = k - gt;
            (0..nv)
                .filter(|&j| {
                    if u[j] > t {
                        true
                    } else if u[j] == t && eq_left > 0 {
                        eq_left -= 1;
                        true
                    } else {
                        false
                    }
                })
                .map(|j| j as u16)
                .collect()
        };
        importance += kept
            .iter()
            .map(|&j| {
                let x = s[j as usize];
                if job.importance_pos {
                    x.max(0)
                } else {
                    x
                }
            })
            .sum::<i64>();
        kept_all.push(kept);
    }
    cyc.phase_a = cyc.int + cyc.prune;
    (kept_all, importance, cyc)
}

/// The exponential unit: `2^16 2^-(x C / 2^20)` as the RTL computes it, `x >= 0`.
pub fn exp_unit(lut: &[u32], x: u64, c: u32) -> u32 {
    let shift = C_FRAC - LUT_BITS;
    let t = (x * c as u64 + (1u64 << (shift - 1))) >> shift;
    let (ti, tf) = (t >> LUT_BITS, (t & ((1 << LUT_BITS) - 1)) as usize);
    if ti >= 17 {
        0
    } else {
        lut[tf] >> ti
    }
}

/// `floor(2^RECIP_SHIFT / z)` by restoring division, one quotient bit per cycle, as the RTL.
pub fn reciprocal(z: u64) -> u64 {
    let mut rem = 0u64;
    let mut q = 0u64;
    for b in (0..=RECIP_SHIFT).rev() {
        rem = (rem << 1) | u64::from(b == RECIP_SHIFT);
        q <<= 1;
        if rem >= z {
            rem -= z;
            q |= 1;
        }
    }
    q
}

/// Phase B of a surviving head: approximated kept scores, fixed-point softmax, S.V.
pub fn phase_b(p: &CoreParams, job: &HeadJob, kept: &[Vec<u16>]) -> (Vec<i16>, Cycles) {
    let (d, f) = (p.d, p.frac_bits);
    let lut = exp_lut();
    let mut out = vec![0i16; job.n * d];
    let mut cyc = Cycles::default();
    let split = |c: i8| ((c as i32) >> f, (c as i32) & ((1 << f) - 1));
    for (i, row) in kept.iter().enumerate() {
        let kn = row.len();
        let q = &job.q[i * d..][..d];
        let a: Vec<i64> = row
            .iter()
            .map(|&j| {
                let kr = &job.k[j as usize * d..][..d];
                q.iter()
                    .zip(kr)
                    .map(|(&qc, &kc)| {
                        let (qi, qf) = split(qc);
                        let (ki, _) = split(kc);
                        qi * kc as i32 + qf * ki
                    })
                    .sum::<i32>() as i64
            })
            .collect();
        let m = a.iter().copied().max().unwrap_or(0);
        let e: Vec<u32> = a
            .iter()
            .map(|&x| exp_unit(&lut, (m - x) as u64, job.c_exp))
            .collect();
        let z: u64 = e.iter().map(|&x| x as u64).sum();
        let r = reciprocal(z) as i64;
        for dd in 0..d {
            let acc: i64 = row
                .iter()
                .zip(&e)
                .map(|(&j, &w)| w as i64 * job.v[j as usize * d + dd] as i64)
                .sum();
            out[i * d + dd] = ((acc * r + (1i64 << 31)) >> 32) as i16;
        }
        cyc.frac += kn.div_ceil(p.frac_keys) as u64;
        cyc.exp += kn.div_ceil(p.exps) as u64;
        cyc.sv_div += (kn.div_ceil(p.sv_keys) as u64).max(DIV_CYCLES);
        cyc.norm += d.div_ceil(p.norm_lanes) as u64;
    }
    cyc.phase_b = cyc.frac + cyc.exp + cyc.sv_div + cyc.norm;
    (out, cyc)
}

/// Both phases of one head; `pruned` skips phase B (output zero).
pub fn run_head(p: &CoreParams, job: &HeadJob, pruned: bool) -> Result<HeadRun> {
    p.validate()?;
    job.validate(p)?;
    let (kept, importance, ca) = phase_a(p, job);
    let (out, cb) = if pruned {
        (vec![0; job.n * p.d], Cycles::default())
    } else {
        phase_b(p, job, &kept)
    };
    Ok(HeadRun {
        kept,
        importance,
        out,
        cycles: Cycles {
            int: ca.int,
            prune: ca.prune,
            frac: cb.frac,
            exp: cb.exp,
            sv_div: cb.sv_div,
            norm: cb.norm,
            phase_a: ca.phase_a,
            phase_b: cb.phase_b,
        },
    })
}
