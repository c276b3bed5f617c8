"""`Evaluate.py generation`: synthetic HSIs against a folder of real HSIs, with baselines.

One pass over each set keeps capped samples (`evaluation.sampling`); every metric then works on
those samples: F_p and the angle histogram on pixels, precision/recall on a sub-sample of them, D_b
on synthetic blocks against whole real images, FD/KID on patch features of a network trained on the
real patches (`evaluation.features`). Baselines go through the same function.
"""
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from ubf.core.errors import UserError
from ubf.core.logs import get_logger
from ubf.evaluation import baselines, plots
from ubf.evaluation.features import FeatureSettings, embed_patches, load_or_train
from ubf.evaluation.fidelity import block_diversity, point_fidelity
from ubf.evaluation.frechet import disjoint_halves, frechet_distance, kernel_distance, real_floor
from ubf.evaluation.prdc import precision_recall
from ubf.evaluation.report import check_out_dir, metric_table, write_json, write_markdown
from ubf.evaluation.sampling import Caps, SetSample, capped, collect, collect_folder, hsi_files, read_folder

SET_METRICS = ["F_p", "D_b", "D_b_max", "D_b_ncc", "D_b_ncc_max", "precision", "recall", "FD", "FD_half", "KID",
               "KID_std", "angle_median", "angle_p95"]
PHYSICAL_METRICS = ["abundance_sum_error_mean", "abundance_sum_error_max", "abundance_negative_fraction",
                    "mixing_rmse", "spectra_min", "spectra_max", "spectra_negative_fraction",
                    "spectra_above_one_fraction"]


@dataclass
class GenerationSettings:
    """Everything that changes a generation report (recorded in it as `settings.*`)."""
    caps: Caps = field(default_factory=Caps)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    k: int = 3
    prdc_cap: int = 10000
    kid_subsets: int = 50
    kid_subset_size: int = 1000
    baselines: bool = True
    dirichlet_alpha: float = 1.0
    baseline_endmembers: int = 5
    endmembers: str | None = None
    feature_cache: str | None = None
    key: str | None = None
    chunk: int = 4096
    normalise_real: bool = True  # False: the real set is taken as it is (e.g. HSIs rendered like the synthetic)


class FeatureSpace:
    """The trained feature network plus the real features, shared by every compared set."""

    def __init__(self, real: SetSample, settings: GenerationSettings, device, progress: bool = True):
        start = time.time()
        self.net, self.key, self.cached = load_or_train(
            real.files, real.patches, settings.features, settings.feature_cache,
            extra={"patch_cap": settings.caps.patch_cap, "seed": settings.caps.seed}, progress=progress)
        self.train_s = time.time() - start
        self.device = device
        self.real = embed_patches(self.net, real.patches, device=device)
        self.settings = settings

    def compare(self, patches: torch.Tensor) -> dict[str, float]:
        """FD and KID of (M, C, p, p) patches against the real features; FD_half against half the real set."""
        s = self.settings
        feats = embed_patches(self.net, patches, device=self.device)
        if feats.shape[0] < 2:
            return {}
        kid, kid_std = kernel_distance(self.real, feats, s.kid_subsets, s.kid_subset_size, s.caps.seed)
        _, second = disjoint_halves(self.real.shape[0], s.caps.seed)
        same_size = capped(feats, len(second), s.caps.seed)
        return {"FD": frechet_distance(self.real, feats), "FD_half": frechet_distance(self.real[second], same_size),
                "KID": kid, "KID_std": kid_std}

    def floor(self) -> dict[str, float]:
        s = self.settings
        return real_floor(self.real, s.caps.seed, s.kid_subsets, s.kid_subset_size)


def score_set(real: SetSample, other: SetSample, space: FeatureSpace | None, settings: GenerationSettings,
              device) -> tuple[dict[str, float], torch.Tensor]:
    """All set metrics of `other` against `real`: (flat metric dict, angles to nearest real (N,))."""
    seed, chunk = settings.caps.seed, settings.chunk
    out = {"n_files": len(other.files), "n_pixels_sampled": int(other.pixels.shape[0]),
           "n_blocks": int(other.blocks.shape[0]), "n_patches": int(other.patches.shape[0])}
    out["F_p"], angles = point_fidelity(other.pixels, real.pixels, chunk, device)
    out["angle_median"] = float(angles.median())
    out["angle_p95"] = float(torch.quantile(angles.double(), 0.95))
    if other.blocks.shape[0] and real.images:
        out["D_b"], scores = block_diversity(other.blocks, real.images, device)
        out["D_b_max"] = float(scores.max())
        out["D_b_ncc"], scores = block_diversity(other.blocks, real.images, device, mode="ncc")
        out["D_b_ncc_max"] = float(scores.max())
    reals, others = capped(real.pixels, settings.prdc_cap, seed), capped(other.pixels, settings.prdc_cap, seed)
    if not settings.k < min(len(reals), len(others)):  # k-th neighbours need more points than k
        raise UserError(f"--k {settings.k}: precision/recall need more sampled pixels than k ({len(reals)} real, "
                        f"{len(others)} synthetic); lower --k or raise --pixel-cap")
    out.update(precision_recall(reals, others, settings.k, chunk, device))
    if space is not None:
        out.update(space.compare(other.patches))
    out.update(other.physical)
    return out, angles


def _prefixed(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def run_generation(real_dir: str, synthetic_dir: str, out_dir: str, settings: GenerationSettings,
                   device: torch.device, overwrite: bool = False, progress: bool = True) -> dict:
    """Write report.json, summary.md and the PNG plots; return the report dict."""
    log = get_logger()
    check_out_dir(out_dir, overwrite)
    caps = settings.caps
    started = time.time()
    timing = {}
    real = collect_folder("real", real_dir, settings.normalise_real, caps, keep_images=True, key=settings.key,
                          progress=progress)
    synthetic = collect_folder("synthetic", synthetic_dir, False, caps, keep_images=False, key=settings.key,
                               progress=progress)
    if synthetic.bands != real.bands:
        raise UserError(f"{synthetic_dir}: {synthetic.bands} bands, but the real set {real_dir} has {real.bands}")
    timing["timing.read_s"] = time.time() - started
    log.info("real: %d files, %d pixels sampled; synthetic: %d files, %d pixels sampled",
             len(real.files), real.pixels.shape[0], len(synthetic.files), synthetic.pixels.shape[0])

    t = time.time()
    space = FeatureSpace(real, settings, device, progress) if real.patches.shape[0] >= 4 else None
    timing["timing.features_s"] = time.time() - t
    report = {"real_dir": os.path.abspath(real_dir), "synthetic_dir": os.path.abspath(synthetic_dir),
              "bands": real.bands, "real.n_files": len(real.files), "real.n_pixels_sampled": int(real.pixels.shape[0]),
              "real.n_images_for_D_b": len(real.images), "real.n_patches": int(real.patches.shape[0])}
    report.update(_prefixed("settings.", _flat_settings(settings)))
    if space is not None:
        report.update(space.floor())
        report["feature_cache_key"] = space.key
        report["feature_net_cached"] = space.cached
    else:
        log.warning("fewer than 4 real patches of %d px: FD/KID skipped", caps.patch_size)

    t = time.time()
    metrics, angles = score_set(real, synthetic, space, settings, device)
    report.update(metrics)
    timing["timing.synthetic_s"] = time.time() - t
    angle_sets = {"synthetic": angles}
    pixel_sets = {"real": real.pixels, "synthetic": synthetic.pixels}

    if settings.baselines:
        t = time.time()
        report.update(run_baselines(real, real_dir, synthetic, space, settings, device, angle_sets, progress))
        timing["timing.baselines_s"] = time.time() - t

    t = time.time()
    plot_dir = os.path.join(out_dir, "plots")
    plots.angle_histogram(angle_sets, os.path.join(plot_dir, "angle_to_nearest_real.png"))
    plots.mean_spectra(pixel_sets, os.path.join(plot_dir, "mean_spectra.png"), real.wavelengths)
    plots.band_density(pixel_sets, os.path.join(plot_dir, "band_density.png"), real.wavelengths)
    timing["timing.plots_s"] = time.time() - t
    timing["timing.total_s"] = time.time() - started
    report.update(timing)
    write_json(report, out_dir)
    write_markdown(generation_summary(report), out_dir)
    log.info("generation report: %s (%.1f s)", os.path.join(out_dir, "report.json"), timing["timing.total_s"])
    return report


def run_baselines(real: SetSample, real_dir: str, synthetic: SetSample, space, settings: GenerationSettings,
                  device, angle_sets: dict, progress: bool) -> dict:
    """Metrics of the Dirichlet, real-copies and (with 2+ real files) held-out-real baselines."""
    log = get_logger()
    caps = settings.caps
    out = {}
    endmembers, origin = baselines.find_endmembers(settings.endmembers, synthetic.files, real_dir,
                                                   settings.baseline_endmembers, caps.seed)
    if endmembers.shape[0] != real.bands:
        log.warning("endmembers from %s have %d bands, the real set %d: Dirichlet baseline skipped",
                    origin, endmembers.shape[0], real.bands)
    else:
        shapes = [tuple(img.shape[1:]) for img in real.images] or [(64, 64)]
        count = max(len(synthetic.files), 1)
        shapes = [shapes[i % len(shapes)] for i in range(min(count, max(caps.image_cap, 1)))]
        source = baselines.dirichlet_source(endmembers, shapes, caps.seed, settings.dirichlet_alpha)
        dirichlet = collect("dirichlet", source, len(shapes), caps, keep_images=False, progress=progress)
        metrics, angle_sets["baseline Dirichlet"] = score_set(real, dirichlet, space, settings, device)
        out.update(_prefixed("baseline_dirichlet.", metrics))
        out["baseline_dirichlet.endmembers_from"] = origin
    metrics, angle_sets["baseline real copies"] = score_set(real, real, space, settings, device)
    out.update(_prefixed("baseline_real_copies.", metrics))
    files = hsi_files(real_dir, "real")
    if len(files) >= 2:
        reference_files, heldout_files = baselines.split_files(files, caps.seed)
        reference = collect("real reference half",
                            read_folder(reference_files, settings.normalise_real, settings.key),
                            len(reference_files), caps, keep_images=True, progress=progress)
        heldout = collect("real held-out half",
                          read_folder(heldout_files, settings.normalise_real, settings.key),
                          len(heldout_files), caps, keep_images=False, progress=progress)
        metrics, angle_sets["baseline real held-out"] = score_set(reference, heldout, None, settings, device)
        out.update(_prefixed("baseline_real_heldout.", metrics))
    return out


def _flat_settings(settings: GenerationSettings) -> dict:
    flat = {}
    for name, value in asdict(settings).items():
        if isinstance(value, dict):
            flat.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            flat[name] = value
    return flat


def generation_summary(report: dict) -> list[str]:
    """Markdown lines: what was compared, the metric table with baselines, the floor, the physical checks."""
    sets = [("synthetic", ""), ("baseline: Dirichlet abundances", "baseline_dirichlet."),
            ("baseline: real crops themselves", "baseline_real_copies."),
            ("baseline: held-out real half", "baseline_real_heldout.")]
    lines = ["# Generation report", "",
             f"Real set: `{report['real_dir']}` ({report['real.n_files']} files, "
             f"{'min-max normalised per file' if report.get('settings.normalise_real', True) else 'as they are'}); "
             f"synthetic set: `{report['synthetic_dir']}` ({report['n_files']} files, as they are).", "",
             "F_p, precision, recall: higher is more realistic. D_b (per-pixel cosine, the paper's) and D_b_ncc "
             "(normalised cross-correlation, sharper): 1 means a block copied from a real image (memorisation); "
             "lower is more novel. FD/KID: lower is closer to the real distribution; compare with the real-vs-real "
             "floor. Keys: docs/evaluation.md.", ""]
    lines += metric_table(report, SET_METRICS, sets)
    if "FD_real_floor" in report:
        lines += ["", "Real-vs-real floor (two disjoint halves of the real patches): "
                      f"FD {_num(report['FD_real_floor'])}, "
                      f"KID {_num(report['KID_real_floor'])}. `FD_half` compares the synthetic set with one of "
                      "those halves at the same size, the like-for-like number to set beside the floor."]
    lines += ["", "## Physical checks", ""]
    lines += metric_table(report, PHYSICAL_METRICS, sets[:2])
    lines += ["", "## Timing (s)", ""]
    lines += [f"- {k[len('timing.'):]}: {report[k]:.1f}" for k in sorted(report) if k.startswith("timing.")]
    lines += ["", "Plots: `plots/angle_to_nearest_real.png`, `plots/mean_spectra.png`, `plots/band_density.png`."]
    return lines


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"
