"""Evaluation CLI: how good are the unmixing network and the synthetic HSIs? Writes report.json,
summary.md and PNG plots into --out.

    python Evaluate.py reconstruction --ckpt CKPT --hsi DIR --out DIR
    python Evaluate.py generation --real DIR --synthetic DIR --out DIR [--pixel-cap N] [--seed S]
    python Evaluate.py downstream --real DIR --synthetic DIR --out DIR [--seeds 0 1 2] [--steps N]
    python Evaluate.py downstream --real DIR --abundances DIR --endmembers CKPT --out DIR [--task sr4 --model unet]

See docs/evaluation.md for what every metric and report key means.
"""
import argparse
import os
import sys

from ubf.core.checkpoint import add_trust_flag, trust_checkpoint_code
from ubf.core.cliflags import (add_device_argument, add_overwrite_argument, add_progress_argument, add_seed_argument,
                               add_threads_argument, runtime_flags)
from ubf.core.device import resolve_device
from ubf.core.errors import OneLineParser, UserError, cli_main
from ubf.core.fs import check_output_path
from ubf.core.logs import get_logger, setup_logging
from ubf.core.profiles import add_profile_argument
from ubf.core.validate import (FLOAT_POSITIVE, FRACTION_OPEN, INT_ANY, INT_NONNEGATIVE, INT_POSITIVE, PROBABILITY,
                           flag)
from ubf.core.version import add_version_argument
from ubf.evaluation.downstream_models import MODELS, PATHS
from ubf.evaluation.downstream_tasks import TASKS


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="report folder (report.json, summary.md, plots/)")
    parser.add_argument("--key", help="variable name of the cube in .mat files (default: the first of Y, HSI, ...)")
    add_device_argument(parser)
    add_threads_argument(parser)
    add_overwrite_argument(parser, "an existing report in --out")
    add_progress_argument(parser)
    add_profile_argument(parser)
    add_trust_flag(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Evaluate the unmixing network and synthetic HSIs")
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruction", help="stage 1: PSNR/SSIM/SAM/ERGAS/RMSE/CC on held-out HSIs, "
                         "map contrast, endmember distance to the data, abundance RMSE against a reference")
    rec.add_argument("--ckpt", required=True, help="unmixing checkpoint, or a run folder (its latest.pth; best.pth "
                     "with --checkpoint best or --profile improved)")
    rec.add_argument("--checkpoint", choices=("latest", "best"), help="which file of a run folder (default latest)")
    rec.add_argument("--hsi", required=True, help="folder of held-out HSIs (.mat, ENVI or TIFF)")
    rec.add_argument("--tile", type=flag(INT_POSITIVE), default=256, help="inference tile size (default 256)")
    rec.add_argument("--overlap", type=flag(INT_NONNEGATIVE), default=32, help="tile overlap (default 32)")
    rec.add_argument("--reference-key", help="variable of the reference abundances in the HSI files (default: the "
                     "first of S_GT, Abu_GT, A, Abu present; none: no abundance RMSE)")
    _common(rec)

    gen = sub.add_parser("generation", help="synthetic vs real HSIs: F_p, D_b, precision/recall, FD/KID, plots")
    gen.add_argument("--real", required=True, help="folder of real HSIs (.mat, ENVI or TIFF; min-max normalised "
                     "per file)")
    gen.add_argument("--synthetic", required=True, help="folder of synthetic HSIs (.mat, ENVI or TIFF; taken as "
                     "they are)")
    add_seed_argument(gen, default=0, what="every sub-sample and of the feature network")
    gen.add_argument("--pixel-cap", type=flag(INT_POSITIVE), default=20000,
                     help="spectra sampled per set (default 20000)")
    gen.add_argument("--prdc-cap", type=flag(INT_POSITIVE), default=10000,
                     help="spectra used for precision/recall (default 10000)")
    gen.add_argument("--k", type=flag(INT_POSITIVE), default=3, help="k of the k-NN manifolds (default 3)")
    gen.add_argument("--patch-cap", type=flag(INT_POSITIVE), default=4000,
                     help="feature patches per set (default 4000)")
    gen.add_argument("--patch-size", type=flag(INT_POSITIVE), default=8, help="feature patch side (default 8)")
    gen.add_argument("--block-cap", type=flag(INT_POSITIVE), default=64, help="synthetic blocks for D_b (default 64)")
    gen.add_argument("--block-size", type=flag(INT_POSITIVE), default=16, help="D_b block side (default 16)")
    gen.add_argument("--image-cap", type=flag(INT_POSITIVE), default=32,
                     help="real images searched by D_b (default 32)")
    gen.add_argument("--feature-steps", type=flag(INT_POSITIVE), default=300,
                     help="training steps of the feature network")
    gen.add_argument("--feature-cache", default=os.path.join("experiments", "evaluation", "feature_cache"),
                     help="folder caching the feature network per real set ('none' to disable)")
    gen.add_argument("--endmembers", help="End for the Dirichlet baseline: .mat with End or an unmixing checkpoint "
                     "(default: End of the synthetic files, else farthest real pixels)")
    gen.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    gen.add_argument("--real-as-is", action="store_true",
                     help="take the real set as it is, not min-max normalised per file (e.g. HSIs rendered from "
                          "the DDPM's own training abundance maps, the like-for-like reference of its samples)")
    _common(gen)

    down = sub.add_parser("downstream", help="a downstream task (RGB-to-HSI, denoising, x4 super-resolution) trained "
                          "on real vs real+synthetic")
    down.add_argument("--real", required=True, help="folder of real HSIs (.mat, ENVI or TIFF; train and held-out "
                      "test, unless --real-test names the test files)")
    down.add_argument("--real-test", metavar="DIR", default=None,
                      help="folder of real HSIs to test on (another scene of the same sensor); then every --real "
                           "file trains and --test-fraction is not used")
    which = down.add_mutually_exclusive_group(required=True)
    which.add_argument("--synthetic", help="folder of synthetic HSIs (.mat, ENVI or TIFF)")
    which.add_argument("--abundances", help="folder of abundance .mat files (Abu of Unmixing.py infer, or SR of "
                       "Diffusion.py -p val; optional Bright) rendered on the fly with --endmembers, as Synthesis.py "
                       "renders them")
    down.add_argument("--endmembers", metavar="CKPT", help="with --abundances: the unmixing checkpoint (or run folder) "
                      "whose decoder gives the endmembers")
    down.add_argument("--endmember-mode", choices=("raw", "minmax"), default=None,
                      help="with --abundances: Synthesis.py --endmembers (default minmax, the reference; raw with "
                           "--profile improved)")
    down.add_argument("--simplex", action="store_true", default=None,
                      help="with --abundances: project the abundances onto the simplex (Synthesis.py --simplex; on "
                           "with --profile improved)")
    down.add_argument("--model", choices=tuple(MODELS), default="cnn",
                      help="downstream network: cnn (9 x 9 receptive field, default), unet (52 x 52), pixel "
                           "(1 x 1 convolutions only)")
    down.add_argument("--width", type=flag(INT_POSITIVE), default=None,
                      help="network width (default: cnn 32, unet 16, pixel 64)")
    down.add_argument("--skip", choices=PATHS, default=None,
                      help="the skip path beside the network body: linear (a learned per-pixel linear map) or "
                           "identity (the input plus a learned correction starting at zero); default: identity for sr4 and "
                           "for the cnn's denoise (as before), linear otherwise")
    down.add_argument("--eval-every", type=flag(INT_POSITIVE), default=None, metavar="N",
                      help="record every arm's test PSNR every N steps (report curve.<arm>.seed<s>, plots/curves.png)")
    down.add_argument("--seeds", type=flag(INT_ANY), nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    down.add_argument("--steps", type=flag(INT_POSITIVE), default=1000, help="training steps per model (default 1000)")
    down.add_argument("--batch-size", "--batch_size", dest="batch_size", type=flag(INT_POSITIVE), default=8,
                      help="training batch (default 8)")
    down.add_argument("--crop", type=flag(INT_POSITIVE), default=32, help="training crop side (default 32)")
    down.add_argument("--lr", "--learning_rate", dest="lr", type=flag(FLOAT_POSITIVE), default=None,
                      help="learning rate (default: 2e-3 for cnn and pixel, 1e-3 for unet)")
    down.add_argument("--grad-clip", type=flag(FLOAT_POSITIVE), default=None, metavar="NORM",
                      help="clip the gradient's global norm to NORM every step (default: no clipping)")
    down.add_argument("--adam-eps", type=flag(FLOAT_POSITIVE), default=1e-8, metavar="EPS",
                      help="Adam's epsilon (default 1e-8, torch's); 1e-5 kept the study's fine-tuning from blowing up "
                           "on the test image (docs/evaluation.md)")
    down.add_argument("--finetune-lr-scale", type=flag(FLOAT_POSITIVE), default=1.0, metavar="X",
                      help="--protocol pretrain: fine-tune on the real files at the learning rate x X (default 1)")
    down.add_argument("--synthetic-fraction", type=flag(PROBABILITY), default=0.5,
                      help="share of each batch drawn from the synthetic set in arm (b) (default 0.5)")
    down.add_argument("--task", choices=tuple(TASKS), default="rgb2hsi",
                      help="rgb2hsi (3 bands -> all, default), denoise (HSI + Gaussian noise -> HSI) or sr4 (x4 "
                           "super-resolution from a blurred, decimated copy)")
    down.add_argument("--noise-sigma", type=flag(FLOAT_POSITIVE), default=0.1,
                      help="noise of the denoise task (default 0.1)")
    down.add_argument("--blur-sigma", type=flag(FLOAT_POSITIVE), default=2.0,
                      help="sr4: Gaussian blur before the decimation, in HR pixels (default 2.0)")
    down.add_argument("--test-fraction", type=flag(FRACTION_OPEN), default=0.5,
                      help="share of real files held out (default 0.5)")
    down.add_argument("--synthetic-cap", type=flag(INT_POSITIVE), default=256,
                      help="synthetic HSI files loaded at most (default 256; abundance sets are never capped)")
    down.add_argument("--protocol", choices=("mix", "pretrain"), default="mix",
                      help="mix: synthetic crops in the batches of arm (b) (default); pretrain: arm (b) trains on "
                           "synthetic only for --pretrain-steps, then fine-tunes on real for --steps")
    down.add_argument("--pretrain-steps", type=flag(INT_POSITIVE), default=None,
                      help="synthetic-only steps of --protocol pretrain (default: --steps)")
    down.add_argument("--synthetic-norm", choices=("minmax", "as_is"), default="minmax",
                      help="minmax: synthetic files preprocessed as the real ones (default); as_is: synthetic "
                           "targets unscaled (the behaviour before 2026-12; costs up to 3.5 dB by itself)")
    down.add_argument("--reuse-real-only", metavar="REPORT",
                      help="an earlier downstream report.json: its real-only arm is reused when it was trained on "
                           "the same real data with the same settings (else trained here)")
    down.add_argument("--rgb-bands", type=flag(INT_NONNEGATIVE), nargs=3, metavar=("R", "G", "B"),
                      help="input band indices (default: Chikusei RGB bands for 59 bands, else evenly spread)")
    _common(down)
    return parser


def run_generation_command(args, device) -> None:
    from ubf.evaluation.features import FeatureSettings
    from ubf.evaluation.generation import GenerationSettings, run_generation
    from ubf.evaluation.sampling import Caps
    for name in ("pixel_cap", "prdc_cap", "patch_cap", "patch_size", "block_size", "feature_steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.k < 1 or args.prdc_cap <= args.k:
        raise UserError(f"--k {args.k} needs 1 <= k < --prdc-cap")
    caps = Caps(pixel_cap=args.pixel_cap, patch_cap=args.patch_cap, patch_size=args.patch_size,
                block_cap=args.block_cap, block_size=args.block_size, image_cap=args.image_cap, seed=args.seed)
    settings = GenerationSettings(
        caps=caps, features=FeatureSettings(steps=args.feature_steps, seed=args.seed), k=args.k,
        prdc_cap=args.prdc_cap, baselines=not args.no_baselines, endmembers=args.endmembers,
        feature_cache=None if args.feature_cache.lower() == "none" else args.feature_cache, key=args.key,
        normalise_real=not args.real_as_is)
    run_generation(args.real, args.synthetic, args.out, settings, device, args.overwrite, not args.no_progress)


def run_downstream_command(args, device) -> None:
    from ubf.evaluation.downstream import DownstreamSettings, run_downstream
    if not 0 <= args.synthetic_fraction <= 1:
        raise UserError(f"--synthetic-fraction {args.synthetic_fraction} must be in [0, 1]")
    if not 0 < args.test_fraction < 1:
        raise UserError(f"--test-fraction {args.test_fraction} must be in (0, 1)")
    rendering = {"endmembers": "minmax", "simplex": False}
    if args.abundances is not None:
        rendering = rendering_settings(args)
    elif args.endmembers is not None or args.endmember_mode is not None or args.simplex is not None:
        raise UserError("--endmembers, --endmember-mode and --simplex render --abundances; with --synthetic "
                        "the HSIs are taken as they are")
    settings = DownstreamSettings(
        seeds=args.seeds, steps=args.steps, batch=args.batch_size, crop=args.crop, lr=args.lr,
        synthetic_fraction=args.synthetic_fraction, test_fraction=args.test_fraction,
        synthetic_cap=args.synthetic_cap, bands=args.rgb_bands, key=args.key, task=args.task,
        noise_sigma=args.noise_sigma, synthetic_norm=args.synthetic_norm, protocol=args.protocol,
        pretrain_steps=args.pretrain_steps, blur_sigma=args.blur_sigma, model=args.model, width=args.width,
        skip=args.skip, grad_clip=args.grad_clip, finetune_lr_scale=args.finetune_lr_scale, adam_eps=args.adam_eps,
        eval_every=args.eval_every, endmember_mode=rendering["endmembers"], simplex=rendering["simplex"])
    run_downstream(args.real, args.synthetic, args.out, settings, device, args.overwrite, not args.no_progress,
                   args.reuse_real_only, abundance_dir=args.abundances, endmembers=args.endmembers,
                   real_test_dir=args.real_test)


def rendering_settings(args) -> dict:
    """How --abundances are rendered: Synthesis.py's settings for the same profile and flags; resolves a
    run folder given as --endmembers to its checkpoint."""
    from ubf.pipeline.synthesis import load_synthesis_settings
    from ubf.pipeline.unmixing_infer import newest_unmixing_checkpoint
    if args.endmembers is None:
        raise UserError("--abundances needs --endmembers CKPT (the unmixing checkpoint whose endmembers render them)")
    rendering = load_synthesis_settings(None, args.profile, {"endmembers": args.endmember_mode,
                                                            "simplex": args.simplex})
    if os.path.isdir(args.endmembers):
        args.endmembers = newest_unmixing_checkpoint(args.endmembers, prefer=rendering["checkpoint"])
    get_logger().info("abundances rendered as Synthesis.py does with profile %s: endmembers %s, %s",
                      rendering["profile"], rendering["endmembers"], "simplex" if rendering["simplex"] else "no simplex")
    return rendering


def run_reconstruction_command(args, device) -> None:
    from ubf.evaluation.reconstruction import run_reconstruction
    from ubf.pipeline.unmixing_config import load_unmixing_config
    from ubf.pipeline.unmixing_infer import newest_unmixing_checkpoint
    if args.overlap >= args.tile:
        raise UserError(f"--overlap {args.overlap} must be smaller than --tile {args.tile}")
    which = load_unmixing_config(None, {"infer.checkpoint": args.checkpoint}, args.profile, "infer")["infer"]["checkpoint"]
    if os.path.isdir(args.ckpt):
        args.ckpt = newest_unmixing_checkpoint(args.ckpt, prefer=which)
    get_logger().info("profile %s: unmixing checkpoint %s", args.profile or "faithful", args.ckpt)
    run_reconstruction(args.ckpt, args.hsi, args.out, device, args.overwrite, args.key, args.tile, args.overlap,
                       progress=not args.no_progress, reference_key=args.reference_key)


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_output_path(args.out)
    from ubf.core.runlock import RunLock
    with RunLock(args.out, f"Evaluate.py {args.command}"):  # one writer per report folder; before the log file
        return run(args)


def run(args) -> int:
    setup_logging(os.path.join(args.out, "evaluate.log"))
    device = resolve_device(args.device)
    with runtime_flags(args), trust_checkpoint_code(args.trust_checkpoint_code):
        {"generation": run_generation_command, "downstream": run_downstream_command,
         "reconstruction": run_reconstruction_command}[args.command](args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
