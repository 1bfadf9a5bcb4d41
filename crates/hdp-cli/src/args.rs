//! Command-line flags for every HDP option, shared by every subcommand that runs HDP attention.
//! The values are the library's own types (they parse themselves); a flag left out takes the
//! library default ([`HdpConfig::default`]), and [`HdpArgs::any_given`] tells whether the user
//! set any, so commands can refuse HDP options where they cannot apply.

use anyhow::{bail, Result};
use clap::Args;
use hdp_attention::{
    BlockImportance, HdpConfig, HeadImportance, HeadPruning, Prescale, PrunedHeadOutput,
    RowThreshold, ValidConfig,
};
use hdp_core::{PvPrecision, QFormat, ScoreMode};

/// Every HDP knob. Defaults (in brackets) are the library defaults.
#[derive(Args, Debug, Clone, Default)]
pub struct HdpArgs {
    /// Fixed-point width of Q and K, 4..=16 [8].
    #[arg(long)]
    pub bits: Option<u32>,
    /// Fractional bits of Q and K, < bits [3].
    #[arg(long)]
    pub frac_bits: Option<u32>,
    /// Power-of-two pre-scale before quantization: run-time, none, fixed (with
    /// --q-prescale-exp/--k-prescale-exp) or fixed:Q_EXP:K_EXP [run-time].
    #[arg(long)]
    pub prescale: Option<Prescale>,
    /// Pre-scale exponent of Q with --prescale fixed [0].
    #[arg(long, allow_hyphen_values = true)]
    pub q_prescale_exp: Option<i32>,
    /// Pre-scale exponent of K with --prescale fixed [0].
    #[arg(long, allow_hyphen_values = true)]
    pub k_prescale_exp: Option<i32>,
    /// Block size b, 1..=65536 [1].
    #[arg(long, short = 'b')]
    pub block_size: Option<usize>,
    /// Block importance reduction [sum].
    #[arg(long, value_enum)]
    pub importance: Option<BlockImportance>,
    /// Mean-max threshold: keep blocks >= mean + rho (max - mean) per block-row, rho in [0, 1]
    /// (default policy: top-k with --keep 0.3).
    #[arg(long, conflicts_with_all = ["keep", "no_block_pruning"], allow_hyphen_values = true)]
    pub rho: Option<f64>,
    /// Top-k threshold: keep ceil(keep x blocks) per block-row, keep in (0, 1] [0.3].
    #[arg(long, conflicts_with = "no_block_pruning", allow_hyphen_values = true)]
    pub keep: Option<f64>,
    /// Top-p threshold: keep the fewest blocks per block-row whose softmax mass, estimated
    /// from the integer scores, reaches this fraction, in (0, 1] (row-adaptive top-k).
    #[arg(long, conflicts_with_all = ["keep", "rho", "no_block_pruning"], allow_hyphen_values = true)]
    pub top_p: Option<f64>,
    /// Keep every valid block (no block pruning).
    #[arg(long)]
    pub no_block_pruning: bool,
    /// Early head pruning: prune heads below tau x the layer's max importance, tau in [0, 1].
    #[arg(long, conflicts_with = "head_top_k", allow_hyphen_values = true)]
    pub tau: Option<f64>,
    /// Early head pruning: keep only this many heads per layer.
    #[arg(long)]
    pub head_top_k: Option<usize>,
    /// Head importance measure [kept-pos-sum].
    #[arg(long, value_enum)]
    pub head_importance: Option<HeadImportance>,
    /// Output of pruned heads [zero].
    #[arg(long, value_enum)]
    pub pruned_head_output: Option<PrunedHeadOutput>,
    /// Scores of surviving blocks [exact] (approx: what the hardware computes).
    #[arg(long, value_enum)]
    pub score: Option<ScoreMode>,
    /// Precision of P.V's operands (probabilities and V) [bf16]; bf16 doubles P.V's rate on
    /// CPUs with AVX-512 BF16 (elsewhere the same numbers, at f32 speed).
    #[arg(long, value_enum)]
    pub pv: Option<PvPrecision>,
}

impl HdpArgs {
    /// Whether any HDP flag was given.
    pub fn any_given(&self) -> bool {
        let HdpArgs {
            bits,
            frac_bits,
            prescale,
            q_prescale_exp,
            k_prescale_exp,
            block_size,
            importance,
            rho,
            keep,
            top_p,
            no_block_pruning,
            tau,
            head_top_k,
            head_importance,
            pruned_head_output,
            score,
            pv,
        } = self;
        bits.is_some()
            || frac_bits.is_some()
            || prescale.is_some()
            || q_prescale_exp.is_some()
            || k_prescale_exp.is_some()
            || block_size.is_some()
            || importance.is_some()
            || rho.is_some()
            || keep.is_some()
            || top_p.is_some()
            || *no_block_pruning
            || tau.is_some()
            || head_top_k.is_some()
            || head_importance.is_some()
            || pruned_head_output.is_some()
            || score.is_some()
            || pv.is_some()
    }

    /// Errors when a block-row threshold flag was given to a run whose thresholds come from
    /// elsewhere (`why`: a calibration file, or `hdp calibrate` choosing them).
    pub fn refuse_threshold(&self, why: &str) -> Result<()> {
        if self.keep.is_some()
            || self.rho.is_some()
            || self.top_p.is_some()
            || self.no_block_pruning
        {
            bail!("{why}; drop --keep/--rho/--top-p/--no-block-pruning");
        }
        Ok(())
    }

    /// Errors when any HDP flag was given to a run that `why` cannot use them.
    pub fn refuse_if_given(&self, why: &str) -> Result<()> {
        if self.any_given() {
            bail!("HDP options were given but {why}; drop them or use HDP attention");
        }
        Ok(())
    }

    /// The validated configuration these flags describe.
    pub fn config(&self) -> Result<ValidConfig> {
        let d = HdpConfig::default();
        let exps_given = self.q_prescale_exp.is_some() || self.k_prescale_exp.is_some();
        let prescale = match self.prescale.unwrap_or(d.prescale) {
            Prescale::Fixed { q_exp, k_exp } => Prescale::Fixed {
                q_exp: self.q_prescale_exp.unwrap_or(q_exp),
                k_exp: self.k_prescale_exp.unwrap_or(k_exp),
            },
            other if exps_given => bail!(
                "--q-prescale-exp/--k-prescale-exp need --prescale fixed (the pre-scale is {other})"
            ),
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
                (_, _, Some(keep), _) => RowThreshold::TopK { keep },
                (.., Some(mass)) => RowThreshold::TopP { mass },
                _ => d.threshold,
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
        };
        Ok(cfg.validated()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_is_the_library_default() {
        let a = HdpArgs::default();
        assert!(!a.any_given());
        assert_eq!(a.config().unwrap(), ValidConfig::default());
    }

    #[test]
    fn exponents_need_fixed_prescale() {
        let a = HdpArgs {
            q_prescale_exp: Some(2),
            ..Default::default()
        };
        assert!(a.config().is_err());
        let a = HdpArgs {
            prescale: Some(Prescale::Fixed { q_exp: 0, k_exp: 0 }),
            q_prescale_exp: Some(2),
            ..Default::default()
        };
        assert_eq!(
            a.config().unwrap().prescale,
            Prescale::Fixed { q_exp: 2, k_exp: 0 }
        );
    }
}
