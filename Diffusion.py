"""Stage 2 CLI: train the abundance DDPM, or sample new abundance maps from it.

    python Diffusion.py -p train -c config/Chikusei_256_DDPM.json [--data DIR] [--out DIR] [--resume CKPT]
                        [--device auto|cpu|cuda] [--seed S] [--n-iter N] [--batch-size B] [--amp fp16|bf16]
                        [--compile] [-d]
    python Diffusion.py -p val -c CONFIG [--out DIR] [--resume CKPT] [--num-samples N]
                        [--sampler ancestral|ddim] [--steps N] [--eta X] [--batch-size B] [--raw] [--no-ema]

Both phases run in several processes with `torchrun --nproc_per_node N Diffusion.py ...` (DDP; the
training batch is the global batch, the samples are split over the processes).

Outputs go to <out>/<name>_<timestamp>/{checkpoint,logs,results,mat_results} (see docs/diffusion.md).
"""
import argparse
import logging
import os

import torch

from core.config import apply_overrides
from core.device import resolve_device
from core.distributed import distributed_session, launched_with_several_processes
from core.errors import UserError, cli_main
from core.logs import setup_logging

DEFAULT_CONFIG = "config/Chikusei_256_DDPM.json"
DEFAULT_OUT = os.path.join("experiments", "ddpm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Stage 2: DDPM on abundance maps (SR3-style)")
    parser.add_argument("-p", "--phase", choices=["train", "val"], help="train, or val (sample); default: the config's")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"JSON config (default {DEFAULT_CONFIG})")
    parser.add_argument("--data", help="folder of abundance .mat files (overrides datasets.train.dataroot)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"experiments root (default {DEFAULT_OUT})")
    parser.add_argument("--run-dir", help="use exactly this run folder instead of <out>/<name>_<timestamp>")
    parser.add_argument("--resume", help="checkpoint to resume (train) or sample from (val); replaces resume_state")
    parser.add_argument("--device", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("-gpu", "--gpu_ids", help="reference spelling: first id picks cuda:<id> unless --device")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--seed", type=int, help="random seed (default: the config's seed)")
    parser.add_argument("--n-iter", "--n_iter", dest="n_iter", type=int, help="total training steps")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int,
                        help="training batch (train) or sampling batch (val)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (datasets.train.num_workers)")
    parser.add_argument("--amp", choices=["off", "fp16", "bf16"], help="mixed-precision training on CUDA (train.amp)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet for training (train.compile)")
    parser.add_argument("--num-samples", type=int, help="samples to draw (default datasets.val.data_len)")
    parser.add_argument("--sampler", choices=["ancestral", "ddim", "dpmpp2m"], help="default: sample.sampler of the config")
    parser.add_argument("--steps", type=int, help="DDIM steps")
    parser.add_argument("--eta", type=float, help="DDIM eta (0: deterministic)")
    parser.add_argument("--raw", action="store_true",
                        help="store Abu = (SR + 1) / 2 as sampled instead of projecting it onto the simplex")
    parser.add_argument("--no-ema", action="store_true", help="sample with the raw weights instead of the EMA")
    parser.add_argument("-d", "-debug", "--debug", dest="debug", action="store_true", help="tiny smoke run")
    parser.add_argument("-enable_wandb", action="store_true", help="accepted for the reference; not used")
    parser.add_argument("-log_wandb_ckpt", action="store_true", help="accepted for the reference; not used")
    return parser


def debug_overrides(cfg: dict, n_iter: int | None) -> dict:
    """Settings of `-d`: a few steps, tiny batches, a 5-step DDIM preview, a 'debug_' name."""
    steps = n_iter or 4
    return {"name": "debug_" + cfg["name"], "train.n_iter": steps, "train.print_freq": 1, "train.val_freq": steps,
            "train.save_checkpoint_freq": steps, "train.preview_samples": 1, "datasets.train.batch_size": 2,
            "datasets.train.num_workers": 0, "datasets.val.data_len": 2, "sample.sampler": "ddim",
            "sample.steps": 5, "sample.batch_size": 2}


def pick_device(args):
    if args.device is None and args.gpu_ids:
        first = str(args.gpu_ids).split(",")[0].strip()
        return resolve_device(f"cuda:{first}")
    return resolve_device(args.device or "auto")


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    other_rank = launched_with_several_processes() and os.environ.get("RANK", "0") != "0"
    log = setup_logging(level=logging.WARNING if other_rank else logging.INFO)
    from pipeline.diffusion_config import load_diffusion_config, validate

    if not os.path.isfile(args.config):
        raise UserError(f"{args.config}: config file not found")
    cfg = load_diffusion_config(args.config, {
        "datasets.train.dataroot": args.data, "train.n_iter": args.n_iter, "seed": args.seed,
        "datasets.train.num_workers": args.workers, "train.amp": args.amp, "train.compile": True if args.compile else None,
        "sample.sampler": args.sampler, "sample.steps": args.steps, "sample.eta": args.eta,
        "sample.project_simplex": False if args.raw else None, "sample.use_ema": False if args.no_ema else None,
    })
    phase = args.phase or cfg["phase"]
    if phase not in ("train", "val"):
        raise UserError(f"{args.config}: 'phase' is {phase!r}, expected train or val (or pass -p)")
    cfg["phase"] = phase
    batch_key = "datasets.train.batch_size" if phase == "train" else "sample.batch_size"
    apply_overrides(cfg, {batch_key: args.batch_size})
    if args.debug:
        apply_overrides(cfg, debug_overrides(cfg, args.n_iter))
    cfg = validate(cfg, args.config)
    if args.enable_wandb or args.log_wandb_ckpt:
        log.info("wandb logging is not part of this implementation; the flags are ignored")
    device = pick_device(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    # under torchrun each process joins the group here and takes its own GPU; alone, nothing changes
    with distributed_session(device) as device:
        if phase == "train":
            from pipeline.diffusion_train import train_diffusion
            checkpoint = train_diffusion(cfg, args.out, device, cfg["seed"], resume=args.resume, run_dir=args.run_dir)
            log.info("checkpoint: %s", checkpoint)
        else:
            from pipeline.diffusion_sample import sample_run
            run_dir = sample_run(cfg, args.out, device, cfg["seed"], resume=args.resume, run_dir=args.run_dir,
                                 num_samples=args.num_samples)
            log.info("samples: %s", os.path.join(run_dir, cfg["path"]["mat_results"]))
    return 0


if __name__ == "__main__":
    main()
