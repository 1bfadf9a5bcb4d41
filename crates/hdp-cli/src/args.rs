//! Command-line flags for every HDP option, shared by every subcommand that runs HDP attention.

use anyhow::Result;
use clap::{Args, ValueEnum};
use hdp_attention::{
    BlockImportance, HdpConfig, HeadImportance, HeadPruning, Prescale, PrunedHeadOutput,
    RowThreshold,
};
use hdp_core::{QFormat, ScoreMode};

/// Pre-scale policy as a flag value.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PrescaleArg {
    /// From each sequence's own max |Q|, |K| (fills the code range).
    RunTime,
    /// Fixed exponents from --q-prescale-exp / --k-prescale-exp.
    Fixed,
    /// No pre-scale.
    None,
}

/// Block importance as a flag value.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ImportanceArg {
    /// Sum of integer scores.
    Sum,
    /// Max integer score.
    Max,
    /// Sum of absolute integer scores.
    AbsSum,
}

/// Head importance as a flag value.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum HeadImportanceArg {
    /// Sum of kept-block importances.
    KeptSum,
    /// Sum of positive parts of kept-block importances.
    KeptPosSum,
    /// Sum over all valid blocks.
    AllSum,
    /// Mean over block-rows of (max - mean).
    Peakedness,
}

/// Score mode as a flag value.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScoreArg {
    /// Drop Q_frac.K_frac (HDP's approximation).
    Approx,
    /// Keep every partial product.
    Exact,
    /// Float scores for surviving blocks.
    Float,
}

/// Pruned-head output as a flag value.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PrunedOutputArg {
    /// Zeros.
    Zero,
    /// Mean of V.
    MeanV,
}

/// Every HDP knob. Defaults are the library defaults (`HdpConfig::default()`).
#[derive(Args, Debug, Clone)]
pub struct HdpArgs {
    /// Fixed-point width of Q and K (4..=16).
    #[arg(long, default_value_t = 8)]
    pub bits: u32,
    /// Fractional bits of Q and K (< bits).
    #[arg(long, default_value_t = 3)]
    pub frac_bits: u32,
    /// Power-of-two pre-scale before quantization.
    #[arg(long, value_enum, default_value = "run-time")]
    pub prescale: PrescaleArg,
    /// Pre-scale exponent of Q with --prescale fixed.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub q_prescale_exp: i32,
    /// Pre-scale exponent of K with --prescale fixed.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub k_prescale_exp: i32,
    /// Block size b (>= 1).
    #[arg(long, short = 'b', default_value_t = 1)]
    pub block_size: usize,
    /// Block importance reduction.
    #[arg(long, value_enum, default_value = "sum")]
    pub importance: ImportanceArg,
    /// Mean-max threshold: keep blocks >= mean + rho (max - mean) per block-row, rho in [0, 1]
    /// (default policy: top-k with --keep 0.3).
    #[arg(long, conflicts_with_all = ["keep", "no_block_pruning"], allow_hyphen_values = true)]
    pub rho: Option<f64>,
    /// Top-k threshold: keep ceil(keep x blocks) per block-row, keep in (0, 1] [default 0.3].
    #[arg(long, conflicts_with = "no_block_pruning", allow_hyphen_values = true)]
    pub keep: Option<f64>,
    /// Keep every valid block (no block pruning).
    #[arg(long)]
    pub no_block_pruning: bool,
    /// Early head pruning: prune heads below tau x the layer's max importance, tau in [0, 1].
    #[arg(long, conflicts_with = "head_top_k", allow_hyphen_values = true)]
    pub tau: Option<f64>,
    /// Early head pruning: keep only this many heads per layer.
    #[arg(long)]
    pub head_top_k: Option<usize>,
    /// Head importance measure.
    #[arg(long, value_enum, default_value = "kept-pos-sum")]
    pub head_importance: HeadImportanceArg,
    /// Output of pruned heads.
    #[arg(long, value_enum, default_value = "zero")]
    pub pruned_head_output: PrunedOutputArg,
    /// Scores of surviving blocks.
    #[arg(long, value_enum, default_value = "approx")]
    pub score: ScoreArg,
}

impl HdpArgs {
    /// The validated configuration these flags describe.
    pub fn config(&self) -> Result<HdpConfig> {
        let cfg = HdpConfig {
            q_format: QFormat::new(self.bits, self.frac_bits)?,
            prescale: match self.prescale {
                PrescaleArg::RunTime => Prescale::RunTime,
                PrescaleArg::None => Prescale::None,
                PrescaleArg::Fixed => Prescale::Fixed {
                    q_exp: self.q_prescale_exp,
                    k_exp: self.k_prescale_exp,
                },
            },
            block_size: self.block_size,
            importance: match self.importance {
                ImportanceArg::Sum => BlockImportance::Sum,
                ImportanceArg::Max => BlockImportance::Max,
                ImportanceArg::AbsSum => BlockImportance::AbsSum,
            },
            threshold: match (self.no_block_pruning, self.rho, self.keep) {
                (true, _, _) => RowThreshold::KeepAll,
                (_, Some(rho), _) => RowThreshold::MeanMax { rho },
                (_, _, Some(keep)) => RowThreshold::TopK { keep },
                _ => RowThreshold::default(),
            },
            head_importance: match self.head_importance {
                HeadImportanceArg::KeptSum => HeadImportance::KeptSum,
                HeadImportanceArg::KeptPosSum => HeadImportance::KeptPosSum,
                HeadImportanceArg::AllSum => HeadImportance::AllSum,
                HeadImportanceArg::Peakedness => HeadImportance::Peakedness,
            },
            head_pruning: match (self.tau, self.head_top_k) {
                (Some(tau), _) => HeadPruning::Tau { tau },
                (_, Some(heads)) => HeadPruning::TopK { heads },
                _ => HeadPruning::Off,
            },
            pruned_head_output: match self.pruned_head_output {
                PrunedOutputArg::Zero => PrunedHeadOutput::Zero,
                PrunedOutputArg::MeanV => PrunedHeadOutput::MeanV,
            },
            score_mode: match self.score {
                ScoreArg::Approx => ScoreMode::Approx,
                ScoreArg::Exact => ScoreMode::Exact,
                ScoreArg::Float => ScoreMode::Float,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
