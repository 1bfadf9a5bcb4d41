//! A mutation fuzzer for hdp's input parsers that runs on stable Rust (no `cargo fuzz`, no
//! sanitizers): seeds built in code plus the files under `fuzz/corpus/<target>/`, stacked
//! byte- and token-level mutations, each input run under `catch_unwind`.
//!
//! What counts as a failure: a panic; an allocation above `--max-alloc-mib` (a size taken on
//! trust: the input is saved and the process aborts, since an allocation failure cannot be
//! caught); one input running longer than `--hang-seconds` (a watchdog saves it and aborts).
//! Failing inputs are written to `fuzz/crashes/<target>-<hash>`; moved to `fuzz/corpus/<target>/`
//! they become regression inputs that the test suite replays (`--replay`).
//!
//! ```text
//! cargo run --release --bin hdp-fuzz -- --seconds 60            # every target, 60 s each
//! cargo run --release --bin hdp-fuzz -- --runs 5000 trace npy   # fixed number of inputs
//! cargo run --release --bin hdp-fuzz -- --replay                # corpus files only
//! ```

#[allow(dead_code)]
#[path = "../io.rs"]
mod io;

use hdp_attention::synthetic::{generate, SyntheticSpec};
use hdp_attention::HdpConfig;
use hdp_core::rng::SplitMix64;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allocations above this many bytes abort the run (set from `--max-alloc-mib`).
static MAX_ALLOC: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The input being run and its target, saved when the run aborts.
static CURRENT: Mutex<(String, Vec<u8>)> = Mutex::new((String::new(), Vec::new()));
/// Set while a target runs; the allocator's and the watchdog's abort paths use it.
static RUNNING: AtomicBool = AtomicBool::new(false);
/// Start of the current run, in milliseconds since `EPOCH`.
static STARTED_MS: AtomicU64 = AtomicU64::new(0);

struct Capped;

// SAFETY: forwards to the system allocator; only adds a size check before it.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC.load(Ordering::Relaxed) && RUNNING.load(Ordering::Relaxed) {
            fail_and_abort(&format!("allocation of {} bytes", layout.size()));
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC.load(Ordering::Relaxed) && RUNNING.load(Ordering::Relaxed) {
            fail_and_abort(&format!("allocation of {} bytes", layout.size()));
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC.load(Ordering::Relaxed) && RUNNING.load(Ordering::Relaxed) {
            fail_and_abort(&format!("reallocation to {new_size} bytes"));
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Capped = Capped;

/// Saves the current input as a crash and aborts (no unwinding out of an allocator).
fn fail_and_abort(what: &str) -> ! {
    RUNNING.store(false, Ordering::Relaxed); // the saving below allocates
    if let Ok(cur) = CURRENT.try_lock() {
        let path = save_crash(&cur.0, &cur.1);
        eprintln!(
            "FAIL {}: {what} while parsing an input; saved to {}",
            cur.0,
            path.display()
        );
    } else {
        eprintln!("FAIL: {what} (the input could not be saved)");
    }
    std::process::abort()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from("fuzz/crashes");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{:016x}", fnv(input)));
    let _ = std::fs::write(&path, input);
    path
}

/// A parser under test: takes arbitrary bytes, must return (Ok or Err), never panic.
struct Target {
    name: &'static str,
    what: &'static str,
    run: fn(&[u8]),
    seeds: fn() -> Vec<Vec<u8>>,
}

const TINY_CONFIG: &str = r#"{"model_type":"bert","vocab_size":6,"hidden_size":4,"num_hidden_layers":1,
"num_attention_heads":2,"intermediate_size":8,"hidden_act":"gelu","max_position_embeddings":5,
"type_vocab_size":2,"layer_norm_eps":1e-12}"#;

fn tiny_config() -> hdp_models::config::BertConfig {
    let hdp_models::config::ModelConfig::Bert(c) =
        hdp_models::config::ModelConfig::from_json(TINY_CONFIG).expect("tiny config parses");
    c
}

/// A complete tiny BERT checkpoint for [`TINY_CONFIG`].
fn tiny_weights() -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView};
    let (h, ff, v, p, t) = (4usize, 8usize, 6usize, 5usize, 2usize);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![v, h]),
        ("embeddings.position_embeddings.weight".into(), vec![p, h]),
        ("embeddings.token_type_embeddings.weight".into(), vec![t, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    let l = "encoder.layer.0";
    for (name, n, k) in [
        ("attention.self.query", h, h),
        ("attention.self.key", h, h),
        ("attention.self.value", h, h),
        ("attention.output.dense", h, h),
        ("intermediate.dense", ff, h),
        ("output.dense", h, ff),
    ] {
        shapes.push((format!("{l}.{name}.weight"), vec![n, k]));
        shapes.push((format!("{l}.{name}.bias"), vec![n]));
    }
    for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
        shapes.push((format!("{l}.{name}.weight"), vec![h]));
        shapes.push((format!("{l}.{name}.bias"), vec![h]));
    }
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .enumerate()
        .map(|(i, (_, s))| {
            (0..s.iter().product::<usize>())
                .flat_map(|j| (((i * 31 + j * 7) % 13) as f32 * 0.05 - 0.3).to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView)> = shapes
        .iter()
        .zip(&data)
        .map(|((n, s), d)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, &None).expect("tiny weights serialize")
}

fn small_problem() -> hdp_attention::AttentionProblem {
    generate(&SyntheticSpec {
        batch: 1,
        heads: 2,
        seq_len: 6,
        head_dim: 4,
        valid_len: Some(5),
        causal: false,
        seed: 1,
    })
    .expect("synthetic problem")
}

fn qkv_safetensors(mask: bool) -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView};
    let p = small_problem();
    let bytes = |t: &hdp_core::Tensor| -> Vec<u8> {
        t.data().iter().flat_map(|x| x.to_le_bytes()).collect()
    };
    let (q, k, v) = (bytes(p.q()), bytes(p.k()), bytes(p.v()));
    let m: Vec<u8> = (0..6).map(|i| u8::from(i < 5)).collect();
    let shape = p.q().shape().to_vec();
    let mut views = vec![
        ("q", TensorView::new(Dtype::F32, shape.clone(), &q).unwrap()),
        ("k", TensorView::new(Dtype::F32, shape.clone(), &k).unwrap()),
        ("v", TensorView::new(Dtype::F32, shape, &v).unwrap()),
    ];
    if mask {
        views.push(("mask", TensorView::new(Dtype::U8, vec![1, 6], &m).unwrap()));
    }
    safetensors::serialize(views, &None).expect("q/k/v serialize")
}

fn trace_seed(cfg: HdpConfig) -> Vec<u8> {
    let (_, trace) =
        hdp_attention::hdp_with_trace(&small_problem(), &cfg.validated().expect("valid config"))
            .expect("trace");
    serde_json::to_vec(&trace).expect("trace serializes")
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

const TARGETS: &[Target] = &[
    Target {
        name: "npy",
        what: ".npy reader (hdp_core::npy::parse) and the --qkv .npy loader",
        run: |b| {
            let _ = hdp_core::npy::parse(b);
            let _ = io::from_npy(b, false);
        },
        seeds: || {
            let p = small_problem();
            let mut all = p.q().data().to_vec();
            all.extend_from_slice(p.k().data());
            all.extend_from_slice(p.v().data());
            vec![
                hdp_core::npy::encode(&[3, 1, 2, 6, 4], &all),
                hdp_core::npy::encode(&[3, 2, 6, 4], &all),
                hdp_core::npy::encode(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ]
        },
    },
    Target {
        name: "qkv-safetensors",
        what: "the --qkv safetensors loader (tensors q, k, v, mask)",
        run: |b| {
            let _ = io::from_safetensors(b, false);
        },
        seeds: || vec![qkv_safetensors(false), qkv_safetensors(true)],
    },
    Target {
        name: "model-config",
        what: "config.json of a model folder (hdp_models::config::ModelConfig)",
        run: |b| {
            let _ = hdp_models::config::ModelConfig::from_json(text(b));
        },
        seeds: || {
            vec![
                TINY_CONFIG.as_bytes().to_vec(),
                std::fs::read("assets/all-MiniLM-L6-v2/config.json").unwrap_or_default(),
            ]
        },
    },
    Target {
        name: "model-weights",
        what: "model.safetensors of a BERT checkpoint (hdp_models::bert::BertModel::load)",
        run: |b| {
            let _ = hdp_models::bert::BertModel::load(b, Path::new("fuzz"), &tiny_config());
        },
        seeds: || vec![tiny_weights()],
    },
    Target {
        name: "trace",
        what: "trace files (hdp_core::Trace::from_slice, as hdp sim --trace reads them)",
        run: |b| {
            if let Ok(t) = hdp_core::Trace::from_slice(b, Path::new("fuzz")) {
                // A trace that validates must be usable by the simulator.
                let w = hdp_sim::Workload::from_trace(&t);
                if let Ok((hw, energy)) = hdp_sim::load_preset("edge") {
                    let _ = hdp_sim::simulate(&hw, &energy, &w);
                }
            }
        },
        seeds: || {
            vec![
                trace_seed(HdpConfig::default()),
                trace_seed(HdpConfig {
                    block_size: 2,
                    ..HdpConfig::default()
                }),
            ]
        },
    },
    Target {
        name: "preset",
        what: "simulator presets and energy tables (hdp_sim::config::parse_preset)",
        run: |b| {
            // The first half is the preset, the rest the energy table (split at a NUL byte).
            let t = text(b);
            let (hw, energy) = t.split_once('\0').unwrap_or((t, ""));
            let _ = hdp_sim::config::parse_preset(hw, energy, "fuzz");
        },
        seeds: || {
            let energy = include_str!("../../../../presets/energy-45nm.toml");
            ["hdpa-edge", "hdpa-server", "dense-edge"]
                .iter()
                .filter_map(|n| std::fs::read_to_string(format!("presets/{n}.toml")).ok())
                .chain([include_str!("../../../../presets/hdpa-edge.toml").to_string()])
                .map(|hw| format!("{hw}\0{energy}").into_bytes())
                .collect()
        },
    },
    Target {
        name: "peers",
        what: "the peer accelerator table (hdp_sim::config::parse_peers)",
        run: |b| {
            let _ = hdp_sim::config::parse_peers(text(b), Path::new("fuzz"));
        },
        seeds: || {
            vec![include_str!("../../../../presets/peers.toml")
                .as_bytes()
                .to_vec()]
        },
    },
];

/// Values that break size arithmetic and numeric parsing.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "-1e308",
    "1e-320",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "0.0",
    "-0",
    "3.5",
    "1099511627776",
    "\"x\"",
    "null",
    "true",
    "[]",
    "{}",
];
/// Single tokens worth inserting into text formats.
const TOKENS: &[&str] = &[
    ")",
    "(",
    ",",
    "[",
    "]",
    "{",
    "}",
    ":",
    "=",
    "\"",
    "'",
    "\\",
    "é",
    "\u{1F600}",
    "\0",
    "\n",
    "#",
    "-",
    ".",
];

fn mutate(rng: &mut SplitMix64, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut b = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = b.len();
        let pos = |rng: &mut SplitMix64| if len == 0 { 0 } else { rng.below(len) };
        match rng.below(9) {
            0 if len > 0 => {
                let i = pos(rng);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = pos(rng);
                b[i] = [0u8, 0xff, 0x7f, 0x80, b'0', b'9', b' ', b'"'][rng.below(8)];
            }
            2 => {
                let i = pos(rng);
                let n = 1 + rng.below(8);
                let ins: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
                b.splice(i..i, ins);
            }
            3 if len > 0 => {
                let i = pos(rng);
                let n = 1 + rng.below(len - i).min(64);
                b.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a range.
                let i = pos(rng);
                let n = 1 + rng.below(len - i).min(64);
                let chunk = b[i..i + n].to_vec();
                let j = pos(rng);
                b.splice(j..j, chunk);
            }
            5 => {
                // Replace a run of digits (or insert) with a hostile number.
                let starts: Vec<usize> = (0..len)
                    .filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()))
                    .collect();
                let num = NUMBERS[rng.below(NUMBERS.len())].as_bytes().to_vec();
                if starts.is_empty() {
                    let i = pos(rng);
                    b.splice(i..i, num);
                } else {
                    let s = starts[rng.below(starts.len())];
                    let e = (s..len).find(|&i| !b[i].is_ascii_digit()).unwrap_or(len);
                    b.splice(s..e, num);
                }
            }
            6 => {
                let i = pos(rng);
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes().to_vec();
                b.splice(i..i, t);
            }
            7 if len > 0 => {
                // Truncate.
                b.truncate(rng.below(len));
            }
            _ if !corpus.is_empty() => {
                // Splice with another input.
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() && len > 0 {
                    let i = pos(rng);
                    let j = rng.below(other.len());
                    b.truncate(i);
                    b.extend_from_slice(&other[j..]);
                }
            }
            _ => {}
        }
    }
    b
}

/// Runs one input; returns the panic message if it panicked.
fn run_one(t: &Target, input: &[u8]) -> Option<String> {
    if let Ok(mut cur) = CURRENT.lock() {
        cur.0.clear();
        cur.0.push_str(t.name);
        cur.1.clear();
        cur.1.extend_from_slice(input);
    }
    STARTED_MS.store(now_ms(), Ordering::Relaxed);
    RUNNING.store(true, Ordering::Relaxed);
    let r = std::panic::catch_unwind(|| (t.run)(input));
    RUNNING.store(false, Ordering::Relaxed);
    r.err().map(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn corpus_files(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

struct Options {
    seconds: f64,
    runs: Option<u64>,
    seed: u64,
    replay: bool,
    hang: f64,
    targets: Vec<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        seconds: 10.0,
        runs: None,
        seed: 1,
        replay: false,
        hang: 10.0,
        targets: Vec::new(),
    };
    let mut max_alloc_mib: usize = 1024;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--seconds" => {
                o.seconds = val("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--runs" => o.runs = Some(val("--runs")?.parse().map_err(|e| format!("--runs: {e}"))?),
            "--seed" => o.seed = val("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--hang-seconds" => {
                o.hang = val("--hang-seconds")?
                    .parse()
                    .map_err(|e| format!("--hang-seconds: {e}"))?
            }
            "--max-alloc-mib" => {
                max_alloc_mib = val("--max-alloc-mib")?
                    .parse()
                    .map_err(|e| format!("--max-alloc-mib: {e}"))?
            }
            "--replay" => o.replay = true,
            "--list" => {
                for t in TARGETS {
                    println!("{:<16} {}", t.name, t.what);
                }
                std::process::exit(0);
            }
            "-h" | "--help" => {
                println!(
                    "hdp-fuzz [--seconds S | --runs N] [--seed N] [--replay] [--hang-seconds S] \
                     [--max-alloc-mib M] [--list] [TARGET...]"
                );
                std::process::exit(0);
            }
            t if !t.starts_with('-') => {
                if !TARGETS.iter().any(|x| x.name == t) {
                    return Err(format!("unknown target {t:?} (see --list)"));
                }
                o.targets.push(t.into());
            }
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    if !(o.seconds.is_finite() && o.seconds > 0.0 && o.hang.is_finite() && o.hang > 0.0) {
        return Err("--seconds and --hang-seconds must be positive".into());
    }
    MAX_ALLOC.store(max_alloc_mib.saturating_mul(1 << 20), Ordering::Relaxed);
    Ok(o)
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    // A budget well under the allocation cap: inputs that declare more elements must be
    // refused by the budget check, not allocated.
    hdp_core::budget::set_max_elements(1 << 24);
    if !o.replay {
        // Quiet while fuzzing; replays show each panic's message and location.
        std::panic::set_hook(Box::new(|_| {}));
    }
    let hang_ms = (o.hang * 1000.0) as u64;
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        if RUNNING.load(Ordering::Relaxed)
            && now_ms().saturating_sub(STARTED_MS.load(Ordering::Relaxed)) > hang_ms
        {
            fail_and_abort(&format!("an input ran longer than {} s", hang_ms / 1000));
        }
    });
    let mut failures = 0;
    println!(
        "{:<16} {:>9} {:>9} {:>10} {:>9} {:>8}",
        "target", "inputs", "per s", "corpus", "slowest", "panics"
    );
    for t in TARGETS
        .iter()
        .filter(|t| o.targets.is_empty() || o.targets.iter().any(|n| n == t.name))
    {
        let files = corpus_files(t.name);
        let mut corpus: Vec<Vec<u8>> = (t.seeds)();
        corpus.extend(files.iter().map(|f| f.1.clone()));
        let mut rng = SplitMix64::new(o.seed ^ fnv(t.name.as_bytes()));
        let start = Instant::now();
        let (mut n, mut panics, mut slowest) = (0u64, 0u64, 0f64);
        let mut run = |input: &[u8], n: &mut u64| {
            let t0 = Instant::now();
            let r = run_one(t, input);
            slowest = slowest.max(t0.elapsed().as_secs_f64());
            *n += 1;
            if let Some(msg) = r {
                panics += 1;
                let path = save_crash(t.name, input);
                eprintln!(
                    "FAIL {}: panic \"{msg}\"; input saved to {}",
                    t.name,
                    path.display()
                );
            }
        };
        // Seeds and corpus files first, unmutated.
        for input in &corpus {
            run(input, &mut n);
        }
        if !o.replay {
            loop {
                let done = match o.runs {
                    Some(r) => n >= r,
                    None => start.elapsed().as_secs_f64() >= o.seconds,
                };
                if done {
                    break;
                }
                let base = &corpus[rng.below(corpus.len())];
                let input = mutate(&mut rng, base, &corpus);
                run(&input, &mut n);
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:<16} {n:>9} {:>9.0} {:>10} {:>8.3}s {panics:>8}",
            t.name,
            n as f64 / secs.max(1e-9),
            files.len(),
            slowest
        );
        failures += panics;
    }
    if failures > 0 {
        eprintln!("{failures} failing inputs (see fuzz/crashes/)");
        std::process::exit(1);
    }
}
