"""Scene classes for class-conditional generation: from folder names to labels, and back to samples.

AID and NWPU-RESISC45 are organised as `<root>/<class>/<image>`, so an image's class is the name of
the folder it sits in (`scene_class`). `Unmixing.py infer` stores it in each abundance file as the
variable `class` and in the manifest; training reads it back (`training_labels`), fixes the class
list in `model.diffusion.class_names` (saved with every checkpoint) and hides a fraction
`model.diffusion.class_dropout` of the labels per step (`drop_labels`) so the same network also
learns the unconditional prediction that classifier-free guidance needs. Sampling turns `--class`
into labels (`requested_labels`) and draws them through `models.guidance.GuidedDenoiser`.
"""
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from ubf.core.errors import UserError
from ubf.core.previews import abundance_sheet
from ubf.data.abundance_dataset import list_abundance_files
from ubf.data.matio import read_mat

CLASS_KEY = "class"


def scene_class(path: str) -> str:
    """The class of an image: the name of the folder it sits in (`AID/farmland/farmland_1.jpg` -> 'farmland')."""
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def read_class(path: str) -> str | None:
    """The `class` variable of an abundance .mat file, or None when it has none."""
    value = read_mat(path, [CLASS_KEY]).get(CLASS_KEY)
    if value is None or np.asarray(value).size == 0:
        return None
    return str(np.asarray(value).ravel()[0]).strip() or None


def check_class_names(names, source: str) -> list[str]:
    """Distinct non-empty names (a comma is allowed: `--class` takes a whole name before splitting)."""
    names = list(names or [])
    if any(not isinstance(n, str) or not n.strip() for n in names) or len(set(names)) != len(names):
        raise UserError(f"{source}: 'model.diffusion.class_names' must be distinct non-empty names, got {names!r}")
    return names


def training_labels(cfg: dict, state: dict | None) -> list[int] | None:
    """Per-file labels of the training folder, or None when the config trains unconditionally.

    Fills `model.diffusion.class_names`: the resumed checkpoint's, else the config's, else the sorted
    classes found in the files. A file without a class, or with one outside a given list, is refused.
    """
    diffusion = cfg["model"]["diffusion"]
    if not diffusion.get("class_conditional"):
        return None
    data_cfg = cfg["datasets"]["train"]
    files = list_abundance_files(data_cfg["dataroot"], data_cfg["data_len"])
    found = []
    for path in files:
        name = read_class(path)
        if name is None:
            raise UserError(f"{path}: no '{CLASS_KEY}' variable, which class-conditional training needs (run "
                            "`Unmixing.py infer` on class folders <root>/<class>/<image>, or set "
                            "model.diffusion.class_conditional to false)")
        found.append(name)
    if state is not None and state["config"]["model"]["diffusion"].get("class_names"):
        names = list(state["config"]["model"]["diffusion"]["class_names"])
    else:
        names = check_class_names(diffusion.get("class_names"), "config") or sorted(set(found))
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise UserError(f"{data_cfg['dataroot']}: classes {', '.join(unknown)} are not in the model's class list "
                        f"({', '.join(names)})")
    diffusion["class_names"] = names
    return [names.index(name) for name in found]


class LabelledDataset(Dataset):
    """Items of `dataset` paired with the class label of their file: item -> (crop, label)."""

    def __init__(self, dataset: Dataset, labels: list[int]):
        self.dataset, self.labels = dataset, list(labels)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index = item[0] if isinstance(item, (tuple, list)) else item
        return self.dataset[item], self.labels[int(index)]


def drop_labels(labels: torch.Tensor, probability: float, global_batch: int, generator: torch.Generator,
                rank: int = 0, rows: slice | None = None) -> torch.Tensor:
    """`labels` (n,) of this process's rows with a fraction `probability` replaced by -1 ("no class").

    The draws are made for the whole global batch from the shared training generator, so every
    process consumes the same random numbers and a resumed run repeats the same drops. `rows`: this
    process's rows of the global batch (default: the rank-th block of n).
    """
    n = labels.shape[0]
    rows = rows if rows is not None else slice(rank * n, (rank + 1) * n)
    draws = torch.rand(global_batch, generator=generator, device=generator.device)[rows]
    labels = labels.to(draws.device)
    return torch.where(draws < probability, torch.full_like(labels, -1), labels)


def requested_labels(class_names: list[str], request: str | None, count: int) -> list[int] | None:
    """Labels of `count` samples for `--class`: one name, several comma-separated names or `all` (an even
    mix, cycling through the classes); None when no class is asked for. A request that is itself a class
    name is that class, so a class named `a,b` (a folder name) can be chosen; `all` means every class
    unless a class is called so."""
    if request is None or request == "":
        return None
    request = str(request)
    if not class_names:
        raise UserError(f"--class {request}: this checkpoint was trained without classes (train with "
                        "model.diffusion.class_conditional true to sample by class)")
    if request in class_names:
        wanted = [request]
    elif request == "all":
        wanted = list(class_names)
    else:
        wanted = [name.strip() for name in request.split(",")]
    unknown = [name for name in wanted if name not in class_names]
    if unknown:
        raise UserError(f"--class {request}: unknown class {', '.join(unknown)}; known: all, {', '.join(class_names)}")
    return [class_names.index(wanted[i % len(wanted)]) for i in range(count)]


def draw_guided_samples(diffusion, guided, labels: list[int], batch_size: int, draw_samples, **draw_options):
    """Yield sample batches (n, K, S, S) in [-1, 1] for `labels`, `batch_size` at a time.

    `diffusion` must sample through `guided` (a `GuidedDenoiser`); `draw_samples` is the unconditional
    batch loop of `pipeline.diffusion_sample`, reused one batch at a time with that batch's labels.
    """
    device = draw_options["device"]
    for first in range(0, len(labels), batch_size):
        chunk = torch.tensor(labels[first:first + batch_size], dtype=torch.long, device=device)
        with guided.conditioned_on(chunk):
            yield from draw_samples(diffusion, len(chunk), len(chunk), **draw_options)


def class_rows_sheet(abundances: np.ndarray, classes: list[str], per_row: int = 8) -> np.ndarray:
    """(N, H, W, K) abundances -> one uint8 picture: a row per class (in first-seen order) of its samples,
    captioned with the class name."""
    order = list(dict.fromkeys(classes))
    rows = [[a for a, c in zip(abundances, classes) if c == name][:per_row] for name in order]
    return abundance_sheet(rows, order)
