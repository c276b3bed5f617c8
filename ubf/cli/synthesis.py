"""Stage 3 CLI: sampled abundances x the unmixing checkpoint's endmembers -> synthetic HSIs and pictures.

    python Synthesis.py [--abundances DIR] [--ckpt CKPT] [--out DIR] [--endmembers raw|minmax] [--simplex]
                        [--rgb bands|cie] [--rgb-bands R G B] [--real DIR] [--device D] [--overwrite]
                        [--profile faithful|improved] [-c SETTINGS.json] [--threads N] [--no-progress] [--seed S]

Defaults chain the stages: the newest experiments/ddpm/*/mat_results and the newest unmixing
checkpoint (latest.pth, or best.pth with --checkpoint best); outputs go to experiments/Synthesis.
With no options it does what the reference's Synthesis.py does (global min-max endmembers,
(SR + 1) / 2 as sampled, End stored (C, K, 1, 1)). See docs/synthesis.md and docs/faithfulness.md.
"""
import argparse
import dataclasses
import os

from ubf.core.checkpoint import add_trust_flag, trust_checkpoint_code
from ubf.core.cliflags import (add_device_argument, add_overwrite_argument, add_progress_argument, add_seed_argument,
                               add_threads_argument, runtime_flags)
from ubf.core.device import resolve_device
from ubf.core.errors import OneLineParser, UserError, cli_main
from ubf.core.fs import check_output_path
from ubf.core.logs import get_logger, setup_logging
from ubf.core.overrides import add_set_argument, parse_set_values
from ubf.core.profiles import add_profile_argument
from ubf.core.resources import resolve_config
from ubf.core.runlock import RunLock
from ubf.core.validate import FLOAT_POSITIVE, INT_NONNEGATIVE, flag
from ubf.core.version import add_version_argument
from ubf.pipeline.synthesis import DEFAULT_OUT, SynthesisOptions, load_synthesis_settings


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Stage 3: synthesize HSIs from sampled abundances and endmembers")
    add_version_argument(parser)
    add_set_argument(parser)
    parser.add_argument("--abundances", help="folder of sampled abundance .mat files (SR in [-1, 1], else Abu); "
                        "default: the newest experiments/ddpm/*/mat_results")
    parser.add_argument("--ckpt", "--ckpt_dir", dest="ckpt", help="unmixing checkpoint; default: the newest "
                        "experiments/unmixing/*/checkpoint/latest.pth (see --checkpoint)")
    parser.add_argument("--checkpoint", choices=("latest", "best"),
                        help="which file of the newest unmixing run without --ckpt (default latest, the final epoch)")
    parser.add_argument("--out", "--save_dir", dest="out", default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--endmembers", choices=("raw", "minmax"),
                        help="minmax: the reference's global min-max (default); raw: decoder weights as trained")
    parser.add_argument("--simplex", action="store_true", help="project sampled abundances onto the simplex")
    parser.add_argument("--no-simplex", action="store_true",
                        help="keep sampled abundances as they are, (SR + 1) / 2 (the default, as the reference)")
    parser.add_argument("--end-layout", choices=("conv", "matrix"),
                        help="End stored as (C, K, 1, 1) like the reference (conv, default) or (C, K) (matrix)")
    parser.add_argument("-c", "--config", help="JSON file of these settings (checkpoint, endmembers, simplex, "
                        "end_layout, rgb, rgb_bands, profile)")
    add_profile_argument(parser)
    parser.add_argument("--rgb", choices=("bands", "cie"),
                        help="previews from three bands (default) or true colour via CIE 1931 (visible-range data)")
    parser.add_argument("--rgb-bands", type=flag(INT_NONNEGATIVE), nargs=3, metavar=("R", "G", "B"),
                        help="band indices for the previews (default: nearest 640/550/460 nm, else evenly spread)")
    parser.add_argument("--real", help="folder of real HSIs (.mat, ENVI or TIFF) for the spectra figure (default: "
                        "the checkpoint's training folder)")
    add_device_argument(parser)
    add_threads_argument(parser)
    add_progress_argument(parser)
    add_seed_argument(parser, default=0, what="the real pixels drawn for the spectra figure and of --variability")
    add_overwrite_argument(parser)
    parser.add_argument("--format", choices=("mat", "mat73", "envi", "tiff"), default="mat",
                        help="synthetic HSI files: mat (default, with Abu and End), mat73 (the same in MATLAB v7.3 / "
                             "HDF5), envi (.hdr + .img) or tiff (multi-band, GDAL band metadata)")
    parser.add_argument("--sensor", help="render into a target sensor's bands: a preset (python -m ubf.data.sensors list) "
                        "or a CSV/JSON of responses, optionally NAME:BAND,BAND (docs/sensors.md)")
    parser.add_argument("--variability", metavar="auto|S", help="per-pixel endmember scaling (extended linear mixing "
                        "model) with smooth fields; S = std of log scale, auto = measured on the training HSIs")
    parser.add_argument("--variability-scale", type=flag(FLOAT_POSITIVE), default=16.0,
                        help="field smoothness in pixels (default 16; at most the maps' side)")
    parser.add_argument("--layout", choices=("project", "reference"), default=None,
                        help="output names: project (default: the sample's name, with class and wavelengths) or "
                             "reference (0000.mat ... in os.listdir order with HSI, Abu, End, as the reference)")
    add_trust_flag(parser)
    return parser


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    check_output_path(args.out)
    with RunLock(args.out, "Synthesis.py"):  # before the log file: a refused second run touches nothing
        return run(args)


def run(args) -> None:
    setup_logging(os.path.join(args.out, "synthesis.log"))
    from ubf.pipeline.synthesis import run_synthesis
    if args.simplex and args.no_simplex:
        raise UserError("--simplex and --no-simplex contradict each other; choose one")
    settings = load_synthesis_settings(resolve_config(args.config), args.profile, {
        "checkpoint": args.checkpoint, "endmembers": args.endmembers, "end_layout": args.end_layout,
        "simplex": True if args.simplex else (False if args.no_simplex else None), "rgb": args.rgb,
        "rgb_bands": args.rgb_bands, "layout": args.layout})
    get_logger().info("profile: %s (endmembers %s, %s)", settings["profile"], settings["endmembers"],
                      "simplex" if settings["simplex"] else "(SR + 1) / 2 as sampled")
    options = SynthesisOptions(endmembers=settings["endmembers"], simplex=settings["simplex"],
                               checkpoint=settings["checkpoint"], end_layout=settings["end_layout"],
                               rgb=settings["rgb"], rgb_bands=settings["rgb_bands"], real=args.real,
                               overwrite=args.overwrite, profile=settings["profile"], format=args.format,
                               sensor=args.sensor, variability=args.variability,
                               variability_scale=args.variability_scale, seed=args.seed,
                               layout=settings["layout"])
    options = dataclasses.replace(options, **parse_set_values(args.set_values, dataclasses.asdict(SynthesisOptions())))
    with runtime_flags(args), trust_checkpoint_code(args.trust_checkpoint_code):
        summary = run_synthesis(args.abundances, args.ckpt, args.out, resolve_device(args.device), options)
    print(f"synthetic HSIs: {summary['hsi_dir']}")
    print(f"RGB previews:   {summary['rgb_dir']}")
    print(f"contact sheet:  {summary['contact_sheet']}")
    print(f"spectra:        {summary['spectra']}")


if __name__ == "__main__":
    main()
