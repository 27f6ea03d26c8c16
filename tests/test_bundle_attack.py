"""The robustness evaluation bundle bundles/lumbar_disk_attack end to end.

A 3-subject phantom and a DiskShapeNet (width 8, 64 px patches at 1 mm/px) trained for a few dozen
steps stand in for the training bundle's output (a model file with its description); the bundle runs
with tiny `#` overrides through `python -m monai.bundle run`, as a user runs it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diskrobust.data.errors import ConfigError, DataError
from diskrobust.networks import DiskShapeNet

pytestmark = pytest.mark.slow

PATCH = 64
SPACING = 1.0
WIDTH = 8
TINY = {"num_samples": 3, "batch_size": 3, "tensorboard_images": 1,
        "ind#steps": 2, "ind#eps#linf": [0.05, 0.2], "ind#heads": ["points", "both"],
        "ood#steps": 3, "ood#starts": ["box_noise", "natural"], "ood#num_samples": 2}


@pytest.fixture(scope="module")
def bundle(repo_root) -> Path:
    return repo_root / "bundles" / "lumbar_disk_attack"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from diskrobust.data.phantom import ensure_phantom

    folder = tmp_path_factory.mktemp("attack_bundle") / "phantom"
    ensure_phantom(folder, subjects=3, seed=0, progress=False)
    return folder


@pytest.fixture(scope="module")
def checkpoint(phantom, tmp_path_factory) -> Path:
    """(model file with its description, as the training bundle writes models/model.pt; the same weights as a
    plain state_dict) of a briefly trained DiskShapeNet."""
    from diskrobust.datasets import DiskPatchDataset
    from diskrobust.losses import DiskShapeLoss

    ds = DiskPatchDataset(phantom / "datalist.json", "training", patch_size=PATCH, patch_spacing_mm=SPACING)
    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ("image", "points", "mask")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = DiskShapeNet(spatial_size=PATCH, width=WIDTH)
        net.set_mean_shape(batch["points"].mean(0))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        loss_fn = DiskShapeLoss()
        for _ in range(30):
            loss = loss_fn(net(batch["image"]), {"points": batch["points"], "mask": batch["mask"]})
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    from diskrobust.checkpoints import describe_model, save_model

    folder = tmp_path_factory.mktemp("attack_ckpt")
    save_model(folder / "model.pt", net, describe_model(net, patch_size=PATCH, patch_spacing_mm=SPACING))
    torch.save(net.state_dict(), folder / "plain_state_dict.pt")
    return folder / "model.pt"


def _cli_args(bundle, checkpoint, phantom, out, sweep=TINY, run_id=None) -> list[str]:
    args = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else [])
    args += ["--config_file", str(bundle / "configs" / "evaluate.json"), "--ckpt_path", str(checkpoint),
             "--dataset_dir", str(phantom), "--phantom_subjects", "3", "--output_dir", str(out),
             "--device", "cpu", "--progress", "false"]
    for key, value in sweep.items():  # both spellings fire accepts
        args += [f"--{key}={value!r}"] if key.startswith("ood") else [f"--{key}", repr(value)]
    return args


def _run(args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bundle run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_metadata_is_valid(bundle, repo_root, tmp_path):
    from monai.bundle import verify_metadata

    meta_schema = repo_root / "bundles" / "meta_schema_20240725.json"  # vendored: no download, no ../shared
    # raises on a schema violation (the same check as `python -m monai.bundle verify_metadata`)
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(meta_schema))
    broken = json.loads((bundle / "configs" / "metadata.json").read_text())
    del broken["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="network_data_format"):  # the check can fail
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(meta_schema))
    for name in ("LICENSE", "docs/README.md", "configs/logging.conf", "configs/profiles/cpu-quick.json",
                 "configs/profiles/paper.json"):
        assert (bundle / name).is_file(), name
    assert "Apache License" in (bundle / "LICENSE").read_text() and "Version 2.0" in (bundle / "LICENSE").read_text()


def test_bundle_run_writes_results_and_resumes(bundle, checkpoint, phantom, tmp_path, repo_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "eval"
    _run(_cli_args(bundle, checkpoint, phantom, out), cwd=repo_root)

    with open(out / "per_sample.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for col in ("sample_id", "subject", "level", "attack", "head", "eps", "point_error_px", "point_error_mm",
                "polygon_dice", "seg_dice", "within_tolerance"):
        assert col in rows[0], col
    # clean 3 + IND 2 heads x 2 eps x 3 + OOD 2 starts x (eps 0, 40) x 2
    assert len(rows) == 3 + 12 + 8
    assert {r["subject"] for r in rows} <= {e["subject"] for e in json.loads((phantom / "datalist.json").read_text())["test"]}
    assert {r["sweep"] for r in rows} == {"clean", "ind", "ood"}  # the audit's rows are in audit.csv
    # cpu-quick's OOD budget is RMS 0.05 per pixel: an L2 radius of 0.05 * 64 = 3.2 on 64 x 64 patches
    assert sorted({round(float(r["eps"]), 6) for r in rows if r["sweep"] == "ood"}) == [0.0, 3.2]
    assert {float(r["eps_rms"]) for r in rows if r["sweep"] == "ood"} == {0.0, 0.05}
    err_px = [float(r["point_error_px"]) for r in rows]
    assert all(abs(float(r["point_error_mm"]) - e * SPACING) < 1e-4 for r, e in zip(rows, err_px))

    agg = json.loads((out / "aggregate.json").read_text())
    assert agg["profile"] == "cpu-quick"
    heads = {(g["sweep"], g["attack"], g["head"]) for g in agg["groups"]}
    assert heads == {("ind", "linf", "points"), ("ind", "linf", "both"), ("ood", "box_noise", "both"),
                     ("ood", "natural", "both")}
    report = (out / "report.md").read_text()
    assert "# Robustness evaluation (profile `cpu-quick`)" in report and str(checkpoint) in report
    # the header says what ran (2 PGD steps here), not what the profile's prose says
    assert "IND: PGD, 2 steps" in report and "OOD: starts box_noise, natural; budget per pixel (RMS) 0.05 (L2 3.2)" in report
    assert "### Mean point distance (mm)" not in report  # 1 mm/px: the px tables say it all
    assert "| eps 0 | eps 0.05 | eps 0.2 | AUC |" in report
    # evaluate.json turns the gradient-masking audit on: it opens the report, every item fed by the run's own
    # rows except transfer (no surrogate given); its rows are in audit.csv, never in per_sample.csv
    assert report.split("\n")[2:4] == ["## Gradient-masking audit", ""], report[:300]
    audit = {i["name"]: i for i in agg["masking_audit"]["items"]}
    assert [n for n, i in audit.items() if i["status"] == "skipped"] == ["transfer"], agg["masking_audit"]
    assert audit["transfer"]["message"] == "skipped: no surrogate checkpoint given (audit#surrogate_ckpt)"
    for name in audit:
        assert f"| {name} | {audit[name]['status']} |" in report.split("Settings as run")[0]
    with open(out / "audit.csv", newline="") as f:
        audit_roles = {r["audit_role"] for r in csv.DictReader(f)}
    assert audit_roles == {"noise", "query", "more_steps", "more_restarts", "unbounded", "trivial"}
    assert (out / "plots" / "ind_linf.png").is_file() and (out / "plots" / "ood.png").is_file()
    info = json.loads((out / "config.json").read_text())
    assert info["checkpoint"] == str(checkpoint) and info["network_params"]["width"] == WIDTH
    assert info["patch"] == {"size": PATCH, "spacing_mm": SPACING}  # from the model file, not the bundle defaults
    assert info["sweep"]["ind"]["steps"] == 2 and info["sweep"]["ood"]["steps"] == 3
    assert info["environment"]["diskrobust"] and info["environment"]["torch"]

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("ind/linf/both/point_error_px_mean")] == [0, 50, 200]
    images = acc.Tags()["images"]
    assert any(t.startswith("ind/linf/points/eps0.050/s000/perturbation_x") for t in images)
    assert "ood/natural/both/eps3.200/s000/contours" in images
    assert "summary/plots/ind_linf" in images and "legend/ood/text_summary" in acc.Tags()["tensors"]
    shot = acc.Images("ood/natural/both/eps3.200/s000/attacked")[0]
    assert (shot.width, shot.height) == (PATCH, PATCH)

    # the run id "evaluating" on the same output folder reuses every finished unit
    units = sorted((out / "units").rglob("*.json"))
    mtimes = [p.stat().st_mtime_ns for p in units]
    _run(_cli_args(bundle, checkpoint, phantom, out, run_id="evaluating"), cwd=repo_root)
    assert [p.stat().st_mtime_ns for p in units] == mtimes
    log = [json.loads(line) for line in (out / "sweep.log").read_text().splitlines()]
    last_start = max(i for i, e in enumerate(log) if e["event"] == "start")
    second = log[last_start:]
    assert sum(e["event"] == "reused" for e in second) == len(units)
    assert not any(e["event"] == "computed" for e in second)


def _workflow(bundle, **overrides):
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(config_file=str(bundle / "configs" / "evaluate.json"), workflow_type=None,
                          logging_file=False, **overrides)


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _init_error(bundle, **overrides) -> BaseException:
    wf = _workflow(bundle, **overrides)
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()  # not reached when initialize refuses
    return _root_cause(info.value)


def _common(checkpoint, phantom, out):
    return {"ckpt_path": str(checkpoint), "dataset_dir": str(phantom), "output_dir": str(out), "device": "cpu",
            "progress": False, "phantom_subjects": 3, **TINY}


def test_bad_inputs_fail_before_any_work(bundle, checkpoint, phantom, tmp_path):
    out = tmp_path / "eval"

    # the demo's slip: a 64 px / 1 mm model evaluated at other patches is refused, naming both values
    err = _init_error(bundle, **{**_common(checkpoint, phantom, out), "patch_size": 128, "patch_spacing_mm": 0.5})
    assert isinstance(err, DataError) and str(checkpoint) in str(err)
    assert "patch_size 64, but patch_size 128 was asked for" in str(err)
    assert "patch_spacing_mm 1.0, but patch_spacing_mm 0.5 was asked for" in str(err)
    err = _init_error(bundle, **{**_common(checkpoint, phantom, out), "width": 16})
    assert "width 8, but width 16 was asked for" in str(err)
    # a plain state_dict has no description: only --width is not enough, the geometry must be stated
    plain = checkpoint.parent / "plain_state_dict.pt"
    err = _init_error(bundle, **{**_common(plain, phantom, out), "width": WIDTH})
    assert isinstance(err, DataError) and "--patch_size, --patch_spacing_mm" in str(err)

    empty = tmp_path / "empty_datalist.json"
    empty.write_text(json.dumps({"training": [], "validation": [], "test": []}))
    err = _init_error(bundle, **{**_common(checkpoint, phantom, out), "datalist": str(empty)})
    assert isinstance(err, DataError) and str(empty) in str(err) and "empty" in str(err)

    cases = [({"ind#eps#linf": [0.05, -0.1]}, "ind#eps#linf: must satisfy 0 < ind#eps#linf <= 1"),
             ({"ind#eps#linf": [0.05, 5.0]}, "ind#eps#linf: must satisfy 0 < ind#eps#linf <= 1, got 5.0"),
             ({"ind#steps": 0}, "ind#steps: must satisfy 1 <= ind#steps"),
             ({"ind#eps#linf": [0.1, 0.05]}, "sorted ascending"),
             ({"ind#attacks": ["linf", "deepfool"]}, "unknown attack name(s) ['deepfool']"),
             ({"ood#starts": ["xray"]}, "unknown OOD start image name(s) ['xray']"),
             ({"ood#enabled": "maybe"}, "ood#enabled: expected true or false")]
    for override, expected in cases:
        err = _init_error(bundle, **{**_common(checkpoint, phantom, out), **override})
        assert isinstance(err, ConfigError) and expected in str(err), str(err)
    assert not out.exists()  # nothing was computed or written


def test_false_means_false_and_the_lock_refuses_a_second_run(bundle, checkpoint, phantom, tmp_path):
    from diskrobust.run_lock import RunLock, RunLockedError

    out = tmp_path / "eval"
    wf = _workflow(bundle, **{**_common(checkpoint, phantom, out), "ood#enabled": "false", "ind#enabled": "false",
                              "tensorboard": "false"})
    wf.initialize()
    evaluation = wf.parser.get_parsed_content("evaluation")
    assert evaluation.config.ood.enabled is False and evaluation.tensorboard is False
    with pytest.raises(RunLockedError, match="in use by another run"):
        RunLock(out).acquire()  # held by the evaluation until finalize
    second = _workflow(bundle, **_common(checkpoint, phantom, out))
    with pytest.raises(Exception) as info:
        second.initialize()
    from diskrobust.bundle_checks import project_error

    err = project_error(info.value)  # the DataError the error printer shows last
    assert isinstance(err, DataError) and "in use by another run (pid" in str(err)
    wf.run()
    wf.finalize()
    assert {r["sweep"] for r in csv.DictReader(open(out / "per_sample.csv"))} == {"clean"}
    assert not (out / "tensorboard").exists()
    RunLock(out).acquire().release()


def _bundle_failure(args, cwd) -> tuple[int, list[str]]:
    """Run a bundle command expected to fail; its return code and non-empty output lines (stdout + stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    return proc.returncode, [line for line in proc.stdout.splitlines() if line.strip()]


def test_misspelt_override_is_refused_before_any_work(bundle, repo_root, tmp_path):
    out = tmp_path / "eval"
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "evaluate.json"),
            "--output_dir", str(out), "--profle", "paper", "--ind#stesp=8", "--tensorboard", "maybe", "--sweep_overrides", "{}"]
    args += ["--audit#num_sample", "4", "--audit#queries", "many"]
    rc, lines = _bundle_failure(args, repo_root)
    assert rc != 0
    last = "\n".join(lines[-3:])
    assert "unknown setting 'profle' (closest: 'profile'" in last, "\n".join(lines[-30:])
    assert "unknown setting 'ind#stesp' (closest: 'ind#steps'" in last
    assert "'sweep_overrides' is no longer a setting: give each setting as an id" in last
    assert "'tensorboard' expects true or false, got 'maybe'" in last
    assert "unknown setting 'audit#num_sample' (closest: 'audit#num_samples'" in last
    assert "'audit#queries' expects a number, got 'many'" in last
    assert any(line.startswith("Traceback") for line in lines)  # the details stay available above it
    assert not out.exists()  # refused before any work: no phantom, no output folder


def test_project_error_is_among_the_last_lines(bundle, repo_root, tmp_path):
    missing = tmp_path / "no_such_model.pt"
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "evaluate.json"),
            "--ckpt_path", str(missing), "--output_dir", str(tmp_path / "eval"), "--device", "cpu"]
    rc, lines = _bundle_failure(args, repo_root)
    assert rc != 0
    assert f"{missing}: checkpoint file not found" in "\n".join(lines[-3:]), "\n".join(lines[-30:])
    assert any("Failed to evaluate" in line for line in lines[:-3])  # MONAI's wrapping is still printed, above


def test_bundle_audit_with_a_surrogate(bundle, checkpoint, phantom, tmp_path):
    """audit#surrogate_ckpt: a model file of the same network feeds the transfer item (then no item is skipped);
    one of another architecture is refused before any work, naming the file."""
    from diskrobust.checkpoints import build_model_from_checkpoint, describe_model, save_model

    net, _ = build_model_from_checkpoint(checkpoint)
    with torch.no_grad():  # a weaker relative of the evaluated network: its weights disturbed
        gen = torch.Generator().manual_seed(0)
        for p in net.parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    save_model(tmp_path / "surrogate.pt", net, describe_model(net, patch_size=PATCH, patch_spacing_mm=SPACING))
    wide = DiskShapeNet(spatial_size=PATCH, width=2 * WIDTH)
    save_model(tmp_path / "wide.pt", wide, describe_model(wide, patch_size=PATCH, patch_spacing_mm=SPACING))
    cheap = {**_common(checkpoint, phantom, tmp_path / "eval"), "ind#heads": ["points"], "ood#enabled": False,
             "tensorboard": False, "audit#queries": 50}

    err = _init_error(bundle, **{**cheap, "audit#surrogate_ckpt": str(tmp_path / "wide.pt")})
    assert isinstance(err, DataError) and str(tmp_path / "wide.pt") in str(err), str(err)
    assert "audit#surrogate_ckpt: the weights do not fit the network" in str(err)
    assert not (tmp_path / "eval").exists()

    wf = _workflow(bundle, **{**cheap, "audit#surrogate_ckpt": str(tmp_path / "surrogate.pt")})
    wf.initialize()
    wf.run()
    wf.finalize()
    agg = json.loads((tmp_path / "eval" / "aggregate.json").read_text())
    audit = {i["name"]: i for i in agg["masking_audit"]["items"]}
    assert not [n for n, i in audit.items() if i["status"] == "skipped"], agg["masking_audit"]
    assert sorted(audit["transfer"]["numbers"]["per_eps"]) == ["0.05", "0.2"]
    info = json.loads((tmp_path / "eval" / "config.json").read_text())
    assert info["surrogate_checkpoint"] == str((tmp_path / "surrogate.pt").resolve())
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| transfer | " in report and f"transfer from `{(tmp_path / 'surrogate.pt').resolve()}`" in report
