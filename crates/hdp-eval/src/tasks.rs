//! Evaluation tasks. An [`Evaluation`] is prepared once per task (data loaded, dense embeddings
//! computed or read from the cache, classification head trained on dense embeddings); then
//! [`Evaluation::run_hdp`] measures any number of HDP configurations against the same dense
//! baseline (that is what a sweep does).

use crate::data::{self, Labeled, UserData};
use crate::logreg::LogReg;
use crate::metrics::{accuracy, cosine, pearson, relative_l1, rmse, spearman};
use crate::{Error, Result};
use hdp_attention::ValidConfig;
use hdp_models::{AttentionBackend, DenseFast, Encoded, HdpBackend, HdpKernel, SentenceEmbedder};
use serde::Serialize;
use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

/// The built-in tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Rotten Tomatoes snippets, fresh vs rotten: accuracy of a logistic head on embeddings.
    RtSentiment,
    /// Lee documents: Pearson correlation of embedding cosine with human similarity.
    LeeSimilarity,
    /// Brown passages at 128/256/512 tokens: cosine of HDP to dense embeddings.
    Fidelity,
    /// Brown files' first 512 tokens, 15 genres (the file name's second letter): accuracy of a
    /// logistic head trained on dense embeddings; every fifth file of each genre is test.
    BrownGenre,
    /// Brown files cut in two halves by words, the first 512 tokens of each: for each second
    /// half, the rank of its own first half among all first halves by cosine (recall@1, MRR).
    BrownRetrieval,
}

impl Task {
    /// Every built-in task.
    pub const ALL: [Task; 5] = [
        Task::RtSentiment,
        Task::LeeSimilarity,
        Task::Fidelity,
        Task::BrownGenre,
        Task::BrownRetrieval,
    ];

    /// The task's name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Task::RtSentiment => "rt-sentiment",
            Task::LeeSimilarity => "lee-similarity",
            Task::Fidelity => "fidelity",
            Task::BrownGenre => "brown-genre",
            Task::BrownRetrieval => "brown-retrieval",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Task> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<_> = Task::ALL.iter().map(|t| t.name()).collect();
                Error::Invalid(format!(
                    "unknown task {s:?}; choose one of {} or pass --data FILE",
                    names.join(", ")
                ))
            })
    }
}

/// The headline metric of an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Share of test items classified correctly.
    Accuracy,
    /// Pearson correlation of predicted and gold similarity.
    Pearson,
    /// Mean cosine of HDP to dense embeddings.
    MeanCosine,
    /// Share of queries whose own document ranks first.
    RecallAt1,
}

impl Metric {
    /// Human-readable name (tables, plot axes).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::Pearson => "pearson",
            Metric::MeanCosine => "mean cosine(dense, hdp)",
            Metric::RecallAt1 => "recall@1",
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Progress callback: (stage, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// `e` cut to at most `len` tokens, `[CLS] ... [SEP]`: the last token (`[SEP]`) kept at the
/// end (marked truncated).
pub(crate) fn cut_to(e: &Encoded, len: usize) -> Encoded {
    let sep = *e.ids.last().unwrap_or(&0);
    let keep = len.min(e.ids.len()) - 1;
    let mut ids = e.ids[..keep].to_vec();
    ids.push(sep);
    Encoded {
        type_ids: vec![0; ids.len()],
        ids,
        truncated: true,
    }
}

/// Options shared by every task.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Maximum tokens per text; `None` = the task's default (rt: the model's 256, lee: 512,
    /// fidelity: passages of 128, 256 and 512 tokens).
    pub max_length: Option<usize>,
    /// Evaluate only the first `limit` test items (and train on at most 4x as many).
    pub limit: Option<usize>,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Where dense embeddings are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Folder of the packaged data.
    pub assets: PathBuf,
}

/// Named metrics of one side (dense or HDP); `metric` is the task's headline figure.
pub type Metrics = BTreeMap<String, f64>;

enum Scorer {
    Classify {
        head: LogReg,
        labels: Vec<usize>,
    },
    Pairs {
        pairs: Vec<(usize, usize, f64)>,
    },
    Fidelity {
        lengths: Vec<usize>,
    },
    /// Texts `0..n` are documents, `n..2n` their queries (query `i` belongs to document `i`).
    Retrieval {
        docs: usize,
    },
}

/// A prepared task: the texts HDP will embed, their dense embeddings and the scorer.
pub struct Evaluation {
    /// Task name (a built-in [`Task`]'s name, or `user-classification` / `user-pairs`).
    pub task: String,
    /// What `metric` means.
    pub metric_name: Metric,
    /// Maximum tokens per text used.
    pub max_length: usize,
    enc: Vec<Encoded>,
    dense: Vec<Vec<f32>>,
    scorer: Scorer,
    /// Dense metrics.
    pub dense_metrics: Metrics,
}

/// HDP side of one evaluation run.
#[derive(Clone, Debug, Serialize)]
pub struct HdpResult {
    /// HDP metrics (same keys as dense, plus embedding fidelity).
    pub metrics: Metrics,
    /// Pruned valid blocks / valid blocks (block pruning alone).
    pub block_sparsity: f64,
    /// Not computed / valid, block and head pruning together.
    pub effective_block_sparsity: f64,
    /// Pruned heads / heads.
    pub head_sparsity: f64,
    /// Work by category, dense vs HDP.
    pub macs: MacReport,
}

/// Attention work by category over the evaluated texts (all layers and heads).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MacReport {
    /// Dense float Q.K^T MACs over valid entries.
    pub dense_qk_macs: u64,
    /// Dense P.V MACs.
    pub dense_sv_macs: u64,
    /// Dense exponentials.
    pub dense_exps: u64,
    /// HDP low-bit integer MACs (Q_int.K_int^T, every valid block).
    pub hdp_int_macs: u64,
    /// HDP score-refinement MACs of computed blocks.
    pub hdp_frac_macs: u64,
    /// HDP P.V MACs.
    pub hdp_sv_macs: u64,
    /// HDP exponentials.
    pub hdp_exps: u64,
    /// 1 - hdp_sv / dense_sv.
    pub sv_macs_saved: f64,
    /// 1 - hdp_exps / dense_exps: the share of full-precision scores, exponentials and S.V
    /// rows avoided.
    pub exps_saved: f64,
}

/// Dense embeddings of `enc`, from the cache when present. The key covers the model folder's
/// weights (size and modification time), the token ids, the pooling/normalization and the
/// version of the runtime's arithmetic.
pub fn dense_embeddings(
    model: &SentenceEmbedder,
    enc: &[Encoded],
    opts: &EvalOptions,
    progress: Progress,
) -> Result<Vec<Vec<f32>>> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let weights = model.dir.join("model.safetensors");
    if let Ok(m) = std::fs::metadata(&weights) {
        h.write(&m.len().to_le_bytes());
        if let Ok(t) = m.modified() {
            h.write(format!("{t:?}").as_bytes());
        }
    }
    h.write(model.dir.to_string_lossy().as_bytes());
    for e in enc {
        h.write(&(e.ids.len() as u64).to_le_bytes());
        for id in &e.ids {
            h.write(&id.to_le_bytes());
        }
    }
    // v2: the model runtime's own forward pass (row-invariant dense layers, no padding).
    let key = format!("dense-v2-{:016x}.npy", h.finish());
    let path = opts.cache_dir.as_ref().map(|d| d.join(&key));
    if let Some(p) = &path {
        // A cache of the wrong shape (corrupted, or written by another model) is recomputed.
        if let Ok((shape, data)) = hdp_core::npy::read(p) {
            if shape.len() == 2 && shape[0] == enc.len() && shape[1] > 0 {
                return Ok(data.chunks(shape[1]).map(<[f32]>::to_vec).collect());
            }
        }
    }
    let total = enc.len();
    let out = model.embed_encoded(
        enc,
        &mut DenseFast::default(),
        opts.batch_size,
        true,
        &mut |d| progress("dense embeddings", d, total),
    )?;
    if let Some(p) = &path {
        let dim = out.first().map_or(0, Vec::len);
        let flat: Vec<f32> = out.iter().flatten().copied().collect();
        // A cache that cannot be written only costs time on the next run.
        let _ = std::fs::create_dir_all(p.parent().unwrap_or(Path::new(".")))
            .map_err(|_| ())
            .and_then(|_| hdp_core::npy::write(p, &[out.len(), dim], &flat).map_err(|_| ()));
    }
    Ok(out)
}

fn take<T: Clone>(v: &[T], n: Option<usize>) -> Vec<T> {
    v[..n.map_or(v.len(), |n| n.min(v.len()))].to_vec()
}

impl Evaluation {
    /// Prepares a built-in task (`rt-sentiment`, `lee-similarity`, `fidelity`) or, with
    /// `data_file`, a user's file. Sets the model's max length as the task needs.
    pub fn prepare(
        model: &mut SentenceEmbedder,
        task: Task,
        data_file: Option<&Path>,
        opts: &EvalOptions,
        progress: Progress,
    ) -> Result<Evaluation> {
        if let Some(path) = data_file {
            return match data::user_data(path)? {
                UserData::Classification(l) => {
                    Self::classification(model, "user-classification", l, opts, progress)
                }
                UserData::Pairs(p) => Self::user_pairs(model, p, opts, progress),
            };
        }
        if opts.limit == Some(0) {
            return Err(Error::Invalid(
                "--limit 0 leaves nothing to evaluate; give at least 1".into(),
            ));
        }
        match task {
            Task::RtSentiment => {
                let l = data::rotten_tomatoes(&opts.assets)?;
                Self::classification(model, task.name(), l, opts, progress)
            }
            Task::LeeSimilarity => {
                model.set_max_length(opts.max_length.unwrap_or(512))?;
                let lee = data::lee(&opts.assets)?;
                let enc = model.tokenize(&lee.docs)?;
                let pairs: Vec<_> = take(&lee.pairs, opts.limit);
                Self::pairs(model, task.name(), enc, pairs, opts, progress)
            }
            Task::Fidelity => Self::fidelity(model, opts, progress),
            Task::BrownGenre => {
                model.set_max_length(opts.max_length.unwrap_or(512))?;
                let files = data::brown_files(&opts.assets, usize::MAX)?;
                let mut genres: Vec<char> =
                    files.iter().filter_map(|f| f.0.chars().nth(1)).collect();
                genres.sort_unstable();
                genres.dedup();
                let mut l = data::Labeled {
                    classes: genres.iter().map(|g| g.to_string()).collect(),
                    train: Vec::new(),
                    train_labels: Vec::new(),
                    test: Vec::new(),
                    test_labels: Vec::new(),
                };
                // Genres in rounds (the first file of each genre, then the second, ...), so
                // that --limit keeps every genre.
                let mut by_genre: Vec<Vec<String>> = vec![Vec::new(); genres.len()];
                for (name, text) in files {
                    if let Some(c) = name
                        .chars()
                        .nth(1)
                        .and_then(|g| genres.iter().position(|&x| x == g))
                    {
                        by_genre[c].push(text);
                    }
                }
                let rounds = by_genre.iter().map(Vec::len).max().unwrap_or(0);
                let mut seen = vec![0usize; genres.len()];
                for (_, c, text) in (0..rounds).flat_map(|r| {
                    by_genre
                        .iter()
                        .enumerate()
                        .filter_map(move |(c, fs)| fs.get(r).map(|t| (r, c, t.clone())))
                }) {
                    seen[c] += 1;
                    // Every fifth file of each genre (the 5th, 10th, ...) is test: split by file.
                    if seen[c].is_multiple_of(5) {
                        l.test.push(text);
                        l.test_labels.push(c);
                    } else {
                        l.train.push(text);
                        l.train_labels.push(c);
                    }
                }
                Self::classification(model, task.name(), l, opts, progress)
            }
            Task::BrownRetrieval => Self::retrieval(model, opts, progress),
        }
    }

    fn retrieval(
        model: &mut SentenceEmbedder,
        opts: &EvalOptions,
        progress: Progress,
    ) -> Result<Evaluation> {
        model.set_max_length(opts.max_length.unwrap_or(512))?;
        let files = data::brown_files(&opts.assets, opts.limit.unwrap_or(usize::MAX))?;
        if files.len() < 2 {
            return Err(Error::Invalid(format!(
                "brown-retrieval: {} Brown files; retrieval needs at least 2 (run \
                 scripts/fetch_assets.py, or a larger --limit)",
                files.len()
            )));
        }
        let (mut docs, mut queries) = (Vec::new(), Vec::new());
        for (_, text) in &files {
            let words: Vec<&str> = text.split_whitespace().collect();
            let half = words.len() / 2;
            docs.push(words[..half].join(" "));
            queries.push(words[half..].join(" "));
        }
        let n = docs.len();
        docs.extend(queries);
        let enc = model.tokenize(&docs)?;
        let dense = dense_embeddings(model, &enc, opts, progress)?;
        let scorer = Scorer::Retrieval { docs: n };
        let mut dense_metrics = score_retrieval(n, &dense);
        dense_metrics.insert("documents".into(), n as f64);
        Ok(Evaluation {
            task: Task::BrownRetrieval.name().into(),
            metric_name: Metric::RecallAt1,
            max_length: model.max_length(),
            enc,
            dense,
            scorer,
            dense_metrics,
        })
    }

    fn classification(
        model: &mut SentenceEmbedder,
        task: &str,
        l: Labeled,
        opts: &EvalOptions,
        progress: Progress,
    ) -> Result<Evaluation> {
        if let Some(m) = opts.max_length {
            model.set_max_length(m)?;
        }
        let train = take(&l.train, opts.limit.map(|n| 4 * n));
        let train_labels = take(&l.train_labels, opts.limit.map(|n| 4 * n));
        let test = take(&l.test, opts.limit);
        let labels = take(&l.test_labels, opts.limit);
        let classes_in = |ls: &[usize]| {
            let mut seen = vec![false; l.classes.len()];
            ls.iter().for_each(|&c| seen[c] = true);
            seen.iter().filter(|&&s| s).count()
        };
        if test.is_empty() || classes_in(&train_labels) < 2 {
            return Err(Error::Invalid(format!(
                "{task}: {} training items in {} classes and {} test items; a classifier needs \
                 training items of at least 2 classes and at least 1 test item (more rows, or a larger --limit)",
                train.len(),
                classes_in(&train_labels),
                test.len()
            )));
        }
        let mut all = train.clone();
        all.extend_from_slice(&test);
        let enc_all = model.tokenize(&all)?;
        let dense_all = dense_embeddings(model, &enc_all, opts, progress)?;
        let (dense_train, dense_test) = dense_all.split_at(train.len());
        let head = LogReg::train(dense_train, &train_labels, l.classes.len());
        let mut dense_metrics = Metrics::new();
        let acc = accuracy(&head.predict_all(dense_test), &labels);
        dense_metrics.insert("metric".into(), acc);
        dense_metrics.insert("accuracy".into(), acc);
        dense_metrics.insert(
            "train_accuracy".into(),
            accuracy(&head.predict_all(dense_train), &train_labels),
        );
        let majority = (0..l.classes.len())
            .map(|c| labels.iter().filter(|&&x| x == c).count())
            .max()
            .unwrap_or(0) as f64
            / labels.len().max(1) as f64;
        dense_metrics.insert("majority_class".into(), majority);
        dense_metrics.insert("test_items".into(), test.len() as f64);
        dense_metrics.insert("train_items".into(), train.len() as f64);
        Ok(Evaluation {
            task: task.into(),
            metric_name: Metric::Accuracy,
            max_length: model.max_length(),
            enc: enc_all[train.len()..].to_vec(),
            dense: dense_test.to_vec(),
            scorer: Scorer::Classify { head, labels },
            dense_metrics,
        })
    }

    fn pairs(
        model: &SentenceEmbedder,
        task: &str,
        enc: Vec<Encoded>,
        pairs: Vec<(usize, usize, f64)>,
        opts: &EvalOptions,
        progress: Progress,
    ) -> Result<Evaluation> {
        if pairs.len() < 3 {
            return Err(Error::Invalid(format!(
                "{task}: {} pairs; a correlation needs at least 3 (more rows, or a larger --limit)",
                pairs.len()
            )));
        }
        let dense = dense_embeddings(model, &enc, opts, progress)?;
        let scorer = Scorer::Pairs { pairs };
        let mut dense_metrics = score_pairs(&scorer, &dense);
        dense_metrics.insert(
            "truncated_texts".into(),
            enc.iter().filter(|e| e.truncated).count() as f64,
        );
        Ok(Evaluation {
            task: task.into(),
            metric_name: Metric::Pearson,
            max_length: model.max_length(),
            enc,
            dense,
            scorer,
            dense_metrics,
        })
    }

    fn user_pairs(
        model: &mut SentenceEmbedder,
        p: Vec<(String, String, f64)>,
        opts: &EvalOptions,
        progress: Progress,
    ) -> Result<Evaluation> {
        if let Some(m) = opts.max_length {
            model.set_max_length(m)?;
        }
        let p = take(&p, opts.limit);
        let mut texts = Vec::with_capacity(2 * p.len());
        let mut pairs = Vec::with_capacity(p.len());
        for (a, b, s) in p {
            pairs.push((texts.len(), texts.len() + 1, s));
            texts.push(a);
            texts.push(b);
        }
        let enc = model.tokenize(&texts)?;
        Self::pairs(model, "user-pairs", enc, pairs, opts, progress)
    }

    fn fidelity(
        model: &mut SentenceEmbedder,
        opts: &EvalOptions,
        progress: Progress,
    ) -> Result<Evaluation> {
        let lengths: Vec<usize> = match opts.max_length {
            Some(m) => vec![m],
            None => vec![128, 256, 512],
        };
        let longest = *lengths.iter().max().unwrap_or(&512);
        model.set_max_length(longest)?;
        let passages = data::brown(&opts.assets, opts.limit.unwrap_or(16))?;
        if passages.is_empty() {
            return Err(Error::Invalid(
                "fidelity: no Brown passages found (run scripts/fetch_assets.py)".into(),
            ));
        }
        let full = model.tokenize(&passages)?;
        let mut enc = Vec::new();
        for &len in &lengths {
            // Brown files are longer than 512 tokens.
            enc.extend(full.iter().map(|e| cut_to(e, len)));
        }
        let dense = dense_embeddings(model, &enc, opts, progress)?;
        let mut dense_metrics = Metrics::new();
        dense_metrics.insert("metric".into(), 1.0);
        dense_metrics.insert("passages".into(), passages.len() as f64);
        Ok(Evaluation {
            task: "fidelity".into(),
            metric_name: Metric::MeanCosine,
            max_length: longest,
            enc,
            dense,
            scorer: Scorer::Fidelity { lengths },
            dense_metrics,
        })
    }

    /// Q, K, V of `layer` for the task's `index`-th text (dense attention), as one `.npy`-ready
    /// array `[3, 1, heads, N, d]` and its shape.
    pub fn capture_qkv(
        &self,
        model: &SentenceEmbedder,
        index: usize,
        layer: usize,
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        let e = self.enc.get(index).ok_or_else(|| {
            Error::Invalid(format!(
                "text {index} does not exist ({} texts)",
                self.enc.len()
            ))
        })?;
        if layer >= model.config().num_hidden_layers {
            return Err(Error::Invalid(format!(
                "layer {layer} does not exist (the model has {})",
                model.config().num_hidden_layers
            )));
        }
        let mut cap = hdp_models::CaptureQkv {
            inner: DenseFast::default(),
            layer,
            captured: None,
        };
        model.embed_encoded(std::slice::from_ref(e), &mut cap, 1, true, &mut |_| {})?;
        let (q, k, v, _) = cap
            .captured
            .ok_or_else(|| Error::Invalid("layer was not reached".into()))?;
        let mut shape = vec![3];
        shape.extend_from_slice(q.shape());
        let mut data = q.into_data();
        data.extend_from_slice(k.data());
        data.extend_from_slice(v.data());
        Ok((shape, data))
    }

    /// Index of the longest text (most tokens).
    pub fn longest_text(&self) -> usize {
        (0..self.enc.len())
            .max_by_key(|&i| (self.enc[i].ids.len(), std::cmp::Reverse(i)))
            .unwrap_or(0)
    }

    /// Number of texts HDP embeds per run.
    pub fn texts(&self) -> usize {
        self.enc.len()
    }

    /// Embeds the task's texts with HDP `cfg` and scores them. `trace_limit` > 0 keeps the full
    /// trace of that many texts in the returned backend.
    pub fn run_hdp(
        &self,
        model: &SentenceEmbedder,
        cfg: &ValidConfig,
        batch_size: usize,
        trace_limit: usize,
        progress: Progress,
    ) -> Result<(HdpResult, HdpBackend)> {
        self.run_hdp_layers(model, cfg, None, None, batch_size, trace_limit, progress)
    }

    /// [`Evaluation::run_hdp`] with per-layer thresholds (a calibration) in place of `cfg`'s,
    /// and a choice of kernel (`None`: the fast kernels on this CPU's best instruction set;
    /// [`HdpKernel::Hardware`]: the HDPA core's bit-accurate datapath).
    #[allow(clippy::too_many_arguments)]
    pub fn run_hdp_layers(
        &self,
        model: &SentenceEmbedder,
        cfg: &ValidConfig,
        thresholds: Option<&[hdp_core::RowThreshold]>,
        kernel: Option<HdpKernel>,
        batch_size: usize,
        trace_limit: usize,
        progress: Progress,
    ) -> Result<(HdpResult, HdpBackend)> {
        let mut backend = HdpBackend::new(*cfg, trace_limit)?;
        if let Some(k) = kernel {
            backend.kernel = k;
        }
        if let Some(t) = thresholds {
            backend = backend.with_layer_thresholds(t.to_vec())?;
        }
        let total = self.enc.len();
        let emb = model.embed_encoded(
            &self.enc,
            &mut backend as &mut dyn AttentionBackend,
            batch_size,
            true,
            &mut |d| progress("hdp embeddings", d, total),
        )?;
        let mut metrics = match &self.scorer {
            Scorer::Classify { head, labels } => {
                let acc = accuracy(&head.predict_all(&emb), labels);
                Metrics::from([("metric".into(), acc), ("accuracy".into(), acc)])
            }
            Scorer::Pairs { .. } => score_pairs(&self.scorer, &emb),
            Scorer::Retrieval { docs } => score_retrieval(*docs, &emb),
            Scorer::Fidelity { lengths } => {
                let mut m = Metrics::new();
                let per = self.enc.len() / lengths.len().max(1);
                let mut all = Vec::new();
                for (k, len) in lengths.iter().enumerate() {
                    let cos: Vec<f64> = (k * per..(k + 1) * per)
                        .map(|i| cosine(&emb[i], &self.dense[i]))
                        .collect();
                    m.insert(
                        format!("mean_cosine_{len}"),
                        cos.iter().sum::<f64>() / cos.len().max(1) as f64,
                    );
                    m.insert(
                        format!("min_cosine_{len}"),
                        cos.iter().copied().fold(f64::INFINITY, f64::min),
                    );
                    all.extend(cos);
                }
                m.insert(
                    "metric".into(),
                    all.iter().sum::<f64>() / all.len().max(1) as f64,
                );
                m
            }
        };
        let cos: Vec<f64> = emb
            .iter()
            .zip(&self.dense)
            .map(|(a, b)| cosine(a, b))
            .collect();
        metrics.insert(
            "embedding_cosine_mean".into(),
            cos.iter().sum::<f64>() / cos.len().max(1) as f64,
        );
        metrics.insert(
            "embedding_cosine_min".into(),
            cos.iter().copied().fold(f64::INFINITY, f64::min),
        );
        // The other fidelity figures sparse-attention papers report against dense, per text
        // then averaged: relative L1 `|e - d|_1 / |d|_1` and RMSE `sqrt(mean((e - d)^2))` of
        // the embedding (normalized when the model normalizes, as here).
        let n = emb.len().max(1) as f64;
        let pairs = || emb.iter().zip(&self.dense);
        let l1_sum: f64 = pairs().map(|(e, d)| relative_l1(e, d)).sum();
        let rmse_sum: f64 = pairs().map(|(e, d)| rmse(e, d)).sum();
        metrics.insert("embedding_rel_l1_mean".into(), l1_sum / n);
        metrics.insert("embedding_rmse_mean".into(), rmse_sum / n);
        let s = backend.summary();
        let ratio = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                1.0 - a as f64 / b as f64
            }
        };
        let macs = MacReport {
            dense_qk_macs: backend.dense_qk_macs,
            dense_sv_macs: backend.dense_qk_macs,
            dense_exps: backend.dense_entries,
            hdp_int_macs: s.counts.int_macs,
            hdp_frac_macs: s.counts.frac_macs,
            hdp_sv_macs: s.counts.sv_macs,
            hdp_exps: s.counts.exps,
            sv_macs_saved: ratio(s.counts.sv_macs, backend.dense_qk_macs),
            exps_saved: ratio(s.counts.exps, backend.dense_entries),
        };
        Ok((
            HdpResult {
                metrics,
                block_sparsity: s.block_sparsity(),
                effective_block_sparsity: s.effective_block_sparsity(),
                head_sparsity: s.head_sparsity(),
                macs,
            },
            backend,
        ))
    }
}

/// Recall@1 and mean reciprocal rank of queries `n..2n` against documents `0..n` by cosine
/// (ties rank the query's own document last: no credit for a tie).
fn score_retrieval(n: usize, emb: &[Vec<f32>]) -> Metrics {
    let mut hits = 0usize;
    let mut rr = 0.0f64;
    for q in 0..n {
        let own = cosine(&emb[n + q], &emb[q]);
        let better = (0..n)
            .filter(|&d| d != q && cosine(&emb[n + q], &emb[d]) >= own)
            .count();
        hits += usize::from(better == 0);
        rr += 1.0 / (better + 1) as f64;
    }
    let recall = hits as f64 / n.max(1) as f64;
    Metrics::from([
        ("metric".into(), recall),
        ("recall_at_1".into(), recall),
        ("mrr".into(), rr / n.max(1) as f64),
    ])
}

fn score_pairs(scorer: &Scorer, emb: &[Vec<f32>]) -> Metrics {
    let Scorer::Pairs { pairs } = scorer else {
        return Metrics::new();
    };
    let pred: Vec<f64> = pairs
        .iter()
        .map(|&(i, j, _)| cosine(&emb[i], &emb[j]))
        .collect();
    let gold: Vec<f64> = pairs.iter().map(|p| p.2).collect();
    let p = pearson(&pred, &gold);
    Metrics::from([
        ("metric".into(), p),
        ("pearson".into(), p),
        ("spearman".into(), spearman(&pred, &gold)),
        ("pairs".into(), pairs.len() as f64),
    ])
}
