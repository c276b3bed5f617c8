"""Training loop of the unmixing autoencoder: epochs, validation, checkpoints, test metrics.

Runs in one process or in several under `torchrun` (DDP, see ubf/core/distributed.py). `train.batch_size`
is the global batch, split evenly over the processes, and every process draws from the same seeded
permutation, so N processes take the same steps as one. Rank 0 alone writes the log, metrics.jsonl and
the checkpoints. Ctrl-C (or SIGTERM from a scheduler or torchrun) stops after the current step and
writes `checkpoint/interrupted.pth`; `--resume` from it continues mid-epoch exactly where it stopped,
while `latest.pth` stays the last finished epoch. A NaN/Inf loss stops before it touches the weights.
"""
import json
import logging
import math
import os
import signal
import tempfile
import threading
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.checkpoint import (capture_rng_state, check_rng_state, load_checkpoint, restore_rng_state,
                                 save_checkpoint, seed_everything)
from ubf.core.config import save_config
from ubf.core.distributed import (all_reduce_mean, barrier, distributed_sampler, is_main_process, per_process_batch,
                              strip_module_prefix, world_size, wrap_model)
from ubf.core.errors import UserError
from ubf.core.fs import require_folder
from ubf.core.logs import get_logger, setup_logging
from ubf.core.metrics import average_metrics, quality_assessment_valid
from ubf.core.signals import StopRequest, worker_init
from ubf.core.tracking import start_tracking
from ubf.data.cubes import list_cube_files
from ubf.data.hsi_dataset import HSICropDataset
from ubf.models.losses import unmixing_loss
from ubf.models.unmixing import build_unmixing_model
from ubf.models.geometric import fcls, nfindr, nnls_abundances, vca
from ubf.models.unmixing_init import greedy_cone_pixels, linear_simplex_init, orthogonal_vertices
from ubf.pipeline.unmixing_color import composite_moments
from ubf.pipeline.unmixing_infer import check_workers

NO_DATA_HELP = ("prepare HSI crops with `python -m ubf.data.prepare chikusei --src HyperspecVNIR_Chikusei_20140729.mat "
                "--out dataset` (see README, Datasets), pass --train/--val/--test, or run `python demo.py`")


def step_lr(base_lr: float, epoch: int, step_epochs: int, gamma: float) -> float:
    """The reference schedule: lr * gamma ** ((epoch + 1) // step) for 0-based `epoch`."""
    return base_lr * gamma ** ((epoch + 1) // step_epochs)


def one_cycle_lr(peak_lr: float, step: int, total_steps: int, warmup: float) -> float:
    """One-cycle schedule per step (0-based): cosine rise from peak/25 to the peak over `warmup` of the
    steps, then cosine fall to peak/25e4, as torch's OneCycleLR with its default factors."""
    start, end = peak_lr / 25.0, peak_lr / 25.0 / 1e4
    rise = max(1, int(round(warmup * total_steps)) - 1)
    if step <= rise:
        fraction, low, high = step / rise, start, peak_lr
    else:
        fraction, low, high = (step - rise) / max(1, total_steps - 1 - rise), peak_lr, end
    fraction = min(max(fraction, 0.0), 1.0)
    return high + (low - high) * (1 + math.cos(math.pi * fraction)) / 2


def training_pixels(dataset: HSICropDataset, max_pixels: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to `max_pixels` random (input (N, 3), target (N, C)) pixel pairs spread over the training files."""
    rng = np.random.default_rng(seed)
    inputs, targets = [], []
    for path in dataset.files:
        model_input, target = dataset.load(path)
        flat_in, flat_out = model_input.reshape(-1, 3), target.reshape(-1, target.shape[2])
        valid = dataset.valid_mask(path)
        if valid is not None:  # no-data pixels are never training pixels
            flat_in, flat_out = flat_in[valid.ravel()], flat_out[valid.ravel()]
        take = rng.choice(len(flat_out), min(len(flat_out), max(1, max_pixels // len(dataset.files))), replace=False)
        inputs.append(flat_in[take])
        targets.append(flat_out[take])
    return np.concatenate(inputs).astype(np.float64), np.concatenate(targets).astype(np.float64)


def initialise_from_data(net, cfg: dict, train_set: HSICropDataset) -> str | None:
    """Set the decoder (and the affine head) from training pixels per `model.decoder_init` and
    `model.head_init`; says what it did."""
    init, count, seed = cfg["model"]["decoder_init"], net.num_endmembers, cfg["train"]["seed"]
    if init == "random":
        if cfg["model"]["head_init"] != "none":
            raise UserError("model.head_init 'fit' needs endmembers from the data (model.decoder_init other than "
                            "'random')")
        return None
    needs_pixels = init != "distant_pixels" or cfg["model"]["head_init"] == "fit"
    inputs, targets = training_pixels(train_set, seed=seed) if needs_pixels else (None, None)
    with torch.no_grad():
        if init == "distant_pixels":
            endmembers = farthest_pixels(train_set, count, seed=seed)
            what = f"{count} mutually distant training pixels"
        elif init == "linear_simplex":
            if net.skip is None or net.simplex != "relu" or count < 4:
                raise UserError("model.decoder_init 'linear_simplex' needs model.linear_skip true, model.simplex "
                                "'relu' and model.num_endmembers >= 4")
            endmembers, mixing = linear_simplex_init(inputs, targets, count, margin=cfg["model"]["init_margin"],
                                                     seed=seed)
            net.skip.weight[:count, :, 0, 0] = torch.from_numpy(mixing[:, :3]).float()
            net.skip.bias[:count] = torch.from_numpy(mixing[:, 3]).float()
            what = "the per-pixel linear regression in simplex form (tetrahedron around the training inputs)"
        else:
            endmembers, what = ENDMEMBER_PICKERS[init](inputs, targets, count, seed)
        net.decoder.weight.copy_(torch.from_numpy(np.ascontiguousarray(endmembers)).float()[:, :, None, None])
        if cfg["model"]["head_init"] == "fit":
            what += "; " + fit_head(net, inputs, targets, np.asarray(endmembers, dtype=np.float64))
    return what


def _linear_predictions(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """What the per-pixel affine map from the 3 bands predicts for each training pixel (least squares)."""
    design = np.concatenate([inputs, np.ones((len(inputs), 1))], 1)
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
    return design @ coef


# decoder_init name -> (inputs (N, 3), targets (N, C), K, seed) -> (endmembers (C, K), what was done)
ENDMEMBER_PICKERS = {
    "vertices": lambda x, y, k, seed: (y[orthogonal_vertices(y, k)].T,
                                       f"{k} vertex training pixels (orthogonal projections, ATGP)"),
    "vca": lambda x, y, k, seed: (vca(y, k, seed=seed)[0], f"{k} training pixels found by VCA"),
    "nfindr": lambda x, y, k, seed: (nfindr(y, k, seed=seed)[0], f"{k} training pixels found by N-FINDR"),
    "greedy_pixels": lambda x, y, k, seed: (
        y[greedy_cone_pixels(y, k, seed=seed, targets=_linear_predictions(x, y))].T,
        f"{k} training pixels whose non-negative combinations best reconstruct the linear map's predictions"),
}


def fit_head(net, inputs: np.ndarray, targets: np.ndarray, endmembers: np.ndarray) -> str:
    """Start the affine head B [x; 1] at the least-squares fit of the training pixels' abundances under
    the initial endmembers: FCLS on the simplex, or NNLS (abundances times brightness) for the cone head."""
    if net.skip is None or net.simplex != "relu":
        raise UserError("model.head_init 'fit' needs model.linear_skip true and model.simplex 'relu'")
    cone = net.brightness == "cone"
    solved = (nnls_abundances if cone else fcls)(targets, endmembers)
    design = np.concatenate([inputs, np.ones((len(inputs), 1))], 1)
    coef, *_ = np.linalg.lstsq(design, solved, rcond=None)  # (4, K)
    count = net.num_endmembers
    net.skip.weight[:count, :, 0, 0] = torch.from_numpy(coef[:3].T).float()
    net.skip.bias[:count] = torch.from_numpy(coef[3]).float()
    return f"affine head fitted to the {'NNLS' if cone else 'FCLS'} abundances of {len(targets)} training pixels"


def parameter_groups(net, train_cfg: dict) -> list[dict]:
    """Adam groups: the endmembers (decoder) at train.lr x train.endmember_lr_scale, or frozen
    (train.freeze_endmembers), and every other parameter at train.lr; by default one group (the reference's
    optimizer, and checkpoints of earlier runs resume). `lr_scale` is kept per group."""
    if not train_cfg["freeze_endmembers"] and train_cfg["endmember_lr_scale"] == 1.0:
        return [{"params": list(net.parameters()), "lr": train_cfg["lr"], "lr_scale": 1.0}]  # one group, as before
    decoder = [net.decoder.weight]
    if train_cfg["freeze_endmembers"]:
        net.decoder.weight.requires_grad_(False)
    others = [p for name, p in net.named_parameters() if not name.startswith("decoder.")]
    groups = [{"params": others, "lr_scale": 1.0}]
    if not train_cfg["freeze_endmembers"]:
        groups.append({"params": decoder, "lr_scale": train_cfg["endmember_lr_scale"]})
    for group in groups:
        group["lr"] = train_cfg["lr"] * group["lr_scale"]
    return groups


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def check_data_folders(cfg: dict) -> None:
    """Fail early, in one line, when the training data is not in place.

    A test split is optional (train + val is the common case for a small scene): when its folder is
    missing or empty, one log line says the test is skipped and `data.test` becomes None.
    """
    for role in ("train", "val", "test"):
        folder = cfg["data"][role]
        if role != "train" and folder is None:
            continue
        if role == "test" and (not os.path.isdir(folder) or not list_cube_files(folder)):
            get_logger().info("no test split (%s has no HSI crops): the test after training is skipped", folder)
            cfg["data"]["test"] = None
            continue
        if os.path.exists(folder):
            require_folder(folder, f"folder of '{role}' HSI crops")
        if not os.path.isdir(folder) or not list_cube_files(folder):
            raise UserError(f"{folder}: no HSI crops (.mat) for '{role}'; {NO_DATA_HELP}")


def farthest_pixels(dataset: HSICropDataset, count: int, max_pixels: int = 20000, seed: int = 0) -> np.ndarray:
    """`count` mutually distant training spectra (C, count): greedy farthest-point selection.

    Starts from the brightest pixel, then repeatedly adds the pixel farthest from those chosen.
    """
    rng = np.random.default_rng(seed)
    pixels = []
    for path in dataset.files:
        _, target = dataset.load(path)
        flat = target.reshape(-1, target.shape[2])
        valid = dataset.valid_mask(path)
        if valid is not None:
            flat = flat[valid.ravel()]
        take = min(len(flat), max(1, max_pixels // len(dataset.files)))
        pixels.append(flat[rng.choice(len(flat), take, replace=False)])
    pixels = np.concatenate(pixels).astype(np.float64)
    chosen = [int(np.argmax(np.linalg.norm(pixels, axis=1)))]
    distance = np.linalg.norm(pixels - pixels[chosen[0]], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(pixels - pixels[chosen[-1]], axis=1))
    return pixels[chosen].T


def make_dataset(cfg: dict, role: str, training: bool) -> HSICropDataset:
    data = cfg["data"]
    return HSICropDataset(
        data[role], bands=data["bands"], key=data["key"], input_norm=data["input_norm"], seed=cfg["train"]["seed"],
        crop_size=data["crop_size"] if training else None, augment=data["augment"] if training else False,
        samples_per_epoch=data["samples_per_epoch"] if training else None, wavelengths=data["wavelengths"],
        min_side=2 if training else 1)


@torch.no_grad()
def evaluate(model, dataset: HSICropDataset, device: torch.device) -> dict[str, float]:
    """Average reference metrics (and L1) of whole files of `dataset`."""
    model.eval()
    results = []
    for path in dataset.files:
        model_input, target = dataset.load(path)
        x = torch.from_numpy(model_input.transpose(2, 0, 1).copy())[None].to(device)
        _, recon = model(x)
        pred = recon[0].permute(1, 2, 0).cpu().numpy()
        valid = dataset.valid_mask(path)  # no-data pixels are left out of the metrics
        metrics = quality_assessment_valid(target, pred, valid)
        metrics["L1"] = float(np.abs(target - pred).mean() if valid is None else np.abs(target - pred)[valid].mean())
        results.append(metrics)
    model.train()
    return average_metrics(results)


def ensure_writable(folder: str) -> None:
    """Fail at the start, in one line, when the run folder cannot be created or written."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test"):
            pass
    except OSError as err:
        raise UserError(f"{folder}: the run folder is not writable ({err.strerror or err})") from None


def append_record(path: str, record: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:
        raise UserError(f"{path}: could not write ({err.strerror or err}); the checkpoints are saved") from None


def build_state(cfg, model, optimizer, epoch, best, wavelengths, band_indices, input_moments=None) -> dict:
    """Checkpoint dict of a finished `epoch` (0-based); `model` is the plain module (no DDP prefix)."""
    return {
        "stage": "unmixing", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": {"type": "step", "last_epoch": epoch, "step_epochs": cfg["train"]["lr_step_epochs"],
                      "gamma": cfg["train"]["lr_gamma"]},
        "epoch": epoch, "best": best, "rng": capture_rng_state(), "config": cfg,
        "wavelengths": None if wavelengths is None else np.asarray(wavelengths),
        "band_indices": list(band_indices), "in_channels": 3, "out_bands": model.out_bands,
        # per-channel (mean, std) of the training inputs, for `infer.color_match: "moments"`
        "input_moments": None if input_moments is None else [np.asarray(m, dtype=np.float64) for m in input_moments],
    }


def batches(loader: DataLoader, stop: StopRequest):
    """Iterate `loader`; a worker killed by the same Ctrl-C ends the epoch quietly instead of raising."""
    iterator = iter(loader)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except (RuntimeError, FileNotFoundError):  # a killed worker surfaces as either
            if stop.requested:
                stop.loader_died = True
                return
            raise


def train_unmixing(cfg: dict, out_dir: str, device: torch.device, resume: str | None = None,
                   wandb: bool = False) -> dict:
    """Train, validate every epoch, keep `latest`/`best` checkpoints, test at the end; returns test metrics.

    In several processes (torchrun) only rank 0 writes and tests; the other ranks return {}.
    """
    main = is_main_process()
    if main:
        ensure_writable(out_dir)
    log = setup_logging(os.path.join(out_dir, "train.log") if main else None,
                        level=logging.INFO if main else logging.WARNING)
    check_data_folders(cfg)
    check_workers(cfg["data"]["num_workers"], "data.num_workers")
    seed_everything(cfg["train"]["seed"])
    tc = cfg["train"]
    batch_size = per_process_batch(tc["batch_size"])
    train_set = make_dataset(cfg, "train", training=True)
    val_set = make_dataset(cfg, "val", training=False) if cfg["data"]["val"] and main else None
    net = build_unmixing_model(cfg["model"], 3, train_set.n_bands)
    input_moments = composite_moments([training_pixels(train_set, seed=tc["seed"])[0]]) if main else None
    optimizer = torch.optim.Adam(parameter_groups(net, tc), lr=tc["lr"], weight_decay=tc["weight_decay"])
    ckpt_dir = os.path.join(out_dir, "checkpoint")
    interrupted_path = os.path.join(ckpt_dir, "interrupted.pth")
    start_epoch, best = 0, {"PSNR": -math.inf, "epoch": None}
    progress = {"steps": 0, "losses": [], "seen": 0, "seconds": 0.0}  # of the current epoch
    if resume:
        state = load_checkpoint(resume, "unmixing")
        check_resume_entries(state, resume)
        if state["out_bands"] != train_set.n_bands:
            raise UserError(f"{resume}: checkpoint has {state['out_bands']} bands, the training data "
                            f"({train_set.files[0]}) has {train_set.n_bands}")
        try:
            net.load_state_dict(strip_module_prefix(state["model"]))
        except RuntimeError:  # another network: say which settings differ instead of 100 lines of sizes
            changed = [f"model.{k} {state['config']['model'].get(k)!r} in the checkpoint, {v!r} now"
                       for k, v in cfg["model"].items() if state.get("config", {}).get("model", {}).get(k, v) != v]
            raise UserError(f"{resume}: the checkpoint's network does not fit this config "
                            f"({'; '.join(changed) or 'shapes differ'}); resume without -c to use the checkpoint's "
                            "own config") from None
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
            raise UserError(f"{resume}: its optimizer state does not fit this network "
                            f"({str(err).splitlines()[0][:100] if str(err) else type(err).__name__})") from None
        start_epoch, best = state["epoch"] + 1, state["best"]
        if state.get("partial"):  # an interrupted epoch: continue after its last finished step
            progress = {key: state["partial"][key] for key in progress}
        restore_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d, step %d", resume, start_epoch + 1, progress["steps"] + 1)
        if (main and os.path.isfile(interrupted_path) and os.path.abspath(resume) != os.path.abspath(interrupted_path)
                and os.path.getmtime(interrupted_path) > os.path.getmtime(resume)):
            log.warning("%s is newer than %s; resume from it to keep the interrupted steps", interrupted_path, resume)
    else:
        what = initialise_from_data(net, cfg, train_set)
        if what:
            log.info("decoder initialised from %s", what)
    net.to(device).train()
    optimizer_to(optimizer, device)
    # the near-data hinge measures the endmembers against a fixed sample of training pixels
    data_pixels = (torch.from_numpy(training_pixels(train_set, max_pixels=4000, seed=tc["seed"] + 1)[1]).float()
                   .to(device) if cfg["loss"].get("near_data") else None)
    model = wrap_model(net, device)
    sampler = distributed_sampler(train_set, seed=tc["seed"])
    if main:
        save_config(cfg, os.path.join(out_dir, "config.json"))
    if len(train_set) % world_size():
        log.warning("%d samples per epoch do not split evenly over %d processes: a few repeat each epoch",
                    len(train_set), world_size())
    log.info("training on %d files (%d bands, input bands %s), %d parameters, device %s, %d process(es) x batch %d",
             len(train_set.files), train_set.n_bands, train_set.band_indices, sum(p.numel() for p in net.parameters()),
             device, world_size(), batch_size)

    epochs = tc["epochs"]
    tracker = start_tracking(os.path.join(out_dir, "tb_logger"), cfg, cfg["name"], wandb=wandb, enabled=main)
    if tc["schedule"] not in ("step", "onecycle"):
        raise UserError(f"train.schedule must be 'step' or 'onecycle', got '{tc['schedule']}'")
    steps_per_epoch = math.ceil(len(train_set) / (batch_size * world_size()))
    if tc["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, tc["max_steps_per_epoch"])
    with StopRequest() as stop:
        for epoch in range(start_epoch, epochs):
            lr = step_lr(tc["lr"], epoch, tc["lr_step_epochs"], tc["lr_gamma"])
            set_learning_rate(optimizer, lr)
            train_set.epoch = epoch
            sampler.set_epoch(epoch)
            loader = DataLoader(train_set, batch_size=batch_size, sampler=list(sampler)[progress["steps"] * batch_size:],
                                drop_last=False, num_workers=cfg["data"]["num_workers"],
                                pin_memory=device.type == "cuda", worker_init_fn=worker_init)
            started = time.perf_counter() - progress["seconds"]
            bar = tqdm(batches(loader, stop), desc=f"epoch {epoch + 1}/{epochs}", total=len(loader), leave=False,
                       dynamic_ncols=True, disable=not main)
            stopping = False
            for step, (x, y, valid) in enumerate(bar, start=progress["steps"]):
                if tc["max_steps_per_epoch"] and step >= tc["max_steps_per_epoch"]:
                    break
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                valid = valid.to(device, non_blocking=True)  # 0 at no-data pixels: kept out of the loss
                if tc["schedule"] == "onecycle":
                    lr = one_cycle_lr(tc["lr"], epoch * steps_per_epoch + step, epochs * steps_per_epoch, tc["warmup"])
                    set_learning_rate(optimizer, lr)
                _, recon = model(x)
                loss, terms = unmixing_loss(recon, y, net.decoder.weight, cfg["loss"], valid=valid,
                                            data_pixels=data_pixels)
                # one all-reduce carries the loss and the stop flag, so every process stops at the same step
                shared = all_reduce_mean(torch.stack([loss.detach().float(),
                                                      torch.tensor(float(stop.requested), device=loss.device)]))
                global_loss, stopping = float(shared[0]), float(shared[1]) > 0
                if stopping:
                    break
                if not math.isfinite(global_loss):
                    raise UserError(f"loss became {global_loss} at epoch {epoch + 1}, step {step + 1}; the last good "
                                    f"checkpoint is {os.path.join(ckpt_dir, 'latest.pth')} (try a lower --lr)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), tc["grad_clip"])
                optimizer.step()
                progress["steps"] = step + 1
                progress["losses"].append(global_loss)
                progress["seen"] += x.shape[0] * world_size()
                bar.set_postfix(loss=f"{global_loss:.4f}")
                if (step + 1) % tc["log_every"] == 0:
                    tracker.log_scalars(dict(terms, loss=global_loss), epoch * len(loader) + step + 1, prefix="step/")
                    log.info("epoch %d step %d loss %.5f %s", epoch + 1, step + 1, global_loss,
                             " ".join(f"{k} {v:.5f}" for k, v in terms.items()))
            bar.close()
            if stopping or stop.loader_died:
                progress["seconds"] = time.perf_counter() - started
                save_interrupted(cfg, net, optimizer, epoch, best, train_set, progress, interrupted_path, resume)
                raise KeyboardInterrupt
            seconds = time.perf_counter() - started
            losses = progress["losses"]
            record = {"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses)) if losses else None,
                      "patches_per_s": progress["seen"] / max(seconds, 1e-9), "seconds": seconds}
            progress = {"steps": 0, "losses": [], "seen": 0, "seconds": 0.0}
            if not main:
                continue
            if val_set is not None:
                record.update({f"val_{k}": v for k, v in evaluate(net, val_set, device).items()})
            is_best = val_set is not None and record["val_PSNR"] > best["PSNR"]
            if is_best:
                best = {"PSNR": record["val_PSNR"], "epoch": epoch + 1}
            state = build_state(cfg, net, optimizer, epoch, best, train_set.wavelengths, train_set.band_indices,
                                input_moments)
            save_checkpoint(state, os.path.join(ckpt_dir, "latest.pth"))
            if is_best or val_set is None:
                save_checkpoint(state, os.path.join(ckpt_dir, "best.pth"))
            if os.path.isfile(interrupted_path):  # superseded by a later finished epoch
                os.remove(interrupted_path)
            append_record(os.path.join(out_dir, "metrics.jsonl"), record)
            tracker.log_scalars(record, epoch + 1, prefix="epoch/")
            log.info("epoch %d/%d: lr %.2e loss %.5f %s(%.1f patches/s)", epoch + 1, epochs, lr,
                     record["train_loss"] or float("nan"),
                     f"val PSNR {record['val_PSNR']:.2f} dB SAM {record['val_SAM']:.2f} deg " if val_set else "",
                     record["patches_per_s"])
    tracker.close()
    barrier()
    if not main:
        return {}
    return test_unmixing(cfg, out_dir, device)


RESUME_ENTRIES = ("out_bands", "optimizer", "epoch", "best", "rng", "config")


def check_resume_entries(state: dict, path: str) -> None:
    """A stage-1 checkpoint that training can continue from: the entries `train_unmixing` restores."""
    missing = [key for key in RESUME_ENTRIES if state.get(key) is None]
    if missing:
        raise UserError(f"{path}: not a training checkpoint (no '{missing[0]}'); it can be used by `Unmixing.py infer` "
                        "and `Synthesis.py`, but training cannot continue from it")
    check_rng_state(state["rng"], path)
    optimizer = state["optimizer"]
    if not isinstance(optimizer.get("state"), dict) or not isinstance(optimizer.get("param_groups"), list):
        raise UserError(f"{path}: 'optimizer' is not an optimizer state (no 'state' / 'param_groups')")


def save_interrupted(cfg, net, optimizer, epoch, best, train_set, progress, path, resume) -> None:
    """Rank 0 writes the state after the last finished step of `epoch`, and says how to resume."""
    if not is_main_process():
        return
    state = build_state(cfg, net, optimizer, epoch - 1, best, train_set.wavelengths, train_set.band_indices,
                        composite_moments([training_pixels(train_set, seed=cfg["train"]["seed"])[0]]))
    state["partial"] = dict(progress, epoch=epoch)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in StopRequest.SIGNALS} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        save_checkpoint(state, path)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    out_dir = os.path.dirname(os.path.dirname(path))
    launcher = f"torchrun --nproc_per_node {world_size()}" if world_size() > 1 else "python"
    get_logger().warning("interrupted at epoch %d, step %d: wrote %s (latest.pth keeps epoch %d); continue with "
                         "`%s Unmixing.py train ... --out %s --resume %s`", epoch + 1, progress["steps"], path,
                         epoch, launcher, out_dir, path)


def test_unmixing(cfg: dict, out_dir: str, device: torch.device) -> dict:
    """Test metrics of `train.test_checkpoint` ("latest": the final epoch, as the reference; "best"),
    written to test_metrics.json beside it."""
    log = get_logger()
    which = cfg["train"].get("test_checkpoint", "latest")
    best_path = os.path.join(out_dir, "checkpoint", f"{which}.pth")
    if not cfg["data"]["test"]:
        return {}
    state = load_checkpoint(best_path, "unmixing")
    test_set = make_dataset(cfg, "test", training=False)
    if test_set.n_bands != state["out_bands"]:
        raise UserError(f"{test_set.files[0]}: {test_set.n_bands} bands, the model was trained on {state['out_bands']}")
    model = build_unmixing_model(cfg["model"], 3, state["out_bands"])
    model.load_state_dict(strip_module_prefix(state["model"]))
    model.to(device)
    metrics = evaluate(model, test_set, device)
    metrics.update({"checkpoint": best_path, "epoch": state["epoch"] + 1, "test_files": len(test_set.files)})
    try:
        with open(os.path.join(out_dir, "checkpoint", "test_metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
    except OSError as err:
        raise UserError(f"{out_dir}: could not write test_metrics.json ({err.strerror or err})") from None
    log.info("test (%d files, " + which + " epoch %d): PSNR %.2f dB, SSIM %.4f, SAM %.2f deg, ERGAS %.3f",
             len(test_set.files), metrics["epoch"], metrics["PSNR"], metrics["SSIM"], metrics["SAM"], metrics["ERGAS"])
    return metrics


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move optimizer state tensors (after a CPU-side load) to the training device."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                state[key] = value.to(device)
