"""A tiny findings design end to end: 2 training-set sizes without augmentation and one with it, in
two blocks (as findings.json), x 2 seeds, 1 epoch, through the real bundles, ending in the report's
findings section."""

import json

from diskrobust.data.dataset_io import load_datalist
from diskrobust.robustness.results import read_rows_csv
from diskrobust.study.grid import load_study_config
from diskrobust.study.runner import run_study
from diskrobust.study.statistics import VERDICTS

TINY_DESIGN = {
    "name": "tiny_findings",
    "seeds": [0, 1],
    # "none": no shape augmentation (--shape_modes 0: the real patches, unwarped)
    "augmentations": {"none": {"shape_modes": 0}, "P3v5": {"shape_modes": 3, "c_max": {"match_variance_of": 5}}},
    # two blocks (as findings.json): the findings compare n4-none with n2-none and with n4-P3v5; an n2-P3v5
    # arm would only cost two more trainings and evaluations (the end-to-end test's time is bundle start-ups)
    "blocks": [{"train_subjects": [2, 4], "augmentations": ["none"], "methods": ["std"]},
               {"train_subjects": [4], "augmentations": ["P3v5"], "methods": ["std"]}],
    "train": {"epochs": 1, "samples_per_epoch": 4, "batch_size": 4, "width": 8, "num_workers": 0, "patch_size": 64,
              "patch_spacing_mm": 1.0},
    "evaluation": {"sweep_overrides": {"num_samples": None, "batch_size": 8, "tensorboard_images": 0,
                                       "ind": {"eps": {"linf": [0.05]}, "heads": ["points"], "steps": 1},
                                       "ood": {"enabled": False}}},
    # uniform noise and the OOD budget on one arm (its 2 seeds; an arm's measurements run in one child process)
    "baselines": {"mean_shape": True, "uniform_noise": {"linf": [0.05]}, "uniform_noise_arms": ["n4-none-std"]},
    "ood_budget": {"starts": ["natural"], "num_targets": 2, "rms_max": 0.5, "iterations": 1, "steps": 2,
                   "random_start": [False, True], "curve_rms": [0.0, 0.25, 0.5],
                   "tolerance": {"max_point_distance_px": 1.0, "min_seg_dice": None},
                   "arms": ["n4-none-std"]},
    "statistics": {"n_boot": 200, "findings": [
        {"id": "size", "claim": "4 training subjects beat 2", "a": "n4-none-std", "b": "n2-none-std",
         "metric": "point_error_px", "direction": "less", "smallest_effect": 0.3, "eps": [0.0, 0.05]},
        {"id": "variance", "claim": "P3v5 beats no augmentation", "a": "n4-P3v5-std", "b": "n4-none-std",
         "metric": "point_error_px", "direction": "less", "smallest_effect": 0.3, "eps": [0.05]},
        {"id": "budget", "claim": "no augmentation and P3v5 need the same OOD budget", "a": "n4-none-std", "b": "n4-P3v5-std",
         "metric": "rms_needed", "direction": "equivalent", "smallest_effect": 0.01, "sweep": "ood_budget",
         "attack": "natural", "head": "random_start", "eps": [0.0]}]},
    "reduced": ["everything (a test)"],
}


def test_tiny_findings_design_end_to_end(tmp_path, tiny_phantom):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**TINY_DESIGN, "dataset": {"dataset_dir": str(tiny_phantom)}}))
    cfg = load_study_config(path, tmp_path / "out")
    outcomes = run_study(cfg, progress=False, jobs=2)
    assert [o.status for o in outcomes] == ["done"] * 6, [o.error for o in outcomes]
    assert {o.arm.name for o in outcomes} == {f"{a}-s{s}" for a in ("n2-none-std", "n4-none-std", "n4-P3v5-std")
                                              for s in (0, 1)}
    out = tmp_path / "out"
    for n in (2, 4):
        training = load_datalist(out / "datalists" / f"training{n}.json", "training")
        assert len({e["subject"] for e in training}) == n
        # the test split is the dataset's: every arm is evaluated on the same disks
        assert load_datalist(out / "datalists" / f"training{n}.json", "test") == load_datalist(
            tiny_phantom / "datalist.json", "test")
    for o in outcomes:
        arm_dir = cfg.arm_dir(o.arm)
        assert arm_dir == out / "arms" / o.arm.design_name / f"seed{o.arm.seed}"
        command = json.loads((arm_dir / "train_done.json").read_text())["command"]
        assert command[command.index("--seed") + 1] == str(o.arm.seed)
        assert command[command.index("--datalist") + 1].endswith(f"training{o.arm.train_subjects}.json")
        if o.arm.augmentation == "P3v5":
            c_max = json.loads((arm_dir / "c_max.json").read_text())["c_max"]
            assert c_max > 2.0 and command[command.index("--c_max") + 1] == str(c_max)
        else:
            assert "--c_max" not in command
    # the two seeds' evaluations were seeded differently (their PGD random starts differ)
    a = (out / "arms" / "n4-none-std" / "seed0" / "eval" / "config.json").read_text()
    assert json.loads(a)["sweep"]["seed"] == 0
    report = (out / "report.md").read_text()
    assert "## Findings" in report
    assert "| 2 | 5 |" in report and "| 4 | 5 |" in report  # the mean-shape baseline per training-set size
    everything = json.loads((out / "study_tables.json").read_text())["tables"]
    tables = everything["findings"]
    assert [f["id"] for f in tables] == ["size", "variance", "budget"]
    assert all(f["verdict"] in VERDICTS for f in tables[:2])
    assert all(d["diff"]["n_seeds"] == 2 and d["diff"]["n_disks"] == 5 for f in tables[:2] for d in f["per_eps"])
    # finding 3 reads the budget rows: arm a's were found (its 2 seeds ran the search), arm b ran none
    # (deciding it from budget rows: tests/test_statistics.py::test_budget_rows_feed_the_findings)
    assert tables[2]["verdict"] == "not decided"
    assert "n4-P3v5-std seed 0: no rows for ood_budget/natural/random_start" in tables[2]["reason"]
    # the measurements ran only on the arms that list them, as one child process per arm, seeded by the arm's seed
    for o in outcomes:
        arm_dir = cfg.arm_dir(o.arm)
        measured = o.arm.design_name == "n4-none-std"
        assert (arm_dir / "uniform_noise" / "linf" / "done.json").is_file() == measured
        assert (arm_dir / "ood_budget" / "done.json").is_file() == measured
        if measured:
            command = (arm_dir / "measure.log").read_text().splitlines()[0]
            assert " uniform-noise " in command and " + ood-budget " in command and f"--seed {o.arm.seed} " in command
            noise = read_rows_csv(arm_dir / "uniform_noise" / "linf" / "per_sample.csv")
            assert [(r["sample_id"], r["eps"], r["attack"]) for r in noise] == [(i, 0.05, "uniform_linf") for i in range(5)]
            assert all(0.049 < r["delta_linf"] <= 0.05 + 1e-6 for r in noise)
            budget = read_rows_csv(arm_dir / "ood_budget" / "rows.csv")
            assert [(r["sample_id"], r["random_start"]) for r in budget] == [(0, "False"), (1, "False"), (0, "True"), (1, "True")]
            summary = json.loads((arm_dir / "ood_budget" / "summary.json").read_text())
            assert set(summary["curves"]) == {"natural / from start", "natural / random start"}
            assert json.loads((arm_dir / "arm_done.json").read_text())["measurements"].keys() == {"uniform_noise_linf", "ood_budget"}
    # the report: uniform noise next to PGD (per arm and seed, and over seeds with intervals), the OOD budget table
    # with the start-image distance explained, and its curve plot
    assert "| n4-none-std-s0 + uniform noise |" in report and "| n2-none-std-s0 + uniform noise |" not in report
    assert "### Baseline: uniform noise of the same budget next to PGD" in report
    assert "| n4-none-std | uniform noise | " in report and "| n4-none-std | PGD (points head) | " in report
    assert "## OOD budget" in report and "start-image distance" in report
    assert "| n4-none-std | natural | random | 2 x 2 |" in report
    assert (out / "ood_budget_curves.png").stat().st_size > 1000
    assert set(everything["ood_budget"]["rows"]) == {f"n4-none-std / natural / {s}" for s in ("from start", "random start")}
    assert everything["uniform_noise"]["n4-none-std-s1"]["eps"] == [0.05]


def test_the_design_is_validated_before_any_work(tmp_path):
    import pytest

    from diskrobust.data.errors import DataError

    def load(**change):
        path = tmp_path / "d.json"
        path.write_text(json.dumps({**TINY_DESIGN, **change}))
        return load_study_config(path)

    cfg = load()
    assert [a.name for a in cfg.arms][:3] == ["n2-none-std-s0", "n2-none-std-s1", "n4-none-std-s0"]
    # one block is the cross product of its sizes x augmentations x methods, each run once per seed
    square = [{"train_subjects": [2, 4], "augmentations": ["none", "P3v5"], "methods": ["std"]}]
    assert [a.name for a in load(blocks=square).arms][:3] == ["n2-none-std-s0", "n2-none-std-s1", "n2-P3v5-std-s0"]
    assert len(load(blocks=square).arms) == 8
    blocks = [{"train_subjects": [2], "augmentations": ["P33"], "methods": ["std"]}]
    with pytest.raises(DataError, match="did you mean 'P3v5'"):
        load(blocks=blocks)
    augs = {**TINY_DESIGN["augmentations"], "P3": {"shape_modes": 3}}
    assert len(load(augmentations=augs).arms) == 6  # defined but unused is fine
    with pytest.raises(DataError, match="0: no shape augmentation"):
        load(augmentations={**augs, "none": {"shape_modes": -1}})
    with pytest.raises(DataError, match="nothing to scale"):
        load(augmentations={**augs, "none": {"shape_modes": 0, "c_max": 3.0}})
    with pytest.raises(DataError, match="did you mean 'n4-none-std'"):
        load(ood_budget={**TINY_DESIGN["ood_budget"], "arms": ["n4-non-std"]})
    with pytest.raises(DataError, match="arms in baselines.uniform_noise_arms"):
        load(baselines={**TINY_DESIGN["baselines"], "uniform_noise_arms": ["n5-none-std"]})
    with pytest.raises(DataError, match=r"budgets in \(0, 1\]"):
        load(baselines={"uniform_noise": {"linf": [2.0]}})
    with pytest.raises(DataError, match="did you mean 'uniform_noise'"):
        load(baselines={"uniform_nosie": {"linf": [0.1]}})
    with pytest.raises(DataError, match="match_variance_of"):
        load(augmentations={"P3": {"shape_modes": 3, "c_max": "wide"}, "P3v5": {"shape_modes": 3}})
    stats = {**TINY_DESIGN["statistics"], "findings": [{**TINY_DESIGN["statistics"]["findings"][0], "b": "n3-P3-std"}]}
    with pytest.raises(DataError, match="blocks do not make"):
        load(statistics=stats)
    with pytest.raises(DataError, match="seeds"):
        load(seeds=[0, 0])
    with pytest.raises(DataError, match="unknown key"):
        load(ood_budget={"rms_maxx": 1})


def test_the_quick_profile_is_the_whole_findings_design_at_reduced_size(repo_root):
    from diskrobust.study.statistics import StatisticsConfig

    full, quick = (load_study_config(repo_root / "configs" / "study" / f"{n}.json") for n in ("findings", "findings_quick"))
    assert {a.design_name for a in quick.arms} == {a.design_name for a in full.arms}  # every arm of the design
    assert "none" in {a.augmentation for a in full.arms}
    assert [f.id for f in StatisticsConfig.from_dict(quick.statistics).findings] == \
        [f.id for f in StatisticsConfig.from_dict(full.statistics).findings]
    assert quick.ood_budget["arms"] == full.ood_budget["arms"] and quick.baselines["uniform_noise"]["linf"]
    assert len(quick.seeds) == 2 and len(quick.arms) < len(full.arms)
    assert quick.train["epochs"] < full.train["epochs"] and quick.ood_budget["steps"] < full.ood_budget["steps"]
    assert len(quick.reduced) >= 5 and "NOT YET RUN" not in full.description + quick.description
