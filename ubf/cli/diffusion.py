"""Stage 2 CLI: train the abundance DDPM, or sample new abundance maps from it.

    python Diffusion.py -p train -c config/Chikusei_256_DDPM.json [--data DIR] [--out RUN | --root DIR]
                        [--resume CKPT|latest] [--device auto|cpu|cuda] [--seed S] [--n-iter N] [--batch-size B]
                        [--amp fp16|bf16] [--compile] [--threads N] [--no-progress] [-d]
    python Diffusion.py -p val -c CONFIG [--ckpt CKPT|latest] [--out RUN | --root DIR] [--num-samples N]
                        [--sampler ancestral|ddim|dpmpp2m] [--steps N] [--eta X] [--batch-size B] [--ema] [--simplex]
                        [--class NAME|a,b|all [--guidance W]] [--layout project|reference]
    either phase: [--profile faithful|improved] (default: the config's `profile`, else faithful)

`--out RUN` is the run folder itself ({checkpoint,logs,results,mat_results} go there), as `--out` is the
output folder of every other CLI; without it a new `<root>/<name>_<timestamp>` is made under `--root`
(default experiments/ddpm, the reference's layout). `--ckpt` is the checkpoint to sample from, `--resume`
the one to continue training from (docs/ecosystem.md, "One vocabulary across the CLIs").

Both phases run in several processes with `torchrun --nproc_per_node N Diffusion.py ...` (DDP; the
training batch is the global batch, the samples are split over the processes).
"""
import argparse
import glob
import logging
import os

from ubf.core.config import apply_overrides
from ubf.core.checkpoint import add_trust_flag, trust_checkpoint_code
from ubf.core.cliflags import (add_device_argument, add_progress_argument, add_seed_argument, add_threads_argument,
                               runtime_flags)
from ubf.core.device import configure_backends, resolve_device
from ubf.core.distributed import distributed_session, launched_with_several_processes
from ubf.core.errors import OneLineParser, UserError, cli_main
from ubf.core.logs import setup_logging
from ubf.core.resources import resolve_config
from ubf.core.validate import INT_NONNEGATIVE, INT_POSITIVE, PROBABILITY, Number, flag
from ubf.core.overrides import add_set_argument, parse_set_values
from ubf.core.version import add_version_argument
from ubf.core.profiles import add_profile_argument

DEFAULT_CONFIG = "config/Chikusei_256_DDPM.json"
DEFAULT_OUT = os.path.join("experiments", "ddpm")  # the folder of runs (--root) when no --out is given


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Stage 2: DDPM on abundance maps (SR3-style)")
    add_version_argument(parser)
    add_set_argument(parser)
    parser.add_argument("-p", "--phase", choices=["train", "val"], help="train, or val (sample); default: the config's")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"JSON config (default {DEFAULT_CONFIG}; a built-in config is found by name from any "
                             "folder)")
    parser.add_argument("--data", help="folder of abundance .mat files (overrides datasets.train.dataroot)")
    parser.add_argument("--out", "--run-dir", dest="out", default=None,
                        help="the run folder itself: checkpoint/, logs/, results/, mat_results/ go there (default: "
                             "a new <root>/<name>_<timestamp>; with -p val and --ckpt: the checkpoint's own run)")
    parser.add_argument("--root", "--experiments-root", dest="root", default=None,
                        help=f"folder of runs: a new <name>_<timestamp> is made below it (default {DEFAULT_OUT}); "
                             "the meaning --out had before")
    parser.add_argument("--ckpt", help="-p val: checkpoint to sample from (I*_E*.pth, a reference I*_E* prefix, "
                        "or 'latest': the newest of --out, else of the config's name under --root); default: "
                        "path.resume_state, else 'latest'")
    parser.add_argument("--resume", help="-p train: checkpoint to continue training from (replaces resume_state), or "
                        "'latest'; with -p val the old spelling of --ckpt")
    add_device_argument(parser, default=None)
    parser.add_argument("-gpu", "--gpu_ids", help="reference spelling: first id picks cuda:<id> unless --device")
    add_threads_argument(parser)
    add_progress_argument(parser)
    add_seed_argument(parser)
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
    parser.add_argument("-log_eval", action="store_true", help="accepted for SR3's commands (sr.py); not used")
    parser.add_argument("-log_infer", action="store_true", help="accepted for SR3's commands (infer.py); not used")
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


def newest_in_run(run_dir: str, checkpoint_sub: str) -> str | None:
    """The newest `I<step>_E<epoch>.pth` in `<run_dir>/<checkpoint_sub>` (by file time, then step), or None."""
    from ubf.pipeline.diffusion_sample import CHECKPOINT_FILE, checkpoint_step
    found = [path for path in glob.glob(os.path.join(glob.escape(run_dir), checkpoint_sub, "I*_E*.pth"))
             if CHECKPOINT_FILE.match(os.path.basename(path))]
    return max(found, key=lambda path: (os.path.getmtime(path), checkpoint_step(path))) if found else None


def refuse_folder_of_runs(run_dir: str, cfg: dict) -> None:
    """`--out` names one run; a folder that holds runs of this name (the old meaning) is refused with the fix."""
    from ubf.pipeline.diffusion_sample import STAMP
    if not os.path.isdir(run_dir) or os.path.isdir(os.path.join(run_dir, cfg["path"]["checkpoint"])):
        return
    name = cfg["name"]
    runs = sorted(entry for entry in os.listdir(run_dir) if entry.startswith(name)
                  and STAMP.fullmatch(entry[len(name):]) and os.path.isdir(os.path.join(run_dir, entry)))
    if runs:
        raise UserError(f"{run_dir}: holds runs of '{name}' ({', '.join(runs[:3])}); --out is one run's folder: pass "
                        f"--root {run_dir} for a new run below it, or --out {os.path.join(run_dir, runs[-1])}")


def checkpoint_to_read(args, cfg: dict, phase: str, out_root: str, log) -> str | None:
    """The checkpoint this phase reads: --resume (train) or --ckpt (val; --resume is its old spelling there)."""
    if phase == "train":
        if args.ckpt:
            raise UserError("--ckpt names the checkpoint to sample from (-p val); continue training with --resume")
        wanted, flag_name = args.resume, "--resume"
    else:
        if args.ckpt and args.resume:
            raise UserError("-p val: --ckpt and --resume both name the checkpoint to sample from; give --ckpt only")
        if args.resume:
            log.info("-p val --resume %s: taken as --ckpt (the checkpoint to sample from)", args.resume)
        wanted, flag_name = args.ckpt or args.resume, "--ckpt"
        if wanted is None and args.out and not cfg["path"]["resume_state"]:
            wanted = newest_in_run(args.out, cfg["path"]["checkpoint"])  # sampling from a run folder: its newest
    if wanted != "latest":
        return wanted
    from ubf.pipeline.diffusion_sample import find_newest_checkpoint
    found = newest_in_run(args.out, cfg["path"]["checkpoint"]) if args.out else \
        find_newest_checkpoint(out_root, cfg["name"], cfg["path"]["checkpoint"])
    if found is None:
        raise UserError(f"{flag_name} latest: no checkpoint in {os.path.join(args.out, cfg['path']['checkpoint'])}")
    log.info("%s latest: %s", flag_name, found)
    return found


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
    root_given, out_root = args.root is not None, args.root or DEFAULT_OUT
    other_rank = launched_with_several_processes() and os.environ.get("RANK", "0") != "0"
    log = setup_logging(level=logging.WARNING if other_rank else logging.INFO)
    from ubf.pipeline.diffusion_config import DIFFUSION_DEFAULTS, load_diffusion_config, validate

    for first, second in (("raw", "simplex"), ("no_ema", "ema")):
        if getattr(args, first) and getattr(args, second):
            raise UserError(f"--{first.replace('_', '-')} and --{second} contradict each other; choose one")
    args.config = resolve_config(args.config)
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
    if args.out:
        refuse_folder_of_runs(args.out, cfg)
    check_sampler_flags(args, cfg["sample"]["sampler"])
    checkpoint = checkpoint_to_read(args, cfg, phase, out_root, log)
    for name in ("log_wandb_ckpt", "log_eval", "log_infer"):
        if getattr(args, name):
            log.info("-%s: accepted for the reference's and SR3's commands; it changes nothing here", name)
    device = pick_device(args)
    # under torchrun each process joins the group here and takes its own GPU; alone, nothing changes
    with runtime_flags(args), distributed_session(device) as device, trust_checkpoint_code(args.trust_checkpoint_code):
        configure_backends(device)
        if phase == "train":
            from ubf.pipeline.diffusion_train import train_diffusion
            checkpoint = train_diffusion(cfg, out_root, device, cfg["seed"], resume=checkpoint, run_dir=args.out,
                                         wandb=args.enable_wandb)
            log.info("checkpoint: %s", checkpoint)
        else:
            from ubf.pipeline.diffusion_sample import sample_run
            run_dir = sample_run(cfg, out_root, device, cfg["seed"], resume=checkpoint, run_dir=args.out,
                                 num_samples=args.num_samples, out_given=root_given)
            log.info("samples: %s", os.path.join(run_dir, cfg["path"]["mat_results"]))
    return 0


if __name__ == "__main__":
    main()
