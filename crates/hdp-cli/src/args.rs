//! Command-line flags for every HDP option, shared by every subcommand that runs HDP attention.
//! The values are the library's own types (they parse themselves); the flags map one to one
//! onto [`HdpOptions`], which fills in the library defaults and validates (the same code serves
//! Python's `hdp.Config`), and [`HdpArgs::any_given`] tells whether the user set any, so
//! commands can refuse HDP options where they cannot apply.

use anyhow::{bail, Result};
use clap::Args;
use hdp_attention::{BlockImportance, HeadImportance, Prescale, PrunedHeadOutput, ValidConfig};
use hdp_core::{HdpOptions, PvPrecision, ScoreMode};

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
    /// Rank with the centred integer estimate (2 Q_int + 1).(2 K_int + 1), one more bit per
    /// operand [off].
    #[arg(long)]
    pub centred: bool,
    /// Always keep the blocks of the first K keys (attention sinks such as [CLS]) [0].
    #[arg(long, value_name = "K")]
    pub keep_sink: Option<usize>,
    /// Always keep the blocks within W of the diagonal (|i - j| < W) [0].
    #[arg(long, value_name = "W")]
    pub keep_local: Option<usize>,
}

impl HdpArgs {
    /// The options these flags give, in the library's front-end form (shared with Python).
    pub fn options(&self) -> HdpOptions {
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
            centred,
            keep_sink,
            keep_local,
        } = self.clone();
        HdpOptions {
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
            centred,
            keep_sink,
            keep_local,
        }
    }

    /// Whether any HDP flag was given.
    pub fn any_given(&self) -> bool {
        self.options().any_given()
    }

    /// Errors when a block-row threshold flag was given to a run whose thresholds come from
    /// elsewhere (`why`: a calibration file, or `hdp calibrate` choosing them).
    pub fn refuse_threshold(&self, why: &str) -> Result<()> {
        if self.options().threshold_given() {
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

    /// The validated configuration these flags describe ([`HdpOptions::config`]).
    pub fn config(&self) -> Result<ValidConfig> {
        Ok(self.options().config()?)
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
