"""Stage-1 inference at collection scale: megapixels/s of `Unmixing.py infer`'s pipeline, as JSON lines.

    python bench/bench_infer.py [--images 4 --paper-images 1 --size 600 --repeats 2 --torchrun 2]

A folder of `--images` JPEGs of `--size` x `--size` (AID's 600 x 600; mosaics of the real AID tiles
in ../shared/data/paper/aid when present, smooth noise otherwise) goes through
`pipeline.unmixing_infer.infer_folders` (decode, tiles, blend, .mat and PNG writing) with the demo
and the paper network (random weights: the time does not depend on them). Settings:
  before:   the former defaults (one tile per pass, contiguous memory, decoding in the network's process);
  defaults: the current defaults of infer_folders (one tile per pass, channels-last, 1 decoding worker).
They alternate round after round in this process; the medians give the speed-up, and the largest
difference of the written abundances between them is printed. `--torchrun N` also times the CLI
alone and under `torchrun --nproc_per_node N` (one thread each) on the same folder.
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ubf.core.checkpoint import save_checkpoint  # noqa: E402
from ubf.data.matio import read_mat  # noqa: E402
from ubf.models.unmixing import build_unmixing_model  # noqa: E402
from ubf.pipeline.unmixing_config import load_unmixing_config  # noqa: E402
from ubf.pipeline.unmixing_infer import infer_folders  # noqa: E402

CONFIGS = {"demo": "config/demo_unmixing.json", "paper": "config/Chikusei_unmixing.json"}
# "before": issue 16's starting point (256 tiles, one per pass, contiguous, decoding in the network's process);
# "tiled": today's defaults but with 256 tiles; "defaults": each image whole (the reference's way), channels-last
SETTINGS = {"before": dict(tile=256, overlap=32, tile_batch=1, channels_last=False, workers=0),
            "tiled": dict(tile=256, overlap=32), "defaults": {}}
N_BANDS = 59


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def write_images(folder: str, count: int, size: int) -> None:
    os.makedirs(folder, exist_ok=True)
    tiles = sorted(glob.glob(os.path.join(ROOT, "..", "shared", "data", "paper", "aid", "*.jpg")))
    rng = np.random.default_rng(0)
    for i in range(count):
        if tiles:  # a mosaic of real remote-sensing tiles
            canvas = Image.new("RGB", (size, size))
            for j, (top, left) in enumerate((t, l) for t in range(0, size, 256) for l in range(0, size, 256)):
                canvas.paste(Image.open(tiles[(i * 7 + j) % len(tiles)]).convert("RGB"), (left, top))
        else:
            coarse = rng.random((size // 16, size // 16, 3))
            canvas = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        canvas.save(os.path.join(folder, f"img{i:03d}.jpg"), quality=90)


def write_checkpoint(path: str, config: str) -> None:
    cfg = load_unmixing_config(os.path.join(ROOT, CONFIGS[config]))
    torch.manual_seed(0)
    model = build_unmixing_model(cfg["model"], 3, N_BANDS)
    save_checkpoint({"stage": "unmixing", "model": model.state_dict(), "config": cfg, "out_bands": N_BANDS,
                     "in_channels": 3, "band_indices": [53, 33, 14], "wavelengths": None, "epoch": 0}, path)


def abundances(folder: str) -> dict:
    return {os.path.basename(p): read_mat(p)["Abu"] for p in sorted(glob.glob(os.path.join(folder, "*.mat")))}


def bench_settings(work: str, images: str, config: str, count: int, size: int, repeats: int) -> None:
    ckpt = os.path.join(work, f"{config}.pth")
    write_checkpoint(ckpt, config)
    times = {name: [] for name in SETTINGS}
    for _ in range(repeats):
        for name, options in SETTINGS.items():
            out = os.path.join(work, f"out-{config}-{name}")
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            infer_folders(ckpt, [images], None, out, torch.device("cpu"), **options)
            times[name].append(time.perf_counter() - started)
    first, second = (abundances(os.path.join(work, f"out-{config}-{n}")) for n in ("before", "tiled"))
    difference = max(float(np.abs(first[k] - second[k]).max()) for k in first)
    whole = abundances(os.path.join(work, f"out-{config}-defaults"))
    tiles_vs_whole = max(float(np.abs(first[k] - whole[k]).max()) for k in first)
    megapixels = count * size * size / 1e6
    speed = {name: megapixels / statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        emit(bench="infer", config=config, setting=name, options=SETTINGS[name] or "infer_folders defaults",
             images=count, size=size, median_s=round(statistics.median(values), 2),
             seconds=[round(v, 2) for v in values], megapixels_per_s=round(speed[name], 4),
             threads=torch.get_num_threads(), load_avg=os.getloadavg()[0])
    emit(bench="infer_speedup", config=config, speedup=round(speed["defaults"] / speed["before"], 2),
         tiled_speedup=round(speed["tiled"] / speed["before"], 2), max_abs_difference_tiled=difference,
         max_abs_difference_whole_vs_tiles=tiles_vs_whole)


def bench_network(config: str, size: int, rounds: int) -> None:
    """`tile_infer` alone (no decoding, no writing) on one image: one tile per pass and contiguous
    memory against 4 tiles per pass, channels-last, and both, interleaved."""
    from ubf.pipeline.unmixing_infer import tile_infer
    cfg = load_unmixing_config(os.path.join(ROOT, CONFIGS[config]))
    torch.manual_seed(0)
    model = build_unmixing_model(cfg["model"], 3, N_BANDS).eval()
    image = torch.rand(3, size, size)
    channels_last = build_unmixing_model(cfg["model"], 3, N_BANDS).eval()
    channels_last.load_state_dict(model.state_dict())
    channels_last.to(memory_format=torch.channels_last)
    variants = {"before": (model, 1, False, 256), "batch4": (model, 4, False, 256),
                "channels_last": (channels_last, 1, True, 256), "batch4+channels_last": (channels_last, 4, True, 256),
                "whole+channels_last": (channels_last, 1, True, 0)}
    times, outputs = {name: [] for name in variants}, {}
    for _ in range(rounds):
        for name, (net, batch, channels_last, tile) in variants.items():
            started = time.perf_counter()
            outputs[name] = tile_infer(net, image, torch.device("cpu"), tile=tile, overlap=32, tile_batch=batch,
                                       channels_last=channels_last)
            times[name].append(time.perf_counter() - started)
    for name, values in times.items():
        emit(bench="infer_network", config=config, setting=name, size=size, rounds=rounds,
             median_s=round(statistics.median(values), 2), seconds=[round(v, 2) for v in values],
             megapixels_per_s=round(size * size / 1e6 / statistics.median(values), 4), load_avg=os.getloadavg()[0])
    emit(bench="infer_network_speedup", config=config, of="channels_last over before (256 tiles)",
         speedup=round(statistics.median(times["before"]) / statistics.median(times["channels_last"]), 2),
         max_abs_difference=max(float((outputs["before"] - outputs[n]).abs().max()) for n in variants
                                if variants[n][3]))
    emit(bench="infer_network_speedup", config=config, of="whole image + channels_last (the defaults) over before",
         speedup=round(statistics.median(times["before"]) / statistics.median(times["whole+channels_last"]), 2),
         max_abs_difference_whole_vs_tiles=float((outputs["before"] - outputs["whole+channels_last"]).abs().max()))


def bench_torchrun(work: str, images: str, count: int, size: int, processes: int) -> None:
    """The CLI in one process (2 threads) against torchrun with `processes` processes (1 thread each)."""
    ckpt = os.path.join(work, "demo.pth")
    cli = [os.path.join(ROOT, "Unmixing.py"), "infer", "--ckpt", ckpt, "--rgb", images, "--device", "cpu"]
    runs = {
        "one_process": ([sys.executable] + cli, {"OMP_NUM_THREADS": str(torch.get_num_threads())}),
        f"torchrun_{processes}": ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   f"--nproc_per_node={processes}"] + cli, {"OMP_NUM_THREADS": "1"}),
    }
    for name, (command, env) in runs.items():
        out = os.path.join(work, f"cli-{name}")
        started = time.perf_counter()
        subprocess.run(command + ["--out", out], check=True, env={**os.environ, **env}, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elapsed = time.perf_counter() - started
        with open(os.path.join(out, "manifest.jsonl")) as f:
            entries = sum(1 for line in f if line.strip())
        emit(bench="infer_cli", config="demo", run=name, images=count, manifest_entries=entries,
             seconds_incl_startup=round(elapsed, 2), megapixels_per_s=round(count * size * size / 1e6 / elapsed, 4),
             load_avg=os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images for the demo network")
    parser.add_argument("--paper-images", type=int, default=1, help="images for the paper network")
    parser.add_argument("--size", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("demo", "paper"), action="append")
    parser.add_argument("--network-rounds", type=int, default=0,
                        help="also time tile_infer alone on one --size image, this many rounds per network")
    parser.add_argument("--torchrun", type=int, default=0, help="also time torchrun with N processes (demo net)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    emit(bench="machine", nproc=os.cpu_count(), torch=torch.__version__, threads=args.threads,
         load_avg=[round(v, 2) for v in os.getloadavg()])
    for config in (args.only or ["demo", "paper"]) if args.network_rounds else []:
        bench_network(config, args.size, args.network_rounds)
    if args.network_rounds and not args.images:
        return
    with tempfile.TemporaryDirectory() as work:
        for config in args.only or ["demo", "paper"]:
            count = args.images if config == "demo" else args.paper_images
            images = os.path.join(work, f"images-{count}")
            if not os.path.isdir(images):
                write_images(images, count, args.size)
            bench_settings(work, images, config, count, args.size, args.repeats)
        if args.torchrun:
            images = os.path.join(work, f"images-{args.images}")
            if not os.path.isdir(images):
                write_images(images, args.images, args.size)
            if not os.path.exists(os.path.join(work, "demo.pth")):
                write_checkpoint(os.path.join(work, "demo.pth"), "demo")
            bench_torchrun(work, images, args.images, args.size, args.torchrun)
    emit(bench="load_after", load_avg=[round(v, 2) for v in os.getloadavg()])


if __name__ == "__main__":
    main()
