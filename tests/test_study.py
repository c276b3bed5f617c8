"""Helpers of experiments/study.py on hand-made files (the full study is run by hand: docs/generation.md)."""
import importlib.util
import os

import numpy as np
import pytest

from ubf.data.matio import read_mat, write_mat
from tests.conftest import ROOT


def load_study():
    spec = importlib.util.spec_from_file_location("study", os.path.join(ROOT, "experiments", "study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_baseline_is_exact_for_cubes_that_are_linear_in_three_bands(tmp_path):
    """Every band is a linear mix of bands 0, 1, 2 and every file has the same extremes, so min-max
    scaling is one affine change for all files: the least-squares map reconstructs the held-out cube
    to rounding error, and a noisy held-out cube scores far lower."""
    study = load_study()
    rng = np.random.default_rng(0)
    mix = rng.uniform(0.1, 1.0, (3, 7))
    for split, count in (("train", 2), ("test", 1)):
        os.makedirs(tmp_path / split)
        for i in range(count):
            base = rng.uniform(0, 1, (16, 16, 3))
            base[0, 0], base[0, 1] = 0.0, 1.0  # same min and max in every file: one affine map fits all
            write_mat(str(tmp_path / split / f"{i}.mat"), {"Y": np.concatenate([base, base @ mix], -1)})
    exact = study.linear_baseline_psnr(str(tmp_path / "train"), str(tmp_path / "test"), [0, 1, 2])
    assert exact > 60
    cube = read_mat(str(tmp_path / "test" / "0.mat"))["Y"]
    write_mat(str(tmp_path / "test" / "0.mat"), {"Y": cube + rng.normal(0, 0.05, cube.shape)})
    assert study.linear_baseline_psnr(str(tmp_path / "train"), str(tmp_path / "test"), [0, 1, 2]) < 40


def test_dirichlet_maps_are_on_the_simplex(tmp_path):
    study = load_study()
    study.write_dirichlet_abundances(str(tmp_path), 3, 8, 5, 0)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 3 and "Bright" not in read_mat(str(tmp_path / files[0]))
    abundance = read_mat(str(tmp_path / files[0]))["Abu"]
    assert abundance.shape == (8, 8, 5) and abundance.min() >= 0
    np.testing.assert_allclose(abundance.sum(-1), 1.0, atol=1e-5)
    # i.i.d. Dirichlet(1) over K = 5: each mean 1/5
    assert abs(abundance.mean() - 0.2) < 0.05
    # with a brightness pool, each pixel's brightness is one of the pool's values, drawn independently
    pool = np.array([0.5, 2.0], dtype=np.float32)
    study.write_dirichlet_abundances(str(tmp_path / "b"), 2, 16, 5, 0, brightness_pool=pool)
    bright = read_mat(str(tmp_path / "b" / "dirichlet_0000.mat"))["Bright"]
    assert bright.shape == (16, 16) and set(np.unique(bright)) == {0.5, 2.0}
    assert 0.3 < (bright == 2.0).mean() < 0.7


def test_noisy_fraction_counts_speckle_only(tmp_path):
    import torch
    from ubf.evaluation.roughness import noisy_fraction
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    smooth = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (k + 1) * xx) * np.cos(2 * np.pi * yy) for k in range(3)])
    rng = np.random.default_rng(0)
    clean = torch.from_numpy(np.stack([smooth[:, :32, :32], smooth[:, 32:, 32:]]))
    speckled = clean + torch.from_numpy(rng.normal(0, 0.2, clean.shape))
    result = noisy_fraction(torch.cat([clean, speckled]), [torch.from_numpy(smooth)])
    assert result["noisy_sample_fraction"] == pytest.approx(0.5)
    assert result["hf_sample_max"] > 10 * result["hf_threshold"]


def load_plan():
    import sys
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import study_plan
    return study_plan


def test_tiles_axis_sets_are_nested_and_mixes_hold_their_count():
    plan_module = load_plan()
    sources = {"aid": [f"aid/{i}.jpg" for i in range(60)], "rsscn7": [f"rs/{i}.jpg" for i in range(30)],
               "other": [f"o/{i}.png" for i in range(4)]}
    plan = plan_module.plan_sets(sources, (5, 50), 21)
    assert plan.sets["aid-5"] == plan.sets["aid-50"][:5] and len(set(plan.sets["aid-50"])) == 50
    assert all(len(plan.sets[f"mix{i}-21"]) == 21 for i in (1, 2, 3))
    mix3 = plan.sets["mix3-21"]
    # equal shares of 7, but "other" has 4: topped up by AID (first pool with more), the count holds
    assert sum(p.startswith("o/") for p in mix3) == 4 and sum(p.startswith("rs/") for p in mix3) == 7
    assert sum(p.startswith("aid/") for p in mix3) == 10
    mix2 = plan.sets["mix2-21"]
    assert sum(p.startswith("aid/") for p in mix2) == 11 and sum(p.startswith("rs/") for p in mix2) == 10
    assert plan_module.plan_sets(sources, (5, 50), 21).sets == plan.sets  # seeded: the same every run
    # a count on the tiles axis: that AID set is the one-source point, no mix1 beside it
    on_axis = plan_module.plan_sets(sources, (5, 21), 21).sets
    assert "mix1-21" not in on_axis and {"aid-21", "mix2-21", "mix3-21"} <= set(on_axis)


def test_large_budget_reuses_every_step_of_the_default_one():
    """A step is its folder: the large budget must run every default step with the same settings."""
    plan_module = load_plan()
    default, large = plan_module.BUDGETS["default"], plan_module.BUDGETS["large"]
    for name in ("crop", "downstream_steps", "pretrain_steps", "seeds", "control_maps", "ddpm_steps",
                 "ddpm_samples", "eval_every"):
        assert getattr(default, name) == getattr(large, name), name
    assert set(default.controls) <= set(large.controls) and set(default.aid_counts) <= set(large.aid_counts)
    assert set(default.ddpm_sets) <= set(large.ddpm_sets) and set(default.tasks) <= set(large.tasks)


def test_the_shuffled_control_keeps_every_pixel_of_each_map_and_loses_its_arrangement(tmp_path):
    """Two smooth 40 x 48 maps (neighbouring pixels correlate > 0.9) with a brightness: each shuffled map
    holds exactly its source's (abundance, brightness) pixels, still paired, but neighbours no longer
    correlate (|r| < 0.1); every source map is used once, whatever count the budget asks for."""
    from scipy.ndimage import gaussian_filter
    from ubf.data.matio import read_mat, write_mat
    study_module = load_study()
    rng = np.random.default_rng(0)
    source = tmp_path / "inferred"
    for i in range(2):
        logits = np.stack([gaussian_filter(rng.normal(size=(40, 48)), 4) * 30 for _ in range(4)], axis=2)
        abundance = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
        write_mat(str(source / f"m{i}.mat"), {"Abu": abundance.astype(np.float32),
                                               "Bright": (0.8 + 0.1 * logits[..., 0]).astype(np.float32)})
    record = study_module.write_control("shuffled", str(source), str(tmp_path / "shuffled"), 64, 0)
    assert record["count"] == 2 and record["brightness"]

    def neighbour_correlation(channel):
        return np.corrcoef(channel[:, :-1].ravel(), channel[:, 1:].ravel())[0, 1]
    for i in range(2):
        before = read_mat(str(source / f"m{i}.mat"), ["Abu", "Bright"])
        after = read_mat(str(tmp_path / "shuffled" / f"shuffled_{i:04d}.mat"), ["Abu", "Bright"])
        rows = lambda d: np.column_stack([d["Abu"].reshape(-1, 4), d["Bright"].reshape(-1, 1)])
        assert np.array_equal(np.unique(rows(before), axis=0), np.unique(rows(after), axis=0))
        assert neighbour_correlation(before["Abu"][..., 0]) > 0.9
        assert abs(neighbour_correlation(after["Abu"][..., 0])) < 0.1


def test_other_images_are_cut_into_whole_tiles(tmp_path):
    from PIL import Image
    study = load_study()
    Image.new("RGB", (320, 160), (10, 20, 30)).save(tmp_path / "wide.png")
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    tiles = study.tile_images([str(tmp_path / "wide.png"), str(tmp_path / "small.png")], str(tmp_path / "tiles"), 150)
    assert [os.path.basename(t) for t in tiles] == ["wide_r0_c0.png", "wide_r0_c1.png"]
    with Image.open(tiles[1]) as im:
        assert im.size == (150, 150) and im.getpixel((0, 0)) == (10, 20, 30)


def test_estimate_counts_every_training(tmp_path):
    plan_module = load_plan()
    budget = plan_module.BUDGETS["default"]
    plan = plan_module.AbundanceSets({"aid-50": [f"{i}" for i in range(50)]})
    parts = plan_module.estimate_seconds(budget, plan, {}, {})
    arms = plan_module.arm_names(budget, plan, True, "denoise")
    assert arms == ["control_dirichlet", "control_structure", "control_shuffled", "inferred_aid-50", "ddpm_aid-50"]
    u = plan_module.UNIT_SECONDS
    per_task = u["downstream_step_59"] * len(budget.seeds) * (budget.downstream_steps + len(arms) * (
        budget.downstream_steps + budget.pretrain_steps)) + u["arm_overhead"] * (len(arms) + 1)
    assert parts["downstream"] == pytest.approx(2 * per_task)
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))


def test_wall_estimate_shares_compute_at_the_measured_efficiency_but_waits_for_the_ddpm_chain():
    """Measured idle (2026-12-03): 73.4 min of compute took 38.2 min wall on two workers; a chain of serial
    steps (stage 1 -> inference -> DDPM training -> sampling) bounds the wall time from below."""
    plan_module = load_plan()
    parts = {"stage 1": 240, "inference": 0, "DDPM training": 540, "DDPM sampling": 420, "total": 73.4 * 60}
    assert plan_module.wall_estimate(parts, 2) / 60 == pytest.approx(38.2, abs=0.5)
    assert plan_module.wall_estimate(parts, 1) == pytest.approx(73.4 * 60)
    serial = dict(parts, **{"DDPM training": 3000})
    assert plan_module.wall_estimate(serial, 2) == pytest.approx(240 + 3000 + 420)


def test_paired_differences_subtract_the_controls_psnr_seed_by_seed(tmp_path):
    """Hand-made per-arm reports: inferred minus dirichlet per seed is (+0.3, +0.1, -0.1) -> mean 0.1,
    population std 0.163, 2 of 3 seeds ahead ('overlapping'); a control is never compared with itself."""
    import json
    study = load_study()
    psnr = {"inferred_aid-5": (30.3, 30.1, 29.9), "control_dirichlet": (30.0, 30.0, 30.0)}
    for arm, values in psnr.items():
        folder = tmp_path / f"downstream_sc_denoise_{arm}"
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps({f"real_plus_synthetic.seed{s}.psnr": v
                                                        for s, v in zip((0, 1, 2), values)}))
    flat = study.paired_differences(str(tmp_path), "sc", "downstream",
                                    {("denoise", "control_dirichlet"): {}, ("denoise", "inferred_aid-5"): {}}, (0, 1, 2))
    key = "downstream.denoise.inferred_aid-5.vs_control_dirichlet."
    assert flat[key + "psnr_mean"] == pytest.approx(0.1)
    assert flat[key + "psnr_std"] == pytest.approx(np.std([0.3, 0.1, -0.1]))
    assert flat[key + "seeds_ahead"] == 2 and len(flat) == 3
    import study_report
    assert study_report.verdict(2, 3) == "overlapping" and study_report.verdict(3, 3) == "ahead"
    assert study_report.verdict(0, 3) == "behind"


def test_report_lists_the_sets_and_not_the_steps_bookkeeping():
    """A sets step's done.json carries its seconds and the key of what it covered beside the map counts;
    the report of a large run once listed 'key (323eecb3721b6b7a maps)' among the sets."""
    load_study()
    import study_report
    record = {"aid-5": 5, "mix3-500": 500, "seconds": 12.5, "key": "323eecb3721b6b7a"}
    assert study_report.set_summary(record) == "aid-5 (5 maps), mix3-500 (500 maps)"


def test_a_step_is_reused_only_for_the_same_key(tmp_path):
    """A larger budget in the same folder: a step finished for other inputs (another key) runs again."""
    study_module = load_study()
    study = study_module.Study(str(tmp_path))
    calls = []
    assert study.step("s", lambda: calls.append(1) or {"n": 1}, key="a")["n"] == 1
    study.step("s", lambda: calls.append(2) or {"n": 2}, key="a")  # same key: reused
    assert calls == [1]
    assert study.step("s", lambda: calls.append(3) or {"n": 3}, key="b")["n"] == 3 and calls == [1, 3]
    assert study_module.content_key(["x", "y"]) == study_module.content_key(["y", "x"]) != study_module.content_key(["x"])


def test_a_folder_whose_stage1_chose_its_epoch_on_the_test_crop_is_refused(tmp_path):
    """Older studies validated stage 1 on the test crop and kept the best epoch there; their maps must not be
    mixed into a new run (infer would reuse them), so such a folder is refused in one line."""
    study_module = load_study()
    study = study_module.Study(str(tmp_path))
    study_module.refuse_earlier_stage1(study, ["chikusei"])  # nothing there yet: fine
    study.step("stage1_chikusei", lambda: {}, key=study_module.STAGE1_KEY)
    study_module.refuse_earlier_stage1(study, ["chikusei"])  # made by this version: fine
    (tmp_path / "stage1_abu-airport").mkdir()
    (tmp_path / "stage1_abu-airport" / "done.json").write_text('{"seconds": 140.2}')  # an earlier study's record
    with pytest.raises(study_module.UserError, match="stage1_abu-airport: made by an earlier study"):
        study_module.refuse_earlier_stage1(study, ["chikusei", "abu-airport"])


def test_more_seeds_pool_the_studys_seeds_with_the_extra_ones(tmp_path):
    """Seeds 0-1 in the study's folders, 2-3 in more_seeds/: real only 36 on every seed; structure
    gains (1, -1, 1, -1), inferred gains (0, 0, 0, 0.4): inferred - structure = (-1, 1, -1, 1.4), mean 0.1,
    sample std 1.28 -> standard error 0.64, 2 of 4 seeds ahead."""
    import json
    import sys
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import study_more_seeds_report as pool
    gains = {"control_dirichlet": (0.0, 0.0, 0.0, 0.0), "control_structure": (1.0, -1.0, 1.0, -1.0),
             "inferred_aid-50": (0.0, 0.0, 0.0, 0.4)}
    for arm, values in gains.items():
        for folder, seeds in ((tmp_path / f"downstream_chikusei_denoise_{arm}", (0, 1)),
                              (tmp_path / "more_seeds" / f"{arm}_s2-3", (2, 3))):
            folder.mkdir(parents=True)
            report = {f"real_plus_synthetic.seed{s}.psnr": 36.0 + values[s] for s in seeds}
            report.update({f"real_only.seed{s}.psnr": 36.0 for s in seeds})
            (folder / "report.json").write_text(json.dumps(report))
    result = pool.pooled(str(tmp_path))
    assert result["real_only"]["n"] == 4 and result["control_structure"]["mean"] == pytest.approx(0.0)
    pair = result["inferred_aid-50-control_structure"]
    assert pair["mean"] == pytest.approx(0.1) and pair["n"] == 4 and pair["ahead"] == 2
    assert pair["stderr"] == pytest.approx(np.std([-1, 1, -1, 1.4], ddof=1) / 2)
    pool.write_report(str(tmp_path / "more_seeds"), result)
    assert "| inferred_aid-50 - control_structure | 4 | +0.10" in (tmp_path / "more_seeds" / "report.md").read_text()
    (tmp_path / "more_seeds" / "inferred_aid-50_s3-3").mkdir()
    (tmp_path / "more_seeds" / "inferred_aid-50_s3-3" / "report.json").write_text(
        json.dumps({"real_plus_synthetic.seed3.psnr": 36.0}))
    with pytest.raises(SystemExit, match="seed 3"):
        pool.pooled(str(tmp_path))


def test_more_seeds_pool_sets_a_run_below_the_tasks_input_apart(tmp_path):
    """The noisy input scores 20 dB; inferred seed 3 ends at 10 dB (worse than handing the input back):
    it is named as failed, the mean keeps it (gain -26 among 0, 0, 0.4 -> -6.4), the median is 0.0 and
    the mean without it 0.4 / 3; the structure-control run of seed 3 at 35 dB is no failure, so the
    paired row leaves seed 3 out for inferred - structure and keeps all four for structure - Dirichlet."""
    import json
    import sys
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import study_more_seeds_report as pool
    scores = {"control_dirichlet": (36.0, 36.0, 36.0, 36.0), "control_structure": (37.0, 35.0, 37.0, 35.0),
              "inferred_aid-50": (36.0, 36.4, 36.0, 10.0)}
    for arm, values in scores.items():
        folder = tmp_path / f"downstream_chikusei_denoise_{arm}"
        folder.mkdir(parents=True)
        report = {f"real_plus_synthetic.seed{s}.psnr": values[s] for s in range(4)}
        report.update({f"real_only.seed{s}.psnr": 36.0 for s in range(4)}, **{"input.psnr": 20.0})
        report.update({f"curve.real_only.seed{s}": [[0, 17.0], [2, 30.0], [4, 36.0]] for s in range(4)})
        report.update({f"curve.real_plus_synthetic.seed{s}": [[0, 17.0], [2, 30.0], [4, 28.0], [6, values[s]]]
                       for s in range(4)})  # a 2 dB dip on every seed: under DIP_DB
        if arm == "inferred_aid-50":  # seed 2 falls 5 dB, then recovers; seed 3 falls 20 dB and stays there
            report["curve.real_plus_synthetic.seed2"] = [[0, 17.0], [2, 30.0], [4, 25.0], [6, 36.0]]
        (folder / "report.json").write_text(json.dumps(report))
    result = pool.pooled(str(tmp_path))
    assert result["inferred_aid-50"]["unstable_seeds"] == [2, 3] and result["inferred_aid-50"]["curves"] == 4
    assert result["control_structure"]["unstable_seeds"] == [] and result["real_only"]["unstable_seeds"] == []
    inferred = result["inferred_aid-50"]
    assert inferred["failed_seeds"] == [3] and inferred["mean"] == pytest.approx(-6.4)
    assert inferred["median"] == pytest.approx(0.0) and inferred["without_failed"]["mean"] == pytest.approx(0.4 / 3)
    assert inferred["without_failed"]["n"] == 3 and result["control_structure"]["failed_seeds"] == []
    assert result["inferred_aid-50-control_structure"]["without_failed"]["n"] == 3
    assert result["control_structure-control_dirichlet"]["without_failed"]["n"] == 4
    assert result["real_only"]["failed_seeds"] == [] and result["input_psnr"] == 20.0
    folder = tmp_path / "more_seeds"
    folder.mkdir()
    pool.write_report(str(folder), result)
    text = (folder / "report.md").read_text()
    assert "| HSIs from the inferred maps, aid-50 | 4 | -6.40" in text and "| seed 3 | +0.13 +/- " in text
    assert "aid-50 2 of 4 (seed 2, 3)" in text and "real only 0 of 4" in text
    pool.plot(str(folder / "seeds.png"), result)  # the failed run is drawn on the axis' bottom edge
    assert (folder / "seeds.png").stat().st_size > 0
    other = tmp_path / "more_seeds" / "inferred_aid-50_s4-4"
    other.mkdir()
    (other / "report.json").write_text(json.dumps({"real_plus_synthetic.seed4.psnr": 36.0, "input.psnr": 25.0}))
    with pytest.raises(SystemExit, match="other test data"):
        pool.pooled(str(tmp_path))


def fake_study_folder(study_module, root, tasks=("denoise",)):
    """A finished default-budget study as far as --more-seeds reads it: the data record, stage 1 (this
    version's key), the three controls and the sets step, and the study's own seeds 0-2 of each arm on
    each of `tasks`."""
    import json
    study = study_module.Study(str(root))
    train, test = root / "block_118.mat", root / "block_282.mat"
    study.step("data", lambda: {"scenes": {"chikusei": {"train": [str(train)], "test": [str(test)],
                                                        "bands": [53, 33, 14]}},
                                "sets": {"aid-50": ["aid__a.jpg"]}, "images": {"aid__a.jpg": str(root / "a.jpg")}})
    study.step("stage1_chikusei", lambda: {}, key=study_module.STAGE1_KEY)
    for step in ("control_dirichlet_chikusei", "control_structure_chikusei", "control_shuffled_chikusei",
                 "sets_chikusei"):
        study.step(step, lambda: {})
    for task in tasks:
        for arm in ("control_dirichlet", "control_structure", "control_shuffled", "inferred_aid-50"):
            folder = root / f"downstream_chikusei_{task}_{arm}"
            folder.mkdir()
            report = {f"real_plus_synthetic.seed{s}.psnr": 30.0 for s in (0, 1, 2)}
            report.update({f"real_only.seed{s}.psnr": 30.0 for s in (0, 1, 2)})
            report.update({"settings.steps": 800, "settings.pretrain_steps": 400, "settings.crop": 48})
            (folder / "report.json").write_text(json.dumps(report))
    return study


def recording_cli(calls):
    """Stands in for run_cli: keeps the command line, writes the report Evaluate.py would (seed s scores
    30 + s/10, real only 30) into its --out folder."""
    import json

    def run(argv, threads):
        calls.append(list(argv))
        out, seeds = argv[argv.index("--out") + 1], []
        for value in argv[argv.index("--seeds") + 1:]:
            if value.startswith("--"):
                break
            seeds.append(int(value))
        os.makedirs(out, exist_ok=True)
        report = {f"real_plus_synthetic.seed{s}.psnr": 30.0 + s / 10 for s in seeds}
        report.update({f"real_only.seed{s}.psnr": 30.0 for s in seeds})
        with open(os.path.join(out, "report.json"), "w") as handle:
            json.dump(report, handle)
    return run


def option(argv, name, count=1):
    at = argv.index(name)
    return argv[at + 1:at + 1 + count]


def test_more_seeds_run_the_studys_own_command_line_on_other_seeds(tmp_path, monkeypatch):
    """`--more-seeds 3 6 --jobs 2` on a default study: two runs of seeds (3-4, 5-6), each the real-only
    arm with the first control and the other two arms reusing it; every command line is the study's own
    for that arm (the default budget's 400 + 800 steps at crop 48, fine-tuning at 0.3 x, evaluation every
    100 steps, Chikusei's bands 53/33/14) but for its seeds, output folder and reused report; a second
    run finds every folder done and runs nothing."""
    study_module = load_study()
    fake_study_folder(study_module, tmp_path)
    calls = []
    monkeypatch.setattr(study_module, "run_cli", recording_cli(calls))
    args = study_module.build_parser().parse_args(["--out", str(tmp_path), "--more-seeds", "3", "6", "--jobs", "2"])
    result = study_module.run_more_seeds(args, 3, 6)
    assert len(calls) == 8  # 2 runs of seeds x (three controls + the inferred set)
    structure = [c for c in calls if "--abundances" in c and option(c, "--abundances")[0].endswith(
        "control_structure_chikusei") and option(c, "--seeds", 2) == ["3", "4"]]
    assert len(structure) == 1
    line = structure[0]
    assert option(line, "--pretrain-steps") == ["400"] and option(line, "--steps") == ["800"]
    assert option(line, "--crop") == ["48"] and option(line, "--finetune-lr-scale") == ["0.3"]
    assert option(line, "--eval-every") == ["100"] and option(line, "--rgb-bands", 3) == ["53", "33", "14"]
    assert option(line, "--reuse-real-only")[0] == str(tmp_path / "more_seeds" / "control_dirichlet_s3-4" / "report.json")
    assert option(line, "--out")[0] == str(tmp_path / "more_seeds" / "control_structure_s3-4")

    # pooled: seeds 0-2 score 30 in the study's folders, seed s of the extra runs 30 + s/10, real only 30
    assert result["control_dirichlet"]["seeds"] == [0, 1, 2, 3, 4, 5, 6]
    assert result["inferred_aid-50-control_dirichlet"]["n"] == 7
    assert result["control_structure"]["mean"] == pytest.approx((0.3 + 0.4 + 0.5 + 0.6) / 7)
    assert (tmp_path / "more_seeds" / "seeds.png").stat().st_size > 0
    calls.clear()  # a second run finds every folder done
    study_module.run_more_seeds(args, 3, 6)
    assert calls == []

    # the study's own command line for the same arm, from the steps it would add
    class Capture:
        def __init__(self):
            self.work = {}

        def add(self, name, work, deps=(), key=None):
            self.work[name] = work
            return name
    data = study_module.Study(str(tmp_path)).finished("data")
    plan = study_module.AbundanceSets(dict(data["sets"]))
    jobs = Capture()
    study_module.scene_jobs(args, study_module.Study(str(tmp_path)), study_module.BUDGETS["default"], data,
                            "chikusei", True, plan, jobs)
    calls.clear()
    jobs.work["downstream_chikusei_denoise_control_structure"]()  # (overwrites the fake study's report)
    study_line = calls[0]
    for name, count in (("--seeds", 3), ("--out", 1), ("--reuse-real-only", 1)):
        at_mine, at_study = line.index(name), study_line.index(name)
        line[at_mine + 1:at_mine + 1 + (2 if name == "--seeds" else 1)] = ["X"]
        study_line[at_study + 1:at_study + 1 + count] = ["X"]
    assert line == study_line


def test_more_seeds_with_another_adam_epsilon_pool_apart_from_the_studys_seeds(tmp_path, monkeypatch, capsys):
    """`--more-seeds 0 1 --adam-eps 1e-5`: the study's own seeds 0-2 ran with torch's epsilon, so seeds 0-1
    run again (not refused) with --adam-eps on every command line, into more_seeds_adam-eps-1e-05/, and
    pool on their own (2 seeds, not 5); --adam-eps without --more-seeds is refused in one line."""
    study_module = load_study()
    fake_study_folder(study_module, tmp_path)
    calls = []
    monkeypatch.setattr(study_module, "run_cli", recording_cli(calls))
    args = study_module.build_parser().parse_args(["--out", str(tmp_path), "--more-seeds", "0", "1", "--jobs", "1",
                                                   "--adam-eps", "1e-5"])
    result = study_module.run_more_seeds(args, 0, 1)
    assert len(calls) == 4 and all(option(c, "--adam-eps") == ["1e-05"] for c in calls)
    assert all(option(c, "--out")[0].startswith(str(tmp_path / "more_seeds_adam-eps-1e-05")) for c in calls)
    assert result["control_structure"]["n"] == 2 and result["control_structure"]["mean"] == pytest.approx(0.05)
    report = (tmp_path / "more_seeds_adam-eps-1e-05" / "report.md").read_text()
    assert report.startswith("# Chikusei denoising (adam-eps-1e-05)") and not (tmp_path / "more_seeds").exists()
    with pytest.raises(SystemExit) as stop:
        study_module.main(["--out", str(tmp_path), "--adam-eps", "1e-5"])
    assert stop.value.code == 2 and "--adam-eps is an option of --more-seeds" in capsys.readouterr().err


def test_more_seeds_of_another_task_and_chosen_arms_pool_with_that_tasks_own_seeds(tmp_path, monkeypatch, capsys):
    """`--more-seeds 3 4 --task sr4 --arms inferred_aid-50 control_shuffled`: two command lines (the shuffled
    control first, training real only, the inferred set reusing it), both `--task sr4`, into more_seeds_sr4/;
    pooled with the study's own sr4 seeds 0-2 (real only 30, pre-trained 30) and not its denoising ones
    (the denoising folders hold seed 3, which would be refused as run twice): 5 seeds, seed s of the new runs
    gains s/10 -> mean (0.3 + 0.4) / 5 = 0.14. `--arms ddpm_aid-50` (never a default arm) trains on the
    study's DDPM samples. An arm the budget has not, a task it has not, and --task without --more-seeds are
    refused in one line."""
    import json
    study_module = load_study()
    fake_study_folder(study_module, tmp_path, tasks=("denoise", "sr4"))
    held = tmp_path / "more_seeds" / "inferred_aid-50_s3-3"
    held.mkdir(parents=True)
    (held / "report.json").write_text(json.dumps({"real_plus_synthetic.seed3.psnr": 31.0}))
    calls = []
    monkeypatch.setattr(study_module, "run_cli", recording_cli(calls))
    args = study_module.build_parser().parse_args(["--out", str(tmp_path), "--more-seeds", "3", "4", "--jobs", "1",
                                                   "--task", "sr4", "--arms", "inferred_aid-50", "control_shuffled"])
    result = study_module.run_more_seeds(args, 3, 4)
    assert len(calls) == 2 and all(option(c, "--task") == ["sr4"] for c in calls)
    assert option(calls[0], "--out")[0] == str(tmp_path / "more_seeds_sr4" / "control_shuffled_s3-4")
    assert "--reuse-real-only" not in calls[0]
    assert option(calls[1], "--reuse-real-only")[0] == str(tmp_path / "more_seeds_sr4" / "control_shuffled_s3-4"
                                                            / "report.json")
    assert result["arms"] == ["control_shuffled", "inferred_aid-50"] and result["task"] == "sr4"
    assert result["inferred_aid-50"]["seeds"] == [0, 1, 2, 3, 4]
    assert result["inferred_aid-50"]["mean"] == pytest.approx(0.14)
    assert result["inferred_aid-50-control_shuffled"]["n"] == 5
    report = (tmp_path / "more_seeds_sr4" / "report.md").read_text()
    assert report.startswith("# Chikusei x4 super-resolution, pooled seeds")
    import study_more_seeds_report as pool  # the report script finds the same folder from --task alone
    pool.main([str(tmp_path), "--task", "sr4"])
    assert json.loads((tmp_path / "more_seeds_sr4" / "report.json").read_text())["inferred_aid-50"]["n"] == 5
    capsys.readouterr()
    # the DDPM samples run when named, from the study's samples folder
    study_module.Study(str(tmp_path)).step("samples_chikusei_aid-50", lambda: {})
    (tmp_path / "downstream_chikusei_sr4_ddpm_aid-50").mkdir()
    (tmp_path / "downstream_chikusei_sr4_ddpm_aid-50" / "report.json").write_text(
        (tmp_path / "downstream_chikusei_sr4_control_dirichlet" / "report.json").read_text())
    ddpm = study_module.build_parser().parse_args(["--out", str(tmp_path), "--more-seeds", "3", "4", "--jobs", "1",
                                                   "--task", "sr4", "--arms", "ddpm_aid-50"])
    result = study_module.run_more_seeds(ddpm, 3, 4)
    assert len(calls) == 3 and "--reuse-real-only" not in calls[2]
    assert option(calls[2], "--abundances")[0] == str(tmp_path / "ddpm_chikusei_aid-50" / "run" / "mat_results")
    assert result["arms"] == ["control_shuffled", "inferred_aid-50", "ddpm_aid-50"]  # the report keeps the others
    assert result["ddpm_aid-50"]["n"] == 5 and result["ddpm_aid-50-control_shuffled"]["n"] == 5
    wrong = study_module.build_parser().parse_args(["--out", str(tmp_path), "--more-seeds", "3", "4",
                                                    "--arms", "control_copies"])
    with pytest.raises(study_module.UserError, match="--arms control_copies: not an arm of the default budget's "
                                                     "more seeds .its arms: control_dirichlet, control_structure, "
                                                     "control_shuffled, inferred_aid-50, ddpm_aid-50"):
        study_module.run_more_seeds(wrong, 3, 4)
    wrong = study_module.build_parser().parse_args(["--out", str(tmp_path), "--more-seeds", "3", "4",
                                                    "--task", "rgb2hsi"])
    with pytest.raises(study_module.UserError, match="--task rgb2hsi: the default budget's tasks on chikusei are "
                                                     "denoise, sr4"):
        study_module.run_more_seeds(wrong, 3, 4)
    with pytest.raises(SystemExit) as stop:
        study_module.main(["--out", str(tmp_path), "--task", "sr4"])
    assert stop.value.code == 2 and "--task is an option of --more-seeds" in capsys.readouterr().err
    assert len(calls) == 3


def test_more_seeds_refuse_seeds_another_report_holds_and_a_missing_study(tmp_path, monkeypatch):
    study_module = load_study()
    args = study_module.build_parser().parse_args(["--out", str(tmp_path), "--more-seeds", "2", "4"])
    with pytest.raises(study_module.UserError, match="data: no finished study"):
        study_module.run_more_seeds(args, 2, 4)
    fake_study_folder(study_module, tmp_path)
    calls = []
    monkeypatch.setattr(study_module, "run_cli", recording_cli(calls))
    with pytest.raises(study_module.UserError, match="downstream_chikusei_denoise_control_dirichlet/report.json: "
                                                     "already holds seed 2"):
        study_module.run_more_seeds(args, 2, 4)
    with pytest.raises(study_module.UserError, match="the last seed is before the first"):
        study_module.run_more_seeds(args, 5, 4)
    small = study_module.build_parser().parse_args(["--out", str(tmp_path), "--budget", "small"])
    with pytest.raises(study_module.UserError, match="control_copies_chikusei: not finished"):
        study_module.run_more_seeds(small, 3, 4)  # the small budget's arms are not this study's
    study_module.Study(str(tmp_path)).step("control_copies_chikusei", lambda: {})
    (tmp_path / "downstream_chikusei_denoise_control_copies").mkdir()
    (tmp_path / "downstream_chikusei_denoise_control_copies" / "report.json").write_text(
        '{"settings.steps": 800, "settings.pretrain_steps": 400, "settings.crop": 48}')  # as the default budget's
    with pytest.raises(study_module.UserError, match="control_copies/report.json: made with other downstream "
                                                     "settings than --budget small's"):
        study_module.run_more_seeds(small, 3, 4)
    assert calls == []
    assert study_module.more_seeds_chunks(3, 12, 2) == [[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]]
    assert study_module.more_seeds_chunks(3, 3, 2) == [[3]]
