"""Data safety of `Unmixing.py infer` (issue 24): a run killed at any moment resumes with a plain rerun,
every output is written exactly once, two writers never share a folder, NaN is never recorded as done,
and folder names of any kind give visible, selectable outputs.

Kills are real: the run goes on in a forked copy of this process, which sends itself SIGKILL at a chosen
point (no handler, no clean-up runs, as with `kill -9`); the parent then reruns the same call.
"""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from ubf.cli.unmixing import main as unmixing_main
from ubf.core.checkpoint import save_checkpoint
from ubf.core.logs import get_logger
from ubf.core.runlock import LOCK_NAME
from ubf.data.matio import read_mat
from ubf.models.unmixing import UnmixingAutoencoder
from ubf.pipeline import unmixing_infer
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS
from ubf.pipeline.unmixing_infer import infer_folders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")
IMAGES = 5


def tiny_checkpoint(path, nan_decoder=False) -> str:
    torch.manual_seed(0)
    cfg = json.loads(json.dumps(UNMIXING_DEFAULTS))
    cfg["model"].update({"widths": [8, 8], "n_blocks": 1})
    model = UnmixingAutoencoder(out_bands=6, widths=(8, 8), n_blocks=1)
    if nan_decoder:
        with torch.no_grad():
            model.decoder.weight[0, 0] = float("nan")
    save_checkpoint({"stage": "unmixing", "model": model.state_dict(), "config": cfg, "out_bands": 6,
                     "in_channels": 3, "band_indices": [5, 3, 1], "wavelengths": None, "epoch": 0}, str(path))
    return str(path)


def image_folder(folder, count=IMAGES, size=(16, 18)) -> str:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(os.path.join(folder, f"im{i}.png"))
    return str(folder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_safety")
    ckpt = tiny_checkpoint(root / "u.pth")
    images = image_folder(root / "rgb")
    straight = root / "straight"
    infer_folders(ckpt, [images], None, str(straight), CPU, workers=0)
    return ckpt, images, {p: read_mat(str(straight / p))["Abu"] for p in os.listdir(straight) if p.endswith(".mat")}


def killed_at(target: str, call: int, run, partial_line: bool = False) -> None:
    """Run `run()` in a forked child that SIGKILLs itself at call number `call` of unmixing_infer.`target`
    (before that call does anything; `partial_line`: after writing half of the manifest line)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            real, count = getattr(unmixing_infer, target), {"n": 0}

            def hooked(*args, **kwargs):
                count["n"] += 1
                if count["n"] == call:
                    if partial_line:
                        with open(args[0], "ab") as f:
                            f.write(json.dumps(args[1]).encode()[:40])
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)

            setattr(unmixing_infer, target, hooked)
            run()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the run was not killed"


def snapshot(out) -> dict:
    """Finished outputs: name -> (inode, mtime) of every visible .mat."""
    return {n: (os.stat(os.path.join(out, n)).st_ino, os.stat(os.path.join(out, n)).st_mtime_ns)
            for n in os.listdir(out) if n.endswith(".mat") and not n.startswith(".")}


@pytest.mark.parametrize("target, call, partial", [
    ("write_mat", 3, False),      # while writing the third file's temporary .mat
    ("append_entry", 2, True),    # half of the second manifest line written (a torn last line)
    ("append_entry", 4, False),   # temp files written, no line yet
    ("publish", 5, False),        # third file recorded but not yet renamed into place
    ("publish", 4, False),        # second .mat in place, its preview not
    ("publish", 2 * IMAGES, False),  # the last preview
])
def test_a_killed_run_resumes_with_a_plain_rerun_and_writes_every_file_once(setup, tmp_path, monkeypatch, target,
                                                                            call, partial):
    ckpt, images, expected = setup
    out = str(tmp_path / "abu")
    killed_at(target, call, lambda: infer_folders(ckpt, [images], None, out, CPU, workers=0), partial)
    before = snapshot(out)
    assert os.path.exists(os.path.join(out, LOCK_NAME))  # the dead run's lock, taken over below
    published = []
    real_publish = unmixing_infer.publish
    monkeypatch.setattr(unmixing_infer, "publish",
                        lambda tmp, path: (published.append(os.path.basename(path)), real_publish(tmp, path))[1])
    result = infer_folders(ckpt, [images], None, out, CPU, workers=0)  # the plain rerun
    assert result["failed"] == []
    mats = [n for n in published if n.endswith(".mat")]
    # each output published exactly once over the two runs: before the kill or by the rerun, never both
    assert sorted(list(before) + mats) == sorted(expected) and len(set(mats)) == len(mats)
    assert snapshot(out) == {**snapshot(out), **before}  # what the killed run finished is untouched
    for name, abundances in expected.items():
        assert np.array_equal(read_mat(os.path.join(out, name))["Abu"], abundances)
        assert os.path.isfile(os.path.join(out, "previews", name[:-4] + ".png"))
    leftovers = [n for folder in (out, os.path.join(out, "previews")) for n in os.listdir(folder) if n.startswith(".")]
    assert leftovers == []  # no temporary file, no lock
    lines = open(os.path.join(out, "manifest.jsonl"), "rb").read().splitlines()
    entries = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the torn line stays, ignored
        entries[entry["input"]] = entry
    assert sorted(os.path.basename(e["output"]) for e in entries.values()) == sorted(expected)
    # a third run does nothing
    again = infer_folders(ckpt, [images], None, out, CPU, workers=0)
    assert again["written"] == [] and len(again["skipped"]) == IMAGES


def test_a_torn_manifest_line_in_the_middle_is_skipped_not_fatal(setup, tmp_path):
    ckpt, images, expected = setup
    out = tmp_path / "abu"
    infer_folders(ckpt, [images], None, str(out), CPU, workers=0)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    os.remove(out / "im1.mat")  # its line is torn below: the file is done again, the others are kept
    lines[1] = lines[1][:30]
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    records, handler = [], logging.Handler()
    handler.emit = records.append  # the project's logger, whatever an earlier test did to pytest's capture
    get_logger().addHandler(handler)
    try:
        result = infer_folders(ckpt, [images], None, str(out), CPU, workers=0)
    finally:
        get_logger().removeHandler(handler)
    assert [os.path.basename(p) for p in result["written"]] == ["im1.mat"] and len(result["skipped"]) == IMAGES - 1
    assert any("line 2 is not a complete entry" in r.getMessage() for r in records)


def children_of(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie no reaper collected counts
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_kill_9_of_infer_leaves_no_decoding_worker_and_a_plain_rerun_finishes(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "u.pth")
    images = image_folder(tmp_path / "rgb", count=60, size=(64, 64))
    out = tmp_path / "abu"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    command = [sys.executable, os.path.join(ROOT, "Unmixing.py"), "infer", "--ckpt", ckpt, "--rgb", images,
               "--out", str(out), "--device", "cpu", "--workers", "1"]
    child = subprocess.Popen(command, cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # until a few files are done and the worker is decoding ahead
            if (out / "manifest.jsonl").is_file() and (out / "manifest.jsonl").read_text().count("\n") >= 2:
                break
            assert child.poll() is None, "infer ended before it could be killed"
            time.sleep(0.05)
        workers = children_of(child.pid)
        assert workers, "no decoding worker was started"
        child.kill()
        child.wait()
        for _ in range(200):
            if all(gone(pid) for pid in workers):
                break
            time.sleep(0.05)
        assert all(gone(pid) for pid in workers), "a decoding worker outlived its killed parent"
    finally:
        if child.poll() is None:
            child.kill()
    result = infer_folders(ckpt, [images], None, str(out), CPU, workers=0)
    assert result["failed"] == [] and len(result["written"]) + len(result["skipped"]) == 60
    assert sorted(n for n in os.listdir(out) if n.endswith(".mat")) == sorted(f"im{i}.mat" for i in range(60))
    assert not [n for n in os.listdir(out) if n.startswith(".")]


# two writers -----------------------------------------------------------------------------------------

def lock_held_by(folder, pid, job=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_NAME), "w") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "what": "Unmixing.py infer",
                   "started": "2026-01-01 00:00:00", "job": job}, f)


def test_a_second_infer_into_a_folder_in_use_is_refused_in_one_line(setup, tmp_path, capsys):
    ckpt, images, _ = setup
    out = tmp_path / "abu"
    lock_held_by(out, os.getppid())  # a live process that is not this one
    with pytest.raises(SystemExit) as exit_info:
        unmixing_main(["infer", "--ckpt", ckpt, "--rgb", images, "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {out}: in use by another Unmixing.py infer (process {os.getppid()}")
    assert sorted(os.listdir(out)) == [LOCK_NAME]  # nothing written


def test_the_processes_of_one_torchrun_job_share_the_folder_and_another_job_is_refused(setup, tmp_path, monkeypatch):
    from ubf.core.errors import UserError
    ckpt, images, _ = setup
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    out = tmp_path / "abu"
    lock_held_by(out, os.getppid(), job="job-a@127.0.0.1:29500")  # rank 0 of this job holds it
    result = infer_folders(ckpt, [images], None, str(out), CPU, workers=0)
    assert len(result["written"]) == len(range(1, IMAGES, 2))  # rank 1's share
    assert json.load(open(out / LOCK_NAME))["pid"] == os.getppid()  # rank 0's lock stays
    monkeypatch.setenv("MASTER_PORT", "29501")  # another job
    with pytest.raises(UserError, match="in use by another Unmixing.py infer"):
        infer_folders(ckpt, [images], None, str(out), CPU, workers=0)


# NaN, names and layouts ------------------------------------------------------------------------------

def test_nan_decoder_weights_give_no_file_recorded_as_done(setup, tmp_path, capsys):
    _, images, _ = setup
    ckpt = tiny_checkpoint(tmp_path / "nan.pth", nan_decoder=True)
    out = tmp_path / "abu"
    code = unmixing_main(["infer", "--ckpt", ckpt, "--rgb", images, "--out", str(out), "--device", "cpu"])
    assert code == 1
    assert "the reconstruction Y came out NaN/Inf; nothing written" in capsys.readouterr().err
    assert not [n for n in os.listdir(out) if n.endswith(".mat")]
    assert not (out / "manifest.jsonl").exists() or (out / "manifest.jsonl").read_text() == ""


def test_class_folders_of_any_name_give_visible_outputs_and_one_batch(setup, tmp_path):
    """A class folder that is not UTF-8 and one starting with '.' (which stage 2's listing hides) are
    inferred with the others; their outputs are visible and keep their class."""
    ckpt, _, _ = setup
    root = tmp_path / "collection"
    odd = os.path.join(os.fsencode(str(root)), b"caf\xe9")  # Latin-1 'cafe', not valid UTF-8
    os.makedirs(odd)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8) + 9).save(os.path.join(odd, b"x.png").decode("utf-8",
                                                                                                   "surrogateescape"))
    image_folder(root / ".hidden", count=1)
    image_folder(root / "plain", count=1)
    out = tmp_path / "abu"
    result = infer_folders(ckpt, [str(root)], None, str(out), CPU, workers=0)
    assert result["failed"] == [] and len(result["written"]) == 3
    from ubf.data.abundance_dataset import list_abundance_files
    from ubf.pipeline.class_labels import read_class
    listed = list_abundance_files(str(out))
    assert len(listed) == 3  # stage 2 sees all three
    classes = sorted(read_class(p) for p in listed)
    assert classes == sorted([".hidden", "caf\\xe9", "plain"])


def test_reference_layout_numbers_outputs_in_listdir_order_and_stores_gt_as_bgr(setup, tmp_path):
    """MSF-Diff's infer (msf:1_scene-based-unmixing.py:247-255) names outputs str(i).zfill(4) in the order of
    os.listdir(dataset/RGB) and stores Abu, GT (cv2's B, G, R, min-maxed) and Y."""
    ckpt, images, expected = setup
    out = tmp_path / "abu"
    assert unmixing_main(["infer", "--ckpt", ckpt, "--rgb", images, "--out", str(out), "--device", "cpu",
                          "--layout", "reference"]) == 0
    order = os.listdir(images)
    for i, name in enumerate(order):
        stored = read_mat(str(out / f"{i:04d}.mat"))
        assert sorted(k for k in stored if not k.startswith("__")) == ["Abu", "GT", "Y"]
        image = np.asarray(Image.open(os.path.join(images, name)), dtype=np.float32)[:, :, ::-1]
        np.testing.assert_allclose(stored["GT"], (image - image.min()) / (image.max() - image.min()), atol=1e-6)
        np.testing.assert_array_equal(stored["Abu"], expected[name[:-4] + ".mat"])
    # a rerun with one more image keeps the numbers and gives the new one the next
    image_folder(tmp_path / "more", count=1)
    os.replace(tmp_path / "more" / "im0.png", os.path.join(images, "zz.png"))
    try:
        assert unmixing_main(["infer", "--ckpt", ckpt, "--rgb", images, "--out", str(out), "--device", "cpu",
                              "--layout", "reference"]) == 0
        assert sorted(n for n in os.listdir(out) if n.endswith(".mat")) == [f"{i:04d}.mat" for i in range(IMAGES + 1)]
    finally:
        os.remove(os.path.join(images, "zz.png"))


def test_a_corrupt_hsi_file_fails_alone_and_the_batch_goes_on(tmp_path, capsys):
    from test_safety_writers import corrupt_compressed_mat
    import scipy.io as sio
    ckpt = tiny_checkpoint(tmp_path / "u.pth")
    folder = tmp_path / "hsi"
    folder.mkdir()
    sio.savemat(folder / "good.mat", {"Y": np.random.default_rng(0).random((8, 8, 6)).astype(np.float32)},
                do_compression=True)
    corrupt_compressed_mat(str(folder / "bad.mat"))
    code = unmixing_main(["infer", "--ckpt", ckpt, "--hsi", str(folder), "--out", str(tmp_path / "abu"),
                          "--device", "cpu", "--workers", "0"])
    assert code == 1 and "bad.mat: not" in capsys.readouterr().err
    assert sorted(n for n in os.listdir(tmp_path / "abu") if n.endswith(".mat")) == ["good.mat"]
