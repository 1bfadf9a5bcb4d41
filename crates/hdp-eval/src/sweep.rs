//! The sweep grid: HDP configurations built on one base configuration, varying the options the
//! user lists. An option without a list keeps the base configuration's value, so
//! `hdp sweep --frac-bits 3 --keeps 0.2,0.3` varies only the keep fraction, at f = 3.

use hdp_attention::{HdpConfig, HeadPruning, RowThreshold, ValidConfig};
use hdp_core::{QFormat, Result, ScoreMode};

/// Lists of option values to vary; `None` (or an empty list) keeps the base value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SweepGrid {
    /// Mean-max thresholds (rho).
    pub rhos: Option<Vec<f64>>,
    /// Top-k keep fractions.
    pub keeps: Option<Vec<f64>>,
    /// Top-p masses.
    pub top_ps: Option<Vec<f64>>,
    /// Block sizes.
    pub block_sizes: Option<Vec<usize>>,
    /// Fixed-point formats.
    pub formats: Option<Vec<QFormat>>,
    /// Score modes.
    pub scores: Option<Vec<ScoreMode>>,
    /// Head-pruning tau values.
    pub taus: Option<Vec<f64>>,
}

fn or_base<T: Copy>(list: &Option<Vec<T>>, base: T) -> Vec<T> {
    match list {
        Some(v) if !v.is_empty() => v.clone(),
        _ => vec![base],
    }
}

impl SweepGrid {
    /// Every combination, in a fixed order (thresholds outermost), each validated. The
    /// thresholds are the listed rhos followed by the listed keeps; with neither listed, the
    /// base threshold.
    pub fn configs(&self, base: &ValidConfig) -> Result<Vec<ValidConfig>> {
        let mut thresholds: Vec<RowThreshold> = Vec::new();
        thresholds.extend(
            self.rhos
                .iter()
                .flatten()
                .map(|&rho| RowThreshold::MeanMax { rho }),
        );
        thresholds.extend(self.keeps.iter().flatten().map(|&keep| RowThreshold::TopK {
            keep,
            min: base.threshold.top_k_min(),
        }));
        thresholds.extend(
            self.top_ps
                .iter()
                .flatten()
                .map(|&mass| RowThreshold::TopP { mass }),
        );
        if thresholds.is_empty() {
            thresholds.push(base.threshold);
        }
        let heads: Vec<HeadPruning> = match &self.taus {
            Some(t) if !t.is_empty() => t.iter().map(|&tau| HeadPruning::Tau { tau }).collect(),
            _ => vec![base.head_pruning],
        };
        let mut out = Vec::new();
        for &threshold in &thresholds {
            for &block_size in &or_base(&self.block_sizes, base.block_size) {
                for &q_format in &or_base(&self.formats, base.q_format) {
                    for &score_mode in &or_base(&self.scores, base.score_mode) {
                        for &head_pruning in &heads {
                            out.push(
                                HdpConfig {
                                    threshold,
                                    block_size,
                                    q_format,
                                    score_mode,
                                    head_pruning,
                                    ..*base.get()
                                }
                                .validated()?,
                            );
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #11: list flags used to have defaults that overrode the base options (a sweep ran
    /// f = 4 while the base said f = 3).
    #[test]
    fn unlisted_options_keep_the_base_values() {
        let base = HdpConfig {
            q_format: QFormat::new(8, 3).unwrap(),
            block_size: 2,
            ..Default::default()
        }
        .validated()
        .unwrap();
        let grid = SweepGrid {
            keeps: Some(vec![0.2, 0.3]),
            ..Default::default()
        };
        let c = grid.configs(&base).unwrap();
        assert_eq!(c.len(), 2);
        for x in &c {
            assert_eq!(x.q_format, base.q_format);
            assert_eq!(x.block_size, 2);
            assert_eq!(x.score_mode, base.score_mode);
        }
        assert_eq!(SweepGrid::default().configs(&base).unwrap(), vec![base]);
    }

    #[test]
    fn full_grid_is_the_product_and_bad_values_are_errors() {
        let base = ValidConfig::default();
        let grid = SweepGrid {
            rhos: Some(vec![0.0, 0.1]),
            keeps: Some(vec![0.3]),
            top_ps: Some(vec![0.9]),
            block_sizes: Some(vec![1, 4]),
            formats: Some(vec![
                QFormat::new(8, 3).unwrap(),
                QFormat::new(8, 4).unwrap(),
            ]),
            scores: Some(vec![ScoreMode::Approx]),
            taus: Some(vec![0.1, 0.2]),
        };
        assert_eq!(grid.configs(&base).unwrap().len(), 4 * 2 * 2 * 2);
        for bad in [
            SweepGrid {
                keeps: Some(vec![1.5]),
                ..Default::default()
            },
            SweepGrid {
                top_ps: Some(vec![0.0]),
                ..Default::default()
            },
        ] {
            assert!(bad.configs(&base).is_err());
        }
    }
}
