"""Run the authors' code and this project on the same inputs and print the largest differences.

The reference is imported from a folder the user gives (a checkout of HSI-Synthesis/Unmixing-before-fusion;
nothing of it is in this repository), and `--msf` a checkout of EtPan/MSF-Diff for the stage-1 input checks.
Its scripts need OpenCV, torchvision, tensorboardX and torchnet; where those are not installed, `--shims DIR`
puts a folder of small stand-ins first on the import path (docs/faithfulness.md shows the tiny files used;
with a real OpenCV installed the cv2 stand-in is not needed, and MSF-Diff's image reading needs the real one).

    python bench/compare_reference.py --ref REF_CHECKOUT [--msf MSF_CHECKOUT] [--shims SHIMS_DIR]
                                      [--data ../shared/data/paper] [--json out.json] [--quick] [--only NAME ...]

Each check builds both sides with the same weights (the reference's state dict copied into ours) and
the same inputs, then prints the largest absolute difference of the outputs. Checks: the unmixing
autoencoder forward pass, its three losses and one Adam step; the noise schedule; the SR3 UNet forward
pass (paper config, 97.8 M parameters); the DDPM loss and one Adam step; the ancestral sampler with the
same seed (the reference draws from torch's global generator, this project from a seeded Generator: same
stream); the metrics of `quality_assessment` on real Chikusei crops and on edge cases; and the
reference's Synthesis.py script run as a script (paths and device patched in memory) against
`pipeline.synthesis`. `--quick` shortens the sampler to 200 steps and the UNet input to 32 x 32.

Round 2 (issue 24): the reference's stage-2 training loop (its Diffusion.py run as a script with the model
stubbed: batches, epochs and the checkpoint name it would write) against ours; its DDPM.optimize_parameters'
logged l_pix against the per-element loss our log line prints; with `--msf`, MSF-Diff's RGBDataset + UnmixingAE
against `Unmixing.py infer` for a network trained on bands 7/17/27 (RGB images), and MSF-Diff's HSIDataset
against infer --hsi with one of its checkpoints; and SAM with the reference's float32 running sum and with a
float64 one, to show where the last 1e-4 degrees come from.
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
REFERENCE_TOP = ("core", "diffusionmodel", "unmixingmodel", "model")


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
                   ("unmixingmodel.unmixingAE", "core.common", "core.loss", "core.metrics", "diffusionmodel.networks",
                    "diffusionmodel.model")}
    return modules


# helpers ---------------------------------------------------------------------------------------------

# The reference's unmixing key names (read off unmixingmodel/unmixingAE.py and core/common.py) -> ours.
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


# round 2 (issue 24) ---------------------------------------------------------------------------------

DIFFUSION_PATCHES = (  # the reference's Diffusion.py as a script: model and logging stubbed, the loop itself untouched
    ("import diffusionmodel as Model", "Model = __stub_model__"),
    ("import core.HSImetrics as Metrics", "Metrics = None"),  # skimage.measure's compare_* are gone from skimage
    ("opt = Logger.parse(args)", "opt = __opt__"),
    ("train_path    = './dataset/inferred_abu/'", "train_path    = __data__"),
    ("num_workers=4", "num_workers=0"),
)


class StubDDPM:
    """What the reference's training loop calls on its model; records each batch it is fed."""

    def __init__(self):
        self.begin_step, self.begin_epoch, self.batches, self.at = 0, 0, [], []
        self.loop = {}  # the script's namespace: its loop counters at each batch

    def set_new_noise_schedule(self, *args, **kwargs):
        pass

    def feed_data(self, data):
        self.batches.append([hash(x.numpy().tobytes()) for x in data["Abu"]])
        self.at.append((self.loop["current_step"], self.loop["current_epoch"]))

    def optimize_parameters(self):
        pass

    def get_current_log(self):
        return {}


def reference_training_loop(ref_dir: str, shims: str | None, data: str, n_iter: int) -> tuple[list, int, int]:
    """(the batches as file fingerprints, step and epoch of the last batch) of the reference's training loop."""
    source = open(os.path.join(ref_dir, "Diffusion.py"), encoding="utf-8").read()
    for old, new in DIFFUSION_PATCHES:
        if old not in source:
            raise SystemExit(f"Diffusion.py of {ref_dir} has no {old!r}; is it the reference?")
        source = source.replace(old, new)
    source = source.replace("Logger.setup_logger(", "(lambda *a, **k: None)(")
    model = StubDDPM()
    with tempfile.TemporaryDirectory() as tmp:
        opt = {"path": {"log": tmp, "tb_logger": tmp, "results": tmp, "mat_results": tmp, "resume_state": None},
               "enable_wandb": False, "log_wandb_ckpt": False, "phase": "train",
               "train": {"n_iter": n_iter, "print_freq": 10 ** 9}, "datasets": {"val": {"data_len": 50}},
               "model": {"beta_schedule": {"train": {}, "val": {}}}}
        namespace = {"__name__": "__main__", "__stub_model__": type("M", (), {"create_model": staticmethod(
            lambda opt: model)}), "__opt__": opt, "__data__": data + os.sep}
        model.loop = namespace
        argv = sys.argv
        sys.argv = ["Diffusion.py", "-p", "train"]
        try:
            with reference_imports(ref_dir, shims), contextlib.redirect_stdout(open(os.devnull, "w")):
                exec(compile(source, os.path.join(ref_dir, "Diffusion.py"), "exec"), namespace)
        finally:
            sys.argv = argv
    step, epoch = model.at[-1]  # what a checkpoint saved at the last step would be named (its save_network)
    return model.batches, step, epoch


def check_stage2_batching(ref_dir: str, shims: str | None, rows: list) -> None:
    """Item 1: batch 8 (the reference's hard-coded batch): 5 files, 30 steps; 20 files, 10 steps (8, 8, 4)."""
    from ubf.data.abundance_dataset import AbundanceDataset, AbundanceStream, list_abundance_files
    from ubf.pipeline.diffusion_config import load_diffusion_config
    from ubf.pipeline.diffusion_train import train_diffusion
    for files, batch, n_iter in ((5, 8, 30), (20, 8, 10)):
        with tempfile.TemporaryDirectory() as tmp:
            rng = np.random.default_rng(files)
            data = os.path.join(tmp, "abu")
            for i in range(files):
                write_mat(os.path.join(data, f"{i:04d}.mat"),
                          {"Abu": rng.dirichlet(np.ones(5), size=(8, 8)).astype(np.float32)})
            theirs, step, epoch = reference_training_loop(ref_dir, shims, data, n_iter)
            dataset = AbundanceDataset(list_abundance_files(data), 8, 5)
            stream = AbundanceStream(files, seed=0, flip="none", global_batch=batch, per_epoch=True).batches()
            ours = [[hash(dataset[item].numpy().tobytes()) for item in next(stream)] for _ in range(n_iter)]
            every_file = sorted(hash(dataset[i].numpy().tobytes()) for i in range(files))
            cfg = load_diffusion_config(None, {
                "datasets.train.dataroot": data, "datasets.train.batch_size": batch, "datasets.train.num_workers": 0,
                "model.unet.inner_channel": 8, "model.unet.norm_groups": 4, "model.unet.channel_multiplier": [1, 2],
                "model.unet.attn_res": [], "model.unet.res_blocks": 1, "model.diffusion.image_size": 8,
                "sample.steps": 5, "train.n_iter": n_iter, "train.print_freq": 10 ** 6, "train.val_freq": 10 ** 6,
                "train.save_checkpoint_freq": 10 ** 6, "train.preview_samples": 0})
            last = train_diffusion(cfg, tmp, torch.device("cpu"), 0, run_dir=os.path.join(tmp, "run"), progress=False)
        sizes = ([len(b) for b in theirs], [len(b) for b in ours])
        distinct = (all(len(set(b)) == len(b) for b in theirs), all(len(set(b)) == len(b) for b in ours))
        first = -(-files // batch)  # batches of one epoch
        whole = (sorted(x for b in theirs[:first] for x in b) == every_file,
                 sorted(x for b in ours[:first] for x in b) == every_file)
        rows.append((f"stage-2 batch sizes, {files} files, batch {batch}, {n_iter} steps",
                     float(sum(a != b for a, b in zip(*sizes)) + abs(len(sizes[0]) - len(sizes[1]))),
                     f"steps whose size differs; reference {sizes[0][:4]}..., ours {sizes[1][:4]}...; distinct files "
                     f"per step (reference / ours): {distinct[0]} / {distinct[1]}; first epoch is every file once: "
                     f"{whole[0]} / {whole[1]}"))
        name = os.path.basename(last)
        rows.append((f"stage-2 checkpoint name after {n_iter} steps ({files} files, batch {batch})",
                     float(name != f"I{step}_E{epoch}.pth"), f"reference I{step}_E{epoch}, ours {name[:-4]}"))


def check_loss_log(ref: dict, rows: list) -> None:
    """Item 6: the reference's DDPM.optimize_parameters logs l_pix = sum / (b*c*h*w); our log line's value."""
    from ubf.pipeline.diffusion_train import per_element
    model_module = ref["diffusionmodel.model"]
    unet = {k: v for k, v in SMALL_UNET.items()}
    opt = {"gpu_ids": None, "phase": "train", "distributed": False, "path": {"resume_state": None},
           "train": {"optimizer": {"lr": 1e-4}},
           "model": {"finetune_norm": False, "beta_schedule": {"train": PAPER_SCHEDULE, "val": PAPER_SCHEDULE},
                     "unet": {"in_channel": 5, "out_channel": 5, "inner_channel": unet["inner_channel"],
                              "norm_groups": unet["norm_groups"], "channel_multiplier": list(unet["channel_mults"]),
                              "attn_res": list(unet["attn_res"]), "res_blocks": unet["res_blocks"], "dropout": 0.0},
                     "diffusion": {"image_size": 16, "channels": 5, "conditional": False}}}
    torch.manual_seed(0)
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        reference = model_module.DDPM(opt)
    ours = our_diffusion(reference.netG.denoise_fn, dict(SMALL_UNET, dropout=0.0), PAPER_SCHEDULE)
    x0 = torch.rand(4, 5, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    np.random.seed(4)
    state = np.random.get_state()
    t = np.random.randint(1, reference.netG.num_timesteps + 1)
    gamma = torch.FloatTensor(np.random.uniform(reference.netG.sqrt_alphas_cumprod_prev[t - 1],
                                                reference.netG.sqrt_alphas_cumprod_prev[t], size=4))
    np.random.set_state(state)
    torch.manual_seed(5)
    reference.feed_data({"Abu": x0})
    reference.optimize_parameters()
    logged = reference.get_current_log()["l_pix"]
    ours.draw_noise_levels = lambda batch, device, generator=None: gamma
    torch.manual_seed(5)
    noise = torch.randn_like(x0)
    loss = float(ours.training_loss(x0, noise=noise).detach())
    numel = x0.numel()
    rows.append(("DDPM loss as logged (l1)", abs(logged - per_element(loss, "l1", numel)),
                 f"reference l_pix {logged:.6g}, ours {per_element(loss, 'l1', numel):.6g} (before the fix the log "
                 f"divided once more: {loss / numel:.3g})"))


def check_msf_inputs(msf_dir: str, shims: str | None, data_dir: str, rows: list) -> None:
    """Items 2 and 3: which channels and bands reach a stage-1 network, MSF-Diff against Unmixing.py infer."""
    from ubf.core.checkpoint import save_checkpoint
    from ubf.core.reference_format import swap_input_order, unmixing_from_reference
    from ubf.pipeline.unmixing_config import load_unmixing_config
    from ubf.pipeline.unmixing_infer import infer_folders
    with reference_imports(msf_dir, shims):
        ae = importlib.import_module("model.unmixingAE")
        common = importlib.import_module("core.common")
        loaddata = importlib.import_module("core.loaddata")
    torch.manual_seed(0)
    net = ae.UnmixingAE(n_blocks=3, res_scale=0.1, input_channels=3, output_channels=59,
                        conv=common.default_conv).eval()
    with tempfile.TemporaryDirectory() as tmp:
        image_dir, hsi_dir = os.path.join(tmp, "RGB"), os.path.join(tmp, "evals")
        os.makedirs(image_dir)
        tile = os.path.join(data_dir, "aid", "farmland_140.jpg")
        from PIL import Image
        picture = Image.open(tile).convert("RGB").crop((0, 0, 96, 96)) if os.path.isfile(tile) else \
            Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8))
        picture.save(os.path.join(image_dir, "a.png"))
        with torch.no_grad():  # msf:1_scene-based-unmixing.py:233-249 (loader, forward)
            gt, rgb = loaddata.RGBDataset(image_dir=image_dir)[0]
            theirs = net(rgb[None])[0][0].permute(1, 2, 0).numpy()
            fed_rgb = net(rgb.flip(0)[None])[0][0].permute(1, 2, 0).numpy()  # what R, G, B feeding gave
        weights, model_cfg = unmixing_from_reference(net.state_dict())
        weights["encoder.stem.weight"] = swap_input_order(weights["encoder.stem.weight"])  # trained in 7-17-27 order
        cfg = load_unmixing_config(None, {"data.bands": "reference-7-17-27"})
        ours_ckpt = os.path.join(tmp, "ours.pth")
        save_checkpoint({"stage": "unmixing", "model": weights, "config": cfg, "epoch": 0, "band_indices": [7, 17, 27],
                         "in_channels": 3, "out_bands": 59}, ours_ckpt)
        infer_folders(ours_ckpt, [image_dir], None, os.path.join(tmp, "abu"), torch.device("cpu"), workers=0)
        ours = read_mat(os.path.join(tmp, "abu", "a.mat"))["Abu"]
        rows.append(("stage-1 RGB input of a network trained on bands 7/17/27: abundances", max_diff(theirs, ours),
                     f"MSF-Diff RGBDataset + UnmixingAE vs Unmixing.py infer, 96 x 96 AID crop; R, G, B fed (before): "
                     f"{max_diff(theirs, fed_rgb):.3g}"))
        crop = os.path.join(data_dir, "chikusei", "block_118.mat")
        os.makedirs(hsi_dir)
        cube = read_hsi(crop)[0][:64, :64] if os.path.isfile(crop) else np.random.default_rng(1).random((64, 64, 59))
        sio_cube = np.ascontiguousarray(cube, dtype=np.float32)
        write_mat(os.path.join(hsi_dir, "c.mat"), {"Y": sio_cube})
        with torch.no_grad():  # msf: HSIDataset (core/loaddata.py:38-58) + the network
            gt, bands = loaddata.HSIDataset(image_dir=hsi_dir)[0]
            theirs = net(bands[None])[0][0].permute(1, 2, 0).numpy()
            three = minmax(sio_cube[..., [53, 33, 14]]).transpose(2, 0, 1)[None].copy()
            old = ours_model_forward(net, three)
        ref_ckpt = os.path.join(tmp, "UnmixingAE_Chikusei_latest.pth")
        torch.save({"epoch": 40, "model": net.state_dict()}, ref_ckpt)
        infer_folders(ref_ckpt, None, [hsi_dir], os.path.join(tmp, "abu_hsi"), torch.device("cpu"), workers=0)
        ours = read_mat(os.path.join(tmp, "abu_hsi", "c.mat"))["Abu"]
        rows.append(("stage-1 HSI input of an imported MSF-Diff checkpoint: abundances", max_diff(theirs, ours),
                     f"MSF-Diff HSIDataset (bands 7, 17, 27) vs infer --hsi, 64 x 64 of crop 118; bands 53/33/14 "
                     f"(before): {max_diff(theirs, old):.3g}"))


def ours_model_forward(net, x: np.ndarray) -> np.ndarray:
    """The reference network on bands 53/33/14 given as our R, G, B, i.e. in its channel order 14/33/53."""
    return net(torch.from_numpy(x[:, ::-1].copy()))[0][0].permute(1, 2, 0).numpy()


def reference_sam_float64(x_true, x_pred) -> float:
    """The reference's compare_sam (core/metrics.py:37-55) with its running sum started as float64, the type
    NumPy 1 gave `0 + np.float32(...)`; NumPy 2 (NEP 50) keeps it float32. Written out here, not imported."""
    x_true, x_pred = x_true.astype(np.float32), x_pred.astype(np.float32)
    total, num = np.float64(0), 0
    for x in range(x_true.shape[0]):
        for y in range(x_true.shape[1]):
            p, t = x_pred[x, y].ravel(), x_true[x, y].ravel()
            if np.linalg.norm(t) != 0 and np.linalg.norm(p) != 0:
                total += np.arccos(np.inner(p, t) / (np.linalg.norm(t) * np.linalg.norm(p)))
                num += 1
    return float(total / num * 180 / np.pi)


def check_sam(ref: dict, crops: list, rows: list) -> None:
    """Item 5: SAM on poor reconstructions, against the reference as it runs and with a float64 running sum."""
    compare_sam = ref["core.metrics"].compare_sam
    rng = np.random.default_rng(5)
    gt = crops[1]
    cases = {"crop + N(0, 0.1)": np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32),
             "crop 118 vs a uniform random cube": rng.random(gt.shape).astype(np.float32),
             "crop 118 vs 282": crops[0][:gt.shape[0], :gt.shape[1]]}
    big = np.concatenate([np.concatenate([gt, gt[::-1]], 0), np.concatenate([gt[:, ::-1], gt[::-1, ::-1]], 0)], 1)
    cases["256 x 256 (crop 118 mirrored 2 x 2) + N(0, 0.2)"] = (
        big, np.clip(big + rng.normal(0, 0.2, big.shape), 0, 1).astype(np.float32))
    for label, pred in cases.items():
        truth, pred = pred if isinstance(pred, tuple) else (gt, pred)
        with np.errstate(all="ignore"):
            theirs = float(compare_sam(truth, pred))
        wide = reference_sam_float64(truth, pred)
        mine = ours_metrics.sam(truth, pred)
        rows.append((f"metric sam ({label})", abs(theirs - mine),
                     f"reference {theirs:.6g} (float32 running sum), ours {mine:.6g}; with a float64 sum the "
                     f"reference gives {wide:.6g}, {abs(wide - mine):.2g} from ours"))


CHECKS = ("unmixing", "schedule", "unet", "ddpm_loss", "sampler", "metrics", "synthesis", "batching", "loss_log",
          "msf_inputs", "sam")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="checkout of HSI-Synthesis/Unmixing-before-fusion")
    parser.add_argument("--shims", help="folder with stand-ins for cv2, torchvision, tensorboardX, torchnet")
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with chikusei/block_{118,282}.mat")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true", help="200 sampler steps and a 32 x 32 UNet input")
    parser.add_argument("--msf", help="checkout of EtPan/MSF-Diff (the stage-1 input checks; skipped without)")
    parser.add_argument("--only", nargs="+", choices=CHECKS, help="run only these checks")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Implicit dimension choice for softmax")  # the reference's nn.Softmax()
    if not os.path.isfile(os.path.join(args.ref, "unmixingmodel", "unmixingAE.py")):
        raise SystemExit(f"{args.ref}: not a checkout of the reference (no unmixingmodel/unmixingAE.py)")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    ref = load_reference(args.ref, args.shims)
    crops, source = real_crops(args.data)
    rows, started = [], time.perf_counter()
    chosen = set(args.only or CHECKS)
    steps = {
        "unmixing": lambda: check_unmixing(ref, crops[0], rows),
        "schedule": lambda: check_schedule(ref, rows),
        "unet": lambda: check_unet(ref, 32 if args.quick else 64, rows),
        "ddpm_loss": lambda: check_ddpm_loss(ref, rows),
        "sampler": lambda: check_sampler(ref, 200 if args.quick else 2000, rows),
        "metrics": lambda: check_metrics(ref, crops, rows),
        "synthesis": lambda: check_synthesis(args.ref, args.shims, rows),
        "batching": lambda: check_stage2_batching(args.ref, args.shims, rows),
        "loss_log": lambda: check_loss_log(ref, rows),
        "msf_inputs": lambda: check_msf_inputs(args.msf, args.shims, args.data, rows) if args.msf else
        print("--msf not given: the stage-1 input checks (items 2, 3) are skipped"),
        "sam": lambda: check_sam(ref, crops, rows),
    }
    for name in CHECKS:
        if name in chosen:
            steps[name]()
    edges = metric_edge_cases(ref, crops) if "metrics" in chosen else []
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
