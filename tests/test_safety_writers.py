"""Data safety of the commands that write folders (issue 24): `--overwrite` never reaches outside `--out`,
one writer per folder, torn manifests, no NaN or all-zero cube recorded as finished, bounded sizes.
"""
import json
import os
import socket

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from ubf.cli import synthesis as Synthesis
from ubf.core.checkpoint import save_checkpoint
from ubf.core.runlock import LOCK_NAME
from ubf.data.matio import read_mat, write_mat
from ubf.data.prepare import main as prepare_main


def one_line_error(capsys, call, code=2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert err and "Traceback" not in "\n".join(err)
    assert len([line for line in err if line.startswith("error:")]) == 1, err
    return err[-1]


def image_collection(root, classes=("a", "b"), per_class=2, size=(20, 24)):
    rng = np.random.default_rng(0)
    for label in classes:
        os.makedirs(root / label, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / label / f"{label}{i}.png")
    return str(root)


# prepare --overwrite ---------------------------------------------------------------------------------

def test_prepare_overwrite_never_removes_through_a_directory_link(tmp_path, capsys):
    """The issue's case: a class folder of an earlier run replaced by a link to another folder that holds a
    file of the same name; --overwrite with other settings must not delete that file."""
    src = image_collection(tmp_path / "src")
    out = tmp_path / "out"
    prepare_main(["rgb", "--src", src, "--out", str(out), "--size", "8"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a0.png").write_bytes(b"not yours")
    for name in os.listdir(out / "a"):
        os.remove(out / "a" / name)
    os.rmdir(out / "a")
    os.symlink(elsewhere, out / "a")
    line = one_line_error(capsys, lambda: prepare_main(["rgb", "--src", src, "--out", str(out), "--size", "12",
                                                        "--overwrite"]))
    assert f"{out / 'a'}: is a symbolic link; prepare writes and removes files only inside {out}" in line
    assert (elsewhere / "a0.png").read_bytes() == b"not yours"
    assert sorted(os.listdir(out / "b")) == ["b0.png", "b1.png"]  # nothing removed at all: checked first


def test_prepare_never_writes_through_a_directory_link(tmp_path, capsys):
    src = image_collection(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "a")
    line = one_line_error(capsys, lambda: prepare_main(["rgb", "--src", src, "--out", str(out), "--size", "8"]))
    assert "is a symbolic link" in line and os.listdir(tmp_path / "elsewhere") == []


def test_prepare_leaves_a_listed_output_that_is_a_link_alone(tmp_path):
    src = image_collection(tmp_path / "src")
    out = tmp_path / "out"
    prepare_main(["rgb", "--src", src, "--out", str(out), "--size", "8"])
    (tmp_path / "precious.png").write_bytes(b"keep")
    os.remove(out / "a" / "a0.png")
    os.symlink(tmp_path / "precious.png", out / "a" / "a0.png")
    prepare_main(["rgb", "--src", src, "--out", str(out), "--size", "12", "--overwrite"])
    assert (tmp_path / "precious.png").read_bytes() == b"keep"


def test_prepare_manifest_entry_leading_outside_is_refused(tmp_path, capsys):
    src = image_collection(tmp_path / "src")
    out = tmp_path / "out"
    prepare_main(["rgb", "--src", src, "--out", str(out), "--size", "8"])
    (tmp_path / "victim.png").write_bytes(b"keep")
    manifest = out / "manifest_rgb.csv"
    manifest.write_text(manifest.read_text() + "../victim.png,x,,a,0,0,8,8\n")
    line = one_line_error(capsys, lambda: prepare_main(["rgb", "--src", src, "--out", str(out), "--size", "12",
                                                        "--overwrite"]))
    assert "points outside" in line and (tmp_path / "victim.png").exists()


def test_prepare_tolerates_a_torn_last_manifest_line(tmp_path):
    src = image_collection(tmp_path / "src")
    out = tmp_path / "out"
    prepare_main(["rgb", "--src", src, "--out", str(out), "--size", "8"])
    manifest = out / "manifest_rgb.csv"
    text = manifest.read_text()
    manifest.write_text(text[:len(text) - 7])  # the last row cut mid-way, no newline
    result = prepare_main(["rgb", "--src", src, "--out", str(out), "--size", "12", "--overwrite"])
    assert result["written"] == 4
    assert sorted(os.listdir(out / "a")) == ["a0.png", "a1.png"]
    assert all(Image.open(out / label / f"{label}{i}.png").size == (12, 12) for label in "ab" for i in range(2))


def test_prepare_size_beyond_one_image_is_refused_before_any_work(tmp_path, capsys):
    src = image_collection(tmp_path / "src")
    line = one_line_error(capsys, lambda: prepare_main(["rgb", "--src", src, "--out", str(tmp_path / "out"),
                                                        "--size", "100000"]))
    assert "--size 100000: an output of 100000 x 100000 pixels (27.9 GiB as 8-bit RGB)" in line
    assert not (tmp_path / "out").exists()


# one writer per folder ---------------------------------------------------------------------------------

def hold_lock(folder, what="another run"):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_NAME), "w") as f:
        json.dump({"pid": os.getppid(), "host": socket.gethostname(), "what": what, "started": "2026-01-01"}, f)


def unmixing_checkpoint(path, bands=6, nan=False):
    from ubf.models.unmixing import UnmixingAutoencoder
    from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS
    torch.manual_seed(0)
    cfg = json.loads(json.dumps(UNMIXING_DEFAULTS))
    cfg["model"].update({"widths": [8, 8], "n_blocks": 1})
    model = UnmixingAutoencoder(out_bands=bands, widths=(8, 8), n_blocks=1)
    with torch.no_grad():
        model.decoder.weight.copy_(torch.rand(model.decoder.weight.shape, generator=torch.Generator().manual_seed(1)))
    save_checkpoint({"stage": "unmixing", "model": model.state_dict(), "config": cfg, "out_bands": bands,
                     "in_channels": 3, "band_indices": [5, 3, 1], "wavelengths": None, "epoch": 0}, str(path))
    return str(path)


def samples_folder(folder, count=3, size=8, k=5):
    rng = np.random.default_rng(2)
    for i in range(count):
        write_mat(os.path.join(folder, f"0_{i + 1}_sample_abu.mat"),
                  {"SR": (rng.dirichlet(np.ones(k), size=(size, size)) * 2 - 1).astype(np.float32)})
    return str(folder)


@pytest.fixture
def synthesis_inputs(tmp_path):
    return samples_folder(tmp_path / "samples"), unmixing_checkpoint(tmp_path / "u.pth")


def test_a_second_synthesis_into_a_folder_in_use_is_refused(tmp_path, synthesis_inputs, capsys):
    samples, ckpt = synthesis_inputs
    out = tmp_path / "syn"
    hold_lock(out, "Synthesis.py")
    line = one_line_error(capsys, lambda: Synthesis.main(["--abundances", samples, "--ckpt", ckpt, "--out", str(out),
                                                          "--device", "cpu"]))
    assert line.startswith(f"error: {out}: in use by another Synthesis.py (process {os.getppid()}")
    assert os.listdir(out) == [LOCK_NAME]  # not even the log file


def test_a_second_prepare_and_evaluate_into_a_folder_in_use_are_refused(tmp_path, capsys):
    from ubf.cli import evaluate as Evaluate
    src = image_collection(tmp_path / "src")
    hold_lock(tmp_path / "out")
    line = one_line_error(capsys, lambda: prepare_main(["rgb", "--src", src, "--out", str(tmp_path / "out")]))
    assert "in use by another another run" in line and os.listdir(tmp_path / "out") == [LOCK_NAME]
    hold_lock(tmp_path / "report")
    line = one_line_error(capsys, lambda: Evaluate.main(["generation", "--real", src, "--synthetic", src, "--out",
                                                         str(tmp_path / "report")]))
    assert "in use by another" in line and os.listdir(tmp_path / "report") == [LOCK_NAME]


def test_synthesis_removes_a_killed_runs_temporary_file(tmp_path, synthesis_inputs):
    samples, ckpt = synthesis_inputs
    out = tmp_path / "syn"
    (out / "HSI").mkdir(parents=True)
    stale = out / "HSI" / ".0_1_sample_abu.mat.tmp999999999.mat"  # what a kill -9 mid-write leaves
    stale.write_bytes(b"half")
    Synthesis.main(["--abundances", samples, "--ckpt", ckpt, "--out", str(out), "--device", "cpu"])
    assert sorted(os.listdir(out / "HSI")) == ["0_1_sample_abu.mat", "0_2_sample_abu.mat", "0_3_sample_abu.mat"]
    assert not (out / LOCK_NAME).exists()


# NaN, zero and unbounded synthesis ---------------------------------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--variability", "inf"], "--variability inf: must be a number in [0, 3], got inf"),
    (["--variability", "nan"], "--variability nan: must be a number in [0, 3], got nan"),
    (["--variability", "50"], "--variability 50: must be a number in [0, 3], got 50.0"),
    (["--variability", "-1"], "--variability -1: must be a number in [0, 3]"),
    (["--variability", "0.5", "--variability-scale", "-4"], "argument --variability-scale: must be a number > 0"),
    (["--variability", "0.5", "--variability-scale", "nan"], "argument --variability-scale: must be a number > 0"),
    (["--variability", "0.5", "--variability-scale", "1e9"],
     "--variability-scale 1e+09: larger than the abundance maps (8 pixels at most)"),
    (["--set", "seed=-1"], "--set seed: must be an integer >= 0, got -1"),
    (["--set", "variability_scale=-2", "--variability", "0.5"], "--set variability_scale: must be a number > 0"),
])
def test_synthesis_refuses_what_would_write_nan_zero_or_exhaust_memory(tmp_path, synthesis_inputs, capsys, flags,
                                                                        needle):
    samples, ckpt = synthesis_inputs
    out = tmp_path / "syn"
    line = one_line_error(capsys, lambda: Synthesis.main(["--abundances", samples, "--ckpt", ckpt, "--out", str(out),
                                                          "--device", "cpu", *flags]))
    assert needle in line, line
    assert not (out / "HSI").exists() or os.listdir(out / "HSI") == []


def test_the_largest_variability_allowed_still_gives_finite_non_zero_cubes(tmp_path, synthesis_inputs):
    samples, ckpt = synthesis_inputs
    Synthesis.main(["--abundances", samples, "--ckpt", ckpt, "--out", str(tmp_path / "syn"), "--device", "cpu",
                    "--variability", "3", "--variability-scale", "4"])
    for name in os.listdir(tmp_path / "syn" / "HSI"):
        hsi = read_mat(str(tmp_path / "syn" / "HSI" / name))["HSI"]
        assert np.all(np.isfinite(hsi)) and float(np.abs(hsi).max()) > 0


def test_reference_layout_of_synthesis_numbers_in_listdir_order(tmp_path, synthesis_inputs):
    """The reference's Synthesis.py (lines 63-74) saves str(i).zfill(4).mat with HSI, Abu, End, i over
    os.listdir of the samples folder."""
    samples, ckpt = synthesis_inputs
    out = tmp_path / "syn"
    Synthesis.main(["--abundances", samples, "--ckpt", ckpt, "--out", str(out), "--device", "cpu",
                    "--layout", "reference"])
    project = tmp_path / "project"
    Synthesis.main(["--abundances", samples, "--ckpt", ckpt, "--out", str(project), "--device", "cpu"])
    for i, name in enumerate(n for n in os.listdir(samples) if n.endswith(".mat")):
        ours = sio.loadmat(out / "HSI" / f"{i:04d}.mat")
        assert sorted(k for k in ours if not k.startswith("__")) == ["Abu", "End", "HSI"]
        assert np.array_equal(ours["HSI"], read_mat(str(project / "HSI" / name))["HSI"])


def test_synthesis_never_writes_through_a_linked_output_folder(tmp_path, synthesis_inputs, capsys):
    samples, ckpt = synthesis_inputs
    Synthesis.main(["--abundances", samples, "--ckpt", ckpt, "--out", str(tmp_path / "first"), "--device", "cpu"])
    out = tmp_path / "syn"
    out.mkdir()
    os.symlink(tmp_path / "first" / "HSI", out / "HSI")  # --overwrite would replace the first run's cubes
    before = {n: os.stat(tmp_path / "first" / "HSI" / n).st_mtime_ns for n in os.listdir(tmp_path / "first" / "HSI")}
    line = one_line_error(capsys, lambda: Synthesis.main(["--abundances", samples, "--ckpt", ckpt, "--out", str(out),
                                                          "--device", "cpu", "--overwrite"]))
    assert f"{out / 'HSI'}: is a symbolic link; outputs are written only inside {out}" in line
    assert {n: os.stat(tmp_path / "first" / "HSI" / n).st_mtime_ns for n in before} == before


def test_a_size_numpy_cannot_allocate_is_one_line(monkeypatch, capsys):
    """The last net under every CLI: numpy's MemoryError ("Unable to allocate ...") is one line, exit 2."""
    from ubf.core.errors import cli_main

    @cli_main
    def main():
        raise MemoryError("Unable to allocate 2.15 TiB for an array with shape (100000, 100000, 59)")

    line = one_line_error(capsys, main)
    assert line == "error: not enough memory (Unable to allocate 2.15 TiB for an array with shape (100000, 100000, 59))"


def test_a_missing_dependency_is_one_line_naming_what_to_install(capsys):
    """A fresh environment without requirements.txt: Pillow imports as PIL but installs as pillow."""
    from ubf.core.errors import cli_main

    @cli_main
    def main():
        import PIL_not_installed_here  # noqa: F401
    line = one_line_error(capsys, main)
    assert line.startswith("error: Python package 'PIL_not_installed_here' is not installed")

    @cli_main
    def needs_pillow():
        raise ModuleNotFoundError("No module named 'PIL'", name="PIL")
    assert "pip install pillow" in one_line_error(capsys, needs_pillow)


def test_a_broken_import_inside_the_project_is_not_hidden():
    from ubf.core.errors import cli_main

    @cli_main
    def main():
        import ubf.no_such_module  # noqa: F401
    with pytest.raises(ModuleNotFoundError):
        main()


def test_demo_overwrite_never_removes_through_a_link(tmp_path):
    from ubf.cli.demo import OWNED, prepare_output
    from ubf.core.errors import UserError
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    out = tmp_path / "demo"
    out.mkdir()
    os.symlink(elsewhere, out / OWNED[0])
    with pytest.raises(UserError, match="is a symbolic link, which the demo never writes"):
        prepare_output(str(out), overwrite=True)
    assert (elsewhere / "keep.txt").read_text() == "keep" and os.path.islink(out / OWNED[0])


def corrupt_compressed_mat(path, seed=0):
    """A compressed MATLAB file whose zlib stream is damaged in the middle (the header stays readable)."""
    abundances = np.random.default_rng(seed).dirichlet(np.ones(5), size=(16, 16)).astype(np.float32)
    sio.savemat(path, {"SR": abundances * 2 - 1}, do_compression=True)
    raw = bytearray(open(path, "rb").read())
    for i in range(200, 260):
        raw[i] ^= 0x55
    open(path, "wb").write(bytes(raw))


def test_a_corrupt_zlib_stream_stops_synthesis_before_any_output(tmp_path, synthesis_inputs, capsys):
    samples, ckpt = synthesis_inputs
    corrupt_compressed_mat(os.path.join(samples, "0_9_sample_abu.mat"))
    out = tmp_path / "syn"
    line = one_line_error(capsys, lambda: Synthesis.main(["--abundances", samples, "--ckpt", ckpt, "--out", str(out),
                                                          "--device", "cpu"]))
    assert "0_9_sample_abu.mat: not a readable .mat file (" in line
    assert not (out / "HSI").exists() or os.listdir(out / "HSI") == []
