"""What the reference's global min-max of the endmember matrix does to synthetic spectra, measured.

Trains a small stage-1 model on one real Chikusei crop (per-pixel encoder, decoder initialised from
distant pixels: seconds on a CPU; the rescaling question does not depend on the encoder), infers the
abundances of the other crop, and synthesises that crop from its own abundances with the endmembers
`raw` (as trained) and `minmax` (the reference's `Synthesis.py`). The real crop is the ground truth the
synthesis should resemble: PSNR and SAM against it, and the error of the mean spectrum. One JSON line
per seed and mode, then the means.

    python bench/bench_synthesis_endmembers.py [--data ../shared/data/paper] [--seeds 0 1 2] [--epochs 30]
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ubf.core.logs import setup_logging  # noqa: E402
from ubf.core.metrics import psnr, sam  # noqa: E402
from ubf.data.hsi_dataset import prepare_pair  # noqa: E402
from ubf.data.matio import read_hsi  # noqa: E402
from ubf.pipeline.synthesis import prepare_endmembers, synthesize  # noqa: E402
from ubf.pipeline.unmixing_config import load_unmixing_config  # noqa: E402
from ubf.pipeline.unmixing_infer import load_unmixing_model, tile_infer  # noqa: E402
from ubf.pipeline.unmixing_train import train_unmixing  # noqa: E402


def run_seed(data: str, seed: int, epochs: int, work: str) -> list[dict]:
    folders = {}
    for role, block in (("train", "block_282.mat"), ("test", "block_118.mat")):
        folders[role] = os.path.join(work, role)
        os.makedirs(folders[role], exist_ok=True)
        link = os.path.join(folders[role], block)
        if not os.path.exists(link):
            os.symlink(os.path.abspath(os.path.join(data, "chikusei", block)), link)
    cfg = load_unmixing_config(None, {"data.train": folders["train"], "data.crop_size": 64, "data.samples_per_epoch": 16, "train.batch_size": 8,
                                      "train.epochs": epochs, "train.lr": 2e-3, "train.seed": seed,
                                      "model.encoder": "pixel_mlp", "model.decoder_init": "distant_pixels"})
    cfg["data"]["val"] = cfg["data"]["test"] = None  # no validation or test folder
    run = os.path.join(work, f"run_{seed}")
    train_unmixing(cfg, run, torch.device("cpu"))
    model, state = load_unmixing_model(os.path.join(run, "checkpoint", "latest.pth"), torch.device("cpu"))
    cube, _ = read_hsi(os.path.join(folders["test"], "block_118.mat"))
    model_input, real = prepare_pair(cube, state["band_indices"])
    abundances = tile_infer(model, torch.from_numpy(model_input.transpose(2, 0, 1).copy()), torch.device("cpu"))
    abundances = abundances.permute(1, 2, 0).numpy()
    endmembers = model.endmembers().detach().numpy()
    rows = []
    for mode in ("raw", "minmax"):
        _, hsi = synthesize(abundances, prepare_endmembers(endmembers, mode), simplex=False)
        rows.append({"seed": seed, "endmembers": mode, "psnr_vs_real": psnr(real, hsi), "sam_vs_real": sam(real, hsi),
                     "mean_spectrum_rmse": float(np.sqrt(((hsi.mean((0, 1)) - real.mean((0, 1))) ** 2).mean())),
                     "end_min": float(endmembers.min()), "end_max": float(endmembers.max())})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "paper"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.data, "chikusei", "block_118.mat")):
        raise SystemExit(f"{args.data}: no chikusei/block_118.mat and block_282.mat")
    setup_logging()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            for row in run_seed(args.data, seed, args.epochs, work):
                print(json.dumps(row), flush=True)
                rows.append(row)
    for mode in ("raw", "minmax"):
        picked = [r for r in rows if r["endmembers"] == mode]
        summary = {key: [float(np.mean([r[key] for r in picked])), float(np.std([r[key] for r in picked]))]
                   for key in ("psnr_vs_real", "sam_vs_real", "mean_spectrum_rmse")}
        print(json.dumps({"endmembers": mode, "seeds": len(picked), "mean_std": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
