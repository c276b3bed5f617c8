"""Stage 2 training (`Diffusion.py -p train`): the DDPM on abundance maps.

One step: a batch of abundance crops in [-1, 1] -> GaussianDiffusion.training_loss -> Adam (with
optional AMP and gradient clipping) -> EMA update. Every `print_freq` steps the mean loss goes to
`logs/train.log` and `logs/train_loss.jsonl`; every `val_freq` steps a PNG preview of samples drawn
with the EMA weights goes to `results/`; every `save_checkpoint_freq` steps (and at the end) a
checkpoint `checkpoint/I<step>_E<epoch>.pth`.

Resuming is exact: the checkpoint holds the model, EMA, optimizer and AMP scaler states, the
global RNG states (dropout), the training generator's state (noise levels and noise) and the number
of samples drawn so far (the data stream restarts there, see `data.abundance_dataset`).
"""
import copy
import json
import os
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint, seed_everything
from core.config import save_config
from core.errors import UserError
from core.logs import get_logger, setup_logging
from core.previews import save_png
from data.abundance_dataset import AbundanceDataset, AbundanceStream, list_abundance_files
from models.sr3_unet import count_parameters, init_weights, unet_from_config
from pipeline.diffusion_sample import (CHECKPOINT_FILE, build_diffusion, draw_samples, new_run_dir, preview_sheet,
                                       run_dir_of_checkpoint, run_subdirs, to_abundance)


class EMA:
    """Exponential moving average of a module's weights, used for sampling.

    Follows the reference config's `ema_scheduler`: until `step_start_ema` the average is a copy of
    the weights; afterwards, every `update_ema_every` steps, ema = decay * ema + (1 - decay) * weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float, start: int, every: int):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.start, self.every = float(decay), int(start), max(1, int(every))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Call after optimizer step number `step` (1-based)."""
        if step < self.start:
            self.model.load_state_dict(model.state_dict())
        elif step % self.every == 0:
            for ema_p, p in zip(self.model.parameters(), model.parameters()):
                ema_p.lerp_(p.detach(), 1.0 - self.decay)
            for ema_b, b in zip(self.model.buffers(), model.buffers()):
                ema_b.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def make_optimizer(params, opt: dict) -> torch.optim.Optimizer:
    kind = str(opt["type"]).lower()
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(params, lr=float(opt["lr"]), weight_decay=float(opt.get("weight_decay", 0.0)))


def check_resume_compatible(state: dict, cfg: dict, path: str) -> None:
    """A resumed run must train the same network on the same schedule."""
    old = state["config"]["model"]
    for key in ("unet", "diffusion"):
        if old[key] != cfg["model"][key]:
            changed = sorted(k for k in set(old[key]) | set(cfg["model"][key])
                             if old[key].get(k) != cfg["model"][key].get(k))
            raise UserError(f"{path}: the checkpoint was trained with other model.{key} settings "
                            f"({', '.join(changed)}); resume with the config it was trained with")
    if old["beta_schedule"]["train"] != cfg["model"]["beta_schedule"]["train"]:
        raise UserError(f"{path}: the checkpoint was trained with another model.beta_schedule.train")


def save_training_checkpoint(paths: dict, cfg: dict, unet, ema, optimizer, scaler, generator, step: int,
                             samples_seen: int, num_files: int, seed: int) -> str:
    epoch = samples_seen // num_files
    path = os.path.join(paths["checkpoint"], f"I{step}_E{epoch}.pth")
    save_checkpoint({
        "stage": "diffusion", "model": unet.state_dict(), "ema": ema.state_dict() if ema else None,
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step, "epoch": epoch,
        "samples_seen": samples_seen, "seed": seed, "rng": capture_rng_state(),
        "generator": generator.get_state(), "config": cfg, "parameters": count_parameters(unet),
    }, path)
    keep = cfg["train"]["keep_checkpoints"]
    if keep:
        ours = sorted((int(m.group(1)), name) for name in os.listdir(paths["checkpoint"])
                      if (m := CHECKPOINT_FILE.match(name)))
        for _, name in ours[:-keep]:
            os.remove(os.path.join(paths["checkpoint"], name))
    return path


@torch.no_grad()
def write_preview(cfg: dict, unet, paths: dict, step: int, device: torch.device, seed: int) -> str:
    """A PNG of `train.preview_samples` samples (same initial noise every time, so runs can be compared)."""
    was_training = unet.training
    unet.eval()
    diffusion = build_diffusion(cfg["model"], unet, "val")
    s = cfg["sample"]
    generator = torch.Generator(device=device).manual_seed(seed)
    count = cfg["train"]["preview_samples"]
    batches = list(draw_samples(diffusion, count, min(count, s["batch_size"]), device, s["sampler"], s["steps"],
                                float(s["eta"]), generator, progress=False))
    abundance = to_abundance(torch.cat(batches), s["project_simplex"]).permute(0, 2, 3, 1).numpy()
    unet.train(was_training)
    path = os.path.join(paths["results"], f"I{step}_preview.png")
    save_png(preview_sheet(abundance), path)
    return path


def train_diffusion(cfg: dict, out_root: str, device: torch.device, seed: int, resume: str | None = None,
                    run_dir: str | None = None, progress: bool = True) -> str:
    """Train until `train.n_iter` steps; returns the path of the last checkpoint."""
    log = get_logger()
    resume = resume or cfg["path"]["resume_state"]
    state = load_checkpoint(resume, "diffusion") if resume else None
    if state is not None:
        check_resume_compatible(state, cfg, resume)
        if int(state.get("seed", seed)) != seed:
            log.info("resuming with the checkpoint's seed %s (not %s)", state["seed"], seed)
        seed = int(state.get("seed", seed))
    run_dir = run_dir or (run_dir_of_checkpoint(resume, cfg) if resume else None) or new_run_dir(out_root, cfg["name"])
    paths = run_subdirs(run_dir, cfg)
    start_step = int(state["step"]) if state else 0
    later = [name for name in os.listdir(paths["checkpoint"])
             if (m := CHECKPOINT_FILE.match(name)) and int(m.group(1)) > start_step]
    if later:
        raise UserError(f"{paths['checkpoint']}: holds checkpoints past step {start_step} ({', '.join(sorted(later))}) "
                        "that this run would overwrite; resume from the newest one or pass another --run-dir")
    log = setup_logging(os.path.join(paths["log"], "train.log"))
    config_name = "config.json" if not os.path.exists(os.path.join(run_dir, "config.json")) else f"config_I{start_step}.json"
    save_config(dict(cfg, seed=seed), os.path.join(run_dir, config_name))

    data_cfg = cfg["datasets"]["train"]
    diff_cfg, train_cfg = cfg["model"]["diffusion"], cfg["train"]
    files = list_abundance_files(data_cfg["dataroot"], data_cfg["data_len"])
    dataset = AbundanceDataset(files, diff_cfg["image_size"], diff_cfg["channels"])
    samples_seen = int(state["samples_seen"]) if state else 0
    stream = AbundanceStream(len(files), seed, start=samples_seen, flip=data_cfg["flip"])
    batch_size = data_cfg["batch_size"]
    # an own generator keeps the loader from drawing from the global RNG (resume exactness)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=stream, num_workers=data_cfg["num_workers"],
                        generator=torch.Generator(), pin_memory=device.type == "cuda")

    seed_everything(seed)
    unet = unet_from_config(cfg["model"])
    if state is None:
        init_weights(unet, cfg["model"]["init"])
    unet.to(device).train()
    diffusion = build_diffusion(cfg["model"], unet, "train")
    optimizer = make_optimizer(unet.parameters(), train_cfg["optimizer"])
    ema_opt = train_cfg["ema_scheduler"]
    ema = EMA(unet, ema_opt["ema_decay"], ema_opt["step_start_ema"], ema_opt["update_ema_every"]) \
        if train_cfg["use_ema"] else None
    use_amp = bool(train_cfg["amp"]) and device.type == "cuda"
    if train_cfg["amp"] and not use_amp:
        log.info("train.amp is set but the device is %s; training in float32", device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    generator = torch.Generator(device=device).manual_seed(seed)
    if state is not None:
        unet.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        generator.set_state(state["generator"])
        log.info("resumed from %s at step %d", resume, start_step)

    n_iter = train_cfg["n_iter"]
    log.info("run folder %s; %d abundance files in %s; UNet %s parameters; device %s%s; seed %d",
             run_dir, len(files), data_cfg["dataroot"], f"{count_parameters(unet):,}", device,
             " (AMP)" if use_amp else "", seed)
    per_element = diff_cfg["loss_type"] in ("l1", "l2")
    numel = batch_size * diff_cfg["channels"] * diff_cfg["image_size"] ** 2
    step, last_saved, window, window_start = start_step, None, [], time.perf_counter()
    loss_log = open(os.path.join(paths["log"], "train_loss.jsonl"), "a", encoding="utf-8")
    iterator = iter(loader)
    try:
        with tqdm(total=n_iter, initial=step, desc="train", unit="step", disable=not progress) as bar:
            while step < n_iter:
                batch = next(iterator).to(device, non_blocking=True)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    loss = diffusion.training_loss(batch, generator)
                if not torch.isfinite(loss):
                    raise UserError(f"training diverged at step {step + 1} (loss {loss.item()}); lower "
                                    "train.optimizer.lr or set train.grad_clip")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if train_cfg["grad_clip"]:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(unet.parameters(), float(train_cfg["grad_clip"]))
                scaler.step(optimizer)
                scaler.update()
                step += 1
                samples_seen += batch.shape[0]
                if ema is not None:
                    ema.update(unet, step)
                window.append(loss.item())
                bar.update(1)

                if step % train_cfg["print_freq"] == 0 or step == n_iter:
                    mean = sum(window) / len(window)
                    rate = len(window) / max(time.perf_counter() - window_start, 1e-9)
                    record = {"step": step, "epoch": samples_seen // len(files), "loss": mean,
                              "loss_per_element": mean / numel if per_element else mean,
                              "lr": optimizer.param_groups[0]["lr"], "steps_per_s": rate, "time": time.time()}
                    loss_log.write(json.dumps(record) + "\n")
                    loss_log.flush()
                    log.info("<epoch:%3d, iter:%8d> loss: %.4e (per element %.4e), %.2f steps/s", record["epoch"],
                             step, mean, record["loss_per_element"], rate)
                    bar.set_postfix(loss=f"{record['loss_per_element']:.4f}")
                    window, window_start = [], time.perf_counter()
                if train_cfg["preview_samples"] and step % train_cfg["val_freq"] == 0:
                    preview = write_preview(cfg, ema.model if ema else unet, paths, step, device, seed)
                    log.info("preview %s", preview)
                if step % train_cfg["save_checkpoint_freq"] == 0 or step == n_iter:
                    last_saved = save_training_checkpoint(paths, cfg, unet, ema, optimizer, scaler, generator,
                                                          step, samples_seen, len(files), seed)
                    log.info("saved %s", last_saved)
    finally:
        loss_log.close()
    if last_saved is None:
        log.info("nothing to train: the checkpoint is at step %d and train.n_iter is %d", step, n_iter)
        return resume
    log.info("end of training at step %d; run folder %s", step, run_dir)
    return last_saved
