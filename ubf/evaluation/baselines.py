"""Reference sets that give the generation metrics context.

- `dirichlet`: random abundances, i.i.d. Dirichlet(alpha) per pixel, through the same endmembers as the
  synthetic set. Physically valid, spectrally plausible mixtures with no spatial structure: what a
  generator that learned nothing about scenes would produce. FD should flag it, F_p may not.
- `real_copies`: the real (training) crops themselves, as if a generator had memorised them: the
  ceiling of F_p / precision / recall and D_b = 1, the signature of copying.
- `real_heldout` (when the real set has two or more files): half of the real files scored against the
  other half: what new, genuinely real imagery scores; the level a non-copying generator aims at.
"""
import os

import numpy as np
import torch

from ubf.core.errors import UserError
from ubf.core.logs import get_logger
from ubf.data.matio import endmember_matrix, read_array, read_mat
from ubf.evaluation.sampling import Source


def dirichlet_source(endmembers: np.ndarray, shapes: list[tuple[int, int]], seed: int = 0,
                     alpha: float = 1.0) -> Source:
    """Yield (label, HSI (H, W, C), {"Abu", "End"}) with i.i.d. Dirichlet abundances through (C, K) endmembers."""
    endmembers = np.asarray(endmembers, dtype=np.float32)
    k = endmembers.shape[1]
    for i, (height, width) in enumerate(shapes):
        rng = np.random.default_rng([seed, 7, i])
        abundances = rng.dirichlet(np.full(k, alpha), size=(height, width)).astype(np.float32)
        yield f"dirichlet[{i}]", abundances @ endmembers.T, {"Abu": abundances, "End": endmembers}


def endmembers_from_file(path: str) -> np.ndarray:
    """(C, K) endmembers from a .mat with `End` or an unmixing checkpoint (its decoder weight)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: endmember file not found")
    if path.lower().endswith(".mat"):
        return endmember_matrix(read_array(path, ("End", "E", "endmembers"),
                                           hint="store the endmembers as 'End' (C x K)")[1])
    from ubf.pipeline.unmixing_infer import load_unmixing_model
    model, _ = load_unmixing_model(path, torch.device("cpu"))
    return model.endmembers().detach().float().numpy()


def find_endmembers(explicit: str | None, synthetic_files: list[str], real_dir: str, k: int,
                    seed: int = 0) -> tuple[np.ndarray, str]:
    """(C, K) endmembers for the Dirichlet baseline and where they came from.

    Order: an explicit file; the `End` of the first synthetic file that has one; else `k` mutually
    distant real pixels (the same farthest-point rule the unmixing decoder can be initialised with).
    """
    if explicit:
        return endmembers_from_file(explicit), explicit
    for path in synthetic_files[:10]:
        found = read_mat(path, ["End"])
        if "End" in found:
            return endmember_matrix(found["End"]), path
    from ubf.data.hsi_dataset import HSICropDataset
    from ubf.pipeline.unmixing_train import farthest_pixels
    get_logger().info("no End in the synthetic files: Dirichlet baseline uses %d farthest real pixels", k)
    dataset = HSICropDataset(real_dir)
    return farthest_pixels(dataset, k, seed=seed).astype(np.float32), f"{k} farthest real pixels"


def split_files(files: list[str], seed: int = 0) -> tuple[list[str], list[str]]:
    """Two disjoint halves of a file list (seeded), for the held-out real baseline."""
    order = np.random.default_rng([seed, 11]).permutation(len(files))
    half = len(files) // 2
    return sorted(files[i] for i in order[half:]), sorted(files[i] for i in order[:half])
