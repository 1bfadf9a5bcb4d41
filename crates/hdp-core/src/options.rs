//! The user-facing form of [`HdpConfig`]: one optional value per option, named as every front
//! end names it (the CLI's `--frac-bits` is `frac_bits` here and in Python's `hdp.Config`), and
//! the one place that turns such a set into a validated configuration, so the CLI and the
//! Python package accept, default and reject exactly the same things with the same messages.

use crate::config::{
    BlockImportance, Compensation, HdpConfig, HeadImportance, HeadPruning, Prescale,
    PrunedHeadOutput, PvPrecision, RowThreshold, ScoreMode, ValidConfig,
};
use crate::{Error, QFormat, Result};

/// Every HDP option, each `None` (or `false`) when not given; [`HdpOptions::config`] fills the
/// library defaults in. Field names are the option names (the CLI's flags with `-` for `_`);
/// with the `clap` feature this is the flag set every `hdp` subcommand flattens in.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct HdpOptions {
    /// Fixed-point width of Q and K, 4..=16 [8].
    #[cfg_attr(feature = "clap", arg(long))]
    pub bits: Option<u32>,
    /// Fractional bits of Q and K, < bits [3].
    #[cfg_attr(feature = "clap", arg(long))]
    pub frac_bits: Option<u32>,
    /// Power-of-two pre-scale before quantization: run-time, none, fixed (with
    /// --q-prescale-exp/--k-prescale-exp) or fixed:Q_EXP:K_EXP [run-time].
    #[cfg_attr(feature = "clap", arg(long))]
    pub prescale: Option<Prescale>,
    /// Pre-scale exponent of Q with --prescale fixed [0].
    #[cfg_attr(feature = "clap", arg(long, allow_hyphen_values = true))]
    pub q_prescale_exp: Option<i32>,
    /// Pre-scale exponent of K with --prescale fixed [0].
    #[cfg_attr(feature = "clap", arg(long, allow_hyphen_values = true))]
    pub k_prescale_exp: Option<i32>,
    /// Block size b, 1..=65536 [1].
    #[cfg_attr(feature = "clap", arg(long, short = 'b'))]
    pub block_size: Option<usize>,
    /// Block importance reduction [sum].
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub importance: Option<BlockImportance>,
    /// Mean-max threshold: keep blocks >= mean + rho (max - mean) per block-row, rho in [0, 1]
    /// (default policy: top-k with --keep 0.25 --min-keep 4).
    #[cfg_attr(feature = "clap", arg(long, conflicts_with_all = ["keep", "no_block_pruning"], allow_hyphen_values = true))]
    pub rho: Option<f64>,
    /// Top-k threshold: keep ceil(keep x blocks) per block-row, keep in (0, 1] [0.25].
    #[cfg_attr(
        feature = "clap",
        arg(long, conflicts_with = "no_block_pruning", allow_hyphen_values = true)
    )]
    pub keep: Option<f64>,
    /// Top-k's floor: every block-row keeps at least this many blocks (all when fewer are
    /// valid) [4].
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "K", conflicts_with_all = ["rho", "top_p", "no_block_pruning"])
    )]
    pub min_keep: Option<usize>,
    /// Top-p threshold: keep the fewest blocks per block-row whose softmax mass, estimated
    /// from the integer scores, reaches this fraction, in (0, 1] (row-adaptive top-k).
    #[cfg_attr(feature = "clap", arg(long, conflicts_with_all = ["keep", "rho", "no_block_pruning"], allow_hyphen_values = true))]
    pub top_p: Option<f64>,
    /// Keep every valid block (no block pruning).
    #[cfg_attr(feature = "clap", arg(long))]
    pub no_block_pruning: bool,
    /// Early head pruning: prune heads below tau x the layer's max importance, tau in [0, 1].
    #[cfg_attr(
        feature = "clap",
        arg(long, conflicts_with = "head_top_k", allow_hyphen_values = true)
    )]
    pub tau: Option<f64>,
    /// Early head pruning: keep only this many heads per layer.
    #[cfg_attr(feature = "clap", arg(long))]
    pub head_top_k: Option<usize>,
    /// Head importance measure [kept-pos-sum].
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub head_importance: Option<HeadImportance>,
    /// Output of pruned heads [zero].
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub pruned_head_output: Option<PrunedHeadOutput>,
    /// Scores of surviving blocks [exact] (approx: what the hardware computes).
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub score: Option<ScoreMode>,
    /// Precision of P.V's operands (probabilities and V) [bf16]; bf16 doubles P.V's rate on
    /// CPUs with AVX-512 BF16 (elsewhere the same numbers, at f32 speed).
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub pv: Option<PvPrecision>,
    /// Rank with the centred integer estimate (2 Q_int + 1).(2 K_int + 1), one more bit per
    /// operand [off].
    #[cfg_attr(feature = "clap", arg(long))]
    pub centred: bool,
    /// Always keep the blocks of the first K keys (attention sinks such as [CLS]) [0].
    #[cfg_attr(feature = "clap", arg(long, value_name = "K"))]
    pub keep_sink: Option<usize>,
    /// Always keep the blocks within W of the diagonal (|i - j| < W) [0].
    #[cfg_attr(feature = "clap", arg(long, value_name = "W"))]
    pub keep_local: Option<usize>,
    /// Pruned-mass compensation: off, mean-v (the pruned entries' softmax mass, estimated
    /// from the integer scores, goes to the mean of their values), or auto (mean-v at b = 1,
    /// off with larger blocks) [auto].
    #[cfg_attr(feature = "clap", arg(long, value_enum))]
    pub compensate: Option<Compensation>,
}

/// The value of a given option ([`HdpOptions::given`]).
#[derive(Clone, Debug, PartialEq)]
pub enum GivenValue {
    /// A count, width or exponent.
    Int(i64),
    /// A fraction.
    Float(f64),
    /// A switch (only `true` is ever given).
    Bool(bool),
    /// A named option value (`approx`, `fixed:1:2`, ...).
    Text(String),
}

impl HdpOptions {
    /// Every option name, in declaration order.
    pub const NAMES: &'static [&'static str] = &[
        "bits",
        "frac_bits",
        "prescale",
        "q_prescale_exp",
        "k_prescale_exp",
        "block_size",
        "importance",
        "rho",
        "keep",
        "min_keep",
        "top_p",
        "no_block_pruning",
        "tau",
        "head_top_k",
        "head_importance",
        "pruned_head_output",
        "score",
        "pv",
        "centred",
        "keep_sink",
        "keep_local",
        "compensate",
    ];

    /// The options given, by name, in [`HdpOptions::NAMES`] order (for messages and reprs).
    pub fn given(&self) -> Vec<(&'static str, GivenValue)> {
        use GivenValue::{Bool, Float, Int, Text};
        let int = |v: Option<usize>| v.map(|x| Int(x as i64));
        let text = |v: Option<String>| v.map(Text);
        let all: [(&'static str, Option<GivenValue>); 22] = [
            ("bits", self.bits.map(|x| Int(x as i64))),
            ("frac_bits", self.frac_bits.map(|x| Int(x as i64))),
            ("prescale", text(self.prescale.map(|x| x.to_string()))),
            ("q_prescale_exp", self.q_prescale_exp.map(|x| Int(x as i64))),
            ("k_prescale_exp", self.k_prescale_exp.map(|x| Int(x as i64))),
            ("block_size", int(self.block_size)),
            ("importance", text(self.importance.map(|x| x.to_string()))),
            ("rho", self.rho.map(Float)),
            ("keep", self.keep.map(Float)),
            ("min_keep", int(self.min_keep)),
            ("top_p", self.top_p.map(Float)),
            (
                "no_block_pruning",
                self.no_block_pruning.then_some(Bool(true)),
            ),
            ("tau", self.tau.map(Float)),
            ("head_top_k", int(self.head_top_k)),
            (
                "head_importance",
                text(self.head_importance.map(|x| x.to_string())),
            ),
            (
                "pruned_head_output",
                text(self.pruned_head_output.map(|x| x.to_string())),
            ),
            ("score", text(self.score.map(|x| x.to_string()))),
            ("pv", text(self.pv.map(|x| x.to_string()))),
            ("centred", self.centred.then_some(Bool(true))),
            ("keep_sink", int(self.keep_sink)),
            ("keep_local", int(self.keep_local)),
            ("compensate", text(self.compensate.map(|x| x.to_string()))),
        ];
        all.into_iter().filter_map(|(k, v)| Some((k, v?))).collect()
    }

    /// Whether any option was given.
    pub fn any_given(&self) -> bool {
        *self != HdpOptions::default()
    }

    /// Whether a block-row threshold option (rho, keep, min_keep, top_p, no_block_pruning) was
    /// given.
    pub fn threshold_given(&self) -> bool {
        self.rho.is_some()
            || self.keep.is_some()
            || self.min_keep.is_some()
            || self.top_p.is_some()
            || self.no_block_pruning
    }

    /// The validated configuration these options describe: defaults for what is not given,
    /// an error naming the options when two exclude each other or a value is out of range.
    pub fn config(&self) -> Result<ValidConfig> {
        let d = HdpConfig::default();
        let conflict = |given: &[(&'static str, bool)]| -> Result<()> {
            let named: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
            if named.len() > 1 {
                return Err(Error::InvalidOption {
                    name: named[1],
                    value: format!("(given with {})", named[0]),
                    expected: format!(
                        "at most one of {}",
                        given.iter().map(|g| g.0).collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            Ok(())
        };
        conflict(&[
            ("no_block_pruning", self.no_block_pruning),
            ("rho", self.rho.is_some()),
            ("keep", self.keep.is_some()),
            ("top_p", self.top_p.is_some()),
        ])?;
        if let Some(k) = self.min_keep {
            if self.no_block_pruning || self.rho.is_some() || self.top_p.is_some() {
                return Err(Error::InvalidOption {
                    name: "min_keep",
                    value: k.to_string(),
                    expected: "min_keep only with top-k (keep, or the default policy), not with \
                               rho, top_p or no_block_pruning"
                        .into(),
                });
            }
        }
        conflict(&[
            ("tau", self.tau.is_some()),
            ("head_top_k", self.head_top_k.is_some()),
        ])?;
        let exps_given = self.q_prescale_exp.is_some() || self.k_prescale_exp.is_some();
        let prescale = match self.prescale.unwrap_or(d.prescale) {
            Prescale::Fixed { q_exp, k_exp } => Prescale::Fixed {
                q_exp: self.q_prescale_exp.unwrap_or(q_exp),
                k_exp: self.k_prescale_exp.unwrap_or(k_exp),
            },
            other if exps_given => {
                return Err(Error::InvalidOption {
                    name: "q_prescale_exp",
                    value: format!("(given with the pre-scale {other})"),
                    expected: "the pre-scale exponents only with prescale fixed".into(),
                })
            }
            other => other,
        };
        let cfg = HdpConfig {
            q_format: QFormat::new(
                self.bits.unwrap_or(d.q_format.bits),
                self.frac_bits.unwrap_or(d.q_format.frac_bits),
            )?,
            prescale,
            block_size: self.block_size.unwrap_or(d.block_size),
            importance: self.importance.unwrap_or(d.importance),
            threshold: match (self.no_block_pruning, self.rho, self.keep, self.top_p) {
                (true, ..) => RowThreshold::KeepAll,
                (_, Some(rho), ..) => RowThreshold::MeanMax { rho },
                (_, _, Some(keep), _) => RowThreshold::TopK {
                    keep,
                    min: self.min_keep.unwrap_or(d.threshold.top_k_min()),
                },
                (.., Some(mass)) => RowThreshold::TopP { mass },
                _ => match d.threshold {
                    RowThreshold::TopK { keep, min } => RowThreshold::TopK {
                        keep,
                        min: self.min_keep.unwrap_or(min),
                    },
                    other => other,
                },
            },
            head_importance: self.head_importance.unwrap_or(d.head_importance),
            head_pruning: match (self.tau, self.head_top_k) {
                (Some(tau), _) => HeadPruning::Tau { tau },
                (_, Some(heads)) => HeadPruning::TopK { heads },
                _ => d.head_pruning,
            },
            pruned_head_output: self.pruned_head_output.unwrap_or(d.pruned_head_output),
            score_mode: self.score.unwrap_or(d.score_mode),
            pv: self.pv.unwrap_or(d.pv),
            centred: self.centred || d.centred,
            keep_sink: self.keep_sink.unwrap_or(d.keep_sink),
            keep_local: self.keep_local.unwrap_or(d.keep_local),
            compensate: self.compensate.unwrap_or(d.compensate),
        };
        cfg.validated()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_given_is_the_library_default() {
        let o = HdpOptions::default();
        assert!(!o.any_given() && !o.threshold_given());
        assert_eq!(o.config().unwrap(), ValidConfig::default());
    }

    #[test]
    fn exclusive_options_are_refused_by_name() {
        let o = HdpOptions {
            keep: Some(0.2),
            top_p: Some(0.9),
            ..Default::default()
        };
        let e = o.config().unwrap_err().to_string();
        assert!(e.contains("top_p") && e.contains("keep"), "{e}");
        let o = HdpOptions {
            tau: Some(0.2),
            head_top_k: Some(3),
            ..Default::default()
        };
        assert!(o.config().unwrap_err().to_string().contains("head_top_k"));
        let o = HdpOptions {
            min_keep: Some(4),
            top_p: Some(0.9),
            ..Default::default()
        };
        let e = o.config().unwrap_err().to_string();
        assert!(e.contains("min_keep") && e.contains("top-k"), "{e}");
    }

    #[test]
    fn min_keep_applies_to_the_given_or_the_default_keep() {
        let floor = |o: HdpOptions| match o.config().unwrap().get().threshold {
            RowThreshold::TopK { keep, min } => (keep, min),
            other => panic!("{other}"),
        };
        let d = crate::config::DEFAULT_KEEP;
        let with = |keep, min_keep| HdpOptions {
            keep,
            min_keep,
            ..Default::default()
        };
        assert_eq!(floor(with(None, Some(6))), (d, 6));
        assert_eq!(floor(with(Some(0.2), Some(6))), (0.2, 6));
        let dm = crate::config::DEFAULT_MIN_KEEP;
        assert_eq!(floor(with(Some(0.2), None)), (0.2, dm));
        assert!(with(None, Some(6)).threshold_given());
    }

    #[test]
    fn given_lists_every_option_once_by_its_name() {
        let o = HdpOptions {
            top_p: Some(0.9),
            centred: true,
            keep_sink: Some(1),
            score: Some(ScoreMode::Approx),
            ..Default::default()
        };
        assert_eq!(
            o.given(),
            vec![
                ("top_p", GivenValue::Float(0.9)),
                ("score", GivenValue::Text("approx".into())),
                ("centred", GivenValue::Bool(true)),
                ("keep_sink", GivenValue::Int(1)),
            ]
        );
        assert!(HdpOptions::default().given().is_empty());
        // The list of names and the fields agree (same order, nothing missing).
        let all = HdpOptions {
            bits: Some(8),
            frac_bits: Some(3),
            prescale: Some(Prescale::None),
            q_prescale_exp: Some(0),
            k_prescale_exp: Some(0),
            block_size: Some(1),
            importance: Some(BlockImportance::Sum),
            rho: Some(0.1),
            keep: Some(0.1),
            min_keep: Some(2),
            top_p: Some(0.1),
            no_block_pruning: true,
            tau: Some(0.1),
            head_top_k: Some(1),
            head_importance: Some(HeadImportance::KeptSum),
            pruned_head_output: Some(PrunedHeadOutput::Zero),
            score: Some(ScoreMode::Exact),
            pv: Some(PvPrecision::F32),
            centred: true,
            keep_sink: Some(1),
            keep_local: Some(1),
            compensate: Some(Compensation::MeanV),
        };
        let names: Vec<&str> = all.given().iter().map(|g| g.0).collect();
        assert_eq!(names, HdpOptions::NAMES);
    }

    #[test]
    fn exponents_need_fixed_prescale() {
        let o = HdpOptions {
            q_prescale_exp: Some(2),
            ..Default::default()
        };
        assert!(o.config().is_err());
        let o = HdpOptions {
            prescale: Some(Prescale::Fixed { q_exp: 0, k_exp: 0 }),
            q_prescale_exp: Some(2),
            ..Default::default()
        };
        assert_eq!(
            o.config().unwrap().prescale,
            Prescale::Fixed { q_exp: 2, k_exp: 0 }
        );
    }

    #[test]
    fn values_are_validated_and_mapped() {
        let o = HdpOptions {
            top_p: Some(0.9),
            block_size: Some(16),
            tau: Some(0.4),
            ..Default::default()
        };
        let c = o.config().unwrap();
        assert_eq!(c.threshold, RowThreshold::TopP { mass: 0.9 });
        assert_eq!(c.block_size, 16);
        assert_eq!(c.head_pruning, HeadPruning::Tau { tau: 0.4 });
        let o = HdpOptions {
            keep: Some(1.5),
            ..Default::default()
        };
        assert!(o.config().unwrap_err().to_string().contains("keep"));
    }
}
