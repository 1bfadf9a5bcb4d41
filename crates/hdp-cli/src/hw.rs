//! `hdp hw`: the HDPA core's hardware side: the generated exponential table of the RTL, and
//! test vectors (synthetic, or a real layer's Q/K/V through the host driver) with the
//! bit-accurate model's expected results, for the Verilator testbench (`rtl/test.sh`).

use crate::args::HdpArgs;
use crate::io::load_problem;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hdp_hw::core::CoreParams;
use hdp_hw::driver::attention_layer;
use hdp_hw::vectors::{lut_svh, synthetic_cases, write_vectors, Case};
use std::path::PathBuf;

/// `hdp hw` subcommands.
#[derive(Subcommand, Debug)]
pub enum HwCommand {
    /// Write the exponential table's SystemVerilog include (the RTL's rtl/exp2_lut.svh).
    Lut {
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Write test vectors with the bit-accurate model's expected outputs, kept keys,
    /// importances and cycle counts.
    Vectors(Box<VectorsArgs>),
}

/// Flags of `hdp hw vectors`.
#[derive(Args, Debug)]
pub struct VectorsArgs {
    /// Hardware: edge, server, or a preset TOML file; sets the core's parallelism.
    #[arg(long, default_value = "edge")]
    pub preset: String,
    /// Head dimension of the core (with --qkv: taken from the file).
    #[arg(long, default_value_t = 32)]
    pub d: usize,
    /// Largest sequence the core's buffers hold (with --qkv: at least the file's N).
    #[arg(long, default_value_t = 64)]
    pub n_max: usize,
    /// Override the preset's parallelism: KI,P,KF,E,KS[,NL] (integer keys, pruning lanes,
    /// fraction keys, exponentials, S.V keys, normalized dimensions per cycle).
    #[arg(long)]
    pub lanes: Option<String>,
    /// Override the preset's top-k search: threshold bits decided per pass (1, 2, 3 or 6).
    #[arg(long)]
    pub search_bits: Option<u32>,
    /// Synthetic cases (without --qkv).
    #[arg(long, default_value_t = 40)]
    pub cases: usize,
    /// Seed of the synthetic cases.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A real layer's Q/K/V (.npy from `hdp eval --dump-qkv`, or .safetensors): one case per
    /// head, quantized and pruned by the host driver exactly as `--datapath hw` runs it.
    #[arg(long)]
    pub qkv: Option<PathBuf>,
    /// Causal mask on --qkv.
    #[arg(long)]
    pub causal: bool,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// HDP options for --qkv (compensation defaults to off: the core has none).
    #[command(flatten)]
    pub hdp: HdpArgs,
}

/// Runs `hdp hw`.
pub fn run(c: &HwCommand) -> Result<()> {
    match c {
        HwCommand::Lut { output } => {
            let s = lut_svh();
            match output {
                Some(p) => std::fs::write(p, s).with_context(|| format!("writing {p:?}"))?,
                None => print!("{s}"),
            }
            Ok(())
        }
        HwCommand::Vectors(a) => vectors(a),
    }
}

fn parse_lanes(s: &str, p: &mut CoreParams) -> Result<()> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("--lanes {s:?}: expected integers KI,P,KF,E,KS[,NL]"))?;
    let (&[ki, pl, kf, e, ks], nl) = (&v[..v.len().min(5)], v.get(5)) else {
        bail!("--lanes {s:?}: expected five or six integers KI,P,KF,E,KS[,NL]");
    };
    if v.len() > 6 {
        bail!("--lanes {s:?}: expected five or six integers KI,P,KF,E,KS[,NL]");
    }
    (p.int_keys, p.prune_lanes, p.frac_keys, p.exps, p.sv_keys) = (ki, pl, kf, e, ks);
    if let Some(&nl) = nl {
        p.norm_lanes = nl;
    }
    Ok(())
}

fn vectors(a: &VectorsArgs) -> Result<()> {
    let (hw, _) = hdp_sim::load_preset(&a.preset)?;
    let cfg = hdp_hw::driver::hw_config(&a.hdp)?;
    let f = cfg.q_format.frac_bits;
    let (cases, params) = match &a.qkv {
        None => {
            let mut p = CoreParams::from_preset(&hw, a.d, a.n_max, f);
            if let Some(s) = &a.lanes {
                parse_lanes(s, &mut p)?;
            }
            if let Some(r) = a.search_bits {
                p.search_bits = r;
            }
            p.validate()?;
            (synthetic_cases(&p, a.cases, a.seed), p)
        }
        Some(path) => {
            let prob = load_problem(path, a.causal)?;
            let dims = prob.dims();
            let mut p = CoreParams::from_preset(&hw, dims.head_dim, a.n_max.max(dims.seq_len), f);
            if let Some(s) = &a.lanes {
                parse_lanes(s, &mut p)?;
            }
            if let Some(r) = a.search_bits {
                p.search_bits = r;
            }
            p.validate()?;
            let run = attention_layer(&p, &prob, &cfg)?;
            let cases = run
                .heads
                .into_iter()
                .map(|h| Case {
                    job: h.job,
                    pruned: h.pruned,
                })
                .collect();
            (cases, p)
        }
    };
    let text = write_vectors(&params, &cases)?;
    std::fs::write(&a.output, text).with_context(|| format!("writing {:?}", a.output))?;
    let kept: usize = cases
        .iter()
        .map(|c| c.job.kcount.iter().map(|&k| k as usize).sum::<usize>())
        .sum();
    let valid: usize = cases
        .iter()
        .map(|c| (0..c.job.n).map(|i| c.job.valid_keys(i)).sum::<usize>())
        .sum();
    eprintln!(
        "{} cases for the core {} -> {:?}: {:.1}% of valid entries pruned, {} heads pruned",
        cases.len(),
        params
            .rtl_overrides()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        a.output,
        100.0 * (1.0 - kept as f64 / valid.max(1) as f64),
        cases.iter().filter(|c| c.pruned).count()
    );
    Ok(())
}
