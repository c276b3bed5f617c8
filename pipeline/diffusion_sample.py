"""Stage 2 sampling (`Diffusion.py -p val`) and the run-folder and checkpoint plumbing it shares
with training.

A run folder is `<out>/<name>_<timestamp>/` with the sub-folders named in the config's `path`
section (`checkpoint`, `logs`, `results`, `mat_results`). Samples are written as
`mat_results/<step>_<n>_sample_abu.mat` with `SR` (H, W, K) in [-1, 1] (the reference's key) and
`Abu` (H, W, K) in [0, 1]: projected onto the probability simplex by default, or `(SR + 1) / 2` as
sampled (`project=False`, the faithful raw output). Numbering continues after the files already
there, so nothing is overwritten; `mat_results/samples.jsonl` records how each file was made.
"""
import glob
import json
import os
import re
import time

import numpy as np
import torch
from tqdm import tqdm

from core.checkpoint import load_checkpoint
from core.errors import UserError
from core.logs import get_logger, setup_logging
from core.previews import abundance_strip, grid, save_png
from core.simplex import project_to_simplex
from data.matio import write_mat
from models.diffusion import GaussianDiffusion, NoiseSchedule
from models.sr3_unet import unet_from_config

STAMP = re.compile(r"_\d{6}_\d{6}(_\d+)?$")
SAMPLE_FILE = re.compile(r"^(\d+)_(\d+)_sample_abu\.mat$")
CHECKPOINT_FILE = re.compile(r"^I(\d+)_E(\d+)\.pth$")


# run folders ------------------------------------------------------------------------------------

def run_subdirs(run_dir: str, cfg: dict) -> dict:
    """{'checkpoint', 'log', 'results', 'mat_results'} -> folders of a run, created if needed."""
    paths = {}
    for key in ("checkpoint", "log", "results", "mat_results"):
        paths[key] = os.path.join(run_dir, cfg["path"][key])
        os.makedirs(paths[key], exist_ok=True)
    return paths


def new_run_dir(out_root: str, name: str) -> str:
    """Create `<out_root>/<name>_<yymmdd_hhmmss>` (suffixed _1, _2 ... if taken) and return it."""
    os.makedirs(out_root, exist_ok=True)
    base = os.path.join(out_root, f"{name}_{time.strftime('%y%m%d_%H%M%S')}")
    for attempt in range(1000):
        path = base if attempt == 0 else f"{base}_{attempt}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f"{out_root}: could not create a new run folder for '{name}'")


def run_dir_of_checkpoint(path: str, cfg: dict) -> str | None:
    """The run folder holding checkpoint `path` when it sits in our layout, else None."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder) == cfg["path"]["checkpoint"]:
        return os.path.dirname(folder)
    return None


def checkpoint_step(path: str) -> int:
    match = CHECKPOINT_FILE.match(os.path.basename(path)) or re.search(r"I(\d+)_E\d+", os.path.basename(path))
    return int(match.group(1)) if match else -1


def find_newest_checkpoint(out_root: str, name: str, checkpoint_sub: str = "checkpoint") -> str:
    """The newest `I<step>_E<epoch>.pth` of the runs `<out_root>/<name>_<timestamp>` (by file time, then step)."""
    candidates = []
    for run in glob.glob(os.path.join(glob.escape(out_root), glob.escape(name) + "_*")):
        suffix = os.path.basename(run)[len(name):]
        if not os.path.isdir(run) or not STAMP.fullmatch(suffix):
            continue
        for path in glob.glob(os.path.join(glob.escape(run), checkpoint_sub, "I*_E*.pth")):
            if CHECKPOINT_FILE.match(os.path.basename(path)):
                candidates.append((os.path.getmtime(path), checkpoint_step(path), path))
    if not candidates:
        raise UserError(f"{out_root}: no checkpoint of '{name}' in {name}_<timestamp>/{checkpoint_sub}/ "
                        f"(train first with `python Diffusion.py -p train -c CONFIG`, or pass --resume CKPT)")
    return max(candidates)[2]


# models -----------------------------------------------------------------------------------------

def build_diffusion(model_cfg: dict, unet: torch.nn.Module, phase: str) -> GaussianDiffusion:
    """GaussianDiffusion around `unet` with the `beta_schedule[phase]` of a config's `model` section."""
    diffusion = model_cfg["diffusion"]
    return GaussianDiffusion(unet, diffusion["image_size"], diffusion["channels"],
                             NoiseSchedule.from_config(model_cfg["beta_schedule"][phase]),
                             loss_type=diffusion["loss_type"], t_per_sample=diffusion["t_per_sample"],
                             clip_denoised=diffusion["clip_denoised"])


def _reference_weights(path: str) -> dict | None:
    """A state dict from the reference code's `I<step>_E<epoch>_gen.pth` (or its `resume_state` prefix)."""
    if not path.endswith("_gen.pth") and os.path.isfile(f"{path}_gen.pth"):
        path = f"{path}_gen.pth"
    if not path.endswith("_gen.pth") or not os.path.isfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is a user problem here
        raise UserError(f"{path}: not a readable weights file ({str(err).splitlines()[0][:120]})") from None
    prefix = "denoise_fn."
    # drop the schedule buffers the reference stored beside the network
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} or state


def load_weights_for_sampling(path: str, cfg: dict, device: torch.device, use_ema: bool = True):
    """(UNet in eval mode on `device`, model config, step, description) from a checkpoint.

    Our checkpoints bring their own model config (the CLI config's is ignored for the network, with
    a warning when it differs); the reference's `*_gen.pth` files use the CLI config's.
    """
    log = get_logger()
    reference = _reference_weights(path)
    if reference is not None:
        model_cfg, weights, which, step = cfg["model"], reference, "reference weights", checkpoint_step(path)
    else:
        state = load_checkpoint(path, "diffusion")
        model_cfg = state["config"]["model"]
        if model_cfg["unet"] != cfg["model"]["unet"] or \
                model_cfg["diffusion"]["image_size"] != cfg["model"]["diffusion"]["image_size"]:
            log.warning("%s: the checkpoint's model settings differ from the config's; using the checkpoint's", path)
        step = int(state.get("step", checkpoint_step(path)))
        if use_ema and state.get("ema") is not None:
            weights, which = state["ema"], "EMA weights"
        else:
            if use_ema:
                log.warning("%s: no EMA weights in the checkpoint; sampling with the raw weights", path)
            weights, which = state["model"], "raw weights"
    unet = unet_from_config(model_cfg)
    try:
        unet.load_state_dict(weights)
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit the model config ({str(err).splitlines()[0][:160]})") from None
    return unet.to(device).eval(), model_cfg, step, which


# samples ----------------------------------------------------------------------------------------

def to_abundance(sr: torch.Tensor, project: bool = True) -> torch.Tensor:
    """(N, K, H, W) samples in [-1, 1] -> abundances in [0, 1], on the simplex along K if `project`."""
    abundance = (sr.clamp(-1.0, 1.0) + 1.0) / 2.0
    return project_to_simplex(abundance, dim=1) if project else abundance


def next_sample_index(mat_dir: str) -> int:
    """1 + the largest n of the `<step>_<n>_sample_abu.mat` files already in `mat_dir` (1 if none)."""
    numbers = [int(m.group(2)) for m in (SAMPLE_FILE.match(f) for f in os.listdir(mat_dir)) if m] \
        if os.path.isdir(mat_dir) else []
    return max(numbers, default=0) + 1


def preview_sheet(abundances: np.ndarray, columns: int = 1) -> np.ndarray:
    """(N, H, W, K) abundances -> one uint8 sheet of per-sample strips."""
    return grid([abundance_strip(a) for a in abundances], columns=columns)


@torch.no_grad()
def draw_samples(diffusion: GaussianDiffusion, count: int, batch_size: int, device: torch.device,
                 sampler: str, steps: int, eta: float, generator: torch.Generator, progress: bool = True):
    """Yield batches of samples (n, K, S, S) in [-1, 1] on the CPU until `count` have been drawn."""
    done = 0
    with tqdm(total=count, desc=f"sampling ({sampler})", unit="sample", disable=not progress) as bar:
        while done < count:
            n = min(batch_size, count - done)
            x = diffusion.sample(n, device, sampler=sampler, steps=steps, eta=eta, generator=generator,
                                 progress=progress)
            done += n
            bar.update(n)
            yield x.clamp(-1.0, 1.0).float().cpu()


def write_samples(sr: torch.Tensor, paths: dict, step: int, start: int, project: bool,
                  record: dict) -> list[str]:
    """Write a batch (n, K, H, W) as numbered .mat files and PNG strips; return the .mat paths."""
    abundance = to_abundance(sr, project).permute(0, 2, 3, 1).numpy().astype(np.float32)
    sr_hwk = sr.permute(0, 2, 3, 1).numpy().astype(np.float32)
    written = []
    with open(os.path.join(paths["mat_results"], "samples.jsonl"), "a", encoding="utf-8") as index:
        for i in range(sr.shape[0]):
            stem = f"{step}_{start + i}"
            mat_path = os.path.join(paths["mat_results"], f"{stem}_sample_abu.mat")
            write_mat(mat_path, {"SR": sr_hwk[i], "Abu": abundance[i]}, overwrite=False)
            save_png(abundance_strip(abundance[i]), os.path.join(paths["results"], f"{stem}_sample_preview.png"))
            index.write(json.dumps({"file": os.path.basename(mat_path), **record}) + "\n")
            written.append(mat_path)
    return written


def sample_run(cfg: dict, out_root: str, device: torch.device, seed: int, resume: str | None = None,
               run_dir: str | None = None, num_samples: int | None = None, progress: bool = True) -> str:
    """`-p val`: draw samples from a checkpoint and write them into a run folder; returns the folder."""
    log = get_logger()
    path = resume or cfg["path"]["resume_state"]
    if path:
        log.info("sampling from %s", path)
    else:
        path = find_newest_checkpoint(out_root, cfg["name"], cfg["path"]["checkpoint"])
        log.info("no --resume given: sampling from the newest checkpoint of '%s': %s", cfg["name"], path)
    sample_cfg = cfg["sample"]
    unet, model_cfg, step, which = load_weights_for_sampling(path, cfg, device, sample_cfg["use_ema"])
    # the val schedule may be edited for faster sampling, as in the reference configs
    model_cfg = dict(model_cfg, beta_schedule=dict(model_cfg["beta_schedule"], val=cfg["model"]["beta_schedule"]["val"]))
    diffusion = build_diffusion(model_cfg, unet, "val")

    run_dir = run_dir or run_dir_of_checkpoint(path, cfg) or new_run_dir(out_root, cfg["name"])
    paths = run_subdirs(run_dir, cfg)
    setup_logging(os.path.join(paths["log"], "val.log"))
    count = num_samples if num_samples is not None else cfg["datasets"]["val"]["data_len"]
    if count < 1:
        raise UserError("--num-samples must be at least 1")
    sampler, steps, eta = sample_cfg["sampler"], sample_cfg["steps"], float(sample_cfg["eta"])
    record = {"checkpoint": os.path.abspath(path), "step": step, "weights": which, "sampler": sampler,
              "steps": steps if sampler == "ddim" else diffusion.num_timesteps,
              "eta": eta if sampler == "ddim" else 1.0, "seed": seed, "projected": sample_cfg["project_simplex"]}
    log.info("%d samples, %s sampler (%s), %s, batches of %d, seed %d, Abu %s -> %s", count, sampler,
             f"{steps} steps, eta {eta}" if sampler == "ddim" else f"{diffusion.num_timesteps} steps", which,
             sample_cfg["batch_size"], seed, "projected onto the simplex" if sample_cfg["project_simplex"]
             else "raw (SR + 1) / 2", run_dir)

    generator = torch.Generator(device=device).manual_seed(seed)
    start = first = next_sample_index(paths["mat_results"])
    sheet = []
    started = time.perf_counter()
    for batch in draw_samples(diffusion, count, sample_cfg["batch_size"], device, sampler, steps, eta,
                              generator, progress):
        write_samples(batch, paths, step, start, sample_cfg["project_simplex"], record)
        sheet.extend(to_abundance(batch, sample_cfg["project_simplex"]).permute(0, 2, 3, 1).numpy())
        start += batch.shape[0]
    elapsed = time.perf_counter() - started
    sheet_path = os.path.join(paths["results"], f"{step}_samples_{first}-{start - 1}.png")
    save_png(preview_sheet(np.stack(sheet[:64])), sheet_path)
    log.info("wrote %d samples (%.2f s each) to %s; preview %s", count, elapsed / count,
             paths["mat_results"], sheet_path)
    return run_dir
