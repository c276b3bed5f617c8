"""One prepared GPU check (issue 23): what a user needs to know before renting a GPU, as JSON lines.

    python bench/device_check.py [--reference REF] [--device auto|cpu|cuda] [--budget-s 300]
                                 [--only machine unet_step torchrun sampling sspn estimates] [--jsonl FILE]
    python bench/device_check.py --tiny          # everything small, on the CPU, in well under a minute
    bash bench/device_check.sh                   # the GPU run of docs/benchmarks.md (files under $OUT)

Sections, in this order (the headline ratio first, then the NCCL path that never ran before); each is
guarded (a failure prints one line with its error and the next section starts), and a section whose
expected duration would overrun `--budget-s` is not started (its line says so):

  machine    device name, torch / CUDA / cuDNN / NCCL versions, GPU memory
  unet_step  the paper's SR3 UNet (inner 64, mults 1-2-4-8-8, attention at 16, 2 res blocks, dropout 0.2,
             5 channels) training step at 256 x 256, batch 8, done as the trainer does it (noise levels and
             noise drawn by `pipeline.diffusion_train.step_loss`, torch.autocast, torch.amp.GradScaler, Adam):
             the reference's UNet (`--reference`) and ours in fp32, with train.amp bf16 / fp16, and with
             channels-last, all from the same weights and inputs, interleaved round after round in this one
             process; median, min, max, ratio to the reference's median, peak memory
  torchrun   `torchrun --nproc_per_node 1 Diffusion.py -p train` (NCCL on CUDA, Gloo on the CPU) for two
             steps, then a second run resumed from its step-1 checkpoint: the step-2 weights, EMA and
             optimizer state of the two are compared
  sampling   samples/s at 256 x 256: ancestral over T = 2000 (a few steps of the sampler's own loop timed,
             then extrapolated: the line says so) and DPM-Solver++(2M) in 20 steps (run whole)
  sspn       the paper's stage-1 network (SSPN widths 32-64-128-96-48, 59 bands): one training step (batch 16
             of 128 x 128 crops, the paper's loss, Adam) and whole-image inference (`tile_infer`, MP/s)
  trainer    `Diffusion.py -p train -c config/Chikusei_256_DDPM.json` itself for a few dozen steps on
             synthetic 256 x 256 abundance maps: steps/s from its own log (data loading, EMA and logging
             included), beside the bare step of `unet_step`
  estimates  wall times of the paper's runs from the step times above (per 100 stage-1 crops, per 100k
             stage-2 steps, per 40 ancestral samples)

`--reference` is the authors' `model/sr3_modules/unet.py` (MSF-Diff), a file or a folder holding it, copied
into a git-ignored scratch folder (never committed; docs/benchmarks.md gives the commands). Without it the
comparison lines say "reference not given" and everything else runs. Every measurement is one JSON object
on stdout with `section`, `name`, `device`, `dtype`, `sizes`, `seconds`, `ratio` and `peak_memory_mb`
(torch.cuda.max_memory_allocated; null on the CPU); a short table goes to stderr at the end.
"""
import argparse
import glob
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ubf.core.checkpoint import load_checkpoint  # noqa: E402
from ubf.core.logs import close_file_logs, setup_logging  # noqa: E402
from ubf.data.matio import write_mat  # noqa: E402
from ubf.models.diffusion import GaussianDiffusion, NoiseSchedule, make_beta_schedule  # noqa: E402
from ubf.models.losses import unmixing_loss  # noqa: E402
from ubf.models.sr3_unet import SR3UNet, count_parameters  # noqa: E402
from ubf.models.unmixing import UnmixingAutoencoder  # noqa: E402
from ubf.pipeline.diffusion_config import load_diffusion_config  # noqa: E402
from ubf.pipeline.diffusion_train import amp_dtype, autocast_usable, step_loss, train_diffusion  # noqa: E402
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS  # noqa: E402
from ubf.pipeline.unmixing_infer import tile_infer  # noqa: E402

SECTIONS = ("machine", "unet_step", "torchrun", "sampling", "sspn", "trainer", "estimates")
PAPER_UNET = dict(in_channel=5, out_channel=5, inner_channel=64, norm_groups=32, channel_mults=(1, 2, 4, 8, 8),
                  attn_res=(16,), res_blocks=2, dropout=0.2)
TINY_UNET = dict(in_channel=5, out_channel=5, inner_channel=16, norm_groups=8, channel_mults=(1, 2, 2),
                 attn_res=(8,), res_blocks=1, dropout=0.2)
PAPER_T = 2000  # the paper's linear schedule, 1e-6 .. 1e-2
# (variant name, train.amp, channels-last); the reference runs as its code does: fp32, contiguous
OUR_VARIANTS = (("ours", False, False), ("ours_bf16", "bf16", False), ("ours_fp16", "fp16", False),
                ("ours_channels_last", False, True), ("ours_channels_last_bf16", "bf16", True),
                ("ours_channels_last_fp16", "fp16", True))


class Check:
    """The run's settings, clock, budget and output: every line goes through `emit`."""

    def __init__(self, args, device: torch.device):
        self.args, self.device, self.tiny = args, device, args.tiny
        self.started = time.perf_counter()
        self.device_name = device_name(device)
        self.records: list[dict] = []
        self.later_s = 0.0  # the usual seconds of the sections still to come (set per section)
        self.jsonl = open(args.jsonl, "a", encoding="utf-8") if args.jsonl else None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.args.budget_s - self.elapsed()

    def reserve(self) -> float:
        """Seconds to keep for the later sections: loops inside a section stop adding rounds before that."""
        return self.later_s

    def emit(self, section: str, name: str, **fields) -> dict:
        record = {"section": section, "name": name, "device": self.device_name, **fields}
        self.records.append(record)
        line = json.dumps(record, default=str)
        print(line, flush=True)
        if self.jsonl:
            self.jsonl.write(line + "\n")
            self.jsonl.flush()
        return record

    def measurement(self, section: str, name: str, dtype: str, sizes: dict, seconds: float | None,
                    ratio: float | None, peak_memory_mb: float | None, **extra) -> dict:
        return self.emit(section, name, dtype=dtype, sizes=sizes,
                         seconds=None if seconds is None else round(seconds, 6),
                         ratio=None if ratio is None else round(ratio, 4), peak_memory_mb=peak_memory_mb, **extra)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu ({model})"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1) if device.type == "cuda" else None


def allocated_mb(device: torch.device) -> float | None:
    return round(torch.cuda.memory_allocated(device) / 2 ** 20, 1) if device.type == "cuda" else None


def timed(device: torch.device, work) -> float:
    """Seconds of `work()` on `device` (synchronised on both sides: CUDA work is asynchronous)."""
    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - started


def spread(values: list[float]) -> dict:
    median = statistics.median(values)
    return {"min_s": round(min(values), 6), "max_s": round(max(values), 6),
            "spread": round((max(values) - min(values)) / median, 4) if median else None, "rounds": len(values)}


# machine --------------------------------------------------------------------------------------------------

def section_machine(check: Check) -> None:
    device = check.device
    info = {"torch": torch.__version__, "python": platform.python_version(), "tiny": check.tiny,
            "budget_s": check.args.budget_s, "threads": torch.get_num_threads(), "nproc": os.cpu_count(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    nccl=nccl_version(),
                    capability=f"{props.major}.{props.minor}", memory_gb=round(props.total_memory / 2 ** 30, 1),
                    multiprocessors=props.multi_processor_count, tf32_conv=torch.backends.cudnn.allow_tf32,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        info.update(cpu_capability=torch.backends.cpu.get_cpu_capability(),
                    load_avg=[round(v, 2) for v in os.getloadavg()])
    check.emit("machine", "machine", **info)


def nccl_version() -> str | None:
    try:
        version = torch.cuda.nccl.version()
    except Exception:  # a build without NCCL
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


# unet_step ------------------------------------------------------------------------------------------------

def reference_path(given: str | None) -> str | None:
    """The reference's unet.py from a file or a folder (its own layout or a flat copy)."""
    if not given:
        return None
    if os.path.isdir(given):
        for candidate in ("unet.py", os.path.join("model", "sr3_modules", "unet.py")):
            if os.path.isfile(os.path.join(given, candidate)):
                return os.path.join(given, candidate)
        raise FileNotFoundError(f"{given}: no unet.py or model/sr3_modules/unet.py in this folder")
    if not os.path.isfile(given):
        raise FileNotFoundError(f"{given}: no such file")
    return given


def load_reference_unet(path: str):
    spec = importlib.util.spec_from_file_location("reference_sr3_unet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.UNet


class StepVariant:
    """One network with its optimizer, AMP setting and memory format, stepped as the trainer steps."""

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device, amp, channels_last: bool):
        self.name, self.device, self.amp = name, device, amp
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device).train().to(memory_format=self.layout)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.dtype = amp_dtype(amp)
        # the trainer turns autocast on where `autocast_usable` says so; the check runs it everywhere so that
        # the CPU run (--tiny) goes through the same code, and records what the trainer would do
        self.trainer_autocast = autocast_usable(self.dtype, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.times: list[float] = []
        self.peak, self.step_extra = None, None

    def dtype_name(self) -> str:
        return "float32" if self.dtype is None else f"{str(self.dtype).replace('torch.', '')} autocast"

    def step(self, diffusion, batch: torch.Tensor, generator: torch.Generator) -> float:
        batch = batch.contiguous(memory_format=self.layout)
        with torch.autocast(device_type=self.device.type, dtype=self.dtype or torch.float16,
                            enabled=self.dtype is not None):
            loss = step_loss(diffusion, self.model, batch, batch.shape[0], generator)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def resident_mb(self) -> float:
        """Weights plus optimizer state held on the device between steps."""
        tensors = list(self.model.parameters()) + [v for s in self.optimizer.state.values() for v in s.values()
                                                   if torch.is_tensor(v) and v.device == self.model_device()]
        return round(sum(t.numel() * t.element_size() for t in tensors) / 2 ** 20, 1)

    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device


def build_step_variants(check: Check, config: dict, size: int, reference) -> list[StepVariant]:
    torch.manual_seed(0)
    base = SR3UNet(image_size=size, **config)
    state = base.state_dict()
    variants = []
    if reference is not None:
        model = reference(image_size=size, **config)
        model.load_state_dict(state)  # same names and shapes as ours (docs/faithfulness.md)
        variants.append(StepVariant("reference", model, check.device, False, False))
    for name, amp, channels_last in OUR_VARIANTS:
        if check.args.variants and name not in check.args.variants:
            continue
        model = SR3UNet(image_size=size, **config)
        model.load_state_dict(state)
        variants.append(StepVariant(name, model, check.device, amp, channels_last))
    return variants


def section_unet_step(check: Check) -> None:
    device, tiny = check.device, check.tiny
    config, size, batch = (TINY_UNET, 16, 2) if tiny else (PAPER_UNET, check.args.size, check.args.batch)
    reference, missing = None, "reference not given"
    try:
        path = reference_path(check.args.reference)
        if path:
            reference, missing = load_reference_unet(path), None
    except Exception as err:  # the comparison is lost, not the rest
        missing = f"reference not loaded: {type(err).__name__}: {err}"
        check.emit("unet_step", "reference", error=missing)
    if reference is None and not check.args.reference:
        check.emit("unet_step", "reference", skipped=missing)
    variants = build_step_variants(check, config, size, reference)
    parameters = count_parameters(variants[-1].model)
    schedule = NoiseSchedule(make_beta_schedule("linear", PAPER_T, 1e-6, 1e-2))
    diffusion = GaussianDiffusion(variants[-1].model, size, 5, schedule)  # the loss arithmetic; models passed in
    torch.manual_seed(1)  # abundance crops in [-1, 1], as the trainer sees them
    x_start = (torch.distributions.Dirichlet(torch.ones(5)).sample((batch, size, size)).permute(0, 3, 1, 2)
               * 2 - 1).contiguous().to(device)
    generator = torch.Generator(device=device)  # reseeded per round: every variant draws the same noise
    warmup = 1 if tiny else check.args.warmup
    for variant in variants:  # warm-up: cuDNN's algorithm search and the allocator happen here
        seconds = timed(device, lambda: [variant.step(diffusion, x_start, generator.manual_seed(0))
                                         for _ in range(warmup)])
        check.emit("unet_step_warmup", variant.name, seconds=round(seconds, 3), steps=warmup)
    repeats = 2 if tiny else check.args.repeats
    losses = {v.name: [] for v in variants}
    for round_index in range(repeats):
        round_started = time.perf_counter()
        for variant in variants:
            reset_peak(device)
            before = allocated_mb(device)
            seconds = timed(device, lambda: losses[variant.name].append(
                variant.step(diffusion, x_start, generator.manual_seed(100 + round_index))))
            variant.times.append(seconds)
            if device.type == "cuda":
                variant.peak = max(variant.peak or 0.0, peak_mb(device))
                variant.step_extra = max(variant.step_extra or 0.0, round(peak_mb(device) - before, 1))
        # keep at least two rounds; stop adding rounds when the next would overrun the budget
        if round_index >= 1 and check.remaining() < (time.perf_counter() - round_started) + check.reserve():
            break
    medians = {v.name: statistics.median(v.times) for v in variants}
    base = medians.get("reference")
    sizes = {"image": size, "batch": batch, "parameters": parameters, "unet": "tiny" if tiny else "paper"}
    for variant in variants:
        ratio = medians[variant.name] / base if base else None
        extra = {} if base else {"ratio_note": missing}
        check.measurement("unet_step", variant.name, variant.dtype_name(), sizes, medians[variant.name], ratio,
                          variant.peak, **spread(variant.times), **extra,
                          ratio_to_ours_fp32=round(medians[variant.name] / medians["ours"], 4)
                          if "ours" in medians else None,
                          channels_last=variant.layout is torch.channels_last,
                          grad_scaler=variant.scaler.is_enabled(), trainer_uses_autocast=variant.trainer_autocast,
                          # below torch's initial 65536, fp16 steps were skipped for inf/NaN gradients (shorter)
                          grad_scale=variant.scaler.get_scale() if variant.scaler.is_enabled() else None,
                          step_memory_mb=variant.step_extra, resident_mb=variant.resident_mb(),
                          alone_peak_mb=None if variant.step_extra is None
                          else round(variant.step_extra + variant.resident_mb(), 1),
                          steps_per_s=round(1 / medians[variant.name], 4),
                          last_loss=round(losses[variant.name][-1], 6))
    del variants
    if device.type == "cuda":
        torch.cuda.empty_cache()


# sampling -------------------------------------------------------------------------------------------------

@torch.no_grad()
def section_sampling(check: Check) -> None:
    device, tiny = check.device, check.tiny
    config, size = (TINY_UNET, 16) if tiny else (PAPER_UNET, check.args.size)
    torch.manual_seed(0)
    unet = SR3UNet(image_size=size, **config).to(device).eval()
    betas = make_beta_schedule("linear", PAPER_T, 1e-6, 1e-2)
    full = GaussianDiffusion(unet, size, 5, NoiseSchedule(betas))
    steps = 2 if tiny else check.args.ancestral_steps
    # the ancestral loop's own code over the first `steps` betas: every step costs one network evaluation
    # and the same arithmetic whatever t is, so T = 2000 steps take 2000 / steps times as long
    short = GaussianDiffusion(unet, size, 5, NoiseSchedule(betas[:steps]))
    for batch in ([2] if tiny else check.args.sample_batches):
        sizes = {"image": size, "batch": batch, "unet": "tiny" if tiny else "paper", "T": PAPER_T}
        generator = torch.Generator(device=device).manual_seed(0)
        short.sample(batch, device, sampler="ancestral", generator=generator)  # warm-up (cuDNN search)
        reset_peak(device)
        seconds = timed(device, lambda: short.sample(batch, device, sampler="ancestral", generator=generator))
        per_step = seconds / steps
        check.measurement("sampling", "ancestral_2000", "float32", sizes, per_step * PAPER_T, None, peak_mb(device),
                          extrapolated=True, measured_steps=steps, seconds_per_step=round(per_step, 6),
                          samples_per_s=round(batch / (per_step * PAPER_T), 8))
        reset_peak(device)
        seconds = timed(device, lambda: full.sample(batch, device, sampler="dpmpp2m", steps=20, generator=generator))
        check.measurement("sampling", "dpmpp2m_20", "float32", sizes, seconds, None, peak_mb(device),
                          extrapolated=False, measured_steps=20, samples_per_s=round(batch / seconds, 6))
        if check.remaining() < check.reserve():
            break
    del unet, full, short
    if device.type == "cuda":
        torch.cuda.empty_cache()


# sspn -----------------------------------------------------------------------------------------------------

def section_sspn(check: Check) -> None:
    device, tiny = check.device, check.tiny
    model_cfg, loss_cfg = UNMIXING_DEFAULTS["model"], UNMIXING_DEFAULTS["loss"]
    widths, n_blocks = ([8, 8], 1) if tiny else (model_cfg["widths"], model_cfg["n_blocks"])
    bands, crop = 59, 16 if tiny else check.args.crop
    batch = 2 if tiny else check.args.crop_batch
    torch.manual_seed(0)
    net = UnmixingAutoencoder(3, bands, model_cfg["num_endmembers"], widths, n_blocks, model_cfg["res_scale"])
    net.to(device).train()
    parameters = count_parameters(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=UNMIXING_DEFAULTS["train"]["lr"])
    g = torch.Generator().manual_seed(2)
    x = torch.rand(batch, 3, crop, crop, generator=g).to(device)
    y = torch.rand(batch, bands, crop, crop, generator=g).to(device)

    def train_step():  # as pipeline.unmixing_train's loop: forward, the paper's loss, backward, Adam
        _, recon = net(x)
        loss, _ = unmixing_loss(recon, y, net.decoder.weight, loss_cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(1 if tiny else 2):
        train_step()
    times = []
    reset_peak(device)
    for _ in range(2 if tiny else check.args.repeats):
        times.append(timed(device, train_step))
    sizes = {"crop": crop, "batch": batch, "bands": bands, "widths": list(widths), "n_blocks": n_blocks,
             "parameters": parameters}
    median = statistics.median(times)
    check.measurement("sspn", "train_step", "float32", sizes, median, None, peak_mb(device), **spread(times),
                      crops_per_s=round(batch / median, 3))
    net.eval()
    model = net.to(memory_format=torch.channels_last)  # as `Unmixing.py infer` by default
    for side in ([32] if tiny else check.args.infer_sizes):
        image = torch.rand(3, side, side, generator=g)
        tile_infer(model, image, device, tile=0, channels_last=True)  # warm-up
        reset_peak(device)
        values = [timed(device, lambda: tile_infer(model, image, device, tile=0, channels_last=True))
                  for _ in range(1 if tiny else 3)]
        seconds = statistics.median(values)
        check.measurement("sspn", "infer_whole_image", "float32", {"image": side, "bands": bands,
                                                                    "widths": list(widths)},
                          seconds, None, peak_mb(device), **spread(values),
                          megapixels_per_s=round(side * side / 1e6 / seconds, 4), includes="host-device copies")
        if check.remaining() < check.reserve():
            break
    del net, model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()


# torchrun -------------------------------------------------------------------------------------------------

def torchrun_config(data: str, device: torch.device, tiny: bool) -> dict:
    """A small stage-2 run: dropout on (so the resume must restore the RNG of the device), EMA from step 1,
    channels-last, fp16 AMP with its gradient scaler on CUDA; a checkpoint every step."""
    size = 8 if tiny else 32
    return {
        "name": "device_check",
        "datasets": {"train": {"dataroot": data, "batch_size": 4, "num_workers": 1, "flip": "both"}},
        "model": {
            "unet": {"in_channel": 5, "out_channel": 5, "inner_channel": 8 if tiny else 32, "norm_groups": 4,
                     "channel_multiplier": [1, 2], "attn_res": [size // 2], "res_blocks": 1, "dropout": 0.1},
            "beta_schedule": {name: {"schedule": "linear", "n_timestep": 50, "linear_start": 1e-4, "linear_end": 0.05}
                              for name in ("train", "val")},
            "diffusion": {"image_size": size, "channels": 5},
        },
        "train": {"n_iter": 2, "save_checkpoint_freq": 1, "print_freq": 1, "val_freq": 1000, "preview_samples": 0,
                  "optimizer": {"type": "adam", "lr": 1e-3},
                  "ema_scheduler": {"step_start_ema": 1, "update_ema_every": 1, "ema_decay": 0.9},
                  "amp": "fp16" if device.type == "cuda" else False, "channels_last": True},
        "sample": {"sampler": "ddim", "steps": 3, "batch_size": 2},
    }


def run_torchrun(check: Check, work: str, config: str, run_dir: str, resume: str | None) -> float:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               os.path.join(ROOT, "Diffusion.py"), "-p", "train", "-c", config, "--out", run_dir,
               "--device", "cuda" if check.device.type == "cuda" else "cpu", "--seed", "7"]
    if resume:
        command += ["--resume", resume]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if check.device.type == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    started = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                          timeout=check.args.torchrun_timeout_s)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-6:]
        raise RuntimeError(f"torchrun exited {done.returncode}: {' | '.join(tail)}")
    return time.perf_counter() - started


def largest_difference(a, b) -> float:
    """Largest |a - b| over the tensors of two (nested) state dicts of the same layout."""
    if torch.is_tensor(a):
        if not (a.is_floating_point() or a.is_complex()):
            return 0.0 if torch.equal(a, b) else math.inf
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return math.inf
        return max([largest_difference(a[k], b[k]) for k in a] + [0.0])
    if isinstance(a, (list, tuple)):
        return max([largest_difference(x, y) for x, y in zip(a, b)] + [0.0]) if len(a) == len(b) else math.inf
    return 0.0 if a == b else math.inf


def section_torchrun(check: Check) -> None:
    device = check.device
    with tempfile.TemporaryDirectory(prefix="device_check_") as work:
        rng = np.random.default_rng(3)
        data = os.path.join(work, "abu")
        size = 8 if check.tiny else 32
        for i in range(6):
            write_mat(os.path.join(data, f"a{i}.mat"),
                      {"Abu": rng.dirichlet(np.ones(5), size=(size + 4, size + 6)).astype(np.float32)})
        cfg = torchrun_config(data, device, check.tiny)
        config = os.path.join(work, "device_check.json")
        with open(config, "w") as f:
            json.dump(cfg, f)
        straight, resumed = os.path.join(work, "straight"), os.path.join(work, "resumed")
        seconds_straight = run_torchrun(check, work, config, straight, None)
        (first,) = glob.glob(os.path.join(straight, "checkpoint", "I1_E*.pth"))
        seconds_resumed = run_torchrun(check, work, config, resumed, first)
        (a_path,) = glob.glob(os.path.join(straight, "checkpoint", "I2_E*.pth"))
        (b_path,) = glob.glob(os.path.join(resumed, "checkpoint", "I2_E*.pth"))
        a, b = load_checkpoint(a_path, "diffusion"), load_checkpoint(b_path, "diffusion")
        moved = largest_difference(a["model"], load_checkpoint(first, "diffusion")["model"])
        differences = {key: largest_difference(a[key], b[key]) for key in ("model", "ema", "optimizer", "scaler")}
        worst = max(differences.values())
        log = open(os.path.join(straight, "logs", "train.log"), encoding="utf-8").read()
        check.measurement(
            "torchrun", "resume_two_steps", "float16 autocast" if cfg["train"]["amp"] else "float32",
            {"image": size, "batch": 4, "steps": 2, "nproc_per_node": 1}, seconds_straight + seconds_resumed, None,
            None, backend="nccl" if device.type == "cuda" else "gloo",
            process_group=a.get("rng_ranks") is not None, world_size=a.get("world_size"),
            one_process_logged="1 process(es)" in log, grad_scaler_state=bool(a.get("scaler")),
            seconds_straight=round(seconds_straight, 2), seconds_resumed=round(seconds_resumed, 2),
            weights_moved_by_step_2=moved, max_abs_difference=worst,
            differences={k: v for k, v in differences.items()}, resume_exact=worst == 0.0,
            # CUDA's convolution backward may sum in another order from run to run: below 0.1 % of what
            # the step moved is rounding, not a lost state
            resume_within_rounding=worst <= 1e-3 * moved)


# trainer ------------------------------------------------------------------------------------------------

def section_trainer(check: Check) -> None:
    """The stage-2 trainer as a user runs it (`pipeline.diffusion_train.train_diffusion`, in this process so
    that its peak memory can be read): its own logged steps/s over the last `print_freq` steps."""
    device, tiny = check.device, check.tiny
    config = os.path.join(ROOT, "config", "demo_DDPM.json" if tiny else "Chikusei_256_DDPM.json")
    steps, every, size = (4, 2, 32) if tiny else (check.args.trainer_steps, max(1, check.args.trainer_steps // 3), 256)
    with tempfile.TemporaryDirectory(prefix="device_check_trainer_") as work:
        rng = np.random.default_rng(4)
        data = os.path.join(work, "abu")
        for i in range(16):
            write_mat(os.path.join(data, f"a{i:02d}.mat"),
                      {"Abu": rng.dirichlet(np.ones(5), size=(size, size)).astype(np.float32)})
        cfg = load_diffusion_config(config, {"datasets.train.dataroot": data, "train.n_iter": steps,
                                             "train.print_freq": every, "train.save_checkpoint_freq": steps,
                                             "train.val_freq": 10 * steps, "train.preview_samples": 0,
                                             **({"datasets.train.num_workers": 0} if tiny else {})})
        run_dir = os.path.join(work, "run")
        reset_peak(device)
        started = time.perf_counter()
        try:
            train_diffusion(cfg, work, device, 0, run_dir=run_dir, progress=False)
        finally:
            close_file_logs()
            setup_logging(level=40)
        seconds = time.perf_counter() - started
        records = [json.loads(line) for line in open(os.path.join(run_dir, "logs", "train_loss.jsonl"))]
    rate = records[-1]["steps_per_s"]  # the last window: after cuDNN's algorithm search
    bare = next((r for r in check.records if r["section"] == "unet_step" and r["name"] == "ours"), None)
    sizes = {"image": size, "batch": cfg["datasets"]["train"]["batch_size"], "steps": steps, "window": every,
             "config": os.path.basename(config), "workers": cfg["datasets"]["train"]["num_workers"]}
    check.measurement("trainer", "diffusion_train", "float32", sizes, 1.0 / rate,
                      bare["seconds"] * rate if bare and not tiny else None, peak_mb(device),
                      steps_per_s=round(rate, 4), run_seconds=round(seconds, 1),
                      ratio_note="the bare step of unet_step 'ours' over the trainer's step" if not tiny else
                      "tiny: the demo config, not comparable with unet_step")
    if device.type == "cuda":
        torch.cuda.empty_cache()


# estimates ------------------------------------------------------------------------------------------------

def section_estimates(check: Check) -> None:
    """Wall times of the paper's runs from this run's step times (fp32 ours and reference, AMP ours)."""
    found = {(r["section"], r["name"]): r for r in check.records if r.get("seconds") is not None}
    per = {}
    for name in ("reference", "ours", "ours_bf16", "ours_fp16", "ours_channels_last_bf16"):
        record = found.get(("unet_step", name))
        if record:
            per[f"stage2_hours_per_100k_steps_{name}"] = round(record["seconds"] * 1e5 / 3600, 3)
    trainer = found.get(("trainer", "diffusion_train"))
    if trainer:
        per["stage2_hours_per_100k_steps_trainer"] = round(trainer["seconds"] * 1e5 / 3600, 3)
    sspn = found.get(("sspn", "train_step"))
    if sspn:
        # 40 epochs of ceil(crops / 16) steps each (the paper's schedule; validation not counted)
        per["stage1_minutes_per_100_crops_40_epochs"] = round(40 * math.ceil(100 / 16) * sspn["seconds"] / 60, 3)
    infer = next((r for r in check.records if r["name"] == "infer_whole_image" and r.get("seconds")), None)
    if infer:  # an AID image is 600 x 600 = 0.36 MP
        per["stage1_infer_minutes_per_1000_images_600px"] = round(1000 * 0.36 / infer["megapixels_per_s"] / 60, 3)
    ancestral = next((r for r in check.records if r["name"] == "ancestral_2000" and r.get("seconds")), None)
    if ancestral:
        per["sampling_hours_per_40_samples_ancestral"] = round(40 / ancestral["samples_per_s"] / 3600, 3)
    dpm = next((r for r in check.records if r["name"] == "dpmpp2m_20" and r.get("seconds")), None)
    if dpm:
        per["sampling_minutes_per_40_samples_dpmpp2m_20"] = round(40 / dpm["samples_per_s"] / 60, 3)
    args = check.args
    paper = not check.tiny and (args.size, args.batch, args.crop, args.crop_batch) == (256, 8, 128, 16)
    check.emit("estimates", "paper_wall_times", tiny=check.tiny, paper_sizes=paper, **per,
               note="from this run's medians; the unet_step figures are the bare step (no data loading, EMA or "
                    "checkpoints), the trainer figure includes data loading and EMA; stage 1 counts training "
                    "steps only")


# driver ---------------------------------------------------------------------------------------------------

# what a section is expected to take (CUDA at the paper's sizes: from the FLOP counts, 8.6 TFLOP per UNet
# step, 3.5 per SSPN step, plus start-up; --tiny on a CPU: measured), for the budget
USUAL_SECONDS = {"machine": (10, 2), "unet_step": (120, 15), "torchrun": (60, 30), "sampling": (40, 5),
                 "sspn": (40, 3), "trainer": (60, 15), "estimates": (1, 1)}


RUNNERS = {"machine": section_machine, "unet_step": section_unet_step, "sampling": section_sampling,
           "sspn": section_sspn, "torchrun": section_torchrun, "trainer": section_trainer,
           "estimates": section_estimates}


def summary(check: Check) -> str:
    lines = [f"device check on {check.device_name}: {check.elapsed():.0f} s"]
    for r in check.records:
        if r["section"] in ("machine", "unet_step_warmup", "timing"):
            continue
        if "error" in r or "skipped" in r:
            lines.append(f"  {r['section']:<10} {r['name']:<26} {'ERROR' if 'error' in r else 'skipped'}: "
                         f"{r.get('error') or r.get('skipped')}")
        elif r["section"] == "estimates":
            lines += [f"  estimates  {k} = {v}" for k, v in r.items() if k.startswith(("stage", "sampling"))]
        elif r["section"] == "torchrun":
            lines.append(f"  torchrun   {r['name']:<26} {r['backend']}, process group {r['process_group']}, "
                         f"max |diff| {r['max_abs_difference']:.3g} (moved {r['weights_moved_by_step_2']:.3g})")
        else:
            rate = next((f"{k} {r[k]}" for k in ("samples_per_s", "megapixels_per_s", "crops_per_s", "steps_per_s")
                         if k in r), "")
            ratio = f"ratio {r['ratio']}" if r.get("ratio") is not None else r.get("ratio_note", "")
            lines.append(f"  {r['section']:<10} {r['name']:<26} {r['dtype']:<18} {r['seconds']:.4g} s  {rate}  "
                         f"{ratio}  peak {r['peak_memory_mb']} MB")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="the reference's model/sr3_modules/unet.py, or a folder holding it")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda[:N]")
    parser.add_argument("--tiny", action="store_true", help="small sizes on the CPU, 1-2 repeats (the tests)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="start no section that would end past this")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="these sections (default: all)")
    parser.add_argument("--jsonl", help="also append the JSON lines to this file")
    parser.add_argument("--size", type=int, default=256, help="UNet image side (paper: 256)")
    parser.add_argument("--batch", type=int, default=8, help="UNet training batch (paper: 8)")
    parser.add_argument("--repeats", type=int, default=8, help="timed rounds of the interleaved step variants")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--variants", nargs="+", choices=[name for name, _, _ in OUR_VARIANTS],
                        help="our step variants to time (default: all); the reference runs whenever given")
    parser.add_argument("--sample-batches", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--ancestral-steps", type=int, default=5, help="ancestral steps timed for the T = 2000 figure")
    parser.add_argument("--crop", type=int, default=128, help="SSPN training crop side (the paper's crops: 128)")
    parser.add_argument("--crop-batch", type=int, default=16, help="SSPN training batch (paper: 16)")
    parser.add_argument("--infer-sizes", type=int, nargs="+", default=[600, 2048], help="whole-image sides (SSPN)")
    parser.add_argument("--trainer-steps", type=int, default=30, help="steps of the paper config's trainer run")
    parser.add_argument("--torchrun-timeout-s", type=float, default=240.0, help="limit of each Diffusion.py run")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; --tiny: 1)")
    args = parser.parse_args(argv)
    if args.device == "auto":  # --tiny is for the CPU unless a device is named
        device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    else:
        device = torch.device(args.device)
    if args.threads or args.tiny:
        torch.set_num_threads(args.threads or 1)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # as the reference's scripts and this project's CLIs on CUDA
    setup_logging(level=40)
    check = Check(args, device)
    wanted = [s for s in SECTIONS if not args.only or s in args.only]
    column = 1 if args.tiny or device.type == "cpu" else 0
    for index, section in enumerate(wanted):
        usual = USUAL_SECONDS[section][column]
        later = sum(USUAL_SECONDS[s][column] for s in wanted[index + 1:])
        if check.elapsed() + usual > args.budget_s:
            check.emit(section, section, skipped=f"budget: {check.elapsed():.0f} s used of {args.budget_s:.0f}, "
                                                 f"the section usually takes {usual} s")
            continue
        check.later_s = later
        started = time.perf_counter()
        try:
            RUNNERS[section](check)
        except Exception as err:  # one broken section must not cost the others
            check.emit(section, section, error=f"{type(err).__name__}: {str(err)[:400]}")
        if device.type == "cuda":  # what a failed section left allocated goes back before the next one
            torch.cuda.empty_cache()
        check.emit("timing", section, seconds=round(time.perf_counter() - started, 2))
    try:
        print(summary(check), file=sys.stderr, flush=True)
    except Exception as err:  # the JSON lines are out already
        print(f"(no summary: {type(err).__name__}: {err})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
