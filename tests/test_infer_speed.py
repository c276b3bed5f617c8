"""Stage-1 inference at collection scale (issue 16): decoding workers and torchrun shares change no number."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ubf.core.checkpoint import save_checkpoint
from ubf.data.matio import read_mat
from ubf.models.unmixing import UnmixingAutoencoder
from ubf.pipeline.unmixing_config import UNMIXING_DEFAULTS
from ubf.pipeline.unmixing_infer import infer_folders, process_share


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    cfg = json.loads(json.dumps(UNMIXING_DEFAULTS))
    cfg["model"].update({"widths": [8, 8], "n_blocks": 1})
    model = UnmixingAutoencoder(out_bands=6, widths=(8, 8), n_blocks=1)
    ckpt = str(tmp_path / "u.pth")
    save_checkpoint({"stage": "unmixing", "model": model.state_dict(), "config": cfg, "out_bands": 6,
                     "in_channels": 3, "band_indices": [5, 3, 1], "wavelengths": None, "epoch": 0}, ckpt)
    rng = np.random.default_rng(1)
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i in range(5):
        Image.fromarray((rng.random((40 + 8 * i, 50, 3)) * 255).astype(np.uint8)).save(folder / f"im{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return ckpt, str(folder), model.eval()


def outputs(folder) -> dict:
    return {p.name: read_mat(str(p))["Abu"] for p in sorted(folder.glob("*.mat"))}


def test_workers_and_former_defaults_give_the_same_abundances(setup, tmp_path):
    ckpt, images, model = setup
    cpu = torch.device("cpu")
    plain = infer_folders(ckpt, [images], None, str(tmp_path / "plain"), cpu, tile=32, overlap=8,
                          tile_batch=1, channels_last=False, workers=0)
    fast = infer_folders(ckpt, [images], None, str(tmp_path / "fast"), cpu, tile=32, overlap=8, workers=2)
    assert len(plain["written"]) == len(fast["written"]) == 5
    assert [p for p, _ in fast["failed"]] == [p for p, _ in plain["failed"]] and "broken.png" in fast["failed"][0][0]
    a, b = outputs(tmp_path / "plain"), outputs(tmp_path / "fast")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-5, rtol=0)
    # against the network itself on one whole small image (no tiling: 40 x 50 fits a 64 tile)
    single = infer_folders(ckpt, [images], None, str(tmp_path / "single"), cpu, tile=64, overlap=8)
    image = np.asarray(Image.open(f"{images}/im0.png"), dtype=np.float32)
    image = (image - image.min()) / (image.max() - image.min())
    with torch.inference_mode():
        expected = model.abundances(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert single["written"]
    np.testing.assert_allclose(outputs(tmp_path / "single")["im0.mat"], expected, atol=1e-5)


def test_torchrun_shares_cover_every_file_once_and_fill_one_manifest(setup, tmp_path, monkeypatch):
    ckpt, images, _ = setup
    out = tmp_path / "shared"
    written = []
    for rank in range(2):  # what the two processes of `torchrun --nproc_per_node 2` do, one after the other
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        written += infer_folders(ckpt, [images], None, str(out), torch.device("cpu"), tile=32, overlap=8)["written"]
    assert len(written) == len(set(written)) == 5
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["output"] for e in entries) == sorted(str(p) for p in out.glob("*.mat"))
    assert process_share(list(range(7))) == [1, 3, 5]  # RANK 1 of 2
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert process_share(list(range(3))) == [0, 1, 2]


def test_cli_speed_flags(setup, tmp_path):
    from ubf.cli.unmixing import main as unmixing_main
    ckpt, images, _ = setup
    for name, flags in (("a", ["--no-channels-last", "--workers", "0"]), ("b", ["--tile-batch", "3", "--workers", "2"])):
        code = unmixing_main(["infer", "--ckpt", ckpt, "--rgb", images, "--out", str(tmp_path / name), "--device", "cpu",
                              "--tile", "32", "--overlap", "8", *flags])
        assert code == 1  # broken.png fails, the others are written
    a, b = outputs(tmp_path / "a"), outputs(tmp_path / "b")
    assert len(a) == len(b) == 5
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-5, rtol=0)
