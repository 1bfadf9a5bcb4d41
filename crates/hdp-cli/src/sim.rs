//! `hdp sim`: simulate HDPA and the dense accelerator of the same multipliers on a trace or a
//! synthetic workload; optionally compare with this machine's CPU (our fast dense kernel).

use anyhow::{bail, Context, Result};
use clap::Args;
use hdp_sim::{load_preset, simulate, ModelShape, Report, Workload};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// `hdp sim sweep`: a design-space sweep.
#[derive(clap::Subcommand, Debug)]
pub enum SimCommand {
    /// Sweep hardware and workload parameters (cartesian product); Pareto front of latency vs
    /// energy. Uses the parent's --preset and workload flags.
    Sweep(SimSweepArgs),
}

/// Flags of `hdp sim sweep` (comma-separated lists).
#[derive(Args, Debug)]
pub struct SimSweepArgs {
    /// Integer-engine multipliers.
    #[arg(long, value_delimiter = ',')]
    pub int_mults: Vec<u64>,
    /// Fraction-engine multipliers.
    #[arg(long, value_delimiter = ',')]
    pub frac_mults: Vec<u64>,
    /// S.V-engine multipliers.
    #[arg(long, value_delimiter = ',')]
    pub sv_mults: Vec<u64>,
    /// Block sizes (synthetic workloads only).
    #[arg(long, value_delimiter = ',')]
    pub block_sizes: Vec<usize>,
    /// Q/K code widths in bits (traffic; integer-MAC energy scales with bits^2).
    #[arg(long, value_delimiter = ',')]
    pub bits: Vec<u64>,
    /// K and V buffer sizes, KiB.
    #[arg(long, value_delimiter = ',')]
    pub sram_kib: Vec<f64>,
    /// DRAM bandwidths, GB/s.
    #[arg(long, value_delimiter = ',')]
    pub dram_gbps: Vec<f64>,
    /// Write every point as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Pareto plot of latency vs energy (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Flags of `hdp sim`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = false)]
pub struct SimArgs {
    /// Design-space sweep instead of one simulation.
    #[command(subcommand)]
    pub command: Option<SimCommand>,
    /// Hardware: edge, server, or a preset TOML file (see presets/).
    #[arg(long, default_value = "edge")]
    pub preset: String,
    /// Baseline: a dense preset (default: dense-edge for edge, dense-server for server).
    #[arg(long)]
    pub dense_preset: Option<String>,
    /// Workload from an HDP trace (`hdp attention --trace`, `hdp eval --trace`).
    #[arg(long, conflicts_with = "model_shape")]
    pub trace: Option<PathBuf>,
    /// Synthetic workload: bert-base, bert-large or minilm-l6.
    #[arg(long)]
    pub model_shape: Option<String>,
    /// Synthetic: tokens.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Synthetic: block size.
    #[arg(long, default_value_t = 1)]
    pub block_size: usize,
    /// Synthetic: fraction of valid blocks pruned.
    #[arg(long, default_value_t = 0.686)]
    pub block_sparsity: f64,
    /// Synthetic: fraction of heads pruned.
    #[arg(long, default_value_t = 0.0)]
    pub head_sparsity: f64,
    /// Also time our fast dense CPU kernel on the same attention shapes (measured, this machine).
    #[arg(long)]
    pub cpu: bool,
    /// Stacked-bar plot of busy cycles per unit, HDPA vs dense (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Stacked-bar plot of energy per unit (and static energy), HDPA vs dense (SVG).
    #[arg(long)]
    pub energy_plot: Option<PathBuf>,
    /// Compare with published accelerators, normalized to 128 multipliers at 1 GHz
    /// (presets/peers.toml, or --peers-file).
    #[arg(long)]
    pub peers: bool,
    /// A peers table in the format of presets/peers.toml.
    #[arg(long)]
    pub peers_file: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn workload_of(a: &SimArgs, block_size: usize) -> Result<(Workload, String)> {
    Ok(match (&a.trace, &a.model_shape) {
        (Some(p), _) => {
            let t = hdp_core::Trace::read(p)?;
            (Workload::from_trace(&t), format!("trace {}", p.display()))
        }
        (None, Some(shape)) => (
            Workload::synthetic(
                &ModelShape::named(shape)?,
                a.seq_len,
                block_size,
                a.block_sparsity,
                a.head_sparsity,
            )?,
            format!(
                "synthetic {shape}, N {}, b {block_size}, block sparsity {}, head sparsity {}",
                a.seq_len, a.block_sparsity, a.head_sparsity
            ),
        ),
        (None, None) => {
            bail!("give a workload: --trace FILE or --model-shape NAME (e.g. bert-base)")
        }
    })
}

fn or<T: Clone>(v: &[T], default: T) -> Vec<T> {
    if v.is_empty() {
        vec![default]
    } else {
        v.to_vec()
    }
}

/// Runs `hdp sim sweep`.
fn run_sweep(a: &SimArgs, s: &SimSweepArgs) -> Result<()> {
    let (base, energy) = load_preset(&a.preset)?;
    if a.trace.is_some() && !s.block_sizes.is_empty() {
        bail!("--block-sizes needs a synthetic workload (--model-shape): a trace fixes its block size");
    }
    let mut points = Vec::new();
    // Widths as the attention code accepts them (QFormat's 4..=16 bits).
    for &b in &s.bits {
        let bits = u32::try_from(b).unwrap_or(u32::MAX);
        hdp_core::QFormat::new(bits, 0).with_context(|| format!("--bits {b} (sim sweep)"))?;
    }
    let combos: Vec<_> = or(&s.int_mults, base.int_engine.multipliers)
        .into_iter()
        .flat_map(|i| {
            or(&s.frac_mults, base.frac_engine.multipliers)
                .into_iter()
                .map(move |f| (i, f))
        })
        .flat_map(|(i, f)| {
            or(&s.sv_mults, base.sv_engine.multipliers)
                .into_iter()
                .map(move |v| (i, f, v))
        })
        .flat_map(|c| {
            or(&s.block_sizes, a.block_size)
                .into_iter()
                .map(move |b| (c, b))
        })
        .flat_map(|(c, b)| or(&s.bits, 8).into_iter().map(move |bits| (c, b, bits)))
        .flat_map(|x| {
            or(&s.sram_kib, base.sram.k_kib)
                .into_iter()
                .map(move |k| (x, k))
        })
        .flat_map(|(x, k)| {
            or(&s.dram_gbps, base.dram.gb_per_s)
                .into_iter()
                .map(move |g| (x, k, g))
        })
        .collect();
    let pb = indicatif::ProgressBar::new(combos.len() as u64);
    let mut cache: Option<(usize, Workload)> = None;
    for (((int, frac, sv), b, bits), kib, gbps) in combos {
        let mut hw = base.clone();
        hw.int_engine.multipliers = int;
        hw.frac_engine.multipliers = frac;
        hw.sv_engine.multipliers = sv;
        hw.sram.k_kib = kib;
        hw.sram.v_kib = kib;
        hw.dram.gb_per_s = gbps;
        hw.validate()
            .map_err(|e| anyhow::anyhow!("sweep point: {e}"))?;
        if cache.as_ref().map(|c| c.0) != Some(b) {
            cache = Some((b, workload_of(a, b)?.0));
        }
        let mut w = cache.as_ref().map(|c| c.1.clone()).unwrap_or_default();
        w.layers.iter_mut().for_each(|l| l.qk_bits = bits);
        let mut e = energy.clone();
        e.int_mac_pj *= (bits as f64 / 8.0).powi(2);
        let r = simulate(&hw, &e, &w);
        points.push(json!({
            "int_mults": int, "frac_mults": frac, "sv_mults": sv, "block_size": b, "bits": bits, "kv_sram_kib": kib,
            "dram_gbps": gbps, "cycles": r.cycles, "latency_us": r.latency_us, "energy_uj": r.energy_uj,
            "throughput_gops": r.throughput_gops, "mac_efficiency": r.mac_efficiency,
            "memory_bound": r.memory_bound_cycles / r.cycles,
        }));
        pb.inc(1);
    }
    pb.finish_and_clear();
    // Lower is better for both: negate for the maximizing Pareto helper.
    let xy: Vec<(f64, f64)> = points
        .iter()
        .map(|p| {
            (
                -p["latency_us"].as_f64().unwrap_or(0.0),
                -p["energy_uj"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let front = hdp_plot::pareto_front(&xy);
    outln!(
        "{:>6} {:>6} {:>6} {:>4} {:>4} {:>8} {:>8} {:>12} {:>12} {:>8}  pareto",
        "int",
        "frac",
        "sv",
        "b",
        "bits",
        "KiB",
        "GB/s",
        "latency us",
        "energy uJ",
        "mem%"
    );
    for (i, p) in points.iter().enumerate() {
        outln!(
            "{:>6} {:>6} {:>6} {:>4} {:>4} {:>8} {:>8} {:>12.1} {:>12.1} {:>7.1}%  {}",
            p["int_mults"].to_string(),
            p["frac_mults"].to_string(),
            p["sv_mults"].to_string(),
            p["block_size"].to_string(),
            p["bits"].to_string(),
            p["kv_sram_kib"].to_string(),
            p["dram_gbps"].to_string(),
            p["latency_us"].as_f64().unwrap_or(0.0),
            p["energy_uj"].as_f64().unwrap_or(0.0),
            100.0 * p["memory_bound"].as_f64().unwrap_or(0.0),
            if front.contains(&i) { "*" } else { "" }
        );
    }
    if let Some(p) = &s.out {
        let out = json!({"preset": base.name, "points": points, "pareto_front": front});
        hdp_core::io::write_bytes_atomic(p, serde_json::to_string_pretty(&out)?.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &s.plot {
        // Milliseconds and millijoules: round ticks without thousands of microunits.
        let all: Vec<(f64, f64)> = xy.iter().map(|&(x, y)| (-x / 1e3, -y / 1e3)).collect();
        let mut f: Vec<(f64, f64)> = front.iter().map(|&i| all[i]).collect();
        f.sort_by(|a, b| a.0.total_cmp(&b.0));
        let series = [
            hdp_plot::Series {
                name: "design points".into(),
                points: all.clone(),
                line: false,
                step: hdp_plot::Step::None,
                color: hdp_plot::PALETTE[0].into(),
            },
            hdp_plot::Series {
                name: "Pareto front".into(),
                points: f,
                line: true,
                // Smaller is better in both: the boundary runs right, then drops.
                step: hdp_plot::Step::HorizontalFirst,
                color: hdp_plot::PALETTE[6].into(),
            },
        ];
        // The front's designs by their unit counts and buffers, where a label fits.
        let labels: Vec<hdp_plot::Annotation> = front
            .iter()
            .map(|&i| {
                let p = &points[i];
                hdp_plot::Annotation {
                    x: all[i].0,
                    y: all[i].1,
                    text: format!(
                        "int {} frac {} sv {}, {} KiB",
                        p["int_mults"], p["frac_mults"], p["sv_mults"], p["kv_sram_kib"]
                    ),
                }
            })
            .collect();
        let svg = hdp_plot::xy_chart_svg_annotated(
            &format!("{}: latency vs energy", base.name),
            "latency (ms)",
            "energy (mJ)",
            &series,
            None,
            hdp_plot::XScale::Linear,
            &labels,
        );
        hdp_core::io::write_bytes_atomic(p, svg.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

/// Runs the command.
pub fn run(a: &SimArgs) -> Result<()> {
    if let Some(SimCommand::Sweep(s)) = &a.command {
        return run_sweep(a, s);
    }
    let (hw, energy) = load_preset(&a.preset)?;
    let dense_name = a
        .dense_preset
        .clone()
        .unwrap_or_else(|| match a.preset.as_str() {
            "server" => "dense-server".into(),
            _ => "dense-edge".into(),
        });
    let (dense_hw, dense_energy) = load_preset(&dense_name)?;
    let (workload, source) = workload_of(a, a.block_size)?;
    if workload.layers.is_empty() {
        bail!("the workload is empty (a trace with no layers?)");
    }
    let t0 = Instant::now();
    let hdpa = simulate(&hw, &energy, &workload);
    let dense = simulate(&dense_hw, &dense_energy, &workload);
    let sim_s = t0.elapsed().as_secs_f64();
    let cpu = if a.cpu {
        Some(cpu_ms(&workload)?)
    } else {
        None
    };
    let peers = if a.peers || a.peers_file.is_some() {
        let norm = hdp_sim::normalized_gops_128(hdpa.throughput_gops, &hw);
        let rows: Vec<serde_json::Value> = hdp_sim::load_peers(a.peers_file.as_deref())?
            .into_iter()
            .map(|p| {
                json!({"name": p.name, "published_gops_128": p.throughput_gops_128, "published_gops_per_w": p.gops_per_w,
                    "hdpa_throughput_ratio": p.throughput_gops_128.map(|g| norm / g), "source": p.source})
            })
            .collect();
        Some(
            json!({"hdpa_gops_128": norm, "normalization": "throughput x 128 / multipliers x 1000 / clock_MHz", "peers": rows}),
        )
    } else {
        None
    };
    // One bar per accelerator, one segment per unit (the dense design's score engine apart).
    let unit_segments = |value: &dyn Fn(&hdp_sim::sim::UnitReport) -> f64| {
        let get = |r: &Report, n: &str| r.units.iter().find(|u| u.name == n).map_or(0.0, value);
        let mut segs: Vec<(String, Vec<f64>)> = hdpa
            .units
            .iter()
            .map(|u| (u.name.to_string(), vec![value(u), get(&dense, u.name)]))
            .collect();
        segs.push((
            "score_engine (dense)".into(),
            vec![0.0, get(&dense, "score_engine")],
        ));
        segs
    };
    let bars = [hdpa.hardware.clone(), dense.hardware.clone()];
    if let Some(p) = &a.plot {
        let svg = hdp_plot::stacked_bars_svg(
            &format!(
                "Busy cycles per unit: {} vs {}\n{source}",
                hdpa.hardware, dense.hardware
            ),
            "busy cycles (units overlap in the pipeline)",
            &bars,
            &unit_segments(&|u| u.busy_cycles),
        );
        hdp_core::io::write_bytes_atomic(p, svg.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &a.energy_plot {
        // Per unit, plus the static energy of the run's whole latency; in mJ when a bar
        // passes 1,000 uJ (round ticks without thousands of microjoules).
        let (div, unit) = if hdpa.energy_uj.max(dense.energy_uj) > 1e3 {
            (1e3, "mJ")
        } else {
            (1.0, "uJ")
        };
        let mut segs = unit_segments(&|u| u.energy_pj * 1e-6 / div);
        segs.push((
            "static".into(),
            vec![hdpa.static_energy_uj / div, dense.static_energy_uj / div],
        ));
        let svg = hdp_plot::stacked_bars_svg(
            &format!(
                "Energy per unit: {} vs {}\n{source}; {} nm energy table",
                hdpa.hardware, dense.hardware, energy.process_nm
            ),
            &format!("energy ({unit})"),
            &bars,
            &segs,
        );
        hdp_core::io::write_bytes_atomic(p, svg.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    let speedup = dense.latency_us / hdpa.latency_us;
    if a.json {
        let mut out = json!({
            "workload": source, "simulated_in_s": sim_s, "energy_table": energy.source, "process_nm": energy.process_nm,
            "hdpa": hdpa, "dense": dense, "speedup_vs_dense": speedup,
            "energy_ratio_dense_over_hdpa": dense.energy_uj / hdpa.energy_uj,
        });
        if let Some(p) = &peers {
            out["peers"] = p.clone();
        }
        if let Some(ms) = cpu {
            out["cpu_measured"] = json!({"what": "our fast dense attention kernel on this machine, all layers, median of 3", "ms": ms,
                "hdpa_speedup_vs_cpu": ms * 1e3 / hdpa.latency_us});
        }
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    outln!(
        "workload: {source}; energy: {} ({} nm); simulated in {sim_s:.2} s",
        energy.source,
        energy.process_nm
    );
    outln!("{:<28} {:>14} {:>14}", "", hdpa.hardware, dense.hardware);
    let row = |k: &str, f: &dyn Fn(&Report) -> String| -> Result<()> {
        outln!("{k:<28} {:>14} {:>14}", f(&hdpa), f(&dense));
        Ok(())
    };
    row("cycles", &|r| format!("{:.4e}", r.cycles))?;
    row("latency (us)", &|r| format!("{:.1}", r.latency_us))?;
    row("throughput (dense-eq GOP/s)", &|r| {
        format!("{:.1}", r.throughput_gops)
    })?;
    row("MAC efficiency", &|r| format!("{:.3}", r.mac_efficiency))?;
    row("energy (uJ)", &|r| format!("{:.1}", r.energy_uj))?;
    row("GOP/s per W", &|r| format!("{:.1}", r.gops_per_w))?;
    row("memory-bound cycles", &|r| {
        format!("{:.1}%", 100.0 * r.memory_bound_cycles / r.cycles)
    })?;
    row("DRAM (MB)", &|r| format!("{:.2}", r.dram_bytes / 1e6))?;
    row("area (mm^2, arrays+SRAM)", &|r| {
        format!("{:.2}", r.area_mm2)
    })?;
    outln!(
        "speedup vs dense {speedup:.2}x, energy {:.2}x less",
        dense.energy_uj / hdpa.energy_uj
    );
    outln!(
        "{:<14} {:>12} {:>8} {:>12}   (HDPA units)",
        "unit",
        "busy cycles",
        "util",
        "energy uJ"
    );
    for u in &hdpa.units {
        outln!(
            "{:<14} {:>12.4e} {:>7.1}% {:>12.2}",
            u.name,
            u.busy_cycles,
            100.0 * u.utilization,
            u.energy_pj * 1e-6
        );
    }
    if let Some(p) = &peers {
        outln!(
            "published peers (their numbers), normalized to 128 multipliers @ 1 GHz; HDPA {:.1} GOP/s on the same scale (simulated, dense-equivalent)",
            p["hdpa_gops_128"].as_f64().unwrap_or(0.0)
        );
        for r in p["peers"].as_array().into_iter().flatten() {
            match (
                r["published_gops_128"].as_f64(),
                r["hdpa_throughput_ratio"].as_f64(),
            ) {
                (Some(g), Some(x)) => outln!(
                    "  {:<20} {g:>8.1} GOP/s   HDPA {x:.2}x   ({})",
                    r["name"].as_str().unwrap_or(""),
                    r["source"].as_str().unwrap_or("")
                ),
                _ => outln!(
                    "  {:<20} {:>8}         ({})",
                    r["name"].as_str().unwrap_or(""),
                    "-",
                    r["source"].as_str().unwrap_or("")
                ),
            }
        }
    }
    if let Some(ms) = cpu {
        outln!(
            "CPU (measured, this machine, our fast dense kernel, {} threads): {ms:.1} ms; HDPA (simulated) {:.1}x faster",
            rayon::current_num_threads(),
            ms * 1e3 / hdpa.latency_us
        );
    }
    Ok(())
}

/// Median wall time (ms, 3 runs) of our fast dense kernel over every layer-sequence of the
/// workload, on random inputs of the same shapes.
fn cpu_ms(w: &Workload) -> Result<f64> {
    use hdp_attention::fast::{dense_attention, Isa};
    use hdp_attention::synthetic::{generate, SyntheticSpec};
    let l = &w.layers[0];
    let p = generate(&SyntheticSpec {
        batch: 1,
        heads: l.heads.len(),
        seq_len: l.valid_tokens as usize,
        head_dim: l.head_dim as usize,
        valid_len: None,
        causal: false,
        seed: 0,
    })?;
    let isa = Isa::detect();
    let mut times = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        dense_attention(&p, isa)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[1] * w.layers.len() as f64)
}
