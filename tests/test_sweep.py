"""The robustness sweep engine (diskrobust.robustness), its result files and TensorBoard output.

A tiny DiskShapeNet (32 px patches, width 4) is trained for a few dozen steps on synthetic
ellipse "disks", so the attacks act on a network that has learnt something: PGD must raise its
error and the OOD attack must pull its output towards the target.
"""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch

from diskrobust.attacks import PGD
from diskrobust.data.contours import polygon_fill_torch
from diskrobust.data.errors import ConfigError, DataError
from diskrobust.losses import DiskShapeLoss
from diskrobust.networks import DiskShapeNet
from diskrobust.robustness import config as sweep_config
from diskrobust.robustness import results
from diskrobust.robustness.engine import run_robustness_sweep
from diskrobust.robustness.workflow import load_sweep_config

SIZE = 32


def synthetic_disks(n: int, seed: int = 0) -> list[dict]:
    """Ellipses in the contract's point order (point 0 upper left, anterior side first), (1, S, S) images."""
    g = torch.Generator().manual_seed(seed)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    cx, cy = SIZE / 2 + u(-3, 3), SIZE / 2 + u(-3, 3)
    a, b = u(0.22, 0.32) * SIZE, u(0.1, 0.16) * SIZE
    theta = -math.pi / 4 + 2 * math.pi * torch.arange(176) / 176
    pts = torch.stack([cx[:, None] - a[:, None] * torch.cos(theta), cy[:, None] + b[:, None] * torch.sin(theta)], -1)
    mask = polygon_fill_torch(pts, (SIZE, SIZE)).float().reshape(n, 1, SIZE, SIZE)
    img = (0.15 + 0.6 * mask + 0.05 * torch.randn(n, 1, SIZE, SIZE, generator=g)).clamp(0, 1)
    return [{"image": img[i], "points": pts[i].float(), "mask": mask[i], "subject": f"syn-{i // 4:03d}",
             "level": f"L{i % 4 + 1}"} for i in range(n)]


def tiny_net(**kw) -> DiskShapeNet:
    return DiskShapeNet(spatial_size=SIZE, width=4, blocks=(1, 1), norm_groups=2, **kw)


@pytest.fixture(scope="module")
def data_and_model():
    items = synthetic_disks(28)
    torch.manual_seed(0)
    net = tiny_net()
    train = items[8:]
    net.set_mean_shape(torch.stack([it["points"] for it in train]).mean(0))
    x = torch.stack([it["image"] for it in train])
    p = torch.stack([it["points"] for it in train])
    m = torch.stack([it["mask"] for it in train])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = DiskShapeLoss()
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randint(0, len(train), (16,), generator=gen)
        loss = loss_fn(net(x[idx]), {"points": p[idx], "mask": m[idx]})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return items[:8], net.eval()


def small_config(**over) -> dict:
    cfg = {"num_samples": 6, "batch_size": 6, "tensorboard_images": 2, "tolerance_px": 1.5,
           "ind": {"attacks": ["linf"], "eps": {"linf": [0.05, 0.2]}, "heads": ["points", "seg"], "steps": 4},
           "ood": {"starts": ["uniform_noise", "natural"], "eps_rms": [0.375], "steps": 15, "num_samples": 3}}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


# ------------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize("bad, match", [
    ({"ind": {"eps": {"linf": [0.01, -0.03]}}}, r"ind#eps#linf: must satisfy 0 < ind#eps#linf <= 1"),
    ({"ind": {"eps": {"linf": [0.05, 5.0]}}}, r"ind#eps#linf: must satisfy 0 < ind#eps#linf <= 1, got 5"),
    ({"ind": {"eps": {"linf": [0.0, 0.1]}}}, r"ind#eps#linf: must satisfy 0 <"),
    ({"ind": {"eps": {"linf": [0.05, 0.03]}}}, r"sorted ascending"),
    ({"ind": {"eps": {"linf": [0.03, 0.03]}}}, r"sorted ascending without repeats"),
    ({"ind": {"eps": {"linf": []}}}, r"non-empty"),
    ({"ind": {"eps": {"l2": [0.5, 16.0]}, "attacks": ["l2"]}}, r"ind#eps#l2: must satisfy 0 < ind#eps#l2 <= 1, got 16"),
    ({"ind": {"attacks": ["fgsm"]}}, r"unknown attack name.*fgsm"),
    ({"ind": {"eps": {"linf": [0.1], "cw": [1.0]}}}, r"unknown attack name.*cw"),
    ({"ind": {"heads": ["points", "decoder"]}}, r"unknown head name.*decoder"),
    ({"ood": {"starts": ["ct_scan"]}}, r"unknown OOD start image name.*ct_scan"),
    ({"ood": {"eps_rms": [0.4, 0.2]}}, r"ood#eps_rms.*sorted"),
    ({"ood": {"eps_rms": [40.0]}}, r"ood#eps_rms: must satisfy 0 < ood#eps_rms <= 1"),
    ({"ood": {"eps": [40.0]}}, r"ood#eps: is no longer a setting: the OOD budget is per pixel now"),
    ({"ind": {"steps": 0}}, r"ind#steps: must satisfy 1 <= ind#steps"),
    ({"ood": {"steps": 0}}, r"ood#steps: must satisfy 1 <= ood#steps"),
    ({"ind": {"steps": 2.5}}, r"ind#steps: expected an integer"),
    ({"ind": {"update": "momentum"}}, r"ind#update"),
    ({"ood": {"enabled": "maybe"}}, r"ood#enabled: expected true or false"),
    ({"tolerance_px": -1}, r"tolerance_px"),
    ({"epsilon": [0.1]}, r"unknown setting.*epsilon"),
    ({"ind": {"stesp": 5}}, r"unknown setting.*'ind#stesp' \(closest: 'ind#steps'"),
    ({"chunk_size": -2}, r"chunk_size: must be a positive integer, 0 or null \(the whole batch\) or 'auto', got -2"),
    ({"chunk_size": "fast"}, r"chunk_size: must be .* or 'auto', got 'fast'"),
    ({"channels_last": "yes"}, r"channels_last: must be true, false or 'auto', got 'yes'"),
    ({"chunk_sise": 4}, r"unknown setting.*'chunk_sise' \(closest: 'chunk_size'"),
])
def test_bad_sweep_settings_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        sweep_config.SweepConfig.from_dict(small_config(**bad))


def test_booleans_are_read_strictly():
    # the string "false" from a command line is false, not a non-empty (true) string
    cfg = sweep_config.SweepConfig.from_dict(small_config(ood={"enabled": "false"}, ind={"random_start": "False"}))
    assert cfg.ood.enabled is False and cfg.ind.random_start is False


def test_profiles_load_and_overrides_merge(repo_root):
    configs = repo_root / "bundles" / "lumbar_disk_attack" / "configs"
    evaluate, paper_file = configs / "evaluate.json", configs / "profiles" / "paper.json"
    quick = load_sweep_config(evaluate)
    named = load_sweep_config(evaluate, configs / "profiles" / "cpu-quick.json")
    paper = load_sweep_config(evaluate, paper_file)
    assert quick.profile == named.profile == "cpu-quick" and paper.profile == "paper"
    assert named.to_dict() == quick.to_dict()
    # the paper's evaluation protocol; its OOD L2 of 40 at 128 x 128 is an RMS of 0.3125 per pixel
    assert paper.ind.eps["linf"] == [0.01, 0.03, 0.05, 0.07, 0.1, 0.2]
    assert (paper.ind.steps, paper.ind.step_ratio, paper.ind.update, paper.ind.random_start) == (100, 0.2, "adamax", True)
    assert (paper.ood.eps_rms, paper.ood.steps, paper.ood.lr, paper.ood.optimizer) == ([0.3125], 4000, 0.01, "adamax")
    assert sweep_config.absolute_l2(paper.ood.eps_rms[0], (128, 128)) == 40.0
    assert paper.num_samples is None and paper.ind.heads == quick.ind.heads
    # the paper profile adds the ensemble on PGD's grid; the quick profile leaves it out for time
    assert paper.ind.attacks == ["linf", "autoattack_linf"] and paper.ind.eps["autoattack_linf"] == paper.ind.eps["linf"]
    assert quick.ind.attacks == ["linf"] and paper.ind.queries == 1000
    assert quick.ind.steps <= 20 and quick.ood.steps <= 200 and quick.num_samples <= 16
    # the quick default keeps the start image visible: RMS 0.05 is a tenth of a [0, 1] image's range
    assert quick.ood.eps_rms == [0.05]
    merged = load_sweep_config(evaluate, overrides={"ind#steps": 3, "ind#eps#linf": [0.1]})
    assert merged.ind.steps == 3 and merged.ind.eps["linf"] == [0.1] and merged.ind.heads == quick.ind.heads
    with pytest.raises(ConfigError, match=r"unknown setting 'ind#stesp' \(closest: 'ind#steps'"):
        load_sweep_config(evaluate, overrides={"ind#stesp": 3})
    with pytest.raises(ConfigError, match=r"evaluate\.json: ind#eps#linf: must be sorted"):
        load_sweep_config(evaluate, overrides={"ind#eps#linf": [0.2, 0.1]})


# ------------------------------------------------------------------------------------------ results


def test_aggregate_auc_tolerance_and_tables():
    def row(sweep_, eps, err, attack="linf", head="points"):
        return {"sweep": sweep_, "attack": attack, "norm": "linf", "head": head, "eps": eps, "reference": "truth",
                "point_error_px": err, "point_error_mm": err / 2, "polygon_dice": 1 - err / 10, "seg_dice": float("nan")}

    rows = [row("clean", 0.0, e, "none", "none") for e in (1.0, 3.0)]
    rows += [row("ind", 0.1, e) for e in (2.0, 6.0)] + [row("ind", 0.2, e) for e in (5.0, 7.0)]
    agg = results.aggregate(rows, tolerance_px=2.0)
    (g,) = agg["groups"]
    assert g["eps"] == [0.0, 0.1, 0.2]
    assert g["metrics"]["point_error_px"]["mean"] == pytest.approx([2.0, 4.0, 6.0])
    assert g["metrics"]["point_error_px"]["median"] == pytest.approx([2.0, 4.0, 6.0])
    assert g["metrics"]["point_error_px"]["p95"] == pytest.approx([2.9, 5.8, 6.9])
    assert g["within_tolerance"] == pytest.approx([0.5, 0.5, 0.0])
    # trapezoid over eps incl. 0: 0.1 * (2 + 4) / 2 + 0.1 * (4 + 6) / 2
    assert g["auc"]["point_error_px"] == pytest.approx(0.8)
    assert math.isnan(g["auc"]["seg_dice"])
    report = results.markdown_report(agg, ["# title"])
    assert "| linf | points | 2.00 (2.00 / 2.90) | 4.00 (4.00 / 5.80) | 6.00 (6.00 / 6.90) | 0.8000 |" in report
    assert "Fraction of samples with point error <= 2 px" in report
    assert "### Dice of the segmentation head" not in report  # a metric no row has is left out
    assert "### Mean point distance (mm)" in report  # spacing unknown: both tables
    # at 1 mm/px the mm table repeats the px table: left out, and said so
    at_1mm = results.markdown_report(agg, ["# title"], spacing_mm=1.0)
    assert "### Mean point distance (mm)" not in at_1mm and "distances in mm equal those in px" in at_1mm
    assert "### Mean point distance (mm)" in results.markdown_report(agg, ["# title"], spacing_mm=0.5)
    # every per_sample.csv column is explained, NaN-by-design attack_loss included
    for col in results.ROW_COLUMNS:
        assert f"`{col}" in report or f", {col}`" in report or f" {col}," in report, col
    assert "empty (nan) by design for clean rows and for OOD budget 0" in report
    nan_row = [row("clean", 0.0, float("nan"), "none", "none"), row("ind", 0.1, float("nan"))]
    nan_report = results.markdown_report(results.aggregate(nan_row, 2.0))
    assert "| linf | points | - | - | - |" in nan_report and "n/a" not in nan_report


def test_csv_roundtrip_and_atomic_writes(tmp_path):
    rows = [{"sample_id": 3, "subject": "s", "level": "L4/L5", "sweep": "ind", "eps": 0.07, "steps": 10,
             "point_error_px": 1.25, "seg_dice": float("nan")}]
    path = results.write_rows_csv(tmp_path / "a" / "rows.csv", rows)
    back = results.read_rows_csv(path)
    assert back[0]["sample_id"] == 3 and back[0]["eps"] == 0.07 and back[0]["point_error_px"] == 1.25
    assert math.isnan(back[0]["seg_dice"])
    results.atomic_write_json(tmp_path / "a" / "x.json", {"v": float("nan"), "w": [1.0, float("inf")]})
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"v": None, "w": [1.0, None]}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["rows.csv", "x.json"]  # no temp files left


# ------------------------------------------------------------------------------------------- engine


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_sweep_results_and_tensorboard(tmp_path, data_and_model):
    items, net = data_and_model
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = tmp_path / "run"
    res = run_robustness_sweep(net, items, small_config(), out, writer=out / "tb", progress=False)
    # the network is observed, never changed
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())

    # 1 clean + 2 heads x 2 eps + 2 starts x (eps 0 and 12)
    assert len(res["computed"]) == 9 and res["reused"] == []
    with open(out / "per_sample.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(results.ROW_COLUMNS) | {"within_tolerance"} == set(rows[0])
    assert len(rows) == 6 + 4 * 6 + 4 * 3
    assert {r["subject"] for r in rows} >= {"syn-000", "syn-001"} and {r["level"] for r in rows} >= {"L1", "L2"}
    err_mm = np.array([float(r["point_error_mm"]) for r in rows])
    err_px = np.array([float(r["point_error_px"]) for r in rows])
    assert np.allclose(err_mm, err_px * 0.5)  # spacing_mm default 0.5 for plain datasets

    agg = json.loads((out / "aggregate.json").read_text())
    groups = {(g["sweep"], g["attack"], g["head"]): g for g in agg["groups"]}
    pts = groups[("ind", "linf", "points")]
    assert pts["eps"] == [0.0, 0.05, 0.2]
    mean = pts["metrics"]["point_error_px"]["mean"]
    assert mean[2] > mean[0] * 1.2, f"PGD on the point head did not raise the error: {mean}"
    seg = groups[("ind", "linf", "seg")]["metrics"]["seg_dice"]["mean"]
    assert seg[2] < seg[0], f"PGD on the seg head did not lower its Dice: {seg}"
    for start in ("uniform_noise", "natural"):
        ood = groups[("ood", start, "both")]
        assert ood["eps"] == [0.0, 12.0]
        d = ood["metrics"]["point_error_px"]["mean"]
        assert d[1] < d[0], f"OOD attack from {start} did not approach the target: {d}"
    ood_rows = [r for r in rows if r["sweep"] == "ood" and float(r["eps"]) > 0]
    assert max(float(r["delta_l2"]) for r in ood_rows) <= 12.0 + 1e-3
    ind_rows = [r for r in rows if r["sweep"] == "ind"]
    assert all(float(r["delta_linf"]) <= float(r["eps"]) + 1e-5 for r in ind_rows)

    report = (out / "report.md").read_text()
    assert "## IND sweep" in report and "## OOD sweep" in report and "| linf | points |" in report
    assert "| uniform_noise | both |" in report
    assert "Fraction of samples with point error <= 1.5 px" in report
    for png in ("ind_linf.png", "ood.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((out / "config.json").read_text())
    assert info["environment"]["torch"] and info["environment"]["monai"] and "git_commit" in info["environment"]
    assert info["sweep"]["ind"]["eps"]["linf"] == [0.05, 0.2]

    acc = _events(out / "tb")
    scalars = acc.Tags()["scalars"]
    assert "ind/linf/points/point_error_px_mean" in scalars and "ood/natural/both/point_error_px_mean" in scalars
    steps = [e.step for e in acc.Scalars("ind/linf/points/point_error_px_mean")]
    assert steps == [0, 50, 200]  # milli-epsilon; 0 is the clean model
    values = [e.value for e in acc.Scalars("ind/linf/points/point_error_px_mean")]
    assert values == pytest.approx(mean, rel=1e-5)
    images = acc.Tags()["images"]
    for view in ("clean", "attacked", "contours"):
        assert f"ind/linf/points/eps0.200/s000/{view}" in images
        assert f"ind/linf/points/eps0.200/s001/{view}" in images
    assert "ind/linf/points/eps0.200/s002/clean" not in images  # tensorboard_images = 2
    pert = [t for t in images if t.startswith("ind/linf/seg/eps0.050/s000/perturbation_x")]
    assert len(pert) == 1 and re.fullmatch(r".*/perturbation_x\d+\.\d", pert[0])
    # the scale in the tag is 1 / max|delta| of that sample's perturbation (within its 0.05 budget)
    assert float(pert[0].rsplit("_x", 1)[1]) >= 1 / 0.05 - 0.1
    for view in ("start", "attacked", "target_image", "contours"):
        assert f"ood/uniform_noise/both/eps12.000/s000/{view}" in images
    img = acc.Images("ind/linf/points/eps0.200/s000/contours")[0]
    assert (img.width, img.height, img.step) == (SIZE, SIZE, 200)

    # results in forms TensorBoard's smoothing cannot bend: the curves as images, the tables as text
    for name in ("ind_linf", "ood"):
        (shot,) = acc.Images(f"summary/plots/{name}")
        assert shot.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and shot.width == 1500
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
    assert texts["summary/report/text_summary"] == report
    assert "smoothing" in texts["summary/how_to_read/text_summary"]
    # captions of the image panels: the colours and the perturbation scale
    assert "green = true contour" in texts["legend/ind/text_summary"]
    assert "1 / max|change|" in texts["legend/ind/text_summary"]
    assert "orange = the network's prediction on the attacked image" in texts["legend/ood/text_summary"]


def test_changed_test_data_recomputes_units(tmp_path, data_and_model):
    items, net = data_and_model
    cfg = small_config(ind={"heads": ["points"], "eps": {"linf": [0.1]}, "steps": 2}, ood={"enabled": False})
    cfg["tensorboard_images"] = 0
    out = tmp_path / "run"
    first = run_robustness_sweep(net, items, cfg, out, progress=False)
    assert first["computed"] == ["clean", "ind/linf/points/eps0.100"]
    assert run_robustness_sweep(net, items, cfg, out, progress=False)["reused"] == first["computed"]
    # one pixel of one test patch changed: every unit is stale
    changed = [dict(it) for it in items]
    changed[2]["image"] = changed[2]["image"].clone()
    changed[2]["image"][0, 5, 5] += 0.25
    again = run_robustness_sweep(net, changed, cfg, out, progress=False)
    assert again["computed"] == first["computed"] and again["reused"] == []
    # relabelled data (same pixels, other subject names) is other data too
    renamed = [{**it, "subject": "other-" + it["subject"]} for it in items]
    assert run_robustness_sweep(net, renamed, cfg, out, progress=False)["reused"] == []


def _unit_rows(out, unit: str) -> list[dict]:
    return json.loads((out / "units" / f"{unit}.json").read_text())["rows"]


def _same_rows(a: list[dict], b: list[dict], tol: float = 1e-4) -> bool:
    """Equal rows, numbers to `tol` (a BLAS kernel may round a sample differently at another batch size)."""
    def close(x, y):
        if isinstance(x, float) and isinstance(y, float):
            return (math.isnan(x) and math.isnan(y)) or abs(x - y) <= tol * max(1.0, abs(y))
        return x == y
    return len(a) == len(b) and all(r.keys() == q.keys() and all(close(r[k], q[k]) for k in r) for r, q in zip(a, b))


def test_chunked_attacks_match_the_whole_batch_and_auto_picks_a_timed_layout(tmp_path, data_and_model):
    items, net = data_and_model
    cfg = small_config(ind={"heads": ["points", "seg"], "eps": {"linf": [0.1]}, "steps": 3},
                       ood={"starts": ["uniform_noise"], "steps": 4})
    cfg["tensorboard_images"] = 0
    whole = run_robustness_sweep(net, items, cfg, tmp_path / "whole", progress=False)
    chunked = run_robustness_sweep(net, items, {**cfg, "chunk_size": 4}, tmp_path / "chunked", progress=False)
    assert chunked["computed"] == whole["computed"]
    for unit in whole["computed"]:  # 6 samples in chunks of 4 and 2: the same numbers
        assert _same_rows(_unit_rows(tmp_path / "chunked", unit), _unit_rows(tmp_path / "whole", unit)), unit
    # chunks are not part of a unit's identity: a resumed run (or a split evaluation's part) may chunk otherwise
    again = run_robustness_sweep(net, items, {**cfg, "chunk_size": 2}, tmp_path / "chunked", progress=False)
    assert again["reused"] == whole["computed"] and again["computed"] == []
    log = [json.loads(line) for line in (tmp_path / "chunked" / "sweep.log").read_text().splitlines()]
    start = [e for e in log if e["event"] == "start"][-1]
    assert start["chunk_size"] == 2 and start["channels_last"] is False and start["layout_autotuned"] is False

    auto = run_robustness_sweep(net, items, {**cfg, "chunk_size": "auto", "channels_last": False},
                                tmp_path / "auto", progress=False)
    layout = json.loads((tmp_path / "auto" / "config.json").read_text())["attack_layout"]
    timed = layout["autotune_seconds"]
    # batch 6: the whole batch and chunks of 4 (8 and 16 are not below 6), NCHW only, 2 timed rounds each
    assert sorted(timed) == ["NCHW, chunks of 4", "NCHW, whole batch"] and all(len(v) == 2 for v in timed.values())
    fastest = min(timed, key=lambda k: min(timed[k]))
    assert fastest == ("NCHW, whole batch" if layout["chunk_size"] is None else f"NCHW, chunks of {layout['chunk_size']}")
    for unit in auto["computed"]:
        assert _same_rows(_unit_rows(tmp_path / "auto", unit), _unit_rows(tmp_path / "whole", unit)), unit
    # resumed with "auto" again: the first run's choice is kept (not re-timed), so every unit is reused
    resumed = run_robustness_sweep(net, items, {**cfg, "chunk_size": "auto", "channels_last": False},
                                   tmp_path / "auto", progress=False)
    assert resumed["reused"] == auto["computed"] and resumed["computed"] == []
    again = json.loads((tmp_path / "auto" / "config.json").read_text())["attack_layout"]
    assert again["chunk_size"] == layout["chunk_size"] and again["autotune_seconds"] == {}


def test_channels_last_sweep_matches_nchw_to_rounding_and_is_cached_apart(tmp_path, data_and_model):
    items, net = data_and_model
    cfg = small_config(ind={"heads": ["points"], "eps": {"linf": [0.1]}, "steps": 3}, ood={"enabled": False})
    cfg["tensorboard_images"] = 0
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = tmp_path / "run"
    nchw = run_robustness_sweep(net, items, cfg, out, progress=False)
    nchw_rows = {unit: _unit_rows(out, unit) for unit in nchw["computed"]}
    cl = run_robustness_sweep(net, items, {**cfg, "channels_last": True}, out, progress=False)
    # other float rounding: no unit of the NCHW run is taken for the channels_last run
    assert cl["reused"] == [] and cl["computed"] == nchw["computed"] == ["clean", "ind/linf/points/eps0.100"]
    clean_cl = [r["point_error_px"] for r in _unit_rows(out, "clean")]
    assert clean_cl == pytest.approx([r["point_error_px"] for r in nchw_rows["clean"]], abs=1e-4)
    # the same attack in the other layout is as strong (its sign steps may differ where a gradient is ~0)
    adv = [np.mean([r["point_error_px"] for r in rows]) for rows in
           (_unit_rows(out, "ind/linf/points/eps0.100"), nchw_rows["ind/linf/points/eps0.100"])]
    assert adv[0] == pytest.approx(adv[1], rel=0.05) and adv[1] > np.mean(clean_cl) + 0.5
    # the attacked network itself is untouched: layout, values, mode
    assert all(p.is_contiguous() for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not net.training
    rerun = run_robustness_sweep(net, items, {**cfg, "channels_last": True}, out, progress=False)
    assert rerun["reused"] == cl["computed"]


class _Interrupt(Exception):
    pass


def test_interrupted_sweep_resumes_without_recomputing(tmp_path, data_and_model, monkeypatch):
    items, net = data_and_model
    cfg = small_config(ind={"heads": ["points"], "eps": {"linf": [0.03, 0.1, 0.2]}, "steps": 2},
                       ood={"starts": ["box_noise"], "steps": 3})
    cfg["tensorboard_images"] = 0
    out = tmp_path / "run"
    calls = {"n": 0}
    real_forward = PGD.forward

    def dying_forward(self, images, targets):
        calls["n"] += 1
        if calls["n"] == 3:  # the third IND unit dies mid-sweep, like a killed job
            raise _Interrupt()
        return real_forward(self, images, targets)

    monkeypatch.setattr(PGD, "forward", dying_forward)
    with pytest.raises(_Interrupt):
        run_robustness_sweep(net, items, cfg, out, progress=False)
    monkeypatch.setattr(PGD, "forward", real_forward)
    done = sorted(p.relative_to(out / "units").as_posix() for p in (out / "units").rglob("*.json"))
    assert done == ["clean.json", "ind/linf/points/eps0.030.json", "ind/linf/points/eps0.100.json"]
    assert not list(out.rglob("*.tmp")) and not (out / "per_sample.csv").exists()
    mtimes = {p: (out / "units" / p).stat().st_mtime_ns for p in done}

    res = run_robustness_sweep(net, items, cfg, out, progress=False)
    assert res["reused"] == ["clean", "ind/linf/points/eps0.030", "ind/linf/points/eps0.100"]
    assert res["computed"] == ["ind/linf/points/eps0.200", "ood/box_noise/both/eps0.000", "ood/box_noise/both/eps12.000"]
    assert all((out / "units" / p).stat().st_mtime_ns == t for p, t in mtimes.items())
    log = [json.loads(line) for line in (out / "sweep.log").read_text().splitlines()]
    assert [e["unit"] for e in log if e["event"] == "reused"] == res["reused"]

    # a deleted unit file is recomputed, with the same numbers (its seed depends on its name only)
    first = json.loads((out / "units/ind/linf/points/eps0.100.json").read_text())["rows"]
    (out / "units/ind/linf/points/eps0.100.json").unlink()
    res = run_robustness_sweep(net, items, cfg, out, progress=False)
    assert res["computed"] == ["ind/linf/points/eps0.100"]
    again = json.loads((out / "units/ind/linf/points/eps0.100.json").read_text())["rows"]
    assert [r["point_error_px"] for r in again] == pytest.approx([r["point_error_px"] for r in first])

    # changed settings or weights invalidate the cached units they affect
    res = run_robustness_sweep(net, items, {**cfg, "ind": {**cfg["ind"], "steps": 3}}, out, progress=False)
    assert sorted(res["computed"]) == ["ind/linf/points/eps0.030", "ind/linf/points/eps0.100", "ind/linf/points/eps0.200"]
    other = tiny_net()
    res = run_robustness_sweep(other, items, cfg, out, progress=False)
    assert res["reused"] == []


def test_heads_the_network_lacks_and_empty_data_are_refused(tmp_path, data_and_model):
    items, _ = data_and_model
    points_only = tiny_net(seg_head=False)
    with pytest.raises(ValueError, match=r"ind#heads: head 'seg' needs network output.*\['seg'\]"):
        run_robustness_sweep(points_only, items, small_config(), tmp_path / "o", progress=False)
    with pytest.raises(DataError, match="holds no disk patches"):
        run_robustness_sweep(tiny_net(), [], small_config(), tmp_path / "o2", progress=False)
    assert not (tmp_path / "o" / "units").exists()


def test_unit_fingerprint_covers_data_model_and_every_attack_parameter():
    from diskrobust.robustness.units import plan_units, unit_fingerprint

    base = {"model": "m0", "data": "d0", "seed": 0, "num_samples": 6, "batch_size": 6}

    def prints(cfg_dict, b=base):
        cfg = sweep_config.SweepConfig.from_dict(cfg_dict)
        return {u.key: unit_fingerprint(b, u) for u in plan_units(cfg, (SIZE, SIZE)) if u.steps > 0}

    ref = prints(small_config())
    assert ref and all(k.startswith(("ind/", "ood/")) for k in ref)
    for section, name, value in [("ind", "steps", 5), ("ind", "step_ratio", 0.3), ("ind", "update", "sign"),
                                 ("ind", "random_start", False), ("ind", "restarts", 2), ("ind", "point_loss", "mae"),
                                 ("ood", "steps", 7), ("ood", "lr", 0.02), ("ood", "optimizer", "sgd"),
                                 ("ood", "random_start", False), ("ood", "num_samples", 2)]:
        changed = prints(small_config(**{section: {name: value}}))
        stale = [k for k in ref if k.startswith(section) and changed[k] == ref[k]]
        assert not stale, f"{section}#{name} does not reach the fingerprint of {stale}"
        assert all(changed[k] == ref[k] for k in ref if not k.startswith(section))
    for key in ("model", "data", "seed", "batch_size"):
        other = prints(small_config(), {**base, key: "x"})
        assert all(other[k] != ref[k] for k in ref), key


def test_autoattack_kind_rows_member_and_masking_audit(tmp_path, data_and_model):
    """The ensemble as an IND kind: its rows name the member that found each worst case; every report
    starts with the masking audit (computed from the rows, gaps "skipped" with a reason) and aggregate.json has it."""
    items, net = data_and_model
    out = tmp_path / "aa"
    cfg = small_config(num_samples=4, batch_size=4,
                       ind={"attacks": ["linf", "autoattack_linf"], "heads": ["points", "both"], "steps": 3,
                            "queries": 10, "eps": {"linf": [0.05, 0.2]}},
                       ood={"enabled": False})
    res = run_robustness_sweep(net, items, cfg, out, progress=False)
    # clean + linf (2 heads x 2 eps) + autoattack_linf (points only: "both" is one of its members) x 2 eps
    assert len(res["computed"]) == 1 + 4 + 2
    with open(out / "per_sample.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    aa = [r for r in rows if r["attack"] == "autoattack_linf"]
    assert len(aa) == 2 * 4 and {r["head"] for r in aa} == {"points"}
    members = {"clean", "apgd-points-sse", "apgd-points-mae", "apgd-both-sse", "square"}
    assert all(r["member"] in members for r in aa) and any(r["member"] != "clean" for r in aa), [r["member"] for r in aa]
    assert all(r["member"] == "" for r in rows if r["attack"] != "autoattack_linf")
    assert all(float(r["delta_linf"]) <= float(r["eps"]) + 1e-6 for r in aa)
    # the ensemble is at least as strong as the PGD it contains members like, per sample at each eps
    pgd = {(r["sample_id"], r["eps"]): float(r["point_error_px"]) for r in rows
           if r["attack"] == "linf" and r["head"] == "points"}
    assert np.mean([float(r["point_error_px"]) for r in aa]) >= 0.9 * np.mean(list(pgd.values()))

    report = (out / "report.md").read_text()
    first_section = re.search(r"^## .*$", report, re.M).group(0)
    assert first_section == "## Gradient-masking audit", report[:400]
    assert report.index("Gradient-masking audit") < report.index("Settings as run")
    assert "| monotone_in_eps |" in report and "member" in report.split("Columns of `per_sample.csv`")[1]

    audit = json.loads((out / "aggregate.json").read_text())["masking_audit"]
    assert audit["white_box"]["attack"] == "autoattack_linf" and audit["status"] in ("pass", "warn", "fail", "skipped")
    by_name = {i["name"]: i for i in audit["items"]}
    assert by_name["monotone_in_eps"]["status"] != "skipped"
    assert sorted(by_name["monotone_in_eps"]["numbers"]["per_step"]) == ["0->0.05", "0.05->0.2"]
    for name in ("white_vs_query", "white_vs_noise", "more_steps", "more_restarts", "transfer"):
        assert by_name[name]["status"] == "skipped" and by_name[name]["message"].startswith("skipped: "), by_name[name]


def test_masking_audit_from_rows_flags_a_falling_curve():
    """The audit of a sweep's rows fails when the white-box error falls as eps grows (gradient masking)."""
    from diskrobust.robustness.sweep_audit import sweep_audit

    def row(sweep_, attack, eps, sid, err):
        return {"sweep": sweep_, "attack": attack, "head": "points" if sweep_ == "ind" else "none", "eps": eps,
                "sample_id": sid, "point_error_px": err, "seg_dice": float("nan")}

    rows = [row("clean", "none", 0.0, s, 1.0 + 0.01 * s) for s in range(5)]
    rows += [row("ind", "linf", 0.1, s, 3.0 + 0.01 * s) for s in range(5)]
    rows += [row("ind", "linf", 0.2, s, 1.5 + 0.01 * s) for s in range(5)]
    items, source = sweep_audit(rows)
    assert source["white_box"]["attack"] == "linf"
    assert {i.name: i.status for i in items}["monotone_in_eps"] == "fail"
    ok = [r if r["eps"] != 0.2 else {**r, "point_error_px": r["point_error_px"] + 3} for r in rows]
    assert {i.name: i.status for i in sweep_audit(ok)[0]}["monotone_in_eps"] == "pass"


class QuantisedInput(torch.nn.Module):
    """The network behind a staircase of its input (round(4 x) / 4): a gradient-masking "defence". The
    rounding's gradient is zero everywhere, so PGD sees none, yet the output moves when a pixel crosses a step."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


def audit_config(**audit) -> dict:
    return small_config(num_samples=8, batch_size=8,
                        ind={"heads": ["points"], "steps": 10, "eps": {"linf": [0.03, 0.1]}},
                        ood={"enabled": False}, audit={"enabled": True, "num_samples": 6, "queries": 300, **audit})


def _audit_items(out) -> dict:
    return {i["name"]: i for i in json.loads((out / "aggregate.json").read_text())["masking_audit"]["items"]}


def test_sweep_audit_passes_the_plain_network_and_fails_it_behind_a_quantised_input(tmp_path, data_and_model):
    """The audit computed by the sweep itself: no item fails on the plain network; behind a non-differentiable
    input quantisation the independent query attack beats the (blind) gradient attack and the audit fails."""
    items, net = data_and_model
    plain = run_robustness_sweep(net, items, audit_config(), tmp_path / "plain", progress=False)
    status = {name: i["status"] for name, i in _audit_items(tmp_path / "plain").items()}
    assert "fail" not in status.values() and plain["masking_audit"]["status"] != "fail", status
    assert [name for name, s in status.items() if s == "skipped"] == ["transfer"], status
    assert _audit_items(tmp_path / "plain")["transfer"]["message"] == \
        "skipped: no surrogate checkpoint given (audit#surrogate_ckpt)"
    # every audit item reads the same 6 samples: the audit's subset of the sweep's 8
    wq = _audit_items(tmp_path / "plain")["white_vs_query"]["numbers"]["per_eps"]
    assert sorted(wq) == ["0.03", "0.1"]  # JSON keys
    # Square ran on its own from the clean image: weaker than PGD here, which a Square started from PGD's
    # result (it only accepts improvements) could never be
    assert all(v["margin"] > 0 for v in wq.values()), wq

    masked = run_robustness_sweep(QuantisedInput(net), items, audit_config(), tmp_path / "masked", progress=False)
    by_name = _audit_items(tmp_path / "masked")
    assert masked["masking_audit"]["status"] == "fail"
    assert by_name["white_vs_query"]["status"] == "fail", by_name["white_vs_query"]
    assert by_name["white_vs_noise"]["status"] != "pass", by_name["white_vs_noise"]
    per_eps = by_name["white_vs_query"]["numbers"]["per_eps"]["0.1"]
    assert per_eps["query"] > per_eps["white_box"] + per_eps["noise"]

    out = tmp_path / "masked"
    report = (out / "report.md").read_text()
    assert re.search(r"^## .*$", report, re.M).group(0) == "## Gradient-masking audit"
    assert "**Gradient-masking audit: FAIL**" in report and "| white_vs_query | fail |" in report
    assert "audit: `linf` on head points, first 6 test patches" in report
    with open(out / "audit.csv", newline="") as f:
        audit_rows = list(csv.DictReader(f))
    roles = {(r["audit_role"], r["attack"], float(r["eps"])) for r in audit_rows}
    assert roles == {("noise", "uniform_linf", 0.03), ("noise", "uniform_linf", 0.1), ("query", "square", 0.03),
                     ("query", "square", 0.1), ("more_steps", "linf", 0.03), ("more_steps", "linf", 0.1),
                     ("more_restarts", "linf", 0.03), ("more_restarts", "linf", 0.1), ("unbounded", "linf", 1.0),
                     ("trivial", "constant_0", 1.0), ("trivial", "constant_0.5", 1.0), ("trivial", "constant_1", 1.0),
                     ("trivial", "uniform_0_1", 1.0)}
    assert all(r["sweep"] == "audit" and int(r["sample_id"]) < 6 for r in audit_rows) and len(audit_rows) == 13 * 6
    assert {int(r["steps"]) for r in audit_rows if r["audit_role"] == "more_steps"} == {2 * 10}  # steps_factor 2
    assert all(float(r["delta_linf"]) <= float(r["eps"]) + 1e-6 for r in audit_rows)
    # the audit's rows never mix with the sweep's tables and aggregates
    assert {r["sweep"] for r in csv.DictReader(open(out / "per_sample.csv"))} == {"clean", "ind"}
    assert {g["sweep"] for g in json.loads((out / "aggregate.json").read_text())["groups"]} == {"ind"}
    log = [json.loads(line) for line in (out / "sweep.log").read_text().splitlines()]
    assert sum(e["event"] == "computed" and e["unit"].startswith("audit/") for e in log) == 2 * 4 + 2
    assert log[-1]["audit"] == "fail"


def test_sweep_audit_transfer_from_a_surrogate_and_a_surrogate_that_does_not_fit(tmp_path, data_and_model):
    from diskrobust.checkpoints import describe_model, save_model

    items, net = data_and_model
    torch.manual_seed(1)
    weak = tiny_net()  # the surrogate: the same architecture, briefly trained from another seed
    weak.set_mean_shape(net.mean_shape.clone())
    train = synthetic_disks(16, seed=1)
    x = torch.stack([it["image"] for it in train])
    target = {"points": torch.stack([it["points"] for it in train]), "mask": torch.stack([it["mask"] for it in train])}
    opt = torch.optim.Adam(weak.parameters(), lr=1e-2)
    for _ in range(20):
        loss = DiskShapeLoss()(weak(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(tmp_path / "surrogate.pt", weak, describe_model(weak, patch_size=SIZE, patch_spacing_mm=0.5))
    cfg = audit_config(surrogate_ckpt=str(tmp_path / "surrogate.pt"), unbounded=False)
    res = run_robustness_sweep(net, items, cfg, tmp_path / "t", progress=False)
    by_name = _audit_items(tmp_path / "t")
    assert by_name["transfer"]["status"] == "pass", by_name["transfer"]
    numbers = by_name["transfer"]["numbers"]["per_eps"]["0.1"]
    assert numbers["transfer"] < numbers["white_box"]
    assert by_name["unbounded_budget"]["message"] == "skipped: audit#unbounded is false"
    assert res["masking_audit"]["status"] != "fail"
    rows = list(csv.DictReader(open(tmp_path / "t" / "audit.csv")))
    assert {r["attack"] for r in rows if r["audit_role"] == "transfer"} == {"linf"}
    assert all(r["attack_loss"] == "nan" for r in rows if r["audit_role"] == "transfer")  # the surrogate's loss

    wide = DiskShapeNet(spatial_size=SIZE, width=8, blocks=(1, 1), norm_groups=2)
    save_model(tmp_path / "wide.pt", wide, describe_model(wide, patch_size=SIZE, patch_spacing_mm=0.5))
    for path, expected in ((tmp_path / "wide.pt", "audit#surrogate_ckpt: the weights do not fit the network"),
                           (tmp_path / "missing.pt", "checkpoint file not found")):
        with pytest.raises(DataError) as info:
            run_robustness_sweep(net, items, audit_config(surrogate_ckpt=str(path)), tmp_path / "x", progress=False)
        assert str(path) in str(info.value) and expected in str(info.value), str(info.value)
    save_model(tmp_path / "same.pt", net, describe_model(net, patch_size=SIZE, patch_spacing_mm=0.5))
    with pytest.raises(DataError, match="holds the weights of the evaluated network itself"):
        run_robustness_sweep(net, items, audit_config(surrogate_ckpt=str(tmp_path / "same.pt")), tmp_path / "y",
                             progress=False)


def test_audit_settings_are_checked(repo_root):
    for audit, expected in [({"num_sample": 4}, "unknown setting(s) 'audit#num_sample' (closest: 'audit#num_samples')"),
                            ({"queries": "many"}, "audit#queries: expected an integer"),
                            ({"steps_factor": 1}, "audit#steps_factor: must satisfy 2 <= audit#steps_factor"),
                            ({"enabled": "maybe"}, "audit#enabled: expected true or false"),
                            ({"surrogate_ckpt": 5}, "audit#surrogate_ckpt: must be a model file path")]:
        with pytest.raises(ConfigError) as info:
            sweep_config.SweepConfig.from_dict({"audit": audit})
        assert expected in str(info.value), str(info.value)
    assert sweep_config.SweepConfig.from_dict({"audit": {"surrogate_ckpt": ""}}).audit.surrogate_ckpt is None
    # the bundle's files and `#` overrides, as on the command line: a misspelt id or a word for a number is refused
    evaluate = repo_root / "bundles" / "lumbar_disk_attack" / "configs" / "evaluate.json"
    cfg = load_sweep_config(evaluate)
    assert cfg.audit.enabled and cfg.audit.num_samples == 8 and cfg.audit.surrogate_ckpt is None
    for override, expected in [({"audit#num_sample": 4},
                                "unknown setting 'audit#num_sample' (closest: 'audit#num_samples'"),
                               ({"audit#queries": "many"}, "'audit#queries' expects a number, got 'many'"),
                               ({"audit#unbounded": "maybe"}, "'audit#unbounded' expects true or false")]:
        with pytest.raises(ConfigError) as info:
            load_sweep_config(evaluate, overrides=override)
        assert expected in str(info.value), str(info.value)
    # a study's nested sweep_overrides reach the audit's ids one by one (a whole dict would drop the defaults)
    from diskrobust.robustness.workflow import attack_bundle_args

    files, overrides = attack_bundle_args(evaluate.parents[1], {"sweep_overrides": {"audit": {"queries": 50}}})
    assert overrides == {"audit#queries": 50}
    assert load_sweep_config(*files, overrides=overrides).audit.queries == 50


def test_bf16_pgd_units_are_keyed_apart_and_the_ensemble_is_refused():
    from diskrobust.robustness.units import plan_units

    def ind_params(**ind):
        cfg = sweep_config.SweepConfig.from_dict(small_config(ind=ind))
        return {u.key: u.params for u in plan_units(cfg, (SIZE, SIZE)) if u.sweep == "ind"}

    fp32, bf16 = ind_params(), ind_params(precision="bf16")
    assert fp32.keys() == bf16.keys() and all("precision" not in p for p in fp32.values())
    assert all(p["precision"] == "bf16" for p in bf16.values())
    with pytest.raises(ConfigError, match=r"ind#precision: 'bf16' is implemented for the PGD attacks .* "
                                          r"\['autoattack_linf'\] would run in fp32"):
        sweep_config.SweepConfig.from_dict(small_config(ind={"precision": "bf16", "attacks": ["linf", "autoattack_linf"]}))
    with pytest.raises(ConfigError, match=r"ind#precision"):
        sweep_config.SweepConfig.from_dict(small_config(ind={"precision": "fp16"}))
