//! `hdp embed`: sentence embeddings for a user's texts, dense or HDP, as JSONL, .npy or a table.

use crate::args::{HdpArgs, HdpArgsExt};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use hdp_models::bert::Stage;
use hdp_models::{default_model_dir, AttentionBackend, DenseFast, HdpBackend, SentenceEmbedder};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Attention used by `embed`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum AttentionArg {
    /// Dense softmax attention.
    Dense,
    /// Hybrid Dynamic Pruning (fast kernels), with the HDP flags.
    Hdp,
}

/// Output format of `embed`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum FormatArg {
    /// One JSON object per line: index, text, tokens, truncated, embedding (and HDP sparsity).
    Jsonl,
    /// float32 .npy array [texts, dim], rows in input order (needs --output).
    Npy,
    /// A readable preview: first values of each embedding.
    Table,
}

/// Flags of `hdp embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Texts to embed. Without texts, --file or --jsonl, lines are read from standard input.
    pub texts: Vec<String>,
    /// A file with one text per line ("-" = standard input).
    #[arg(long, conflicts_with = "jsonl")]
    pub file: Option<PathBuf>,
    /// A JSONL file whose objects carry a "text" field.
    #[arg(long, conflicts_with = "texts")]
    pub jsonl: Option<PathBuf>,
    /// Hugging Face-layout model folder (default: the packaged all-MiniLM-L6-v2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Per-layer thresholds from `hdp calibrate` (HDP attention).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Dense or HDP attention.
    #[arg(long, value_enum, default_value = "dense")]
    pub attention: AttentionArg,
    #[command(flatten)]
    pub hdp: HdpArgs,
    /// Maximum tokens per text (default: the model's sentence-transformers setting).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// L2-normalize embeddings (default: as sentence-transformers does for this model).
    #[arg(long)]
    pub normalize: Option<bool>,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: FormatArg,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// With --attention hdp, an SVG: for a single text, the kept-block mask of every head of
    /// every layer; for several, a layers x heads heatmap of kept and pruned fractions.
    #[arg(long)]
    pub heatmap: Option<PathBuf>,
    /// Most tokens per forward pass (bounds memory; a longer text runs alone)
    #[arg(long, default_value_t = hdp_models::embedder::DEFAULT_MAX_BATCH_TOKENS)]
    pub max_batch_tokens: usize,
    /// Print where the time went (tokenization and each stage of the forward pass) to standard
    /// error
    #[arg(long)]
    pub profile: bool,
}

fn lines_of(reader: impl Read, origin: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(reader).split(b'\n').enumerate() {
        let mut bytes = line.with_context(|| format!("reading {origin}"))?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| anyhow::anyhow!("line {} of {origin} is not valid UTF-8 (byte {} of the line); convert the file to UTF-8", i + 1, e.utf8_error().valid_up_to()))?;
        out.push(text);
    }
    Ok(out)
}

fn read_texts(a: &EmbedArgs) -> Result<Vec<String>> {
    if let Some(p) = &a.jsonl {
        let lines = lines_of(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
            &p.display().to_string(),
        )?;
        return lines
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .with_context(|| format!("line {} of {} is not JSON", i + 1, p.display()))?;
                v["text"].as_str().map(String::from).with_context(|| {
                    format!(
                        "line {} of {} has no string \"text\" field",
                        i + 1,
                        p.display()
                    )
                })
            })
            .collect();
    }
    let mut texts = a.texts.clone();
    match &a.file {
        Some(p) if p == Path::new("-") => {
            texts.extend(lines_of(std::io::stdin(), "standard input")?)
        }
        Some(p) => texts.extend(lines_of(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
            &p.display().to_string(),
        )?),
        None if texts.is_empty() => {
            if std::io::stdin().is_terminal() {
                bail!(
                    "no texts: pass them as arguments, with --file/--jsonl, or on standard input"
                );
            }
            texts = lines_of(std::io::stdin(), "standard input")?;
        }
        None => {}
    }
    Ok(texts)
}

/// Runs `hdp embed`.
pub fn run(a: &EmbedArgs) -> Result<()> {
    let texts = read_texts(a)?;
    if texts.is_empty() {
        bail!("no texts to embed (the input was empty)");
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if a.max_batch_tokens == 0 {
        bail!("--max-batch-tokens must be at least 1");
    }
    if a.format == FormatArg::Npy && a.output.is_none() {
        bail!("--format npy writes a binary file: give it with --output FILE.npy");
    }
    let dir = a.model.clone().unwrap_or_else(default_model_dir);
    let mut model =
        SentenceEmbedder::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
    if let Some(m) = a.max_length {
        model.set_max_length(m)?;
    }
    model.max_batch_tokens = a.max_batch_tokens;
    let normalize = a.normalize.unwrap_or(model.normalizes);
    let t_tok = Instant::now();
    let enc = model.tokenize(&texts)?;
    let tokenize_secs = t_tok.elapsed().as_secs_f64();
    for (i, e) in enc.iter().enumerate() {
        if e.truncated {
            eprintln!(
                "warning: text {i} is longer than {} tokens and was truncated (--max-length)",
                model.max_length()
            );
        }
        if texts[i].trim().is_empty() {
            eprintln!("warning: text {i} is empty; its embedding is that of [CLS] [SEP]");
        }
    }
    if a.attention == AttentionArg::Dense {
        a.hdp.refuse_if_given("--attention is dense")?;
        if a.calibration.is_some() {
            bail!("--calibration applies to HDP attention; drop it or use --attention hdp");
        }
    }
    let t0 = Instant::now();
    let mut hdp = match a.attention {
        // One text with --heatmap: keep its full trace for the per-layer, per-head masks.
        AttentionArg::Hdp => {
            let b = HdpBackend::new(
                a.hdp.config()?,
                usize::from(texts.len() == 1 && a.heatmap.is_some()),
            )?;
            Some(match &a.calibration {
                Some(path) => b.with_layer_thresholds(
                    crate::eval::load_calibration(path, &model, &a.hdp)?.thresholds,
                )?,
                None => b,
            })
        }
        AttentionArg::Dense => None,
    };
    let backend: &mut dyn AttentionBackend = match &mut hdp {
        Some(h) => h,
        None => &mut DenseFast::default(),
    };
    let emb = model.embed_encoded(&enc, backend, a.batch_size, normalize, &mut |_| {})?;
    let secs = t0.elapsed().as_secs_f64();
    if let Some(path) = &a.heatmap {
        let h = hdp.as_ref().context("--heatmap needs --attention hdp")?;
        match &h.trace {
            Some(trace) => crate::attention::write_plot(path, trace)?,
            None => crate::eval::write_heatmap(
                path,
                &format!("{} texts from hdp embed", texts.len()),
                h,
            )?,
        }
    }

    let seq_sparsity = |i: usize| {
        hdp.as_ref()
            .and_then(|h| h.sequence_stats.get(&i))
            .map(|s| {
                let b = if s.valid_blocks == 0 {
                    0.0
                } else {
                    1.0 - s.kept_blocks as f64 / s.valid_blocks as f64
                };
                (b, s.pruned as f64 / s.runs.max(1) as f64)
            })
    };
    let write_text = |sink: &mut dyn Write| -> std::io::Result<()> {
        match a.format {
            FormatArg::Npy => unreachable!("npy is written below"),
            FormatArg::Jsonl => {
                for (i, (t, e)) in texts.iter().zip(&emb).enumerate() {
                    let mut row = serde_json::json!({
                        "index": i, "text": t, "tokens": enc[i].ids.len(), "truncated": enc[i].truncated, "embedding": e,
                    });
                    if let Some((b, h)) = seq_sparsity(i) {
                        row["block_sparsity"] = b.into();
                        row["head_sparsity"] = h.into();
                    }
                    writeln!(sink, "{row}")?;
                }
            }
            FormatArg::Table => {
                writeln!(
                    sink,
                    "{:>5}  {:>6}  {:<40}  first values of the embedding (dim {})",
                    "index",
                    "tokens",
                    "text",
                    emb[0].len()
                )?;
                for (i, (t, e)) in texts.iter().zip(&emb).enumerate() {
                    let short: String = t.chars().take(38).collect();
                    let short = if t.chars().count() > 38 {
                        format!("{short}..")
                    } else {
                        short
                    };
                    let vals: Vec<String> = e.iter().take(6).map(|x| format!("{x:+.4}")).collect();
                    let extra = seq_sparsity(i).map_or(String::new(), |(b, h)| {
                        format!("  sparsity {:.0}% heads {:.0}%", 100.0 * b, 100.0 * h)
                    });
                    writeln!(
                        sink,
                        "{i:>5}  {:>6}  {short:<40}  {} ...{extra}",
                        enc[i].ids.len(),
                        vals.join(" ")
                    )?;
                }
            }
        }
        Ok(())
    };
    match (&a.output, a.format) {
        (Some(path), FormatArg::Npy) => {
            let flat: Vec<f32> = emb.iter().flatten().copied().collect();
            hdp_core::npy::write(path, &[emb.len(), emb[0].len()], &flat)?;
        }
        (Some(path), _) => hdp_core::io::write_atomic(path, write_text)?,
        (None, _) => crate::out::with_stdout(write_text)?,
    }
    let mut summary = format!(
        "embedded {} texts (dim {}, {}normalized) with {} attention in {secs:.2} s",
        emb.len(),
        emb[0].len(),
        if normalize { "" } else { "not " },
        if hdp.is_some() { "HDP" } else { "dense" }
    );
    if let Some(h) = &hdp {
        let s = h.summary();
        summary += &format!(
            "; block sparsity {:.1}%, head sparsity {:.1}%",
            100.0 * s.block_sparsity(),
            100.0 * s.head_sparsity()
        );
    }
    if let Some(mib) = peak_rss_mib() {
        summary += &format!("; peak memory {mib:.0} MiB");
    }
    let truncated = enc.iter().filter(|e| e.truncated).count();
    if truncated > 0 {
        summary += &format!("; {truncated} truncated to {} tokens", model.max_length());
    }
    eprintln!("{summary}");
    if a.profile {
        let p = model.profile();
        let forward: f64 = p.seconds.iter().sum();
        let tokens: usize = enc.iter().map(|e| e.ids.len()).sum();
        eprintln!(
            "profile ({} texts, {tokens} tokens, {} thread(s), dense layers on {}):",
            texts.len(),
            rayon::current_num_threads(),
            model.model_tier().name()
        );
        let mut rows = vec![("tokenization", tokenize_secs)];
        rows.extend(Stage::ALL.iter().map(|&s| (s.name(), p.get(s))));
        rows.push(("pooling, checks, bookkeeping", (secs - forward).max(0.0)));
        let total = tokenize_secs + secs;
        for (name, t) in rows {
            eprintln!(
                "  {name:<30} {t:>8.3} s  {:>5.1}%",
                100.0 * t / total.max(1e-12)
            );
        }
        eprintln!("  {:<30} {total:>8.3} s", "total");
    }
    Ok(())
}

/// Peak resident memory of this process (`VmHWM`), where the OS reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
