"""`Evaluate.py reconstruction`: how well the unmixing network (stage 1) reconstructs held-out HSIs.

Each file of the folder is prepared exactly as in training (`data.hsi_dataset.HSICropDataset` with the
checkpoint's bands, key and input normalisation), its abundances are inferred tile by tile
(`pipeline.unmixing_infer.tile_infer`) and decoded through the endmembers; PSNR, SSIM, SAM, ERGAS,
RMSE and CC come from `core.metrics`. The report also checks the abundances (sum to one, non-negative).
"""
import os
import time

import numpy as np
import torch
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.errors import UserError
from ubf.core.logs import get_logger
from ubf.core.metrics import average_metrics, quality_assessment_valid
from ubf.data.hsi_dataset import HSICropDataset
from ubf.evaluation.physical import PhysicalStats
from ubf.evaluation.plots import reconstruction_examples
from ubf.evaluation.report import check_out_dir, write_json, write_markdown

METRIC_KEYS = {"PSNR": "psnr", "SSIM": "ssim", "SAM": "sam", "ERGAS": "ergas", "RMSE": "rmse", "CC": "cc"}


@torch.no_grad()
def reconstruct(model, model_input: np.ndarray, device, tile: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) input -> (reconstruction (H, W, C), abundances (H, W, K)) as float32 numpy."""
    from ubf.pipeline.unmixing_infer import tile_infer
    image = torch.from_numpy(np.ascontiguousarray(model_input.transpose(2, 0, 1)))
    abundances = tile_infer(model, image, device, tile, overlap)
    recon = model.decode(abundances[None].to(device))[0].float().cpu()
    return recon.permute(1, 2, 0).numpy(), abundances.permute(1, 2, 0).numpy()


def run_reconstruction(ckpt: str, hsi_dir: str, out_dir: str, device: torch.device, overwrite: bool = False,
                       key: str | None = None, tile: int = 256, overlap: int = 32, examples: int = 4,
                       progress: bool = True) -> dict:
    """Write report.json (mean psnr, ssim, sam, ergas, rmse, cc and per file), summary.md and example PNGs."""
    from ubf.pipeline.unmixing_infer import check_tiling, load_unmixing_model
    log = get_logger()
    check_out_dir(out_dir, overwrite)
    started = time.time()
    model, state = load_unmixing_model(ckpt, device)
    data_cfg = state.get("config", {}).get("data", {})
    check_tiling(tile, overlap)
    dataset = HSICropDataset(hsi_dir, bands=state["band_indices"], key=key or data_cfg.get("key"),
                             input_norm=data_cfg.get("input_norm", "bands"), expected_bands=model.out_bands,
                             expected_from=f"the checkpoint {ckpt}")
    if dataset.n_bands != model.out_bands:
        raise UserError(f"{hsi_dir}: files have {dataset.n_bands} bands, but {ckpt} reconstructs {model.out_bands}")
    per_file, shown = [], []
    physical = PhysicalStats()
    report = {"ckpt": os.path.abspath(ckpt), "hsi_dir": os.path.abspath(hsi_dir), "n_files": len(dataset.files),
              "band_indices": ",".join(map(str, dataset.band_indices)), "num_endmembers": model.num_endmembers}
    for path in tqdm(dataset.files, desc="reconstruct", disable=not progress, dynamic_ncols=True):
        model_input, target = dataset.load(path)
        recon, abundances = reconstruct(model, model_input, device, tile, overlap)
        valid = dataset.valid_mask(path)  # no-data pixels of the file are left out
        metrics = {METRIC_KEYS[k]: v for k, v in quality_assessment_valid(target, recon, valid).items()}
        per_file.append(metrics)
        physical.add(recon, abundances, model.endmembers().detach().cpu().numpy())
        name = os.path.splitext(os.path.relpath(path, hsi_dir))[0].replace(os.sep, "__")
        report.update({f"file.{name}.{m}": v for m, v in metrics.items()})
        if len(shown) < examples:
            shown.append((name, target, recon))
    report.update(average_metrics(per_file))
    report.update({f"physical.{k}": v for k, v in physical.result().items()})
    if shown:
        reconstruction_examples(shown, dataset.band_indices, os.path.join(out_dir, "plots", "examples.png"))
    report["timing.total_s"] = time.time() - started
    write_json(report, out_dir)
    write_markdown(reconstruction_summary(report), out_dir)
    log.info("reconstruction on %d files: PSNR %.2f dB, SAM %.2f deg (%s)", len(per_file), report["psnr"],
             report["sam"], os.path.join(out_dir, "report.json"))
    return report


def reconstruction_summary(report: dict) -> list[str]:
    names = sorted({k.split(".")[1] for k in report if k.startswith("file.")})
    metrics = list(METRIC_KEYS.values())
    lines = ["# Reconstruction report (stage 1, unmixing network)", "",
             f"Checkpoint `{report['ckpt']}` on `{report['hsi_dir']}` ({report['n_files']} files, "
             f"input bands {report['band_indices']}, K = {report['num_endmembers']}).", "",
             "| file | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics),
             "| **mean** | " + " | ".join(f"{report[m]:.4f}" for m in metrics) + " |"]
    lines += [f"| {n} | " + " | ".join(f"{report[f'file.{n}.{m}']:.4f}" for m in metrics) + " |" for n in names]
    lines += ["", "PSNR in dB (per band, averaged), SAM in degrees. Abundance checks: sum-to-one error "
              f"{report.get('physical.abundance_sum_error_max', float('nan')):.2e} (max), negative fraction "
              f"{report.get('physical.abundance_negative_fraction', float('nan')):.2e}.", "",
              f"Time: {report['timing.total_s']:.1f} s. Plot: `plots/examples.png`."]
    return lines
