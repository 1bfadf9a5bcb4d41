//! `hdp eval` / `hdp sweep` end to end on small slices of the packaged data (needs
//! `python3 scripts/fetch_assets.py`, which CI runs first).

use std::process::{Command, Output};

fn hdp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hdp"))
        .args(args)
        .output()
        .expect("run hdp")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn rt_sentiment_reports_dense_and_hdp() {
    let v = json_of(&hdp(&[
        "eval",
        "--task",
        "rt-sentiment",
        "--limit",
        "24",
        "--no-cache",
        "--json",
    ]));
    for k in ["dense", "hdp"] {
        let m = v[k]["metric"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&m), "{k} {m}");
    }
    let delta = v["delta"].as_f64().unwrap();
    assert!(
        (delta - (v["hdp"]["metric"].as_f64().unwrap() - v["dense"]["metric"].as_f64().unwrap()))
            .abs()
            < 1e-12
    );
    let s = v["block_sparsity"].as_f64().unwrap();
    assert!(s > 0.2 && s < 0.9, "block sparsity {s}");
    assert_eq!(v["head_sparsity"].as_f64().unwrap(), 0.0);
    assert!(v["macs"]["sv_macs_saved"].as_f64().unwrap() > 0.2);
    assert_eq!(v["per_layer"].as_array().unwrap().len(), 6);
}

#[test]
fn lee_fidelity_and_user_data_run() {
    let v = json_of(&hdp(&[
        "eval",
        "--task",
        "lee-similarity",
        "--max-length",
        "64",
        "--limit",
        "40",
        "--no-cache",
        "--json",
    ]));
    assert_eq!(v["dense"]["pairs"].as_f64().unwrap(), 40.0);
    let v = json_of(&hdp(&[
        "eval",
        "--task",
        "fidelity",
        "--max-length",
        "48",
        "--limit",
        "2",
        "--no-cache",
        "--json",
        "--rho",
        "0.2",
    ]));
    let c = v["hdp"]["metric"].as_f64().unwrap();
    assert!(c > 0.5 && c <= 1.0 + 1e-9, "cosine {c}");

    let dir = std::env::temp_dir().join(format!("hdp-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pairs = dir.join("pairs.tsv");
    std::fs::write(
        &pairs,
        "a cat sat\ta cat sits\t0.9\na dog ran\tstocks fell\t0.1\nrain today\tit is raining\t0.8\n",
    )
    .unwrap();
    let v = json_of(&hdp(&[
        "eval",
        "--data",
        pairs.to_str().unwrap(),
        "--no-cache",
        "--json",
    ]));
    assert_eq!(v["task"], "user-pairs");
    let trace = dir.join("trace.json");
    let plot = dir.join("sweep.svg");
    let out = hdp(&[
        "sweep",
        "--data",
        pairs.to_str().unwrap(),
        "--no-cache",
        "--rhos",
        "0,0.5",
        "--keeps",
        "0.5",
        "--plot",
        plot.to_str().unwrap(),
        "--json",
    ]);
    let v = json_of(&out);
    assert_eq!(v["points"].as_array().unwrap().len(), 3);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("Pareto front"));
    assert_eq!(hdp_plot::check::check_svg(&svg), Vec::<String>::new());
    let _ = json_of(&hdp(&[
        "eval",
        "--data",
        pairs.to_str().unwrap(),
        "--no-cache",
        "--json",
        "--trace",
        trace.to_str().unwrap(),
    ]));
    let t = hdp_core::Trace::read(&trace).unwrap();
    // One entry per (layer, sequence length): sequences are not padded.
    let mut layers: Vec<usize> = t.layers.iter().map(|l| l.layer).collect();
    layers.dedup();
    layers.sort();
    layers.dedup();
    assert_eq!(layers, (0..6).collect::<Vec<_>>());
    assert!(t.layers.iter().all(|l| l.heads == 12));
}

#[test]
fn eval_errors_are_clear() {
    let check = |args: &[&str], needle: &str| {
        let out = hdp(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !err.contains("panicked"), "{err}");
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    };
    check(&["eval", "--task", "glue-sst2"], "unknown task");
    check(&["eval", "--model", "/nonexistent/model"], "cannot read");
    check(
        &["eval", "--task", "lee-similarity", "--max-length", "1000"],
        "max length 1000",
    );
    check(&["eval", "--data", "/nonexistent.csv"], "nonexistent.csv");
}

/// The long-text tasks of issue #16 on small slices: genre classification of Brown passages
/// and same-document retrieval of their halves, dense vs HDP, with top-p selection.
#[test]
fn brown_genre_and_retrieval_report_dense_and_hdp() {
    let v = json_of(&hdp(&[
        "eval",
        "--task",
        "brown-genre",
        "--limit",
        "15",
        "--max-length",
        "128",
        "--no-cache",
        "--json",
    ]));
    assert_eq!(v["dense"]["test_items"].as_f64().unwrap(), 15.0);
    assert!(
        v["dense"]["accuracy"].as_f64().unwrap() > v["dense"]["majority_class"].as_f64().unwrap()
    );
    let v = json_of(&hdp(&[
        "eval",
        "--task",
        "brown-retrieval",
        "--limit",
        "8",
        "--max-length",
        "128",
        "--top-p",
        "0.9",
        "--no-cache",
        "--json",
    ]));
    for k in ["dense", "hdp"] {
        let r = v[k]["recall_at_1"].as_f64().unwrap();
        let mrr = v[k]["mrr"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&r) && mrr >= r && mrr <= 1.0,
            "{k}: {r} {mrr}"
        );
    }
    assert_eq!(v["dense"]["documents"].as_f64().unwrap(), 8.0);
    assert!(v["block_sparsity"].as_f64().unwrap() > 0.3);
}

/// `hdp calibrate` writes per-layer thresholds that meet its target on its own passages (or
/// says it did not), `--calibration` applies them layer by layer (visible in the per-layer
/// sparsity), and misuse fails with a reason.
#[test]
fn calibrate_then_evaluate_with_the_calibration() {
    let dir = std::env::temp_dir().join(format!("hdp-cal-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cal = dir.join("cal.json");
    let cal_s = cal.to_str().unwrap();
    let v = json_of(&hdp(&[
        "calibrate",
        "--texts",
        "2",
        "--max-length",
        "96",
        "--masses",
        "0.95,0.7",
        "--target-cosine",
        "0.97",
        "-o",
        cal_s,
        "--json",
    ]));
    let thresholds = v["calibration"]["thresholds"].as_array().unwrap();
    assert_eq!(thresholds.len(), 6);
    let met = v["report"]["target_met"].as_bool().unwrap();
    let mean = v["calibration"]["measured"]["mean_cosine"]
        .as_f64()
        .unwrap();
    assert_eq!(met, mean >= 0.97, "target_met {met} vs mean cosine {mean}");
    // 1 dense + 1 unpruned + 6 layers x 2 masses + 4 verification runs.
    assert_eq!(v["report"]["runs"].as_u64().unwrap(), 18);
    // A calibration that prunes only layer 2 shows up as sparsity in layer 2 alone.
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cal).unwrap()).unwrap();
    for (l, t) in c["thresholds"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        *t = if l == 2 {
            serde_json::json!({"kind": "top-k", "keep": 0.2})
        } else {
            serde_json::json!({"kind": "keep-all"})
        };
    }
    let one = dir.join("one-layer.json");
    std::fs::write(&one, serde_json::to_vec(&c).unwrap()).unwrap();
    let e = json_of(&hdp(&[
        "eval",
        "--task",
        "fidelity",
        "--limit",
        "2",
        "--max-length",
        "96",
        "--no-cache",
        "--calibration",
        one.to_str().unwrap(),
        "--json",
    ]));
    let layers = e["per_layer"].as_array().unwrap();
    for (l, x) in layers.iter().enumerate() {
        let s = x["block_sparsity"].as_f64().unwrap();
        if l == 2 {
            assert!(s > 0.5, "layer 2 sparsity {s}");
        } else {
            assert_eq!(s, 0.0, "layer {l} sparsity {s}");
        }
    }
    assert_eq!(e["calibration"]["thresholds"][2]["kind"], "top-k");
    // Misuse.
    let fails = |args: &[&str], needle: &str| {
        let out = hdp(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
    };
    fails(
        &[
            "eval",
            "--task",
            "fidelity",
            "--limit",
            "1",
            "--calibration",
            cal_s,
            "--keep",
            "0.3",
        ],
        "drop --keep",
    );
    c["layers"] = serde_json::json!(7);
    c["thresholds"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"kind": "keep-all"}));
    std::fs::write(&one, serde_json::to_vec(&c).unwrap()).unwrap();
    fails(
        &[
            "eval",
            "--task",
            "fidelity",
            "--limit",
            "1",
            "--calibration",
            one.to_str().unwrap(),
        ],
        "calibrated for 7 layers",
    );
    std::fs::write(&one, b"{}").unwrap();
    fails(
        &[
            "embed",
            "--attention",
            "hdp",
            "--calibration",
            one.to_str().unwrap(),
            "some text",
        ],
        "calibration file",
    );
    fails(
        &["embed", "--calibration", cal_s, "some text"],
        "applies to HDP attention",
    );
    fails(
        &["calibrate", "--texts", "1", "--masses", "1.5", "-o", cal_s],
        "must be numbers in (0, 1]",
    );
    fails(
        &["calibrate", "--keep", "0.3", "-o", cal_s],
        "chooses each layer's threshold",
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `--datapath hw`: the HDPA core's fixed-point datapath gives the same sparsity as the float
/// kernels (its decisions are checked equal to theirs inside the run) and embeddings close to
/// them; configurations the core does not implement are refused with the reason.
#[test]
fn the_hardware_datapath_runs_and_refuses_what_it_lacks() {
    let run = |datapath: &str| {
        json_of(&hdp(&[
            "eval",
            "--task",
            "lee-similarity",
            "--max-length",
            "64",
            "--limit",
            "12",
            "--compensate",
            "off",
            "--datapath",
            datapath,
            "--no-cache",
            "--json",
        ]))
    };
    let (float, hw) = (run("float"), run("hw"));
    assert_eq!(hw["datapath"], "hw");
    assert_eq!(float["block_sparsity"], hw["block_sparsity"]);
    let cos = |v: &serde_json::Value| v["hdp"]["embedding_cosine_mean"].as_f64().unwrap();
    // Measured: 0.9765 (hw) vs 0.9768 (float) on 200 Rotten Tomatoes snippets.
    assert!(
        (cos(&float) - cos(&hw)).abs() < 0.01,
        "float {} hw {}",
        cos(&float),
        cos(&hw)
    );
    for (args, needle) in [
        (&["-b", "16"][..], "block sizes above 1"),
        (&["--top-p", "0.9"][..], "row thresholds other than top-k"),
        (&["--compensate", "mean-v"][..], "compensation"),
    ] {
        let mut a = vec![
            "eval",
            "--task",
            "lee-similarity",
            "--limit",
            "4",
            "--datapath",
            "hw",
        ];
        a.extend_from_slice(args);
        let out = hdp(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !err.contains("panicked"), "{err}");
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
}
