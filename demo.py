"""The whole pipeline in one command, on built-in synthetic demo data (or on real files with --data).

    python demo.py [--data DIR] [--out DIR] [--device auto|cpu|cuda] [--samples N] [--overwrite]
                   [--profile improved|faithful] [--threads N] [--no-progress] [--seed S]
    ubf-demo ...   (the same, from an installed package: pip install .)

The demo runs the `improved` profile by default (the measured departures, README "Profiles"); every
step gets the same `--profile`, and the demo prints which one it uses.

Steps: make the demo data (synthetic HSI scenes mixed from USGS splib07 spectra, and "external" RGB
images), then run, as a user would, `Unmixing.py train`, `Unmixing.py infer`, `Diffusion.py -p train`,
`Diffusion.py -p val` and `Synthesis.py` (as `python -m ubf.cli.<stage>`, which works in a checkout and in an
installed package alike) with the small built-in configs `config/demo_unmixing.json` and
`config/demo_DDPM.json`. Each command is printed before it runs and each step is timed; the end
lists where the pictures and files are. About five minutes on a 2-core CPU. See docs/synthesis.md.
"""
from ubf.cli.demo import main

if __name__ == "__main__":
    main()
