"""Benchmark the evaluation's metric kernels against a straightforward per-pixel loop.

Prints one JSON line per kernel: the vectorised time, the loop time, their ratio, and the largest
difference between the two results (they must agree). Kernels:
- `sam`: core.metrics.sam on an (H, W, C) pair vs a Python loop of per-pixel arccos;
- `nearest_cosine`: evaluation.neighbors.max_cosine (chunked torch) vs a loop over query pixels, each
  against all reference pixels in numpy.

    python bench/bench_metrics.py [--hsi ../shared/data/paper/chikusei/block_118.mat] [--queries 2000]
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.metrics import sam  # noqa: E402
from evaluation.neighbors import max_cosine  # noqa: E402

DEFAULT_HSI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "paper",
                           "chikusei", "block_118.mat")


def load_cube(path: str) -> tuple[np.ndarray, str]:
    if os.path.isfile(path):
        from data.matio import read_hsi
        from data.normalize import minmax
        return minmax(read_hsi(path)[0]).astype(np.float64), os.path.basename(path)
    return np.random.default_rng(0).random((128, 128, 59)), "random 128x128x59"


def timed(fn, repeats: int = 3):
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def sam_loop(gt: np.ndarray, pred: np.ndarray) -> float:
    angles = []
    for g, p in zip(gt.reshape(-1, gt.shape[2]), pred.reshape(-1, pred.shape[2])):
        cos = float(np.dot(g, p) / max(np.linalg.norm(g) * np.linalg.norm(p), 1e-12))
        angles.append(math.degrees(math.acos(min(1.0, max(-1.0, cos)))))
    return float(np.mean(angles))


def nearest_loop(queries: np.ndarray, refs: np.ndarray) -> np.ndarray:
    unit_refs = refs / np.linalg.norm(refs, axis=1, keepdims=True).clip(1e-12)
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        out[i] = (unit_refs @ (q / max(np.linalg.norm(q), 1e-12))).max()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hsi", default=DEFAULT_HSI, help="HSI .mat for real spectra (random data if absent)")
    parser.add_argument("--queries", type=int, default=2000, help="query pixels for the nearest-cosine kernel")
    args = parser.parse_args(argv)
    cube, source = load_cube(args.hsi)
    rng = np.random.default_rng(1)
    noisy = cube + rng.normal(0, 0.02, cube.shape)

    fast_t, fast = timed(lambda: sam(cube, noisy))
    loop_t, loop = timed(lambda: sam_loop(cube, noisy), repeats=1)
    print(json.dumps({"kernel": "sam", "data": source, "pixels": cube.shape[0] * cube.shape[1],
                      "vectorised_s": round(fast_t, 5), "loop_s": round(loop_t, 5),
                      "speedup": round(loop_t / fast_t, 1), "max_abs_diff_deg": abs(fast - loop),
                      "threads": torch.get_num_threads()}))

    refs = cube.reshape(-1, cube.shape[2])
    queries = noisy.reshape(-1, cube.shape[2])[rng.choice(refs.shape[0], args.queries, replace=False)]
    q_t, r_t = torch.from_numpy(queries).float(), torch.from_numpy(refs).float()
    fast_t, (fast, _) = timed(lambda: max_cosine(q_t, r_t))
    loop_t, loop = timed(lambda: nearest_loop(queries, refs), repeats=1)
    print(json.dumps({"kernel": "nearest_cosine", "data": source, "queries": len(queries), "references": len(refs),
                      "vectorised_s": round(fast_t, 5), "loop_s": round(loop_t, 5),
                      "speedup": round(loop_t / fast_t, 1),
                      "max_abs_diff": float(np.abs(fast.double().numpy() - loop).max()),
                      "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
