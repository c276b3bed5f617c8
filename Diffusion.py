"""Stage 2 CLI: train the abundance DDPM, or sample new abundance maps from it.

    python Diffusion.py -p train -c config/Chikusei_256_DDPM.json [--data DIR] [--out RUN | --root DIR]
                        [--resume CKPT|latest] [--device auto|cpu|cuda] [--seed S] [--n-iter N] [--batch-size B]
                        [--amp fp16|bf16] [--compile] [--threads N] [--no-progress] [-d]
    python Diffusion.py -p val -c CONFIG [--ckpt CKPT|latest] [--out RUN | --root DIR] [--num-samples N]
                        [--sampler ancestral|ddim|dpmpp2m] [--steps N] [--eta X] [--batch-size B] [--ema] [--simplex]
                        [--class NAME|a,b|all [--guidance W]]
    either phase: [--profile faithful|improved] (default: the config's `profile`, else faithful)

`--out RUN` is the run folder itself; without it a new <root>/<name>_<timestamp> is made under `--root`
(default experiments/ddpm). `--ckpt` is the checkpoint to sample from, `--resume` the one to continue
training from. Both phases run under `torchrun --nproc_per_node N Diffusion.py ...` (DDP). See
docs/diffusion.md and docs/ecosystem.md ("One vocabulary across the CLIs").
"""
from ubf.cli.diffusion import main

if __name__ == "__main__":
    main()
