"""report.json (one flat dict of documented keys) and a Markdown summary, written into `--out DIR`.

Keys are flat strings (`F_p`, `baseline_dirichlet.F_p`, `timing.total_s`, ...) so the file loads into a
table or a dataframe without unpacking; docs/evaluation.md lists them. A finished report is not
replaced unless asked (`overwrite`).
"""
import json
import math
import os

from ubf.core.errors import UserError
from ubf.core.fs import atomic_output, ensure_folder


def check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse to write into a folder that already holds a report, unless `overwrite`."""
    existing = os.path.join(out_dir, "report.json")
    if os.path.exists(existing) and not overwrite:
        raise UserError(f"{existing}: exists already (use --overwrite to replace it)")
    ensure_folder(out_dir)


def _clean(value):
    """JSON-safe: floats stay floats (NaN/inf become null), numpy scalars become Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(report: dict, out_dir: str) -> str:
    """Write report.json atomically (temp file + rename)."""
    path = os.path.join(out_dir, "report.json")
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump({k: _clean(v) for k, v in report.items()}, f, indent=1, sort_keys=True)
        f.write("\n")
    return path


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def metric_table(report: dict, metrics: list[str], sets: list[tuple[str, str]]) -> list[str]:
    """Markdown table: one row per set (label, key prefix), one column per metric present anywhere."""
    present = [m for m in metrics if any(f"{prefix}{m}" in report for _, prefix in sets)]
    lines = ["| set | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for label, prefix in sets:
        if not any(f"{prefix}{m}" in report for m in present):
            continue
        lines.append(f"| {label} | " + " | ".join(_fmt(report.get(f"{prefix}{m}")) for m in present) + " |")
    return lines


def write_markdown(lines: list[str], out_dir: str, name: str = "summary.md") -> str:
    path = os.path.join(out_dir, name)
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return path
