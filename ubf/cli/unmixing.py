"""Stage 1 CLI: train the RGB-to-abundance unmixing network, or infer abundances of image folders.

    python Unmixing.py train [-c config/Chikusei_unmixing.json] [--train DIR] [--val DIR] [--test DIR] [--out DIR]
    torchrun --nproc_per_node N Unmixing.py train ...   (DDP: train.batch_size is the global batch)
    python Unmixing.py infer [--ckpt CKPT] [--rgb DIR ...] [--hsi DIR ...] [--out DIR] [--tile N] [--overlap M]
"""
import argparse
import contextlib
import logging
import os
import sys

from ubf.core.checkpoint import add_trust_flag, trust_checkpoint_code
from ubf.core.device import resolve_device
from ubf.core.errors import OneLineParser, UserError, cli_main
from ubf.core.fs import remove_stale_temp_files
from ubf.core.logs import setup_logging
from ubf.core.validate import FLOAT_POSITIVE, INT_ANY, INT_NONNEGATIVE, INT_POSITIVE, flag
from ubf.core.overrides import add_set_argument, parse_set_values
from ubf.core.profiles import add_profile_argument
from ubf.core.version import add_version_argument
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS, load_unmixing_config

DEFAULT_CONFIG = "config/Chikusei_unmixing.json"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Stage 1: RGB-to-abundance unmixing network")
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train on HSI crops (.mat)")
    train.add_argument("-c", "--config", default=None, help=f"JSON config (default: {DEFAULT_CONFIG} if present)")
    train.add_argument("--train", help="folder of training HSI crops (default dataset/trains)")
    train.add_argument("--val", help="folder of validation crops (default dataset/evals)")
    train.add_argument("--test", help="folder of test crops (default dataset/tests)")
    train.add_argument("--out", "--save_dir", dest="out", help="run folder (default experiments/unmixing/<name>)")
    train.add_argument("--name", "--dataset_name", dest="name", help="run name (default from the config)")
    train.add_argument("--epochs", type=flag(INT_POSITIVE))
    train.add_argument("--batch-size", "--batch_size", dest="batch_size", type=flag(INT_POSITIVE))
    train.add_argument("--lr", "--learning_rate", dest="lr", type=flag(FLOAT_POSITIVE))
    train.add_argument("--bands", type=flag(INT_NONNEGATIVE), nargs=3, metavar=("R", "G", "B"),
                       help="input band indices")
    train.add_argument("--key", help="variable name of the cube in the .mat files")
    train.add_argument("--resume", help="checkpoint to resume from (latest.pth), or 'latest': the newest of the run")
    train.add_argument("--device", "--gpus", dest="device", default=None, help="auto, cpu or cuda[:N]")
    train.add_argument("--seed", type=flag(INT_ANY))
    train.add_argument("--wandb", "-enable_wandb", dest="wandb", action="store_true",
                       help="log to Weights & Biases too (when wandb is installed); TensorBoard is on when installed")
    add_set_argument(train)
    add_profile_argument(train)
    add_trust_flag(train)

    infer = sub.add_parser("infer", help="abundance maps of RGB image folders (or HSI .mat folders)")
    infer.add_argument("--ckpt", "--ckpt_dir", dest="ckpt", help="unmixing checkpoint or run folder (default: the "
                       "newest run under experiments/unmixing; its latest.pth, or best.pth with --checkpoint best)")
    infer.add_argument("-c", "--config", default=None, help="unmixing JSON config: its `infer` section and `profile`")
    infer.add_argument("--checkpoint", choices=("latest", "best"), help="which checkpoint of a run folder "
                       "(infer.checkpoint; default latest, the final epoch as the reference)")
    add_profile_argument(infer)
    infer.add_argument("--rgb", nargs="+", help="RGB image folders (default dataset/RGB)")
    infer.add_argument("--hsi", nargs="+", help="HSI .mat folders (their 3 selected bands are the input)")
    infer.add_argument("--out", default="dataset/inferred_abu", help="output folder (default dataset/inferred_abu)")
    infer.add_argument("--tile", type=flag(INT_NONNEGATIVE), default=None,
                       help="0: each image whole, as the reference (default; tiles of 1024 above 2048 x 2048 pixels); "
                            "N: overlapping N x N tiles")
    infer.add_argument("--overlap", type=flag(INT_NONNEGATIVE), default=None,
                       help="tile overlap in pixels (default 32)")
    infer.add_argument("--key", help="variable name of the cube in HSI .mat files")
    infer.add_argument("--tile-batch", type=flag(INT_POSITIVE), default=1,
                       help="tiles per forward pass (speed option, default 1)")
    infer.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="channels-last memory format (default on; same numbers)")
    infer.add_argument("--workers", type=flag(INT_NONNEGATIVE), default=1, help="processes decoding images ahead of "
                       "the network (default 1; 0: decode in this process). Several processes: torchrun --nproc_per_node N")
    infer.add_argument("--no-recon", action="store_true", help="do not store the reconstruction Y")
    infer.add_argument("--overwrite", action="store_true", help="redo images that are already done")
    infer.add_argument("--color-match", choices=("none", "moments"), default=None,
                       help="moments: match each RGB image's channel mean/std to the training inputs (default none)")
    infer.add_argument("--layout", choices=("project", "reference"), default=None,
                       help="output files: project (default: <image>.mat with class) or reference (0000.mat ... in "
                            "os.listdir order, GT as B, G, R, as the reference writes them)")
    infer.add_argument("--device", "--gpus", dest="device", default=None, help="auto, cpu or cuda[:N]")
    add_set_argument(infer)
    add_trust_flag(infer)
    return parser


def run_train(args) -> None:
    config_path = args.config or (DEFAULT_CONFIG if os.path.isfile(DEFAULT_CONFIG) else None)
    if args.resume and not args.config:  # the checkpoint knows the network it holds; the default config may not
        config_path = None
    if args.resume == "latest":  # the run folder comes from --out or the config's name, not from a checkpoint
        name = args.name or load_unmixing_config(config_path, {})["name"]
        args.resume = newest_run_checkpoint(args.out or os.path.join("experiments", "unmixing", name))
    cfg = load_unmixing_config(config_path, {
        "name": args.name, "data.train": args.train, "data.val": args.val, "data.test": args.test,
        "data.key": args.key, "data.bands": args.bands, "train.epochs": args.epochs,
        "train.batch_size": args.batch_size, "train.lr": args.lr, "train.seed": args.seed,
        **parse_set_values(args.set_values, UNMIXING_DEFAULTS)}, profile=args.profile,
        **({"base": checkpoint_config(args.resume)} if args.resume and not args.config else {}))
    out_dir = args.out or os.path.join("experiments", "unmixing", cfg["name"])
    found = [path for path in (os.path.join(out_dir, "checkpoint", name) for name in ("interrupted.pth", "latest.pth"))
             if os.path.exists(path)]
    if not args.resume and found:
        newest = max(found, key=os.path.getmtime)
        raise UserError(f"{newest}: a run exists in {out_dir}; resume it with --resume {newest} or choose another --out")
    from ubf.core.distributed import distributed_session
    from ubf.core.runlock import RunLock
    from ubf.pipeline.unmixing_train import train_unmixing
    # one writer per run folder: rank 0 holds the lock for all processes of a torchrun job
    lock = RunLock(out_dir, "Unmixing.py train") if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    # under torchrun each process joins the group here and takes its own GPU; alone, nothing changes
    with lock, distributed_session(resolve_device(args.device or "auto")) as device:
        if os.environ.get("RANK", "0") == "0":  # a run killed while saving left its half-written file
            remove_stale_temp_files(os.path.join(out_dir, "checkpoint"))
        train_unmixing(cfg, out_dir, device, resume=args.resume, wandb=args.wandb)


def newest_run_checkpoint(out_dir: str) -> str:
    """What `--resume latest` means for stage 1: the newer of interrupted.pth and latest.pth of the run."""
    found = [path for path in (os.path.join(out_dir, "checkpoint", name) for name in ("interrupted.pth", "latest.pth"))
             if os.path.exists(path)]
    if not found:
        raise UserError(f"--resume latest: no checkpoint in {os.path.join(out_dir, 'checkpoint')}")
    return max(found, key=os.path.getmtime)


def checkpoint_config(path: str) -> dict:
    """The config a stage-1 checkpoint was trained with: `--resume` without `-c` continues that run."""
    from ubf.core.checkpoint import load_checkpoint
    config = load_checkpoint(path, "unmixing").get("config")
    if not isinstance(config, dict):
        raise UserError(f"{path}: holds no config; pass the run's config with -c")
    logging.getLogger("hsisyn").info("--resume without -c: using the config stored in %s", path)
    return config


def run_infer(args) -> int:
    from ubf.pipeline.unmixing_infer import infer_folders, newest_unmixing_checkpoint
    log = setup_logging()
    options = load_unmixing_config(args.config, {"infer.tile": args.tile, "infer.overlap": args.overlap,
                                                 "infer.checkpoint": args.checkpoint,
                                                 "infer.color_match": args.color_match,
                                                 "infer.layout": args.layout,
                                                 **parse_set_values(args.set_values,
                                                                    {"infer": UNMIXING_DEFAULTS["infer"]})},
                                   profile=args.profile, stage="infer")
    log.info("profile: %s", options["profile"])
    ckpt = args.ckpt or newest_unmixing_checkpoint(prefer=options["infer"]["checkpoint"])
    if os.path.isdir(ckpt):
        ckpt = newest_unmixing_checkpoint(ckpt, prefer=options["infer"]["checkpoint"])
    log.info("unmixing checkpoint: %s", ckpt)
    rgb = args.rgb if args.rgb or args.hsi else ["dataset/RGB"]
    tile, overlap = options["infer"]["tile"], options["infer"]["overlap"]
    result = infer_folders(ckpt, rgb, args.hsi, args.out, resolve_device(args.device or "auto"), tile=tile,
                           overlap=overlap, overwrite=args.overwrite, key=args.key,
                           save_reconstruction=not args.no_recon, tile_batch=args.tile_batch,
                           channels_last=args.channels_last, workers=args.workers,
                           color_match=options["infer"]["color_match"], layout=options["infer"]["layout"])
    log.info("wrote %d abundance files to %s (%d already done, %d failed)", len(result["written"]), args.out,
             len(result["skipped"]), len(result["failed"]))
    for path, message in result["failed"]:
        print(f"failed: {message}", file=sys.stderr)
    return 1 if result["failed"] else 0


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    with trust_checkpoint_code(args.trust_checkpoint_code):
        if args.command == "train":
            run_train(args)
            return 0
        return run_infer(args)


if __name__ == "__main__":
    sys.exit(main())
