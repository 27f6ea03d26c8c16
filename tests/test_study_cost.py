"""benchmarks/study_cost.py: the work it counts from a profile and the local engine's schedule it
predicts a CPU study's wall time with (docs/performance.md "Demo and study wall time")."""

import importlib.util

import pytest

from diskrobust.study.grid import load_study_config


@pytest.fixture(scope="module")
def study_cost(repo_root):
    spec = importlib.util.spec_from_file_location("study_cost", repo_root / "benchmarks" / "study_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_local_schedule_is_the_runners_queue(study_cost):
    # two workers: the standard arms first, a fine-tuned arm holds its worker until its standard arm is done
    assert study_cost.local_makespan([("a", None, 10.0), ("b", None, 10.0), ("a-adv", "a", 5.0)], 2) == 15.0
    assert study_cost.local_makespan([("a", None, 10.0), ("x", "a", 1.0), ("y", "a", 1.0)], 2) == 11.0
    assert study_cost.local_makespan([("a", None, 10.0), ("x", "a", 1.0), ("y", "a", 1.0)], 1) == 12.0


def test_the_findings_work_is_counted_from_the_profile(study_cost, repo_root):
    cfg = load_study_config(repo_root / "configs" / "study" / "findings.json")
    disks = study_cost.test_disks(cfg, 0)
    assert disks == 100  # the 134-subject phantom's 20 test subjects x 5
    b, ind = cfg.ood_budget, cfg.evaluation["sweep_overrides"]["ind"]
    work = study_cost.arm_work(cfg, disks)
    assert work["evaluate"]["attack"] == len(ind["heads"]) * len(ind["eps"]["linf"]) * disks * ind["steps"] * ind["restarts"]
    assert work["std"]["train"] == cfg.train["epochs"] * cfg.train["samples_per_epoch"]
    arms = {a.design_name: a for a in cfg.arms}
    noise = len(cfg.baselines["uniform_noise"]["linf"]) * disks
    # the OOD budget only on the arms it lists, at its upper bound (every target bisected)
    assert study_cost.measurement_work(cfg, arms["n4-P3-std"], disks) == {"train": 0.0, "attack": noise, "attack1": 0.0}
    budget = len(b["starts"]) * len(b["random_start"]) * b["num_targets"] * (1 + b["iterations"]) * (b["steps"] + 1)
    assert study_cost.measurement_work(cfg, arms["n16-P10-adv_rs"], disks)["attack1"] == budget
    per_step = {"train": 1.0, "attack": 0.0, "attack1": 0.0}
    rows = study_cost.design_arms(cfg, per_step, disks)
    assert len(rows) == len(cfg.arms) and all(base is None for _, base, _, _ in rows[:30])
    assert rows[-1][:3] == ("n16-P10-adv_rs-s2", "n16-P10-std-s2", 3 * cfg.adversarial["epochs"] * cfg.train["samples_per_epoch"])


def test_the_paper_profile_is_counted_from_the_bundles_settings(study_cost, repo_root):
    cfg = load_study_config(repo_root / "configs" / "study" / "paper.json")
    work = study_cost.arm_work(cfg, 150)
    # IND: PGD-100 and the autoattack ensemble (3 APGD members x 100 steps + 1000 queries at a third of a step)
    # on 3 heads x 6 eps x 150 disks; OOD: 3 starts x 1 head x 1 budget x 64 targets x 4000 steps
    assert work["evaluate"]["attack"] == pytest.approx(3 * 6 * 150 * (100 + 300 + 1000 / 3) + 3 * 64 * 4000)
    assert work["adv_rs"] == {"train": 3 * 100 * 6400, "attack": 2 * 20 * 100 * 6400, "attack1": 0.0}
