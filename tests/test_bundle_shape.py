"""The lumbar_disk_shape bundle end to end: train, resume, evaluate, inference, through monai.bundle, on a tiny phantom.

One tiny training run (width 8, 16 samples, 2 epochs) is shared by the tests of this module; each test
that changes its outputs works on a copy.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "lumbar_disk_shape"
CONFIGS = BUNDLE / "configs"
TINY = {"width": 8, "samples_per_epoch": 16, "batch_size": 4, "shape_modes": 3, "progress_bar": False,
        "tb_images": 2, "log_every": 2}


def _workflow(configs, workflow_type="train", **override):
    from monai.bundle import ConfigWorkflow

    files = [str(CONFIGS / c) for c in configs]
    override.setdefault("bundle_root", str(BUNDLE))
    return ConfigWorkflow(config_file=files if len(files) > 1 else files[0], workflow_type=workflow_type, **override)


def _run(configs, workflow_type="train", **override):
    wf = _workflow(configs, workflow_type, **override)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def _raises_project_error(call, match: str):
    """MONAI wraps errors of config expressions in RuntimeError: the project's DataError must be in the chain."""
    import re

    from diskrobust.data.errors import DataError

    with pytest.raises(Exception) as info:
        call()
    err = info.value
    while err is not None and not isinstance(err, DataError):
        err = err.__cause__ or err.__context__
    assert err is not None, f"no DataError in the chain of {info.value!r}"
    assert re.search(match, str(err)), str(err)


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            out.setdefault(tag, []).extend((e.step, None) for e in acc.Images(tag))
    return out


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


@pytest.fixture(scope="module")
def trained(tiny_phantom, tmp_path_factory):
    """A 2-epoch tiny training run, from another working directory (bundle_root is passed in)."""
    out = tmp_path_factory.mktemp("shape_train")
    cwd = os.getcwd()
    os.chdir(out)
    try:
        _run(["train.json"], dataset_dir=str(tiny_phantom), output_dir=str(out), epochs=2, **TINY)
    finally:
        os.chdir(cwd)
    return out


def test_metadata_verifies_against_schema(meta_schema):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(meta_schema))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [128, 128]
    assert meta["network_data_format"]["outputs"]["pred"]["spatial_shape"] == [176]
    assert any("2102.02885" in r for r in meta["references"])


@pytest.mark.parametrize(
    "configs, workflow_type",
    [(["train.json"], "train"), (["train.json", "evaluate.json"], "eval"), (["inference.json"], "infer")],
)
def test_check_properties(configs, workflow_type, tiny_phantom, tmp_path, trained):
    # evaluate and inference take the width from the model file
    settings = TINY if workflow_type == "train" else {k: v for k, v in TINY.items() if k != "width"}
    wf = _workflow(configs, workflow_type, dataset_dir=str(tiny_phantom), output_dir=str(tmp_path),
                   input_image=str(tiny_phantom / "images" / "sub-0000.nii.gz"),
                   ckpt_path=str(trained / "models" / "model.pt"), **settings)
    wf.initialize()
    assert wf.check_properties() == []


def test_training_outputs_and_best_model(trained):
    models = trained / "models"
    from diskrobust.checkpoints import DESCRIPTION_KEY, build_model_from_checkpoint, weights_digest

    saved = torch.load(models / "model.pt", weights_only=True)
    best = saved["model"]
    assert "stem.conv.weight" in best and "mean_shape" in best
    desc = saved[DESCRIPTION_KEY]  # the model describes itself
    assert desc["network_def"]["width"] == 8 and desc["patch"] == {"size": 128, "spacing_mm": 0.5}
    assert desc["training"]["settings"]["shape_modes"] == 3 and len(desc["training"]["data_digest"]) == 64
    assert desc["shape_pca_mean"] == best["mean_shape"].tolist()
    assert desc["training"]["final_iteration"] == 8 and desc["training"]["iteration"] in (4, 8)
    net, _ = build_model_from_checkpoint(models / "model.pt")
    assert weights_digest(net) == weights_digest(best)
    full = {e: torch.load(models / f"checkpoint_epoch={e}.pt", weights_only=True) for e in (1, 2)}
    assert set(full[2]) == {"model", "optimizer", "trainer", "best_model", DESCRIPTION_KEY}
    assert full[2]["trainer"]["iteration"] == 8 and full[2]["trainer"]["epoch_length"] == 4
    assert (models / "shape_pca.npz").is_file()

    val = dict(_scalars(trained / "logs")["val_mean_point_distance_px"])
    assert sorted(val) == [1, 2] and val[1] != val[2]
    best_epoch = min(val, key=val.get)
    # model.pt holds the weights of the epoch with the LOWEST point error, not the last epoch
    assert _state_equal(best, full[best_epoch]["model"])
    assert not _state_equal(full[1]["model"], full[2]["model"])


def test_tensorboard_scalars_and_contour_images(trained):
    tags = _scalars(trained / "logs")
    for tag in ("train/loss", "train/point_mae", "train/seg", "train/lr", "val_mean_point_distance_px",
                "val_mean_point_distance_mm", "val_polygon_dice", "val_seg_dice"):
        assert tag in tags, f"missing TensorBoard scalar {tag}: {sorted(tags)}"
    assert len(tags["train/loss"]) == 2 * 16 // 4  # every iteration of both epochs
    assert [s for s, _ in tags["val/contours/0"]] == [1, 2] and "val/contours/1" in tags


def test_resume_continues_from_last_checkpoint(trained, tiny_phantom, tmp_path):
    from ignite.engine import Events

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    saved = torch.load(out / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    best_before = torch.load(out / "models" / "model.pt", weights_only=True)["model"]
    # a run killed while writing its next checkpoint leaves a truncated file: it must be skipped
    (out / "models" / "checkpoint_epoch=3.pt").write_bytes(b"PK\x03\x04 truncated")

    wf = _workflow(["train.json"], dataset_dir=str(tiny_phantom), output_dir=str(out), epochs=3, resume="true", **TINY)
    wf.initialize()
    seen = {}

    def at_first_epoch(engine):
        if not seen:
            seen["epoch"] = engine.state.epoch
            seen["weights"] = {k: v.detach().clone() for k, v in engine.network.state_dict().items()}
            seen["steps"] = [s["step"].item() for s in engine.optimizer.state_dict()["state"].values()]

    wf.trainer.add_event_handler(Events.EPOCH_STARTED, at_first_epoch)
    wf.run()
    wf.finalize()

    assert seen["epoch"] == 3
    assert _state_equal(seen["weights"], saved["model"])
    assert seen["steps"] and all(s == 8 for s in seen["steps"])  # optimizer state restored (2 epochs x 4 steps)
    ckpts = sorted(p.name for p in (out / "models").glob("checkpoint_epoch=*.pt"))
    assert ckpts == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]
    assert torch.load(out / "models" / "checkpoint_epoch=3.pt", weights_only=True)["trainer"]["iteration"] == 12
    val = dict(_scalars(out / "logs")["val_mean_point_distance_px"])
    best_epoch = min(val, key=val.get)
    best_after = torch.load(out / "models" / "model.pt", weights_only=True)["model"]
    if best_epoch < 3:  # the resumed run must not replace a better model from before the interruption
        assert _state_equal(best_after, best_before)
    else:
        assert not _state_equal(best_after, best_before)


def test_evaluate_writes_per_sample_and_aggregate_metrics(trained, tiny_phantom, tmp_path):
    eval_tiny = {k: v for k, v in TINY.items() if k != "width"}  # the model says its width itself
    _run(["train.json", "evaluate.json"], "eval", dataset_dir=str(tiny_phantom), output_dir=str(tmp_path),
         ckpt_path=str(trained / "models" / "model.pt"), **eval_tiny)
    eval_dir = tmp_path / "eval"
    with open(eval_dir / "metrics_per_sample.csv") as f:
        rows = list(csv.DictReader(f))
    test_subjects = {e["subject"] for e in json.loads((tiny_phantom / "datalist.json").read_text())["test"]}
    assert {r["subject"] for r in rows} == test_subjects
    assert len(rows) == 5 * len(test_subjects)  # five lumbar disks per subject
    assert {r["level"] for r in rows} == {"L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"}
    doc = json.loads((eval_dir / "metrics.json").read_text())
    px = [float(r["mean_point_distance_px"]) for r in rows]
    assert doc["summary"]["mean_point_distance_px"]["mean"] == pytest.approx(np.mean(px), rel=1e-5)
    assert doc["summary"]["mean_point_distance_mm"]["mean"] == pytest.approx(0.5 * np.mean(px), rel=1e-5)
    assert 0.0 <= doc["summary"]["polygon_dice"]["mean"] <= 1.0 and 0.0 <= doc["summary"]["seg_dice"]["mean"] <= 1.0
    # the Ignite metrics (MetricsSaver) and the per-sample report agree
    ignite = dict(csv.reader(open(eval_dir / "metrics.csv")))
    assert float(ignite["val_mean_point_distance_px"]) == pytest.approx(np.mean(px), rel=1e-4)
    assert float(ignite["val_polygon_dice"]) == pytest.approx(doc["summary"]["polygon_dice"]["mean"], rel=1e-4)
    assert (eval_dir / "metrics_summary.csv").is_file()


def test_inference_image_with_disks_and_single_patch(trained, tiny_phantom, tmp_path):
    from diskrobust.data.contours import contour_to_mask
    from diskrobust.data.dataset_io import read_contours_json, read_image, sagittal_affine, write_image_nifti

    subject = "sub-0005"
    image = tiny_phantom / "images" / f"{subject}.nii.gz"
    truth = read_contours_json(tiny_phantom / "contours" / f"{subject}.json")
    centres = tmp_path / "centres.json"
    centres.write_text(json.dumps({"disks": [
        {"level": d["level"], "label": d["label"], "centre_px": d["points_px"].mean(0).tolist()} for d in truth["disks"]
    ]}))
    patch_path = tmp_path / "patch.nii.gz"
    img, _ = read_image(image)
    write_image_nifti(patch_path, img[:128, :128], sagittal_affine((0.5, 0.5)))

    out = tmp_path / "inference"
    _run(["inference.json"], "infer", input_image=[str(image), str(patch_path)], input_disks=[str(centres), ""],
         ckpt_path=str(trained / "models" / "model.pt"), output_dir=str(out), width=8)

    doc = json.loads((out / f"{subject}_contours.json").read_text())
    assert doc["format"] == "diskrobust-contours/1" and doc["shape"] == list(img.shape)
    assert [d["level"] for d in doc["disks"]] == [d["level"] for d in truth["disks"]]
    assert [d["label"] for d in doc["disks"]] == [201, 202, 203, 204, 205]
    spacing = truth["spacing_mm"]
    for disk in doc["disks"]:
        px = np.asarray(disk["points_px"])
        assert px.shape == (176, 2)
        np.testing.assert_allclose(disk["points_mm"], px * [spacing[1], spacing[0]], atol=1e-3)
    read_contours_json(out / f"{subject}_contours.json")  # the project's own reader accepts it

    mask, meta = read_image(out / f"{subject}_disks.nii.gz")
    np.testing.assert_allclose(meta["affine"], read_image(image)[1]["affine"])
    fills = {d["label"]: contour_to_mask(np.asarray(d["points_px"]), mask.shape) for d in doc["disks"]}
    for label, fill in fills.items():
        higher = np.zeros_like(fill)
        for other, f in fills.items():
            higher |= f if other > label else False
        np.testing.assert_array_equal(mask == label, fill & ~higher)
    assert set(np.unique(mask)) <= {0, *fills}

    single = json.loads((out / "patch_contours.json").read_text())
    assert single["shape"] == [128, 128] and len(single["disks"]) == 1 and single["disks"][0]["label"] == 201
    assert (out / "patch_disks.nii.gz").is_file()


def _train_from_command_line(repo_root, dataset_dir, output_dir, *extra):
    """`python -m monai.bundle run training --config_file bundles/.../train.json` from the repo root: a
    one-epoch run of 8 samples with a width-8 network, plus `extra` overrides."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training",
           "--config_file", "bundles/lumbar_disk_shape/configs/train.json",
           "--dataset_dir", str(dataset_dir), "--output_dir", str(output_dir), "--epochs", "1",
           "--samples_per_epoch", "8", "--batch_size", "4", "--width", "8", "--shape_modes", "3",
           "--progress_bar", "false", *extra]
    return subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)


def test_training_from_command_line_in_repo_root(tiny_phantom, tmp_path, repo_root):
    proc = _train_from_command_line(repo_root, tiny_phantom, tmp_path, "--val_interval", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
    assert (tmp_path / "models" / "checkpoint_epoch=1.pt").is_file()


def test_channels_last_where_onednn_would_crash_ends_with_the_reason(tiny_phantom, tmp_path, repo_root):
    """`--width 8 --channels_last true` on CPU: oneDNN's channels_last weight gradient of the strided 1x1
    convolutions is broken (it aborted this command with "double free or corruption"); the run must stop
    with the project's message instead."""
    proc = _train_from_command_line(repo_root, tiny_phantom, tmp_path, "--channels_last", "true")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("channels_last: true cannot train this network") and "encoder.0.0.conv3.conv" in last, last
    assert not (tmp_path / "models" / "model.pt").exists()


@pytest.mark.parametrize("profile", sorted(p.name for p in (CONFIGS / "profiles").glob("*.json")))
def test_profiles_only_override_existing_ids(profile):
    """A typo in a profile would silently add an unused id instead of changing the run."""
    train = json.loads((CONFIGS / "train.json").read_text())
    prof = json.loads((CONFIGS / "profiles" / profile).read_text())
    unknown = sorted(set(prof) - set(train) - {"description"})
    assert not unknown, f"{profile} sets ids that train.json does not have: {unknown}"
    assert isinstance(prof["epochs"], int) and isinstance(prof["samples_per_epoch"], int)


def test_evaluate_refuses_an_override_that_contradicts_the_model(trained, tiny_phantom, tmp_path):
    wf = _workflow(["train.json", "evaluate.json"], "eval", dataset_dir=str(tiny_phantom), output_dir=str(tmp_path),
                   ckpt_path=str(trained / "models" / "model.pt"), patch_spacing_mm=1.0)
    _raises_project_error(wf.initialize, r"model.pt: the model was trained with patch_spacing_mm 0.5, but "
                                         r"patch_spacing_mm 1.0 was asked for")
    wf.finalize()


def test_fresh_run_into_another_runs_folder_refuses_then_overwrite_moves_it_aside(trained, tiny_phantom, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = sorted(p.name for p in (out / "models").iterdir())
    wf = _workflow(["train.json"], dataset_dir=str(tiny_phantom), output_dir=str(out), epochs=1, **TINY)
    _raises_project_error(wf.initialize, "holds another run's outputs .*--resume true .*--overwrite true")
    wf.finalize()  # releases the folder lock
    assert sorted(p.name for p in (out / "models").iterdir()) == before  # nothing touched
    _run(["train.json"], dataset_dir=str(tiny_phantom), output_dir=str(out), epochs=1, overwrite="true", **TINY)
    [aside] = (out / "models").glob("previous_*")
    assert {"model.pt", "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "logs"} <= {p.name for p in aside.iterdir()}
    assert sorted(p.name for p in (out / "models").glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=1.pt"]
    assert torch.load(out / "models" / "checkpoint_epoch=1.pt", weights_only=True)["trainer"]["iteration"] == 4  # the new run's


def test_zoo_checks_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    """As the model zoo's CI does: verify_net_in_out and ckpt_export on the bundle's own configs, through the
    export-friendly forward (points channel-first); the TorchScript model equals the eager one."""
    from monai.bundle import ckpt_export, verify_net_in_out

    from diskrobust.checkpoints import build_model_from_checkpoint

    common = {"meta_file": str(CONFIGS / "metadata.json"), "config_file": str(CONFIGS / "train.json"),
              "bundle_root": str(BUNDLE), "network_def#export": True, "network_def#width": 8}
    verify_net_in_out(net_id="network_def", device="cpu", **common)
    ts_path = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(trained / "models" / "model.pt"),
                key_in_ckpt="model", **common)
    scripted = torch.jit.load(str(ts_path))
    eager, _ = build_model_from_checkpoint(trained / "models" / "model.pt")
    x = torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x)["pred"].transpose(1, 2), rtol=1e-5, atol=1e-4)


def test_misspelt_override_is_refused_before_any_work(tmp_path, repo_root):
    """`--epoch 1` (for --epochs) must not silently train 8 epochs; the message ends the output."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training",
           "--config_file", "bundles/lumbar_disk_shape/configs/train.json",
           "--output_dir", str(tmp_path), "--dataset_dir", str(tmp_path / "no_phantom"), "--epoch", "1"]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    assert "epoch" in last and "epochs" in last, last
    assert not (tmp_path / "no_phantom").exists() and not (tmp_path / "models").exists()  # nothing done
