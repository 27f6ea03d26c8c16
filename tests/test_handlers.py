"""Handlers and bundle helpers on small synthetic engines (fast; the bundle tests run them for real)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from diskrobust.checkpoints import BestModelState, latest_checkpoint, resume_checkpoint, weights_digest
from diskrobust.bundle_checks import as_bool
from diskrobust.data.disk_positions import read_disk_positions
from diskrobust.datasets import collate_patches, inference_items
from diskrobust.transforms import inference_chain
from diskrobust.data.errors import DataError
from diskrobust.handlers import (
    DatasetEpochSetter,
    DiskContourWriter,
    DiskMetricsReport,
    PruneCheckpoints,
    TensorBoardContourImages,
    contours_to_label_mask,
)
from diskrobust.networks import ellipse_mean_shape


def _square(x0, y0, size, n=176):
    """(n, 2) points around an axis-aligned square, counter-clockwise in image coordinates."""
    side = n // 4
    t = np.linspace(0, 1, side, endpoint=False)
    pts = np.concatenate([
        np.stack([np.full(side, x0), y0 + t * size], 1),
        np.stack([x0 + t * size, np.full(side, y0 + size)], 1),
        np.stack([np.full(side, x0 + size), y0 + size - t * size], 1),
        np.stack([x0 + size - t * size, np.full(side, y0)], 1),
    ])
    return pts.astype(np.float32)


def _engine_with_outputs(outputs, batches=None):
    """An engine whose iteration i outputs outputs[i] (and sets state.batch to batches[i])."""

    def step(engine, i):
        if batches is not None:
            engine.state.batch = batches[i]
        return outputs[i]

    return Engine(step)


class _EpochRecorder(torch.utils.data.Dataset):
    def __init__(self):
        self.epochs = []

    def set_epoch(self, e):
        self.epochs.append(e)


def test_dataset_epoch_setter_passes_zero_based_epochs():
    data = _EpochRecorder()
    engine = Engine(lambda e, b: None)
    DatasetEpochSetter(data).attach(engine)
    engine.run([0, 1], max_epochs=3)
    assert data.epochs == [0, 1, 2]
    with pytest.raises(TypeError, match="set_epoch"):
        DatasetEpochSetter(object())


def test_tensorboard_contour_images_draws_truth_green_and_pred_red(tmp_path):
    s = 32
    truth = torch.from_numpy(_square(4, 4, 10))[None].repeat(3, 1, 1)
    pred = torch.from_numpy(_square(16, 16, 10))[None].repeat(3, 1, 1)
    out = {"image": torch.zeros(3, 1, s, s), "label": {"points": truth}, "pred": {"pred": pred}}

    class Writer:
        def __init__(self):
            self.images = []

        def add_image(self, tag, img, global_step, dataformats):
            self.images.append((tag, global_step, np.asarray(img)))

        def flush(self):
            pass

    writer = Writer()
    engine = _engine_with_outputs([out, out])
    TensorBoardContourImages(summary_writer=writer, num_images=4, interval=2).attach(engine)
    engine.run([0, 1], max_epochs=4)
    # 4 images wanted, 2 batches of 3 -> 4 per logged epoch; only epochs 2 and 4 are logged
    assert [(t, step) for t, step, _ in writer.images] == [(f"val/contours/{i}", e) for e in (2, 4) for i in range(4)]
    img = writer.images[0][2]
    assert img.shape == (3, s, s)
    assert tuple(img[:, 9, 4]) == pytest.approx((0.0, 1.0, 0.0))  # on the truth square's left side
    assert tuple(img[:, 21, 16]) == pytest.approx((1.0, 0.0, 0.0))  # on the prediction's left side
    assert tuple(img[:, 28, 2]) == pytest.approx((0.0, 0.0, 0.0))  # background stays the (black) image


def test_tensorboard_contour_images_writes_event_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pts = torch.from_numpy(_square(4, 4, 10))[None]
    out = {"image": torch.rand(1, 1, 32, 32), "label": {"points": pts}, "pred": {"pred": pts + 1}}
    engine = _engine_with_outputs([out])
    handler = TensorBoardContourImages(log_dir=str(tmp_path), num_images=1)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    handler.writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert acc.Tags()["images"] == ["val/contours/0"]


def _metrics_output(shift):
    s = 64
    truth = ellipse_mean_shape(176, s)[None].repeat(2, 1, 1)
    from diskrobust.data.contours import contour_to_mask

    mask = torch.from_numpy(contour_to_mask(truth[0].numpy(), (s, s)).astype(np.float32))[None, None].repeat(2, 1, 1, 1)
    pred = truth + torch.tensor([[[shift, 0.0]], [[0.0, 0.0]]])
    seg = torch.where(mask > 0, 5.0, -5.0)
    return {"image": torch.zeros(2, 1, s, s), "label": {"points": truth, "mask": mask}, "pred": {"pred": pred, "seg": seg}}


def test_disk_metrics_report_per_sample_and_summary(tmp_path):
    batch = {"subject": ["sub-a", "sub-b"], "level": ["L4/L5", "L5/S1"]}
    engine = _engine_with_outputs([_metrics_output(3.0)], [batch])
    report = DiskMetricsReport(str(tmp_path), spacing_mm=0.5, info={"checkpoint": "x.pt"})
    report.attach(engine)
    engine.run([0], max_epochs=1)
    rows = list(csv.DictReader(open(tmp_path / "metrics_per_sample.csv")))
    assert [(r["subject"], r["level"]) for r in rows] == [("sub-a", "L4/L5"), ("sub-b", "L5/S1")]
    assert float(rows[0]["mean_point_distance_px"]) == pytest.approx(3.0)
    assert float(rows[0]["mean_point_distance_mm"]) == pytest.approx(1.5)
    assert float(rows[1]["mean_point_distance_px"]) == pytest.approx(0.0)
    assert float(rows[0]["polygon_dice"]) < 0.99 and float(rows[1]["polygon_dice"]) > 0.97
    assert float(rows[0]["seg_dice"]) == pytest.approx(1.0)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["summary"]["mean_point_distance_px"]["mean"] == pytest.approx(1.5)
    assert doc["summary"]["mean_point_distance_px"]["n"] == 2 and doc["info"]["checkpoint"] == "x.pt"
    summary = {r["metric"]: r for r in csv.DictReader(open(tmp_path / "metrics_summary.csv"))}
    assert float(summary["mean_point_distance_mm"]["mean"]) == pytest.approx(0.75)


def test_disk_metrics_report_without_seg_head_writes_null(tmp_path):
    out = _metrics_output(1.0)
    del out["pred"]["seg"]
    engine = _engine_with_outputs([out])
    DiskMetricsReport(str(tmp_path)).attach(engine)
    engine.run([0], max_epochs=1)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["summary"]["seg_dice"]["mean"] is None and doc["per_sample"][0]["seg_dice"] is None


def test_prune_checkpoints_keeps_newest(tmp_path):
    for e in (1, 2, 3, 10):
        torch.save({"e": e}, tmp_path / f"checkpoint_epoch={e}.pt")
    (tmp_path / "model.pt").write_bytes(b"x")
    removed = PruneCheckpoints(str(tmp_path), keep=2)()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=10.pt", "checkpoint_epoch=3.pt", "model.pt"]
    assert len(removed) == 2


def test_prune_checkpoints_never_deletes_the_running_epochs_checkpoint(tmp_path):
    """Another run's later checkpoints in the folder must not push this run's newest one out."""
    for e in (7, 8):
        torch.save({"e": e}, tmp_path / f"checkpoint_epoch={e}.pt")
    torch.save({"e": 1}, tmp_path / "checkpoint_epoch=1.pt")
    engine = Engine(lambda e, b: None)
    engine.state.epoch = 1
    assert PruneCheckpoints(str(tmp_path), keep=2)(engine) == []
    assert (tmp_path / "checkpoint_epoch=1.pt").is_file()


def test_latest_checkpoint_skips_truncated_and_resume_requires_one(tmp_path):
    assert latest_checkpoint(str(tmp_path)) is None
    assert resume_checkpoint(str(tmp_path), "false") is None
    with pytest.raises(FileNotFoundError, match="resume=true"):
        resume_checkpoint(str(tmp_path), True)
    torch.save({"a": torch.zeros(2)}, tmp_path / "checkpoint_epoch=4.pt")
    (tmp_path / "checkpoint_epoch=5.pt").write_bytes(b"PK\x03\x04 cut short")
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint_epoch=4.pt")
    assert resume_checkpoint(str(tmp_path), "true").endswith("checkpoint_epoch=4.pt")


def test_best_model_state_round_trips_through_weights_only_load(tmp_path):
    from monai.handlers import CheckpointSaver

    net = torch.nn.Linear(2, 1)

    class Evaluator:
        class state:
            best_metric = 1.25
            best_metric_epoch = 3

    saver = CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_filename="model.pt")
    saver._key_metric_checkpoint._saved.append((-1.25, "model.pt"))  # as after a saved best
    torch.save({"best": BestModelState(saver, Evaluator).state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)["best"]

    saver2 = CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_filename="model.pt")

    class Evaluator2:
        class state:
            best_metric = -1
            best_metric_epoch = -1

    BestModelState(saver2, Evaluator2).load_state_dict(state)
    assert [tuple(x) for x in saver2._key_metric_checkpoint._saved] == [(-1.25, "model.pt")]
    assert (Evaluator2.state.best_metric, Evaluator2.state.best_metric_epoch) == (1.25, 3)


@pytest.mark.parametrize("value, expected", [(True, True), ("true", True), ("False", False), ("0", False), (0, False)])
def test_as_bool(value, expected):
    assert as_bool(value) is expected


def test_as_bool_rejects_unknown_words():
    with pytest.raises(ValueError, match="maybe"):
        as_bool("maybe")


def test_weights_digest_tracks_values():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.bias[0] += 1e-3
    assert weights_digest(a) != weights_digest(b)


def test_contours_to_label_mask_higher_label_wins():
    a = _square(2, 2, 10)
    b = _square(8, 8, 10)
    mask = contours_to_label_mask([{"label": 202, "points_px": b}, {"label": 201, "points_px": a}], (24, 24))
    assert mask.dtype == np.uint16
    assert mask[5, 5] == 201 and mask[15, 15] == 202 and mask[10, 10] == 202 and mask[22, 22] == 0


def test_read_disk_positions_errors_name_the_file(tmp_path):
    bad = tmp_path / "centres.json"
    bad.write_text(json.dumps({"disks": [{"level": "L4/L5", "label": 202, "centre_px": [500, 10]}]}))
    with pytest.raises(DataError, match="centres.json.*outside"):
        read_disk_positions(str(bad), (100, 100))
    bad.write_text("{not json")
    with pytest.raises(DataError, match="centres.json.*JSON"):
        read_disk_positions(str(bad), (100, 100))
    bad.write_text(json.dumps({"disks": [{"level": "L4/L5"}]}))
    with pytest.raises(DataError, match="centre_px"):
        read_disk_positions(str(bad), (100, 100))
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"disks": [{"level": "L4/L5", "label": 202, "centre_px": [50, 40]}]}))
    [disk] = read_disk_positions(str(ok), (100, 100))
    assert disk["level"] == "L4/L5" and disk["label"] == 202 and disk["centre_px"].tolist() == [50, 40]


def test_inference_input_patches_and_contour_writer_map_back(tmp_path):
    from diskrobust.data.dataset_io import read_contours_json, read_image, sagittal_affine, write_image_nifti

    image = np.zeros((200, 160), np.float32)
    image[90:110, 50:110] = 1.0
    path = tmp_path / "subj.nii.gz"
    write_image_nifti(path, image, sagittal_affine((1.0, 1.25)))
    centres = tmp_path / "c.json"
    centres.write_text(json.dumps({"disks": [{"level": "L4/L5", "label": 202, "centre_px": [80, 100]},
                                             {"level": "L5/S1", "label": 201, "centre_px": [80, 150]}]}))
    [item] = inference_items(str(path), str(centres))
    patches = inference_chain(patch_size=64, patch_spacing_mm=0.5)(item)
    assert len(patches) == 2 and patches[0]["image"].shape == (1, 64, 64)
    assert 0.0 <= patches[0]["image"].min() and patches[0]["image"].max() <= 1.0
    np.testing.assert_allclose(patches[0]["scale"], [0.5 / 1.25, 0.5 / 1.0])
    batch = collate_patches([patches])

    # a "network" that predicts a square around the patch centre: back in the image it must sit
    # around each disk centre, scaled by the pixel-size ratio
    square = torch.from_numpy(_square(22, 22, 20))[None].repeat(2, 1, 1)
    engine = _engine_with_outputs([{"pred": {"pred": square}}], [batch])
    writer = DiskContourWriter(str(tmp_path / "out"), patch_size=64)
    writer.attach(engine)
    engine.run([0], max_epochs=1)
    doc = read_contours_json(tmp_path / "out" / "subj_contours.json", image_shape=(200, 160))
    assert [d["label"] for d in doc["disks"]] == [201, 202]
    l45 = doc["disks"][1]["points_px"]
    np.testing.assert_allclose(l45.min(0), [80 - 10 * 0.4, 100 - 10 * 0.5], atol=1e-4)
    np.testing.assert_allclose(l45.max(0), [80 + 10 * 0.4, 100 + 10 * 0.5], atol=0.2)
    mask, meta = read_image(tmp_path / "out" / "subj_disks.nii.gz")
    assert mask[100, 80] == 202 and mask[150, 80] == 201 and mask[10, 10] == 0
    np.testing.assert_allclose(meta["spacing_mm"], (1.0, 1.25))


def test_inference_input_patch_mode(tmp_path):
    from diskrobust.data.dataset_io import sagittal_affine, write_image_nifti

    path = tmp_path / "p.nii.gz"
    write_image_nifti(path, np.arange(64 * 64, dtype=np.float32).reshape(64, 64), sagittal_affine((0.5, 0.5)))
    [out] = inference_chain(patch_size=64)({"image": str(path), "disks": ""})
    assert out["image"].shape == (1, 64, 64) and out["level"] == "patch" and out["disk_label"] == 201
    assert out["image"].min() == 0.0 and out["image"].max() == 1.0
    np.testing.assert_array_equal(out["scale"], [1.0, 1.0])  # the patch is the image: points map back 1:1
    with pytest.raises(DataError, match=r"p.nii.gz.*one 32x32 patch, got \(64, 64\)"):
        inference_chain(patch_size=32)({"image": str(path), "disks": ""})
    with pytest.raises(ValueError, match="input_image"):
        inference_items("", "")


class _EpochEcho(torch.utils.data.Dataset):
    epoch = 0

    def set_epoch(self, e):
        self.epoch = e

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor([self.epoch, i])


def test_dataset_epoch_setter_reaches_dataloader_workers():
    """Worker processes copy the dataset when an epoch's iterator starts: they must see the new epoch."""
    from monai.data import DataLoader

    data, seen = _EpochEcho(), []
    engine = Engine(lambda e, b: seen.append(sorted(set(b[:, 0].tolist()))))
    DatasetEpochSetter(data).attach(engine)
    engine.run(DataLoader(data, batch_size=2, num_workers=1, persistent_workers=False), max_epochs=3)
    assert seen == [[0], [0], [1], [1], [2], [2]]


def test_disk_net_outputd_for_monai_label():
    from diskrobust.transforms import DiskNetOutputd

    points = ellipse_mean_shape(176, 32)
    seg = -torch.ones(1, 32, 32)
    seg[0, 10:20, 5:25] = 3.0
    out = DiskNetOutputd()({"image": torch.zeros(1, 32, 32), "pred": {"pred": points, "seg": seg}})
    assert out["points"].shape == (176, 2) and out["points"].dtype == np.float32
    assert out["pred"].dtype == torch.uint8 and int(out["pred"].sum()) == 10 * 20
    # without a segmentation head the mask is the filled predicted contour
    out = DiskNetOutputd()({"image": torch.zeros(1, 32, 32), "pred": {"pred": points}})
    assert out["pred"].shape == (1, 32, 32) and out["pred"][0, 16, 16] == 1 and out["pred"][0, 0, 0] == 0


def test_initial_weights_fine_tune_from_ckpt_or_start_at_mean_shape(tmp_path):
    from diskrobust.checkpoints import describe_model, initial_weights, save_model
    from diskrobust.data.errors import DataError as _DataError
    from diskrobust.networks import DiskShapeNet

    torch.manual_seed(1)
    source = DiskShapeNet(spatial_size=32, width=8, blocks=(1, 1))
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    save_model(tmp_path / "described.pt", source, describe_model(source))
    for name in ("plain.pt", "described.pt"):
        net = DiskShapeNet(spatial_size=32, width=8, blocks=(1, 1))
        initial_weights(net, str(tmp_path / name), overrides={"width": 8, "patch_size": 32})
        assert weights_digest(net) == weights_digest(source)
    # fine-tuning a model of another width names the difference instead of a wall of shape errors
    with pytest.raises(_DataError, match="width 8, but width 16"):
        initial_weights(DiskShapeNet(spatial_size=32, width=16, blocks=(1, 1)), str(tmp_path / "described.pt"),
                        overrides={"width": 16})
    mean = ellipse_mean_shape(176, 32) + 1.5
    net = DiskShapeNet(spatial_size=32, width=8, blocks=(1, 1))
    initial_weights(net, "", mean)
    assert torch.allclose(net.mean_shape, mean)
    with pytest.raises(_DataError, match="missing.pt"):
        initial_weights(DiskShapeNet(spatial_size=32, width=8, blocks=(1, 1)), str(tmp_path / "missing.pt"))


def test_read_disk_positions_from_contour_json_uses_centroids(tmp_path):
    from diskrobust.data.dataset_io import write_contours_json

    disks = [{"level": "L5/S1", "label": 201, "points_px": _square(10, 20, 8)},
             {"level": "L4/L5", "label": 202, "points_px": _square(30, 5, 6)}]
    path = write_contours_json(tmp_path / "c.json", "s", (64, 64), (1.0, 1.0), disks)
    got = read_disk_positions(str(path), (64, 64))
    assert [(d["level"], d["label"]) for d in got] == [("L5/S1", 201), ("L4/L5", 202)]
    np.testing.assert_allclose(got[0]["centre_px"], [14, 24], atol=1e-6)
    np.testing.assert_allclose(got[1]["centre_px"], [33, 8], atol=1e-6)
    with pytest.raises(DataError, match="c.json"):
        read_disk_positions(str(path), (16, 16))  # contours outside a smaller image
