"""Stage 3 CLI: sampled abundances x the unmixing checkpoint's endmembers -> synthetic HSIs and pictures.

    python Synthesis.py [--abundances DIR] [--ckpt CKPT] [--out DIR] [--endmembers raw|minmax] [--no-simplex]
                        [--rgb bands|cie] [--rgb-bands R G B] [--real DIR] [--device D] [--overwrite]

Defaults chain the stages: the newest experiments/ddpm/*/mat_results and the newest unmixing
checkpoint (best.pth, else latest.pth); outputs go to experiments/Synthesis. See docs/synthesis.md.
"""
import argparse
import os

from core.device import resolve_device
from core.errors import OneLineParser, cli_main
from core.fs import check_output_path
from core.logs import setup_logging
from core.validate import INT_NONNEGATIVE, flag
from pipeline.synthesis import DEFAULT_OUT, SynthesisOptions


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Stage 3: synthesize HSIs from sampled abundances and endmembers")
    parser.add_argument("--abundances", help="folder of sampled abundance .mat files (Abu, or SR in [-1, 1]); "
                        "default: the newest experiments/ddpm/*/mat_results")
    parser.add_argument("--ckpt", "--ckpt_dir", dest="ckpt", help="unmixing checkpoint; default: the newest "
                        "experiments/unmixing/*/checkpoint/best.pth (else latest.pth)")
    parser.add_argument("--out", "--save_dir", dest="out", default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--endmembers", choices=("raw", "minmax"), default="raw",
                        help="raw: decoder weights as trained (default); minmax: the reference's global min-max")
    parser.add_argument("--no-simplex", action="store_true",
                        help="keep sampled abundances as they are instead of projecting them onto the simplex")
    parser.add_argument("--rgb", choices=("bands", "cie"), default="bands",
                        help="previews from three bands (default) or true colour via CIE 1931 (visible-range data)")
    parser.add_argument("--rgb-bands", type=flag(INT_NONNEGATIVE), nargs=3, metavar=("R", "G", "B"),
                        help="band indices for the previews (default: nearest 640/550/460 nm, else evenly spread)")
    parser.add_argument("--real", help="folder of real HSIs for the spectra figure (default: the checkpoint's "
                        "training folder)")
    parser.add_argument("--device", "--gpus", dest="device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist already")
    return parser


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    check_output_path(args.out)
    setup_logging(os.path.join(args.out, "synthesis.log"))
    from pipeline.synthesis import run_synthesis
    options = SynthesisOptions(endmembers=args.endmembers, simplex=not args.no_simplex, rgb=args.rgb,
                               rgb_bands=args.rgb_bands, real=args.real, overwrite=args.overwrite)
    summary = run_synthesis(args.abundances, args.ckpt, args.out, resolve_device(args.device), options)
    print(f"synthetic HSIs: {summary['hsi_dir']}")
    print(f"RGB previews:   {summary['rgb_dir']}")
    print(f"contact sheet:  {summary['contact_sheet']}")
    print(f"spectra:        {summary['spectra']}")


if __name__ == "__main__":
    main()
