"""Write a checkpoint of this project in the reference code's format (see ubf/pipeline/reference_checkpoints.py).

    python -m ubf.pipeline.export_reference unmixing CKPT OUT.pth           -> {"epoch", "model"} (UnmixingAE keys)
    python -m ubf.pipeline.export_reference diffusion CKPT OUT_PREFIX [--ema] -> OUT_PREFIX_gen.pth, OUT_PREFIX_opt.pth
"""
import argparse
import sys

from ubf.core.checkpoint import add_trust_flag, trust_checkpoint_code
from ubf.core.errors import cli_main
from ubf.core.logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a checkpoint in the reference code's format")
    parser.add_argument("stage", choices=("unmixing", "diffusion"), help="which stage's checkpoint CKPT is")
    parser.add_argument("ckpt", help="checkpoint of this project (or, for unmixing, of the reference)")
    parser.add_argument("out", help="unmixing: the .pth to write; diffusion: the prefix of <out>_gen.pth/_opt.pth "
                        "(the reference's resume_state, e.g. experiments/ref/checkpoint/I1000_E5)")
    parser.add_argument("--ema", action="store_true", help="diffusion: put the EMA weights in _gen.pth (for sampling)")
    parser.add_argument("--overwrite", action="store_true", help="replace files that exist")
    add_trust_flag(parser)
    return parser


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from ubf.pipeline.reference_checkpoints import export_diffusion, export_unmixing
    with trust_checkpoint_code(args.trust_checkpoint_code):
        if args.stage == "unmixing":
            written = [export_unmixing(args.ckpt, args.out, args.overwrite)]
        else:
            written = list(export_diffusion(args.ckpt, args.out, args.ema, args.overwrite))
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
