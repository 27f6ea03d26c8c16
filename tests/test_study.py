"""The study runner: grid validation, report tables, and a tiny grid end to end through both bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diskrobust.data.errors import DataError
from diskrobust.study.grid import Arm, load_study_config
from diskrobust.study.report import ind_table, ood_table
from diskrobust.robustness.results import aggregate
from diskrobust.study.runner import ordered_arms, run_study


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(cfg))
    return path


def test_grid_orders_standard_arm_first_and_validates(tmp_path):
    cfg = load_study_config(_write(tmp_path, {"name": "t", "shape_modes": [3, 5], "methods": ["adv_r", "std"]}),
                            tmp_path / "out")
    assert [a.name for a in ordered_arms(cfg)] == ["P3-std", "P3-adv_r", "P5-std", "P5-adv_r"]
    with pytest.raises(DataError, match="unknown training methods"):
        load_study_config(_write(tmp_path, {"methods": ["std", "fgsm"]}))
    with pytest.raises(DataError, match="unknown keys"):
        load_study_config(_write(tmp_path, {"epochs": 3}))
    with pytest.raises(DataError, match="not found"):
        load_study_config(tmp_path / "missing.json")


def _rows(arm_shift: float) -> list[dict]:
    rows = []
    for i in range(3):
        base = dict(sample_id=i, subject="s", level="L4/L5", norm="linf", steps=2, reference="truth",
                    polygon_dice=0.9, seg_dice=0.8, point_error_mm=0.5, attack_loss=0.0, delta_linf=0.0, delta_l2=0.0)
        rows.append({**base, "sweep": "clean", "attack": "clean", "head": "none", "eps": 0.0, "point_error_px": 1.0})
        for head in ("points", "seg"):
            for eps in (0.01, 0.05):
                rows.append({**base, "sweep": "ind", "attack": "linf", "head": head, "eps": eps,
                             "point_error_px": 1.0 + eps * 100 * arm_shift})
        rows.append({**base, "sweep": "ood", "attack": "uniform_noise", "head": "both", "eps": 0.0,
                     "point_error_px": 30.0, "reference": "target"})
        rows.append({**base, "sweep": "ood", "attack": "uniform_noise", "head": "both", "eps": 40.0,
                     "point_error_px": 2.0 * arm_shift, "reference": "target"})
    return rows


def test_tables_have_one_row_per_arm_and_one_column_per_eps():
    results = {Arm(3, "std"): aggregate(_rows(2.0), 2.0), Arm(3, "adv_r"): aggregate(_rows(1.0), 2.0)}
    lines, eps = ind_table(results, "point_error_px")
    assert eps == [0.0, 0.01, 0.05]
    header = lines[2]
    assert header == "| arm | eps 0 | eps 0.01 | eps 0.05 | AUC |"
    body = lines[4:]
    assert [row.split("|")[1].strip() for row in body] == ["P3-std", "P3-adv_r"]
    # the std arm's error at eps 0.05 is 1 + 0.05 * 100 * 2 = 11, adv_r's 6
    assert body[0].split("|")[4].strip() == "11.00" and body[1].split("|")[4].strip() == "6.00"
    ood = ood_table(results)
    assert sum(line.startswith("| P3-") for line in ood) == 2
    assert "| P3-std | uniform_noise | 40 | 4.00 |" in "\n".join(ood)


@pytest.mark.slow
def test_tiny_study_end_to_end_resume_and_failing_arm(tmp_path, tiny_phantom):
    cfg = {
        "name": "tiny",
        "shape_modes": [3, 1000],  # 1000 PCA modes cannot be fitted on the tiny phantom: that arm must fail alone
        "methods": ["std", "adv_r"],
        "dataset": {"dataset_dir": str(tiny_phantom)},
        "train": {"epochs": 1, "samples_per_epoch": 8, "batch_size": 4, "width": 8, "num_workers": 0},
        "adversarial": {"adv_steps": 2, "adv_ramp_epochs": 1},
        "evaluation": {"sweep_overrides": {"num_samples": 3, "batch_size": 3, "tensorboard_images": 1,
                                           "ind": {"eps": {"linf": [0.01, 0.05]}, "heads": ["points", "seg"],
                                                   "steps": 2},
                                           "ood": {"starts": ["uniform_noise"], "steps": 3, "num_samples": 2}}},
        "reduced": ["everything (a test)"],
    }
    study = load_study_config(_write(tmp_path, cfg), tmp_path / "out")
    outcomes = run_study(study, progress=False, jobs=2)
    status = {o.arm.name: o.status for o in outcomes}
    assert status["P3-std"] == "done" and status["P3-adv_r"] == "done", outcomes
    assert status["P1000-std"] == "failed" and status["P1000-adv_r"] == "failed"
    assert (study.arm_dir(Arm(1000, "std")) / "arm_failed.json").is_file()

    report = (study.output_dir / "report.md").read_text()
    assert "| P3-std |" in report and "| P3-adv_r |" in report and "FAILED" in report
    tables = json.loads((study.output_dir / "study_tables.json").read_text())["tables"]
    assert tables["point_error_px"]["P3-adv_r"]["eps"] == [0.0, 0.01, 0.05]
    assert (study.output_dir / "error_vs_eps.png").stat().st_size > 0
    assert list((study.arm_dir(Arm(3, "std")) / "logs").glob("events.out.tfevents.*"))

    model = study.arm_dir(Arm(3, "adv_r")) / "models" / "model.pt"
    mtime = model.stat().st_mtime_ns
    again = {o.arm.name: o.status for o in run_study(study, progress=False)}
    assert again["P3-std"] == "skipped" and again["P3-adv_r"] == "skipped"
    assert model.stat().st_mtime_ns == mtime
