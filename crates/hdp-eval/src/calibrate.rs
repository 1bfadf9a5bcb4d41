//! `hdp calibrate` (issue #16, item 2): per-layer top-p masses chosen on calibration texts so
//! that the mean embedding cosine to dense reaches a target at the highest block sparsity
//! found.
//!
//! Method: every layer's sensitivity is measured alone (that layer at each candidate mass, the
//! others unpruned), then a greedy allocation spends the cosine budget (`unpruned cosine -
//! target`) on the steps with the most sparsity per unit of cosine lost, treating the layers'
//! losses as additive; each allocation is verified by a full run, and a bisection on the
//! budget keeps the sparsest allocation whose verified cosine reaches the target (losses
//! compound a little faster than additively). The calibration texts are Brown passages
//! spread over the corpus and disjoint from the fidelity task's first 16 files, so fidelity
//! results with a calibration are measured on texts it was not fitted on.

use crate::data;
use crate::metrics::cosine;
use crate::tasks::Progress;
use crate::{Error, Result};
use hdp_core::calibration::{CalibrationMeasure, CALIBRATION_FORMAT, CALIBRATION_VERSION};
use hdp_core::{Calibration, RowThreshold, TraceSummary, ValidConfig};
use hdp_models::{AttentionBackend, DenseFast, Encoded, HdpBackend, SentenceEmbedder};
use std::path::PathBuf;

/// Files of the fidelity task (the first of the sorted Brown files), never calibrated on.
pub const FIDELITY_FILES: usize = 16;

/// Verification runs of the budget bisection.
const TRIES: usize = 4;

/// What to calibrate for.
#[derive(Clone, Debug)]
pub struct CalibrateOptions {
    /// Assets folder (Brown corpus).
    pub assets: PathBuf,
    /// Calibration passages.
    pub texts: usize,
    /// Tokens per passage.
    pub max_length: usize,
    /// Mean embedding cosine to dense to reach on the calibration passages.
    pub target: f64,
    /// Candidate top-p masses (any order; each in (0, 1]).
    pub masses: Vec<f64>,
    /// Texts per forward batch.
    pub batch_size: usize,
}

/// One layer of the result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerChoice {
    /// Layer index.
    pub layer: usize,
    /// The chosen threshold.
    pub threshold: RowThreshold,
    /// Cosine lost with only this layer pruned at this threshold (sensitivity run).
    pub alone_cosine_loss: f64,
    /// This layer's block sparsity in the verification run.
    pub block_sparsity: f64,
}

/// Everything `hdp calibrate` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CalibrationReport {
    /// Mean cosine with no block pruning (quantization and P.V precision only).
    pub unpruned_mean_cosine: f64,
    /// Per layer.
    pub layers: Vec<LayerChoice>,
    /// Verification runs: (mean cosine, block sparsity) of each allocation tried.
    pub tries: Vec<(f64, f64)>,
    /// Whether the target was reached on the calibration passages.
    pub target_met: bool,
    /// Model runs done.
    pub runs: usize,
}

/// The calibration passages: `n` Brown files spread evenly over those after the fidelity
/// task's, cut to `max_length` tokens. Returns their names too.
fn passages(model: &SentenceEmbedder, o: &CalibrateOptions) -> Result<(Vec<Encoded>, Vec<String>)> {
    let files = data::brown_files(&o.assets, usize::MAX)?;
    let rest = files.len().saturating_sub(FIDELITY_FILES);
    if o.texts == 0 || rest < o.texts {
        return Err(Error::Invalid(format!(
            "calibrate: {} passages asked, {rest} Brown files available after the fidelity \
             task's {FIDELITY_FILES} (run scripts/fetch_assets.py; use --texts 1..={rest})",
            o.texts
        )));
    }
    let step = rest / o.texts;
    let picked: Vec<&(String, String)> = (0..o.texts)
        .map(|i| &files[FIDELITY_FILES + i * step])
        .collect();
    let texts: Vec<&str> = picked.iter().map(|f| f.1.as_str()).collect();
    let enc = model
        .tokenize(&texts)?
        .iter()
        .map(|e| crate::tasks::cut_to(e, o.max_length))
        .collect();
    Ok((enc, picked.iter().map(|f| f.0.clone()).collect()))
}

/// Mean and minimum cosine of `emb` to `dense`.
fn cosines(emb: &[Vec<f32>], dense: &[Vec<f32>]) -> (f64, f64) {
    let c: Vec<f64> = emb.iter().zip(dense).map(|(a, b)| cosine(a, b)).collect();
    (
        c.iter().sum::<f64>() / c.len().max(1) as f64,
        c.iter().copied().fold(f64::INFINITY, f64::min),
    )
}

/// Chooses per-layer top-p masses; see the module documentation.
pub fn calibrate(
    model: &mut SentenceEmbedder,
    base: ValidConfig,
    o: &CalibrateOptions,
    progress: Progress,
) -> Result<(Calibration, CalibrationReport)> {
    if !(o.target.is_finite() && o.target > 0.0 && o.target <= 1.0) {
        return Err(Error::Invalid(format!(
            "--target-cosine {} must be in (0, 1]",
            o.target
        )));
    }
    let mut masses = o.masses.clone();
    masses.sort_by(|a, b| b.total_cmp(a));
    masses.dedup();
    if masses.is_empty() || masses.iter().any(|&m| !(m > 0.0 && m <= 1.0)) {
        return Err(Error::Invalid(format!(
            "--masses {:?} must be numbers in (0, 1]",
            o.masses
        )));
    }
    if o.max_length < 2 {
        return Err(Error::Invalid("--max-length must be at least 2".into()));
    }
    model.set_max_length(o.max_length)?;
    let layers = model.config().num_hidden_layers;
    let (enc, names) = passages(model, o)?;
    let total_runs = 2 + layers * masses.len() + TRIES;
    let mut runs = 0usize;
    let dense = model.embed_encoded(
        &enc,
        &mut DenseFast::default() as &mut dyn AttentionBackend,
        o.batch_size,
        true,
        &mut |_| {},
    )?;
    runs += 1;
    progress("calibration runs", runs, total_runs);
    // One HDP run with per-layer thresholds: mean and min cosine, per-layer summaries, the
    // whole run's block sparsity.
    let mut run =
        |ts: &[RowThreshold], runs: &mut usize| -> Result<(f64, f64, Vec<TraceSummary>, f64)> {
            let mut backend = HdpBackend::new(base, 0)?.with_layer_thresholds(ts.to_vec())?;
            let emb = model.embed_encoded(
                &enc,
                &mut backend as &mut dyn AttentionBackend,
                o.batch_size,
                true,
                &mut |_| {},
            )?;
            *runs += 1;
            progress("calibration runs", (*runs).min(total_runs), total_runs);
            let (mean, min) = cosines(&emb, &dense);
            let sparsity = backend.summary().block_sparsity();
            Ok((mean, min, backend.layer_summaries.clone(), sparsity))
        };
    let none = vec![RowThreshold::KeepAll; layers];
    let (cos0, ..) = run(&none, &mut runs)?;
    // Sensitivity of each layer alone: cosine loss and that layer's sparsity per mass.
    let mut loss = vec![vec![0.0f64; masses.len()]; layers];
    let mut sparsity = vec![vec![0.0f64; masses.len()]; layers];
    for l in 0..layers {
        for (j, &m) in masses.iter().enumerate() {
            let mut ts = none.clone();
            ts[l] = RowThreshold::TopP { mass: m };
            let (c, _, sums, _) = run(&ts, &mut runs)?;
            loss[l][j] = (cos0 - c).max(0.0);
            sparsity[l][j] = sums.get(l).map_or(0.0, |s| s.block_sparsity());
        }
    }
    // Greedy allocation under a budget; `None` = unpruned.
    let allocate = |budget: f64| -> Vec<Option<usize>> {
        let mut at: Vec<Option<usize>> = vec![None; layers];
        let mut spent = 0.0;
        loop {
            let mut best: Option<(usize, usize, f64, f64)> = None;
            for l in 0..layers {
                let next = at[l].map_or(0, |j| j + 1);
                if next >= masses.len() {
                    continue;
                }
                let (c0, s0) = at[l].map_or((0.0, 0.0), |j| (loss[l][j], sparsity[l][j]));
                let cost = loss[l][next] - c0;
                let gain = sparsity[l][next] - s0;
                if spent + cost > budget || gain <= 0.0 {
                    continue;
                }
                let ratio = gain / cost.max(1e-6);
                if best.is_none_or(|b| ratio > b.3) {
                    best = Some((l, next, cost, ratio));
                }
            }
            match best {
                Some((l, next, cost, _)) => {
                    at[l] = Some(next);
                    spent += cost;
                }
                None => return at,
            }
        }
    };
    let thresholds = |at: &[Option<usize>]| -> Vec<RowThreshold> {
        at.iter()
            .map(|j| {
                j.map_or(RowThreshold::KeepAll, |j| RowThreshold::TopP {
                    mass: masses[j],
                })
            })
            .collect()
    };
    // Bisection on the budget: the largest that verifies (losses are not quite additive).
    let (mut lo, mut hi) = (0.0f64, (cos0 - o.target).max(0.0));
    let mut budget = hi;
    let mut tries = Vec::new();
    type Choice = (Vec<Option<usize>>, f64, f64, Vec<TraceSummary>, f64);
    let mut best: Option<(Choice, f64)> = None;
    let mut fallback: Option<Choice> = None;
    for _ in 0..TRIES {
        let at = allocate(budget);
        let (mean, min, sums, sp) = run(&thresholds(&at), &mut runs)?;
        tries.push((mean, sp));
        if mean >= o.target {
            if best.as_ref().is_none_or(|b| sp > b.1) {
                best = Some(((at, mean, min, sums, sp), sp));
            }
            lo = budget;
        } else {
            hi = budget;
            if fallback.as_ref().is_none_or(|f| mean > f.1) {
                fallback = Some((at, mean, min, sums, sp));
            }
        }
        budget = 0.5 * (lo + hi);
    }
    let chosen = best.map(|b| b.0).or(fallback);
    let (at, mean, min, sums, sparsity) = chosen.expect("at least one try");
    let ts = thresholds(&at);
    let report = CalibrationReport {
        unpruned_mean_cosine: cos0,
        layers: (0..layers)
            .map(|l| LayerChoice {
                layer: l,
                threshold: ts[l],
                alone_cosine_loss: at[l].map_or(0.0, |j| loss[l][j]),
                block_sparsity: sums.get(l).map_or(0.0, |s| s.block_sparsity()),
            })
            .collect(),
        tries,
        target_met: mean >= o.target,
        runs,
    };
    let cal = Calibration {
        format: CALIBRATION_FORMAT.into(),
        version: CALIBRATION_VERSION,
        model: model
            .dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        layers,
        thresholds: ts,
        target_mean_cosine: o.target,
        base: Some(*base),
        fitted_on: format!(
            "{} Brown passages at {} tokens ({}), disjoint from the fidelity task's first {} files",
            enc.len(),
            o.max_length,
            names.join(" "),
            FIDELITY_FILES
        ),
        measured: CalibrationMeasure {
            mean_cosine: mean,
            min_cosine: min,
            block_sparsity: sparsity,
        },
    };
    Ok((cal, report))
}
