"""The downstream networks (ubf/evaluation/downstream_models.py): receptive fields measured by gradients,
the task's path, any image size."""
import pytest
import torch

from ubf.core.errors import UserError
from ubf.evaluation.downstream_models import DownstreamUNet, build_model


def receptive_field(model: torch.nn.Module, in_channels: int, size: int = 96) -> tuple[int, int]:
    """(rows, columns) spanned by the input pixels that the output's centre pixel depends on."""
    x = torch.rand(1, in_channels, size, size, generator=torch.Generator().manual_seed(0), requires_grad=True)
    model(x)[0, :, size // 2, size // 2].sum().backward()
    touched = x.grad[0].abs().sum(0) > 0
    rows, cols = torch.nonzero(touched.any(1)).ravel(), torch.nonzero(touched.any(0)).ravel()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def randomised_tail(model):
    """The UNet's output convolution starts at zero (the model starts as its path): give it weights, so
    gradients reach the body."""
    torch.manual_seed(1)
    torch.nn.init.normal_(model.tail.weight, std=0.1)
    return model


def test_unet_receptive_field_is_at_least_32_pixels_and_the_cnn_one_is_9():
    torch.manual_seed(0)
    unet = randomised_tail(build_model("unet", 3, 8, "linear"))
    rows, cols = receptive_field(unet, 3)
    assert rows >= 32 and cols >= 32, (rows, cols)
    assert rows <= 60  # two 3x3 convolutions at 1, 2, 4, 2, 1 x the resolution, pooling and upsampling
    torch.manual_seed(0)
    assert receptive_field(build_model("cnn", 3, 8, "linear"), 3) == (9, 9)
    torch.manual_seed(0)
    pixel = build_model("pixel", 8, 8, "identity")
    torch.nn.init.normal_(pixel.body[-1].weight)
    assert receptive_field(pixel, 8) == (1, 1)


def test_unet_starts_as_its_path_and_keeps_any_image_size():
    torch.manual_seed(0)
    identity = build_model("unet", 6, 6, "identity")
    x = torch.rand(2, 6, 30, 37)
    assert torch.equal(identity(x), x)  # the zero tail: a residual model starts at its input
    linear = build_model("unet", 3, 6, "linear", width=8)
    three = torch.rand(2, 3, 30, 37)
    out = linear(three)
    assert out.shape == (2, 6, 30, 37)
    torch.testing.assert_close(out, linear.path.linear(three))
    randomised_tail(linear)
    assert linear(torch.rand(1, 3, 5, 7)).shape == (1, 6, 5, 7)  # padded to 8 x 8 by replication


def test_widths_and_parameters():
    unet = DownstreamUNet(3, 59, width=16)
    assert unet.down1[0].out_channels == 16 and unet.down2[0].out_channels == 32 and unet.bottom[0].out_channels == 64
    assert unet.head.kernel_size == (1, 1) and unet.tail.kernel_size == (1, 1)
    assert build_model("unet", 3, 59, "linear", width=8).down1[0].out_channels == 8
    assert build_model("cnn", 3, 59, "linear").body[0].out_channels == 32  # the default before the UNet


def test_bad_model_or_path_is_a_user_error():
    with pytest.raises(UserError, match="expected one of"):
        build_model("resnet", 3, 8, "linear")
    with pytest.raises(UserError, match="identity path"):
        build_model("unet", 3, 8, "identity")
