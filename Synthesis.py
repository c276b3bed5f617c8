"""Stage 3 CLI: sampled abundances x the unmixing checkpoint's endmembers -> synthetic HSIs and pictures.

    python Synthesis.py [--abundances DIR] [--ckpt CKPT] [--out DIR] [--endmembers raw|minmax] [--simplex]
                        [--rgb bands|cie] [--rgb-bands R G B] [--real DIR] [--device D] [--overwrite]
                        [--profile faithful|improved] [-c SETTINGS.json]

Defaults chain the stages: the newest experiments/ddpm/*/mat_results and the newest unmixing
checkpoint (latest.pth, or best.pth with --checkpoint best); outputs go to experiments/Synthesis.
With no options it does what the reference's Synthesis.py does (global min-max endmembers,
(SR + 1) / 2 as sampled, End stored (C, K, 1, 1)). See docs/synthesis.md and docs/faithfulness.md.
"""
from ubf.cli.synthesis import main

if __name__ == "__main__":
    main()
