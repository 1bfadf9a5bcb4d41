//! End-to-end checks of the `hdp` binary: the documented JSON, plots and traces, and clear
//! errors (non-zero exit, a message, never a panic) on bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

fn hdp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hdp"))
        .args(args)
        .output()
        .expect("run hdp")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hdp-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn assert_clean_failure(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "message {err:?} lacks {needle:?}"
    );
}

#[test]
fn json_has_the_documented_fields_and_files_are_written() {
    let (plot, trace) = (tmp("kept.svg"), tmp("trace.json"));
    let out = hdp(&[
        "attention",
        "--seq-len",
        "40",
        "--heads",
        "3",
        "--head-dim",
        "8",
        "--seed",
        "1",
        "--block-size",
        "4",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["block_sparsity", "head_sparsity", "rel_l2_err"] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} missing"));
        assert!(x.is_finite() && x >= 0.0, "{key} = {x}");
    }
    assert!(v["block_sparsity"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(svg.matches("<image").count(), 3);
    assert_eq!(hdp_plot::check::check_svg(&svg), Vec::<String>::new());
    let t = hdp_core::Trace::read(&trace).unwrap();
    assert_eq!(t.layers[0].sequences[0].heads.len(), 3);
    assert_eq!(
        t.summary().block_sparsity(),
        v["block_sparsity"].as_f64().unwrap()
    );
}

#[test]
fn saved_qkv_reloads_to_the_same_result() {
    let npy = tmp("qkv.npy");
    let a = hdp(&[
        "attention",
        "--seq-len",
        "24",
        "--heads",
        "2",
        "--head-dim",
        "4",
        "--seed",
        "9",
        "--json",
        "--save-qkv",
        npy.to_str().unwrap(),
    ]);
    let b = hdp(&["attention", "--qkv", npy.to_str().unwrap(), "--json"]);
    assert!(
        a.status.success() && b.status.success(),
        "{}",
        String::from_utf8_lossy(&b.stderr)
    );
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&a.stdout).unwrap(),
        serde_json::from_slice(&b.stdout).unwrap(),
    );
    assert_eq!(a["rel_l2_err"], b["rel_l2_err"]);
    assert_eq!(a["kept_blocks"], b["kept_blocks"]);
}

#[test]
fn safetensors_input_with_mask() {
    use safetensors::tensor::{Dtype, TensorView};
    let (h, n, d) = (2usize, 6usize, 4usize);
    let vals: Vec<u8> = (0..h * n * d)
        .flat_map(|i| ((i % 7) as f32 * 0.3 - 1.0).to_le_bytes())
        .collect();
    let mask: Vec<u8> = (0..n)
        .flat_map(|i| ((i < 4) as i64).to_le_bytes())
        .collect();
    let views = vec![
        (
            "q",
            TensorView::new(Dtype::F32, vec![h, n, d], &vals).unwrap(),
        ),
        (
            "k",
            TensorView::new(Dtype::F32, vec![h, n, d], &vals).unwrap(),
        ),
        (
            "v",
            TensorView::new(Dtype::F32, vec![h, n, d], &vals).unwrap(),
        ),
        (
            "mask",
            TensorView::new(Dtype::I64, vec![1, n], &mask).unwrap(),
        ),
    ];
    let path = tmp("qkv.safetensors");
    safetensors::serialize_to_file(views, &None, &path).unwrap();
    let out = hdp(&[
        "attention",
        "--qkv",
        path.to_str().unwrap(),
        "--json",
        "--block-size",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 4 valid tokens, b=2: 2x2 valid blocks of the 3x3 grid, per head.
    assert_eq!(v["valid_blocks"], 2 * 4);
}

#[test]
fn bad_options_fail_cleanly() {
    let base = [
        "attention",
        "--seq-len",
        "16",
        "--heads",
        "2",
        "--head-dim",
        "4",
    ];
    let cases: &[(&[&str], &str)] = &[
        (&["--rho", "1.5"], "rho"),
        (&["--rho", "-0.1"], "rho"),
        (&["--keep", "0"], "keep"),
        (&["--tau", "2"], "tau"),
        (&["--block-size", "0"], "block-size"),
        (&["--bits", "20"], "bits"),
        (&["--bits", "8", "--frac-bits", "8"], "frac_bits"),
        (&["--head-top-k", "0"], "head"),
        (&["--valid-len", "99"], "valid-len"),
        (&["--rho", "0.2", "--keep", "0.3"], "cannot be used with"),
    ];
    for (extra, needle) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        assert_clean_failure(&hdp(&args), needle);
    }
}

#[test]
fn bad_files_fail_cleanly() {
    assert_clean_failure(
        &hdp(&["attention", "--qkv", "/nonexistent/x.npy"]),
        "cannot read",
    );
    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, b"\x05\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
    assert_clean_failure(
        &hdp(&["attention", "--qkv", junk.to_str().unwrap()]),
        "safetensors",
    );
    let other = tmp("x.csv");
    std::fs::write(&other, "1,2").unwrap();
    assert_clean_failure(
        &hdp(&["attention", "--qkv", other.to_str().unwrap()]),
        "unknown file type",
    );

    // A valid file, then truncated; then one with a NaN; then the wrong leading dimension.
    let npy = tmp("t.npy");
    assert!(hdp(&[
        "attention",
        "--seq-len",
        "8",
        "--heads",
        "1",
        "--head-dim",
        "4",
        "--save-qkv",
        npy.to_str().unwrap()
    ])
    .status
    .success());
    let bytes = std::fs::read(&npy).unwrap();
    let cut = tmp("cut.npy");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    assert_clean_failure(
        &hdp(&["attention", "--qkv", cut.to_str().unwrap()]),
        "truncated",
    );
    let mut nan = bytes.clone();
    let at = nan.len() - 4;
    nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan_path = tmp("nan.npy");
    std::fs::write(&nan_path, &nan).unwrap();
    assert_clean_failure(
        &hdp(&["attention", "--qkv", nan_path.to_str().unwrap()]),
        "non-finite",
    );
}

#[test]
fn corrupt_trace_is_rejected_with_a_reason() {
    let p = tmp("bad-trace.json");
    std::fs::write(
        &p,
        r#"{"format":"hdp-trace","version":99,"producer":"x","config":{},"layers":[]}"#,
    )
    .unwrap();
    let e = hdp_core::Trace::read(&p).unwrap_err().to_string();
    assert!(e.contains("version 99"), "{e}");
}

#[test]
fn sim_on_a_trace_and_a_model_shape() {
    let trace = tmp("sim-trace.json");
    assert!(hdp(&[
        "attention",
        "--seq-len",
        "64",
        "--heads",
        "4",
        "--head-dim",
        "16",
        "--trace",
        trace.to_str().unwrap()
    ])
    .status
    .success());
    for args in [
        vec![
            "sim",
            "--preset",
            "edge",
            "--trace",
            trace.to_str().unwrap(),
            "--json",
        ],
        vec![
            "sim",
            "--preset",
            "server",
            "--model-shape",
            "bert-base",
            "--seq-len",
            "128",
            "--json",
        ],
    ] {
        let out = hdp(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for side in ["hdpa", "dense"] {
            for k in [
                "cycles",
                "latency_us",
                "throughput_gops",
                "mac_efficiency",
                "energy_uj",
                "gops_per_w",
            ] {
                let x = v[side][k].as_f64().unwrap_or_else(|| panic!("{side}.{k}"));
                assert!(x.is_finite() && x > 0.0, "{side}.{k} = {x}");
            }
        }
        assert!(v["speedup_vs_dense"].as_f64().unwrap() > 1.0);
    }
    let (plot, energy_plot) = (tmp("sim.svg"), tmp("sim-energy.svg"));
    assert!(hdp(&[
        "sim",
        "--model-shape",
        "minilm-l6",
        "--seq-len",
        "64",
        "--plot",
        plot.to_str().unwrap(),
        "--energy-plot",
        energy_plot.to_str().unwrap(),
    ])
    .status
    .success());
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("int_engine"));
    assert_eq!(hdp_plot::check::check_svg(&svg), Vec::<String>::new());
    let svg = std::fs::read_to_string(&energy_plot).unwrap();
    assert!(svg.contains("data-series=\"static\"") && svg.contains("energy (uJ)"));
    assert_eq!(hdp_plot::check::check_svg(&svg), Vec::<String>::new());
    assert_clean_failure(&hdp(&["sim"]), "workload");
    assert_clean_failure(
        &hdp(&["sim", "--model-shape", "gpt-7"]),
        "unknown model shape",
    );
    assert_clean_failure(
        &hdp(&[
            "sim",
            "--preset",
            "/nonexistent.toml",
            "--model-shape",
            "bert-base",
        ]),
        "nonexistent.toml",
    );
    assert_clean_failure(
        &hdp(&[
            "sim",
            "--model-shape",
            "bert-base",
            "--block-sparsity",
            "1.5",
        ]),
        "outside",
    );
}

#[test]
fn sim_sweep_and_peers() {
    let out_json = tmp("dse.json");
    let out = hdp(&[
        "sim",
        "--model-shape",
        "minilm-l6",
        "--seq-len",
        "64",
        "sweep",
        "--int-mults",
        "64,128",
        "--dram-gbps",
        "1,10",
        "--out",
        out_json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    assert_eq!(v["points"].as_array().unwrap().len(), 4);
    assert!(!v["pareto_front"].as_array().unwrap().is_empty());
    let out = hdp(&["sim", "--model-shape", "bert-base", "--peers", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["peers"]["hdpa_gops_128"].as_f64().unwrap() > 0.0);
    assert!(v["peers"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"].as_str().unwrap().starts_with("SpAtten")));
}

#[test]
fn bench_attention_reports_every_documented_field() {
    let plot = tmp("speed.svg");
    for isa in [&[][..], &["--isa", "portable"][..]] {
        let mut args = vec![
            "bench",
            "attention",
            "--seq-lens",
            "24,40",
            "--heads",
            "2",
            "--head-dim",
            "8",
            "--repeats",
            "1",
            "--block-sizes",
            "1,8",
            "--json",
            "--plot",
            plot.to_str().unwrap(),
        ];
        args.extend_from_slice(isa);
        let out = hdp(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 4, "2 lengths x 2 block sizes");
        for v in &lines {
            for key in [
                "dense_ms",
                "hdp_ms",
                "speedup",
                "block_sparsity",
                "head_sparsity",
                "rel_l2_err",
            ] {
                assert!(v[key].as_f64().is_some(), "{key} missing in {v}");
            }
            let rate = &v["integer_pass"];
            assert!(rate["macs"].as_u64().unwrap() > 0 && rate["gmacs"].as_f64().unwrap() > 0.0);
            let ratio = v["dense_ms"].as_f64().unwrap() / v["hdp_ms"].as_f64().unwrap();
            assert!((v["speedup"].as_f64().unwrap() - ratio).abs() < 1e-9);
        }
        let bs: Vec<u64> = lines
            .iter()
            .map(|v| v["config"]["block_size"].as_u64().unwrap())
            .collect();
        assert_eq!(bs, [1, 8, 1, 8]);
        let svg = std::fs::read_to_string(&plot).unwrap();
        assert_eq!(hdp_plot::check::check_svg(&svg), Vec::<String>::new());
    }
    // Every tier this CPU has, side by side: one line per tier, length and block size.
    let out = hdp(&[
        "bench",
        "attention",
        "--seq-lens",
        "24",
        "--heads",
        "2",
        "--head-dim",
        "8",
        "--repeats",
        "1",
        "--isa",
        "all",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tiers: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["isa"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(tiers[0], "portable");
    eprintln!("bench tiers: {tiers:?}");
    assert_clean_failure(
        &hdp(&["bench", "attention", "--seq-lens", "16", "--isa", "sse9"]),
        "portable, avx2, avx-vnni or avx512-vnni (avx512)",
    );
    assert_clean_failure(
        &hdp(&[
            "bench",
            "attention",
            "--seq-lens",
            "16",
            "--block-sizes",
            "0",
        ]),
        "block-size",
    );
}

/// `hdp bench linear`: one JSON line per shape and tier with a positive throughput, the
/// portable tier on request, and bad shapes or tiers refused.
#[test]
fn bench_linear_reports_every_shape_and_refuses_bad_ones() {
    let out = hdp(&[
        "bench",
        "linear",
        "--rows",
        "13",
        "--shapes",
        "19x45,8x8",
        "--repeats",
        "1",
        "--tier",
        "portable",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (v, (k, n)) in lines.iter().zip([(19, 45), (8, 8)]) {
        assert_eq!((v["k"].as_u64(), v["n"].as_u64()), (Some(k), Some(n)));
        assert_eq!(v["tier"], "portable");
        assert!(v["gflops"].as_f64().unwrap() > 0.0);
        assert!(v["fraction_of_peak"].is_null());
        assert_eq!(v["gelu"], false);
    }
    let out = hdp(&[
        "bench",
        "linear",
        "--rows",
        "3",
        "--shapes",
        "8x40",
        "--repeats",
        "1",
        "--tier",
        "portable",
        "--json",
        "--gelu",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["gelu"], true);
    assert_clean_failure(
        &hdp(&["bench", "linear", "--shapes", "384by1152"]),
        "not KxN",
    );
    assert_clean_failure(&hdp(&["bench", "linear", "--tier", "sse9"]), "unknown tier");
    assert_clean_failure(&hdp(&["bench", "linear", "--rows", "0"]), "at least 1");
}

/// Reproducers of issue #11 (hostile or careless input): each must end with a clear error and a
/// non-zero exit, never a panic, an abort, a hang or a silent wrong answer.
#[test]
fn hostile_inputs_of_issue_11_fail_cleanly() {
    // Sizes taken on trust.
    assert_clean_failure(
        &hdp(&[
            "attention",
            "--seq-len",
            "4294967296",
            "--heads",
            "4294967296",
        ]),
        "budget",
    );
    assert_clean_failure(
        &hdp(&[
            "sim",
            "--model-shape",
            "bert-base",
            "--seq-len",
            "8589934592",
            "--block-sparsity",
            "0.5",
            "--head-sparsity",
            "0",
        ]),
        "budget",
    );
    // A tiny .npy that declares a huge shape.
    let header =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 1, 4294967296, 4294967296), }";
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend_from_slice(&[0u8; 64]);
    let p = tmp("huge.npy");
    std::fs::write(&p, &npy).unwrap();
    for cmd in [
        &["attention", "--qkv"][..],
        &["bench", "attention", "--qkv"][..],
    ] {
        let mut args = cmd.to_vec();
        args.push(p.to_str().unwrap());
        assert_clean_failure(&hdp(&args), "shape");
    }
    // A .npy with N = 100,000, d = 1 in 1.2 MB: the N x N scores exceed the budget.
    let data = vec![0.5f32; 3 * 100_000];
    let p = tmp("long.npy");
    hdp_core::npy::write(&p, &[3, 1, 1, 100_000, 1], &data).unwrap();
    assert_clean_failure(&hdp(&["attention", "--qkv", p.to_str().unwrap()]), "budget");
    // The block size that used to hang the int8 kernel.
    for args in [
        &["attention", "--seq-len", "16", "-b", "18446744073709551615"][..],
        &[
            "bench",
            "attention",
            "--seq-lens",
            "16",
            "--block-sizes",
            "18446744073709551615",
        ][..],
    ] {
        assert_clean_failure(&hdp(args), "block-size");
    }
    // Output errors.
    #[cfg(target_os = "linux")]
    {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_hdp"))
            .args(["attention", "--seq-len", "16", "--json"])
            .stdout(full)
            .output()
            .unwrap();
        assert_clean_failure(&out, "standard output");
        assert_clean_failure(
            &hdp(&["attention", "--seq-len", "16", "--trace", "/dev/full"]),
            "/dev/full",
        );
    }
    // Nonsense simulator options.
    assert_clean_failure(
        &hdp(&[
            "sim",
            "--model-shape",
            "bert-base",
            "--seq-len",
            "64",
            "--block-sparsity",
            "0.5",
            "--head-sparsity",
            "0",
            "sweep",
            "--bits",
            "1000",
        ]),
        "bits",
    );
}

#[test]
fn hdp_options_with_dense_attention_are_refused() {
    let out = hdp(&["embed", "--attention", "dense", "--keep", "0.2", "hello"]);
    assert_clean_failure(&out, "HDP options");
}

/// `--top-p`: a run keeps fewer blocks with a smaller mass, the trace records the policy, the
/// simulator reads it, and nonsense values or two policies at once are refused.
#[test]
fn top_p_selection_runs_end_to_end_and_bad_values_are_refused() {
    let trace = tmp("topp-trace.json");
    let run = |mass: &str, trace: Option<&str>| {
        let mut args = vec![
            "attention",
            "--seq-len",
            "64",
            "--heads",
            "2",
            "--head-dim",
            "16",
            "--top-p",
            mass,
            "--json",
        ];
        if let Some(t) = trace {
            args.extend_from_slice(&["--trace", t]);
        }
        let out = hdp(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["block_sparsity"]
            .as_f64()
            .unwrap()
    };
    let (loose, tight) = (run("0.99", None), run("0.5", trace.to_str()));
    assert!(
        tight > loose,
        "top-p 0.5 prunes {tight}, 0.99 prunes {loose}"
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(text.contains("\"top-p\""), "the trace names the policy");
    let sim = hdp(&[
        "sim",
        "--preset",
        "edge",
        "--trace",
        trace.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    for bad in ["0", "1.5", "nan"] {
        assert_clean_failure(&hdp(&["attention", "--top-p", bad]), "top-p");
    }
    assert_clean_failure(
        &hdp(&["attention", "--top-p", "0.9", "--keep", "0.3"]),
        "cannot be used with",
    );
}

#[test]
fn bench_plot_redraws_committed_results() {
    let results = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/results");
    let out = tmp("redrawn.svg");
    let o = hdp(&[
        "bench",
        "plot",
        &format!("{results}/bench-attention-zen4-tiers.jsonl"),
        "--sdpa",
        &format!("{results}/bench-sdpa-zen4.jsonl"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(&out).unwrap();
    assert_eq!(hdp_plot::check::check_svg(&svg), Vec::<String>::new());
    for name in ["HDP b = 1, avx512-vnni", "HDP b = 16, avx2", "PyTorch SDPA"] {
        assert!(svg.contains(&format!("data-series=\"{name}\"")), "{name}");
    }
    let bad = tmp("not-results.jsonl");
    std::fs::write(&bad, "{\"seq_len\": 3}\n").unwrap();
    assert_clean_failure(
        &hdp(&[
            "bench",
            "plot",
            bad.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]),
        "hdp bench attention --json",
    );
}

#[test]
fn sweep_from_redraws_a_saved_sweep() {
    let saved = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/results/sweep-rt-sentiment.json"
    );
    let out = tmp("sweep-redrawn.svg");
    let o = hdp(&["sweep", "--from", saved, "--plot", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(&out).unwrap();
    assert_eq!(hdp_plot::check::check_svg(&svg), Vec::<String>::new());
    assert!(svg.contains("data-series=\"Pareto front\"") && svg.contains(">0.766</text>"));
    assert_clean_failure(&hdp(&["sweep", "--from", saved]), "--plot");
}

#[test]
fn bench_plot_embed_draws_the_committed_end_to_end_runs() {
    let saved = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/results/embed-e2e-zen4.jsonl"
    );
    let out = tmp("e2e.svg");
    let o = hdp(&["bench", "plot-embed", saved, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(&out).unwrap();
    assert_eq!(hdp_plot::check::check_svg(&svg), Vec::<String>::new());
    // Four runs, three contenders: twelve bars.
    assert_eq!(svg.matches("<rect x=").count() - 3, 12, "{svg}");
    assert!(svg.contains("data-series=\"hdp embed, HDP\""));
}
