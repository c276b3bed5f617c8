"""What the study runs: scenes, RGB sources, the abundance sets cut from them, budgets and arms.

Plain data and small functions, no training: `study.py` turns a plan into steps. A *scene* is a sensor's real
HSIs (training files for stage 1 and the downstream models, held-out test files); a *source* is a collection of
RGB images (AID, RSSCN7, the other images: the Landsat scene and the photos, cut into tiles). An *abundance set*
is a named selection of a scene's inferred maps (`aid-50`, `mix3-210`, ...); an *arm* is one synthetic set a
downstream task pre-trains on (an abundance set, a DDPM's samples, or a control), compared with the real-only arm.
"""
import glob
import os
from dataclasses import dataclass, field

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
OTHER_TILE = 150  # the other images are cut into tiles of AID's size, so a file is about as large in every source


@dataclass(frozen=True)
class Scene:
    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    bands: tuple[int, int, int]  # the 3 input bands (R, G, B) of stage 1 and the rgb2hsi task


@dataclass(frozen=True)
class Budget:
    """How much of everything; `seconds` are the idle-machine costs used for the estimate."""
    name: str
    scenes: tuple[str, ...]
    tasks: tuple[str, ...]                   # the main scene's tasks; others get `other_scene_tasks`
    aid_counts: tuple[int, ...]              # the tiles axis (AID only)
    mix_count: int | None                    # the sources axis at a fixed number of maps (None: no sources axis)
    ddpm_sets: tuple[str, ...]               # abundance sets a DDPM is trained on (its samples are an arm)
    ddpm_steps: int
    ddpm_samples: int
    downstream_steps: int                    # fine-tuning on real (and the real-only arm)
    pretrain_steps: int                      # on the synthetic set first
    seeds: tuple[int, ...]
    crop: int = 64
    controls: tuple[str, ...] = ("copies", "dirichlet", "structure", "shuffled")
    other_scene_arms: tuple[str, ...] = ()   # arms of the other scenes (the main scene gets every arm)
    other_scene_tasks: tuple[str, ...] = ()
    rgb2hsi_arms: tuple[str, ...] = ()       # the RGB-to-HSI task (kept as it was) gets these arms only
    control_maps: int = 210                  # maps in each abundance control
    sweep_tasks: tuple[str, ...] = ()        # main scene: tasks that get the sweep's sets (the tiles and sources
                                             # axes); the others keep the controls, the DDPM's set and the DDPM
    eval_every: int = 0


# The budgets share their step settings (crop, steps, seeds, control maps, the DDPM set), so `large` run in the
# folder of a finished `default` reuses every step of it and adds the rest (study.py: a step is its folder).
BUDGETS = {
    "small": Budget("small", ("chikusei",), ("denoise", "sr4"), (5,), None, ("aid-5",), 200, 8, 30, 30, (0, 1),
                    crop=32, control_maps=8, eval_every=10),
    "default": Budget("default", ("chikusei",), ("denoise", "sr4"), (50,), None, ("aid-50",), 3000, 64, 800, 400,
                      (0, 1, 2), crop=48, controls=("dirichlet", "structure", "shuffled"), control_maps=64,
                      eval_every=100),
    "large": Budget("large", ("chikusei", "abu-airport"), ("denoise", "sr4"), (5, 50, 500, 1500), 500,
                    ("aid-50",), 3000, 64, 800, 400, (0, 1, 2), crop=48, controls=("dirichlet", "structure", "shuffled"),
                    control_maps=64, eval_every=100, sweep_tasks=("denoise",),
                    other_scene_arms=("control_dirichlet", "control_structure", "inferred_mix3-500"),
                    other_scene_tasks=("denoise",)),
}

# Idle-machine seconds of the unit costs (2-core CPU, one thread per process; measured with bench-like runs
# of train_arm on 2026-12-03, the same figures with one or two processes at once): the estimate printed
# before a run starts is sum(count x cost).
UNIT_SECONDS = {
    "downstream_step_59": 0.086,   # UNet width 16, batch 8, crop 48, C = 59 (denoise 0.093, sr4 0.079; crop 64: 0.17)
    "downstream_step_205": 0.16,   # the same at C = 205 (crop 64: denoise 0.30, sr4 0.34)
    "rgb2hsi_step_59": 0.03,       # the small CNN of the RGB-to-HSI task
    "ddpm_step_64": 0.18,          # config/cpu_DDPM_64.json, batch 8 (200 steps in 35 s beside another job)
    "sample_64": 7.0,              # one 64 x 64 sample, ancestral, 1000 steps, batches of 16 (8 took 83 s)
    "stage1": 240.0,               # one near-data stage-1 training (16 x 50 whole-file steps, greedy endmembers)
    "infer_image": 0.05,           # one 150 x 150 image through a per-pixel stage 1
    "arm_overhead": 10.0,          # loading a set, testing, writing a report
    # what the study's denoising arms took per step in the run of --more-seeds 13 22 (2026-12-04, two
    # workers at once, nothing else running): 5 seeds x 1200 steps per arm run in 6.2-6.3 min, the
    # real-only arm's 5 x 800 in 4.1 min; lower than the bench figure above, which includes no eval cadence
    "more_seeds_step_59": 0.063,
}


def shared_scenes(data: str) -> dict[str, Scene]:
    """The scenes of a ../shared/data-like folder: Chikusei (train crop 118, test 282, the paper's bands) and
    the ABU airport scenes (AVIRIS, 205 bands: train airport-1 and -2, test airport-3; bands 32/21/11 are about
    672/569/471 nm: the O2 absorption at 760 nm sits at band 42)."""
    scenes = {}
    chikusei = os.path.join(data, "paper", "chikusei")
    if os.path.isfile(os.path.join(chikusei, "block_118.mat")) and os.path.isfile(os.path.join(chikusei, "block_282.mat")):
        scenes["chikusei"] = Scene("chikusei", (os.path.join(chikusei, "block_118.mat"),),
                                   (os.path.join(chikusei, "block_282.mat"),), (53, 33, 14))
    abu = os.path.join(data, "hsi", "abu")
    airport = [os.path.join(abu, f"abu-airport-{i}.mat") for i in (1, 2, 3)]
    if all(os.path.isfile(p) for p in airport):
        scenes["abu-airport"] = Scene("abu-airport", tuple(airport[:2]), (airport[2],), (32, 21, 11))
    return scenes


def list_images(folder: str) -> list[str]:
    """Image files under `folder` (recursive, sorted); none when it is absent."""
    if not os.path.isdir(folder):
        return []
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)
                  and not f.startswith(".")]
    return found


def shared_sources(data: str) -> dict[str, list[str]]:
    """RGB sources of a ../shared/data-like folder: AID (rgb/aid, class folders), RSSCN7 (rgb/rsscn7) and
    the other images (rgb/remote, rgb/natural: Landsat and photos, to be tiled)."""
    return {"aid": list_images(os.path.join(data, "rgb", "aid")),
            "rsscn7": list_images(os.path.join(data, "rgb", "rsscn7")),
            "other": list_images(os.path.join(data, "rgb", "remote")) + list_images(os.path.join(data, "rgb", "natural"))}


def seeded_order(items: list[str], seed: int) -> list[str]:
    """`items` in a seeded random order (the same for every run): nested prefixes are nested sets."""
    order = np.random.default_rng([seed, 31]).permutation(len(items))
    return [items[i] for i in order]


@dataclass
class AbundanceSets:
    """Named selections of images (`aid-50`, `mix2-210`, ...) and every image any of them needs."""
    sets: dict[str, list[str]] = field(default_factory=dict)

    def images(self) -> list[str]:
        seen, out = set(), []
        for members in self.sets.values():
            for path in members:
                if path not in seen:
                    seen.add(path)
                    out.append(path)
        return out


def plan_sets(sources: dict[str, list[str]], aid_counts, mix_count: int | None, seed: int = 0) -> AbundanceSets:
    """The tiles axis (AID only: the first N of one seeded order, so aid-5 lies in aid-50 ...) and the
    sources axis at a fixed count: mix1 (AID), mix2 (AID + RSSCN7 in equal shares) and mix3 (AID, RSSCN7 and
    the other tiles in equal shares; a source with too few files is topped up by the others, so the count holds).
    When the count is on the tiles axis, that AID set is the one-source point and mix1 is not made twice."""
    aid = seeded_order(sources["aid"], seed)
    plan = AbundanceSets()
    for n in aid_counts:
        if n > len(aid):
            raise ValueError(f"aid-{n}: only {len(aid)} AID tiles")
        plan.sets[f"aid-{n}"] = aid[:n]
    if mix_count:
        pools = {name: seeded_order(sources[name], seed + 1) for name in ("aid", "rsscn7", "other")}
        for label, names in (("mix1", ("aid",)), ("mix2", ("aid", "rsscn7")), ("mix3", ("aid", "rsscn7", "other"))):
            if label == "mix1" and mix_count in aid_counts:
                continue
            plan.sets[f"{label}-{mix_count}"] = fixed_count_mix(pools, names, mix_count)
    return plan


def fixed_count_mix(pools: dict[str, list[str]], names, count: int) -> list[str]:
    """`count` files drawn in equal shares from the named pools, in order; short pools are topped up by the others."""
    share = {name: count // len(names) + (1 if i < count % len(names) else 0) for i, name in enumerate(names)}
    taken = {name: min(share[name], len(pools[name])) for name in names}
    missing = count - sum(taken.values())
    for name in names:  # top up from the pools that have more
        extra = min(missing, len(pools[name]) - taken[name])
        taken[name] += extra
        missing -= extra
    if missing:
        raise ValueError(f"a mix of {count} files needs more images than {', '.join(names)} hold")
    return [path for name in names for path in pools[name][:taken[name]]]


def arm_names(budget: Budget, plan: AbundanceSets, main: bool, task: str) -> list[str]:
    """The synthetic arms of one (scene, task), in report order."""
    every = [f"control_{c}" for c in budget.controls] + [f"inferred_{s}" for s in plan.sets] + \
        [f"ddpm_{s}" for s in budget.ddpm_sets]
    if task == "rgb2hsi":
        return [a for a in every if a in budget.rgb2hsi_arms]
    if main:
        if budget.sweep_tasks and task not in budget.sweep_tasks:
            kept = {f"inferred_{s}" for s in budget.ddpm_sets}
            return [a for a in every if not a.startswith("inferred_") or a in kept]
        return every
    return [a for a in every if a in budget.other_scene_arms]


def scene_tasks(budget: Budget, main: bool) -> tuple[str, ...]:
    tasks = budget.tasks if main else budget.other_scene_tasks
    return tasks + (("rgb2hsi",) if main and budget.rgb2hsi_arms else ())


def estimate_seconds(budget: Budget, plan: AbundanceSets, scenes: dict[str, Scene], bands: dict[str, int]) -> dict:
    """Idle-machine seconds of each part of a run (UNIT_SECONDS x counts)."""
    u = UNIT_SECONDS
    parts = {"stage 1": u["stage1"] * len(budget.scenes),
             "inference": u["infer_image"] * len(plan.images()) * len(budget.scenes),
             "DDPM training": u["ddpm_step_64"] * budget.ddpm_steps * len(budget.ddpm_sets),
             "DDPM sampling": u["sample_64"] * budget.ddpm_samples * len(budget.ddpm_sets)}
    downstream = 0.0
    for index, scene in enumerate(budget.scenes):
        main = index == 0
        for task in scene_tasks(budget, main):
            step = u["rgb2hsi_step_59"] if task == "rgb2hsi" else \
                u["downstream_step_205"] if bands.get(scene, 59) > 100 else u["downstream_step_59"]
            arms = arm_names(budget, plan, main, task)
            trainings = len(budget.seeds) * (budget.downstream_steps +
                                              len(arms) * (budget.downstream_steps + budget.pretrain_steps))
            downstream += step * trainings + u["arm_overhead"] * (len(arms) + 1)
    parts["downstream"] = downstream
    parts["total"] = sum(parts.values())
    return parts


# Two one-thread workers on two cores do not each run at one idle core's speed: the default run took
# 38.2 min wall for 73.4 min of compute (idle, 2026-12-03), 73.4 / 2 / 38.2 = 0.96 per worker; the rerun
# of 2026-12-04: 59.6 min of compute in 30.7 min, 0.97.
PARALLEL_EFFICIENCY = 0.96


def wall_estimate(parts: dict, jobs: int) -> float:
    """Wall seconds with `jobs` steps at once: the compute shared by the workers (each at
    PARALLEL_EFFICIENCY of an idle core when there are several), but never below the serial chain
    stage 1 -> inference -> DDPM training -> sampling that the DDPM arms wait for."""
    chain = parts["stage 1"] + parts["inference"] + parts["DDPM training"] + parts["DDPM sampling"]
    workers = max(1, jobs)
    shared = parts["total"] / workers / (PARALLEL_EFFICIENCY if workers > 1 else 1.0)
    return max(shared, chain)


def check_sources(sources: dict[str, list[str]], budget: Budget) -> None:
    """A one-line reason when the data cannot feed the budget's sets."""
    from ubf.core.errors import UserError
    need = max(budget.aid_counts + ((budget.mix_count,) if budget.mix_count else ()))
    if len(sources["aid"]) < need:
        raise UserError(f"budget {budget.name} needs {need} AID tiles, the data has {len(sources['aid'])} "
                        "(rgb/aid/<class>/*.jpg; a smaller --budget?)")


def glob_maps(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*.mat")))
