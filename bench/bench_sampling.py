"""Stage-2 sampling throughput (`Diffusion.py -p val`), as JSON lines.

    python bench/bench_sampling.py [--batches 1 4 8 16 32] [--paper-steps 2] [--threads 2]

1. `batch`: samples/s of the demo config (config/demo_DDPM.json, DDIM 50 steps, 32 x 32) per batch
   size, the sizes interleaved round after round; this is what `sample.batch_size: 0` (fill the
   device) is tuned by (`pipeline.diffusion_sample.AUTO_BATCH`).
2. `ema`: `sample_run` end to end from one checkpoint with `sample.use_ema` true and false (the two
   paths load weights of the same shapes into the same network; the times should agree).
3. `paper`: the paper config (config/Chikusei_256_DDPM.json, 98 M parameters, 256 x 256) on this CPU:
   `--paper-steps` DDIM steps of one sample (and of two), and the extrapolation to 50 DDIM steps and
   to the 2000 ancestral steps; marked as extrapolated.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ubf.core.checkpoint import save_checkpoint  # noqa: E402
from ubf.core.logs import setup_logging  # noqa: E402
from ubf.models.sr3_unet import unet_from_config  # noqa: E402
from ubf.pipeline.diffusion_config import load_diffusion_config  # noqa: E402
from ubf.pipeline.diffusion_sample import build_diffusion, sample_run  # noqa: E402


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def config(name: str) -> dict:
    return load_diffusion_config(os.path.join(ROOT, "config", name))


@torch.no_grad()
def bench_batches(batches: list[int], rounds: int, steps: int) -> None:
    cfg = config("demo_DDPM.json")
    torch.manual_seed(0)
    diffusion = build_diffusion(cfg["model"], unet_from_config(cfg["model"]).eval(), "val")
    times = {b: [] for b in batches}
    diffusion.sample(1, "cpu", sampler="ddim", steps=2, generator=torch.Generator().manual_seed(0))  # warm-up
    for _ in range(rounds):
        for batch in batches:
            started = time.perf_counter()
            diffusion.sample(batch, "cpu", sampler="ddim", steps=steps, generator=torch.Generator().manual_seed(0))
            times[batch].append(time.perf_counter() - started)
    for batch, values in times.items():
        emit(bench="sampling_batch", config="demo_DDPM", sampler="ddim", steps=steps, batch=batch,
             samples_per_s=round(batch / statistics.median(values), 3), median_s=round(statistics.median(values), 2),
             rounds=rounds, threads=torch.get_num_threads(), load_avg=os.getloadavg()[0])


def bench_ema(work: str, count: int, rounds: int) -> None:
    cfg = config("demo_DDPM.json")
    torch.manual_seed(0)
    raw, ema = unet_from_config(cfg["model"]), unet_from_config(cfg["model"])
    path = os.path.join(work, "I1_E1.pth")
    save_checkpoint({"stage": "diffusion", "config": cfg, "model": raw.state_dict(), "ema": ema.state_dict(),
                     "step": 1}, path)
    times = {True: [], False: []}
    for _ in range(rounds):
        for use_ema in (True, False):
            cfg["sample"]["use_ema"] = use_ema
            started = time.perf_counter()
            sample_run(cfg, work, torch.device("cpu"), seed=0, resume=path, run_dir=os.path.join(work, f"run{use_ema}"),
                       num_samples=count, progress=False)
            times[use_ema].append(time.perf_counter() - started)
    for use_ema, values in times.items():
        emit(bench="sampling_ema", use_ema=use_ema, samples=count, batch=cfg["sample"]["batch_size"],
             median_s=round(statistics.median(values), 2), seconds=[round(v, 2) for v in values],
             load_avg=os.getloadavg()[0])


@torch.no_grad()
def bench_paper(steps: int) -> None:
    cfg = config("Chikusei_256_DDPM.json")
    torch.manual_seed(0)
    diffusion = build_diffusion(cfg["model"], unet_from_config(cfg["model"]).eval(), "val")
    for batch in (1, 2):
        started = time.perf_counter()
        diffusion.sample(batch, "cpu", sampler="ddim", steps=steps, generator=torch.Generator().manual_seed(0))
        per_step = (time.perf_counter() - started) / steps
        emit(bench="sampling_paper", config="Chikusei_256_DDPM", image_size=256, batch=batch, measured_steps=steps,
             seconds_per_step=round(per_step, 2),
             extrapolated_samples_per_s_ddim50=round(batch / (50 * per_step), 5),
             extrapolated_samples_per_s_ancestral2000=round(batch / (2000 * per_step), 7),
             threads=torch.get_num_threads(), load_avg=os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--paper-steps", type=int, default=2)
    parser.add_argument("--ema-samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("batch", "ema", "paper"), action="append")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup_logging(level=40)
    emit(bench="machine", nproc=os.cpu_count(), torch=torch.__version__, threads=args.threads,
         load_avg=[round(v, 2) for v in os.getloadavg()])
    parts = args.only or ["batch", "ema", "paper"]
    if "batch" in parts:
        bench_batches(args.batches, args.rounds, args.ddim_steps)
    if "ema" in parts:
        with tempfile.TemporaryDirectory() as work:
            bench_ema(work, args.ema_samples, args.rounds)
    if "paper" in parts:
        bench_paper(args.paper_steps)
    emit(bench="load_after", load_avg=[round(v, 2) for v in os.getloadavg()])


if __name__ == "__main__":
    main()
