//! Every option of HDP attention (`shared/design/hdp.md` steps 1-7), typed end to end: the
//! option enums parse themselves ([`FromStr`], and clap's `ValueEnum` with the `clap` feature),
//! and [`HdpConfig::validated`] turns a configuration into a [`ValidConfig`], the only form the
//! kernels, the traces and the simulator accept, so nothing downstream re-checks or re-parses.
//! Defaults are the operating point our sweep chose (README, "Default operating point").

use crate::{Error, QFormat, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Implements [`FromStr`] and [`fmt::Display`] for a unit enum with the kebab-case names its
/// serde form uses, so flags, files and traces spell every option the same way.
macro_rules! named_options {
    ($ty:ident, $what:literal, { $($name:literal => $variant:ident),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name used on the command line, in files and in traces.
            pub fn name(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }

        impl FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s.trim() {
                    $($name => Ok($ty::$variant),)+
                    other => Err(Error::InvalidOption {
                        name: $what,
                        value: format!("{other:?}"),
                        expected: format!("one of {}", [$($name),+].join(", ")),
                    }),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

/// How the scores of surviving blocks are computed (hdp.md step 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ScoreMode {
    /// `2^f (Q_int.K + Q_frac.K_int)`: drops `Q_frac.K_frac` (two integer dot products), the
    /// hardware's saving (4-bit multipliers).
    Approx,
    /// The full fixed-point product `Q.K` (all four partial products). The CPU default: on a
    /// CPU it is one int8 dot product of the codes, cheaper than the approximation's two, and
    /// it is at least as accurate (README, "Exact or approximated scores"). The simulator
    /// models the hardware's approximation whatever the CPU computed (hdp.md step 6).
    #[default]
    Exact,
    /// Surviving blocks computed from the float Q and K (pruning decisions stay integer).
    Float,
}

named_options!(ScoreMode, "score", { "approx" => Approx, "exact" => Exact, "float" => Float });

/// Precision of the operands of P.V, the probabilities and V (hdp.md step 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum PvPrecision {
    /// f32 probabilities and values.
    F32,
    /// The normalized probabilities and V rounded to bfloat16 (8-bit significand,
    /// round-to-nearest-even, [`bf16_round`]); products exact, sums in f32 or wider. On CPUs
    /// with AVX-512 BF16 this doubles the rate of P.V (`vdpbf16ps`); elsewhere the same
    /// numbers are computed by f32 arithmetic on the rounded operands (same speed as f32).
    /// The default: measured embedding cosine to dense unchanged to 1e-4 (README).
    #[default]
    Bf16,
}

named_options!(PvPrecision, "pv", { "f32" => F32, "bf16" => Bf16 });

/// `x` rounded to the nearest bfloat16 (ties to even), as an f32: the upper 16 bits of the
/// result are the bfloat16. Finite inputs only (what attention operands are); values beyond
/// bfloat16's range round to infinity as the hardware conversion does.
#[inline]
pub fn bf16_round(x: f32) -> f32 {
    let b = x.to_bits();
    f32::from_bits(b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
}

/// How Q and K are scaled by a power of two before quantization (step 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Prescale {
    /// From the input's own max |x| at run time, per sequence and per tensor (Q, K) over all
    /// heads of the layer, so the codes fill the signed range. Per sequence so that results do
    /// not depend on how inputs are batched.
    #[default]
    RunTime,
    /// Calibrated exponents, fixed for the layer: Q is multiplied by `2^q_exp`, K by `2^k_exp`.
    Fixed {
        /// Exponent for Q.
        q_exp: i32,
        /// Exponent for K.
        k_exp: i32,
    },
    /// No pre-scale (exponent 0).
    None,
}

impl FromStr for Prescale {
    type Err = Error;
    /// `run-time`, `none`, `fixed` (exponents 0) or `fixed:Q_EXP:K_EXP`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidOption {
            name: "prescale",
            value: format!("{s:?}"),
            expected: "run-time, none, fixed or fixed:Q_EXP:K_EXP (integers)".into(),
        };
        match s.trim() {
            "run-time" => Ok(Prescale::RunTime),
            "none" => Ok(Prescale::None),
            "fixed" => Ok(Prescale::Fixed { q_exp: 0, k_exp: 0 }),
            other => {
                let rest = other.strip_prefix("fixed:").ok_or_else(bad)?;
                let (q, k) = rest.split_once(':').ok_or_else(bad)?;
                Ok(Prescale::Fixed {
                    q_exp: q.trim().parse().map_err(|_| bad())?,
                    k_exp: k.trim().parse().map_err(|_| bad())?,
                })
            }
        }
    }
}

impl fmt::Display for Prescale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prescale::RunTime => f.write_str("run-time"),
            Prescale::None => f.write_str("none"),
            Prescale::Fixed { q_exp, k_exp } => write!(f, "fixed:{q_exp}:{k_exp}"),
        }
    }
}

/// Reduction of `S_int` over a block's valid entries (step 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum BlockImportance {
    /// Sum of the integer scores.
    #[default]
    Sum,
    /// Largest integer score.
    Max,
    /// Sum of absolute integer scores.
    AbsSum,
}

named_options!(BlockImportance, "importance", { "sum" => Sum, "max" => Max, "abs-sum" => AbsSum });

/// Row-balanced block pruning policy (step 4).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RowThreshold {
    /// No block pruning: every valid block is kept.
    KeepAll,
    /// Keep blocks with importance `>= mean + rho * (max - mean)` of their block-row.
    MeanMax {
        /// In `[0, 1]`: 0 keeps the blocks at or above the row mean, 1 only the row maximum.
        rho: f64,
    },
    /// Keep the `max(ceil(keep * valid_blocks_in_row), min)` most important blocks of each
    /// block-row (all of them when fewer are valid).
    TopK {
        /// Fraction in `(0, 1]`.
        keep: f64,
        /// The floor: at least this many blocks per block-row, `>= 1` (short rows are where a
        /// fixed fraction hurts most: keeping 2 of the 5 tokens of "An absorbing documentary."
        /// moved its embedding to cosine 0.917 from dense). Absent from older files: 1.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        min: usize,
    },
    /// Keep the fewest most important blocks of each block-row whose estimated softmax mass
    /// reaches `mass`: the mass of a block is estimated from its integer importance alone,
    /// `exp(lambda (imp - max imp))` with `lambda` the known scale from integer units to logits
    /// (`2^-(e_q + e_k) / sqrt(d)`, divided by `b^2` for sum importances: a block's mean entry).
    /// A top-k whose k each row chooses (row-adaptive).
    TopP {
        /// Fraction of the estimated mass, in `(0, 1]`.
        mass: f64,
    },
}

impl fmt::Display for RowThreshold {
    /// `keep-all`, `top-k 0.3`, `top-p 0.9` or `mean-max 0.1` (for tables and logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowThreshold::KeepAll => f.write_str("keep-all"),
            RowThreshold::MeanMax { rho } => write!(f, "mean-max {rho}"),
            RowThreshold::TopK { keep, min: 1 } => write!(f, "top-k {keep}"),
            RowThreshold::TopK { keep, min } => write!(f, "top-k {keep} min {min}"),
            RowThreshold::TopP { mass } => write!(f, "top-p {mass}"),
        }
    }
}

impl RowThreshold {
    /// Top-k's floor `min` when this is top-k, else the default's (what a top-k derived from
    /// this policy, e.g. by a sweep over `keep`, uses).
    pub fn top_k_min(&self) -> usize {
        match self {
            RowThreshold::TopK { min, .. } => *min,
            _ => DEFAULT_MIN_KEEP,
        }
    }
}

/// Serde default of top-k's floor: files written before it existed keep one block at least.
fn one() -> usize {
    1
}

fn is_one(x: &usize) -> bool {
    *x == 1
}

/// Top-k's default fraction of each block-row: measured with compensation (the default) on
/// every task (`hdp eval --task T --keep K --min-keep 4`, README "Default operating point"):
/// 0.25 prunes 73.7-75.0% of blocks at mean embedding cosine >= 0.991 to dense, within the
/// noise of every task metric; 0.3 pruned under 70%.
pub const DEFAULT_KEEP: f64 = 0.25;
/// Top-k's default floor (blocks per block-row): 4 lifted the worst Rotten Tomatoes snippet's
/// embedding cosine from 0.917 ("An absorbing documentary.", 5 tokens, of which 2 were kept)
/// to 0.985 for 0.1 point of sparsity.
pub const DEFAULT_MIN_KEEP: usize = 4;

impl Default for RowThreshold {
    /// Top-k keeping 25% of each block-row, at least 4 blocks (the default operating point).
    fn default() -> Self {
        RowThreshold::TopK {
            keep: DEFAULT_KEEP,
            min: DEFAULT_MIN_KEEP,
        }
    }
}

/// How a head's importance is computed from integer information (step 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum HeadImportance {
    /// Sum of the importances of the blocks kept by step 4 (hdp.md's default).
    KeptSum,
    /// Sum of the positive parts of kept-block importances: never negative, so a threshold
    /// relative to the layer's max stays meaningful; the variant measured in hdp.md.
    #[default]
    KeptPosSum,
    /// Sum of the importances of all valid blocks.
    AllSum,
    /// Peakedness: mean over block-rows of (max - mean) block importance.
    Peakedness,
    /// Kept mass: mean over block-rows of the softmax mass the kept blocks hold, estimated
    /// from the integer scores (`1 - m` of compensation's pruned mass `m`, top-p's integer
    /// weights). A head whose rows keep little of their mass attends broadly: its output is
    /// near the mean of V (pair with `--pruned-head-output mean-v`).
    KeptMass,
}

named_options!(HeadImportance, "head-importance", {
    "kept-sum" => KeptSum, "kept-pos-sum" => KeptPosSum, "all-sum" => AllSum, "peakedness" => Peakedness, "kept-mass" => KeptMass
});

/// Early head pruning policy (step 5).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum HeadPruning {
    /// Every head survives.
    #[default]
    Off,
    /// Prune heads with importance `< tau * max` over the layer's heads (same sequence).
    Tau {
        /// In `[0, 1]`.
        tau: f64,
    },
    /// Keep only the `heads` most important heads.
    TopK {
        /// At least 1.
        heads: usize,
    },
}

/// What a pruned head outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum PrunedHeadOutput {
    /// Zeros.
    #[default]
    Zero,
    /// The mean of V over valid tokens (what uniform attention would give).
    MeanV,
}

named_options!(PrunedHeadOutput, "pruned-head-output", { "zero" => Zero, "mean-v" => MeanV });

/// What happens to the softmax mass of pruned entries (hdp.md step 7's option).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Compensation {
    /// Dropped: the kept entries' softmax is renormalized over them alone (what a file
    /// written before compensation existed ran with, hence serde's default).
    #[default]
    Off,
    /// `mean-v` with one-entry blocks (b = 1), `off` with larger blocks: a block's importance
    /// (a sum or a maximum of its entries) does not estimate its softmax mass, and mean-v at
    /// b = 8-16 measured worse than no compensation (README, "Compensation"). The default.
    Auto,
    /// Given to the mean of the pruned keys' values: each block-row's pruned mass `m` is
    /// estimated from the integer scores alone (the top-p weights), and a query row's output
    /// is `(1 - m) softmax_kept . V + m mean(V of its pruned valid keys)`. One d-vector per
    /// row on top of the sparse P.V (the mean comes from the sum of all valid V).
    MeanV,
}

named_options!(Compensation, "compensate", { "off" => Off, "auto" => Auto, "mean-v" => MeanV });

/// Largest block size accepted: far beyond any useful block (a block is a tile of the N x N
/// score matrix) and small enough that every size derived from it stays far from overflow.
pub const MAX_BLOCK_SIZE: usize = 1 << 16;

/// Largest `keep_sink` or `keep_local` accepted (keys): far beyond any sequence the budget
/// allows, small enough that block arithmetic on it cannot overflow.
pub const MAX_FORCED_KEYS: usize = 1 << 32;

/// All HDP options.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HdpConfig {
    /// Fixed-point format of Q and K.
    pub q_format: QFormat,
    /// Power-of-two pre-scale policy.
    pub prescale: Prescale,
    /// Block size b (>= 1); edge blocks may be smaller.
    pub block_size: usize,
    /// Block importance reduction.
    pub importance: BlockImportance,
    /// Row-balanced pruning policy.
    pub threshold: RowThreshold,
    /// Head importance measure.
    pub head_importance: HeadImportance,
    /// Early head pruning policy.
    pub head_pruning: HeadPruning,
    /// Output of pruned heads.
    pub pruned_head_output: PrunedHeadOutput,
    /// How surviving scores are computed.
    pub score_mode: ScoreMode,
    /// Precision of P.V's operands.
    pub pv: PvPrecision,
    /// Rank with the centred integer estimate `(2 Q_int + 1).(2 K_int + 1)` instead of
    /// `Q_int.K_int` (step 4): the floor split biases every integer part down by half a unit
    /// on average, a key-dependent error of the estimate; the odd operands remove it for one
    /// more bit per operand (hdp.md measured +0.001-0.002 embedding cosine).
    pub centred: bool,
    /// Always keep the blocks holding the first `keep_sink` keys (attention sinks: [CLS], the
    /// first tokens); counted as kept.
    pub keep_sink: usize,
    /// Always keep the blocks holding entries within `keep_local` of the diagonal
    /// (`|i - j| < keep_local`); counted as kept.
    pub keep_local: usize,
    /// Pruned-mass compensation (step 7's option). Traces and calibration files written
    /// before it existed ran without it: a missing field reads as `off` (not the default).
    #[serde(default)]
    pub compensate: Compensation,
}

impl Default for HdpConfig {
    /// The operating point chosen by our sweep on Rotten Tomatoes (README, "Default operating
    /// point"): 8-bit Q/K with 3 fractional bits, run-time pre-scale, b = 1, sum importance,
    /// row-balanced top-k keeping 25% of each block-row and at least 4 blocks, no head pruning
    /// (issue #16's measured front; 30% and no floor until 2026-12-03); on the kept side
    /// exact int8 scores and bf16 P.V operands (the CPU's fastest, measured at least as
    /// accurate as the approximation with f32 P.V), and the pruned entries' estimated mass
    /// given to the mean of their V (compensation: embedding cosine to dense 0.969 -> 0.994 on
    /// 512-token text at the same decisions, +6% end-to-end time at one thread). Measured:
    /// 73.7% block sparsity on Rotten Tomatoes, 75.0% on Brown (README's table gives the
    /// metrics).
    fn default() -> Self {
        HdpConfig {
            q_format: QFormat {
                bits: 8,
                frac_bits: 3,
            },
            prescale: Prescale::default(),
            block_size: 1,
            importance: BlockImportance::default(),
            threshold: RowThreshold::default(),
            head_importance: HeadImportance::default(),
            head_pruning: HeadPruning::default(),
            pruned_head_output: PrunedHeadOutput::default(),
            score_mode: ScoreMode::default(),
            pv: PvPrecision::default(),
            centred: false,
            keep_sink: 0,
            keep_local: 0,
            compensate: Compensation::Auto,
        }
    }
}

impl HdpConfig {
    /// Whether pruned-mass compensation applies ([`Compensation`]; `auto` = at b = 1).
    pub fn compensates(&self) -> bool {
        match self.compensate {
            Compensation::Off => false,
            Compensation::MeanV => true,
            Compensation::Auto => self.block_size == 1,
        }
    }

    /// No pruning at all (every valid block, every head), other options as given.
    pub fn no_pruning(self) -> Self {
        HdpConfig {
            threshold: RowThreshold::KeepAll,
            head_pruning: HeadPruning::Off,
            ..self
        }
    }

    /// Checks every option's range and returns the configuration as a [`ValidConfig`]; errors
    /// name the option and the allowed range.
    pub fn validated(self) -> Result<ValidConfig> {
        self.validate()?;
        Ok(ValidConfig(self))
    }

    /// Checks every option's range; errors name the option and the allowed range.
    pub fn validate(&self) -> Result<()> {
        self.q_format.validate()?;
        if !(1..=MAX_BLOCK_SIZE).contains(&self.block_size) {
            return Err(Error::InvalidOption {
                name: "block-size",
                value: self.block_size.to_string(),
                expected: format!("an integer in 1..={MAX_BLOCK_SIZE}"),
            });
        }
        let unit = |name, x: f64, lo_open: bool| {
            let ok = x.is_finite() && x <= 1.0 && if lo_open { x > 0.0 } else { x >= 0.0 };
            if ok {
                Ok(())
            } else {
                Err(Error::InvalidOption {
                    name,
                    value: x.to_string(),
                    expected: if lo_open {
                        "a number in (0, 1]"
                    } else {
                        "a number in [0, 1]"
                    }
                    .into(),
                })
            }
        };
        match self.threshold {
            RowThreshold::KeepAll => {}
            RowThreshold::MeanMax { rho } => unit("rho", rho, false)?,
            RowThreshold::TopK { keep, min } => {
                unit("keep", keep, true)?;
                if min == 0 || min > MAX_BLOCK_SIZE {
                    return Err(Error::InvalidOption {
                        name: "min_keep",
                        value: min.to_string(),
                        expected: format!("a block count in 1..={MAX_BLOCK_SIZE}"),
                    });
                }
            }
            RowThreshold::TopP { mass } => unit("top-p", mass, true)?,
        }
        match self.head_pruning {
            HeadPruning::Off => {}
            HeadPruning::Tau { tau } => unit("tau", tau, false)?,
            HeadPruning::TopK { heads: 0 } => {
                return Err(Error::InvalidOption {
                    name: "head-top-k",
                    value: "0".into(),
                    expected: "at least 1 head (a layer always keeps one)".into(),
                })
            }
            HeadPruning::TopK { .. } => {}
        }
        for (name, v) in [
            ("keep-sink", self.keep_sink),
            ("keep-local", self.keep_local),
        ] {
            if v > MAX_FORCED_KEYS {
                return Err(Error::InvalidOption {
                    name,
                    value: v.to_string(),
                    expected: format!("a number of keys in 0..={MAX_FORCED_KEYS}"),
                });
            }
        }
        if let Prescale::Fixed { q_exp, k_exp } = self.prescale {
            let m = crate::fixed::MAX_PRESCALE_EXP;
            for (name, e) in [("q-prescale-exp", q_exp), ("k-prescale-exp", k_exp)] {
                if e.abs() > m {
                    return Err(Error::InvalidOption {
                        name,
                        value: e.to_string(),
                        expected: format!("an exponent in -{m}..={m}"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// An [`HdpConfig`] whose every option is in range: the only form the kernels accept, so they
/// never re-check. Built by [`HdpConfig::validated`]; deserializing one validates it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HdpConfig", into = "HdpConfig")]
pub struct ValidConfig(HdpConfig);

impl ValidConfig {
    /// The options.
    pub fn get(&self) -> &HdpConfig {
        &self.0
    }
}

impl Default for ValidConfig {
    /// [`HdpConfig::default`], which is valid (tested).
    fn default() -> Self {
        ValidConfig(HdpConfig::default())
    }
}

impl std::ops::Deref for ValidConfig {
    type Target = HdpConfig;
    fn deref(&self) -> &HdpConfig {
        &self.0
    }
}

impl TryFrom<HdpConfig> for ValidConfig {
    type Error = Error;
    fn try_from(c: HdpConfig) -> Result<Self> {
        c.validated()
    }
}

impl From<ValidConfig> for HdpConfig {
    fn from(c: ValidConfig) -> Self {
        c.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_round_trips() {
        let c = HdpConfig::default();
        c.validate().unwrap();
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<HdpConfig>(&s).unwrap(), c);
    }

    #[test]
    fn nonsense_options_are_rejected_with_names() {
        let bad = [
            HdpConfig {
                block_size: 0,
                ..Default::default()
            },
            HdpConfig {
                threshold: RowThreshold::MeanMax { rho: 1.5 },
                ..Default::default()
            },
            HdpConfig {
                threshold: RowThreshold::MeanMax { rho: f64::NAN },
                ..Default::default()
            },
            HdpConfig {
                threshold: RowThreshold::TopK { keep: 0.0, min: 1 },
                ..Default::default()
            },
            HdpConfig {
                head_pruning: HeadPruning::Tau { tau: -0.1 },
                ..Default::default()
            },
            HdpConfig {
                head_pruning: HeadPruning::TopK { heads: 0 },
                ..Default::default()
            },
            HdpConfig {
                q_format: QFormat {
                    bits: 20,
                    frac_bits: 4,
                },
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
            let json = serde_json::to_string(&c).unwrap();
            assert!(
                serde_json::from_str::<ValidConfig>(&json).is_err(),
                "{json}"
            );
        }
    }

    #[test]
    fn top_k_floor_defaults_to_one_in_older_files_and_is_validated() {
        // A file written before the floor existed reads as min 1, and min 1 is not written,
        // so older traces and calibration files keep their exact text.
        let old: RowThreshold = serde_json::from_str(r#"{"kind":"top-k","keep":0.3}"#).unwrap();
        assert_eq!(old, RowThreshold::TopK { keep: 0.3, min: 1 });
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"kind":"top-k","keep":0.3}"#
        );
        let floor = RowThreshold::TopK { keep: 0.3, min: 4 };
        let text = serde_json::to_string(&floor).unwrap();
        assert_eq!(text, r#"{"kind":"top-k","keep":0.3,"min":4}"#);
        assert_eq!(serde_json::from_str::<RowThreshold>(&text).unwrap(), floor);
        assert_eq!(floor.to_string(), "top-k 0.3 min 4");
        for min in [0, MAX_BLOCK_SIZE + 1] {
            let c = HdpConfig {
                threshold: RowThreshold::TopK { keep: 0.3, min },
                ..Default::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("min_keep"), "{e}");
        }
    }

    #[test]
    fn huge_block_size_is_rejected() {
        let c = HdpConfig {
            block_size: usize::MAX,
            ..Default::default()
        };
        let e = c.validated().unwrap_err().to_string();
        assert!(e.contains("block-size"), "{e}");
    }

    #[test]
    fn option_names_round_trip_through_from_str_and_serde() {
        fn check<T>(all: &[T])
        where
            T: FromStr<Err = Error> + fmt::Display + Serialize + PartialEq + fmt::Debug + Copy,
        {
            for &v in all {
                assert_eq!(v.to_string().parse::<T>().unwrap(), v);
                assert_eq!(serde_json::to_value(v).unwrap(), v.to_string().as_str());
            }
        }
        check(ScoreMode::ALL);
        check(BlockImportance::ALL);
        check(HeadImportance::ALL);
        check(PrunedHeadOutput::ALL);
        check(PvPrecision::ALL);
        for p in [
            Prescale::RunTime,
            Prescale::None,
            Prescale::Fixed {
                q_exp: -3,
                k_exp: 2,
            },
        ] {
            assert_eq!(p.to_string().parse::<Prescale>().unwrap(), p);
        }
        let e = "sideways".parse::<ScoreMode>().unwrap_err().to_string();
        assert!(e.contains("approx, exact, float"), "{e}");
        assert!("fixed:1".parse::<Prescale>().is_err());
    }

    #[test]
    fn bf16_round_keeps_8_significant_bits_ties_to_even() {
        // Exactly representable values are unchanged.
        for x in [0.0f32, 1.0, -2.5, 0.75, 384.0, -0.0078125] {
            assert_eq!(bf16_round(x), x);
        }
        // 1 + 2^-8 is half an ulp of bf16 at 1 (ulp 2^-7): ties to the even neighbour 1.
        assert_eq!(bf16_round(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3 * 2^-8 is a tie between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
        assert_eq!(bf16_round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        // Just above a tie rounds up.
        assert_eq!(
            bf16_round(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        // Relative error at most the unit roundoff 2^-8 over a sweep of magnitudes and signs,
        // including the worst case just below a tie above a power of two.
        let mut x = 1.0e-30f32;
        while x < 1.0e30 {
            let pow2 = f32::from_bits(x.to_bits() & 0xff80_0000);
            let worst = pow2 * (1.0 + 2f32.powi(-8) - 2f32.powi(-20));
            assert_eq!(bf16_round(worst), pow2);
            for y in [x, -x, x * 1.37, -x * 1.9, worst] {
                let r = bf16_round(y);
                assert!(((r - y) / y).abs() <= 2f32.powi(-8), "{y} -> {r}");
                assert_eq!(r.to_bits() & 0xffff, 0);
            }
            x *= 3.1;
        }
    }
}
