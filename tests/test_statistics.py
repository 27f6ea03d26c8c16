"""The findings' statistics on synthetic numbers with known answers."""

import math

import numpy as np
import pytest

from diskrobust.study.statistics import (FindingSpec, bootstrap_estimate, bootstrap_means, bootstrap_pvalue,
                                         decide_finding, finding_markdown, holm, paired_difference,
                                         paired_matrices, sampled_shape_variance, values_matrix,
                                         variance_matched_c_max)
from diskrobust.transforms.shape_augment import ShapePCA


def _coverage(model: str, scheme: str, reps: int = 200, seeds: int = 8, disks: int = 40) -> float:
    """Fraction of 95 % intervals that hold the true mean 2.0 over `reps` synthetic studies."""
    rng = np.random.default_rng(12345)
    hits = 0
    for r in range(reps):
        seed_effect = rng.normal(0.0, 0.3, (seeds, 1))
        if model == "nested":  # each seed sees its own disks
            y = 2.0 + seed_effect + rng.normal(0.0, 1.0, (seeds, disks))
        else:  # the same disks under every seed: a disk effect shared by the seeds
            y = 2.0 + seed_effect + rng.normal(0.0, 1.0, (1, disks)) + rng.normal(0.0, 0.5, (seeds, disks))
        est = bootstrap_estimate(y, n_boot=400, seed=r, scheme=scheme)
        hits += est.lo <= 2.0 <= est.hi
    return hits / reps


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    assert 0.90 <= _coverage("nested", "nested") <= 0.985
    assert 0.90 <= _coverage("crossed", "crossed") <= 0.985


def test_nested_scheme_is_too_narrow_when_the_disks_are_shared_by_the_seeds():
    # why the study's default is "crossed": its seeds all see the same test disks
    assert _coverage("crossed", "nested") < 0.85


def test_bootstrap_is_seeded_and_the_mean_is_the_cell_mean():
    y = np.arange(12.0).reshape(3, 4)
    assert np.array_equal(bootstrap_means(y, 100, seed=3), bootstrap_means(y, 100, seed=3))
    assert not np.array_equal(bootstrap_means(y, 100, seed=3), bootstrap_means(y, 100, seed=4))
    est = bootstrap_estimate(y, n_boot=200)
    assert est.mean == pytest.approx(5.5) and est.lo < 5.5 < est.hi
    assert (est.n_seeds, est.n_disks) == (3, 4)
    # a constant matrix has no spread
    flat = bootstrap_estimate(np.full((3, 5), 1.25), n_boot=50)
    assert flat.lo == flat.hi == 1.25


def test_bootstrap_rejects_missing_cells_and_bad_settings():
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_estimate([[1.0, np.nan]])
    with pytest.raises(ValueError, match="scheme"):
        bootstrap_means([[1.0, 2.0]], scheme="flat")
    with pytest.raises(ValueError, match="same seeds and disks"):
        paired_difference(np.zeros((2, 3)), np.zeros((2, 4)))


def test_paired_difference_cancels_the_shared_disk_effect():
    rng = np.random.default_rng(0)
    disk = rng.normal(0.0, 3.0, (1, 100))  # large, shared by both arms
    a = 5.0 + disk + rng.normal(0.0, 0.1, (3, 100))
    b = 4.0 + disk + rng.normal(0.0, 0.1, (3, 100))
    diff = paired_difference(a, b, n_boot=500)
    assert diff.lo < 1.0 < diff.hi and diff.hi - diff.lo < 0.1
    # unpaired, the same data's arm means are uncertain by far more than the difference
    assert bootstrap_estimate(a, n_boot=500).hi - bootstrap_estimate(a, n_boot=500).lo > 0.5


def test_holm_against_a_hand_worked_example():
    # sorted: 0.005 (<= 0.05/4), 0.01 (<= 0.05/3), 0.03 (> 0.05/2: stop) -> two rejections;
    # adjusted: 4*0.005 = 0.02, 3*0.01 = 0.03, max(0.03, 2*0.03) = 0.06, max(0.06, 1*0.04) = 0.06
    reject, adjusted = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert reject.tolist() == [True, False, False, True]
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Holm is stricter than no correction and looser than Bonferroni here: 0.03 alone would pass at 0.05
    reject, _ = holm([0.012, 0.02], alpha=0.05)  # 0.012 <= 0.025, 0.02 <= 0.05
    assert reject.tolist() == [True, True]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])


def test_bootstrap_pvalue_inverts_the_percentile_interval():
    reps = np.linspace(-1.0, 1.0, 999)
    assert bootstrap_pvalue(reps, 1.5, "below") == pytest.approx(1 / 1000)
    assert bootstrap_pvalue(reps, -1.5, "below") == pytest.approx(1.0)
    assert bootstrap_pvalue(reps, 0.0, "above") == pytest.approx((1 + 500) / 1000)


def _spec(direction="less", delta=0.3, **kw):
    return FindingSpec(id="f", claim="a is better", a="A", b="B", metric="point_error_px", direction=direction,
                       smallest_effect=delta, eps=[0.03, 0.07], **kw)


def _arms(shift_by_eps, seeds=3, disks=100, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    a, b = {}, {}
    for eps, shift in shift_by_eps.items():
        base = 5.0 + rng.normal(0.0, 1.0, (1, disks)) + rng.normal(0.0, 0.2, (seeds, 1))
        b[eps] = base + rng.normal(0.0, noise, (seeds, disks))
        a[eps] = base + shift + rng.normal(0.0, noise, (seeds, disks))
    return a, b


def test_a_known_shift_is_detected_and_reported():
    a, b = _arms({0.03: -1.0, 0.07: -1.0})
    res = decide_finding(_spec(), a, b, n_boot=1000)
    assert res.verdict == "reproduced"
    assert all(d.shown and not d.opposite_shown for d in res.decisions)
    assert all(d.diff.lo < -1.0 + 0.3 and d.diff.hi > -1.0 - 0.3 for d in res.decisions)
    text = "\n".join(finding_markdown(res))
    assert "reproduced" in text and "| 0.07 |" in text


def test_a_zero_shift_is_not_taken_for_an_effect():
    # plenty of data: the interval lies inside +-0.3 -> "not reproduced" (any effect is too small)
    a, b = _arms({0.03: 0.0, 0.07: 0.0}, noise=0.3)
    res = decide_finding(_spec(), a, b, n_boot=1000)
    assert res.verdict == "not reproduced" and "smaller than the smallest" in res.reason
    assert not any(d.shown for d in res.decisions)
    # little, noisy data: neither an effect nor its absence can be shown
    a, b = _arms({0.03: 0.0, 0.07: 0.0}, seeds=2, disks=8, noise=2.0)
    assert decide_finding(_spec(), a, b, n_boot=1000).verdict == "inconclusive"


def test_an_effect_smaller_than_the_smallest_that_counts_is_not_reproduced():
    a, b = _arms({0.03: -0.1, 0.07: -0.1}, noise=0.2)
    res = decide_finding(_spec(delta=0.3), a, b, n_boot=1000)
    assert res.verdict == "not reproduced"
    # the same data with a smaller threshold is an effect that counts
    assert decide_finding(_spec(delta=0.02), a, b, n_boot=1000).verdict == "reproduced"


def test_the_opposite_effect_and_mixed_effects():
    a, b = _arms({0.03: 1.0, 0.07: 1.0})
    res = decide_finding(_spec(), a, b, n_boot=1000)
    assert res.verdict == "not reproduced" and "opposite" in res.reason
    a, b = _arms({0.03: -1.0, 0.07: 1.0})
    assert decide_finding(_spec(), a, b, n_boot=1000).verdict == "inconclusive"


def test_holm_decides_over_the_eps_values():
    # one eps with an effect just at the uncorrected edge: Holm over more eps can withdraw it
    a, b = _arms({0.03: -0.55, 0.07: 0.0}, seeds=3, disks=40, noise=1.0, seed=5)
    res = decide_finding(_spec(), a, b, n_boot=2000)
    p = [d.p_claim for d in res.decisions]
    reject, adjusted = holm(p, 0.05)
    assert [d.shown for d in res.decisions] == reject.tolist()
    assert adjusted[0] >= p[0]


def test_equivalence_claim():
    a, b = _arms({0.03: 0.0, 0.07: 0.0}, noise=0.3)
    assert decide_finding(_spec("equivalent", 0.5), a, b, n_boot=1000).verdict == "reproduced"
    a, b = _arms({0.03: 0.0, 0.07: 2.0}, noise=0.3)
    assert decide_finding(_spec("equivalent", 0.5), a, b, n_boot=1000).verdict == "not reproduced"


def test_finding_spec_validation():
    good = {"id": "f1", "claim": "c", "a": "A", "b": "B", "metric": "point_error_px", "direction": "less",
            "smallest_effect": 0.3, "eps": [0.07]}
    assert FindingSpec.from_dict(good).eps == [0.07]
    with pytest.raises(ValueError, match="unknown key"):
        FindingSpec.from_dict({**good, "smalest_effect": 1})
    with pytest.raises(ValueError, match="direction"):
        FindingSpec.from_dict({**good, "direction": "lower"})
    with pytest.raises(ValueError, match="smallest_effect"):
        FindingSpec.from_dict({**good, "smallest_effect": 0})


def _rows(values, eps, sweep="ind", ids=None):
    ids = list(range(len(values))) if ids is None else ids
    return [{"sample_id": i, "sweep": sweep, "attack": "linf" if sweep == "ind" else "none",
             "head": "points" if sweep == "ind" else "none", "eps": eps, "point_error_px": v}
            for i, v in zip(ids, values)]


def test_rows_become_paired_matrices_and_unpaired_ones_are_refused():
    spec = FindingSpec(id="f", claim="c", a="A", b="B", metric="point_error_px", direction="less",
                       smallest_effect=0.1, eps=[0.0, 0.07])
    rows = {"A": {0: _rows([1, 2], 0.0, "clean") + _rows([3, 4], 0.07),
                  1: _rows([1.5, 2.5], 0.0, "clean") + _rows([3.5, 4.5], 0.07)},
            "B": {0: _rows([1, 1], 0.0, "clean") + _rows([5, 5], 0.07),
                  1: _rows([1, 1], 0.0, "clean") + _rows([6, 6], 0.07)}}
    a, b = paired_matrices(rows, spec)
    assert a[0.0].tolist() == [[1, 2], [1.5, 2.5]] and b[0.07].tolist() == [[5, 5], [6, 6]]
    m, seeds, ids = values_matrix(rows["A"], spec, 0.07)
    assert seeds == [0, 1] and ids == [0, 1] and m.shape == (2, 2)
    rows["B"][1] = _rows([1, 1], 0.0, "clean") + _rows([6, 6], 0.07, ids=[0, 7])
    with pytest.raises(ValueError, match="other test disks"):
        paired_matrices(rows, spec)
    rows["B"] = {0: rows["B"][0]}
    with pytest.raises(ValueError, match="not paired"):
        paired_matrices(rows, spec)


def test_variance_matched_c_max_equalises_the_sampled_variance():
    lam = np.array([10.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.2, 0.1, 0.05, 0.02, 0.01])
    c3 = variance_matched_c_max(lam, 3, 10, 2.0)
    # by hand: 2 * sqrt((10 + 4 + 2 + 1 + 0.5 + 0.25 + 0.2 + 0.1 + 0.05 + 0.02) / 16)
    assert c3 == pytest.approx(2.0 * np.sqrt(18.12 / 16.0))
    assert sampled_shape_variance(lam, 3, c3) == pytest.approx(sampled_shape_variance(lam, 10, 2.0))
    # and empirically, through the shape model the augmentation samples from
    rng = np.random.default_rng(0)
    p = 30
    comps = np.linalg.qr(rng.normal(size=(2 * p, lam.size)))[0].T.reshape(lam.size, p, 2)
    pca = ShapePCA(np.zeros((p, 2)), comps, lam)
    var3 = pca.sample(40000, 3, c3, np.random.default_rng(1)).reshape(40000, -1).var(0).sum()
    var10 = pca.sample(40000, 10, 2.0, np.random.default_rng(2)).reshape(40000, -1).var(0).sum()
    assert var3 == pytest.approx(var10, rel=0.03)
    with pytest.raises(ValueError, match="n_modes"):
        variance_matched_c_max(lam[:5], 3, 10)


def _design_arms(cfg: dict) -> set[str]:
    return {f"n{n}-{aug}-{m}" for block in cfg["blocks"] for n in block["train_subjects"]
            for aug in block["augmentations"] for m in block["methods"]}


@pytest.mark.parametrize("name", ["findings", "findings_gpu"])
def test_findings_profiles_state_decidable_findings(repo_root, name):
    import json

    from diskrobust.study.statistics import StatisticsConfig

    cfg = json.loads((repo_root / "configs" / "study" / f"{name}.json").read_text())
    stats = StatisticsConfig.from_dict(cfg["statistics"])
    arms = _design_arms(cfg)
    assert len(cfg["seeds"]) >= 3 and cfg["evaluation"]["sweep_overrides"]["ind"]["restarts"] >= 2
    assert {"none", "P3", "P5", "P10", "P3v10"} <= set(cfg["augmentations"])
    assert len({b for blk in cfg["blocks"] for b in blk["train_subjects"]}) >= 2
    for f in stats.findings:
        assert f.a in arms and f.b in arms, f.id
        if f.sweep == "ind":
            assert set(f.eps) <= set(cfg["evaluation"]["sweep_overrides"]["ind"]["eps"][f.attack])
        else:
            assert f.attack in cfg["ood_budget"]["starts"]
    with pytest.raises(ValueError, match="unknown key"):
        StatisticsConfig.from_dict({**cfg["statistics"], "alpah": 0.05})


def test_budget_rows_feed_the_findings():
    from diskrobust.robustness.ood_budget import finding_rows
    from diskrobust.study.statistics import StatisticsConfig, decide_findings

    def budget(shift, seed):
        rng = np.random.default_rng(seed)
        return [{"sample_id": i, "start": "natural", "random_start": False, "rms_max": 0.5,
                 "rms_needed": float(0.05 + 0.01 * i + shift + rng.normal(0, 0.001))} for i in range(20)]

    rows = {"A": {s: finding_rows(budget(0.0, s)) for s in range(3)},
            "B": {s: finding_rows(budget(0.0, 10 + s)) for s in range(3)}}
    cfg = StatisticsConfig.from_dict({"n_boot": 500, "findings": [
        {"id": "f3", "claim": "same budget", "a": "A", "b": "B", "metric": "rms_needed", "direction": "equivalent",
         "smallest_effect": 0.01, "sweep": "ood_budget", "attack": "natural", "head": "from_start", "eps": [0.0]}]})
    res = decide_findings(cfg, rows)[0]
    assert res.verdict == "reproduced" and res.censored == {"a": 0.0, "b": 0.0}
    rows["A"] = {s: finding_rows(budget(0.05, s)) for s in range(3)}
    assert decide_findings(cfg, rows)[0].verdict == "not reproduced"
    # both arms mostly capped at rms_max: equal budgets that are the cap's, not the arms'
    capped = {arm: {s: finding_rows([{**r, "rms_needed": math.inf} if r["sample_id"] >= 5 else r
                                     for r in budget(0.0, s + k)]) for s in range(3)} for arm, k in (("A", 0), ("B", 10))}
    res = decide_findings(cfg, capped)[0]
    assert res.censored == {"a": 0.75, "b": 0.75}
    assert res.verdict == "inconclusive" and "75% of A's" in res.reason and "raise rms_max" in res.reason


def test_findings_from_written_csv_files(tmp_path):
    from diskrobust.robustness.results import ROW_COLUMNS, write_rows_csv
    from diskrobust.study.statistics import StatisticsConfig, decide_findings, findings_summary_markdown, load_arm_rows

    rng = np.random.default_rng(0)
    disk = rng.normal(0, 1, 30)
    paths = {}
    for arm, shift in (("A", -1.0), ("B", 0.0)):
        for seed in range(3):
            rows = [{k: "" for k in ROW_COLUMNS} | {"sample_id": i, "sweep": "ind", "attack": "linf", "head": "points",
                                                   "eps": 0.07, "point_error_px": float(5 + shift + disk[i] + rng.normal(0, .3))}
                    for i in range(30)]
            paths.setdefault(arm, {})[seed] = write_rows_csv(tmp_path / f"{arm}{seed}.csv", rows)
    cfg = StatisticsConfig.from_dict({"n_boot": 500, "findings": [
        {"id": "f1", "claim": "A lowers the error", "a": "A", "b": "B", "metric": "point_error_px",
         "direction": "less", "smallest_effect": 0.3, "eps": [0.07]}]})
    res = decide_findings(cfg, load_arm_rows(paths))
    lines = findings_summary_markdown(res)
    assert res[0].verdict == "reproduced" and "**reproduced**" in lines[2] and "(eps 0.07)" in lines[2]


def test_variance_matched_c_max_from_the_training_split(tiny_phantom):
    from diskrobust.data.dataset_io import load_datalist
    from diskrobust.datasets import build_patch_bank
    from diskrobust.study.statistics import variance_matched_c_max_for_training

    entries = load_datalist(tiny_phantom / "datalist.json", "training")
    got = variance_matched_c_max_for_training(entries, 64, 1.0, 3, 10, 2.0)
    bank = build_patch_bank(entries, patch_size=64, patch_spacing_mm=1.0, progress=False)
    pca = ShapePCA.fit(np.asarray(bank.points))
    assert got["patches"] == len(bank.points)
    assert got["c_max"] == pytest.approx(variance_matched_c_max(pca.eigenvalues, 3, 10, 2.0))
    assert got["c_max"] > 2.0  # fewer modes need a wider range for the same variance
    assert sampled_shape_variance(pca.eigenvalues, 3, got["c_max"]) == pytest.approx(got["variance_px2"])
