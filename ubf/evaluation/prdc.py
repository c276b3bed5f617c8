"""k-NN precision and recall of generated spectra (Kynkäänniemi et al. 2019, "Improved Precision and
Recall Metric for Assessing Generative Models").

Each set's manifold is the union of balls around its points, each ball reaching that point's k-th
nearest neighbour in the same set. Precision: the fraction of synthetic points inside the real
manifold (are samples realistic?). Recall: the fraction of real points inside the synthetic manifold
(is the real variety covered?). Spectra are L2-normalised first, so brightness does not count, only
spectral shape, as for F_p.
"""
import torch

from ubf.evaluation.neighbors import kth_neighbour_distance, l2_normalise, within_any_ball


def precision_recall(real: torch.Tensor, synthetic: torch.Tensor, k: int = 3, chunk: int = 4096,
                     device: torch.device | str = "cpu") -> dict[str, float]:
    """{"precision", "recall"} of (N, C) synthetic against (M, C) real spectra."""
    real_n, synth_n = l2_normalise(real.double()), l2_normalise(synthetic.double())
    real_radii = kth_neighbour_distance(real_n, k, chunk, device)
    synth_radii = kth_neighbour_distance(synth_n, k, chunk, device)
    precision = within_any_ball(synth_n, real_n, real_radii, chunk, device).double().mean()
    recall = within_any_ball(real_n, synth_n, synth_radii, chunk, device).double().mean()
    return {"precision": float(precision), "recall": float(recall)}
