//! `hdp bench attention`: our fast dense kernel vs our fast HDP kernel, same inputs, same run,
//! medians over repeats.

use crate::args::HdpArgs;
use crate::io::load_problem;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use hdp_attention::fast::{self, Isa};
use hdp_attention::synthetic::{generate, SyntheticSpec};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// What to benchmark.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Fast dense vs fast HDP attention over sequence lengths.
    Attention(Box<BenchAttentionArgs>),
    /// Redraw the speedup figure from saved `hdp bench attention --json` lines (and PyTorch
    /// SDPA timings from `bench/sdpa.py`), so committed figures come from committed data.
    Plot(BenchPlotArgs),
    /// Draw the speed of `hdp embed` (dense, HDP) relative to sentence-transformers from the
    /// JSON lines `bench/embed_compare.py` prints last.
    PlotEmbed(BenchPlotEmbedArgs),
    /// Throughput of the dense layers (`x W^T + b`, packed weights) at the encoder's shapes,
    /// per instruction-set tier, against the tier's measured f32 FMA peak.
    Linear(BenchLinearArgs),
}

/// Flags of `hdp bench linear`.
#[derive(Args, Debug)]
pub struct BenchLinearArgs {
    /// Rows of `x` (tokens in a batch: 8 texts of 512 tokens by default).
    #[arg(long, default_value_t = 4096)]
    pub rows: usize,
    /// Layer shapes as `KxN` (input features x output features); the default is
    /// all-MiniLM-L6-v2's Q/K/V, output, FFN up and FFN down.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "384x1152,384x384,384x1536,1536x384"
    )]
    pub shapes: Vec<String>,
    /// Timed runs per shape and tier (medians reported; tiers alternate).
    #[arg(long, default_value_t = 7)]
    pub repeats: usize,
    /// Tiers to run (`portable`, `avx2`, `avx512`; default: every tier this CPU has but
    /// portable).
    #[arg(long, value_delimiter = ',')]
    pub tier: Option<Vec<String>>,
    /// Time the layers with GELU (erf) fused into the epilogue, as the feed-forward up
    /// projection runs, instead of the bias alone.
    #[arg(long)]
    pub gelu: bool,
    /// One JSON line per row instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `hdp bench linear`.
fn run_linear(a: &BenchLinearArgs) -> Result<()> {
    use hdp_models::linear::{fma_peak_gflops, Epilogue, Linear, Tier};
    if a.repeats == 0 || a.rows == 0 {
        bail!("--repeats and --rows must be at least 1");
    }
    let tiers: Vec<Tier> = match &a.tier {
        None => Tier::ALL
            .into_iter()
            .filter(|t| t.available() && *t != Tier::Portable)
            .collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                let t = Tier::ALL
                    .into_iter()
                    .find(|t| t.name() == n)
                    .ok_or_else(|| {
                        anyhow::anyhow!("unknown tier {n:?}: portable, avx2 or avx512")
                    })?;
                if !t.available() {
                    bail!("this CPU cannot run tier {n}");
                }
                Ok(t)
            })
            .collect::<Result<_>>()?,
    };
    if tiers.is_empty() {
        bail!("no tier to run: pass --tier portable on a CPU without AVX2");
    }
    let shapes: Vec<(usize, usize)> = a
        .shapes
        .iter()
        .map(|s| {
            let (k, n) = s
                .split_once('x')
                .and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)))
                .filter(|&(k, n): &(usize, usize)| k > 0 && n > 0)
                .ok_or_else(|| anyhow::anyhow!("shape {s:?} is not KxN with K, N >= 1"))?;
            Ok((k, n))
        })
        .collect::<Result<_>>()?;
    let threads = rayon::current_num_threads();
    let epi = if a.gelu {
        Epilogue::Gelu
    } else {
        Epilogue::None
    };
    let peaks: Vec<Option<f64>> = tiers.iter().map(|&t| fma_peak_gflops(t, 200.0)).collect();
    if !a.json {
        for (t, p) in tiers.iter().zip(&peaks) {
            match p {
                Some(p) => println!("f32 FMA peak of one core, {}: {p:.1} GFLOP/s", t.name()),
                None => println!("f32 FMA peak, {}: not measured", t.name()),
            }
        }
        println!(
            "{:>9} {:>7} {:>6} {:>6} {:>9} {:>9} {:>8}",
            "tier", "rows", "k", "n", "ms", "GFLOP/s", "of peak"
        );
    }
    // Deterministic operands in [-1, 1).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    for &(k, n) in &shapes {
        let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
        let b: Vec<f32> = (0..n).map(|_| next()).collect();
        let x: Vec<f32> = (0..a.rows * k).map(|_| next()).collect();
        let layer = Linear::new(&w, &b, n, k);
        let mut out = vec![0.0f32; a.rows * n];
        // Warm-up: first touch of the output, caches.
        for &t in &tiers {
            layer.forward(&x, a.rows, &mut out, epi, t);
        }
        let mut times = vec![Vec::new(); tiers.len()];
        for _ in 0..a.repeats {
            for (ti, &t) in tiers.iter().enumerate() {
                let t0 = Instant::now();
                layer.forward(&x, a.rows, &mut out, epi, t);
                times[ti].push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        for ((t, ts), peak) in tiers.iter().zip(times).zip(&peaks) {
            let ms = median(ts);
            let gflops = 2.0 * (a.rows * k * n) as f64 / ms / 1e6;
            let of_peak = peak.map(|p| gflops / (p * threads as f64));
            if a.json {
                println!(
                    "{}",
                    json!({"bench": "linear", "tier": t.name(), "rows": a.rows, "k": k, "n": n, "gelu": a.gelu,
                           "threads": threads, "median_ms": ms, "gflops": gflops,
                           "peak_gflops_per_core": peak, "fraction_of_peak": of_peak})
                );
            } else {
                let pct = of_peak.map_or("-".to_string(), |f| format!("{:.0}%", f * 100.0));
                println!(
                    "{:>9} {:>7} {:>6} {:>6} {:>9.2} {:>9.1} {:>8}",
                    t.name(),
                    a.rows,
                    k,
                    n,
                    ms,
                    gflops,
                    pct
                );
            }
        }
    }
    if !a.json {
        println!(
            "({threads} thread(s); peak per core times threads; medians of {} runs)",
            a.repeats
        );
    }
    Ok(())
}

/// Flags of `hdp bench plot-embed`.
#[derive(Args, Debug)]
pub struct BenchPlotEmbedArgs {
    /// JSON lines, one per `bench/embed_compare.py` run (its last output line).
    pub results: PathBuf,
    /// Output SVG.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Title (a second line after a newline is drawn smaller).
    #[arg(long, default_value = "End to end: hdp embed vs sentence-transformers")]
    pub title: String,
}

/// `hdp bench plot-embed`: one group of bars per run (token limit, threads), one bar per
/// contender, each the contender's speed relative to sentence-transformers in that run (texts
/// per second differ by 30x between short and long inputs; the ratios read on one axis).
fn run_plot_embed(a: &BenchPlotEmbedArgs) -> Result<()> {
    let runs = json_lines(&a.results)?;
    let mut groups = Vec::new();
    let mut series: Vec<(String, Vec<f64>)> = Vec::new();
    for (g, run) in runs.iter().enumerate() {
        let (Some(texts), Some(threads), Some(rows)) = (
            run["texts"].as_u64(),
            run["threads"].as_u64(),
            run["rows"].as_array(),
        ) else {
            bail!(
                "line {} of {} lacks texts, threads or rows: is it bench/embed_compare.py output?",
                g + 1,
                a.results.display()
            );
        };
        let secs = |name: &str| {
            rows.iter()
                .find(|r| r["contender"] == name)
                .and_then(|r| r["median_s"].as_f64())
        };
        let Some(torch) = secs("sentence-transformers") else {
            bail!(
                "line {} of {} has no sentence-transformers row",
                g + 1,
                a.results.display()
            );
        };
        // Short enough for one group's width; the text counts go in the title or caption.
        let _ = texts;
        groups.push(format!("{} tok, {threads} thr", run["max_length"]));
        for row in rows {
            let (Some(name), Some(t)) = (row["contender"].as_str(), row["median_s"].as_f64())
            else {
                bail!("a row of line {} lacks contender or median_s", g + 1);
            };
            let name = match name {
                "hdp dense" => "hdp embed, dense",
                "hdp hdp" => "hdp embed, HDP",
                other => other,
            }
            .to_string();
            let i = match series.iter().position(|s| s.0 == name) {
                Some(i) => i,
                None => {
                    series.push((name, Vec::new()));
                    series.len() - 1
                }
            };
            series[i].1.resize(g, f64::NAN);
            series[i].1.push(torch / t);
        }
    }
    for s in &mut series {
        s.1.resize(groups.len(), f64::NAN);
    }
    let svg = hdp_plot::grouped_bars_svg(
        &a.title,
        "speed relative to sentence-transformers",
        &groups,
        &series,
    );
    hdp_core::io::write_bytes_atomic(&a.output, svg.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", a.output.display()))?;
    outln!("plot: {}", a.output.display());
    Ok(())
}

/// Flags of `hdp bench plot`.
#[derive(Args, Debug)]
pub struct BenchPlotArgs {
    /// JSON lines written by `hdp bench attention --json` (one object per line).
    pub results: PathBuf,
    /// PyTorch SDPA timings (`bench/sdpa.py` JSON lines: seq_len, head_dim, threads,
    /// sdpa_ms), drawn as SDPA's speedup over our dense kernel at the same shape and threads.
    #[arg(long)]
    pub sdpa: Option<PathBuf>,
    /// Output SVG.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Title (default: what the lines were measured on).
    #[arg(long)]
    pub title: Option<String>,
}

fn json_lines(path: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                anyhow::anyhow!("line {} of {} is not JSON: {e}", i + 1, path.display())
            })
        })
        .collect()
}

/// The speedup figure: speedup over our dense kernel against N (log axis), dense = 1.
fn speedup_svg(title: &str, series: &[hdp_plot::Series]) -> String {
    hdp_plot::xy_chart_svg_scaled(
        title,
        "sequence length N",
        "speedup over our dense kernel",
        series,
        Some((1.0, "dense")),
        hdp_plot::XScale::Log2,
    )
}

/// `hdp bench plot`: the speedup figure from saved results.
fn run_plot(a: &BenchPlotArgs) -> Result<()> {
    let lines = json_lines(&a.results)?;
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64();
    // (isa, block size) -> points (N, speedup); dense ms per (N, d, threads) for SDPA.
    type Curve = ((String, u64), Vec<(f64, f64)>);
    let mut curves: Vec<Curve> = Vec::new();
    let mut dense: Vec<((u64, u64, u64), f64)> = Vec::new();
    let mut threads = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let (Some(n), Some(speedup), Some(isa), Some(b)) = (
            num(l, "seq_len"),
            num(l, "speedup"),
            l["isa"].as_str(),
            l["config"]["block_size"].as_u64(),
        ) else {
            bail!(
                "line {} of {} lacks seq_len, speedup, isa or config.block_size: is it hdp bench attention --json output?",
                i + 1,
                a.results.display()
            );
        };
        let key = (isa.to_string(), b);
        match curves.iter_mut().find(|c| c.0 == key) {
            Some(c) => c.1.push((n, speedup)),
            None => curves.push((key, vec![(n, speedup)])),
        }
        let t = l["threads"].as_u64().unwrap_or(1);
        threads.push(t);
        if let (Some(d), Some(ms)) = (l["head_dim"].as_u64(), num(l, "dense_ms")) {
            dense.push(((n as u64, d, t), ms));
        }
    }
    if curves.is_empty() {
        bail!("{} holds no results", a.results.display());
    }
    let mut series: Vec<hdp_plot::Series> = curves
        .into_iter()
        .enumerate()
        .map(|(i, ((isa, b), mut points))| {
            points.sort_by(|x, y| x.0.total_cmp(&y.0));
            hdp_plot::Series {
                name: format!("HDP b = {b}, {isa}"),
                points,
                line: true,
                step: hdp_plot::Step::None,
                color: hdp_plot::PALETTE[i % 6].into(),
            }
        })
        .collect();
    if let Some(p) = &a.sdpa {
        let mut points = Vec::new();
        for (i, l) in json_lines(p)?.iter().enumerate() {
            let (Some(n), Some(d), Some(ms)) =
                (num(l, "seq_len"), l["head_dim"].as_u64(), num(l, "sdpa_ms"))
            else {
                bail!(
                    "line {} of {} lacks seq_len, head_dim or sdpa_ms",
                    i + 1,
                    p.display()
                );
            };
            let t = l["threads"].as_u64().unwrap_or(1);
            // Our dense kernel's time at that shape, averaged over the tiers measured.
            let ours: Vec<f64> = dense
                .iter()
                .filter(|x| x.0 == (n as u64, d, t))
                .map(|x| x.1)
                .collect();
            if !ours.is_empty() {
                points.push((n, ours.iter().sum::<f64>() / ours.len() as f64 / ms));
            }
        }
        if points.is_empty() {
            bail!(
                "no SDPA timing in {} matches a shape and thread count of {}",
                p.display(),
                a.results.display()
            );
        }
        points.sort_by(|x, y| x.0.total_cmp(&y.0));
        series.push(hdp_plot::Series {
            name: "PyTorch SDPA".into(),
            points,
            line: true,
            step: hdp_plot::Step::None,
            color: hdp_plot::PALETTE[6].into(),
        });
    }
    threads.sort();
    threads.dedup();
    let title = a.title.clone().unwrap_or_else(|| {
        format!(
            "HDP and PyTorch SDPA vs our dense attention ({} thread(s))",
            threads
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join("/")
        )
    });
    let svg = speedup_svg(&title, &series);
    hdp_core::io::write_bytes_atomic(&a.output, svg.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", a.output.display()))?;
    outln!("plot: {}", a.output.display());
    Ok(())
}

/// Flags of `hdp bench attention`.
#[derive(Args, Debug)]
pub struct BenchAttentionArgs {
    /// Sequence lengths (synthetic inputs).
    #[arg(long, value_delimiter = ',', default_value = "128,512,2048,4096")]
    pub seq_lens: Vec<usize>,
    /// Heads.
    #[arg(long, default_value_t = 12)]
    pub heads: usize,
    /// Head dimension.
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    /// Timed runs per kernel (the median is reported), after one warm-up run; dense and HDP
    /// runs alternate.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Synthetic seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Time Q/K/V from a file instead (.npy from `hdp eval --dump-qkv`, or .safetensors).
    #[arg(long)]
    pub qkv: Option<PathBuf>,
    /// Instruction-set tiers to time, side by side in one run (`portable`, `avx2`,
    /// `avx-vnni`, `avx512-vnni`; `all` = every tier this CPU has). Default: the best tier (or `HDP_ISA`).
    #[arg(long, value_delimiter = ',')]
    pub isa: Option<Vec<String>>,
    /// Run the HDP kernel at each of these block sizes (overrides -b), e.g. `1,16`.
    #[arg(long, value_delimiter = ',')]
    pub block_sizes: Option<Vec<usize>>,
    /// Write an SVG chart of the HDP speedup against N, one line per block size.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub hdp: HdpArgs,
    /// Print one JSON object per run, one per line.
    #[arg(long)]
    pub json: bool,
}

fn time_ms(f: impl FnOnce() -> hdp_core::Result<()>) -> Result<f64> {
    let t0 = Instant::now();
    f()?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Runs the command.
pub fn run(cmd: &BenchCommand) -> Result<()> {
    let a = match cmd {
        BenchCommand::Attention(a) => a,
        BenchCommand::Plot(p) => return run_plot(p),
        BenchCommand::PlotEmbed(p) => return run_plot_embed(p),
        BenchCommand::Linear(l) => return run_linear(l),
    };
    if a.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let base = a.hdp.config()?;
    let configs = hdp_eval::sweep::SweepGrid {
        block_sizes: a.block_sizes.clone(),
        ..Default::default()
    }
    .configs(&base)?;
    let isas: Vec<Isa> = match &a.isa {
        None => vec![Isa::detect()],
        Some(names) if names.iter().any(|n| n == "all") => Isa::available_tiers(),
        Some(names) => names
            .iter()
            .map(|n| Isa::by_name(n))
            .collect::<hdp_core::Result<_>>()?,
    };
    if isas.is_empty() {
        bail!("--isa needs at least one tier");
    }
    let threads = rayon::current_num_threads();
    let problems: Vec<(String, hdp_attention::AttentionProblem)> = match &a.qkv {
        Some(p) => vec![(p.display().to_string(), load_problem(p, false)?)],
        None => a
            .seq_lens
            .iter()
            .map(|&n| {
                if n == 0 {
                    bail!("sequence lengths must be at least 1");
                }
                let spec = SyntheticSpec {
                    batch: 1,
                    heads: a.heads,
                    seq_len: n,
                    head_dim: a.head_dim,
                    valid_len: None,
                    causal: false,
                    seed: a.seed,
                };
                Ok((format!("synthetic seed {}", a.seed), generate(&spec)?))
            })
            .collect::<Result<_>>()?,
    };
    // The int8 peak of one core per tier, measured with the integer tile's own instruction mix.
    let measured: Vec<Option<(f64, &str)>> = isas
        .iter()
        .map(|&isa| hdp_attention::int8::int8_peak_gmacs(isa, 300.0))
        .collect();
    let peaks: Vec<Option<f64>> = measured.iter().map(|m| m.map(|x| x.0)).collect();
    if !a.json {
        outln!(
            "fast kernels, {threads} thread(s), median of {} runs; HDP {}",
            a.repeats,
            serde_json::to_string(&base)?
        );
        for (isa, peak) in isas.iter().zip(&measured) {
            match peak {
                Some((p, what)) => outln!(
                    "int8 peak of one core, {} ({what}): {p:.1} GMAC/s",
                    isa.name()
                ),
                None => outln!(
                    "int8 peak, {}: not measured (no fixed instruction mix)",
                    isa.name()
                ),
            }
        }
        outln!(
            "{:>12} {:>6} {:>6} {:>4} {:>4} {:>10} {:>10} {:>8} {:>9} {:>9} {:>10} {:>14}  input",
            "isa",
            "N",
            "heads",
            "d",
            "b",
            "dense ms",
            "hdp ms",
            "speedup",
            "blocks",
            "heads",
            "rel err",
            "int GMAC/s"
        );
    }
    let mut curves: Vec<Vec<(f64, f64)>> = vec![Vec::new(); configs.len() * isas.len()];
    for ((source, p), (ci, cfg)) in problems
        .iter()
        .flat_map(|x| configs.iter().enumerate().map(move |c| (x, c)))
    {
        for (ii, (&isa, &peak)) in isas.iter().zip(&peaks).enumerate() {
            let cfg = *cfg;
            let dims = p.dims();
            let dense_out = fast::dense_attention(p, isa)?;
            let hdp_out = fast::hdp_attention(p, &cfg, 0, isa)?;
            // Dense and HDP runs alternate, so that a machine whose speed drifts (shared cores)
            // slows both alike; each median is over its own runs.
            let (mut td, mut th) = (Vec::with_capacity(a.repeats), Vec::with_capacity(a.repeats));
            for _ in 0..a.repeats {
                td.push(time_ms(|| fast::dense_attention(p, isa).map(|_| ()))?);
                th.push(time_ms(|| {
                    fast::hdp_attention(p, &cfg, 0, isa).map(|_| ())
                })?);
            }
            let (dense_ms, hdp_ms) = (median(td), median(th));
            let mut trace = hdp_core::Trace::new("bench", cfg);
            trace.layers.push(hdp_out.trace);
            let s = trace.summary();
            let rel = hdp_out.output.rel_l2_err(&dense_out)?;
            let speedup = dense_ms / hdp_ms;
            // Per-stage times from separate profiled runs (reading the clock costs a little),
            // the median of each stage.
            let mut staged: Vec<hdp_attention::int8::StageTimes> = Vec::new();
            for _ in 0..a.repeats {
                if let (_, Some(t)) = fast::hdp_attention_staged(p, &cfg, 0, isa)? {
                    staged.push(t);
                }
            }
            let stages = (!staged.is_empty()).then(|| {
                let med = |f: fn(&hdp_attention::int8::StageTimes) -> f64| {
                    median(staged.iter().map(f).collect())
                };
                hdp_attention::int8::StageTimes {
                    quantize: med(|t| t.quantize),
                    integer_pass: med(|t| t.integer_pass),
                    decisions: med(|t| t.decisions),
                    kept_setup: med(|t| t.kept_setup),
                    kept_scores: med(|t| t.kept_scores),
                    softmax: med(|t| t.softmax),
                    pv: med(|t| t.pv),
                    other: med(|t| t.other),
                }
            });
            let int_pass = hdp_attention::int8::integer_pass_rate(p, &cfg, isa, a.repeats)?;
            let int_gmacs = int_pass.map(|r| r.gmacs);
            let int_frac = int_gmacs.zip(peak).map(|(g, p)| g / p);
            curves[ii * configs.len() + ci].push((dims.seq_len as f64, speedup));
            if a.json {
                outln!(
                    "{}",
                    json!({
                        "seq_len": dims.seq_len, "heads": dims.heads, "head_dim": dims.head_dim, "batch": dims.batch,
                        "input": source, "isa": isa.name(), "threads": threads, "repeats": a.repeats,
                        "dense_ms": dense_ms, "hdp_ms": hdp_ms, "speedup": speedup,
                        "block_sparsity": s.block_sparsity(), "head_sparsity": s.head_sparsity(),
                        "effective_block_sparsity": s.effective_block_sparsity(), "rel_l2_err": rel,
                        "integer_pass": int_pass, "int8_peak_gmacs": peak,
                        "integer_pass_peak_fraction": int_frac,
                        "stages_ms": stages,
                        "config": cfg,
                    })
                );
            } else {
                let int_col = match (int_gmacs, int_frac) {
                    (Some(g), Some(f)) => format!("{g:.1} ({:.0}%)", 100.0 * f),
                    (Some(g), None) => format!("{g:.1}"),
                    _ => "-".to_string(),
                };
                outln!(
                "{:>12} {:>6} {:>6} {:>4} {:>4} {dense_ms:>10.2} {hdp_ms:>10.2} {speedup:>7.2}x {:>8.1}% {:>8.1}% {rel:>10.3e} {int_col:>14}  {source}",
                isa.name(),
                dims.seq_len,
                dims.heads,
                dims.head_dim,
                cfg.block_size,
                100.0 * s.block_sparsity(),
                100.0 * s.head_sparsity()
            );
                if let Some(t) = stages {
                    outln!(
                        "{:>12} stages (ms, profiled runs): quantize {:.2}, integer pass {:.2}, decisions {:.2}, kept setup {:.2}, kept scores {:.2}, softmax {:.2}, P.V {:.2}, other {:.2}",
                        "",
                        t.quantize, t.integer_pass, t.decisions, t.kept_setup, t.kept_scores, t.softmax, t.pv, t.other
                    );
                }
            }
        }
    }
    if let Some(path) = &a.plot {
        const COLORS: [&str; 8] = hdp_plot::PALETTE;
        let series: Vec<hdp_plot::Series> = isas
            .iter()
            .flat_map(|isa| configs.iter().map(move |c| (isa, c)))
            .zip(curves)
            .enumerate()
            .map(|(i, ((isa, cfg), mut points))| {
                points.sort_by(|x, y| x.0.total_cmp(&y.0));
                hdp_plot::Series {
                    name: if isas.len() > 1 {
                        format!("HDP b = {}, {}", cfg.block_size, isa.name())
                    } else {
                        format!("HDP b = {}", cfg.block_size)
                    },
                    points,
                    line: true,
                    step: hdp_plot::Step::None,
                    color: COLORS[i % COLORS.len()].to_string(),
                }
            })
            .collect();
        let names: Vec<&str> = isas.iter().map(|t| t.name()).collect();
        let title = format!(
            "HDP vs dense attention, {} ({threads} thread(s), median of {})",
            names.join(" / "),
            a.repeats
        );
        let svg = speedup_svg(&title, &series);
        hdp_core::io::write_bytes_atomic(path, svg.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write the plot {}: {e}", path.display()))?;
        if !a.json {
            outln!("plot: {}", path.display());
        }
    }
    Ok(())
}
