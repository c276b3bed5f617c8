"""Training loop of the unmixing autoencoder: epochs, validation, checkpoints, test metrics."""
import json
import math
import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.checkpoint import (capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint,
                             seed_everything)
from core.config import save_config
from core.errors import UserError
from core.logs import get_logger, setup_logging
from core.metrics import average_metrics, quality_assessment
from data.hsi_dataset import HSICropDataset, list_mat_files
from models.losses import unmixing_loss
from models.unmixing import build_unmixing_model

NO_DATA_HELP = ("prepare HSI crops with `python -m data.prepare chikusei --src HyperspecVNIR_Chikusei_20140729.mat "
                "--out dataset` (see README, Datasets), pass --train/--val/--test, or run `python demo.py`")


def step_lr(base_lr: float, epoch: int, step_epochs: int, gamma: float) -> float:
    """The reference schedule: lr * gamma ** ((epoch + 1) // step) for 0-based `epoch`."""
    return base_lr * gamma ** ((epoch + 1) // step_epochs)


def check_data_folders(cfg: dict) -> None:
    """Fail early, in one line, when the training data is not in place."""
    for role in ("train", "val", "test"):
        folder = cfg["data"][role]
        if role != "train" and folder is None:
            continue
        if not os.path.isdir(folder) or not list_mat_files(folder):
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
        samples_per_epoch=data["samples_per_epoch"] if training else None)


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
        metrics = quality_assessment(target, pred)
        metrics["L1"] = float(np.abs(target - pred).mean())
        results.append(metrics)
    model.train()
    return average_metrics(results)


def build_state(cfg, model, optimizer, epoch, best, wavelengths, band_indices) -> dict:
    return {
        "stage": "unmixing", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": {"type": "step", "last_epoch": epoch, "step_epochs": cfg["train"]["lr_step_epochs"],
                      "gamma": cfg["train"]["lr_gamma"]},
        "epoch": epoch, "best": best, "rng": capture_rng_state(), "config": cfg,
        "wavelengths": None if wavelengths is None else np.asarray(wavelengths),
        "band_indices": list(band_indices), "in_channels": 3, "out_bands": model.out_bands,
    }


def train_unmixing(cfg: dict, out_dir: str, device: torch.device, resume: str | None = None) -> dict:
    """Train, validate every epoch, keep `latest`/`best` checkpoints, test at the end; returns test metrics."""
    log = setup_logging(os.path.join(out_dir, "train.log"))
    check_data_folders(cfg)
    seed_everything(cfg["train"]["seed"])
    train_set = make_dataset(cfg, "train", training=True)
    val_set = make_dataset(cfg, "val", training=False) if cfg["data"]["val"] else None
    model = build_unmixing_model(cfg["model"], 3, train_set.n_bands)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["train"]["lr"], weight_decay=cfg["train"]["weight_decay"])
    ckpt_dir = os.path.join(out_dir, "checkpoint")
    start_epoch, best = 0, {"PSNR": -math.inf, "epoch": None}
    if resume:
        state = load_checkpoint(resume, "unmixing")
        if state["out_bands"] != train_set.n_bands:
            raise UserError(f"{resume}: checkpoint has {state['out_bands']} bands, the training data "
                            f"({train_set.files[0]}) has {train_set.n_bands}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        restore_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d", resume, start_epoch + 1)
    elif cfg["model"]["decoder_init"] == "distant_pixels":
        endmembers = farthest_pixels(train_set, model.num_endmembers, seed=cfg["train"]["seed"])
        with torch.no_grad():
            model.decoder.weight.copy_(torch.from_numpy(endmembers).float()[:, :, None, None])
        log.info("decoder initialised from %d mutually distant training pixels", model.num_endmembers)
    elif cfg["model"]["decoder_init"] != "random":
        raise UserError(f"model.decoder_init must be 'random' or 'distant_pixels', got '{cfg['model']['decoder_init']}'")
    model.to(device).train()
    optimizer_to(optimizer, device)
    save_config(cfg, os.path.join(out_dir, "config.json"))
    log.info("training on %d files (%d bands, input bands %s), %d parameters, device %s", len(train_set.files),
             train_set.n_bands, train_set.band_indices, sum(p.numel() for p in model.parameters()), device)

    epochs, tc = cfg["train"]["epochs"], cfg["train"]
    for epoch in range(start_epoch, epochs):
        lr = step_lr(tc["lr"], epoch, tc["lr_step_epochs"], tc["lr_gamma"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_set.epoch = epoch
        loader = DataLoader(train_set, batch_size=tc["batch_size"], shuffle=True, drop_last=False,
                            num_workers=cfg["data"]["num_workers"],
                            generator=torch.Generator().manual_seed(tc["seed"] * 1000 + epoch))
        losses, started, seen = [], time.perf_counter(), 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
        for step, (x, y) in enumerate(bar):
            if tc["max_steps_per_epoch"] and step >= tc["max_steps_per_epoch"]:
                break
            x, y = x.to(device), y.to(device)
            _, recon = model(x)
            loss, terms = unmixing_loss(recon, y, model.decoder.weight, cfg["loss"])
            if not torch.isfinite(loss):
                raise UserError(f"loss became {float(loss)} at epoch {epoch + 1}, step {step + 1}; the last good "
                                f"checkpoint is {os.path.join(ckpt_dir, 'latest.pth')} (try a lower --lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc["grad_clip"])
            optimizer.step()
            losses.append(loss.item())
            seen += x.shape[0]
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if (step + 1) % tc["log_every"] == 0:
                log.info("epoch %d step %d loss %.5f %s", epoch + 1, step + 1, losses[-1],
                         " ".join(f"{k} {v:.5f}" for k, v in terms.items()))
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses)) if losses else None,
                  "patches_per_s": seen / max(seconds, 1e-9), "seconds": seconds}
        if val_set is not None:
            record.update({f"val_{k}": v for k, v in evaluate(model, val_set, device).items()})
        is_best = val_set is not None and record["val_PSNR"] > best["PSNR"]
        if is_best:
            best = {"PSNR": record["val_PSNR"], "epoch": epoch + 1}
        state = build_state(cfg, model, optimizer, epoch, best, train_set.wavelengths, train_set.band_indices)
        save_checkpoint(state, os.path.join(ckpt_dir, "latest.pth"))
        if is_best or val_set is None:
            save_checkpoint(state, os.path.join(ckpt_dir, "best.pth"))
        with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("epoch %d/%d: lr %.2e loss %.5f %s(%.1f patches/s)", epoch + 1, epochs, lr,
                 record["train_loss"] or float("nan"),
                 f"val PSNR {record['val_PSNR']:.2f} dB SAM {record['val_SAM']:.2f} deg " if val_set else "",
                 record["patches_per_s"])
    return test_unmixing(cfg, out_dir, device)


def test_unmixing(cfg: dict, out_dir: str, device: torch.device) -> dict:
    """Metrics of the best checkpoint on the test folder, written to test_metrics.json beside it."""
    log = get_logger()
    best_path = os.path.join(out_dir, "checkpoint", "best.pth")
    if not cfg["data"]["test"]:
        return {}
    state = load_checkpoint(best_path, "unmixing")
    test_set = make_dataset(cfg, "test", training=False)
    if test_set.n_bands != state["out_bands"]:
        raise UserError(f"{test_set.files[0]}: {test_set.n_bands} bands, the model was trained on {state['out_bands']}")
    model = build_unmixing_model(cfg["model"], 3, state["out_bands"])
    model.load_state_dict(state["model"])
    model.to(device)
    metrics = evaluate(model, test_set, device)
    metrics.update({"checkpoint": best_path, "epoch": state["epoch"] + 1, "test_files": len(test_set.files)})
    with open(os.path.join(out_dir, "checkpoint", "test_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    log.info("test (%d files, best epoch %d): PSNR %.2f dB, SSIM %.4f, SAM %.2f deg, ERGAS %.3f",
             len(test_set.files), metrics["epoch"], metrics["PSNR"], metrics["SSIM"], metrics["SAM"], metrics["ERGAS"])
    return metrics


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move optimizer state tensors (after a CPU-side load) to the training device."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                state[key] = value.to(device)
