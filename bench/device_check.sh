#!/usr/bin/env bash
# The GPU check of issue 23 in one command (docs/benchmarks.md, "GPU device check (issue 23)").
# Runs bench/device_check.py from the repository root with the reference UNet of .scratch/ref/unet.py
# when that git-ignored file is there; the JSON lines, stderr and nvidia-smi's view of the card go to
# $OUT (the device tool's folder; /tmp/device_check elsewhere). Extra arguments go to device_check.py,
# e.g. `bash bench/device_check.sh --budget-s 200 --only unet_step torchrun`.
set -u
cd "$(dirname "$0")/.." || exit 1
out="${OUT:-/tmp/device_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
reference=()
if [ -f .scratch/ref/unet.py ]; then
    reference=(--reference .scratch/ref/unet.py)
else
    echo "device_check.sh: no .scratch/ref/unet.py: the reference comparison is left out" >&2
fi
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,temperature.gpu \
    --format=csv > "$out/nvidia-smi.csv" 2>&1 || true
"$python" bench/device_check.py ${reference[@]+"${reference[@]}"} --jsonl "$out/device_check.jsonl" "$@" \
    2> >(tee "$out/device_check.stderr" >&2)
status=$?
cat "$out/nvidia-smi.csv" >&2
exit $status
