"""The reference code's checkpoint formats, and the one place where its key names meet ours.

Stage 1 (the reference's `Unmixing.py save_checkpoint`): `{"epoch": e, "model": state_dict}` where `e`
counts finished epochs from 1 and the keys are those of its `UnmixingAE` (`layerup1`, five SSPN stages
`layerup2, layerup3, layer1, layer2, layer3` with `net.<i>.spa` / `net.<i>.spc` blocks and a
`finnallayer`, `decoderlayer`), optionally behind the `module.` prefix of `DataParallel`. Our
`models.unmixing.UnmixingAutoencoder` holds the same tensors under other names; `epoch` is 0-based.

Stage 2 (the reference's `DDPM.save_network`): `I<iter>_E<epoch>_gen.pth`, the state dict of its
`GaussianDiffusion` (the UNet under `denoise_fn.` and twelve float32 noise-schedule buffers), and
`I<iter>_E<epoch>_opt.pth`, `{"epoch", "iter", "scheduler": None, "optimizer": Adam state}`. Our UNet
has the reference's key names and parameter order, so only the prefix and the buffers differ.

Everything here maps plain dicts of tensors; no model is built and no file is read or written.
"""
import re

import numpy as np
import torch

from ubf.core.distributed import strip_module_prefix

REFERENCE_STAGES = ("layerup2", "layerup3", "layer1", "layer2", "layer3")
REFERENCE_WIDTHS = [32, 64, 128, 96, 48]
REFERENCE_ENDMEMBERS = 5
REFERENCE_RES_SCALE = 0.1
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")

# (our pattern, reference pattern) inside one SSPN stage; {i} is the block number
_BLOCK_PARTS = (("spatial.body.0.", "spa.body.0."), ("spatial.body.2.", "spa.body.2."),
                ("spectral.body.0.", "spc.body.0."), ("spectral.body.2.", "spc.body.2."),
                ("spectral.body.3.gate.1.", "spc.body.3.conv_du.0."),
                ("spectral.body.3.gate.3.", "spc.body.3.conv_du.2."))


class ReferenceFormatError(ValueError):
    """A state dict that does not have the reference's layout (the caller names the file)."""


def strip_prefix(state_dict: dict) -> dict:
    """Keys without the `module.` prefix of DataParallel/DDP (when every key has it), as a new dict."""
    return dict(strip_module_prefix(state_dict))


# stage 1 ----------------------------------------------------------------------------------------

def _unmixing_key_to_reference(key: str) -> str:
    if key == "decoder.weight":
        return "decoderlayer.weight"
    if key.startswith("encoder.stem."):
        return "layerup1." + key[len("encoder.stem."):]
    found = re.fullmatch(r"encoder\.stages\.(\d+)\.(.*)", key)
    if found and int(found.group(1)) < len(REFERENCE_STAGES):
        stage, rest = REFERENCE_STAGES[int(found.group(1))], found.group(2)
        if rest.startswith("project."):
            return f"{stage}.finnallayer.{rest[len('project.'):]}"
        block = re.fullmatch(r"blocks\.(\d+)\.(.*)", rest)
        if block:
            for ours, theirs in _BLOCK_PARTS:
                if block.group(2).startswith(ours):
                    return f"{stage}.net.{block.group(1)}.{theirs}{block.group(2)[len(ours):]}"
    raise ReferenceFormatError(f"'{key}' has no counterpart in the reference's UnmixingAE")


def _unmixing_key_from_reference(key: str) -> str:
    if key == "decoderlayer.weight":
        return "decoder.weight"
    if key.startswith("layerup1."):
        return "encoder.stem." + key[len("layerup1."):]
    found = re.fullmatch(r"(\w+?)\.(.*)", key)
    if found and found.group(1) in REFERENCE_STAGES:
        stage, rest = REFERENCE_STAGES.index(found.group(1)), found.group(2)
        if rest.startswith("finnallayer."):
            return f"encoder.stages.{stage}.project.{rest[len('finnallayer.'):]}"
        block = re.fullmatch(r"net\.(\d+)\.(.*)", rest)
        if block:
            for ours, theirs in _BLOCK_PARTS:
                if block.group(2).startswith(theirs):
                    return f"encoder.stages.{stage}.blocks.{block.group(1)}.{ours}{block.group(2)[len(theirs):]}"
    raise ReferenceFormatError(f"'{key}' is not a key of the reference's UnmixingAE")


def unmixing_from_reference(state_dict: dict) -> tuple[dict, dict]:
    """(our state dict, our `model` config section) from the reference's UnmixingAE state dict."""
    weights = {_unmixing_key_from_reference(k): v for k, v in strip_prefix(state_dict).items()}
    needed = ("encoder.stem.weight", "decoder.weight", "encoder.stages.4.project.weight")
    missing = [k for k in needed if k not in weights]
    if missing:
        raise ReferenceFormatError(f"no {missing[0]} (the reference's layerup1, layer3 and decoderlayer are needed)")
    weights["encoder.stem.weight"] = swap_input_order(weights["encoder.stem.weight"])
    blocks = {int(k.split(".")[4]) for k in weights if k.startswith("encoder.stages.0.blocks.")}
    widths = [int(weights["encoder.stem.weight"].shape[0])] + \
        [int(weights[f"encoder.stages.{s}.project.weight"].shape[0]) for s in range(len(REFERENCE_STAGES) - 1)]
    model = {"encoder": "sspn", "widths": widths, "n_blocks": len(blocks),
             "num_endmembers": int(weights["decoder.weight"].shape[1]), "res_scale": REFERENCE_RES_SCALE,
             "brightness": False}
    return weights, model


def unmixing_to_reference(state_dict: dict, model_cfg: dict, in_channels: int = 3) -> dict:
    """The reference's UnmixingAE state dict from ours; refuses what its fixed network cannot hold."""
    differences = []
    if model_cfg.get("encoder", "sspn") != "sspn":
        differences.append(f"encoder '{model_cfg['encoder']}' (the reference has the SSPN encoder only)")
    if list(model_cfg.get("widths", [])) != REFERENCE_WIDTHS:
        differences.append(f"widths {list(model_cfg.get('widths', []))} (the reference's are {REFERENCE_WIDTHS})")
    if int(model_cfg.get("num_endmembers", 0)) != REFERENCE_ENDMEMBERS:
        differences.append(f"K = {model_cfg.get('num_endmembers')} (the reference's is {REFERENCE_ENDMEMBERS})")
    if float(model_cfg.get("res_scale", REFERENCE_RES_SCALE)) != REFERENCE_RES_SCALE:
        differences.append(f"res_scale {model_cfg['res_scale']} (the reference's is {REFERENCE_RES_SCALE})")
    if model_cfg.get("brightness"):
        differences.append("a brightness channel (not in the reference)")
    if in_channels != 3:
        differences.append(f"{in_channels} input channels (the reference's first layer takes 3)")
    if differences:
        raise ReferenceFormatError("the reference's network cannot hold this model: " + "; ".join(differences))
    weights = {_unmixing_key_to_reference(k): v.detach().cpu() for k, v in strip_prefix(state_dict).items()}
    weights["layerup1.weight"] = swap_input_order(weights["layerup1.weight"])
    return weights


def swap_input_order(stem_weight):
    """The first convolution's weight with its input channels reversed: B, G, R <-> R, G, B.

    The reference reads images with OpenCV (channels B, G, R) and trains on bands in rising wavelength
    (MSF-Diff: 7, 17, 27), so its channel 0 is the shortest wavelength; ours is R, G, B (Pillow, bands
    53/33/14). Reversing the input channels of the first layer makes the same network see the same colours.
    """
    return stem_weight.flip(1).contiguous()


def unmixing_checkpoint_to_reference(state: dict) -> dict:
    """`{"epoch", "model"}` as the reference's `save_checkpoint` writes it, from one of our stage-1 checkpoints."""
    return {"epoch": int(state.get("epoch", -1)) + 1,
            "model": unmixing_to_reference(state["model"], state["config"]["model"], int(state.get("in_channels", 3)))}


# stage 2 ----------------------------------------------------------------------------------------

def diffusion_from_reference(gen_state: dict) -> dict:
    """Our UNet state dict from the reference's `*_gen.pth` (prefix `denoise_fn.`; schedule buffers dropped)."""
    state = strip_prefix(gen_state)
    unet = {k[len("denoise_fn."):]: v for k, v in state.items() if str(k).startswith("denoise_fn.")}
    if not unet:
        raise ReferenceFormatError("no 'denoise_fn.' keys (not the reference's GaussianDiffusion state dict)")
    return unet


def schedule_buffers(schedule) -> dict:
    """The twelve buffers the reference's `set_new_noise_schedule` registers, float32 as it stores them.

    `schedule`: a `models.diffusion.NoiseSchedule` (float64 tensors); only `log(1 - alpha_bar)`, which
    our sampler never needs, is computed here.
    """
    values = {name: getattr(schedule, name) for name in SCHEDULE_BUFFERS if name != "log_one_minus_alphas_cumprod"}
    values["log_one_minus_alphas_cumprod"] = torch.from_numpy(np.log(1.0 - schedule.alphas_cumprod.double().numpy()))
    return {name: values[name].to(torch.float32).clone() for name in SCHEDULE_BUFFERS}


def diffusion_to_reference(unet_state: dict, schedule) -> dict:
    """The reference's `*_gen.pth` dict: schedule buffers, then the UNet under `denoise_fn.` (on the CPU)."""
    gen = schedule_buffers(schedule)
    gen.update({f"denoise_fn.{k}": v.detach().cpu() for k, v in strip_prefix(unet_state).items()})
    return gen


def optimizer_to_reference(optimizer_state: dict, epoch: int, step: int) -> dict:
    """The reference's `*_opt.pth` dict."""
    return {"epoch": int(epoch), "iter": int(step), "scheduler": None, "optimizer": optimizer_state}


def optimizer_from_reference(opt: dict) -> tuple[dict, int, int]:
    """(Adam state dict, epoch, iter) of the reference's `*_opt.pth`."""
    if not isinstance(opt, dict) or not isinstance(opt.get("optimizer"), dict) or "iter" not in opt:
        raise ReferenceFormatError("not the reference's optimizer file ({'epoch', 'iter', 'optimizer'} expected)")
    return opt["optimizer"], int(opt.get("epoch", 0)), int(opt["iter"])


__all__ = ["ReferenceFormatError", "strip_prefix", "unmixing_from_reference", "unmixing_to_reference",
           "unmixing_checkpoint_to_reference", "diffusion_from_reference", "diffusion_to_reference",
           "schedule_buffers", "optimizer_to_reference", "optimizer_from_reference", "SCHEDULE_BUFFERS"]
