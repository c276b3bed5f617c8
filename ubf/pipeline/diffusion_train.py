"""Stage 2 training (`Diffusion.py -p train`): the DDPM on abundance maps.

One step: a batch of abundance crops in [-1, 1] -> the diffusion loss -> Adam (with optional AMP,
gradient clipping and torch.compile) -> EMA update. Every `print_freq` steps the mean loss goes to
`logs/train.log` and `logs/train_loss.jsonl`; every `val_freq` steps a PNG preview of samples drawn
with the EMA weights goes to `results/`; every `save_checkpoint_freq` steps (and at the end) a
checkpoint `checkpoint/I<step>_E<epoch>.pth`.

Resuming is exact: the checkpoint holds the model, EMA, optimizer and AMP scaler states, the
global RNG states (dropout), the training generator's state (noise levels and noise) and the number
of samples drawn so far (the data stream restarts there, see `data.abundance_dataset`).

Several processes (`torchrun`, DDP, see ubf/core/distributed.py): `datasets.train.batch_size` is the
global batch. Every process reads its contiguous slice of each global batch from the shared data
stream and draws the noise levels and noise of the whole global batch from the same generator, then
keeps its slice, so N processes compute the loss terms of one process; summed losses are scaled by
N because DDP averages gradients. Weights, optimizer and EMA stay identical on all processes; rank 0
alone writes logs, previews and checkpoints (saved from the plain module: no `module.` prefix).
Dropout masks are drawn per process and so differ from a one-process run.

Ctrl-C or SIGTERM: the current step is finished, a checkpoint of that step is written and the log
gives the `--resume` command (exit status 130). A NaN/Inf loss stops before it touches the weights,
naming the last good checkpoint; a checkpoint is never written from non-finite weights.
"""
import copy
import functools
import json
import logging
import math
import os
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint, seed_everything
from ubf.core.config import save_config
from ubf.core.distributed import (all_reduce_mean, is_distributed, is_main_process, per_process_batch, rank,
                              world_size, wrap_model)
from ubf.core.errors import UserError
from ubf.core.fs import remove_stale_temp_files
from ubf.core.logs import get_logger, setup_logging
from ubf.core.previews import save_png
from ubf.core.signals import StopRequest, signals_ignored, worker_init
from ubf.core.tracking import start_tracking
from ubf.data.abundance_dataset import (AbundanceDataset, AbundanceStream, EpochBatches, list_abundance_files,
                                        training_range)
from ubf.models.diffusion import q_sample
from ubf.models.sr3_unet import count_parameters, init_weights, unet_from_config
from ubf.pipeline.class_labels import LabelledDataset, drop_labels, training_labels
from ubf.pipeline.diffusion_config import DIFFUSION_DEFAULTS
from ubf.pipeline.diffusion_sample import (CHECKPOINT_FILE, build_diffusion, checkpoint_step, decided_by_main_process,
                                       discard_unused_run_folder, draw_samples, lock_run_folder, new_run_dir,
                                       plain_state_dict, preview_sheet, process_seed, run_dir_of_checkpoint,
                                       run_subdirs, signed_abundance, to_abundance, unlock_run_folder)
from ubf.pipeline.reference_checkpoints import load_diffusion_checkpoint, load_diffusion_resume
from ubf.pipeline.unmixing_infer import check_workers

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


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
            # one fused call over all tensors instead of one lerp_ per parameter (same arithmetic)
            torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()],
                                 1.0 - self.decay)
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


def amp_dtype(setting) -> torch.dtype | None:
    """`train.amp`: false/"off" -> None; true/"fp16" -> float16 (with gradient scaling); "bf16" -> bfloat16."""
    if setting in (False, None, "off"):
        return None
    return AMP_DTYPES["fp16" if setting is True else setting]


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has native bfloat16 kernels here (AVX512-BF16 / AMX); without them bf16 is slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_usable(dtype: torch.dtype | None, device: torch.device) -> bool:
    """`train.amp` applies on CUDA, and on the CPU for bf16 when the CPU has bf16 kernels."""
    if dtype is None:
        return False
    return device.type == "cuda" or (device.type == "cpu" and dtype == torch.bfloat16 and cpu_supports_bf16())


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict | None) -> None:
    """The AMP gradient scaler's state from a checkpoint. A run without fp16 scaling saved `{}`, which an
    enabled GradScaler refuses to load: resuming such a checkpoint with `train.amp: fp16` starts a fresh scaler."""
    if saved:
        scaler.load_state_dict(saved)


def restore_generator(generator: torch.Generator, saved: torch.Tensor, seed: int, path: str) -> None:
    """The training generator's state; one written on another kind of device (CPU <-> CUDA states differ
    in size) cannot be set, so the noise stream restarts from `seed` with a warning instead."""
    try:
        generator.set_state(saved)
    except RuntimeError:
        get_logger().warning(
            "%s: its noise generator state comes from another kind of device than %s; the noise levels and noise "
            "restart from a seed of their own (weights, optimizer and data order resume exactly)", path,
            generator.device.type)
        generator.manual_seed(seed)


def step_loss(diffusion, model: torch.nn.Module, shard: torch.Tensor, global_batch: int,
              generator: torch.Generator, rows: slice | None = None) -> torch.Tensor:
    """This process's loss on its `shard` (n, K, S, S), rows `rows` of a global batch of `global_batch` crops.

    The noise levels and the noise of the whole global batch are drawn (in the order
    `GaussianDiffusion.training_loss` draws them, so one process computes exactly that loss) and
    this process keeps its rows. Summed losses are multiplied by the number of processes, and mean
    losses by processes * n / global_batch (1 for equal shares), so that DDP's average of the
    gradients is the gradient of the global batch's loss.
    """
    processes, n = world_size(), shard.shape[0]
    rows = rows if rows is not None else slice(rank() * n, (rank() + 1) * n)
    gamma = diffusion.draw_noise_levels(global_batch, shard.device, generator)[rows]
    noise = torch.randn((global_batch, *shard.shape[1:]), generator=generator, device=shard.device,
                        dtype=shard.dtype)[rows]
    output = model(q_sample(shard, gamma, noise), gamma)
    loss = diffusion.loss_from_output(output, shard, noise, gamma, scale=processes)
    if processes > 1 and not diffusion.loss_type.endswith("_sum") and processes * n != global_batch:
        loss = loss * (processes * n / global_batch)  # an uneven short last batch of an epoch
    return loss


def per_element(loss: float, loss_type: str, elements: int) -> float:
    """The logged per-element loss: the back-propagated value for mean losses (l1, l2, *_mean: already
    divided by b*c*h*w, as the reference's `optimize_parameters`), the sum / b*c*h*w for *_sum."""
    return loss / elements if loss_type.endswith("_sum") else loss


def all_finite(*modules) -> bool:
    return all(bool(torch.isfinite(p).all()) for module in modules if module is not None
               for p in module.state_dict().values() if p.is_floating_point())


def gather_rng_states() -> list | None:
    """Every process's global RNG states (dropout), for an exact resume with as many processes."""
    if not is_distributed():
        return None
    states = [None] * world_size()
    torch.distributed.all_gather_object(states, capture_rng_state())
    return states


def restore_process_rng(state: dict, seed: int) -> None:
    """Global RNG states of a resumed run: this process's own when the checkpoint has them,
    else rank 0's checkpointed state on rank 0 and a seed from (seed, rank, step) elsewhere."""
    per_rank = state.get("rng_ranks")
    if per_rank and len(per_rank) == world_size():
        restore_rng_state(per_rank[rank()])
    elif rank() == 0 and state.get("rng") is not None:
        restore_rng_state(state["rng"])
    else:
        torch.manual_seed(process_seed(seed * 1_000_003 + int(state["step"]), rank()))


def save_training_checkpoint(paths: dict, cfg: dict, unet, ema, optimizer, scaler, generator, step: int,
                             samples_seen: int, epoch: int, seed: int, last_good: str | None) -> str:
    """Write `I<step>_E<epoch>.pth` (rank 0; every process must call this) and return its path.

    Non-finite weights are never written: the run stops naming the last good checkpoint instead.
    """
    path = os.path.join(paths["checkpoint"], f"I{step}_E{epoch}.pth")
    rng_ranks = gather_rng_states()
    if not all_finite(unet, ema.model if ema else None):
        raise UserError(f"the weights became NaN/Inf by step {step}; not saving them. The last good checkpoint "
                        f"is {last_good or 'none (none was written yet)'} (lower train.optimizer.lr or set "
                        "train.grad_clip)")
    if not is_main_process():
        return path
    save_checkpoint({
        "stage": "diffusion", "model": unet.state_dict(), "ema": ema.state_dict() if ema else None,
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step, "epoch": epoch,
        "samples_seen": samples_seen, "seed": seed, "rng": capture_rng_state(), "rng_ranks": rng_ranks,
        "generator": generator.get_state(), "config": cfg, "parameters": count_parameters(unet),
        "world_size": world_size(),
    }, path)
    keep = cfg["train"]["keep_checkpoints"]
    if keep:
        ours = sorted((int(m.group(1)), name) for name in os.listdir(paths["checkpoint"])
                      if (m := CHECKPOINT_FILE.match(name)))
        for _, name in ours[:-keep]:
            os.remove(os.path.join(paths["checkpoint"], name))
    return path


def check_resume_compatible(state: dict, cfg: dict, path: str) -> None:
    """A resumed run must train the same network on the same schedule."""
    old = dict(state["config"]["model"])
    # keys added after the checkpoint was written take their defaults (the behaviour it was trained with)
    old["diffusion"] = {**DIFFUSION_DEFAULTS["model"]["diffusion"], **old["diffusion"]}
    for key in ("unet", "diffusion"):
        # how the attention is computed changes no weight: older checkpoints lack the key
        changed = sorted(k for k in set(old[key]) | set(cfg["model"][key])
                         if old[key].get(k) != cfg["model"][key].get(k)
                         and k not in ("fused_attention", "abundance_range"))
        if changed:
            raise UserError(f"{path}: the checkpoint was trained with other model.{key} settings "
                            f"({', '.join(changed)}); resume with the config it was trained with")
    if old["beta_schedule"]["train"] != cfg["model"]["beta_schedule"]["train"]:
        raise UserError(f"{path}: the checkpoint was trained with another model.beta_schedule.train")


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
    signed = signed_abundance(torch.cat(batches), cfg["model"])
    abundance = to_abundance(signed, s["project_simplex"]).permute(0, 2, 3, 1).numpy()
    unet.train(was_training)
    path = os.path.join(paths["results"], f"I{step}_preview.png")
    save_png(preview_sheet(abundance, [f"step {step}, sample {i + 1}" for i in range(len(abundance))]), path)
    return path


def activation_bytes_per_sample(model_cfg: dict) -> int:
    """What one training sample's forward pass keeps for the backward pass, roughly: the sum of the outputs
    of the UNet's layers, measured by a forward pass on the meta device (no memory, no arithmetic).
    The paper's UNet at 256 x 256: 1.8 GiB per sample in float32."""
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg["diffusion"]["class_conditional"] = False  # one embedding vector: nothing next to the feature maps
    with torch.device("meta"):
        unet = unet_from_config(model_cfg)
    total = [0]

    def count(module, inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in unet.modules() if not list(m.children())]
    size, channels = model_cfg["diffusion"]["image_size"], model_cfg["diffusion"]["channels"]
    try:
        with torch.no_grad():
            unet(torch.zeros(1, channels, size, size, device="meta"), torch.zeros(1, device="meta"))
    except (RuntimeError, NotImplementedError):  # an operation without a meta kernel: no estimate, no refusal
        return 0
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]


def available_memory(device: torch.device) -> int | None:
    """Bytes free for training on `device` (CUDA: the device's free memory; CPU: MemAvailable), None if unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError, IndexError):
        return None
    return None


def check_batch_memory(model_cfg: dict, batch: int, device: torch.device, half: bool = False) -> None:
    """Refuse, before anything is allocated, a batch whose activations alone exceed the free memory
    (on the CPU an out-of-memory run is killed by the system without a word; on CUDA the estimate may
    pass twice the free memory, as mixed precision and the allocator make it rough there)."""
    free = available_memory(device)
    if free is None:
        return
    need = activation_bytes_per_sample(model_cfg) * batch // (2 if half else 1)
    limit = free * (2 if device.type == "cuda" else 1)
    if need > limit:
        per_sample = need / batch
        raise UserError(f"datasets.train.batch_size {batch}: about {need / 2 ** 30:,.1f} GiB of activations "
                        f"({per_sample / 2 ** 20:,.0f} MiB per sample, estimated), more than the {free / 2 ** 30:,.1f} "
                        f"GiB free on {device}; at most {max(1, int(limit // per_sample))} fit (lower --batch-size)")


def prepare_run_folder(cfg: dict, out_root: str, run_dir: str | None, resume: str | None, start_step: int,
                       seed: int) -> tuple[str, dict, str]:
    """(run folder, its sub-folders, the config file written there); rank 0 only."""
    run_dir = run_dir or (run_dir_of_checkpoint(resume, cfg) if resume else None) or new_run_dir(out_root, cfg["name"])
    lock_run_folder(run_dir, "Diffusion.py train")
    paths = run_subdirs(run_dir, cfg)
    remove_stale_temp_files(paths["checkpoint"])  # a run killed while saving left its half-written file
    later = [name for name in os.listdir(paths["checkpoint"])
             if (m := CHECKPOINT_FILE.match(name)) and int(m.group(1)) > start_step]
    if later:
        raise UserError(f"{paths['checkpoint']}: holds checkpoints past step {start_step} ({', '.join(sorted(later))}) "
                        "that this run would overwrite; resume from the newest one or pass another --run-dir")
    config_name = "config.json" if not os.path.exists(os.path.join(run_dir, "config.json")) else f"config_I{start_step}.json"
    config_path = os.path.join(run_dir, config_name)
    save_config(dict(cfg, seed=seed), config_path)
    return run_dir, paths, config_path


def resume_command(config_path: str, checkpoint: str) -> str:
    launcher = f"torchrun --nproc_per_node {world_size()}" if world_size() > 1 else "python"
    return f"{launcher} Diffusion.py -p train -c {config_path} --resume {checkpoint}"


def train_diffusion(cfg: dict, out_root: str, device: torch.device, seed: int, resume: str | None = None,
                    run_dir: str | None = None, progress: bool = True, wandb: bool = False) -> str:
    """Train until `train.n_iter` steps; returns the path of the last checkpoint.

    In several processes (torchrun) every process runs this; rank 0 alone writes.
    """
    main = is_main_process()
    log = setup_logging(level=logging.INFO if main else logging.WARNING)
    resume = resume or cfg["path"]["resume_state"]
    # a reference *_gen.pth + *_opt.pth pair, else one of our checkpoints
    state = (load_diffusion_resume(resume, cfg) or load_diffusion_checkpoint(resume, training=True)) if resume else None
    from_reference = state is not None and state.get("format") == "reference"
    file_labels = training_labels(cfg, state)  # None unless model.diffusion.class_conditional
    scaled = cfg["model"]["diffusion"].get("abundance_scaling", "none") == "channel_range"
    cfg["model"]["diffusion"].pop("abundance_range", None)
    if state is not None and scaled:  # a resumed network keeps the space it was trained in
        cfg["model"]["diffusion"]["abundance_range"] = state["config"]["model"]["diffusion"].get("abundance_range")
    if state is not None:
        check_resume_compatible(state, cfg, resume)
        if int(state.get("seed", seed)) != seed:
            log.info("resuming with the checkpoint's seed %s (not %s)", state["seed"], seed)
        seed = int(state.get("seed", seed))
    data_cfg = cfg["datasets"]["train"]
    diff_cfg, train_cfg = cfg["model"]["diffusion"], cfg["train"]
    global_batch = data_cfg["batch_size"]
    batch_size = per_process_batch(global_batch, "datasets.train.batch_size")
    start_step = int(state["step"]) if state else 0
    # the data is checked before a run folder exists, so a failed start leaves none behind
    files = list_abundance_files(data_cfg["dataroot"], data_cfg["data_len"])
    check_workers(data_cfg["num_workers"], "datasets.train.num_workers")
    # the reference's batches never exceed the files of an epoch; the stream batching takes batch_size as it is
    largest = min(global_batch, len(files)) if data_cfg["batching"] == "epoch" else global_batch
    check_batch_memory(cfg["model"], -(-largest // world_size()), device,
                       half=amp_dtype(cfg["train"]["amp"]) is not None and device.type == "cuda")
    if scaled and not diff_cfg.get("abundance_range"):
        diff_cfg["abundance_range"] = training_range(files, diff_cfg.get("brightness", False))
        log.info("abundance scaling: each channel's range over the training maps to [-1, 1] (low %s, high %s)",
                 " ".join(f"{v:.3f}" for v in diff_cfg["abundance_range"][0]),
                 " ".join(f"{v:.3f}" for v in diff_cfg["abundance_range"][1]))
    dataset = AbundanceDataset(files, diff_cfg["image_size"], diff_cfg["channels"],
                               diff_cfg.get("abundance_range") if scaled else None,
                               brightness=diff_cfg.get("brightness", False))
    if file_labels is not None:
        dataset = LabelledDataset(dataset, file_labels)
        log.info("class-conditional: %d classes (%s), label dropout %s", len(diff_cfg["class_names"]),
                 ", ".join(diff_cfg["class_names"]), diff_cfg["class_dropout"])
    fresh = not run_dir and not (resume and run_dir_of_checkpoint(resume, cfg))
    run_dir, paths, config_path = decided_by_main_process(
        lambda: prepare_run_folder(cfg, out_root, run_dir, None if from_reference else resume, start_step, seed))
    if main:
        log = setup_logging(os.path.join(paths["log"], "train.log"))
    per_epoch = data_cfg["batching"] == "epoch"
    if state and state.get("samples_seen") is None:  # a reference checkpoint: its next epoch starts afresh
        state["samples_seen"] = int(state.get("epoch", 0)) * len(files) if per_epoch \
            else int(state["step"]) * global_batch
    samples_seen = int(state["samples_seen"]) if state else 0

    def make_stream(start: int) -> AbundanceStream:
        return AbundanceStream(len(files), seed, start=start, flip=data_cfg["flip"], global_batch=global_batch,
                               rank=rank(), world=world_size(), per_epoch=per_epoch)

    def make_loader(start: int, workers: int) -> DataLoader:
        # an own generator keeps the loader from drawing from the global RNG (resume exactness)
        return DataLoader(dataset, batch_sampler=EpochBatches(make_stream(start)), num_workers=workers,
                          generator=torch.Generator(), pin_memory=device.type == "cuda",
                          worker_init_fn=worker_init if workers else None)

    plan = make_stream(samples_seen)  # the same batches, sizes only: what each step's noise and rows are
    if per_epoch and world_size() > 1 and len(files) % global_batch and len(files) % global_batch < world_size():
        log.info("the last batch of each epoch would hold %d files, fewer than the %d processes: those files "
                 "are left out of each epoch (their places in the shuffle change every epoch)",
                 len(files) % global_batch, world_size())

    seed_everything(seed)
    unet = unet_from_config(cfg["model"])
    if state is None:
        init_weights(unet, cfg["model"]["init"])
        if rank() > 0:  # dropout masks of their own on the other processes
            torch.manual_seed(process_seed(seed, rank()))
    unet.to(device).train()
    layout = torch.channels_last if train_cfg.get("channels_last") else torch.contiguous_format
    unet.to(memory_format=layout)
    diffusion = build_diffusion(cfg["model"], unet, "train")
    optimizer = make_optimizer(unet.parameters(), train_cfg["optimizer"])
    ema_opt = train_cfg["ema_scheduler"]
    ema = EMA(unet, ema_opt["ema_decay"], ema_opt["step_start_ema"], ema_opt["update_ema_every"]) \
        if train_cfg["use_ema"] else None
    dtype = amp_dtype(train_cfg["amp"])
    use_amp = autocast_usable(dtype, device)
    if dtype is not None and not use_amp:
        log.info("train.amp=%s is not available on %s (CPU: bf16 only, with bf16 kernels); training in float32",
                 train_cfg["amp"], device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)
    generator = torch.Generator(device=device).manual_seed(seed)
    if state is not None:
        unet.load_state_dict(plain_state_dict(state["model"]))
        if ema is not None:
            ema.load_state_dict(plain_state_dict(state["ema"] if state.get("ema") is not None else state["model"]))
        try:
            optimizer.load_state_dict(state["optimizer"])
            restore_scaler(scaler, state.get("scaler"))
            restore_process_rng(state, seed)
            if state.get("generator") is not None:
                # the same seed on every process: they all draw the whole global batch's noise
                restore_generator(generator, state["generator"], (seed * 1_000_003 + start_step) % 2 ** 63, resume)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
            raise UserError(f"{resume}: its optimizer, scaler or random-generator state cannot be restored "
                            f"({type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''})") from None
        log.info("resumed from %s at step %d", resume, start_step)
    model = wrap_model(unet, device)
    if train_cfg["compile"]:
        log.info("compiling the UNet with torch.compile (the first steps are slow)")
        model = torch.compile(model)

    n_iter = train_cfg["n_iter"]
    log.info("run folder %s; %d abundance files in %s; UNet %s parameters; device %s%s; seed %d; "
             "%d process(es) x batch %d%s", run_dir, len(files), data_cfg["dataroot"], f"{count_parameters(unet):,}",
             device, f" (AMP {dtype})" if use_amp else "", seed, world_size(), batch_size,
             f" (batches of each epoch: {len(files) // global_batch} x {global_batch}"
             + (f" + 1 x {len(files) % global_batch}" if len(files) % global_batch else "") + ")"
             if per_epoch and len(files) >= global_batch else
             (f" (each epoch is one batch of the {len(files)} files)" if per_epoch else ""))
    elements_per_sample = diff_cfg["channels"] * diff_cfg["image_size"] ** 2
    step, last_saved, window, window_start = start_step, None, [], time.perf_counter()
    last_good = resume
    loss_log = open(os.path.join(paths["log"], "train_loss.jsonl"), "a", encoding="utf-8") if main else None
    iterator = iter(make_loader(samples_seen, data_cfg["num_workers"]))
    tb_dir = os.path.join(run_dir, cfg["path"].get("tb_logger") or "tb_logger")
    tracker = start_tracking(tb_dir, cfg, cfg["name"],
                             wandb=wandb, project=(cfg.get("wandb") or {}).get("project") or "unmixing-before-fusion",
                             enabled=main)

    def save() -> str:
        return save_training_checkpoint(paths, cfg, unet, ema, optimizer, scaler, generator, step, samples_seen,
                                        plan.epoch_of(samples_seen), seed, last_good)

    try:
        with StopRequest() as stop, tqdm(total=n_iter, initial=step, desc="train", unit="step",
                                         disable=not (progress and main)) as bar:
            while step < n_iter:
                try:
                    batch = next(iterator)
                except Exception:
                    if not stop.requested:
                        raise
                    # a worker ended anyway (killed by the launcher): read the last batch in this process
                    iterator = iter(make_loader(samples_seen, 0))
                    batch = next(iterator)
                first, size = plan.batch_at(samples_seen)
                rows = plan.rows(size)
                denoiser = model
                if file_labels is not None:  # (crops, labels); some labels hidden for classifier-free guidance
                    batch, labels = batch
                    labels = drop_labels(labels, diff_cfg["class_dropout"], size, generator, rank(), rows)
                    denoiser = functools.partial(model, class_labels=labels)
                batch = batch.to(device, non_blocking=True).contiguous(memory_format=layout)
                with torch.autocast(device_type=device.type, dtype=dtype or torch.float16, enabled=use_amp):
                    loss = step_loss(diffusion, denoiser, batch, size, generator, rows)
                # one all-reduce carries the loss and the stop flag: every process decides alike
                shared = all_reduce_mean(torch.stack([loss.detach().float(),
                                                      torch.tensor(float(stop.requested), device=loss.device)]))
                global_loss, stopping = float(shared[0]), float(shared[1]) > 0
                if not math.isfinite(global_loss):
                    raise UserError(f"loss became {global_loss} at step {step + 1}; the weights were not updated "
                                    f"and the last good checkpoint is {last_good or 'none (none was written yet)'} "
                                    "(lower train.optimizer.lr or set train.grad_clip)")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if train_cfg["grad_clip"]:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(unet.parameters(), float(train_cfg["grad_clip"]))
                scaler.step(optimizer)
                scaler.update()
                step += 1
                samples_seen = first + size
                if ema is not None:
                    ema.update(unet, step)
                window.append((global_loss, per_element(global_loss, diff_cfg["loss_type"], size * elements_per_sample)))
                bar.update(1)

                if main and (step % train_cfg["print_freq"] == 0 or step == n_iter):
                    mean = sum(value for value, _ in window) / len(window)
                    rate = len(window) / max(time.perf_counter() - window_start, 1e-9)
                    record = {"step": step, "epoch": plan.epoch_of(samples_seen), "loss": mean,
                              "loss_per_element": sum(value for _, value in window) / len(window),
                              "lr": optimizer.param_groups[0]["lr"], "steps_per_s": rate, "time": time.time()}
                    loss_log.write(json.dumps(record) + "\n")
                    loss_log.flush()
                    tracker.log_scalars(record, step, prefix="train/")
                    log.info("<epoch:%3d, iter:%8d> loss: %.4e (per element %.4e), %.2f steps/s", record["epoch"],
                             step, mean, record["loss_per_element"], rate)
                    bar.set_postfix(loss=f"{record['loss_per_element']:.4g}")
                    window, window_start = [], time.perf_counter()
                if main and train_cfg["preview_samples"] and step % train_cfg["val_freq"] == 0:
                    preview = write_preview(cfg, ema.model if ema else unet, paths, step, device, seed)
                    log.info("preview %s", preview)
                    tracker.log_image("preview", np.asarray(Image.open(preview).convert("RGB")), step)
                if step % train_cfg["save_checkpoint_freq"] == 0 or step == n_iter:
                    last_saved = last_good = save()
                    log.info("saved %s", last_saved)
                if stopping and step < n_iter:
                    if last_saved is None or checkpoint_step(last_saved) != step:
                        with signals_ignored():
                            last_saved = last_good = save()
                    if main:
                        log.warning("interrupted after step %d: wrote %s; continue with `%s`", step, last_saved,
                                    resume_command(config_path, last_saved))
                    raise KeyboardInterrupt
    except BaseException:
        if main and fresh:
            tracker.close()  # a failed start's event file is not worth a run folder either
            discard_unused_run_folder(run_dir, {**paths, "tb_logger": tb_dir})
        raise
    finally:
        tracker.close()
        if loss_log is not None:
            loss_log.close()
        if main:
            unlock_run_folder(run_dir)
    if last_saved is None:
        log.info("nothing to train: the checkpoint is at step %d and train.n_iter is %d", step, n_iter)
        return resume
    log.info("end of training at step %d; run folder %s", step, run_dir)
    return last_saved
