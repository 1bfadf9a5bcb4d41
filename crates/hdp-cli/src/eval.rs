//! `hdp eval` and `hdp sweep`: accuracy of HDP attention on real models and labeled data, dense
//! and HDP side by side; sweeps over the HDP options with an accuracy-vs-sparsity plot.

use crate::args::{HdpArgs, HdpArgsExt};
use anyhow::{bail, Context, Result};
use clap::Args;
use hdp_attention::{RowThreshold, ValidConfig};
use hdp_core::{QFormat, ScoreMode};
use hdp_eval::sweep::SweepGrid;
use hdp_eval::tasks::{EvalOptions, Evaluation, HdpResult, Task};
use hdp_models::{assets_dir, default_model_dir, HdpBackend, HdpKernel, SentenceEmbedder};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Flags shared by `eval` and `sweep`.
#[derive(Args, Debug, Clone)]
pub struct TaskArgs {
    /// Task: rt-sentiment, lee-similarity, fidelity, brown-genre or brown-retrieval.
    #[arg(long, default_value = "rt-sentiment")]
    pub task: Task,
    /// Your own data instead: CSV/TSV of `label,text` or `text_a,text_b,score` rows.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Hugging Face-layout model folder (default: the packaged all-MiniLM-L6-v2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Maximum tokens per text (default: the task's own; see README).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Evaluate only the first N test items (train on at most 4N).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Do not read or write the dense-embedding cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// Flags of `hdp eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    #[command(flatten)]
    pub hdp: HdpArgs,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the trace of the first --trace-texts texts (every layer) for the simulator.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Texts whose full trace --trace keeps.
    #[arg(long, default_value_t = 8)]
    pub trace_texts: usize,
    /// Write a layers x heads heatmap of kept-block fraction and head pruning (SVG).
    #[arg(long)]
    pub heatmap: Option<PathBuf>,
    /// Save Q/K/V of one layer for the longest evaluated text as .npy [3, 1, heads, N, d]
    /// (input for `hdp attention --qkv` and benchmarks).
    #[arg(long)]
    pub dump_qkv: Option<PathBuf>,
    /// Layer whose Q/K/V --dump-qkv saves.
    #[arg(long, default_value_t = 0)]
    pub dump_layer: usize,
    /// Per-layer thresholds from `hdp calibrate` in place of the threshold options.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Arithmetic of the kept attention: `float` (the fast CPU kernels) or `hw` (the HDPA
    /// core's bit-accurate fixed-point datapath, what `rtl/` computes: 8-bit Q/K/V codes, LUT
    /// exponential, integer divider; needs -b 1 and top-k; compensation defaults off).
    #[arg(long, value_enum, default_value_t = Datapath::Float)]
    pub datapath: Datapath,
}

/// `hdp eval --datapath`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datapath {
    /// The fast CPU kernels (f32 / int8 SIMD).
    Float,
    /// The HDPA core's bit-accurate datapath (crate `hdp-hw`).
    Hw,
}

/// Reads a calibration file for `model`: the layer counts must agree; thresholds given on the
/// command line as well are refused (the calibration replaces them).
pub fn load_calibration(
    path: &Path,
    model: &SentenceEmbedder,
    hdp: &HdpArgs,
) -> Result<hdp_core::Calibration> {
    hdp.refuse_threshold("--calibration sets every layer's threshold")?;
    let cal = hdp_core::Calibration::read(path)?;
    if let Err(e) = cal.check_options(hdp.config()?.get()) {
        bail!("{}: {e}", path.display());
    }
    let layers = model.config().num_hidden_layers;
    if cal.layers != layers {
        bail!(
            "{} was calibrated for {} layers ({}) but the model {} has {layers}: run hdp calibrate --model for it",
            path.display(),
            cal.layers,
            cal.model,
            model.dir.display()
        );
    }
    Ok(cal)
}

fn bar(label: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>18} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

fn progress_fn(pb: &ProgressBar) -> impl FnMut(&str, usize, usize) + '_ {
    move |stage, done, total| {
        pb.set_message(stage.to_string());
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    }
}

/// Loads the model and prepares the task (dense side).
fn prepare(t: &TaskArgs) -> Result<(SentenceEmbedder, Evaluation, f64)> {
    if t.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let dir = t.model.clone().unwrap_or_else(default_model_dir);
    let mut model =
        SentenceEmbedder::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
    let assets = assets_dir();
    let opts = EvalOptions {
        max_length: t.max_length,
        limit: t.limit,
        batch_size: t.batch_size,
        cache_dir: (!t.no_cache).then(|| assets.join("cache")),
        assets,
    };
    let t0 = Instant::now();
    let pb = bar("preparing");
    let ev = Evaluation::prepare(
        &mut model,
        t.task,
        t.data.as_deref(),
        &opts,
        &mut progress_fn(&pb),
    )?;
    pb.finish_and_clear();
    Ok((model, ev, t0.elapsed().as_secs_f64()))
}

fn run_one(
    model: &SentenceEmbedder,
    ev: &Evaluation,
    cfg: &ValidConfig,
    thresholds: Option<&[RowThreshold]>,
    kernel: Option<HdpKernel>,
    batch: usize,
    trace_texts: usize,
) -> Result<(HdpResult, HdpBackend, f64)> {
    let t0 = Instant::now();
    let pb = bar("hdp embeddings");
    let (r, backend) = ev.run_hdp_layers(
        model,
        cfg,
        thresholds,
        kernel,
        batch,
        trace_texts,
        &mut progress_fn(&pb),
    )?;
    pb.finish_and_clear();
    Ok((r, backend, t0.elapsed().as_secs_f64()))
}

/// Runs `hdp eval`.
pub fn run_eval(a: &EvalArgs) -> Result<()> {
    let cfg = match a.datapath {
        Datapath::Float => a.hdp.config()?,
        Datapath::Hw => hdp_hw::driver::hw_config(&a.hdp).context("--datapath hw")?,
    };
    let kernel = (a.datapath == Datapath::Hw)
        .then(|| HdpKernel::Hardware(hdp_attention::fast::Isa::detect()));
    let (model, ev, prep_s) = prepare(&a.task)?;
    if let Some(path) = &a.dump_qkv {
        let (shape, data) = ev.capture_qkv(&model, ev.longest_text(), a.dump_layer)?;
        hdp_core::npy::write(path, &shape, &data)?;
        eprintln!(
            "saved Q/K/V of layer {} ({:?}) to {}",
            a.dump_layer,
            &shape[1..],
            path.display()
        );
    }
    let trace_texts = if a.trace.is_some() {
        a.trace_texts.max(1)
    } else {
        0
    };
    let cal = match &a.calibration {
        Some(path) => Some(load_calibration(path, &model, &a.hdp)?),
        None => None,
    };
    let thresholds = cal.as_ref().map(|c| c.thresholds.as_slice());
    let (r, backend, hdp_s) = run_one(
        &model,
        &ev,
        &cfg,
        thresholds,
        kernel,
        a.task.batch_size,
        trace_texts,
    )?;
    if let (Some(path), Some(trace)) = (&a.trace, &backend.trace) {
        trace.write(path)?;
    }
    if let Some(path) = &a.heatmap {
        write_heatmap(
            path,
            &format!("{}, {} texts", ev.task, ev.texts()),
            &backend,
        )?;
    }
    let dense_metric = ev.dense_metrics["metric"];
    let hdp_metric = r.metrics["metric"];
    let per_layer: Vec<_> = backend
        .layer_summaries
        .iter()
        .enumerate()
        .map(|(l, s)| json!({"layer": l, "block_sparsity": s.block_sparsity(), "head_sparsity": s.head_sparsity()}))
        .collect();
    if a.json {
        let out = json!({
            "task": ev.task, "metric_name": ev.metric_name, "model": model.dir.display().to_string(),
            "max_length": ev.max_length, "hdp_texts": ev.texts(), "config": cfg,
            "calibration": a.calibration.as_ref().map(|p| json!({"file": p.display().to_string(), "thresholds": thresholds, "fitted_on": cal.as_ref().map(|c| c.fitted_on.clone())})),
            "datapath": match a.datapath { Datapath::Float => "float", Datapath::Hw => "hw" },
            "dense": ev.dense_metrics, "hdp": r.metrics, "delta": hdp_metric - dense_metric,
            "block_sparsity": r.block_sparsity, "effective_block_sparsity": r.effective_block_sparsity,
            "head_sparsity": r.head_sparsity, "macs": r.macs, "per_layer": per_layer,
            "seconds": {"prepare_dense": prep_s, "hdp": hdp_s},
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    outln!(
        "task {} ({}), model {}, max length {}, {} texts under HDP",
        ev.task,
        ev.metric_name,
        model.dir.display(),
        ev.max_length,
        ev.texts()
    );
    if let (Some(path), Some(c)) = (&a.calibration, &cal) {
        let t: Vec<String> = c.thresholds.iter().map(|t| t.to_string()).collect();
        outln!(
            "  calibration {} (per layer: {}; fitted on {})",
            path.display(),
            t.join(", "),
            c.fitted_on
        );
    }
    outln!("  {:<26} {:>10} {:>10} {:>10}", "", "dense", "hdp", "delta");
    for (k, dv) in ev.dense_metrics.iter().filter(|(k, _)| *k != "metric") {
        match r.metrics.get(k) {
            Some(hv) => outln!("  {k:<26} {dv:>10.4} {hv:>10.4} {:>+10.4}", hv - dv),
            None => outln!("  {k:<26} {dv:>10.4}"),
        }
    }
    for (k, hv) in r
        .metrics
        .iter()
        .filter(|(k, _)| !ev.dense_metrics.contains_key(*k))
    {
        outln!("  {k:<26} {:>10} {hv:>10.4}", "");
    }
    outln!(
        "  block sparsity {:.1}%, head sparsity {:.1}%, effective {:.1}%",
        100.0 * r.block_sparsity,
        100.0 * r.head_sparsity,
        100.0 * r.effective_block_sparsity
    );
    let m = &r.macs;
    outln!(
        "  S.V MACs {:.3e} vs dense {:.3e} ({:.1}% saved); exps {:.1}% saved; integer MACs {:.3e}, fraction MACs {:.3e}",
        m.hdp_sv_macs as f64,
        m.dense_sv_macs as f64,
        100.0 * m.sv_macs_saved,
        100.0 * m.exps_saved,
        m.hdp_int_macs as f64,
        m.hdp_frac_macs as f64
    );
    let how = match a.datapath {
        Datapath::Float => "fast kernels",
        Datapath::Hw => "HDPA core's bit-accurate datapath",
    };
    outln!("  time: dense side {prep_s:.1} s (cached after the first run), hdp side {hdp_s:.1} s ({how})");
    Ok(())
}

/// Layers x heads heatmaps (kept-block fraction, head-pruned fraction) of an HDP run over
/// `what` (a task or the user's texts).
pub fn write_heatmap(path: &Path, what: &str, backend: &HdpBackend) -> Result<()> {
    let layers = backend.head_stats.len();
    let heads = backend.head_stats.first().map_or(0, Vec::len);
    let mut kept = Vec::with_capacity(layers * heads);
    let mut pruned = Vec::with_capacity(layers * heads);
    for l in &backend.head_stats {
        for s in l {
            kept.push(if s.valid_blocks == 0 {
                f32::NAN
            } else {
                s.kept_blocks as f32 / s.valid_blocks as f32
            });
            pruned.push(if s.runs == 0 {
                f32::NAN
            } else {
                s.pruned as f32 / s.runs as f32
            });
        }
    }
    let panel = |title: &str, values| hdp_plot::Heatmap {
        title: title.into(),
        rows: layers,
        cols: heads,
        values,
    };
    let svg = hdp_plot::heatmap_grid_svg(
        &format!("HDP per layer (rows) and head (columns): {what}"),
        "left: fraction of valid blocks kept (dark = keeps more); right: fraction of texts where the head was pruned",
        &[panel("kept-block fraction", kept), panel("head pruned fraction", pruned)],
        2,
    );
    hdp_core::io::write_bytes_atomic(path, svg.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Flags of `hdp sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Base HDP options; the lists below vary one or more of them.
    #[command(flatten)]
    pub hdp: HdpArgs,
    /// Mean-max thresholds to try (comma-separated). Any option without a list keeps the base
    /// value; with neither --rhos nor --keeps, the base threshold alone.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub rhos: Option<Vec<f64>>,
    /// Top-k keep fractions to try.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub keeps: Option<Vec<f64>>,
    /// Top-p masses to try.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub top_ps: Option<Vec<f64>>,
    /// Block sizes to try.
    #[arg(long, value_delimiter = ',')]
    pub block_sizes: Option<Vec<usize>>,
    /// Fixed-point formats BITS:FRAC to try, e.g. 8:3,8:4.
    #[arg(long, value_delimiter = ',', value_parser = parse_format)]
    pub formats: Option<Vec<QFormat>>,
    /// Score modes to try.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub scores: Option<Vec<ScoreMode>>,
    /// Head-pruning tau values to try.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub taus: Option<Vec<f64>>,
    /// Write every point as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the accuracy-vs-sparsity plot (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Redraw the plot of a saved sweep (`--out` JSON) instead of running one; needs --plot.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// (effective block sparsity, metric) of each sweep point.
fn sweep_xy(points: &[serde_json::Value]) -> Vec<(f64, f64)> {
    points
        .iter()
        .map(|p| {
            (
                p["effective_block_sparsity"].as_f64().unwrap_or(0.0),
                p["metric"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

/// The accuracy-vs-sparsity figure of a sweep: the Pareto front as a line, every point marked
/// by its policy kind, dense as a reference line.
fn write_sweep_plot(
    path: &Path,
    title: &str,
    metric: &str,
    dense: f64,
    points: &[serde_json::Value],
) -> Result<()> {
    let xy = sweep_xy(points);
    let front = hdp_plot::pareto_front(&xy);
    // The front first, so the configurations' own markers are drawn over it.
    let mut series = vec![hdp_plot::Series {
        name: "Pareto front".into(),
        points: front.iter().map(|&i| xy[i]).collect(),
        line: true,
        // Larger is better in both: the front's boundary drops, then runs right.
        step: hdp_plot::Step::VerticalFirst,
        color: hdp_plot::PALETTE[7].into(),
    }];
    let palette = &hdp_plot::PALETTE[..6];
    let mut kinds: Vec<String> = points.iter().map(|p| kind(&p["label"])).collect();
    kinds.sort();
    kinds.dedup();
    for (k, name) in kinds.iter().enumerate() {
        let pts: Vec<(f64, f64)> = points
            .iter()
            .zip(&xy)
            .filter(|(p, _)| &kind(&p["label"]) == name)
            .map(|(_, &q)| q)
            .collect();
        series.push(hdp_plot::Series {
            name: name.clone(),
            points: pts,
            line: false,
            step: hdp_plot::Step::None,
            color: palette[k % palette.len()].into(),
        });
    }
    // The default operating point, where the sweep has it (its block-row threshold, format,
    // block size and head pruning; the kept-side options do not move the point).
    let d = hdp_core::HdpConfig::default();
    let is_default = |p: &serde_json::Value| {
        serde_json::from_value::<hdp_core::HdpConfig>(p["config"].clone()).is_ok_and(|c| {
            c.threshold == d.threshold
                && c.q_format == d.q_format
                && c.block_size == d.block_size
                && c.head_pruning == d.head_pruning
        })
    };
    let chosen: Vec<(f64, f64)> = points
        .iter()
        .zip(&xy)
        .filter(|(p, _)| is_default(p))
        .map(|(_, &q)| q)
        .collect();
    if !chosen.is_empty() {
        series.push(hdp_plot::Series {
            name: format!(
                "default ({}, {}:{})",
                d.threshold, d.q_format.bits, d.q_format.frac_bits
            ),
            points: chosen,
            line: false,
            step: hdp_plot::Step::None,
            color: hdp_plot::PALETTE[6].into(),
        });
    }
    // The front's configurations by name, where a label fits.
    let labels: Vec<hdp_plot::Annotation> = front
        .iter()
        .map(|&i| hdp_plot::Annotation {
            x: xy[i].0,
            y: xy[i].1,
            text: points[i]["label"].as_str().unwrap_or("").to_string(),
        })
        .collect();
    let svg = hdp_plot::xy_chart_svg_annotated(
        title,
        "effective block sparsity (share of valid blocks not computed)",
        metric,
        &series,
        Some((dense, "dense")),
        hdp_plot::XScale::Linear,
        &labels,
    );
    hdp_core::io::write_bytes_atomic(path, svg.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `hdp sweep --from FILE --plot SVG`: the figure of a saved sweep, no evaluation.
fn replot_sweep(from: &Path, plot: Option<&Path>) -> Result<()> {
    let plot = plot.context("--from redraws a saved sweep: give --plot FILE.svg")?;
    let text =
        std::fs::read_to_string(from).with_context(|| format!("cannot read {}", from.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", from.display()))?;
    let (Some(points), Some(dense), Some(metric)) = (
        v["points"].as_array(),
        v["dense"]["metric"].as_f64(),
        v["metric_name"].as_str(),
    ) else {
        bail!(
            "{} lacks points, dense.metric or metric_name: is it hdp sweep --out output?",
            from.display()
        );
    };
    // The same words as a fresh sweep's plot (the file holds the metric's JSON name).
    let metric = serde_json::from_value::<hdp_eval::tasks::Metric>(v["metric_name"].clone())
        .map(|m| m.name())
        .unwrap_or(metric);
    let title = format!(
        "{}: {metric} vs sparsity ({} texts)",
        v["task"].as_str().unwrap_or("sweep"),
        v["hdp_texts"]
    );
    write_sweep_plot(plot, &title, metric, dense, points)?;
    outln!("plot: {}", plot.display());
    Ok(())
}

/// Runs `hdp sweep`.
pub fn run_sweep(a: &SweepArgs) -> Result<()> {
    if let Some(from) = &a.from {
        return replot_sweep(from, a.plot.as_deref());
    }
    let base = a.hdp.config()?;
    let configs = SweepGrid {
        rhos: a.rhos.clone(),
        keeps: a.keeps.clone(),
        top_ps: a.top_ps.clone(),
        block_sizes: a.block_sizes.clone(),
        formats: a.formats.clone(),
        scores: a.scores.clone(),
        taus: a.taus.clone(),
    }
    .configs(&base)?;
    let (model, ev, _) = prepare(&a.task)?;
    let dense = ev.dense_metrics["metric"];
    let mut points = Vec::new();
    let overall = ProgressBar::new(configs.len() as u64);
    for (i, cfg) in configs.iter().enumerate() {
        overall.set_position(i as u64);
        let (r, _, secs) = run_one(&model, &ev, cfg, None, None, a.task.batch_size, 0)?;
        if !a.json {
            outln!(
                "{:>3}/{} {:<42} sparsity {:>5.1}% heads {:>4.1}%  {} {:.4} (delta {:+.4})  {secs:.0} s",
                i + 1,
                configs.len(),
                describe(cfg),
                100.0 * r.block_sparsity,
                100.0 * r.head_sparsity,
                ev.metric_name,
                r.metrics["metric"],
                r.metrics["metric"] - dense
            );
        }
        points.push(json!({
            "config": cfg, "label": describe(cfg), "metric": r.metrics["metric"], "delta": r.metrics["metric"] - dense,
            "block_sparsity": r.block_sparsity, "effective_block_sparsity": r.effective_block_sparsity,
            "head_sparsity": r.head_sparsity, "hdp": r.metrics, "macs": r.macs,
        }));
    }
    overall.finish_and_clear();
    let xy = sweep_xy(&points);
    let front = hdp_plot::pareto_front(&xy);
    let out = json!({
        "task": ev.task, "metric_name": ev.metric_name, "max_length": ev.max_length, "hdp_texts": ev.texts(),
        "dense": ev.dense_metrics, "points": points, "pareto_front": front,
    });
    if let Some(p) = &a.out {
        hdp_core::io::write_bytes_atomic(p, serde_json::to_string_pretty(&out)?.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &a.plot {
        let title = format!(
            "{}: {} vs sparsity ({} texts)",
            ev.task,
            ev.metric_name,
            ev.texts()
        );
        write_sweep_plot(p, &title, ev.metric_name.name(), dense, &points)?;
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!("dense {}: {dense:.4}; Pareto front:", ev.metric_name);
        for &i in &front {
            outln!(
                "  {}  sparsity {:.1}%  {} {:.4}",
                points[i]["label"].as_str().unwrap_or(""),
                100.0 * xy[i].0,
                ev.metric_name,
                xy[i].1
            );
        }
    }
    Ok(())
}

/// Parses a fixed-point format written `BITS:FRAC`.
fn parse_format(s: &str) -> Result<QFormat> {
    let (b, f) = s
        .split_once(':')
        .with_context(|| format!("format {s:?} must be BITS:FRAC, e.g. 8:3"))?;
    let num = |x: &str| {
        x.trim()
            .parse::<u32>()
            .with_context(|| format!("format {s:?}: {x:?} is not a bit count"))
    };
    Ok(QFormat::new(num(b)?, num(f)?)?)
}

/// Short label of a configuration.
fn describe(c: &ValidConfig) -> String {
    let t = match c.threshold {
        RowThreshold::KeepAll => "keep-all".to_string(),
        RowThreshold::MeanMax { rho } => format!("rho={rho}"),
        RowThreshold::TopK { keep, min: 1 } => format!("keep={keep}"),
        RowThreshold::TopK { keep, min } => format!("keep={keep} min={min}"),
        RowThreshold::TopP { mass } => format!("top-p={mass}"),
    };
    let h = match c.head_pruning {
        hdp_attention::HeadPruning::Off => String::new(),
        hdp_attention::HeadPruning::Tau { tau } => format!(" tau={tau}"),
        hdp_attention::HeadPruning::TopK { heads } => format!(" heads={heads}"),
    };
    format!(
        "{t} b={} {}:{} {:?}{h}",
        c.block_size, c.q_format.bits, c.q_format.frac_bits, c.score_mode
    )
    .to_lowercase()
}

/// Series name of a point: the threshold policy plus the other varied settings.
fn kind(label: &serde_json::Value) -> String {
    let l = label.as_str().unwrap_or("");
    let mut parts = l.split(' ');
    let policy = parts
        .next()
        .unwrap_or("")
        .split('=')
        .next()
        .unwrap_or("")
        .to_string();
    std::iter::once(policy)
        .chain(parts.map(String::from))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Flags of `hdp calibrate`.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// Mean embedding cosine to dense to reach on the calibration passages.
    #[arg(long, default_value_t = 0.99)]
    pub target_cosine: f64,
    /// Calibration passages (Brown files spread over the corpus, disjoint from the fidelity
    /// task's first 16).
    #[arg(long, default_value_t = 8)]
    pub texts: usize,
    /// Tokens per passage.
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Candidate top-p masses per layer (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.99,0.98,0.96,0.94,0.92,0.9,0.88,0.85,0.8"
    )]
    pub masses: Vec<f64>,
    /// Hugging Face-layout model folder (default: the packaged all-MiniLM-L6-v2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// The calibration file to write.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The other HDP options (the threshold is what calibration chooses).
    #[command(flatten)]
    pub hdp: HdpArgs,
}

/// Runs `hdp calibrate`.
pub fn run_calibrate(a: &CalibrateArgs) -> Result<()> {
    a.hdp
        .refuse_threshold("hdp calibrate chooses each layer's threshold")?;
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let base = a.hdp.config()?;
    let dir = a.model.clone().unwrap_or_else(default_model_dir);
    let mut model =
        SentenceEmbedder::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
    let opts = hdp_eval::calibrate::CalibrateOptions {
        assets: assets_dir(),
        texts: a.texts,
        max_length: a.max_length,
        target: a.target_cosine,
        masses: a.masses.clone(),
        batch_size: a.batch_size,
    };
    let t0 = Instant::now();
    let pb = bar("calibrating");
    let (cal, report) =
        hdp_eval::calibrate::calibrate(&mut model, base, &opts, &mut progress_fn(&pb))?;
    pb.finish_and_clear();
    cal.write(&a.output)?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        let out = json!({
            "calibration": cal, "report": report, "file": a.output.display().to_string(),
            "seconds": secs,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    outln!(
        "calibrated {} for mean cosine >= {} on {}",
        cal.model,
        cal.target_mean_cosine,
        cal.fitted_on
    );
    outln!(
        "  without block pruning: mean cosine {:.4}; {} model runs in {:.1} s",
        report.unpruned_mean_cosine,
        report.runs,
        secs
    );
    outln!(
        "  {:<6} {:<16} {:>18} {:>16}",
        "layer",
        "threshold",
        "cosine lost alone",
        "block sparsity"
    );
    for l in &report.layers {
        outln!(
            "  {:<6} {:<16} {:>18.4} {:>15.1}%",
            l.layer,
            l.threshold.to_string(),
            l.alone_cosine_loss,
            100.0 * l.block_sparsity
        );
    }
    for (i, (c, s)) in report.tries.iter().enumerate() {
        outln!(
            "  try {}: mean cosine {:.4}, block sparsity {:.1}%",
            i + 1,
            c,
            100.0 * s
        );
    }
    outln!(
        "  result: mean cosine {:.4} (min {:.4}), block sparsity {:.1}%{}; written to {}",
        cal.measured.mean_cosine,
        cal.measured.min_cosine,
        100.0 * cal.measured.block_sparsity,
        if report.target_met {
            ""
        } else {
            " (target NOT met on the calibration passages: add masses closer to 1)"
        },
        a.output.display()
    );
    Ok(())
}
