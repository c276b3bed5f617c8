"""Scene-class conditioning for the SR3 UNet: a learned vector per class added to the noise-level embedding.

A class-conditional UNet carries a `ClassEmbedding` as its optional `class_embedding` attribute; the
unconditional UNet has none, so its parameters and state-dict keys are those of the reference. The
table has one row more than there are classes: the last row is the "no class" token that label
dropout trains and that classifier-free guidance uses for the unconditional prediction.
"""
import torch
from torch import nn


class ClassEmbedding(nn.Module):
    """(N,) integer labels -> (N, dim) vectors; a label < 0 (or None for the whole batch) means "no class"."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError("a class embedding needs at least one class")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight)  # N(0, 1) as ADM's class embedding: each class distinct from the start

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        device = self.table.weight.device
        if labels is None:
            labels = torch.full((batch,), -1, dtype=torch.long, device=device)
        labels = labels.to(device=device, dtype=torch.long).reshape(-1)
        if labels.shape[0] != batch:
            raise ValueError(f"{labels.shape[0]} class labels for a batch of {batch}")
        if bool((labels >= self.num_classes).any()):
            raise ValueError(f"class label out of range (this model knows {self.num_classes} classes)")
        return self.table(torch.where(labels < 0, torch.full_like(labels, self.null_label), labels))

    def add_to(self, embedding: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The noise-level embedding (N, dim) plus the class vectors of `labels`."""
        return embedding + self.forward(labels, embedding.shape[0]).to(embedding.dtype)


def attach_class_embedding(unet: nn.Module, num_classes: int, dim: int) -> nn.Module:
    """Give `unet` (an SR3UNet with a noise-level embedding of width `dim`) a class embedding; 0 classes: no-op."""
    if num_classes:
        unet.class_embedding = ClassEmbedding(num_classes, dim)
    return unet
