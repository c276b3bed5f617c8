"""The downstream tasks (ubf/evaluation/downstream_tasks.py): the sr4 degradation against hand-computed
values and scipy, the denoise noise, the inputs of held-out images."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from ubf.core.errors import UserError
from ubf.evaluation.downstream import DownstreamSettings, held_out_inputs
from ubf.evaluation.downstream_tasks import (TASKS, decimate, gaussian_blur, gaussian_kernel1d, make_task,
                                             upsample_bicubic)


def test_kernel_is_the_hand_computed_gaussian_truncated_at_three_sigma():
    # sigma 2: offsets -6..6, weights exp(-k^2 / 8) / sum, the sum 5.0081225 computed by hand
    kernel = gaussian_kernel1d(2.0).numpy()
    assert kernel.shape == (13,)
    assert kernel[6] == pytest.approx(0.19967563, abs=1e-8)
    assert kernel[7] == pytest.approx(0.17621312, abs=1e-8) and kernel[5] == kernel[7]
    assert kernel[0] == pytest.approx(0.00221820, abs=1e-8)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    # the same weights as scipy's own kernel (its impulse response, truncate=3)
    impulse = np.zeros(31)
    impulse[15] = 1.0
    np.testing.assert_allclose(kernel, ndimage.gaussian_filter1d(impulse, 2.0, truncate=3.0, mode="constant")[9:22],
                               atol=1e-12)


def test_blur_of_a_constant_is_the_constant_and_equals_scipy_mirror():
    constant = torch.full((1, 2, 20, 24), 0.37, dtype=torch.float64)
    np.testing.assert_allclose(gaussian_blur(constant, 2.0).numpy(), 0.37, atol=1e-12)
    image = np.random.default_rng(0).random((2, 3, 20, 24))
    ours = gaussian_blur(torch.from_numpy(image), 2.0).numpy()
    # torch's "reflect" padding does not repeat the edge pixel: scipy's "mirror"
    np.testing.assert_allclose(ours, ndimage.gaussian_filter(image, (0, 0, 2.0, 2.0), mode="mirror", truncate=3.0),
                               atol=1e-12)


def test_decimation_keeps_rows_and_columns_one_five_nine():
    rows, cols = np.mgrid[0:16, 0:12]
    image = torch.from_numpy((100 * rows + cols).astype(np.float64))[None, None]
    kept = decimate(image, 4)[0, 0].numpy()
    assert kept.shape == (4, 3)
    assert kept[0].tolist() == [101, 105, 109] and kept[:, 0].tolist() == [101, 501, 901, 1301]


def test_sr4_input_is_the_blurred_decimated_image_upsampled_back():
    task = make_task(DownstreamSettings(task="sr4"))
    assert task.name == "sr4" and task.in_channels(59) == 59 and task.path == "identity"
    clean = torch.rand(2, 5, 32, 28, generator=torch.Generator().manual_seed(1))
    x = task.make_input(clean, clean[:, :3], torch.Generator())
    assert x.shape == clean.shape
    low = ndimage.gaussian_filter(clean.numpy(), (0, 0, 2.0, 2.0), mode="mirror", truncate=3.0)[..., 1::4, 1::4]
    assert low.shape == (2, 5, 8, 7)
    expected = torch.nn.functional.interpolate(torch.from_numpy(low), size=(32, 28), mode="bicubic",
                                               align_corners=False)
    np.testing.assert_allclose(x.numpy(), expected.numpy(), atol=1e-6)
    # bicubic upsampling of a constant is the constant: a constant image comes back unchanged
    flat = torch.full((1, 2, 16, 16), 0.6)
    np.testing.assert_allclose(upsample_bicubic(decimate(gaussian_blur(flat, 2.0), 4), (16, 16)).numpy(), 0.6,
                               atol=1e-6)
    with pytest.raises(UserError, match="multiple of 4"):
        task.make_input(torch.rand(1, 2, 30, 32), None, torch.Generator())


def test_blur_setting_and_a_blur_too_wide_for_the_image():
    task = make_task(DownstreamSettings(task="sr4", blur_sigma=1.0))
    assert task.blur_sigma == 1.0 and gaussian_kernel1d(1.0).numel() == 7
    with pytest.raises(UserError, match="too small"):
        gaussian_blur(torch.rand(1, 1, 4, 4), 2.0)
    with pytest.raises(UserError, match="positive"):
        make_task(DownstreamSettings(task="sr4", blur_sigma=0.0))


def test_denoise_adds_noise_of_the_stated_sigma_reproducibly():
    task = make_task(DownstreamSettings(task="denoise", noise_sigma=0.05))
    clean = torch.full((4, 10, 32, 32), 0.5)
    noisy = task.make_input(clean, None, torch.Generator().manual_seed(3))
    again = task.make_input(clean, None, torch.Generator().manual_seed(3))
    assert torch.equal(noisy, again)
    residual = (noisy - clean).numpy()
    assert residual.std() == pytest.approx(0.05, rel=0.02) and abs(residual.mean()) < 1e-3


def test_rgb2hsi_input_is_the_three_bands():
    task = make_task(DownstreamSettings())
    three = torch.rand(2, 3, 8, 8)
    assert task.make_input(torch.rand(2, 9, 8, 8), three, torch.Generator()) is three
    assert task.in_channels(59) == 3 and task.path == "linear"
    assert set(TASKS) >= {"rgb2hsi", "denoise", "sr4"}
    with pytest.raises(UserError, match="expected one of"):
        make_task(DownstreamSettings(task="deblur"))


def test_test_inputs_are_whole_images_trimmed_to_four_and_the_same_every_time():
    rng = np.random.default_rng(0)
    pairs = [(rng.random((30, 41, 3), dtype=np.float32), rng.random((30, 41, 6), dtype=np.float32))]
    first = held_out_inputs(pairs, DownstreamSettings(task="sr4"))
    (x, target), = first
    assert x.shape == (1, 6, 28, 40) and target.shape == (28, 40, 6)
    np.testing.assert_array_equal(target, pairs[0][1][:28, :40])
    noisy = held_out_inputs(pairs, DownstreamSettings(task="denoise"))
    assert noisy[0][0].shape == (1, 6, 30, 41)
    assert torch.equal(noisy[0][0], held_out_inputs(pairs, DownstreamSettings(task="denoise"))[0][0])


def test_skip_path_defaults_and_override():
    from ubf.evaluation.downstream import make_model, skip_path
    assert skip_path(DownstreamSettings(task="denoise", model="unet")) == "linear"
    assert skip_path(DownstreamSettings(task="denoise", model="pixel")) == "linear"
    assert skip_path(DownstreamSettings(task="denoise", model="cnn")) == "identity"  # as before the UNet
    assert skip_path(DownstreamSettings(task="sr4", model="unet")) == "identity"
    assert skip_path(DownstreamSettings(task="rgb2hsi", model="cnn")) == "linear"
    assert skip_path(DownstreamSettings(task="denoise", model="cnn", skip="linear")) == "linear"
    # identity: the model starts as its input; linear: it does not
    x = torch.rand(1, 6, 16, 16)
    torch.manual_seed(0)
    assert torch.equal(make_model(DownstreamSettings(task="denoise", model="unet", skip="identity"), 6)(x), x)
    torch.manual_seed(0)
    assert not torch.allclose(make_model(DownstreamSettings(task="denoise", model="unet"), 6)(x), x)
