"""Stage 2 CLI: train the abundance DDPM, or sample new abundance maps from it.

    python Diffusion.py -p train -c config/Chikusei_256_DDPM.json [--data DIR] [--out DIR] [--resume CKPT]
                        [--device auto|cpu|cuda] [--seed S] [--n-iter N] [--batch-size B] [--amp fp16|bf16]
                        [--compile] [-d]
    python Diffusion.py -p val -c CONFIG [--out DIR] [--resume CKPT] [--num-samples N]
                        [--sampler ancestral|ddim] [--steps N] [--eta X] [--batch-size B] [--ema] [--simplex]
                        [--class NAME|a,b|all [--guidance W]]
    either phase: [--profile faithful|improved] (default: the config's `profile`, else faithful)

Both phases run in several processes with `torchrun --nproc_per_node N Diffusion.py ...` (DDP; the
training batch is the global batch, the samples are split over the processes).

Outputs go to <out>/<name>_<timestamp>/{checkpoint,logs,results,mat_results} (see docs/diffusion.md).
"""
import argparse
import logging
import os

import torch

from ubf.core.config import apply_overrides
from ubf.core.checkpoint import add_trust_flag, trust_checkpoint_code
from ubf.core.device import resolve_device
from ubf.core.distributed import distributed_session, launched_with_several_processes
from ubf.core.errors import OneLineParser, UserError, cli_main
from ubf.core.logs import setup_logging
from ubf.core.validate import INT_ANY, INT_NONNEGATIVE, INT_POSITIVE, PROBABILITY, Number, flag
from ubf.core.overrides import add_set_argument, parse_set_values
from ubf.core.version import add_version_argument
from ubf.core.profiles import add_profile_argument

DEFAULT_CONFIG = "config/Chikusei_256_DDPM.json"
DEFAULT_OUT = os.path.join("experiments", "ddpm")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Stage 2: DDPM on abundance maps (SR3-style)")
    add_version_argument(parser)
    add_set_argument(parser)
    parser.add_argument("-p", "--phase", choices=["train", "val"], help="train, or val (sample); default: the config's")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"JSON config (default {DEFAULT_CONFIG})")
    parser.add_argument("--data", help="folder of abundance .mat files (overrides datasets.train.dataroot)")
    parser.add_argument("--out", default=None, help=f"experiments root (default {DEFAULT_OUT}); with -p val and "
                        "--resume, samples go to a new run folder here instead of the checkpoint's")
    parser.add_argument("--run-dir", help="use exactly this run folder instead of <out>/<name>_<timestamp>")
    parser.add_argument("--resume", help="checkpoint to resume (train) or sample from (val); replaces resume_state; "
                        "'latest': the newest checkpoint of the config's name under --out")
    parser.add_argument("--device", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("-gpu", "--gpu_ids", help="reference spelling: first id picks cuda:<id> unless --device")
    parser.add_argument("--threads", type=flag(INT_POSITIVE), help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--seed", type=flag(INT_ANY), help="random seed (default: the config's seed)")
    parser.add_argument("--n-iter", "--n_iter", dest="n_iter", type=flag(INT_POSITIVE), help="total training steps")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=flag(INT_POSITIVE),
                        help="training batch (train) or sampling batch (val)")
    parser.add_argument("--workers", type=flag(INT_NONNEGATIVE), help="DataLoader workers (datasets.train.num_workers)")
    parser.add_argument("--amp", choices=["off", "fp16", "bf16"],
                        help="mixed-precision training on CUDA; bf16 also on CPUs with bf16 kernels (train.amp)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet for training (train.compile)")
    parser.add_argument("--num-samples", type=flag(INT_POSITIVE), help="samples to draw (default sample.num_samples: 40)")
    parser.add_argument("--sampler", choices=["ancestral", "ddim", "dpmpp2m"], help="default: sample.sampler of the config")
    parser.add_argument("--steps", type=flag(INT_POSITIVE), help="DDIM / DPM-Solver++ steps")
    parser.add_argument("--eta", type=flag(PROBABILITY), help="DDIM eta (0: deterministic)")
    parser.add_argument("--raw", action="store_true",
                        help="store Abu = (SR + 1) / 2 as sampled (the default, as the reference)")
    parser.add_argument("--simplex", action="store_true", help="project Abu onto the simplex (sample.project_simplex)")
    parser.add_argument("--layout", choices=["project", "reference"], help="-p val files: project (default: "
                        "<step>_<n>_sample_abu.mat with SR and Abu) or reference (0_<n>_sample_abu.mat with SR only, as "
                        "the reference's -p val writes them; sample.layout)")
    parser.add_argument("--no-ema", action="store_true", help="sample with the trained weights (the default)")
    parser.add_argument("--ema", action="store_true", help="sample with the EMA weights (sample.use_ema)")
    add_profile_argument(parser)
    parser.add_argument("--class", dest="class_name", help="class-conditional models: sample this scene class, "
                        "several (a,b) or 'all' (an even mix); default unconditional")
    parser.add_argument("--guidance", type=flag(Number()), help="classifier-free guidance scale with --class "
                        "(default 1: plain conditional; 0: unconditional; >1: stronger class likeness)")
    parser.add_argument("-d", "-debug", "--debug", dest="debug", action="store_true", help="tiny smoke run")
    parser.add_argument("-enable_wandb", "--wandb", dest="enable_wandb", action="store_true",
                        help="log to Weights & Biases too (when wandb is installed); TensorBoard is on when installed")
    parser.add_argument("-log_wandb_ckpt", action="store_true", help="accepted for the reference; not used")
    add_trust_flag(parser)
    return parser


def debug_overrides(cfg: dict, n_iter: int | None) -> dict:
    """Settings of `-d`: a few steps, tiny batches, a 5-step DDIM preview, a 'debug_' name."""
    steps = n_iter or 4
    return {"name": "debug_" + cfg["name"], "train.n_iter": steps, "train.print_freq": 1, "train.val_freq": steps,
            "train.save_checkpoint_freq": steps, "train.preview_samples": 1, "datasets.train.batch_size": 2,
            "datasets.train.num_workers": 0, "sample.num_samples": 2, "sample.sampler": "ddim",
            "sample.steps": 5, "sample.batch_size": 2}


def pick_device(args):
    if args.device is None and args.gpu_ids:
        first = str(args.gpu_ids).split(",")[0].strip()
        return resolve_device(f"cuda:{first}")
    return resolve_device(args.device or "auto")


def check_sampler_flags(args, sampler: str) -> None:
    """--steps and --eta set what the ancestral sampler never reads (it runs all T steps, eta 1 in effect):
    refused rather than silently ignored; --eta is DDIM's alone."""
    if sampler == "ancestral" and (args.steps is not None or args.eta is not None):
        given = " and ".join(f"--{name} {getattr(args, name):g}" for name in ("steps", "eta")
                             if getattr(args, name) is not None)
        raise UserError(f"{given}: the ancestral sampler runs all of the schedule's steps and has no eta; "
                        "add --sampler ddim (or dpmpp2m for --steps) to use them")
    if sampler == "dpmpp2m" and args.eta is not None:
        raise UserError(f"--eta {args.eta:g}: DPM-Solver++ (2M) is deterministic and has no eta; "
                        "it is DDIM's (--sampler ddim)")


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out_given, args.out = args.out is not None, args.out or DEFAULT_OUT
    other_rank = launched_with_several_processes() and os.environ.get("RANK", "0") != "0"
    log = setup_logging(level=logging.WARNING if other_rank else logging.INFO)
    from ubf.pipeline.diffusion_config import DIFFUSION_DEFAULTS, load_diffusion_config, validate

    for first, second in (("raw", "simplex"), ("no_ema", "ema")):
        if getattr(args, first) and getattr(args, second):
            raise UserError(f"--{first.replace('_', '-')} and --{second} contradict each other; choose one")
    if not os.path.isfile(args.config):
        raise UserError(f"{args.config}: config file not found")
    cfg = load_diffusion_config(args.config, {
        "datasets.train.dataroot": args.data, "train.n_iter": args.n_iter, "seed": args.seed,
        "datasets.train.num_workers": args.workers, "train.amp": args.amp, "train.compile": True if args.compile else None,
        "sample.sampler": args.sampler, "sample.steps": args.steps, "sample.eta": args.eta,
        "sample.project_simplex": False if args.raw else (True if args.simplex else None),
        "sample.use_ema": False if args.no_ema else (True if args.ema else None),
        "sample.class_name": args.class_name, "sample.guidance": args.guidance, "sample.layout": args.layout,
        **parse_set_values(args.set_values, DIFFUSION_DEFAULTS),
    }, profile=args.profile)
    log.info("profile: %s", cfg["profile"])
    phase = args.phase or cfg["phase"]
    if phase not in ("train", "val"):
        raise UserError(f"{args.config}: 'phase' is {phase!r}, expected train or val (or pass -p)")
    cfg["phase"] = phase
    batch_key = "datasets.train.batch_size" if phase == "train" else "sample.batch_size"
    apply_overrides(cfg, {batch_key: args.batch_size})
    if args.debug:
        apply_overrides(cfg, debug_overrides(cfg, args.n_iter))
    cfg = validate(cfg, args.config)
    check_sampler_flags(args, cfg["sample"]["sampler"])
    if args.resume == "latest":
        from ubf.pipeline.diffusion_sample import find_newest_checkpoint
        args.resume = find_newest_checkpoint(args.out, cfg["name"], cfg["path"]["checkpoint"])
        log.info("--resume latest: %s", args.resume)
    if args.log_wandb_ckpt:
        log.info("-log_wandb_ckpt: checkpoints are not uploaded to W&B; the flag is ignored")
    device = pick_device(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    # under torchrun each process joins the group here and takes its own GPU; alone, nothing changes
    with distributed_session(device) as device, trust_checkpoint_code(args.trust_checkpoint_code):
        if phase == "train":
            from ubf.pipeline.diffusion_train import train_diffusion
            checkpoint = train_diffusion(cfg, args.out, device, cfg["seed"], resume=args.resume, run_dir=args.run_dir,
                                         wandb=args.enable_wandb)
            log.info("checkpoint: %s", checkpoint)
        else:
            from ubf.pipeline.diffusion_sample import sample_run
            run_dir = sample_run(cfg, args.out, device, cfg["seed"], resume=args.resume, run_dir=args.run_dir,
                                 num_samples=args.num_samples, out_given=out_given)
            log.info("samples: %s", os.path.join(run_dir, cfg["path"]["mat_results"]))
    return 0


if __name__ == "__main__":
    main()
