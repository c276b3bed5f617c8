"""F_p and D_b on real Chikusei/Samson data and on fabricated arrays with known answers."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ubf.data.matio import read_hsi
from ubf.data.normalize import minmax
from ubf.evaluation.fidelity import block_diversity, point_fidelity, unit_spectra, with_rotations
from tests.conftest import shared_path


def chikusei(name: str = "block_118.mat") -> torch.Tensor:
    """A real crop, min-max normalised, as (C, H, W)."""
    cube = minmax(read_hsi(shared_path("paper", "chikusei", name))[0])
    return torch.from_numpy(np.ascontiguousarray(cube.transpose(2, 0, 1)))


def pixels(image: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    flat = image.flatten(1).T
    return flat[torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(seed))[:count]]


def test_point_fidelity_of_real_set_against_itself_is_one():
    cube = minmax(read_hsi(shared_path("hsi", "samson.mat"))[0])
    flat = torch.from_numpy(cube.reshape(-1, cube.shape[2]))
    f_p, angles = point_fidelity(flat, flat, chunk=2000)
    assert f_p == pytest.approx(1.0, abs=1e-6)
    assert float(angles.max()) < 0.05  # degrees


def test_point_fidelity_falls_as_noise_grows():
    real = pixels(chikusei(), 3000)
    g = torch.Generator().manual_seed(1)
    values = [point_fidelity(real + s * torch.randn(real.shape, generator=g), real)[0] for s in (0.0, 0.01, 0.05, 0.2)]
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert values[0] > values[1] > values[2] > values[3]


def test_block_diversity_matches_direct_convolution():
    g = torch.Generator().manual_seed(2)
    image = torch.rand(6, 37, 29, generator=g)
    blocks = torch.rand(5, 6, 7, 7, generator=g)
    blocks[0] = image[:, 3:10, 20:27]
    score, per_block = block_diversity(blocks, [image])
    direct = F.conv2d(unit_spectra(image)[None], with_rotations(unit_spectra(blocks)))[0] / 49
    expected = direct.flatten(1).amax(dim=1).view(4, 5).amax(dim=0)
    assert torch.allclose(per_block, expected, atol=1e-5)
    assert per_block[0] == pytest.approx(1.0, abs=1e-5)
    assert score == pytest.approx(float(expected.mean()), abs=1e-5)


def test_block_diversity_of_exact_and_rotated_copies_is_one_and_falls_with_noise():
    real = chikusei()
    crops = torch.stack([real[:, 10:26, 40:56], torch.rot90(real[:, 70:86, 5:21], 1, dims=(1, 2)),
                         torch.rot90(real[:, 100:116, 90:106], 3, dims=(1, 2))])
    exact, per_block = block_diversity(crops, [real])
    assert exact == pytest.approx(1.0, abs=1e-4) and float(per_block.min()) > 1 - 1e-4
    g = torch.Generator().manual_seed(3)
    noisy = [block_diversity(crops + s * torch.randn(crops.shape, generator=g), [real])[0] for s in (0.02, 0.1)]
    assert 1.0 - 1e-4 > noisy[0] > noisy[1]


def ncc_direct(blocks: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation by direct convolution: per block, best over positions and rotations."""
    p = blocks.shape[-1]
    centred = blocks - blocks.mean(dim=(2, 3), keepdim=True)
    numerator = F.conv2d(image[None].double(), with_rotations(centred).double())[0]
    windows = image.double().unfold(1, p, 1).unfold(2, p, 1)  # (C, h, w, p, p)
    windows = windows - windows.mean(dim=(3, 4), keepdim=True)
    norms = windows.pow(2).sum(dim=(0, 3, 4)).sqrt()
    ncc = numerator / (centred.flatten(1).norm(dim=1).double().repeat(4)[:, None, None] * norms[None])
    return ncc.flatten(1).amax(dim=1).view(4, -1).amax(dim=0).float()


def test_ncc_matches_direct_computation():
    g = torch.Generator().manual_seed(4)
    image = torch.rand(5, 33, 41, generator=g)
    blocks = torch.rand(4, 5, 6, 6, generator=g)
    blocks[1] = 3.0 * torch.rot90(image[:, 20:26, 2:8], 2, dims=(1, 2)) + 0.5  # a rescaled, rotated copy
    _, per_block = block_diversity(blocks, [image], mode="ncc")
    assert torch.allclose(per_block, ncc_direct(blocks, image), atol=1e-4)
    assert per_block[1] == pytest.approx(1.0, abs=1e-4)


def test_ncc_separates_copies_from_other_real_content_and_random_mixtures():
    real, other = chikusei("block_118.mat"), chikusei("block_282.mat")
    at = [(0, 0), (50, 60), (100, 20), (30, 100)]
    copies = torch.stack([real[:, r:r + 16, c:c + 16] for r, c in at])
    g = torch.Generator().manual_seed(5)
    noisy = [block_diversity(copies + s * torch.randn(copies.shape, generator=g), [real], mode="ncc")[0]
             for s in (0.0, 0.01, 0.05)]
    assert noisy[0] == pytest.approx(1.0, abs=1e-4) and noisy[0] > noisy[1] > noisy[2]
    foreign = block_diversity(torch.stack([other[:, r:r + 16, c:c + 16] for r, c in at]), [real], mode="ncc")[0]
    endmembers = real.flatten(1)[:, torch.randperm(128 * 128, generator=g)[:4]]  # (C, 4) real spectra
    abundances = torch.distributions.Dirichlet(torch.ones(4)).sample((4, 16, 16))
    mixtures = torch.einsum("ck,nhwk->nchw", endmembers, abundances)
    random = block_diversity(mixtures, [real], mode="ncc")[0]
    assert noisy[2] > foreign > random and random < 0.5
    # the paper's per-pixel cosine cannot tell these apart on 400-700 nm spectra
    assert block_diversity(mixtures, [real])[0] > 0.95
