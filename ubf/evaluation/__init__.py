"""Evaluation of the pipeline: unmixing reconstruction, realism/diversity of synthetic HSIs, downstream value.

Modules have one job each: `neighbors` (chunked nearest-neighbour searches), `fidelity` (F_p, D_b),
`prdc` (k-NN precision/recall), `features` (the small self-supervised feature network), `frechet`
(FD, KID), `physical` (abundance and range checks), `baselines`, `sampling` (reading sets with caps),
`generation`, `reconstruction`, `downstream`, `plots` and `report`. `Evaluate.py` is the CLI.
"""
