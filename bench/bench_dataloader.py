"""DataLoader workers for DDPM training on the CPU: wall time of `Diffusion.py -p train` with 0 vs N workers.

Prints one JSON line per setting. Pinned memory only matters when copying to a GPU, so it is not
measured here. Usage (abundance files from `Unmixing.py infer`, e.g. the demo's):
    python bench/bench_dataloader.py --data experiments/demo/abundances --steps 300 --workers 0 2
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of abundance .mat files")
    parser.add_argument("--config", default=os.path.join(ROOT, "config", "demo_DDPM.json"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, os.path.join(ROOT, "Diffusion.py"), "-p", "train", "-c", args.config,
                       "--data", args.data, "--out", out, "--n-iter", str(args.steps), "--workers", str(workers),
                       "--device", "cpu"]
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
        print(json.dumps({"bench": "ddpm_train_dataloader", "workers": workers, "steps": args.steps,
                          "seconds_including_startup": round(seconds, 1),
                          "steps_per_s": round(args.steps / seconds, 2), "load_avg": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
