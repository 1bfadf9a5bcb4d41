//! `hdp._hdp`, the native module of the `hdp` Python package (`python/`): HDP attention on NumPy
//! arrays, the sentence embedder and the HDPA simulator, with the GIL released while kernels
//! run. The Python layer (`python/hdp/`) adds the trace collector, the PyTorch SDPA drop-in and
//! the `transformers` registration on top; everything numeric happens here, in the same code
//! the CLI runs.

use hdp_attention::fast::{self, Isa};
use hdp_attention::{AttentionProblem, ValidConfig};
use hdp_core::{GivenValue, HdpOptions, Tensor, Trace, TraceSummary};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{PyArray2, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyString};
use std::path::PathBuf;

/// Errors of the library become `ValueError`s carrying the library's own message (the same
/// words the CLI prints).
fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// The instruction-set tier: `name` if given (`portable`, `avx2`, `avx-vnni`, `avx512-vnni`),
/// else `HDP_ISA` if set, else the best this CPU has.
fn choose_isa(name: Option<&str>) -> PyResult<Isa> {
    // `by_name` also refuses a tier this CPU lacks, naming the ones it has.
    match name {
        Some(n) => Isa::by_name(n).map_err(value_error),
        None => Ok(Isa::from_env()
            .map_err(value_error)?
            .unwrap_or_else(Isa::detect)),
    }
}

/// Every HDP option, validated: `hdp.Config(top_p=0.9, block_size=16)`. Option names and
/// defaults are the CLI's (`--frac-bits` is `frac_bits`); options left out take the library
/// defaults; a value out of range, an unknown name or two options that exclude each other
/// raise `ValueError` with the CLI's message.
#[pyclass(name = "Config", module = "hdp", frozen, eq)]
#[derive(Clone, PartialEq)]
struct Config {
    options: HdpOptions,
    cfg: ValidConfig,
}

fn opt_f64(name: &str, v: &Bound<'_, PyAny>) -> PyResult<f64> {
    if v.is_instance_of::<PyBool>() || v.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "option {name} takes a number, got {}",
            v.repr()?
        )));
    }
    v.extract::<f64>().map_err(|_| {
        PyTypeError::new_err(format!(
            "option {name} takes a number, got {}",
            v.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    })
}

fn opt_int<T: for<'a, 'py> FromPyObject<'a, 'py>>(name: &str, v: &Bound<'_, PyAny>) -> PyResult<T> {
    let bad = || {
        PyValueError::new_err(format!(
            "option {name} takes an integer in range, got {}",
            v.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    };
    if v.is_instance_of::<PyBool>()
        || v.is_instance_of::<PyFloat>()
        || v.is_instance_of::<PyString>()
    {
        return Err(bad());
    }
    v.extract::<T>().map_err(|_| bad())
}

fn opt_parse<T: std::str::FromStr<Err = hdp_core::Error>>(
    name: &str,
    v: &Bound<'_, PyAny>,
) -> PyResult<T> {
    let s: String = v
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("option {name} takes a string")))?;
    s.parse().map_err(value_error)
}

impl Config {
    fn from_options(options: HdpOptions) -> PyResult<Self> {
        let cfg = options.config().map_err(value_error)?;
        Ok(Config { options, cfg })
    }
}

#[pymethods]
impl Config {
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut o = HdpOptions::default();
        for (k, v) in kwargs.into_iter().flatten() {
            let name: String = k.extract()?;
            if v.is_none() {
                continue;
            }
            let n = name.as_str();
            match n {
                "bits" => o.bits = Some(opt_int(n, &v)?),
                "frac_bits" => o.frac_bits = Some(opt_int(n, &v)?),
                "prescale" => o.prescale = Some(opt_parse(n, &v)?),
                "q_prescale_exp" => o.q_prescale_exp = Some(opt_int(n, &v)?),
                "k_prescale_exp" => o.k_prescale_exp = Some(opt_int(n, &v)?),
                "block_size" => o.block_size = Some(opt_int(n, &v)?),
                "importance" => o.importance = Some(opt_parse(n, &v)?),
                "rho" => o.rho = Some(opt_f64(n, &v)?),
                "keep" => o.keep = Some(opt_f64(n, &v)?),
                "min_keep" => o.min_keep = Some(opt_int(n, &v)?),
                "top_p" => o.top_p = Some(opt_f64(n, &v)?),
                "no_block_pruning" => {
                    o.no_block_pruning = v.extract().map_err(|_| {
                        PyTypeError::new_err("option no_block_pruning takes True or False")
                    })?
                }
                "tau" => o.tau = Some(opt_f64(n, &v)?),
                "head_top_k" => o.head_top_k = Some(opt_int(n, &v)?),
                "head_importance" => o.head_importance = Some(opt_parse(n, &v)?),
                "pruned_head_output" => o.pruned_head_output = Some(opt_parse(n, &v)?),
                "score" => o.score = Some(opt_parse(n, &v)?),
                "pv" => o.pv = Some(opt_parse(n, &v)?),
                "centred" => {
                    o.centred = v
                        .extract()
                        .map_err(|_| PyTypeError::new_err("option centred takes True or False"))?
                }
                "keep_sink" => o.keep_sink = Some(opt_int(n, &v)?),
                "keep_local" => o.keep_local = Some(opt_int(n, &v)?),
                "compensate" => o.compensate = Some(opt_parse(n, &v)?),
                other => {
                    return Err(PyValueError::new_err(format!(
                        "unknown HDP option {other:?}; the options are {}",
                        HdpOptions::NAMES.join(", ")
                    )))
                }
            }
        }
        Config::from_options(o)
    }

    /// The full configuration (defaults filled in) as JSON, the form traces record.
    fn to_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.cfg).map_err(value_error)
    }

    /// The block-row threshold in words (`top-k 0.3`, `top-p 0.9`, ...).
    #[getter]
    fn threshold(&self) -> String {
        self.cfg.threshold.to_string()
    }

    /// Block size b.
    #[getter]
    fn block_size(&self) -> usize {
        self.cfg.block_size
    }

    fn __repr__(&self) -> String {
        let inner: Vec<String> = self
            .options
            .given()
            .into_iter()
            .map(|(k, v)| match v {
                GivenValue::Int(x) => format!("{k}={x}"),
                GivenValue::Float(x) => format!("{k}={x:?}"),
                GivenValue::Bool(x) => format!("{k}={}", if x { "True" } else { "False" }),
                GivenValue::Text(x) => format!("{k}={x:?}"),
            })
            .collect();
        format!(
            "hdp.Config({}) -> {} b={} {}-bit f={} score={} pv={}",
            inner.join(", "),
            self.cfg.threshold,
            self.cfg.block_size,
            self.cfg.q_format.bits,
            self.cfg.q_format.frac_bits,
            self.cfg.score_mode,
            self.cfg.pv
        )
    }

    /// Every option name.
    #[staticmethod]
    fn option_names() -> Vec<&'static str> {
        HdpOptions::NAMES.to_vec()
    }
}

fn config_of(config: Option<&Bound<'_, Config>>) -> ValidConfig {
    config.map(|c| c.get().cfg).unwrap_or_default()
}

/// Q, K, V and the key-padding mask as an [`AttentionProblem`] (copied once into the library's
/// tensors; the problem checks shapes and finiteness and says what is wrong).
fn problem(
    q: &PyReadonlyArrayDyn<'_, f32>,
    k: &PyReadonlyArrayDyn<'_, f32>,
    v: &PyReadonlyArrayDyn<'_, f32>,
    mask: Option<&PyReadonlyArrayDyn<'_, bool>>,
    causal: bool,
) -> PyResult<AttentionProblem> {
    let tensor = |name: &str, a: &PyReadonlyArrayDyn<'_, f32>| -> PyResult<Tensor> {
        if a.ndim() != 4 {
            return Err(PyValueError::new_err(format!(
                "{name} must have shape [batch, heads, N, d], got {:?}",
                a.shape()
            )));
        }
        let data = match a.as_slice() {
            Ok(s) => s.to_vec(),
            Err(_) => a.as_array().iter().copied().collect(),
        };
        Tensor::new(a.shape().to_vec(), data).map_err(value_error)
    };
    let (qt, kt, vt) = (tensor("q", q)?, tensor("k", k)?, tensor("v", v)?);
    let token_valid = match mask {
        None => None,
        Some(m) => {
            let (b, n) = (qt.shape()[0], qt.shape()[2]);
            if m.shape() != [b, n] {
                return Err(PyValueError::new_err(format!(
                    "mask must be a boolean array [batch, N] = [{b}, {n}] (True = a real token, \
                     False = padding), got shape {:?}",
                    m.shape()
                )));
            }
            Some(m.as_array().iter().copied().collect())
        }
    };
    AttentionProblem::new(qt, kt, vt, token_valid, causal).map_err(value_error)
}

fn to_numpy<'py>(py: Python<'py>, t: Tensor) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let shape = t.shape().to_vec();
    let a = ArrayD::from_shape_vec(IxDyn(&shape), t.into_data()).map_err(value_error)?;
    Ok(PyArrayDyn::from_owned_array(py, a))
}

fn summary_dict<'py>(py: Python<'py>, s: &TraceSummary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("block_sparsity", s.block_sparsity())?;
    d.set_item("effective_block_sparsity", s.effective_block_sparsity())?;
    d.set_item("head_sparsity", s.head_sparsity())?;
    d.set_item("valid_blocks", s.valid_blocks)?;
    d.set_item("kept_blocks", s.kept_blocks)?;
    d.set_item("computed_blocks", s.computed_blocks)?;
    d.set_item("heads", s.heads)?;
    d.set_item("pruned_heads", s.pruned_heads)?;
    let c = &s.counts;
    for (k, v) in [
        ("int_macs", c.int_macs),
        ("frac_macs", c.frac_macs),
        ("exps", c.exps),
        ("sv_macs", c.sv_macs),
        ("q_bytes", c.q_bytes),
        ("k_bytes", c.k_bytes),
        ("v_bytes", c.v_bytes),
    ] {
        d.set_item(k, v)?;
    }
    Ok(d)
}

/// What [`attention`] returns: output, stats, and the layer trace's JSON when asked for.
type AttentionResult<'py> = (
    Bound<'py, PyArrayDyn<f32>>,
    Bound<'py, PyDict>,
    Option<String>,
);

/// HDP attention on `[batch, heads, N, d]` float32 arrays. Returns the output, a dict of
/// sparsity figures and work counts, and with `trace` the layer's trace as JSON (the Python
/// layer asks for it while a trace is being collected; serializing the kept-block masks costs
/// about as much as the kernel at N = 512).
#[pyfunction]
#[pyo3(signature = (q, k, v, *, mask=None, causal=false, config=None, layer=0, isa=None, reference=false, trace=false))]
#[allow(clippy::too_many_arguments)]
fn attention<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    v: PyReadonlyArrayDyn<'py, f32>,
    mask: Option<PyReadonlyArrayDyn<'py, bool>>,
    causal: bool,
    config: Option<&Bound<'py, Config>>,
    layer: usize,
    isa: Option<&str>,
    reference: bool,
    trace: bool,
) -> PyResult<AttentionResult<'py>> {
    let cfg = config_of(config);
    let isa = choose_isa(isa)?;
    let p = problem(&q, &k, &v, mask.as_ref(), causal)?;
    let out = py
        .detach(|| {
            if reference {
                hdp_attention::hdp::attention(&p, &cfg, layer)
            } else {
                fast::hdp_attention(&p, &cfg, layer, isa)
            }
        })
        .map_err(value_error)?;
    let stats = summary_dict(py, &out.trace.summary())?;
    stats.set_item("kernel", if reference { "reference" } else { isa.name() })?;
    let pruned: Vec<Vec<usize>> = out
        .trace
        .sequences
        .iter()
        .map(|s| {
            s.heads
                .iter()
                .filter(|h| h.pruned)
                .map(|h| h.head)
                .collect()
        })
        .collect();
    stats.set_item("pruned_heads_per_sequence", pruned)?;
    let json = trace
        .then(|| serde_json::to_string(&out.trace))
        .transpose()
        .map_err(value_error)?;
    Ok((to_numpy(py, out.output)?, stats, json))
}

/// Dense softmax attention (the library's fast dense kernel) on the same inputs.
#[pyfunction]
#[pyo3(signature = (q, k, v, *, mask=None, causal=false, isa=None))]
fn dense_attention<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    v: PyReadonlyArrayDyn<'py, f32>,
    mask: Option<PyReadonlyArrayDyn<'py, bool>>,
    causal: bool,
    isa: Option<&str>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let isa = choose_isa(isa)?;
    let p = problem(&q, &k, &v, mask.as_ref(), causal)?;
    let out = py
        .detach(|| fast::dense_attention(&p, isa))
        .map_err(value_error)?;
    to_numpy(py, out)
}

/// A complete trace file's JSON from a configuration and layer traces (each the JSON that
/// [`attention`] returned); the layers must come from runs of that configuration.
#[pyfunction]
fn build_trace(config: &Bound<'_, Config>, layers: Vec<String>) -> PyResult<String> {
    let mut t = Trace::new(
        concat!("hdp python ", env!("CARGO_PKG_VERSION")),
        config.get().cfg,
    );
    for (i, l) in layers.iter().enumerate() {
        t.layers.push(serde_json::from_str(l).map_err(|e| {
            PyValueError::new_err(format!("layer trace {i} is not a layer trace: {e}"))
        })?);
    }
    t.validate().map_err(PyValueError::new_err)?;
    serde_json::to_string(&t).map_err(value_error)
}

/// Simulates HDPA (`preset`: edge, server or a preset TOML file) and the dense baseline of
/// the same multiplier count on a trace (JSON text of a trace file). Returns the simulator's
/// JSON (`hdp sim --json`'s fields).
#[pyfunction]
#[pyo3(signature = (trace_json, preset="edge", dense_preset=None))]
fn simulate(
    py: Python<'_>,
    trace_json: &str,
    preset: &str,
    dense_preset: Option<&str>,
) -> PyResult<String> {
    let trace = Trace::from_slice(trace_json.as_bytes(), std::path::Path::new("<trace>"))
        .map_err(value_error)?;
    let (hw, energy) = hdp_sim::load_preset(preset).map_err(value_error)?;
    let dense_name = dense_preset.unwrap_or(match preset {
        "server" => "dense-server",
        _ => "dense-edge",
    });
    let (dense_hw, dense_energy) = hdp_sim::load_preset(dense_name).map_err(value_error)?;
    let w = hdp_sim::Workload::from_trace(&trace);
    if w.layers.is_empty() {
        return Err(PyValueError::new_err(
            "the trace has no layers: run attention inside hdp.trace() first",
        ));
    }
    let (hdpa, dense) = py.detach(|| {
        (
            hdp_sim::simulate(&hw, &energy, &w),
            hdp_sim::simulate(&dense_hw, &dense_energy, &w),
        )
    });
    let out = serde_json::json!({
        "preset": preset, "dense_preset": dense_name,
        "energy_table": energy.source, "process_nm": energy.process_nm,
        "hdpa": hdpa, "dense": dense,
        "speedup_vs_dense": dense.latency_us / hdpa.latency_us,
        "energy_ratio_dense_over_hdpa": dense.energy_uj / hdpa.energy_uj,
    });
    serde_json::to_string(&out).map_err(value_error)
}

/// Sentence embeddings from a Hugging Face-layout BERT folder (sentence-transformers'
/// pooling and normalization), dense or HDP attention:
/// `hdp.Embedder(model_dir, attention="hdp", config=hdp.Config(top_p=0.9)).encode(texts)`.
#[pyclass(name = "Embedder", module = "hdp")]
struct Embedder {
    model: hdp_models::SentenceEmbedder,
    hdp: Option<(ValidConfig, Option<Vec<hdp_core::RowThreshold>>)>,
    isa: Isa,
    last: Option<TraceSummary>,
}

#[pymethods]
impl Embedder {
    #[new]
    #[pyo3(signature = (model_dir=None, *, attention="hdp", config=None, calibration=None, max_length=None, isa=None))]
    fn new(
        model_dir: Option<PathBuf>,
        attention: &str,
        config: Option<&Bound<'_, Config>>,
        calibration: Option<PathBuf>,
        max_length: Option<usize>,
        isa: Option<&str>,
    ) -> PyResult<Self> {
        let dir = model_dir.unwrap_or_else(hdp_models::default_model_dir);
        let mut model = hdp_models::SentenceEmbedder::load(&dir).map_err(value_error)?;
        if let Some(n) = max_length {
            model.set_max_length(n).map_err(value_error)?;
        }
        let hdp = match attention {
            "dense" => {
                if config.is_some() || calibration.is_some() {
                    return Err(PyValueError::new_err(
                        "config and calibration apply to HDP attention; drop them or use attention=\"hdp\"",
                    ));
                }
                None
            }
            "hdp" => {
                let cfg = config_of(config);
                let thresholds = match calibration {
                    None => None,
                    Some(path) => {
                        if config.is_some_and(|c| c.get().options.threshold_given()) {
                            return Err(PyValueError::new_err(
                                "a calibration sets every layer's threshold; drop keep/rho/top_p/no_block_pruning from the config",
                            ));
                        }
                        let cal = hdp_core::Calibration::read(&path).map_err(value_error)?;
                        cal.check_options(&cfg).map_err(|e| {
                            PyValueError::new_err(format!("{}: {e}", path.display()))
                        })?;
                        let layers = model.config().num_hidden_layers;
                        if cal.layers != layers {
                            return Err(PyValueError::new_err(format!(
                                "{} was calibrated for {} layers ({}) but the model {} has {layers}: run hdp calibrate --model for it",
                                path.display(), cal.layers, cal.model, dir.display()
                            )));
                        }
                        Some(cal.thresholds)
                    }
                };
                Some((cfg, thresholds))
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "attention must be \"hdp\" or \"dense\", got {other:?}"
                )))
            }
        };
        Ok(Embedder {
            model,
            hdp,
            isa: choose_isa(isa)?,
            last: None,
        })
    }

    /// Embeddings of `texts`, one row per text in input order, as a float32 array
    /// `[len(texts), dim]` (L2-normalized when the model's sentence-transformers setting says
    /// so, or as `normalize` says).
    #[pyo3(signature = (texts, *, batch_size=32, normalize=None))]
    fn encode<'py>(
        &mut self,
        py: Python<'py>,
        texts: Vec<String>,
        batch_size: usize,
        normalize: Option<bool>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        let normalize = normalize.unwrap_or(self.model.normalizes);
        let (model, hdp, isa) = (&self.model, &self.hdp, self.isa);
        let (rows, summary) = py
            .detach(|| -> hdp_models::Result<_> {
                let enc = model.tokenize(&texts)?;
                match hdp {
                    None => {
                        let mut b = hdp_models::DenseFast(isa);
                        Ok((
                            model.embed_encoded(
                                &enc,
                                &mut b,
                                batch_size,
                                normalize,
                                &mut |_| {},
                            )?,
                            None,
                        ))
                    }
                    Some((cfg, thresholds)) => {
                        let mut b = hdp_models::HdpBackend::new(*cfg, 0)?;
                        b.kernel = hdp_models::HdpKernel::Fast(isa);
                        if let Some(t) = thresholds {
                            b = b.with_layer_thresholds(t.clone())?;
                        }
                        let rows = model.embed_encoded(
                            &enc,
                            &mut b,
                            batch_size,
                            normalize,
                            &mut |_| {},
                        )?;
                        Ok((rows, Some(b.summary())))
                    }
                }
            })
            .map_err(value_error)?;
        self.last = summary;
        let dim = self.model.config().hidden_size;
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        let a = numpy::ndarray::Array2::from_shape_vec((flat.len() / dim.max(1), dim), flat)
            .map_err(value_error)?;
        Ok(PyArray2::from_owned_array(py, a))
    }

    /// Sparsity figures and work counts of the last `encode` with HDP attention (None for dense
    /// attention or before the first call).
    fn last_stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.last.as_ref().map(|s| summary_dict(py, s)).transpose()
    }

    /// Embedding width.
    #[getter]
    fn dim(&self) -> usize {
        self.model.config().hidden_size
    }

    /// Most tokens per text (longer texts are truncated, as sentence-transformers does).
    #[getter]
    fn max_length(&self) -> usize {
        self.model.max_length()
    }
}

/// Threads the kernels use: `RAYON_NUM_THREADS` if set when the first kernel ran, else the
/// CPU count.
#[pyfunction]
fn num_threads() -> usize {
    rayon::current_num_threads()
}

/// Instruction-set tiers this CPU can run, best last.
#[pyfunction]
fn available_isas() -> Vec<&'static str> {
    Isa::available_tiers().iter().map(|i| i.name()).collect()
}

#[pymodule]
fn _hdp(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Config>()?;
    m.add_class::<Embedder>()?;
    m.add_function(wrap_pyfunction!(attention, m)?)?;
    m.add_function(wrap_pyfunction!(dense_attention, m)?)?;
    m.add_function(wrap_pyfunction!(build_trace, m)?)?;
    m.add_function(wrap_pyfunction!(simulate, m)?)?;
    m.add_function(wrap_pyfunction!(available_isas, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
