//! `hdp sim`: simulate HDPA and the dense accelerator of the same multipliers on a trace or a
//! synthetic workload; optionally compare with this machine's CPU (our fast dense kernel).

use anyhow::{bail, Context, Result};
use clap::Args;
use hdp_sim::{load_preset, simulate, ModelShape, Report, Workload};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// Flags of `hdp sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
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
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(a: &SimArgs) -> Result<()> {
    let (hw, energy) = load_preset(&a.preset)?;
    let dense_name = a
        .dense_preset
        .clone()
        .unwrap_or_else(|| match a.preset.as_str() {
            "server" => "dense-server".into(),
            _ => "dense-edge".into(),
        });
    let (dense_hw, dense_energy) = load_preset(&dense_name)?;
    let (workload, source) = match (&a.trace, &a.model_shape) {
        (Some(p), _) => {
            let t = hdp_core::Trace::read(p)?;
            (Workload::from_trace(&t), format!("trace {}", p.display()))
        }
        (None, Some(shape)) => (
            Workload::synthetic(
                &ModelShape::named(shape)?,
                a.seq_len,
                a.block_size,
                a.block_sparsity,
                a.head_sparsity,
            )?,
            format!(
                "synthetic {shape}, N {}, b {}, block sparsity {}, head sparsity {}",
                a.seq_len, a.block_size, a.block_sparsity, a.head_sparsity
            ),
        ),
        (None, None) => {
            bail!("give a workload: --trace FILE or --model-shape NAME (e.g. bert-base)")
        }
    };
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
    if let Some(p) = &a.plot {
        let names: Vec<String> = hdpa.units.iter().map(|u| u.name.to_string()).collect();
        let mut segs: Vec<(String, Vec<f64>)> = Vec::new();
        for n in &names {
            let get = |r: &Report| {
                r.units
                    .iter()
                    .find(|u| u.name == n)
                    .map_or(0.0, |u| u.busy_cycles)
            };
            segs.push((n.clone(), vec![get(&hdpa), get(&dense)]));
        }
        segs.push((
            "score_engine (dense)".into(),
            vec![
                0.0,
                dense
                    .units
                    .iter()
                    .find(|u| u.name == "score_engine")
                    .map_or(0.0, |u| u.busy_cycles),
            ],
        ));
        let svg = hdp_plot::stacked_bars_svg(
            &format!(
                "Busy cycles per unit: {} vs {} ({source})",
                hdpa.hardware, dense.hardware
            ),
            "busy cycles (units overlap in the pipeline)",
            &[hdpa.hardware.clone(), dense.hardware.clone()],
            &segs,
        );
        std::fs::write(p, svg).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let speedup = dense.latency_us / hdpa.latency_us;
    if a.json {
        let mut out = json!({
            "workload": source, "simulated_in_s": sim_s, "energy_table": energy.source, "process_nm": energy.process_nm,
            "hdpa": hdpa, "dense": dense, "speedup_vs_dense": speedup,
            "energy_ratio_dense_over_hdpa": dense.energy_uj / hdpa.energy_uj,
        });
        if let Some(ms) = cpu {
            out["cpu_measured"] = json!({"what": "our fast dense attention kernel on this machine, all layers, median of 3", "ms": ms,
                "hdpa_speedup_vs_cpu": ms * 1e3 / hdpa.latency_us});
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "workload: {source}; energy: {} ({} nm); simulated in {sim_s:.2} s",
        energy.source, energy.process_nm
    );
    println!("{:<28} {:>14} {:>14}", "", hdpa.hardware, dense.hardware);
    let row = |k: &str, f: &dyn Fn(&Report) -> String| {
        println!("{k:<28} {:>14} {:>14}", f(&hdpa), f(&dense))
    };
    row("cycles", &|r| format!("{:.4e}", r.cycles));
    row("latency (us)", &|r| format!("{:.1}", r.latency_us));
    row("throughput (dense-eq GOP/s)", &|r| {
        format!("{:.1}", r.throughput_gops)
    });
    row("MAC efficiency", &|r| format!("{:.3}", r.mac_efficiency));
    row("energy (uJ)", &|r| format!("{:.1}", r.energy_uj));
    row("GOP/s per W", &|r| format!("{:.1}", r.gops_per_w));
    row("memory-bound cycles", &|r| {
        format!("{:.1}%", 100.0 * r.memory_bound_cycles / r.cycles)
    });
    row("DRAM (MB)", &|r| format!("{:.2}", r.dram_bytes / 1e6));
    println!(
        "speedup vs dense {speedup:.2}x, energy {:.2}x less",
        dense.energy_uj / hdpa.energy_uj
    );
    println!(
        "{:<14} {:>12} {:>8} {:>12}   (HDPA units)",
        "unit", "busy cycles", "util", "energy uJ"
    );
    for u in &hdpa.units {
        println!(
            "{:<14} {:>12.4e} {:>7.1}% {:>12.2}",
            u.name,
            u.busy_cycles,
            100.0 * u.utilization,
            u.energy_pj * 1e-6
        );
    }
    if let Some(ms) = cpu {
        println!(
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
