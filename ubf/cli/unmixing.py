"""Stage 1 CLI: train the RGB-to-abundance unmixing network, or infer abundances of image folders.

    python Unmixing.py train [-c config/Chikusei_unmixing.json] [--train DIR] [--val DIR | --no-val] [--test DIR] [--out DIR]
    torchrun --nproc_per_node N Unmixing.py train ...   (DDP: train.batch_size is the global batch)
    python Unmixing.py infer [--ckpt CKPT] [--rgb DIR ...] [--hsi DIR ...] [--out DIR] [--tile N] [--overlap M]
    either: [--device D] [--threads N] [--no-progress] [--profile faithful|improved] [--set KEY=VALUE ...]

`--resume` continues training from a checkpoint; `--ckpt` is the checkpoint `infer` reads; `--out` is the
folder the command writes into (docs/ecosystem.md, "One vocabulary across the CLIs").
"""
import argparse
import contextlib
import logging
import os
import sys

from ubf.core.checkpoint import add_trust_flag, trust_checkpoint_code
from ubf.core.cliflags import (add_device_argument, add_overwrite_argument, add_progress_argument, add_seed_argument,
                               add_threads_argument, runtime_flags)
from ubf.core.device import configure_backends, resolve_device
from ubf.core.errors import OneLineParser, UserError, cli_main
from ubf.core.fs import remove_stale_temp_files
from ubf.core.logs import setup_logging
from ubf.core.resources import resolve_config
from ubf.core.validate import FLOAT_POSITIVE, INT_NONNEGATIVE, INT_POSITIVE, flag
from ubf.core.overrides import add_set_argument, parse_set_values
from ubf.core.profiles import add_profile_argument
from ubf.core.version import add_version_argument
from ubf.pipeline.unmixing_methods import METHODS
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS, load_unmixing_config

DEFAULT_CONFIG = "config/Chikusei_unmixing.json"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Stage 1: RGB-to-abundance unmixing network")
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train on HSI crops (.mat, ENVI .hdr + .img, multi-band .tif)")
    train.add_argument("-c", "--config", default=None, help=f"JSON config (default: {DEFAULT_CONFIG}, found by "
                       "name from any folder; a built-in config of the same name when the path does not exist)")
    train.add_argument("--train", help="folder of training HSI crops (.mat, ENVI or TIFF; default dataset/trains)")
    train.add_argument("--val", help="folder of validation crops (default dataset/evals)")
    train.add_argument("--no-val", action="store_true",
                       help="no validation split: best.pth follows every epoch, so it is the final one (for a scene "
                            "whose only held-out crop is the test crop: choosing the epoch there leaks the test)")
    train.add_argument("--test", help="folder of test crops (default dataset/tests)")
    train.add_argument("--out", "--save_dir", dest="out", help="run folder (default experiments/unmixing/<name>)")
    train.add_argument("--name", "--dataset_name", dest="name", help="run name (default from the config)")
    train.add_argument("--epochs", type=flag(INT_POSITIVE), help="training epochs (train.epochs; paper 40)")
    train.add_argument("--batch-size", "--batch_size", dest="batch_size", type=flag(INT_POSITIVE),
                       help="batch size (train.batch_size; paper 16; the global batch under torchrun)")
    train.add_argument("--lr", "--learning_rate", dest="lr", type=flag(FLOAT_POSITIVE),
                       help="learning rate (train.lr; paper 2e-4)")
    train.add_argument("--bands", type=flag(INT_NONNEGATIVE), nargs=3, metavar=("R", "G", "B"),
                       help="input band indices (data.bands; default the Chikusei RGB bands 53 33 14)")
    train.add_argument("--key", help="variable name of the cube in .mat files (default: the first of Y, HSI, ...)")
    train.add_argument("--method", choices=tuple(METHODS), help="stage-1 recipe (model.method; default network, the "
                       "paper's): " + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()))
    train.add_argument("--resume", help="continue training from this checkpoint (latest.pth or interrupted.pth), "
                       "or 'latest': the newest of the run")
    add_device_argument(train)
    add_seed_argument(train)
    add_threads_argument(train)
    add_progress_argument(train)
    train.add_argument("--wandb", "-enable_wandb", dest="wandb", action="store_true",
                       help="log to Weights & Biases too (when wandb is installed); TensorBoard is on when installed")
    add_set_argument(train)
    add_profile_argument(train)
    add_trust_flag(train)

    infer = sub.add_parser("infer", help="abundance maps of RGB image folders (or of HSI folders' 3 bands)")
    infer.add_argument("--ckpt", "--ckpt_dir", dest="ckpt", help="unmixing checkpoint or run folder (default: the "
                       "newest run under experiments/unmixing; its latest.pth, or best.pth with --checkpoint best)")
    infer.add_argument("-c", "--config", default=None, help="unmixing JSON config: its `infer` section and `profile`")
    infer.add_argument("--checkpoint", choices=("latest", "best"), help="which checkpoint of a run folder "
                       "(infer.checkpoint; default latest, the final epoch as the reference)")
    add_profile_argument(infer)
    infer.add_argument("--rgb", nargs="+", help="RGB image folders (default dataset/RGB)")
    infer.add_argument("--hsi", nargs="+", help="HSI folders (.mat, ENVI or TIFF; their 3 selected bands are the input)")
    infer.add_argument("--out", default="dataset/inferred_abu", help="output folder (default dataset/inferred_abu)")
    infer.add_argument("--tile", type=flag(INT_NONNEGATIVE), default=None,
                       help="0: each image whole, as the reference (default; tiles of 1024 above 2048 x 2048 pixels); "
                            "N: overlapping N x N tiles")
    infer.add_argument("--overlap", type=flag(INT_NONNEGATIVE), default=None,
                       help="tile overlap in pixels (default 32)")
    infer.add_argument("--key", help="variable name of the cube in HSI .mat files (default: the first of Y, HSI, ...)")
    infer.add_argument("--tile-batch", type=flag(INT_POSITIVE), default=1,
                       help="tiles per forward pass (speed option, default 1)")
    infer.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="channels-last memory format (default on; same numbers)")
    infer.add_argument("--workers", type=flag(INT_NONNEGATIVE), default=1, help="processes decoding images ahead of "
                       "the network (default 1; 0: decode in this process). Several processes: torchrun --nproc_per_node N")
    infer.add_argument("--format", choices=("mat", "mat73", "envi", "tiff"), default="mat",
                       help="mat: <name>.mat with Abu, GT, Y, class (default, the reference's layout); mat73: the "
                            "same in MATLAB v7.3 (HDF5); envi/tiff: the abundance maps Abu as a raster, with the "
                            "input's georeferencing (stage 2 reads mat and mat73)")
    infer.add_argument("--no-recon", action="store_true", help="do not store the reconstruction Y")
    add_overwrite_argument(infer, "abundance files of images that are already done (default: skip them)")
    infer.add_argument("--color-match", choices=("none", "moments"), default=None,
                       help="moments: match each RGB image's channel mean/std to the training inputs (default none)")
    infer.add_argument("--layout", choices=("project", "reference"), default=None,
                       help="output files: project (default: <image>.mat with class) or reference (0000.mat ... in "
                            "os.listdir order, GT as B, G, R, as the reference writes them)")
    add_device_argument(infer)
    add_threads_argument(infer)
    add_progress_argument(infer)
    add_set_argument(infer)
    add_trust_flag(infer)
    return parser


def run_train(args) -> None:
    config_path = resolve_config(args.config or DEFAULT_CONFIG)
    if not args.config and not os.path.isfile(config_path):  # no built-in config either: the built-in defaults
        config_path = None
    if args.resume and not args.config:  # the checkpoint knows the network it holds; the default config may not
        config_path = None
    if args.resume == "latest":  # the run folder comes from --out or the config's name, not from a checkpoint
        name = args.name or load_unmixing_config(config_path, {})["name"]
        args.resume = newest_run_checkpoint(args.out or os.path.join("experiments", "unmixing", name))
    cfg = load_unmixing_config(config_path, {
        "name": args.name, "model.method": args.method, "data.train": args.train, "data.val": args.val, "data.test": args.test,
        "data.key": args.key, "data.bands": args.bands, "train.epochs": args.epochs,
        "train.batch_size": args.batch_size, "train.lr": args.lr, "train.seed": args.seed,
        **parse_set_values(args.set_values, UNMIXING_DEFAULTS)}, profile=args.profile,
        **({"base": checkpoint_config(args.resume)} if args.resume and not args.config else {}))
    if args.no_val:
        if args.val:
            raise UserError(f"--no-val and --val {args.val}: give one of them")
        cfg["data"]["val"] = None
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
        configure_backends(device)
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
    options = load_unmixing_config(resolve_config(args.config), {"infer.tile": args.tile, "infer.overlap": args.overlap,
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
    from ubf.core.distributed import torchrun_device
    device = torchrun_device(resolve_device(args.device or "auto"))  # torchrun: each process its own GPU
    configure_backends(device)
    result = infer_folders(ckpt, rgb, args.hsi, args.out, device, tile=tile,
                           overlap=overlap, overwrite=args.overwrite, key=args.key,
                           save_reconstruction=not args.no_recon, tile_batch=args.tile_batch,
                           channels_last=args.channels_last, workers=args.workers,
                           color_match=options["infer"]["color_match"], fmt=args.format,
                           layout=options["infer"]["layout"])
    log.info("wrote %d abundance files to %s (%d already done, %d failed)", len(result["written"]), args.out,
             len(result["skipped"]), len(result["failed"]))
    for path, message in result["failed"]:
        print(f"failed: {message}", file=sys.stderr)
    return 1 if result["failed"] else 0


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    with runtime_flags(args), trust_checkpoint_code(args.trust_checkpoint_code):
        if args.command == "train":
            run_train(args)
            return 0
        return run_infer(args)


if __name__ == "__main__":
    sys.exit(main())
