//! `hdp`: Hybrid Dynamic Pruning attention on the command line.

#[macro_use]
mod out;
mod args;
mod attention;
mod bench;
mod embed;
mod eval;
mod hw;
mod io;
mod sim;

use clap::{Parser, Subcommand};

/// Hybrid Dynamic Pruning: integer-decided block and head pruning of self-attention.
#[derive(Parser, Debug)]
#[command(name = "hdp", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Dense vs HDP attention (reference implementations) on synthetic or loaded Q/K/V.
    Attention(attention::AttentionArgs),
    /// Accuracy of a real model on labeled data, dense vs HDP attention.
    Eval(eval::EvalArgs),
    /// Benchmarks of the fast kernels.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Embed your own texts, dense or HDP, as JSONL, .npy or a table.
    Embed(embed::EmbedArgs),
    /// Simulate the HDPA accelerator and a dense accelerator on a trace or a model shape.
    Sim(sim::SimArgs),
    /// Sweep HDP options on a task: accuracy vs sparsity, Pareto front, plot.
    Sweep(eval::SweepArgs),
    /// Choose per-layer thresholds that keep a target embedding fidelity at the highest
    /// sparsity found, on calibration texts; writes a file for --calibration.
    Calibrate(eval::CalibrateArgs),
    /// The HDPA core in hardware terms: RTL test vectors and generated tables.
    #[command(subcommand)]
    Hw(hw::HwCommand),
}

fn main() {
    // Die quietly on a closed pipe (`hdp ... | head`) as Unix tools do, instead of panicking.
    #[cfg(unix)]
    // SAFETY: restoring the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // A tier named by HDP_ISA that is unknown or missing on this CPU is an error, not a
    // silent fallback.
    if let Err(e) = hdp_attention::fast::Isa::from_env() {
        eprintln!("error: {e} (unset HDP_ISA to use the best tier)");
        std::process::exit(1);
    }
    let result = match &cli.command {
        Command::Attention(a) => attention::run(a),
        Command::Eval(a) => eval::run_eval(a),
        Command::Embed(a) => embed::run(a),
        Command::Bench(c) => bench::run(c),
        Command::Sim(a) => sim::run(a),
        Command::Sweep(a) => eval::run_sweep(a),
        Command::Calibrate(a) => eval::run_calibrate(a),
        Command::Hw(c) => hw::run(c),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
