"""Benchmark the evaluation's metric kernels against a straightforward per-pixel loop.

Prints one JSON line per kernel: the vectorised time, the loop time, their ratio, and the largest
difference between the two results (they must agree). Kernels:
- `sam`: core.metrics.sam on an (H, W, C) pair vs a Python loop of per-pixel arccos;
- `nearest_cosine`: evaluation.neighbors.max_cosine (chunked torch) vs a loop over query pixels, each
  against all reference pixels in numpy;
- `ssim` / `ssim_gaussian`: core.metrics against scikit-image's `structural_similarity` band by band
  (the reference's `compare_mssim`; for the Gaussian one with gaussian_weights=True and
  use_sample_covariance=False) on a 256 x 256 x 59 pair (a 2 x 2 mosaic of the real Chikusei crops,
  plus noise), timed interleaved, median of `--repeats`; `speedup` > 1 means ours is faster.
  Skipped when scikit-image is not installed. The load average is printed beside the times.

    python bench/bench_metrics.py [--hsi ../shared/data/paper/chikusei/block_118.mat] [--queries 2000]
                                  [--repeats 7] [--only ssim] [--dtype float32|float64]
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

from ubf.core.metrics import sam, ssim, ssim_gaussian  # noqa: E402
from ubf.evaluation.neighbors import max_cosine  # noqa: E402

DEFAULT_HSI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "paper",
                           "chikusei", "block_118.mat")


def load_cube(path: str) -> tuple[np.ndarray, str]:
    if os.path.isfile(path):
        from ubf.data.matio import read_hsi
        from ubf.data.normalize import minmax
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


def ssim_pair(hsi: str, rng) -> tuple[np.ndarray, np.ndarray, str]:
    """A 256 x 256 x 59 float32 pair: a 2 x 2 mosaic of the real crops beside `hsi` (flipped), and it plus noise."""
    folder = os.path.dirname(hsi)
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    files = [os.path.join(folder, f) for f in names if f.endswith(".mat")]
    if files:
        tiles = [load_cube(files[i % len(files)])[0] for i in range(4)]
        tiles = [tiles[0], tiles[1][:, ::-1], tiles[2][::-1], tiles[3][::-1, ::-1]]
        cube = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
        if cube.shape[:2] != (256, 256):  # crops of another size: repeat or cut to 256 x 256
            cube = np.resize(cube, (256, 256, cube.shape[2]))
        cube = np.ascontiguousarray(cube[:, :, :59])
        source = f"2x2 mosaic of {len(files)} crop(s) in {folder}"
    else:
        cube, source = rng.random((256, 256, 59)), "random 256x256x59"
    cube = cube.astype(np.float32)
    noisy = np.clip(cube + rng.normal(0, 0.02, cube.shape), 0, 1).astype(np.float32)
    return cube, noisy, source


def load_average() -> list[str] | None:
    return open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None


def bench_ssim(hsi: str, repeats: int, rng, dtype: str = "float32") -> None:
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        print(json.dumps({"kernel": "ssim", "skipped": "scikit-image is not installed"}))
        return
    gt, pred, source = ssim_pair(hsi, rng)
    gt, pred = gt.astype(dtype), pred.astype(dtype)  # both codes compute in the inputs' precision

    def skimage_mean(**options) -> float:  # the reference's compare_mssim: one call per band, data_range 1
        return float(np.mean([structural_similarity(gt[..., b], pred[..., b], data_range=1.0, **options)
                              for b in range(gt.shape[2])]))

    kernels = {
        "ssim": (lambda: ssim(gt, pred), skimage_mean),
        "ssim_gaussian": (lambda: ssim_gaussian(gt, pred),
                          lambda: skimage_mean(gaussian_weights=True, use_sample_covariance=False)),
    }
    for name, (ours, theirs) in kernels.items():
        times = {"ours": [], "skimage": []}
        for _ in range(repeats):  # interleaved: a change of load hits both alike
            for label, fn in (("ours", ours), ("skimage", theirs)):
                start = time.perf_counter()
                value = fn()
                times[label].append(time.perf_counter() - start)
                if label == "ours":
                    mine = value
                else:
                    reference = value
        ours_s, skimage_s = float(np.median(times["ours"])), float(np.median(times["skimage"]))
        print(json.dumps({"kernel": name, "data": source, "shape": list(gt.shape), "dtype": dtype, "repeats": repeats,
                          "ours_median_s": round(ours_s, 4), "skimage_median_s": round(skimage_s, 4),
                          "speedup": round(skimage_s / ours_s, 2),
                          "ours_range_s": [round(min(times["ours"]), 4), round(max(times["ours"]), 4)],
                          "skimage_range_s": [round(min(times["skimage"]), 4), round(max(times["skimage"]), 4)],
                          "abs_diff": abs(mine - reference), "threads": torch.get_num_threads(),
                          "loadavg": load_average()}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hsi", default=DEFAULT_HSI, help="HSI .mat for real spectra (random data if absent)")
    parser.add_argument("--queries", type=int, default=2000, help="query pixels for the nearest-cosine kernel")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats of the SSIM timings")
    parser.add_argument("--only", choices=["ssim"], help="run only the SSIM comparison")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="precision of the SSIM inputs (float32: what the networks produce)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(1)
    bench_ssim(args.hsi, args.repeats, rng, args.dtype)
    if args.only:
        return 0
    cube, source = load_cube(args.hsi)
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
