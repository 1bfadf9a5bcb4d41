#!/usr/bin/env python3
"""Time PyTorch's scaled_dot_product_attention on the shapes `hdp bench attention` uses, for a
side-by-side with our fast dense kernel. Not run in CI (torch is ~5 GB); needs `pip install torch`.

    python3 bench/sdpa.py --threads 1 --seq-lens 128,512,2048,4096
    RAYON_NUM_THREADS=1 hdp bench attention --json   # same shapes, ours

Reports the median of --repeats runs after one warm-up, float32, batch 1, 12 heads, d 64.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-lens", default="128,512,2048,4096")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for n in [int(x) for x in a.seq_lens.split(",")]:
        q, k, v = (torch.randn(1, a.heads, n, a.head_dim) for _ in range(3))
        with torch.inference_mode():
            F.scaled_dot_product_attention(q, k, v)
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                F.scaled_dot_product_attention(q, k, v)
                times.append((time.perf_counter() - t0) * 1e3)
        print(json.dumps({"seq_len": n, "heads": a.heads, "head_dim": a.head_dim, "threads": a.threads,
                          "torch": torch.__version__, "sdpa_ms": statistics.median(times)}))


if __name__ == "__main__":
    main()
