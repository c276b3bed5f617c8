"""Stage 2 figures on this machine, printed as JSON lines.

    python bench/bench_diffusion.py [--threads N] [--train-steps 60] [--paper-steps 2]

1. demo config (config/demo_DDPM.json): training steps/s through the real training loop on
   fabricated 40 x 40 abundance files, at 1 thread and at --threads, and the process's peak RSS;
2. seconds per sample with the demo UNet: ancestral over all T steps vs DDIM-50 vs DDIM-100;
3. the paper config's UNet (config/Chikusei_256_DDPM.json): parameter count, and the time of one
   training step (forward, backward, Adam) at 64 x 64 with the paper's batch of 8.
"""
import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ubf.core.logs import setup_logging  # noqa: E402
from ubf.data.matio import write_mat  # noqa: E402
from ubf.models.sr3_unet import count_parameters, unet_from_config  # noqa: E402
from ubf.pipeline.diffusion_config import load_diffusion_config  # noqa: E402
from ubf.pipeline.diffusion_sample import build_diffusion  # noqa: E402
from ubf.pipeline.diffusion_train import train_diffusion  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def bench_demo_training(folder: str, threads: int, steps: int) -> None:
    torch.set_num_threads(threads)
    cfg = load_diffusion_config(os.path.join(ROOT, "config", "demo_DDPM.json"), {
        "datasets.train.dataroot": os.path.join(folder, "abu"), "train.n_iter": steps, "train.print_freq": steps,
        "train.val_freq": 10 ** 9, "train.save_checkpoint_freq": 10 ** 9})
    started = time.perf_counter()
    train_diffusion(cfg, os.path.join(folder, f"runs{threads}"), torch.device("cpu"), seed=0, progress=False)
    elapsed = time.perf_counter() - started
    emit(figure="demo_train", config="config/demo_DDPM.json", threads=threads, steps=steps,
         batch=cfg["datasets"]["train"]["batch_size"], image_size=cfg["model"]["diffusion"]["image_size"],
         steps_per_s=round(steps / elapsed, 2), seconds_incl_setup=round(elapsed, 1),
         peak_rss_mib_so_far=round(peak_rss_mib(), 1))


@torch.no_grad()
def bench_demo_sampling(threads: int, batch: int) -> None:
    torch.set_num_threads(threads)
    cfg = load_diffusion_config(os.path.join(ROOT, "config", "demo_DDPM.json"))
    torch.manual_seed(0)
    diffusion = build_diffusion(cfg["model"], unet_from_config(cfg["model"]).eval(), "val")
    for sampler, steps in (("ancestral", diffusion.num_timesteps), ("ddim", 50), ("ddim", 100)):
        started = time.perf_counter()
        diffusion.sample(batch, "cpu", sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
        elapsed = time.perf_counter() - started
        emit(figure="demo_sampling", sampler=sampler, steps=steps, batch=batch, threads=threads,
             seconds_per_sample=round(elapsed / batch, 3))


def bench_paper_unet(threads: int, steps: int, batch: int = 8, size: int = 64) -> None:
    torch.set_num_threads(threads)
    cfg = load_diffusion_config(os.path.join(ROOT, "config", "Chikusei_256_DDPM.json"))
    emit(figure="paper_unet_parameters", image_size=256, parameters=count_parameters(unet_from_config(cfg["model"])))
    cfg["model"]["diffusion"]["image_size"] = size
    torch.manual_seed(0)
    unet = unet_from_config(cfg["model"]).train()
    diffusion = build_diffusion(cfg["model"], unet, "train")
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4)
    x = torch.rand(batch, 5, size, size) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 1):  # the first step warms up the allocator
        started = time.perf_counter()
        loss = diffusion.training_loss(x, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - started)
    emit(figure="paper_unet_train_step", image_size=size, batch=batch, threads=threads,
         parameters=count_parameters(unet), seconds_per_step=round(float(np.median(times)), 2),
         peak_rss_mib_so_far=round(peak_rss_mib(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the main figures (default 2)")
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--paper-steps", type=int, default=2)
    parser.add_argument("--sample-batch", type=int, default=8)
    args = parser.parse_args()
    setup_logging(level=logging.WARNING)
    emit(figure="machine", cpus=os.cpu_count(), torch=torch.__version__, load_average=os.getloadavg()[0])
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        for i in range(16):
            write_mat(os.path.join(folder, "abu", f"a{i:02d}.mat"),
                      {"Abu": rng.dirichlet(np.ones(5), size=(40, 40)).astype(np.float32)})
        emit(figure="baseline", peak_rss_mib_so_far=round(peak_rss_mib(), 1))
        for threads in sorted({1, args.threads}):
            bench_demo_training(folder, threads, args.train_steps)
    bench_demo_sampling(args.threads, args.sample_batch)
    bench_paper_unet(args.threads, args.paper_steps)


if __name__ == "__main__":
    main()
