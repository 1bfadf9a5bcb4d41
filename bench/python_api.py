"""The Python package against what Python users run today (not run in CI: needs torch and
transformers in the environment that has `pip install ./python`).

1. Agreement: all-MiniLM-L6-v2 through transformers with attn_implementation="hdp" vs hdp's own
   BERT forward (`hdp.Embedder`, what `hdp embed` runs) with the same HDP configuration, on real
   texts from the fetched assets: cosine per text (mean, min), and with pruning off and float
   scores, the max difference to the eager model.
2. Speed: hdp.torch.sdpa vs torch.nn.functional.scaled_dot_product_attention on the same CPU
   tensors [1, 12, N, d], alternating, medians; and hdp.attention (NumPy) to show what the torch
   wrapper costs.

    RAYON_NUM_THREADS=1 python bench/python_api.py --threads 1
"""

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers

import hdp
import hdp.torch
import hdp.transformers

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets/all-MiniLM-L6-v2"


def texts(n_short, n_long):
    """The first `n_short` fresh/rotten Rotten Tomatoes snippets and the first 600 words of the
    first `n_long` Brown files (tags stripped)."""
    path = ROOT / "assets/rotten-tomatoes/rotten_tomatoes_corpus_full.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)
        short = [r["text"] for r in rows if r["category"] in ("fresh", "rotten")][:n_short]
    long = []
    for f in sorted((ROOT / "assets/brown").glob("c[a-r][0-9][0-9]"))[:n_long]:
        words = [w.rsplit("/", 1)[0] for w in f.read_text(errors="replace").split()]
        long.append(" ".join(words[:600]))
    return short, long


def agreement(batch, config, name):
    tok = transformers.AutoTokenizer.from_pretrained(str(MODEL))
    hdp.transformers.register(name, config=config)
    model = transformers.AutoModel.from_pretrained(str(MODEL), attn_implementation=name).eval()
    enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    hf = F.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    rust = hdp.Embedder(str(MODEL), config=config).encode(batch)
    cos = (hf * rust).sum(1)
    return hf, rust, cos


def timeit(f, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq-lens", default="128,512")
    ap.add_argument("--head-dims", default="32,64")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--texts", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = {"threads": a.threads, "hdp_threads": hdp.num_threads(), "isa": hdp.available_isas()[-1]}

    short, long = texts(a.texts, 16)
    res = {}
    for label, batch in [("short snippets", short), ("Brown passages (256 tokens)", long)]:
        _, _, cos = agreement(batch, hdp.Config(), "hdp-default")
        res[label] = {"texts": len(batch), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    # Pruning off, float scores and P.V: against the eager model.
    tok = transformers.AutoTokenizer.from_pretrained(str(MODEL))
    enc = tok(long, padding=True, truncation=True, max_length=256, return_tensors="pt")
    eager = transformers.AutoModel.from_pretrained(str(MODEL), attn_implementation="eager").eval()
    hdp.transformers.register("hdp-float", config=hdp.Config(no_block_pruning=True, score="float", pv="f32"))
    flt = transformers.AutoModel.from_pretrained(str(MODEL), attn_implementation="hdp-float").eval()
    with torch.no_grad():
        diff = (eager(**enc).last_hidden_state - flt(**enc).last_hidden_state).abs().max().item()
    res["pruning off, float scores: max |hidden - eager|"] = diff
    out["agreement"] = res

    speed = []
    for d in [int(x) for x in a.head_dims.split(",")]:
        for n in [int(x) for x in a.seq_lens.split(",")]:
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(1, 12, n, d, generator=g) for _ in range(3))
            qn, kn, vn = q.numpy(), k.numpy(), v.numpy()
            fs = {
                "torch_sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
                "hdp_torch_sdpa": lambda: hdp.torch.sdpa(q, k, v),
                "hdp_attention_numpy": lambda: hdp.attention(qn, kn, vn),
            }
            for f in fs.values():
                f()
            times = {name: [] for name in fs}
            for _ in range(a.reps):  # alternating
                for name, f in fs.items():
                    times[name].append(timeit(f, 1))
            med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            speed.append({"n": n, "d": d, "ms": med,
                          "hdp_speedup_vs_torch_sdpa": med["torch_sdpa"] / med["hdp_torch_sdpa"]})
    out["speed"] = speed
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
