#!/usr/bin/env python3
"""End-to-end embeddings: sentence-transformers (PyTorch) vs `hdp embed`, same model folder,
same texts, same thread count, alternating runs, medians. Not run in CI (torch is large); needs
`pip install sentence-transformers`.

    python3 bench/embed_compare.py --texts /tmp/long.txt --max-length 512 --threads 1
    python3 bench/embed_compare.py --texts /tmp/short.txt --threads 2 --attention dense,hdp

Times are in-process encode times: sentence-transformers' `encode` after one warm-up, and the
"embedded N texts ... in X s" figure `hdp embed` prints (model loading excluded on both sides).
Also reports the max |difference| and the min cosine between the two on the dense path.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", required=True, help="one text per line")
    ap.add_argument("--model", default="assets/all-MiniLM-L6-v2")
    ap.add_argument("--hdp", default="target/release/hdp")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--attention", default="dense,hdp", help="hdp attention modes to time")
    ap.add_argument("--hdp-args", default="", help="extra flags for hdp embed (e.g. '-b 16')")
    a = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(a.threads)
    texts = [l.rstrip("\n") for l in open(a.texts, encoding="utf-8") if l.strip()]
    st = SentenceTransformer(a.model, device="cpu")
    st.max_seq_length = a.max_length
    ref = st.encode(texts, batch_size=a.batch_size)  # warm-up, and the reference vectors

    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    modes = [m for m in a.attention.split(",") if m]
    times = {"sentence-transformers": []}
    times.update({f"hdp {m}": [] for m in modes})
    agreement = {}
    for r in range(a.repeats):
        t = time.perf_counter()
        st.encode(texts, batch_size=a.batch_size)
        times["sentence-transformers"].append(time.perf_counter() - t)
        for m in modes:
            out = f"/tmp/hdp-embed-compare-{m}.npy"
            cmd = [a.hdp, "embed", "--file", a.texts, "--attention", m, "--max-length",
                   str(a.max_length), "--batch-size", str(a.batch_size), "--format", "npy",
                   "-o", out] + a.hdp_args.split()
            if m == "dense":
                cmd = [c for c in cmd if c not in a.hdp_args.split()]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            secs = float(re.search(r" in ([0-9.]+) s", p.stderr).group(1))
            times[f"hdp {m}"].append(secs)
            if r == 0:
                e = np.load(out)
                cos = (e * ref).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref, axis=1)
                agreement[m] = (float(np.abs(e - ref).max()), float(cos.min()), float(cos.mean()))
    st_med = statistics.median(times["sentence-transformers"])
    rows = []
    print(f"{len(texts)} texts, max length {a.max_length}, {a.threads} thread(s), "
          f"torch {torch.__version__}, medians of {a.repeats} alternating runs")
    print(f"{'contender':<24} {'median s':>9} {'vs torch':>9}  agreement with sentence-transformers")
    for name, ts in times.items():
        med = statistics.median(ts)
        m = name.removeprefix("hdp ")
        agr = agreement.get(m)
        extra = "" if agr is None else f"  max|diff| {agr[0]:.1e}, cosine min {agr[1]:.4f} mean {agr[2]:.4f}"
        print(f"{name:<24} {med:>9.3f} {st_med / med:>8.2f}x{extra}")
        rows.append({"contender": name, "median_s": med, "times_s": ts, "speedup_vs_torch": st_med / med,
                     "agreement": agr})
    print(json.dumps({"threads": a.threads, "max_length": a.max_length, "texts": len(texts),
                      "torch": torch.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
