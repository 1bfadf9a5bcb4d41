//! The fuzz harness (`src/bin/hdp-fuzz.rs`) as a regression test: every corpus input under
//! `fuzz/corpus/` (inputs that once crashed a parser, and the reproducers of issue #11) is
//! replayed, then a fixed, seeded number of mutated inputs per target runs. Deterministic: the
//! same inputs on every run, no time limit involved.

use std::process::Command;

fn fuzz(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hdp-fuzz"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("hdp-fuzz runs")
}

#[test]
fn corpus_replays_and_seeded_mutations_run_clean() {
    for args in [&["--replay"][..], &["--runs", "4000", "--seed", "7"][..]] {
        let out = fuzz(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "hdp-fuzz {args:?} failed:\n{text}");
        // Every target ran.
        for t in [
            "npy",
            "qkv-safetensors",
            "model-config",
            "model-weights",
            "trace",
            "preset",
            "peers",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(t)),
                "{t} missing:\n{text}"
            );
        }
    }
}

#[test]
fn bad_options_are_refused() {
    let out = fuzz(&["no-such-target"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target"));
}
