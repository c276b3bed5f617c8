"""bench/device_check.py (issue 23) run small on the CPU, and the CUDA-path fixes it came with.

The GPU run itself needs a GPU; what can be checked here is that every section of the script runs and
reports (`--tiny`), that its numbers hang together (ratios, extrapolations, rates recomputed by hand from
the seconds it printed), that `torchrun --nproc_per_node 1` joins a process group and resumes exactly,
and that the fixes behave on the CPU stand-ins of the CUDA objects.
"""
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from ubf.core import checkpoint as checkpoint_module
from ubf.core.device import configure_backends
from ubf.core.distributed import torchrun_device
from ubf.core.errors import UserError
from ubf.core.logs import get_logger
from ubf.pipeline.diffusion_train import restore_generator, restore_scaler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "device_check.py")
ALL_SECTIONS = ("machine", "unet_step", "torchrun", "sampling", "sspn", "trainer", "estimates")


def load_script():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def by_name(records: list[dict], section: str) -> dict:
    return {r["name"]: r for r in records if r["section"] == section}


def stand_in_reference(tmp_path) -> str:
    """A `UNet` class in a file of its own, loaded by path as the authors' file is (the real one: set
    UBF_REFERENCE_UNET to a scratch copy of MSF-Diff's model/sr3_modules/unet.py)."""
    given = os.environ.get("UBF_REFERENCE_UNET")
    if given:
        return given
    path = tmp_path / "unet.py"
    path.write_text("from ubf.models.sr3_unet import SR3UNet\n\n\nclass UNet(SR3UNet):\n    pass\n")
    return str(path)


@pytest.mark.slow
def test_tiny_run_reports_every_section_and_resumes_exactly(tmp_path):
    jsonl = tmp_path / "check.jsonl"
    done = subprocess.run([sys.executable, SCRIPT, "--tiny", "--reference", stand_in_reference(tmp_path),
                           "--jsonl", str(jsonl)], cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    records = lines(done.stdout)
    assert records == lines(jsonl.read_text())  # the file holds the same lines
    assert not [r for r in records if "error" in r or "skipped" in r], done.stdout[-3000:]
    assert {r["section"] for r in records} >= set(ALL_SECTIONS)

    steps = by_name(records, "unet_step")
    assert set(steps) == {"reference", "ours", "ours_bf16", "ours_fp16", "ours_channels_last",
                          "ours_channels_last_bf16", "ours_channels_last_fp16"}
    for name, r in steps.items():
        assert r["seconds"] > 0 and 0 < r["ratio"] < math.inf and r["rounds"] == 2, r
        assert r["min_s"] <= r["seconds"] <= r["max_s"]
        assert r["ratio"] == pytest.approx(r["seconds"] / steps["reference"]["seconds"], rel=1e-3, abs=1e-4)
        assert r["peak_memory_mb"] is None and math.isfinite(r["last_loss"])  # CPU: no CUDA memory figure
    assert steps["reference"]["ratio"] == 1.0
    assert steps["ours_fp16"]["grad_scaler"] and not steps["ours_bf16"]["grad_scaler"]
    assert steps["ours_channels_last"]["channels_last"] and not steps["ours"]["channels_last"]
    assert steps["ours"]["sizes"]["parameters"] == steps["reference"]["sizes"]["parameters"]

    sampling = by_name(records, "sampling")
    ancestral, dpm = sampling["ancestral_2000"], sampling["dpmpp2m_20"]
    assert ancestral["extrapolated"] and not dpm["extrapolated"]
    assert ancestral["seconds"] == pytest.approx(ancestral["seconds_per_step"] * 2000, rel=1e-3)
    assert ancestral["samples_per_s"] == pytest.approx(2 / ancestral["seconds"], rel=1e-3)
    assert dpm["samples_per_s"] == pytest.approx(2 / dpm["seconds"], rel=1e-3)

    sspn = by_name(records, "sspn")
    side = sspn["infer_whole_image"]["sizes"]["image"]
    assert sspn["infer_whole_image"]["megapixels_per_s"] == pytest.approx(
        side * side / 1e6 / sspn["infer_whole_image"]["seconds"], rel=2e-3)
    assert sspn["train_step"]["crops_per_s"] == pytest.approx(2 / sspn["train_step"]["seconds"], rel=2e-3)

    resume = by_name(records, "torchrun")["resume_two_steps"]
    assert resume["backend"] == "gloo" and resume["process_group"] and resume["world_size"] == 1
    assert resume["one_process_logged"]
    assert resume["weights_moved_by_step_2"] > 1e-4  # the comparison could have failed
    assert resume["max_abs_difference"] == 0.0 and resume["resume_exact"]

    trainer = by_name(records, "trainer")["diffusion_train"]
    assert trainer["steps_per_s"] > 0 and trainer["seconds"] == pytest.approx(1 / trainer["steps_per_s"], rel=1e-3)

    estimates = by_name(records, "estimates")["paper_wall_times"]
    assert estimates["tiny"] and not estimates["paper_sizes"]
    assert estimates["stage2_hours_per_100k_steps_ours"] == pytest.approx(
        steps["ours"]["seconds"] * 1e5 / 3600, rel=1e-2, abs=1e-3)
    assert estimates["stage1_minutes_per_100_crops_40_epochs"] == pytest.approx(
        40 * 7 * sspn["train_step"]["seconds"] / 60, rel=1e-2, abs=1e-3)  # ceil(100 / 16) = 7 steps an epoch
    assert "device check on cpu" in done.stderr  # the closing table


def test_without_the_reference_the_comparison_lines_say_so(capsys):
    load_script().main(["--tiny", "--only", "unet_step", "--variants", "ours", "ours_bf16"])
    steps = by_name(lines(capsys.readouterr().out), "unet_step")
    assert steps["reference"]["skipped"] == "reference not given"
    for name in ("ours", "ours_bf16"):
        assert steps[name]["ratio"] is None and steps[name]["ratio_note"] == "reference not given"
        assert steps[name]["seconds"] > 0
    assert steps["ours_bf16"]["ratio_to_ours_fp32"] == pytest.approx(
        steps["ours_bf16"]["seconds"] / steps["ours"]["seconds"], rel=1e-3, abs=1e-4)


def test_a_missing_reference_is_one_error_line_and_the_rest_runs(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "unet.py"
    load_script().main(["--tiny", "--only", "unet_step", "sspn", "--variants", "ours", "--reference", str(missing)])
    records = lines(capsys.readouterr().out)
    steps = by_name(records, "unet_step")
    assert str(missing) in steps["reference"]["error"]
    assert steps["ours"]["seconds"] > 0 and steps["ours"]["ratio"] is None
    assert by_name(records, "sspn")["train_step"]["seconds"] > 0


def test_a_broken_section_reports_its_error_and_the_budget_stops_new_ones(capsys, monkeypatch):
    script = load_script()

    def broken(check):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(script.RUNNERS, "sspn", broken)
    script.main(["--tiny", "--only", "sspn", "estimates"])
    records = lines(capsys.readouterr().out)
    assert by_name(records, "sspn")["sspn"]["error"] == \
        "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "paper_wall_times" in by_name(records, "estimates")

    # machine is expected to take 2 s, sspn 3 s (--tiny): within a 2.5 s budget the first starts, the second not
    script.main(["--tiny", "--budget-s", "2.5", "--only", "machine", "sspn"])
    records = lines(capsys.readouterr().out)
    assert "skipped" not in by_name(records, "machine")["machine"]
    assert by_name(records, "sspn")["sspn"]["skipped"].startswith("budget:")


# the CUDA-path fixes, checked on their CPU stand-ins ---------------------------------------------------

def test_an_fp16_run_resumes_a_checkpoint_saved_without_gradient_scaling():
    # a run without fp16 scaling saves the disabled scaler's state, {}; an enabled scaler refuses it
    enabled = torch.amp.GradScaler("cpu", enabled=True)
    with pytest.raises(RuntimeError):
        enabled.load_state_dict({})
    fresh = torch.amp.GradScaler("cpu", enabled=True)
    restore_scaler(fresh, {})
    assert fresh.get_scale() == 65536.0  # a fresh scaler: torch's initial scale
    saved = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    resumed = torch.amp.GradScaler("cpu", enabled=True)
    restore_scaler(resumed, saved.state_dict())
    assert resumed.get_scale() == 1024.0 and resumed.state_dict()["growth_interval"] == 1


def test_a_noise_generator_state_from_another_device_restarts_from_a_seed():
    source = torch.Generator().manual_seed(3)
    torch.rand(5, generator=source)
    generator = torch.Generator()
    restore_generator(generator, source.get_state(), seed=11, path="I1_E0.pth")
    # same kind of device: the stream continues exactly
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=source))
    cuda_state = torch.zeros(16, dtype=torch.uint8)  # what a CUDA generator's get_state returns: seed + offset
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger, level = get_logger(), get_logger().level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # as train_diffusion sets it
    try:
        restore_generator(generator, cuda_state, seed=11, path="I1_E0.pth")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=torch.Generator().manual_seed(11)))
    assert len(messages) == 1 and "I1_E0.pth" in messages[0] and "another kind of device" in messages[0]


def test_rng_states_hold_only_this_process_gpu(monkeypatch):
    """Capture reads the current GPU's generator only; an older checkpoint's per-GPU list written on a
    machine with 8 GPUs restores on a machine with one (set_rng_state_all would index GPUs 1..7)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.full((16,), 7, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("read every GPU's state"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(int(state[0])))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("set every GPU's state"))
    state = checkpoint_module.capture_rng_state()
    assert torch.equal(state["cuda_device"], torch.full((16,), 7, dtype=torch.uint8)) and "cuda" not in state
    checkpoint_module.restore_rng_state(state)
    older = dict(state, cuda=[torch.full((16,), i, dtype=torch.uint8) for i in range(8)])
    del older["cuda_device"]
    checkpoint_module.restore_rng_state(older)
    assert calls == [7, 0]


def test_torchrun_processes_take_their_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert torchrun_device(torch.device("cuda")) == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert torchrun_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UserError, match="LOCAL_RANK 2 but only 2 CUDA devices"):
        torchrun_device(torch.device("cuda"))


def test_cudnn_benchmark_is_set_for_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    configure_backends(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is True
