"""The reference code's checkpoint layouts, written out from its architecture for the tests.

Key names and shapes follow the authors' `unmixingmodel/unmixingAE.py` + `core/common.py` (stage 1)
and `diffusionmodel/networks.py` (stage 2: `GaussianDiffusion(UNet)`, schedule buffers registered by
`set_new_noise_schedule`), read from that code, not from this project's models. Counts checked in
the tests were listed by running the reference itself (73 keys for `UnmixingAE(n_blocks=1)`, 136 for
the tiny UNet below).
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

STAGES = ("layerup2", "layerup3", "layer1", "layer2", "layer3")
WIDTHS = (32, 64, 128, 96, 48)
OUTS = (64, 128, 96, 48, 5)


def unmixing_layout(n_blocks: int, bands: int) -> dict:
    """{key: shape} of the reference's UnmixingAE(n_blocks, res_scale=0.1, input_channels=bands)."""
    keys = {"layerup1.weight": (32, 3, 3, 3), "layerup1.bias": (32,)}
    for stage, width, out in zip(STAGES, WIDTHS, OUTS):
        keys[f"{stage}.finnallayer.weight"] = (out, width, 3, 3)
        keys[f"{stage}.finnallayer.bias"] = (out,)
        hidden = width // 16  # CALayer(channel, 16)
        for i in range(n_blocks):
            block = f"{stage}.net.{i}"
            for part, kernel in (("spa", 3), ("spc", 1)):
                for layer in (0, 2):
                    keys[f"{block}.{part}.body.{layer}.weight"] = (width, width, kernel, kernel)
                    keys[f"{block}.{part}.body.{layer}.bias"] = (width,)
            keys[f"{block}.spc.body.3.conv_du.0.weight"] = (hidden, width, 1, 1)
            keys[f"{block}.spc.body.3.conv_du.0.bias"] = (hidden,)
            keys[f"{block}.spc.body.3.conv_du.2.weight"] = (width, hidden, 1, 1)
            keys[f"{block}.spc.body.3.conv_du.2.bias"] = (width,)
    keys["decoderlayer.weight"] = (bands, 5, 1, 1)
    return keys


def random_state(layout: dict, seed: int, scale: float = 0.2) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(shape, generator=generator) for k, shape in layout.items()}


def unmixing_forward(state: dict, x: torch.Tensor, n_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's UnmixingAE.forward written out with its key names: (abundances, reconstruction)."""
    def conv(h, name, padding):
        return F.conv2d(h, state[f"{name}.weight"], state[f"{name}.bias"], padding=padding)

    h = conv(x, "layerup1", 1)
    for stage in STAGES:
        res = h
        for i in range(n_blocks):
            block = f"{stage}.net.{i}"
            res = res + 0.1 * conv(F.relu(conv(res, f"{block}.spa.body.0", 1)), f"{block}.spa.body.2", 1)
            body = conv(F.relu(conv(res, f"{block}.spc.body.0", 0)), f"{block}.spc.body.2", 0)
            gate = torch.sigmoid(conv(F.relu(conv(body.mean((2, 3), keepdim=True), f"{block}.spc.body.3.conv_du.0", 0)),
                                      f"{block}.spc.body.3.conv_du.2", 0))
            res = res + 0.1 * body * gate
        h = conv(res + h, f"{stage}.finnallayer", 1)
    abundances = torch.softmax(h, dim=1)
    return abundances, F.conv2d(abundances, state["decoderlayer.weight"])


def ddpm_layout(in_channel, out_channel, inner, groups, mults, attn_res, res_blocks, image_size, timesteps) -> dict:
    """{key: shape} of the reference's GaussianDiffusion(UNet(...)) state dict, buffers first."""
    keys = {name: (timesteps,) for name in (
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")}
    unet = {"noise_level_mlp.1.weight": (inner * 4, inner), "noise_level_mlp.1.bias": (inner * 4,),
            "noise_level_mlp.3.weight": (inner, inner * 4), "noise_level_mlp.3.bias": (inner,)}

    def block(prefix, dim, dim_out, attn):  # ResnetBlocWithAttn
        unet[f"{prefix}.res_block.noise_func.noise_func.0.weight"] = (dim_out, inner)
        unet[f"{prefix}.res_block.noise_func.noise_func.0.bias"] = (dim_out,)
        for name, d_in in (("block1", dim), ("block2", dim_out)):
            unet[f"{prefix}.res_block.{name}.block.0.weight"] = (d_in,)  # GroupNorm
            unet[f"{prefix}.res_block.{name}.block.0.bias"] = (d_in,)
            unet[f"{prefix}.res_block.{name}.block.3.weight"] = (dim_out, d_in, 3, 3)
            unet[f"{prefix}.res_block.{name}.block.3.bias"] = (dim_out,)
        if dim != dim_out:
            unet[f"{prefix}.res_block.res_conv.weight"] = (dim_out, dim, 1, 1)
            unet[f"{prefix}.res_block.res_conv.bias"] = (dim_out,)
        if attn:
            unet[f"{prefix}.attn.norm.weight"] = (dim_out,)
            unet[f"{prefix}.attn.norm.bias"] = (dim_out,)
            unet[f"{prefix}.attn.qkv.weight"] = (dim_out * 3, dim_out, 1, 1)
            unet[f"{prefix}.attn.out.weight"] = (dim_out, dim_out, 1, 1)
            unet[f"{prefix}.attn.out.bias"] = (dim_out,)

    unet["downs.0.weight"], unet["downs.0.bias"] = (inner, in_channel, 3, 3), (inner,)
    pre, feats, res, index = inner, [inner], image_size, 1
    for level, mult in enumerate(mults):
        for _ in range(res_blocks):
            block(f"downs.{index}", pre, inner * mult, res in attn_res)
            pre = inner * mult
            feats.append(pre)
            index += 1
        if level != len(mults) - 1:
            unet[f"downs.{index}.conv.weight"], unet[f"downs.{index}.conv.bias"] = (pre, pre, 3, 3), (pre,)
            feats.append(pre)
            index += 1
            res //= 2
    block("mid.0", pre, pre, True)
    block("mid.1", pre, pre, False)
    index = 0
    for level in reversed(range(len(mults))):
        for _ in range(res_blocks + 1):
            block(f"ups.{index}", pre + feats.pop(), inner * mults[level], res in attn_res)
            pre = inner * mults[level]
            index += 1
        if level != 0:
            unet[f"ups.{index}.conv.weight"], unet[f"ups.{index}.conv.bias"] = (pre, pre, 3, 3), (pre,)
            index += 1
            res *= 2
    unet["final_conv.block.0.weight"], unet["final_conv.block.0.bias"] = (pre,), (pre,)
    unet["final_conv.block.3.weight"], unet["final_conv.block.3.bias"] = (out_channel, pre, 3, 3), (out_channel,)
    keys.update({f"denoise_fn.{k}": v for k, v in unet.items()})
    return keys


def reference_buffers(linear_start: float, linear_end: float, timesteps: int) -> dict:
    """The reference's `set_new_noise_schedule` for a linear schedule: float64 numpy, stored as float32."""
    betas = np.linspace(linear_start, linear_end, timesteps, dtype=np.float64)
    alphas = 1.0 - betas
    cumprod = np.cumprod(alphas, axis=0)
    prev = np.append(1.0, cumprod[:-1])
    posterior = betas * (1.0 - prev) / (1.0 - cumprod)
    values = {"betas": betas, "alphas_cumprod": cumprod, "alphas_cumprod_prev": prev,
              "sqrt_alphas_cumprod": np.sqrt(cumprod), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - cumprod),
              "log_one_minus_alphas_cumprod": np.log(1.0 - cumprod),
              "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / cumprod),
              "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / cumprod - 1), "posterior_variance": posterior,
              "posterior_log_variance_clipped": np.log(np.maximum(posterior, 1e-20)),
              "posterior_mean_coef1": betas * np.sqrt(prev) / (1.0 - cumprod),
              "posterior_mean_coef2": (1.0 - prev) * np.sqrt(alphas) / (1.0 - cumprod)}
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


def reference_training_loop(n_files: int, batch_size: int, n_iter: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """(step, epoch, batch size) of every step of the reference's stage-2 training loop.

    The loop of its Diffusion.py (lines 54 and 75-81): `DataLoader(train_set, batch_size=8, shuffle=True)`
    (drop_last left at False), the epoch counter raised as each pass over the loader begins, the step
    counter raised before each batch and the loop left once it passes n_iter. Run here with torch's own
    DataLoader over `n_files` indices, so the sizes come from that class, not from this project.
    """
    loader = DataLoader(range(n_files), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    steps, step, epoch = [], 0, 0
    while step < n_iter:
        epoch += 1
        for batch in loader:
            step += 1
            if step > n_iter:
                break
            steps.append((step, epoch, len(batch)))
    return steps
