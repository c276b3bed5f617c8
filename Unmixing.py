"""Stage 1 CLI: train the RGB-to-abundance unmixing network, or infer abundances of image folders.

    python Unmixing.py train [-c config/Chikusei_unmixing.json] [--train DIR] [--val DIR] [--test DIR] [--out DIR]
    torchrun --nproc_per_node N Unmixing.py train ...   (DDP: train.batch_size is the global batch)
    python Unmixing.py infer [--ckpt CKPT] [--rgb DIR ...] [--hsi DIR ...] [--out DIR] [--tile N] [--overlap M]
"""
import argparse
import os
import sys

from core.device import resolve_device
from core.errors import UserError, cli_main
from core.logs import setup_logging
from pipeline.unmixing_config import UNMIXING_DEFAULTS, load_unmixing_config

DEFAULT_CONFIG = "config/Chikusei_unmixing.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Stage 1: RGB-to-abundance unmixing network")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train on HSI crops (.mat)")
    train.add_argument("-c", "--config", default=None, help=f"JSON config (default: {DEFAULT_CONFIG} if present)")
    train.add_argument("--train", help="folder of training HSI crops (default dataset/trains)")
    train.add_argument("--val", help="folder of validation crops (default dataset/evals)")
    train.add_argument("--test", help="folder of test crops (default dataset/tests)")
    train.add_argument("--out", "--save_dir", dest="out", help="run folder (default experiments/unmixing/<name>)")
    train.add_argument("--name", "--dataset_name", dest="name", help="run name (default from the config)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int)
    train.add_argument("--lr", "--learning_rate", dest="lr", type=float)
    train.add_argument("--bands", type=int, nargs=3, metavar=("R", "G", "B"), help="input band indices")
    train.add_argument("--key", help="variable name of the cube in the .mat files")
    train.add_argument("--resume", help="checkpoint to resume from (latest.pth)")
    train.add_argument("--device", "--gpus", dest="device", default=None, help="auto, cpu or cuda[:N]")
    train.add_argument("--seed", type=int)

    infer = sub.add_parser("infer", help="abundance maps of RGB image folders (or HSI .mat folders)")
    infer.add_argument("--ckpt", "--ckpt_dir", dest="ckpt", help="unmixing checkpoint (default: newest best.pth "
                       "under experiments/unmixing)")
    infer.add_argument("--rgb", nargs="+", help="RGB image folders (default dataset/RGB)")
    infer.add_argument("--hsi", nargs="+", help="HSI .mat folders (their 3 selected bands are the input)")
    infer.add_argument("--out", default="dataset/inferred_abu", help="output folder (default dataset/inferred_abu)")
    infer.add_argument("--tile", type=int, default=None, help="tile size for large images (default 256)")
    infer.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default 32)")
    infer.add_argument("--key", help="variable name of the cube in HSI .mat files")
    infer.add_argument("--tile-batch", type=int, default=1, help="tiles per forward pass (speed option, default 1)")
    infer.add_argument("--channels-last", action="store_true", help="channels-last memory format (speed option)")
    infer.add_argument("--no-recon", action="store_true", help="do not store the reconstruction Y")
    infer.add_argument("--overwrite", action="store_true", help="redo images that are already done")
    infer.add_argument("--color-match", choices=("none", "moments"), default=None,
                       help="moments: match each RGB image's channel mean/std to the training inputs (default none)")
    infer.add_argument("--device", "--gpus", dest="device", default=None, help="auto, cpu or cuda[:N]")
    return parser


def run_train(args) -> None:
    config_path = args.config or (DEFAULT_CONFIG if os.path.isfile(DEFAULT_CONFIG) else None)
    cfg = load_unmixing_config(config_path, {
        "name": args.name, "data.train": args.train, "data.val": args.val, "data.test": args.test,
        "data.key": args.key, "data.bands": args.bands, "train.epochs": args.epochs,
        "train.batch_size": args.batch_size, "train.lr": args.lr, "train.seed": args.seed})
    out_dir = args.out or os.path.join("experiments", "unmixing", cfg["name"])
    found = [path for path in (os.path.join(out_dir, "checkpoint", name) for name in ("interrupted.pth", "latest.pth"))
             if os.path.exists(path)]
    if not args.resume and found:
        newest = max(found, key=os.path.getmtime)
        raise UserError(f"{newest}: a run exists in {out_dir}; resume it with --resume {newest} or choose another --out")
    from core.distributed import distributed_session
    from pipeline.unmixing_train import train_unmixing
    # under torchrun each process joins the group here and takes its own GPU; alone, nothing changes
    with distributed_session(resolve_device(args.device or "auto")) as device:
        train_unmixing(cfg, out_dir, device, resume=args.resume)


def run_infer(args) -> int:
    from pipeline.unmixing_infer import infer_folders, newest_unmixing_checkpoint
    log = setup_logging()
    ckpt = args.ckpt or newest_unmixing_checkpoint()
    if os.path.isdir(ckpt):
        ckpt = newest_unmixing_checkpoint(ckpt)
    log.info("unmixing checkpoint: %s", ckpt)
    rgb = args.rgb if args.rgb or args.hsi else ["dataset/RGB"]
    tile = args.tile or UNMIXING_DEFAULTS["infer"]["tile"]
    overlap = args.overlap if args.overlap is not None else UNMIXING_DEFAULTS["infer"]["overlap"]
    if overlap >= tile:
        raise UserError(f"--overlap {overlap} must be smaller than --tile {tile}")
    result = infer_folders(ckpt, rgb, args.hsi, args.out, resolve_device(args.device or "auto"), tile=tile,
                           overlap=overlap, overwrite=args.overwrite, key=args.key,
                           save_reconstruction=not args.no_recon, tile_batch=args.tile_batch,
                           channels_last=args.channels_last,
                           color_match=args.color_match or UNMIXING_DEFAULTS["infer"]["color_match"])
    log.info("wrote %d abundance files to %s (%d already done, %d failed)", len(result["written"]), args.out,
             len(result["skipped"]), len(result["failed"]))
    for path, message in result["failed"]:
        print(f"failed: {message}", file=sys.stderr)
    return 1 if result["failed"] else 0


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.command == "train":
        run_train(args)
        return 0
    return run_infer(args)


if __name__ == "__main__":
    sys.exit(main())
