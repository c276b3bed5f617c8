"""Dataset preparation: official downloads -> training-ready folders, one command per dataset.

    python -m ubf.data.prepare DATASET --src PATH --out DIR [--size N] [--stride S] [--split ...] [--overwrite]

DATASET is chikusei, hsrs-sc, arad, harvard, unmixing-benchmark, scene (any ENVI, GeoTIFF or .mat
scene, or a folder of them) or rgb (docs/datasets.md lists the downloads). Hyperspectral crops go to DIR/trains, DIR/evals and DIR/tests (the reference's folder
names) as .mat files with `Y` (H, W, C) float32 and `wavelengths` (C,) in nm; RGB images go to
DIR/<class>/. Two files record the run: DIR/prepare_<dataset>.json (the settings) and
DIR/manifest_<dataset>.csv (one row per output: source file, crop window, split, class).

Re-running the same command resumes: outputs already on disk are skipped. A different command into
the same folder, or outputs this folder has no record of, are refused unless --overwrite, which
removes the previous run's outputs (only those its manifest lists) and writes everything again.

Nothing outside DIR is ever touched: a manifest entry or a planned output whose path leads out of DIR
or through a symbolic link below it is refused before anything is removed or written, and a listed
output that is itself a link is not removed (this tool never writes one). A manifest line that is not
a complete row (a torn last line) is skipped with a warning. One run writes into DIR at a time.
"""
import argparse
import csv
import json
import logging
import os

from ubf.core.progress import tqdm  # a line every few percent when not on a terminal

from ubf.core.errors import OneLineParser, UserError, cli_main
from ubf.core.fs import check_output_path
from ubf.core.runlock import RunLock
from ubf.core.version import add_version_argument
from ubf.core.logs import setup_logging
from ubf.core.validate import FLOAT_POSITIVE, INT_ANY, INT_POSITIVE, flag
from ubf.data.prepare_hsi import READERS, HsiOptions, HsiWriter, plan_hsi
from ubf.data.prepare_rgb import FORMATS, MODES, RgbWriter, plan_rgb
from ubf.data.splits import parse_split

log = logging.getLogger("hsisyn")
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's Image.MAX_IMAGE_PIXELS: its decompression-bomb limit for one image

DATASETS = tuple(READERS) + ("rgb",)
HSI_FORMATS = ("mat", "mat73")
MANIFEST_COLUMNS = ("output", "source", "split", "class", "row", "col", "height", "width")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m ubf.data.prepare", description="Turn a downloaded dataset into training-ready crops.",
        epilog="Splits are spatially disjoint: by region for single scenes, by file for collections "
               "(see docs/datasets.md).")
    add_version_argument(parser)
    parser.add_argument("dataset", choices=DATASETS, metavar="DATASET", help=" | ".join(DATASETS))
    parser.add_argument("--src", required=True, help="the downloaded file or folder")
    parser.add_argument("--out", default=None, help="output folder (default: dataset, or dataset/RGB for rgb)")
    parser.add_argument("--size", type=flag(INT_POSITIVE), default=None,
                        help="crop side in pixels (default: 128 for chikusei, the authors' stored crops; 256 otherwise)")
    parser.add_argument("--stride", type=flag(INT_POSITIVE), default=None, help="step between crops (default: --size, no overlap)")
    parser.add_argument("--region", type=flag(INT_POSITIVE), default=None,
                        help="side of the split regions of a scene (default: --size, or 2 x --size when "
                             "--stride < --size)")
    parser.add_argument("--split", default=None,
                        help="fractions, e.g. train=0.8,val=0.1,test=0.1 or test (defaults: chikusei "
                             "train=0.8,val=0.1,test=0.1; hsrs-sc test; rgb none; others train=0.8,val=0.1,test=0.1)")
    parser.add_argument("--split-by", choices=("file", "region"), default=None,
                        help="deal whole files or regions of each scene to the splits (default: region for "
                             "chikusei, unmixing-benchmark and scene, file otherwise)")
    parser.add_argument("--seed", type=flag(INT_ANY), default=0, help="seed of the split shuffle (default 0)")
    parser.add_argument("--bands", choices=("paper", "all"), default=None,
                        help="chikusei: the paper's 59 bands (8-66, about 399-698 nm) or all 128")
    parser.add_argument("--scale", default=None,
                        help="factor for stored values (default auto: integers are reflectance x 10000)")
    parser.add_argument("--key", default=None, help="name of the cube variable, when it is not the usual one")
    parser.add_argument("--wavelength-range", type=flag(FLOAT_POSITIVE), nargs=2, metavar=("FIRST", "LAST"),
                        default=None,
                        help="unmixing-benchmark, scene: evenly spaced band centres (nm) for files that store none")
    parser.add_argument("--rgb-mode", choices=MODES, default=None,
                        help="rgb: resize the centred square (default), crop the centre, or cut tiles")
    parser.add_argument("--format", choices=tuple(FORMATS) + HSI_FORMATS, default=None,
                        help="rgb: png (default) or jpg; hyperspectral datasets: mat (default, MATLAB v5) or mat73 "
                             "(MATLAB v7.3 / HDF5), the same keys Y and wavelengths")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier preparation in --out")
    return parser


# Default crop sides: the authors' Chikusei crops are 128 x 128 (../shared/data/paper); the others 256.
DEFAULT_SIZES = {"chikusei": 128}

# Flags that only some datasets read: giving one to another dataset is a mistake worth a message.
ONLY_FOR = {"bands": ("chikusei", "hsrs-sc"), "wavelength_range": ("unmixing-benchmark", "scene"),
            "rgb_mode": ("rgb",), "scale": tuple(READERS), "key": tuple(READERS),
            "split_by": tuple(READERS), "region": tuple(READERS)}


def resolve_settings(args) -> dict:
    """Check the arguments and fill in the dataset's defaults; the result is what a run is compared by."""
    for name, datasets in ONLY_FOR.items():
        if getattr(args, name) is not None and args.dataset not in datasets:
            raise UserError(f"--{name.replace('_', '-')} applies to {', '.join(datasets)}, not {args.dataset}")
    if args.size is None:
        args.size = DEFAULT_SIZES.get(args.dataset, 256)
    if args.size < 1:
        raise UserError(f"--size must be positive, got {args.size}")
    if args.dataset == "rgb" and args.size * args.size > MAX_IMAGE_PIXELS:
        raise UserError(f"--size {args.size}: an output of {args.size} x {args.size} pixels "
                        f"({3 * args.size ** 2 / 2 ** 30:.1f} GiB as 8-bit RGB) is beyond Pillow's limit of "
                        f"{MAX_IMAGE_PIXELS:,} pixels for one image; use --size {int(MAX_IMAGE_PIXELS ** 0.5)} or less")
    stride = args.stride or args.size
    if stride < 1:
        raise UserError(f"--stride must be positive, got {stride}")
    region = args.region or (args.size if stride >= args.size else 2 * args.size)
    if region < args.size:
        raise UserError(f"--region {region} is smaller than --size {args.size}")
    scale = args.scale or "auto"
    if scale != "auto":
        try:
            if not float(scale) > 0:
                raise ValueError
        except ValueError:
            raise UserError(f"--scale must be 'auto' or a positive number, got '{scale}'") from None
    settings = {"dataset": args.dataset, "src": os.path.abspath(args.src), "size": args.size, "stride": stride,
                "seed": args.seed}
    if args.format is not None and (args.format in HSI_FORMATS) != (args.dataset != "rgb"):
        allowed = ", ".join(HSI_FORMATS if args.dataset != "rgb" else FORMATS)
        raise UserError(f"--format {args.format} does not apply to {args.dataset} (use {allowed})")
    if args.dataset == "rgb":
        text = args.split or "none"
        settings.update(split=None if text == "none" else parse_split(text), rgb_mode=args.rgb_mode or "resize",
                        format=args.format or "png")
    else:
        reader = READERS[args.dataset]
        settings.update(split=parse_split(args.split or reader.default_split),
                        split_by=args.split_by or reader.split_by, region=region, bands=args.bands or "paper",
                        scale=scale, key=args.key,
                        wavelength_range=list(args.wavelength_range) if args.wavelength_range else None)
        if args.format == "mat73":  # recorded only when not the default, so earlier runs' records still match
            settings["format"] = "mat73"
    return json.loads(json.dumps(settings))


def plan(settings: dict):
    """(planned crops, writer) for the settings."""
    s = settings
    if s["dataset"] == "rgb":
        crops = plan_rgb(s["src"], s["split"], s["seed"], s["size"], s["stride"], s["rgb_mode"], s["format"])
        return crops, RgbWriter(s["rgb_mode"], s["size"], s["format"])
    options = HsiOptions(s["bands"], s["scale"], s["key"], tuple(s["wavelength_range"] or ()) or None)
    reader = READERS[s["dataset"]](options)
    crops = plan_hsi(reader, s["src"], s["split"], s["split_by"], s["seed"], s["size"], s["stride"], s["region"])
    return crops, HsiWriter(reader, s.get("format", "mat"))


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k} {old.get(k)} (now {new.get(k)})" for k in keys)


def read_manifest(path: str) -> list[dict]:
    """The complete rows of a manifest; a row with missing columns or an unfinished last line is skipped."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    rows = []
    try:
        header = next(csv.reader(lines[:1]))
    except (StopIteration, csv.Error):
        header = []
    if header != list(MANIFEST_COLUMNS):
        log.warning("%s: no manifest header; its rows are ignored", path)
        return []
    for number, line in enumerate(lines[1:], 2):
        try:
            values = next(csv.reader([line]))
        except (StopIteration, csv.Error):
            values = []
        if not line.endswith("\n") or len(values) != len(MANIFEST_COLUMNS):
            if line.strip():
                log.warning("%s: line %d is not a complete row (left by a crash?); ignored", path, number)
            continue
        rows.append(dict(zip(MANIFEST_COLUMNS, values)))
    return rows


def write_manifest(path: str, crops) -> None:
    """CSV of the given crops, written to a temporary file and renamed."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        for c in crops:
            writer.writerow([c.output, c.source_rel, c.split, c.label, c.row, c.col, c.height, c.width])
    os.replace(tmp, path)


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _inside(out: str, relative: str) -> str:
    """The path of output `relative` below `out`: refused when it leads outside `out`, or through a
    symbolic link to a folder below `out` (writing or removing there would touch another folder)."""
    path = os.path.normpath(os.path.join(out, relative))
    if os.path.isabs(relative) or \
            os.path.commonpath([os.path.abspath(out), os.path.abspath(path)]) != os.path.abspath(out) or \
            os.path.abspath(path) == os.path.abspath(out):
        raise UserError(f"manifest entry '{relative}' points outside {out}")
    folder = out
    for part in os.path.relpath(path, out).split(os.sep)[:-1]:
        folder = os.path.join(folder, part)
        if os.path.islink(folder):
            raise UserError(f"{folder}: is a symbolic link; prepare writes and removes files only inside {out}, "
                            "never through a link (remove the link or choose another --out)")
    return path


def remove_previous(out: str, manifest: str) -> int:
    """Delete the outputs an earlier run's manifest lists (nothing else); return how many.

    Every entry is checked first (`_inside`), so a bad one stops the removal before any file goes."""
    paths = [_inside(out, row["output"]) for row in read_manifest(manifest)]
    removed = 0
    for path in paths:
        if os.path.islink(path):
            log.warning("%s: a symbolic link where the manifest lists an output; left alone", path)
        elif os.path.isfile(path):
            os.remove(path)
            removed += 1
    return removed


def remove_empty_folders(out: str, keep_root: bool) -> None:
    """Remove the empty sub-folders (split, class) a failed run created below `out`, and `out` unless kept."""
    for root, _, _ in sorted(os.walk(out), key=lambda entry: -len(entry[0])):
        if (root != out or not keep_root) and os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)


def prepare(settings: dict, out: str, overwrite: bool = False) -> dict:
    """Plan, check against an earlier run in `out`, write what is missing; return counts.

    `out` is locked for the run; a run that fails in a folder it created leaves no folder behind."""
    out_existed = os.path.isdir(out)
    try:
        with RunLock(out, f"python -m ubf.data.prepare {settings['dataset']}"):
            return _prepare(settings, out, overwrite, out_existed)
    except BaseException:
        if not out_existed and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)
        raise


def _prepare(settings: dict, out: str, overwrite: bool, out_existed: bool) -> dict:
    dataset = settings["dataset"]
    settings_path = os.path.join(out, f"prepare_{dataset}.json")
    manifest_path = os.path.join(out, f"manifest_{dataset}.csv")
    previous = None
    if os.path.isfile(settings_path):
        try:
            with open(settings_path) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            if not overwrite:
                raise UserError(f"{settings_path}: unreadable record of an earlier run; "
                                "pass --overwrite to start again") from None
            previous = {"unreadable": True}
    crops, writer = plan(settings)
    paths = [_inside(out, c.output) for c in crops]
    if previous is not None and previous != settings:
        if not overwrite:
            raise UserError(f"{out} was prepared for {dataset} with other settings "
                            f"({_differences(previous, settings)}); pass --overwrite to replace it "
                            "or choose another --out")
        log.info("--overwrite: removed %d outputs of the earlier %s run", remove_previous(out, manifest_path), dataset)
    existing = [p for p in paths if os.path.exists(p)]
    if existing and previous is None and not overwrite:
        raise UserError(f"{existing[0]} exists and {out} holds no record of writing it ({len(existing)} such "
                        "files); pass --overwrite to replace them or choose another --out")
    os.makedirs(out, exist_ok=True)
    _write_json(settings_path, settings)
    written, skipped, written_now = 0, 0, []
    try:
        for crop, path in zip(tqdm(crops, desc=f"preparing {dataset}", unit="file"), paths):
            if os.path.exists(path) and not overwrite:
                skipped += 1
                continue
            writer.write(crop, path)
            written_now.append(path)
            written += 1
    except UserError:
        # bad input found part way (NaN in the source, a corrupt image): no partial output of this run stays
        for path in written_now:
            if os.path.isfile(path):
                os.remove(path)
        if previous is None:
            for path in (settings_path, manifest_path):
                if os.path.isfile(path):
                    os.remove(path)
            remove_empty_folders(out, keep_root=out_existed)
            settings_path = None
        raise
    finally:
        writer.close()
        if settings_path is not None:
            write_manifest(manifest_path, [c for c, p in zip(crops, paths) if os.path.exists(p)])
    per_split = {}
    for name in ("train", "val", "test", ""):
        count = sum(1 for crop in crops if crop.split == name)
        if count:
            per_split[name or "all"] = count
    log.info("%s: wrote %d, kept %d already there; %s; manifest %s", dataset, written, skipped,
             ", ".join(f"{k} {v}" for k, v in per_split.items()), manifest_path)
    return {"written": written, "skipped": skipped, "per_split": per_split, "manifest": manifest_path}


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    settings = resolve_settings(args)
    out = args.out or ("dataset/RGB" if args.dataset == "rgb" else "dataset")
    check_output_path(out)
    return prepare(settings, out, args.overwrite)


if __name__ == "__main__":
    main()
