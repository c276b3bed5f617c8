"""Stage-1 speed: training throughput and tiled-inference megapixels/s with peak memory, one JSON line each.

Every measurement runs in its own subprocess, so its peak resident memory (`ru_maxrss`) is its own.
Training: synthetic 64 x 64 batches (data loading excluded) through the real model, loss and Adam,
at the paper config (config/Chikusei_unmixing.json, batch 16) and the demo config (config/demo_unmixing.json,
batch 8). Inference: the tiling of `pipeline.unmixing_infer.tile_infer` (256-pixel tiles, 32 overlap)
on a 4000 x 4000 image with the demo network and a 1024 x 1024 image with the paper network, under
speed options: `no_grad` against `inference_mode` (what tile_infer uses), channels-last memory
format, and several tiles per forward pass ("batch"). A first line describes the machine and its
load; a last line gives the load after. Usage:
    python bench/bench_unmixing.py                       # everything, about 10 min on a 2-core CPU
    python bench/bench_unmixing.py --only train --train-seconds 10
    python bench/bench_unmixing.py --only infer --demo-size 2000 --paper-size 512
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {"paper": "config/Chikusei_unmixing.json", "demo": "config/demo_unmixing.json"}
N_BANDS = 59  # the Chikusei subset


def machine() -> dict:
    """nproc, CPU model, torch version, load average: what the numbers came from."""
    import torch
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    info = {"bench": "machine", "nproc": os.cpu_count(), "cpu": model, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name(0)
    return info


def load_model(config: str, device):
    from ubf.models.unmixing import build_unmixing_model
    from ubf.pipeline.unmixing_config import load_unmixing_config
    cfg = load_unmixing_config(os.path.join(ROOT, CONFIGS[config]))
    return cfg, build_unmixing_model(cfg["model"], 3, N_BANDS).to(device)


def peak_memory_mb(device) -> dict:
    import torch
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return out


def synchronize(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_train(spec: dict) -> dict:
    """Steps of forward + loss + backward + Adam on random (N, 3, crop, crop) -> (N, 59, crop, crop) batches."""
    import torch
    from ubf.core.device import resolve_device
    from ubf.models.losses import unmixing_loss
    device = resolve_device(spec["device"])
    torch.manual_seed(0)
    cfg, model = load_model(spec["config"], device)
    batch, crop = cfg["train"]["batch_size"], spec["crop"]
    memory_format = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["train"]["lr"])
    x = torch.rand(batch, 3, crop, crop, device=device).contiguous(memory_format=memory_format)
    y = torch.rand(batch, N_BANDS, crop, crop, device=device)

    def step():
        _, recon = model(x)
        loss, _ = unmixing_loss(recon, y, model.decoder.weight, cfg["loss"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocations, kernel selection
    synchronize(device)
    steps, started = 0, time.perf_counter()
    while steps < spec["min_steps"] or time.perf_counter() - started < spec["seconds"]:
        step()
        steps += 1
    synchronize(device)
    elapsed = time.perf_counter() - started
    return {"batch": batch, "steps": steps, "step_s": round(elapsed / steps, 4),
            "patches_per_s": round(steps * batch / elapsed, 2),
            "parameters": sum(p.numel() for p in model.parameters()), **peak_memory_mb(device)}


def tiled(model, image, device, tile: int, overlap: int, batch: int = 1, channels_last: bool = False):
    """`tile_infer`'s tiling and blending, with `batch` tiles per forward pass and an optional memory format.

    Tiles of an image larger than `tile` are all full-size (tile_starts ends at size - tile), so they
    stack into one batch; the output equals tile_infer's (checked by `check_equivalence`).
    """
    import torch
    from ubf.pipeline.unmixing_infer import blend_window, tile_starts
    _, height, width = image.shape
    boxes = [(top, left) for top in tile_starts(height, tile, overlap) for left in tile_starts(width, tile, overlap)]
    total = torch.zeros(model.num_endmembers, height, width)
    weight_sum = torch.zeros(height, width)
    for first in range(0, len(boxes), batch):
        group = boxes[first:first + batch]
        patches = torch.stack([image[:, t:t + tile, l:l + tile] for t, l in group]).to(device)
        if channels_last:
            patches = patches.contiguous(memory_format=torch.channels_last)
        abundances = model.abundances(patches).float().cpu()
        for (top, left), abu in zip(group, abundances):
            weights = blend_window(abu.shape[1], abu.shape[2], overlap)
            total[:, top:top + tile, left:left + tile] += abu * weights
            weight_sum[top:top + tile, left:left + tile] += weights
    return total / weight_sum


def check_equivalence(device) -> float:
    """Largest difference between `tiled` (batched, channels-last) and the pipeline's tile_infer."""
    import torch
    from ubf.models.unmixing import UnmixingAutoencoder
    from ubf.pipeline.unmixing_infer import tile_infer
    torch.manual_seed(0)
    model = UnmixingAutoencoder(out_bands=8, widths=(8, 8), n_blocks=1).to(device).eval()
    image = torch.rand(3, 150, 170)
    reference = tile_infer(model, image, device, tile=64, overlap=16)
    with torch.inference_mode():
        ours = tiled(model.to(memory_format=torch.channels_last), image, device, 64, 16, batch=4, channels_last=True)
    return float((ours - reference).abs().max())


def measure_infer(spec: dict) -> dict:
    """Tiled inference of a (3, size, size) image; megapixels of input per second and peak memory."""
    import torch
    from ubf.core.device import resolve_device
    device = resolve_device(spec["device"])
    torch.manual_seed(0)
    _, model = load_model(spec["config"], device)
    model.eval()
    if spec["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    size = spec["size"]
    image = torch.rand(3, size, size)
    baseline = peak_memory_mb(device)["peak_rss_mb"]  # process with torch, model and the input image
    grad_mode = torch.inference_mode if spec["grad"] == "inference_mode" else torch.no_grad
    with grad_mode():
        model.abundances(torch.rand(spec["batch"], 3, spec["tile"], spec["tile"], device=device))  # warm-up
        synchronize(device)
        started = time.perf_counter()
        out = tiled(model, image, device, spec["tile"], spec["overlap"], spec["batch"], spec["channels_last"])
        synchronize(device)
        elapsed = time.perf_counter() - started
    assert torch.allclose(out.sum(0), torch.ones(()), atol=1e-4)
    return {"seconds": round(elapsed, 2), "megapixels_per_s": round(size * size / 1e6 / elapsed, 4),
            "rss_before_mb": baseline, **peak_memory_mb(device)}


def run_child(spec: dict) -> dict:
    """One measurement in a fresh interpreter; returns its JSON result."""
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        return {**spec, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return {**spec, **json.loads(done.stdout.strip().splitlines()[-1])}


def plan(args) -> list[dict]:
    specs = []
    if args.only in (None, "train"):
        for config in ("demo", "paper"):
            for channels_last in (False, True):
                specs.append({"bench": "unmixing_train", "config": config, "crop": 64, "channels_last": channels_last,
                              "seconds": args.train_seconds, "min_steps": 2, "device": args.device})
    if args.only in (None, "infer"):
        options = [("no_grad", 1, False), ("inference_mode", 1, False), ("inference_mode", 1, True),
                   ("inference_mode", 4, False), ("inference_mode", 4, True)]
        paper_options = [options[1], options[2], options[3]]  # the paper network is ~50x slower: fewer options
        for config, size, chosen in (("demo", args.demo_size, options), ("paper", args.paper_size, paper_options)):
            for grad, batch, channels_last in chosen:
                specs.append({"bench": "unmixing_infer", "config": config, "size": size, "tile": args.tile,
                              "overlap": args.overlap, "grad": grad, "batch": batch, "channels_last": channels_last,
                              "device": args.device})
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("train", "infer"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--train-seconds", type=float, default=15.0, help="timed seconds per training measurement")
    parser.add_argument("--demo-size", type=int, default=4000, help="image side for the demo network")
    parser.add_argument("--paper-size", type=int, default=1024, help="image side for the paper network")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = measure_train(spec) if spec["bench"] == "unmixing_train" else measure_infer(spec)
        print(json.dumps(result), flush=True)
        return
    print(json.dumps(machine()), flush=True)
    if args.only in (None, "infer"):
        from ubf.core.device import resolve_device
        print(json.dumps({"bench": "tiling_check", "max_abs_diff_vs_tile_infer":
                          check_equivalence(resolve_device(args.device))}), flush=True)
    for spec in plan(args):
        print(json.dumps(run_child(spec)), flush=True)
    print(json.dumps({"bench": "machine_after", "load_avg": [round(x, 2) for x in os.getloadavg()]}), flush=True)


if __name__ == "__main__":
    main()
