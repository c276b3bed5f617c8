"""Stage 2 sampling (`Diffusion.py -p val`) and the run-folder and checkpoint plumbing it shares
with training.

A run folder is `<out>/<name>_<timestamp>/` with the sub-folders named in the config's `path`
section (`checkpoint`, `logs`, `results`, `mat_results`). Samples are written as
`mat_results/<step>_<n>_sample_abu.mat` with `SR` (H, W, K) in [-1, 1] (the reference's key) and
`Abu` (H, W, K) in [0, 1]: `(SR + 1) / 2` as sampled by default (the reference), or projected onto
the probability simplex (`sample.project_simplex`, part of the `improved` profile). Numbering continues after the files already
there, so nothing is overwritten; `mat_results/samples.jsonl` records how each file was made.
`sample.layout: "reference"` writes the reference's files instead: `0_<n>_sample_abu.mat` (its `-p val`
starts at step 0, Diffusion.py:157-177) holding `SR` only.

Under `torchrun` the requested samples are split over the processes: rank 0 picks the checkpoint,
the run folder and the first free number, process r draws its share with its own seed and writes
its own consecutive numbers (no two processes write the same file), and rank 0 alone logs and draws
the preview sheet once every process is done.
"""
import glob
import json
import logging
import os
import re
import shutil
import time

import numpy as np
import torch
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

import torch.distributed as dist

from ubf.core.abundance_scaling import from_model_space, unit_to_brightness
from ubf.core.checkpoint import load_checkpoint
from ubf.core.distributed import barrier, is_distributed, is_main_process, rank, strip_module_prefix, world_size
from ubf.core.errors import UserError
from ubf.core.fs import ensure_folder
from ubf.core.logs import close_file_logs, get_logger, setup_logging
from ubf.core.runlock import LOCK_NAME, RunLock, release_lock_of
from ubf.core.previews import abundance_preview, abundance_sheet, save_png
from ubf.core.simplex import project_to_simplex
from ubf.core.version import provenance
from ubf.data.matio import read_mat, write_mat
from ubf.models.diffusion import GaussianDiffusion, NoiseSchedule
from ubf.models.sr3_unet import unet_from_config
from ubf.models.guidance import GuidedDenoiser
from ubf.pipeline.class_labels import class_rows_sheet, draw_guided_samples, requested_labels

STAMP = re.compile(r"_\d{6}_\d{6}(_\d+)?$")
SAMPLE_FILE = re.compile(r"^(\d+)_(\d+)_sample_abu\.mat$")
CHECKPOINT_FILE = re.compile(r"^I(\d+)_E(\d+)\.pth$")
MAX_SHEET = 64  # samples shown on the preview sheet of one `-p val` call
# `sample.batch_size: 0` ("fill the device"): the largest batch tried; on the CPU more samples per batch
# stop paying beyond this (bench/bench_sampling.py), on CUDA the batch halves on out-of-memory
AUTO_BATCH = {"cpu": 8, "cuda": 256}


# run folders ------------------------------------------------------------------------------------

def run_subdirs(run_dir: str, cfg: dict) -> dict:
    """{'checkpoint', 'log', 'results', 'mat_results'} -> folders of a run, created if needed."""
    paths = {}
    for key in ("checkpoint", "log", "results", "mat_results"):
        paths[key] = ensure_folder(os.path.join(run_dir, cfg["path"][key]))
    return paths


def new_run_dir(out_root: str, name: str) -> str:
    """Create `<out_root>/<name>_<yymmdd_hhmmss>` (suffixed _1, _2 ... if taken) and return it."""
    ensure_folder(out_root)
    base = os.path.join(out_root, f"{name}_{time.strftime('%y%m%d_%H%M%S')}")
    for attempt in range(1000):
        path = base if attempt == 0 else f"{base}_{attempt}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f"{out_root}: could not create a new run folder for '{name}'")


def lock_run_folder(run_dir: str, what: str) -> None:
    """One writer per run folder (ubf/core/runlock.py): refuse when another live process writes into it."""
    RunLock(run_dir, what).acquire()


def unlock_run_folder(run_dir: str) -> None:
    release_lock_of(run_dir)


def discard_unused_run_folder(run_dir: str, paths: dict) -> None:
    """Remove a run folder this failed start created when it holds no checkpoint and no sample.

    What a failed start leaves (empty sub-folders, its config.json, its log) is not worth a folder.
    """
    for key in ("checkpoint", "mat_results", "results"):
        folder = paths.get(key)
        if folder and os.path.isdir(folder) and any(not n.startswith(".") for n in os.listdir(folder)):
            return
    known = {os.path.normpath(folder) for folder in paths.values()}
    for name in os.listdir(run_dir):
        if name != LOCK_NAME and not (name.startswith("config") and name.endswith(".json")) \
                and os.path.normpath(os.path.join(run_dir, name)) not in known:
            return  # something we do not know: leave the folder alone
    unlock_run_folder(run_dir)
    close_file_logs()
    shutil.rmtree(run_dir, ignore_errors=True)


def is_inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


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


def decided_by_main_process(decide):
    """Run `decide()` on rank 0 alone and hand its (picklable) result to every process.

    Choices that touch the file system (a new timestamped run folder, the first free sample number)
    must be made once; a UserError raised there is raised in every process, so none waits forever.
    In a single process this is just `decide()`.
    """
    if not is_distributed():
        return decide()
    box = [None, None]
    if is_main_process():
        try:
            box[0] = decide()
        except UserError as err:
            box[1] = str(err)
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise UserError(box[1])
    return box[0]


def process_seed(seed: int, process: int) -> int:
    """The seed of process `process` (0: `seed` itself, so one process and rank 0 draw alike)."""
    return seed if process == 0 else (seed * 1_000_003 + process) % (2 ** 63)


def split_count(count: int, processes: int) -> list[int]:
    """`count` samples split as evenly as possible over `processes` (the first ones take one more)."""
    return [count // processes + (r < count % processes) for r in range(processes)]


def plain_state_dict(state_dict: dict) -> dict:
    """Weights saved through a DDP (`module.`) or torch.compile (`_orig_mod.`) wrapper, as plain keys."""
    state_dict = strip_module_prefix(state_dict)
    prefix = "_orig_mod."
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
    return strip_module_prefix(state_dict)


# models -----------------------------------------------------------------------------------------

def build_diffusion(model_cfg: dict, unet: torch.nn.Module, phase: str) -> GaussianDiffusion:
    """GaussianDiffusion around `unet` with the `beta_schedule[phase]` of a config's `model` section."""
    diffusion = model_cfg["diffusion"]
    return GaussianDiffusion(unet, diffusion["image_size"], diffusion["channels"],
                             NoiseSchedule.from_config(model_cfg["beta_schedule"][phase]),
                             loss_type=diffusion["loss_type"], t_per_sample=diffusion["t_per_sample"],
                             clip_denoised=diffusion["clip_denoised"],
                             prediction=diffusion.get("prediction", "eps"),
                             loss_weighting=diffusion.get("loss_weighting", "none"),
                             clipping=diffusion.get("clipping", "static"),
                             snr_gamma=diffusion.get("snr_gamma", 5.0))


def _reference_weights(path: str) -> dict | None:
    """A state dict from the reference code's `I<step>_E<epoch>_gen.pth` (or its `resume_state` prefix)."""
    from ubf.pipeline.reference_checkpoints import read_reference_weights, reference_gen_path
    gen_path = reference_gen_path(path)
    return read_reference_weights(gen_path) if gen_path else None


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
        from ubf.pipeline.reference_checkpoints import load_diffusion_checkpoint
        state = load_diffusion_checkpoint(path)
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
        unet.load_state_dict(plain_state_dict(weights))
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit the model config ({str(err).splitlines()[0][:160]})") from None
    return unet.to(device).eval(), model_cfg, step, which


# samples ----------------------------------------------------------------------------------------

def signed_abundance(batch: torch.Tensor, model_cfg: dict) -> torch.Tensor:
    """(N, K, H, W) samples in the network's space -> abundances as 2a - 1, undoing
    `model.diffusion.abundance_scaling` with the range saved in the checkpoint's config."""
    diffusion = model_cfg["diffusion"]
    if diffusion.get("abundance_scaling", "none") != "channel_range":
        return batch
    value_range = diffusion.get("abundance_range")
    if not value_range or len(value_range) != 2 or len(value_range[0]) != batch.shape[1]:
        raise UserError("the checkpoint was trained with model.diffusion.abundance_scaling \"channel_range\" but "
                        "holds no valid abundance_range for its channels; it cannot be sampled")
    return from_model_space(batch, value_range, axis=1)


def to_abundance(sr: torch.Tensor, project: bool = True) -> torch.Tensor:
    """(N, K, H, W) samples in [-1, 1] -> abundances in [0, 1], on the simplex along K if `project`."""
    abundance = (sr.clamp(-1.0, 1.0) + 1.0) / 2.0
    return project_to_simplex(abundance, dim=1) if project else abundance


def next_sample_index(mat_dir: str) -> int:
    """1 + the largest n of the `<step>_<n>_sample_abu.mat` files already in `mat_dir` (1 if none)."""
    numbers = [int(m.group(2)) for m in (SAMPLE_FILE.match(f) for f in os.listdir(mat_dir)) if m] \
        if os.path.isdir(mat_dir) else []
    return max(numbers, default=0) + 1


def read_sampled(path: str, project: bool) -> np.ndarray:
    """(H, W, K) abundances of a written sample: its `Abu`, or (SR + 1) / 2 of a reference-layout file."""
    stored = read_mat(path)
    if "Abu" in stored:
        return stored["Abu"]
    sr = torch.from_numpy(np.asarray(stored["SR"], dtype=np.float32)).permute(2, 0, 1)[None]
    return to_abundance(sr, project)[0].permute(1, 2, 0).numpy()


def preview_sheet(abundances: np.ndarray, captions: list[str] | None = None) -> np.ndarray:
    """(N, H, W, K) abundances -> one uint8 sheet, a captioned row per sample (default captions: sample 1..N)."""
    captions = captions or [f"sample {i + 1}" for i in range(len(abundances))]
    return abundance_sheet([[a] for a in abundances], captions)


def auto_batch_size(count: int, device: torch.device) -> int:
    """The batch `sample.batch_size: 0` starts with: all of `count`, up to the device's cap."""
    return max(1, min(count, AUTO_BATCH.get(device.type, AUTO_BATCH["cpu"])))


@torch.no_grad()
def draw_samples(diffusion: GaussianDiffusion, count: int, batch_size: int, device: torch.device,
                 sampler: str, steps: int, eta: float, generator: torch.Generator, progress: bool = True):
    """Yield batches of samples (n, K, S, S) in [-1, 1] on the CPU until `count` have been drawn.

    `batch_size` 0 fills the device (`auto_batch_size`); a batch that runs out of memory is halved."""
    done = 0
    batch_size = batch_size or auto_batch_size(count, device)
    with tqdm(total=count, desc=f"sampling ({sampler})", unit="sample", disable=not progress) as bar:
        while done < count:
            n = min(batch_size, count - done)
            try:
                x = diffusion.sample(n, device, sampler=sampler, steps=steps, eta=eta, generator=generator,
                                     progress=progress)
            except torch.OutOfMemoryError:
                if n == 1:
                    raise
                batch_size = n // 2
                get_logger().warning("out of memory with %d samples per batch; trying %d", n, batch_size)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            done += n
            bar.update(n)
            yield x.clamp(-1.0, 1.0).float().cpu()


def write_samples(sr: torch.Tensor, paths: dict, step: int, start: int, project: bool,
                  record: dict, classes: list[str] | None = None, layout: str = "project",
                  brightness: bool = False) -> list[str]:
    """Write a batch (n, K, H, W) as numbered .mat files and PNG strips; return the .mat paths.
    `classes`: each sample's scene class, stored as `class` in its .mat file and index line.
    `layout="reference"`: the reference's `0_<n>` names and its one key, `SR`.
    `brightness`: the last channel is a brightness factor (model.diffusion.brightness), stored as `Bright`
    (H, W) and left out of `SR`/`Abu`."""
    if not torch.isfinite(sr).all():
        raise UserError(f"{paths['mat_results']}: the sampler produced NaN/Inf values (samples {start} to "
                        f"{start + sr.shape[0] - 1}); nothing of this batch was written. The checkpoint's weights "
                        "or the sampling settings (sample.eta, steps, beta schedule) are broken")
    bright = None
    if brightness:
        bright = unit_to_brightness((sr[:, -1] + 1.0) / 2.0).numpy().astype(np.float32)
        sr = sr[:, :-1]
    abundance = to_abundance(sr, project).permute(0, 2, 3, 1).numpy().astype(np.float32)
    sr_hwk = sr.permute(0, 2, 3, 1).numpy().astype(np.float32)
    written = []
    with open(os.path.join(paths["mat_results"], "samples.jsonl"), "a", encoding="utf-8") as index:
        for i in range(sr.shape[0]):
            stem = f"{0 if layout == 'reference' else step}_{start + i}"
            mat_path = os.path.join(paths["mat_results"], f"{stem}_sample_abu.mat")
            labelled = {"class": classes[i]} if classes else {}
            extra = {"Bright": bright[i]} if bright is not None else {}
            variables = {"SR": sr_hwk[i], **extra} if layout == "reference" else \
                {"SR": sr_hwk[i], "Abu": abundance[i], **extra, **labelled}
            write_mat(mat_path, variables, overwrite=False)
            save_png(abundance_preview(abundance[i], os.path.basename(mat_path)),
                     os.path.join(paths["results"], f"{stem}_sample_preview.png"))
            # one line per write call: processes appending at the same time never split a line
            index.write(json.dumps({"file": os.path.basename(mat_path), **record, **labelled}) + "\n")
            index.flush()
            written.append(mat_path)
    return written


def sample_run(cfg: dict, out_root: str, device: torch.device, seed: int, resume: str | None = None,
               run_dir: str | None = None, num_samples: int | None = None, progress: bool = True,
               out_given: bool = False) -> str:
    """`-p val`: draw samples from a checkpoint and write them into a run folder; returns the folder.

    The folder is `run_dir`, else the checkpoint's own run folder (when `out_given`, the user named
    `out_root`: only if it lies below `out_root`), else a new `<out_root>/<name>_<timestamp>`.

    Under torchrun every process draws its share of the samples (see the module docstring).
    """
    main = is_main_process()
    log = setup_logging(level=logging.INFO if main else logging.WARNING)
    # the reference draws 40 and, like this, does not use datasets.val.data_len
    count = num_samples if num_samples is not None else cfg["sample"]["num_samples"]
    if count < 1:
        raise UserError("--num-samples must be at least 1")

    def pick_checkpoint() -> str:
        path = resume or cfg["path"]["resume_state"]
        if path:
            log.info("sampling from %s", path)
            return path
        path = find_newest_checkpoint(out_root, cfg["name"], cfg["path"]["checkpoint"])
        log.info("no --resume given: sampling from the newest checkpoint of '%s': %s", cfg["name"], path)
        return path

    path = decided_by_main_process(pick_checkpoint)
    sample_cfg = cfg["sample"]
    unet, model_cfg, step, which = load_weights_for_sampling(path, cfg, device, sample_cfg["use_ema"])
    # the val schedule may be edited for faster sampling, as in the reference configs
    model_cfg = dict(model_cfg, beta_schedule=dict(model_cfg["beta_schedule"], val=cfg["model"]["beta_schedule"]["val"]))
    labels = requested_labels(model_cfg["diffusion"].get("class_names") or [], sample_cfg.get("class_name"), count)
    guidance = float(sample_cfg.get("guidance", 1.0))
    if labels is None and guidance != 1.0:
        raise UserError(f"--guidance {guidance:g} needs --class (guidance steers towards a class)")
    guided = GuidedDenoiser(unet, guidance) if labels is not None else None
    diffusion = build_diffusion(model_cfg, guided or unet, "val")

    def pick_folder():
        own = run_dir_of_checkpoint(path, cfg)
        if own and out_given and not is_inside(own, out_root):
            own = None  # --out names where the samples go
        folder = run_dir or own
        fresh = folder is None
        folder = folder or new_run_dir(out_root, cfg["name"])
        lock_run_folder(folder, "Diffusion.py -p val")
        folders = run_subdirs(folder, cfg)
        return folder, folders, next_sample_index(folders["mat_results"]), fresh

    run_dir, paths, first, fresh = decided_by_main_process(pick_folder)
    try:
        return _sample_into(cfg, run_dir, paths, first, path, diffusion, step, which, count, seed, device, progress,
                            model_cfg, labels, guidance, guided)
    except BaseException:
        if main and fresh:
            discard_unused_run_folder(run_dir, paths)
        raise
    finally:
        if main:
            unlock_run_folder(run_dir)


def _sample_into(cfg, run_dir, paths, first, path, diffusion, step, which, count, seed, device, progress,
                 model_cfg, labels, guidance, guided) -> str:
    """The sampling of `sample_run` once its run folder is chosen and locked (`labels`: class-conditional)."""
    main = is_main_process()
    log = get_logger()
    sample_cfg = cfg["sample"]
    if main:
        setup_logging(os.path.join(paths["log"], "val.log"))
    processes, me = world_size(), rank()
    counts = split_count(count, processes)
    start = first + sum(counts[:me])
    my_seed = process_seed(seed, me)
    sampler, steps, eta = sample_cfg["sampler"], sample_cfg["steps"], float(sample_cfg["eta"])
    layout = sample_cfg.get("layout", "project")
    record = {"checkpoint": os.path.abspath(path), "step": step, "weights": which, "sampler": sampler,
              "steps": steps if sampler != "ancestral" else diffusion.num_timesteps,
              "eta": eta if sampler == "ddim" else (0.0 if sampler == "dpmpp2m" else 1.0), "seed": my_seed,
              "projected": sample_cfg["project_simplex"], "software": provenance()}
    if processes > 1:
        record["process"] = me
    if labels is not None:
        record["guidance"] = guidance
    log.info("%d samples, %s sampler (%s), %s, batches of %d, seed %d, Abu %s -> %s%s", count, sampler,
             f"{steps} steps, eta {eta}" if sampler != "ancestral" else f"{diffusion.num_timesteps} steps", which,
             sample_cfg["batch_size"] or auto_batch_size(counts[me], device), seed,
             "projected onto the simplex" if sample_cfg["project_simplex"]
             else "raw (SR + 1) / 2", run_dir,
             f"; {processes} processes draw {counts[0]} each at most" if processes > 1 else "")

    generator = torch.Generator(device=device).manual_seed(my_seed)
    started = time.perf_counter()
    if counts[me] and labels is not None:  # class-conditional: this process's share of the labels
        names = model_cfg["diffusion"]["class_names"]
        mine = labels[sum(counts[:me]):sum(counts[:me + 1])]
        batches = draw_guided_samples(diffusion, guided, mine, sample_cfg["batch_size"], draw_samples, device=device,
                                      sampler=sampler, steps=steps, eta=eta, generator=generator,
                                      progress=progress and main)
        for batch in batches:
            batch = signed_abundance(batch, model_cfg)
            classes = [names[label] for label in mine[:batch.shape[0]]]
            mine = mine[batch.shape[0]:]
            write_samples(batch, paths, step, start, sample_cfg["project_simplex"], record, classes, layout,
                          brightness=model_cfg["diffusion"].get("brightness", False))
            start += batch.shape[0]
    elif counts[me]:
        for batch in draw_samples(diffusion, counts[me], sample_cfg["batch_size"], device, sampler, steps, eta,
                                  generator, progress and main):
            write_samples(signed_abundance(batch, model_cfg), paths, step, start, sample_cfg["project_simplex"],
                          record, layout=layout, brightness=model_cfg["diffusion"].get("brightness", False))
            start += batch.shape[0]
    elapsed = time.perf_counter() - started
    barrier()  # every process has written its files
    if not main:
        return run_dir
    last = first + count - 1
    named = 0 if layout == "reference" else step
    shown_names = [f"{named}_{n}_sample_abu.mat" for n in range(first, min(last, first + MAX_SHEET - 1) + 1)]
    shown = [read_sampled(os.path.join(paths["mat_results"], name), sample_cfg["project_simplex"]) for name in shown_names]
    sheet_path = os.path.join(paths["results"], f"{step}_samples_{first}-{last}.png")
    if labels is not None:  # one row per class
        names = model_cfg["diffusion"]["class_names"]
        save_png(class_rows_sheet(np.stack(shown), [names[label] for label in labels[:len(shown)]]), sheet_path)
    else:
        save_png(preview_sheet(np.stack(shown), shown_names), sheet_path)
    log.info("wrote %d samples (%.2f s each%s) to %s; preview %s", count, elapsed / max(counts[0], 1),
             f", {processes} processes" if processes > 1 else "", paths["mat_results"], sheet_path)
    return run_dir
