"""Evaluation CLI: how good are the unmixing network and the synthetic HSIs? Writes report.json,
summary.md and PNG plots into --out.

    python Evaluate.py reconstruction --ckpt CKPT --hsi DIR --out DIR
    python Evaluate.py generation --real DIR --synthetic DIR --out DIR [--pixel-cap N] [--seed S]
    python Evaluate.py downstream --real DIR --synthetic DIR --out DIR [--seeds 0 1 2] [--steps N]

See docs/evaluation.md for what every metric and report key means.
"""
from ubf.cli.evaluate import main

if __name__ == "__main__":
    main()
