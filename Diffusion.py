"""Stage 2 CLI: train the abundance DDPM, or sample new abundance maps from it.

    python Diffusion.py -p train -c config/Chikusei_256_DDPM.json [--data DIR] [--out DIR] [--resume CKPT]
                        [--device auto|cpu|cuda] [--seed S] [--n-iter N] [--batch-size B] [--amp fp16|bf16]
                        [--compile] [-d]
    python Diffusion.py -p val -c CONFIG [--out DIR] [--resume CKPT] [--num-samples N]
                        [--sampler ancestral|ddim] [--steps N] [--eta X] [--batch-size B] [--ema] [--simplex]
                        [--class NAME|a,b|all [--guidance W]]
    either phase: [--profile faithful|improved] (default: the config's `profile`, else faithful)

Both phases run in several processes with `torchrun --nproc_per_node N Diffusion.py ...` (DDP; the
training batch is the global batch, the samples are split over the processes).

Outputs go to <out>/<name>_<timestamp>/{checkpoint,logs,results,mat_results} (see docs/diffusion.md).
"""
from ubf.cli.diffusion import main

if __name__ == "__main__":
    main()
