"""`Evaluate.py reconstruction`: how well the unmixing network (stage 1) reconstructs held-out HSIs.

Each file of the folder is prepared exactly as in training (`data.hsi_dataset.HSICropDataset` with the
checkpoint's bands, key and input normalisation), its abundances are inferred tile by tile
(`pipeline.unmixing_infer.tile_infer`) and decoded through the endmembers; PSNR, SSIM, SAM, ERGAS,
RMSE and CC come from `core.metrics`. The report also checks the abundances (sum to one, non-negative)
and scores stage 1 on what synthesis needs (`evaluation.unmixing_scores`): the contrast of the inferred
maps, each endmember's distance to the nearest real pixel of the files, and, where a `.mat` file carries
a reference (`REFERENCE_ABUNDANCE_KEYS`, `REFERENCE_ENDMEMBER_KEYS`), abundance RMSE and endmember SAD.
"""
import os
import time

import numpy as np
import torch
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.errors import UserError
from ubf.core.logs import get_logger
from ubf.core.metrics import average_metrics, quality_assessment_valid
from ubf.data.cubes import read_cube
from ubf.data.hsi_dataset import HSICropDataset
from ubf.data.matio import mat_keys, mat_shape, read_mat
from ubf.evaluation.physical import PhysicalStats
from ubf.evaluation.plots import reconstruction_examples
from ubf.evaluation.report import check_out_dir, write_json, write_markdown
from ubf.evaluation.unmixing_scores import (AbundanceErrors, MapContrast, NearestPixels, endmember_sad,
                                            reference_abundances, reference_endmembers)

METRIC_KEYS = {"PSNR": "psnr", "SSIM": "ssim", "SAM": "sam", "ERGAS": "ergas", "RMSE": "rmse", "CC": "cc"}
# Reference abundances of a .mat HSI, the first present: the unmixing benchmark's S_GT (H x W x K), a
# ground-truth Abu_GT, Jasper Ridge's A (K x H*W, column-major), the demo scenes' true Abu (H x W x K).
REFERENCE_ABUNDANCE_KEYS = ("S_GT", "Abu_GT", "A", "Abu")
# Reference endmembers, on the file's raw scale: the benchmark's GT (K x C), Jasper Ridge's M (C x K).
REFERENCE_ENDMEMBER_KEYS = ("GT", "M", "End_GT")


@torch.no_grad()
def reconstruct(model, model_input: np.ndarray, device, tile: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) input -> (reconstruction (H, W, C), abundances (H, W, K)) as float32 numpy. A model with a
    brightness channel (tile_infer gives it last) reconstructs brightness x (E a); the abundances are the K maps."""
    from ubf.pipeline.unmixing_infer import tile_infer
    image = torch.from_numpy(np.ascontiguousarray(model_input.transpose(2, 0, 1)))
    maps = tile_infer(model, image, device, tile, overlap)
    abundances, brightness = model.split_maps(maps, channel_axis=0)
    recon = model.decode(abundances[None].to(device))[0].float().cpu()
    if brightness is not None:
        recon = recon * brightness
    return recon.permute(1, 2, 0).numpy(), abundances.permute(1, 2, 0).numpy()


def read_references(path: str, height: int, width: int, bands: int, abundance_key: str | None = None,
                    cube_key: str | None = None) -> dict:
    """Reference abundances (H, W, K) and endmembers (C, K) of one HSI file, each None when absent.

    `abundance_key`: the variable to read (an error when a file lacks it), "none" for no abundances, or
    None for the first of REFERENCE_ABUNDANCE_KEYS present.
    Only `.mat` files carry them. Endmembers are mapped with the file's own min-max (the scale the model
    reconstructs); a `GT` that is not a matrix (the input cube of an inferred-abundance file) is not read.
    Returns abundances, abundance_key, endmembers, endmember_key (and endmembers_raw, on the file's scale).
    """
    found = {"abundances": None, "abundance_key": None, "endmembers": None, "endmember_key": None,
             "endmembers_raw": None}
    if not path.lower().endswith(".mat"):
        return found
    available = mat_keys(path)
    if abundance_key == "none":
        names = []
    elif abundance_key is not None:
        if abundance_key not in available:
            raise UserError(f"{path}: no reference abundance key '{abundance_key}' (found: {', '.join(available)})")
        names = [abundance_key]
    else:
        names = [k for k in REFERENCE_ABUNDANCE_KEYS if k in available]
    ends = [k for k in REFERENCE_ENDMEMBER_KEYS if k in available and len(mat_shape(path, k)) == 2]
    contents = read_mat(path, names[:1] + ends) if names or ends else {}
    if names:
        found["abundances"] = reference_abundances(contents[names[0]], height, width, f"{path}: '{names[0]}'")
        found["abundance_key"] = names[0]
    for name in ends:
        matrix = reference_endmembers(contents[name], bands, name, f"{path}: '{name}'")
        if matrix is None:
            get_logger().info("%s: '%s' of shape %s is not an endmember matrix of %d bands; not a reference", path,
                              name, np.shape(contents[name]), bands)
        else:
            cube, _ = read_cube(path, cube_key, bands)
            lo, hi = float(cube.min()), float(cube.max())
            found["endmembers"], found["endmember_key"] = (matrix - lo) / max(hi - lo, 1e-12), name
            found["endmembers_raw"] = matrix
            break
    return found


def synthesis_scores(contrast: MapContrast, nearest: NearestPixels, errors: AbundanceErrors | None,
                     sads: list[dict]) -> dict:
    """Flat report keys of the scores for synthesis (docs/evaluation.md lists them)."""
    out = {}
    maps = contrast.result()
    out["contrast.max_abundance_mean"] = maps["max_abundance_mean"]
    out["contrast.spatial_std_mean"] = maps["spatial_std_mean"]
    out.update({f"contrast.spatial_std.e{i + 1}": float(v) for i, v in enumerate(maps["spatial_std"])})
    near = nearest.result()
    out["endmembers.sam_to_data_max_deg"] = float(np.max(near["sam_deg"]))
    out["endmembers.sam_to_data_mean_deg"] = float(np.mean(near["sam_deg"]))
    out.update({f"endmembers.sam_to_data_deg.e{i + 1}": float(v) for i, v in enumerate(near["sam_deg"])})
    out["endmembers.distance_to_data_rel_max"] = float(np.max(near["distance_rel"]))
    out.update({f"endmembers.distance_to_data_rel.e{i + 1}": float(v) for i, v in enumerate(near["distance_rel"])})
    if errors is not None and errors.pixels:
        result = errors.result()
        out["abundance_rmse"] = result["rmse"]
        for j, (rmse, match) in enumerate(zip(result["rmse_per_reference"], result["match"])):
            out[f"abundance_rmse.ref{j + 1}"] = float(rmse)
            out[f"abundance_match.ref{j + 1}"] = f"e{match + 1}" if match >= 0 else None
        if result["merge_groups"] is not None:
            out["abundance_rmse_merged"] = result["rmse_merged"]
            out.update({f"abundance_merge.e{i + 1}": f"ref{g + 1}" for i, g in enumerate(result["merge_groups"])})
    if sads:
        out["endmember_sad_deg"] = float(np.mean([s["sad_mean_deg"] for s in sads]))
        per_ref = np.nanmean(np.stack([s["sad_deg"] for s in sads]), axis=0) if all(
            len(s["sad_deg"]) == len(sads[0]["sad_deg"]) for s in sads) else []
        out.update({f"endmember_sad_deg.ref{j + 1}": float(v) for j, v in enumerate(per_ref)})
    return out


def run_reconstruction(ckpt: str, hsi_dir: str, out_dir: str, device: torch.device, overwrite: bool = False,
                       key: str | None = None, tile: int = 256, overlap: int = 32, examples: int = 4,
                       progress: bool = True, reference_key: str | None = None) -> dict:
    """Write report.json (mean psnr, ssim, sam, ergas, rmse, cc and per file, the scores for synthesis),
    summary.md and example PNGs. `reference_key`: the variable of the reference abundances (default: the
    first of REFERENCE_ABUNDANCE_KEYS present; "none" for no abundance score)."""
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
    endmembers = model.endmembers().detach().float().cpu().numpy()
    contrast, nearest, errors, sads = MapContrast(), NearestPixels(endmembers), AbundanceErrors(), []
    reference = {"abundances": 0, "endmembers": 0, "abundance_key": None, "endmember_key": None}
    report = {"ckpt": os.path.abspath(ckpt), "hsi_dir": os.path.abspath(hsi_dir), "n_files": len(dataset.files),
              "band_indices": ",".join(map(str, dataset.band_indices)), "num_endmembers": model.num_endmembers}
    for path in tqdm(dataset.files, desc="reconstruct", disable=not progress, dynamic_ncols=True):
        model_input, target = dataset.load(path)
        recon, abundances = reconstruct(model, model_input, device, tile, overlap)
        valid = dataset.valid_mask(path)  # no-data pixels of the file are left out
        metrics = {METRIC_KEYS[k]: v for k, v in quality_assessment_valid(target, recon, valid).items()}
        per_file.append(metrics)
        physical.add(recon, abundances, endmembers)
        contrast.add(abundances)
        nearest.add(target)
        found = read_references(path, target.shape[0], target.shape[1], target.shape[2], reference_key,
                                key or data_cfg.get("key"))
        if found["abundances"] is not None:
            try:
                errors.add(abundances, found["abundances"])
            except ValueError as err:
                raise UserError(f"{path}: '{found['abundance_key']}': {err}") from None
            reference["abundances"] += 1
            reference["abundance_key"] = reference["abundance_key"] or found["abundance_key"]
        if found["endmembers"] is not None:
            sads.append(endmember_sad(endmembers, found["endmembers"]))
            reference["endmembers"] += 1
            reference["endmember_key"] = reference["endmember_key"] or found["endmember_key"]
        name = os.path.splitext(os.path.relpath(path, hsi_dir))[0].replace(os.sep, "__")
        report.update({f"file.{name}.{m}": v for m, v in metrics.items()})
        if len(shown) < examples:
            shown.append((name, target, recon))
    report.update(average_metrics(per_file))
    report.update({f"physical.{k}": v for k, v in physical.result().items()})
    report.update(synthesis_scores(contrast, nearest, errors, sads))
    report.update({"reference.files_with_abundances": reference["abundances"],
                   "reference.abundance_key": reference["abundance_key"],
                   "reference.files_with_endmembers": reference["endmembers"],
                   "reference.endmember_key": reference["endmember_key"]})
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
    return lines + synthesis_summary(report)


def synthesis_summary(report: dict) -> list[str]:
    """The scores for synthesis as Markdown (contrast, endmember distance to the data, reference scores)."""
    count = report["num_endmembers"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["", "## Scores for synthesis", "",
             f"Mean largest abundance per pixel {fmt(report.get('contrast.max_abundance_mean'))} "
             f"(uniform maps: {1 / count:.4f}; pure pixels: 1), spatial std per endmember "
             f"{fmt(report.get('contrast.spatial_std_mean'))} on average (flat maps: 0).", "",
             "| endmember | spatial std | SAM to the nearest pixel (deg) | distance to it / RMS pixel norm |",
             "|---|---|---|---|"]
    lines += [f"| e{i} | {fmt(report.get(f'contrast.spatial_std.e{i}'))} | "
              f"{fmt(report.get(f'endmembers.sam_to_data_deg.e{i}'))} | "
              f"{fmt(report.get(f'endmembers.distance_to_data_rel.e{i}'))} |" for i in range(1, count + 1)]
    if report.get("reference.files_with_abundances"):
        lines += ["", f"Against the reference abundances (`{report['reference.abundance_key']}`, "
                  f"{report['reference.files_with_abundances']} files): RMSE {fmt(report.get('abundance_rmse'))} "
                  "after the best one-to-one matching"
                  + (f", {fmt(report['abundance_rmse_merged'])} with maps merged into the reference's"
                     if report.get("abundance_rmse_merged") is not None else "") + "."]
    if report.get("reference.files_with_endmembers"):
        lines += ["", f"Against the reference endmembers (`{report['reference.endmember_key']}`, "
                  f"{report['reference.files_with_endmembers']} files): mean SAD "
                  f"{fmt(report.get('endmember_sad_deg'))} deg after the best one-to-one matching."]
    return lines
