//! Per-layer calibration of the block selection (issue #16): one row threshold per layer,
//! chosen by `hdp calibrate` on calibration texts so that a target embedding fidelity holds at
//! the highest sparsity it found, and applied by every model run given `--calibration FILE`.
//! The file says what it was fitted on and what it measured there, so that results can name
//! it and a reader can tell calibration data from test data.

use crate::config::{Compensation, HdpConfig, RowThreshold};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `format` field of every calibration file.
pub const CALIBRATION_FORMAT: &str = "hdp-calibration";
/// The version this crate writes and reads.
pub const CALIBRATION_VERSION: u32 = 1;

/// What a calibration measured on its own calibration texts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationMeasure {
    /// Mean cosine of the HDP embeddings to the dense ones.
    pub mean_cosine: f64,
    /// Minimum cosine.
    pub min_cosine: f64,
    /// Block sparsity over every layer and head.
    pub block_sparsity: f64,
}

/// Per-layer thresholds and their provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Always [`CALIBRATION_FORMAT`].
    pub format: String,
    /// Always [`CALIBRATION_VERSION`].
    pub version: u32,
    /// The model folder's name the thresholds were fitted for.
    pub model: String,
    /// Its number of layers (a run on another depth is refused).
    pub layers: usize,
    /// The threshold of each layer, in order.
    pub thresholds: Vec<RowThreshold>,
    /// The fidelity asked for (mean embedding cosine to dense).
    pub target_mean_cosine: f64,
    /// What the thresholds were fitted on (texts and token length).
    pub fitted_on: String,
    /// What they measured there.
    pub measured: CalibrationMeasure,
    /// The options every layer ran with besides its threshold (a run with other options is
    /// refused: the thresholds were fitted to them); absent in files written before it was
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<HdpConfig>,
}

impl Calibration {
    /// Checks the header, the layer count and every threshold's range (as `HdpConfig` does).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format != CALIBRATION_FORMAT {
            return Err(format!(
                "format is {:?}, expected {CALIBRATION_FORMAT:?}",
                self.format
            ));
        }
        if self.version != CALIBRATION_VERSION {
            return Err(format!(
                "version {} is not supported (this hdp reads version {CALIBRATION_VERSION})",
                self.version
            ));
        }
        if self.thresholds.is_empty() || self.thresholds.len() != self.layers {
            return Err(format!(
                "{} thresholds for {} layers (one per layer is needed)",
                self.thresholds.len(),
                self.layers
            ));
        }
        for (l, &threshold) in self.thresholds.iter().enumerate() {
            HdpConfig {
                threshold,
                ..HdpConfig::default()
            }
            .validate()
            .map_err(|e| format!("layer {l}: {e}"))?;
        }
        if !(self.target_mean_cosine.is_finite() && self.target_mean_cosine <= 1.0) {
            return Err(format!(
                "target_mean_cosine {} is not a cosine",
                self.target_mean_cosine
            ));
        }
        Ok(())
    }

    /// `Ok` when `run` has the options this calibration was fitted with (its threshold aside),
    /// else an error naming the options that differ and how to match them.
    pub fn check_options(&self, run: &HdpConfig) -> std::result::Result<(), String> {
        let Some(base) = self.base else {
            return Ok(());
        };
        // Compensation compares by effect (`auto` is `mean-v` at b = 1, `off` otherwise).
        let effective = |c: &HdpConfig| {
            if c.compensates() {
                Compensation::MeanV
            } else {
                Compensation::Off
            }
        };
        let fields = |c: &HdpConfig| match serde_json::to_value(HdpConfig {
            threshold: RowThreshold::KeepAll,
            compensate: effective(c),
            ..*c
        }) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let (want, got) = (fields(&base), fields(run));
        let differ: Vec<String> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .map(|(k, v)| {
                let g = got.get(k).map_or("absent".into(), |g| g.to_string());
                format!("{k} {v} (this run: {g})")
            })
            .collect();
        if differ.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the calibration was fitted with other options: {}; run with the calibration's \
                 options or calibrate for these",
                differ.join(", ")
            ))
        }
    }

    /// Writes the file (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, |w| {
            serde_json::to_writer_pretty(w, self).map_err(std::io::Error::other)
        })
    }

    /// Reads and validates a calibration file.
    pub fn read(path: &Path) -> Result<Calibration> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        let parse = |reason: String| Error::Parse {
            path: path.into(),
            reason,
        };
        let c: Calibration = serde_json::from_slice(&bytes).map_err(|e| {
            parse(format!(
                "{e} (is this a calibration file written by hdp calibrate?)"
            ))
        })?;
        c.validate().map_err(parse)?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Calibration {
        Calibration {
            format: CALIBRATION_FORMAT.into(),
            version: CALIBRATION_VERSION,
            model: "all-MiniLM-L6-v2".into(),
            layers: 3,
            thresholds: vec![
                RowThreshold::TopP { mass: 0.98 },
                RowThreshold::TopP { mass: 0.9 },
                RowThreshold::KeepAll,
            ],
            target_mean_cosine: 0.99,
            fitted_on: "test".into(),
            measured: CalibrationMeasure {
                mean_cosine: 0.991,
                min_cosine: 0.985,
                block_sparsity: 0.5,
            },
            base: Some(HdpConfig {
                centred: true,
                ..HdpConfig::default()
            }),
        }
    }

    #[test]
    fn runs_with_other_options_are_refused_by_name() {
        let c = sample();
        let run = HdpConfig {
            centred: true,
            threshold: RowThreshold::TopK { keep: 0.5, min: 1 },
            ..HdpConfig::default()
        };
        assert_eq!(c.check_options(&run), Ok(()));
        // Compensation by effect: auto is mean-v at b = 1, not off.
        let mean_v = HdpConfig {
            compensate: Compensation::MeanV,
            ..run
        };
        assert_eq!(c.check_options(&mean_v), Ok(()));
        let off = HdpConfig {
            compensate: Compensation::Off,
            ..run
        };
        assert!(c.check_options(&off).unwrap_err().contains("compensate"));
        let e = c.check_options(&HdpConfig::default()).unwrap_err();
        assert!(e.contains("centred true (this run: false)"), "{e}");
        let e = c
            .check_options(&HdpConfig {
                block_size: 16,
                ..run
            })
            .unwrap_err();
        assert!(e.contains("block_size 1 (this run: 16)"), "{e}");
        // Files written before the base was recorded apply to any options.
        let old = Calibration { base: None, ..c };
        assert_eq!(old.check_options(&HdpConfig::default()), Ok(()));
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("base"));
        assert_eq!(serde_json::from_str::<Calibration>(&json).unwrap(), old);
    }

    #[test]
    fn round_trips_and_rejects_what_it_cannot_use() {
        let dir = std::env::temp_dir().join(format!("hdp-cal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cal.json");
        sample().write(&path).unwrap();
        assert_eq!(Calibration::read(&path).unwrap(), sample());
        let bad = |f: &dyn Fn(&mut Calibration), needle: &str| {
            let mut c = sample();
            f(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        bad(&|c| c.format = "hdp-trace".into(), "format");
        bad(&|c| c.version = 9, "version 9");
        bad(&|c| c.layers = 4, "3 thresholds for 4 layers");
        bad(
            &|c| c.thresholds[1] = RowThreshold::TopP { mass: 1.5 },
            "layer 1",
        );
        bad(&|c| c.target_mean_cosine = f64::NAN, "not a cosine");
        std::fs::write(&path, b"{\"format\": 3}").unwrap();
        let e = Calibration::read(&path).unwrap_err().to_string();
        assert!(e.contains("calibration file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
