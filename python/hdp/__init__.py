"""hdp: Hybrid Dynamic Pruning (HDP) attention on CPU, from Python.

The integer product Q_int.K_int^T alone decides which entries (blocks) of the attention matrix
each query keeps and which heads are pruned, before any softmax or P.V work; the kept scores are
exact int8 products. The same Rust kernels as the ``hdp`` command-line tool run underneath, with
the GIL released; rayon threads honour ``RAYON_NUM_THREADS``.

- :func:`attention`: HDP attention on NumPy float32 arrays ``[batch, heads, N, d]``.
- :class:`Config`: every HDP option, named and defaulted as the CLI's flags.
- :mod:`hdp.torch`: ``sdpa``, the signature of ``torch.nn.functional.scaled_dot_product_attention``.
- :mod:`hdp.transformers`: ``register()`` for ``attn_implementation="hdp"``.
- :class:`Embedder`: sentence embeddings from a Hugging Face-layout BERT folder.
- :func:`trace` and :func:`simulate`: collect what runs pruned and simulate the HDPA accelerator
  on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from . import _hdp
from ._hdp import Config, Embedder, __version__, available_isas, num_threads

__all__ = [
    "Config",
    "Embedder",
    "Trace",
    "attention",
    "available_isas",
    "dense_attention",
    "num_threads",
    "simulate",
    "trace",
    "__version__",
]

_lock = threading.Lock()
_active: List["Trace"] = []


def _f32(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.float32:
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{name} must hold floating-point values, got dtype {a.dtype}")
        a = a.astype(np.float32)
    return a


def _mask(mask: Any) -> Optional[np.ndarray]:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(
            f"mask must be a boolean array [batch, N] (True = a real token), got dtype {m.dtype}"
        )
    return m


def attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    mask: Any = None,
    causal: bool = False,
    config: Optional[Config] = None,
    layer: int = 0,
    isa: Optional[str] = None,
    reference: bool = False,
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """HDP attention of one layer.

    ``q``, ``k``, ``v``: float arrays ``[batch, heads, N, d]`` (float32 is used as is, other
    float types are converted). ``mask``: optional boolean ``[batch, N]``, True for real tokens
    (padded rows come out zero). ``causal``: keys after the query are masked. ``config``: an
    :class:`hdp.Config` (default: the library's default operating point). ``layer``: the layer
    index recorded in the trace. ``isa``: force a SIMD tier (``hdp.available_isas()``).
    ``reference``: run the plain reference implementation instead of the fast kernels (same
    decisions).

    Returns ``(out, stats)``: the output, float32 ``[batch, heads, N, d]``, and a dict of the
    sparsity achieved (``block_sparsity``, ``head_sparsity``, kept and valid block counts) and
    the work counted (``int_macs``, ``frac_macs``, ``exps``, ``sv_macs``, bytes of Q/K/V).
    Invalid inputs (shapes, NaN/Inf, sizes over the memory budget) raise ``ValueError``.
    """
    with _lock:
        collectors = list(_active)
    out, stats, layer_json = _hdp.attention(
        _f32(q, "q"),
        _f32(k, "k"),
        _f32(v, "v"),
        mask=_mask(mask),
        causal=causal,
        config=config,
        layer=layer,
        isa=isa,
        reference=reference,
        trace=bool(collectors),
    )
    for t in collectors:
        t._add(config, layer_json, stats)
    return out, stats


def dense_attention(
    q: Any, k: Any, v: Any, *, mask: Any = None, causal: bool = False, isa: Optional[str] = None
) -> np.ndarray:
    """Dense softmax attention (the library's fast kernel) on the same inputs as :func:`attention`."""
    return _hdp.dense_attention(
        _f32(q, "q"), _f32(k, "k"), _f32(v, "v"), mask=_mask(mask), causal=causal, isa=isa
    )


class Trace:
    """What HDP attention did inside a :func:`trace` block: every call's layer trace (kept-block
    masks per head, pruned heads, work counts), in the documented trace format
    (``docs/trace-format.md``), ready for :func:`simulate` or ``hdp sim --trace FILE``."""

    def __init__(self) -> None:
        self._config: Optional[Config] = None
        self._layers: List[str] = []
        self._stats: List[Dict[str, Any]] = []

    def _add(self, config: Optional[Config], layer_json: str, stats: Dict[str, Any]) -> None:
        config = config if config is not None else Config()
        if self._config is None:
            self._config = config
        elif config != self._config:
            raise ValueError(
                "a trace holds runs of one configuration; this call used "
                f"{config!r} but the trace holds {self._config!r}: use one hdp.trace() per configuration"
            )
        self._layers.append(layer_json)
        self._stats.append(stats)

    def __len__(self) -> int:
        return len(self._layers)

    @property
    def config(self) -> Optional[Config]:
        """The configuration of the recorded calls (None before the first)."""
        return self._config

    def summary(self) -> Dict[str, Any]:
        """Totals over every recorded call: blocks, heads, work counts and the sparsities."""
        keys = ["valid_blocks", "kept_blocks", "computed_blocks", "heads", "pruned_heads",
                "int_macs", "frac_macs", "exps", "sv_macs", "q_bytes", "k_bytes", "v_bytes"]
        tot: Dict[str, Any] = {k: sum(s[k] for s in self._stats) for k in keys}
        tot["calls"] = len(self._stats)
        tot["block_sparsity"] = (
            1.0 - tot["kept_blocks"] / tot["valid_blocks"] if tot["valid_blocks"] else 0.0
        )
        tot["head_sparsity"] = tot["pruned_heads"] / tot["heads"] if tot["heads"] else 0.0
        return tot

    def to_json(self) -> str:
        """The trace file's JSON text."""
        if self._config is None:
            raise ValueError("the trace is empty: no HDP attention ran inside hdp.trace()")
        return _hdp.build_trace(self._config, self._layers)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the trace file (``hdp sim --trace PATH`` reads it)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())


@contextlib.contextmanager
def trace() -> Iterator[Trace]:
    """Collects the trace of every HDP attention call (from any thread) inside the block::

        with hdp.trace() as t:
            model(**inputs)
        print(t.summary()["block_sparsity"])
        report = hdp.simulate(t, preset="edge")
    """
    t = Trace()
    with _lock:
        _active.append(t)
    try:
        yield t
    finally:
        with _lock:
            _active.remove(t)


def simulate(
    trace: Union[Trace, str, os.PathLike],
    preset: str = "edge",
    dense_preset: Optional[str] = None,
) -> Dict[str, Any]:
    """Simulates the HDPA accelerator (``preset``: ``edge``, ``server`` or a preset TOML file)
    and a dense accelerator of the same multiplier count on a trace (a :class:`Trace`, or the
    path of a trace file). Returns ``hdp sim --json``'s fields as a dict: ``hdpa`` and ``dense``
    reports (cycles, latency, energy, per-unit busy cycles), ``speedup_vs_dense`` and
    ``energy_ratio_dense_over_hdpa``."""
    if isinstance(trace, Trace):
        text = trace.to_json()
    else:
        with open(trace, encoding="utf-8") as f:
            text = f.read()
    return json.loads(_hdp.simulate(text, preset, dense_preset))
