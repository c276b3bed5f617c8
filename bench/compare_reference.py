"""Run the authors' code and this project on the same inputs and print the largest differences.

The reference is imported from a folder the user gives (a checkout of HSI-Synthesis/Unmixing-before-fusion;
nothing of it is in this repository). Its scripts need OpenCV, torchvision, tensorboardX and torchnet; where
those are not installed, `--shims DIR` puts a folder of small stand-ins first on the import path
(docs/faithfulness.md shows the four tiny files used).

    python bench/compare_reference.py --ref REF_CHECKOUT [--shims SHIMS_DIR]
                                      [--data ../shared/data/paper] [--json out.json] [--quick]

Each check builds both sides with the same weights (the reference's state dict copied into ours) and
the same inputs, then prints the largest absolute difference of the outputs. Checks: the unmixing
autoencoder forward pass, its three losses and one Adam step; the noise schedule; the SR3 UNet forward
pass (paper config, 97.8 M parameters); the DDPM loss and one Adam step; the ancestral sampler with the
same seed (the reference draws from torch's global generator, this project from a seeded Generator: same
stream); the metrics of `quality_assessment` on real Chikusei crops and on edge cases; and the
reference's Synthesis.py script run as a script (paths and device patched in memory) against
`pipeline.synthesis`. `--quick` shortens the sampler to 200 steps and the UNet input to 32 x 32.
"""
import argparse
import contextlib
import warnings
import importlib
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ubf.core.metrics as ours_metrics  # noqa: E402
from ubf.data.matio import read_hsi, read_mat, write_mat  # noqa: E402
from ubf.data.normalize import minmax  # noqa: E402
from ubf.models.diffusion import GaussianDiffusion, NoiseSchedule  # noqa: E402
from ubf.models.losses import charbonnier, endmember_tv, spectral_angle_loss, unmixing_loss  # noqa: E402
from ubf.models.sr3_unet import SR3UNet, count_parameters  # noqa: E402
from ubf.models.unmixing import UnmixingAutoencoder  # noqa: E402
from ubf.pipeline.diffusion_config import DIFFUSION_DEFAULTS  # noqa: E402
from ubf.pipeline.synthesis import SynthesisOptions, run_synthesis  # noqa: E402

DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "paper")
PAPER_UNET = dict(in_channel=5, out_channel=5, inner_channel=64, norm_groups=32, channel_mults=(1, 2, 4, 8, 8),
                  attn_res=(16,), res_blocks=2, dropout=0.2, image_size=256)
SMALL_UNET = dict(in_channel=5, out_channel=5, inner_channel=16, norm_groups=8, channel_mults=(1, 2),
                  attn_res=(8,), res_blocks=1, dropout=0.2, image_size=16)
PAPER_SCHEDULE = dict(DIFFUSION_DEFAULTS["model"]["beta_schedule"]["train"])
REFERENCE_TOP = ("core", "diffusionmodel", "unmixingmodel")


# importing the reference beside this project (both have a top-level `core`) --------------------------

@contextlib.contextmanager
def reference_imports(ref_dir: str, shims: str | None):
    """Inside: `core`, `diffusionmodel`, ... resolve to the reference; afterwards ours are back."""
    def ours(name):
        return any(name == top or name.startswith(top + ".") for top in REFERENCE_TOP)
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if ours(name)}
    # the reference's `core` has no __init__.py: a regular package of that name anywhere on the path
    # (this repository, or the current folder) would win over it, so those entries step aside
    saved_path = list(sys.path)
    sys.path[:] = [p for p in (shims, ref_dir) if p] + [
        p for p in sys.path if not os.path.isfile(os.path.join(p or os.getcwd(), "core", "__init__.py"))]
    importlib.invalidate_caches()
    try:
        yield
    finally:
        for name in [n for n in sys.modules if ours(n)]:
            sys.modules.pop(name)
        sys.modules.update(saved)
        sys.path[:] = saved_path


def load_reference(ref_dir: str, shims: str | None) -> dict:
    with reference_imports(ref_dir, shims):
        modules = {name: importlib.import_module(name) for name in
                   ("unmixingmodel.unmixingAE", "core.common", "core.loss", "core.metrics", "diffusionmodel.networks")}
    return modules


# helpers ---------------------------------------------------------------------------------------------

# The reference's unmixing key names (read off unmixingmodel/unmixingAE.py and ubf/core/common.py) -> ours.
UNMIXING_RENAMES = (("layerup1.", "encoder.stem."), ("layerup2.", "encoder.stages.0."),
                    ("layerup3.", "encoder.stages.1."), ("layer1.", "encoder.stages.2."),
                    ("layer2.", "encoder.stages.3."), ("layer3.", "encoder.stages.4."),
                    ("decoderlayer.", "decoder."), (".finnallayer.", ".project."), (".net.", ".blocks."),
                    (".spa.", ".spatial."), (".spc.", ".spectral."), (".conv_du.0.", ".gate.1."),
                    (".conv_du.2.", ".gate.3."))


def renamed_unmixing_state(source: torch.nn.Module) -> dict:
    """The reference autoencoder's state dict under our key names."""
    mapped = {}
    for name, value in source.state_dict().items():
        for old, new in UNMIXING_RENAMES:
            if old.startswith(".") or name.startswith(old):
                name = name.replace(old, new, 1) if not old.startswith(".") else name.replace(old, new)
        mapped[name] = value.clone()
    return mapped


def copy_unmixing_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Load the reference autoencoder's weights into ours (strict: every key and shape must match)."""
    target.load_state_dict(renamed_unmixing_state(source))


def max_diff(a, b) -> float:
    a = a.detach().double().cpu().numpy() if torch.is_tensor(a) else np.asarray(a, dtype=np.float64)
    b = b.detach().double().cpu().numpy() if torch.is_tensor(b) else np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise SystemExit(f"shape mismatch {a.shape} vs {b.shape}")
    both_nan = np.isnan(a) & np.isnan(b)
    return float(np.max(np.where(both_nan, 0.0, np.abs(a - b)), initial=0.0))


def params_diff(a, b: torch.nn.Module) -> float:
    """Largest difference between two state dicts with the same keys (`a` may be a dict already)."""
    a = a if isinstance(a, dict) else a.state_dict()
    b = b.state_dict()
    return max(max_diff(a[key], b[key]) for key in b)


def real_crops(data_dir: str):
    """(Y of block_282, Y of block_118) min-max normalised, or seeded random cubes when absent."""
    found = [os.path.join(data_dir, "chikusei", f"block_{n}.mat") for n in (282, 118)]
    if all(os.path.isfile(p) for p in found):
        return [minmax(read_hsi(p)[0]) for p in found], "real Chikusei crops 282 / 118 (128 x 128 x 59)"
    rng = np.random.default_rng(0)
    return [rng.random((64, 64, 59)).astype(np.float32) for _ in range(2)], "random 64 x 64 x 59 cubes"


# checks ----------------------------------------------------------------------------------------------

def check_unmixing(ref: dict, cube: np.ndarray, rows: list) -> None:
    ae, loss = ref["unmixingmodel.unmixingAE"], ref["core.loss"]
    torch.manual_seed(0)
    reference = ae.UnmixingAE(n_blocks=3, res_scale=0.1, input_channels=cube.shape[2],
                              conv=ref["core.common"].default_conv)
    ours = UnmixingAutoencoder(in_channels=3, out_bands=cube.shape[2])
    copy_unmixing_weights(reference, ours)
    target = torch.from_numpy(np.ascontiguousarray(cube.transpose(2, 0, 1)))[None, :, :64, :64]
    x = minmax(cube[:64, :64, [7, 17, 27]]).transpose(2, 0, 1)[None].copy()
    x = torch.from_numpy(x)
    with torch.no_grad():
        ref_abu, ref_y, ref_w = reference.eval()(x)
        our_abu, our_y = ours.eval()(x)
    rows.append(("unmixing AE forward: abundances", max_diff(ref_abu, our_abu), "SSPN encoder, same weights, 64 x 64"))
    rows.append(("unmixing AE forward: reconstruction", max_diff(ref_y, our_y), "decoder 1x1, 59 bands"))
    terms = {
        "Charbonnier (eps 1e-3)": (loss.CharbonnierLoss()(ref_y, target), charbonnier(our_y, target)),
        "SAD": (loss.reconstruction_SADloss()(ref_y, target), spectral_angle_loss(our_y, target)),
        "endmember TV": (loss.TVLossEndmembers()(ref_w), endmember_tv(ours.decoder.weight)),
    }
    for name, (a, b) in terms.items():
        rows.append((f"unmixing loss: {name}", max_diff(a, b), f"value {float(a.detach()):.6g}"))
    # one training step of each, as Unmixing.py train / pipeline.unmixing_train take it
    reference.train(), ours.train()
    opt_ref = torch.optim.Adam(reference.parameters(), lr=2e-4)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=2e-4)
    _, y, w = reference(x)
    total_ref = loss.CharbonnierLoss()(y, target) + 0.1 * loss.reconstruction_SADloss()(y, target) \
        + 0.015 * loss.TVLossEndmembers()(w)
    opt_ref.zero_grad(), total_ref.backward(), opt_ref.step()
    _, y2 = ours(x)
    total_ours, _ = unmixing_loss(y2, target, ours.decoder.weight,
                                  {"charbonnier": 1.0, "sad": 0.1, "endmember_tv": 0.015, "spectral_tv": 0.0})
    opt_ours.zero_grad(), total_ours.backward(), opt_ours.step()
    rows.append(("unmixing total loss", max_diff(total_ref, total_ours), "Charb + 0.1 SAD + 0.015 TV"))
    rows.append(("unmixing weights after one Adam step", params_diff(renamed_unmixing_state(reference), ours),
                 "lr 2e-4"))


def reference_diffusion(ref: dict, unet_kwargs: dict, schedule: dict):
    networks = ref["diffusionmodel.networks"]
    unet = networks.UNet(**{k: v for k, v in unet_kwargs.items()})
    diffusion = networks.GaussianDiffusion(unet, image_size=unet_kwargs["image_size"], channels=5, loss_type="l1",
                                           conditional=False)
    diffusion.set_loss(torch.device("cpu"))
    diffusion.set_new_noise_schedule(schedule, torch.device("cpu"))
    return diffusion


def our_diffusion(reference_unet, unet_kwargs: dict, schedule: dict, loss_type: str = "l1") -> GaussianDiffusion:
    unet = SR3UNet(**unet_kwargs)
    unet.load_state_dict(reference_unet.state_dict())  # the same key names
    return GaussianDiffusion(unet, unet_kwargs["image_size"], 5, NoiseSchedule.from_config(schedule), loss_type=loss_type)


def check_schedule(ref: dict, rows: list) -> None:
    torch.manual_seed(0)
    diffusion = reference_diffusion(ref, SMALL_UNET, PAPER_SCHEDULE)
    ours = NoiseSchedule.from_config(PAPER_SCHEDULE)
    names = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
             "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
             "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")
    worst = max((max_diff(getattr(diffusion, n), getattr(ours, n).float()), n) for n in names)
    rows.append(("noise schedule (11 buffers, float32)", worst[0], f"linear 1e-6..1e-2, T = 2000; worst: {worst[1]}"))
    rows.append(("noise levels sqrt(alpha_bar) with 1 prepended", max_diff(diffusion.sqrt_alphas_cumprod_prev,
                                                                          ours.noise_levels), "float64 both"))


def check_unet(ref: dict, size: int, rows: list) -> None:
    torch.manual_seed(0)
    reference = ref["diffusionmodel.networks"].UNet(**PAPER_UNET).eval()
    ours = SR3UNet(**PAPER_UNET).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 5, size, size, generator=torch.Generator().manual_seed(1))
    level = torch.tensor([[0.37]])
    with torch.no_grad():
        a, b = reference(x, level), ours(x, level.view(-1))
    rows.append(("SR3 UNet forward (paper config)", max_diff(a, b),
                 f"{count_parameters(reference):,} / {count_parameters(ours):,} parameters; input 1 x 5 x {size} x {size}"))


def check_ddpm_loss(ref: dict, rows: list) -> None:
    torch.manual_seed(0)
    reference = reference_diffusion(ref, SMALL_UNET, PAPER_SCHEDULE)
    ours = our_diffusion(reference.denoise_fn, SMALL_UNET, PAPER_SCHEDULE)
    reference.train(), ours.train()
    x0 = torch.rand(4, 5, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    np.random.seed(4)  # the reference draws t and the noise level with numpy
    state = np.random.get_state()
    b, c, h, w = x0.shape
    t = np.random.randint(1, reference.num_timesteps + 1)
    gamma = torch.FloatTensor(np.random.uniform(reference.sqrt_alphas_cumprod_prev[t - 1],
                                                reference.sqrt_alphas_cumprod_prev[t], size=b))
    ours.draw_noise_levels = lambda batch, device, generator=None: gamma
    np.random.set_state(state)
    torch.manual_seed(5)  # dropout masks
    summed = reference({"Abu": x0}, noise=noise)
    ref_loss = summed.sum() / int(b * c * h * w)  # diffusionmodel/model.py optimize_parameters
    torch.manual_seed(5)
    our_loss = ours.training_loss(x0, noise=noise)
    rows.append(("DDPM loss back-propagated (l1)", max_diff(ref_loss, our_loss), f"value {float(ref_loss.detach()):.6g}"))
    ours.loss_type = "l1_sum"
    torch.manual_seed(5)
    rows.append(("DDPM raw summed L1 (l1_sum option)", max_diff(summed, ours.training_loss(x0, noise=noise)),
                 f"value {float(summed.detach()):.6g}"))
    ours.loss_type = "l1"
    opt_ref = torch.optim.Adam(reference.parameters(), lr=1e-4)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-4)
    opt_ref.zero_grad(), ref_loss.backward(), opt_ref.step()
    torch.manual_seed(5)
    loss = ours.training_loss(x0, noise=noise)
    opt_ours.zero_grad(), loss.backward(), opt_ours.step()
    rows.append(("DDPM weights after one Adam step", params_diff(reference.denoise_fn, ours.denoise_fn),
                 "lr 1e-4, same t, noise level, noise and dropout masks"))


def check_sampler(ref: dict, steps: int, rows: list) -> None:
    schedule = dict(PAPER_SCHEDULE, n_timestep=steps)
    torch.manual_seed(0)
    reference = reference_diffusion(ref, SMALL_UNET, schedule).eval()
    ours = our_diffusion(reference.denoise_fn, SMALL_UNET, schedule).eval()
    shape = (1, 5, 16, 16)
    torch.manual_seed(11)
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        a = reference.p_sample_loop(shape, continous=False)
    b = ours.ancestral_sample(shape, torch.device("cpu"), generator=torch.Generator().manual_seed(11))
    rows.append(("ancestral sampler, same seed", max_diff(a, b[0]),
                 f"T = {steps}, small UNet 16 x 16; sample range [{float(a.min()):.2f}, {float(a.max()):.2f}]"))


METRIC_KEYS = (("MPSNR", "psnr"), ("MSSIM", "ssim"), ("SAM", "sam"), ("ERGAS", "ergas"), ("RMSE", "rmse"),
               ("CrossCorrelation", "cc"))


def our_quality(gt, pred) -> dict:
    return {"psnr": ours_metrics.psnr(gt, pred, 1.0), "ssim": ours_metrics.ssim(gt, pred, 1.0),
            "sam": ours_metrics.sam(gt, pred), "ergas": ours_metrics.ergas(gt, pred, 4.0),
            "rmse": ours_metrics.rmse(gt, pred), "cc": ours_metrics.cc(gt, pred)}


def check_metrics(ref: dict, crops: list, rows: list) -> None:
    quality = ref["core.metrics"].quality_assessment
    rng = np.random.default_rng(0)
    gt = crops[1]
    cases = {"real crop + N(0, 0.02)": np.clip(gt + rng.normal(0, 0.02, gt.shape), 0, 1).astype(np.float32),
             "real crop 118 vs 282": crops[0][:gt.shape[0], :gt.shape[1]]}
    for label, pred in cases.items():
        with np.errstate(all="ignore"):
            theirs = quality(gt, pred, data_range=1.0, ratio=4)
        mine = our_quality(gt, pred)
        for ref_key, our_key in METRIC_KEYS:
            rows.append((f"metric {our_key} ({label})", abs(theirs[ref_key] - mine[our_key]),
                         f"reference {theirs[ref_key]:.6g}, ours {mine[our_key]:.6g}"))


def metric_edge_cases(ref: dict, crops: list) -> list:
    """(case, metric, reference value, our value) on small real patches with one defect each."""
    quality = ref["core.metrics"].quality_assessment
    gt = crops[1][:32, :32].copy()
    rng = np.random.default_rng(1)
    noisy = np.clip(gt + rng.normal(0, 0.02, gt.shape), 0, 1).astype(np.float32)
    perfect_band = noisy.copy()
    perfect_band[..., 0] = gt[..., 0]
    zero_gt, zero_pred = gt.copy(), noisy.copy()
    zero_gt[0, 0] = 0.0
    zero_pred[0, 0] = 0.0
    constant_gt, constant_pred = gt.copy(), noisy.copy()
    constant_gt[..., 5] = 0.5
    constant_pred[..., 5] = 0.5
    parallel = (gt * np.float32(1.0001)).astype(np.float32)  # every spectrum exactly parallel, 0.01 % brighter
    cases = {"a perfectly reproduced band": (gt, perfect_band), "an all-zero pixel in both": (zero_gt, zero_pred),
             "a constant band reproduced exactly": (constant_gt, constant_pred),
             "parallel spectra (pred = 1.0001 gt)": (gt, parallel)}
    out = []
    for label, (a, b) in cases.items():
        with np.errstate(all="ignore"):
            theirs = quality(a, b, data_range=1.0, ratio=4)
        mine = our_quality(a, b)
        for ref_key, our_key in METRIC_KEYS:
            out.append((label, our_key, float(theirs[ref_key]), mine[our_key]))
    return out


SYNTHESIS_PATCHES = (
    ("train_path    = '' ", "train_path    = {abundances!r} "),
    ("model_name    = '' ", "model_name    = {checkpoint!r} "),
    ("'./experiments/Synthesis/HSI/'", "{out!r} + '/HSI/'"),
    ("'./experiments/Synthesis/RGB/'", "{out!r} + '/RGB/'"),
    ("num_workers=4", "num_workers=0"),
    ("net = decoderAE()", "net = decoderAE(output_channels=decoderweight.shape[0])"),  # its 128 is hard-coded
    ("net.eval().cuda()", "net.eval()"),
    ("torch.device('cuda')", "torch.device('cpu')"),
)


def check_synthesis(ref_dir: str, shims: str | None, rows: list) -> None:
    """The reference's Synthesis.py, run as a script on our files, against Synthesis.py's defaults."""
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(3)
        weight = torch.from_numpy(rng.random((59, 5, 1, 1)).astype(np.float32) * 0.9 - 0.05)
        ref_ckpt, our_ckpt = os.path.join(tmp, "ref.pth"), os.path.join(tmp, "ours.pth")
        torch.save({"epoch": 40, "model": {"decoderlayer.weight": weight}}, ref_ckpt)
        torch.save({"stage": "unmixing", "model": {"decoder.weight": weight}, "config": {"data": {}},
                    "out_bands": 59}, our_ckpt)
        abundances = os.path.join(tmp, "samples")
        for i in range(3):
            sr = np.clip(rng.dirichlet(np.ones(5), size=(16, 16)) * 2 - 1 + rng.normal(0, 0.05, (16, 16, 5)), -1, 1)
            write_mat(os.path.join(abundances, f"1_{i + 1}_sample_abu.mat"), {"SR": sr.astype(np.float32)})
        source = open(os.path.join(ref_dir, "Synthesis.py"), encoding="utf-8").read()
        values = {"abundances": abundances, "checkpoint": ref_ckpt, "out": os.path.join(tmp, "ref")}
        for old, new in SYNTHESIS_PATCHES:
            if old not in source:
                raise SystemExit(f"Synthesis.py of {ref_dir} has no line with {old!r}; is it the reference?")
            source = source.replace(old, new.format(**values))
        with reference_imports(ref_dir, shims):
            exec(compile(source, os.path.join(ref_dir, "Synthesis.py"), "exec"), {"__name__": "reference_synthesis"})
        run_synthesis(abundances, our_ckpt, os.path.join(tmp, "ours"), options=SynthesisOptions())
        # the reference numbers its outputs in os.listdir order; match files by that order
        order = [f for f in os.listdir(abundances) if f.endswith(".mat")]
        worst = {"HSI": 0.0, "Abu": 0.0, "End": 0.0}
        shapes = set()
        for i, name in enumerate(order):
            theirs = read_mat(os.path.join(tmp, "ref", "HSI", f"{i:04d}.mat"))
            mine = read_mat(os.path.join(tmp, "ours", "HSI", name))
            shapes.add((theirs["End"].shape, mine["End"].shape))
            for key in worst:
                worst[key] = max(worst[key], max_diff(theirs[key], mine[key]))
        for key, value in worst.items():
            rows.append((f"Synthesis.py output {key}", value, f"End shapes (reference, ours): {sorted(shapes)}"
                         if key == "End" else "3 sampled files, defaults of both scripts"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="checkout of HSI-Synthesis/Unmixing-before-fusion")
    parser.add_argument("--shims", help="folder with stand-ins for cv2, torchvision, tensorboardX, torchnet")
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with chikusei/block_{118,282}.mat")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true", help="200 sampler steps and a 32 x 32 UNet input")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Implicit dimension choice for softmax")  # the reference's nn.Softmax()
    if not os.path.isfile(os.path.join(args.ref, "unmixingmodel", "unmixingAE.py")):
        raise SystemExit(f"{args.ref}: not a checkout of the reference (no unmixingmodel/unmixingAE.py)")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    ref = load_reference(args.ref, args.shims)
    crops, source = real_crops(args.data)
    rows, started = [], time.perf_counter()
    check_unmixing(ref, crops[0], rows)
    check_schedule(ref, rows)
    check_unet(ref, 32 if args.quick else 64, rows)
    check_ddpm_loss(ref, rows)
    check_sampler(ref, 200 if args.quick else 2000, rows)
    check_metrics(ref, crops, rows)
    check_synthesis(args.ref, args.shims, rows)
    edges = metric_edge_cases(ref, crops)
    print(f"data: {source}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{time.perf_counter() - started:.0f} s; load {open('/proc/loadavg').read().split()[0]}"
          if os.path.isfile("/proc/loadavg") else f"data: {source}")
    print("\n| check | largest difference | notes |\n|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value:.3g} | {note} |")
    print("\n| edge case | metric | reference | ours |\n|---|---|---|---|")
    for label, metric, theirs, mine in edges:
        print(f"| {label} | {metric} | {theirs:.6g} | {mine:.6g} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"data": source, "rows": rows, "edge_cases": edges}, f, indent=1, default=float)  # numpy scalars
    return 0


if __name__ == "__main__":
    sys.exit(main())
