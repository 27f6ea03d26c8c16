"""diskrobust.checkpoints: reading, the strict loader's words, digests, the model description, start-over/resume."""

from __future__ import annotations

import doctest

import pytest
import torch

import diskrobust.checkpoints as ck
from diskrobust.data.errors import DataError
from diskrobust.networks import DiskShapeNet


def _net(**kw):
    torch.manual_seed(0)
    return DiskShapeNet(**{"spatial_size": 32, "width": 8, "blocks": (1, 1), **kw})


def test_module_docstring_example_runs():
    assert doctest.testmod(ck, optionflags=doctest.ELLIPSIS).failed == 0


def test_description_round_trip_builds_the_same_network(tmp_path):
    net = _net(seg_head=False)
    net.set_mean_shape(net.mean_shape + 1.5)
    desc = ck.describe_model(net, patch_spacing_mm=1.0, settings={"epochs": 2, "lr": 1e-3}, data_digest="abc")
    path = tmp_path / "model.pt"
    ck.save_model(path, net, desc)
    raw = torch.load(path, weights_only=True)  # weights_only stays enough
    assert set(raw) == {"model", ck.DESCRIPTION_KEY} and raw[ck.DESCRIPTION_KEY]["training"]["data_digest"] == "abc"
    loaded, got = ck.build_model_from_checkpoint(path, "cpu")
    assert got["network_def"]["seg_head"] is False and got["patch"] == {"size": 32, "spacing_mm": 1.0}
    assert ck.weights_digest(loaded) == ck.weights_digest(net)
    assert got["shape_pca_mean"] == net.mean_shape.tolist()
    assert got["training"]["config_digest"] == ck.settings_digest({"lr": 1e-3, "epochs": 2})
    # an explicit override that agrees is fine, one that disagrees names both values
    ck.build_model_from_checkpoint(path, "cpu", {"width": 8, "patch_size": 32, "patch_spacing_mm": None})
    with pytest.raises(DataError, match=r"patch_spacing_mm 1.0, but patch_spacing_mm 0.5 was asked for"):
        ck.build_model_from_checkpoint(path, "cpu", {"patch_spacing_mm": 0.5})
    with pytest.raises(ValueError, match="unknown model override"):
        ck.build_model_from_checkpoint(path, "cpu", {"widht": 8})


def test_plain_state_dict_needs_the_geometry_stated(tmp_path):
    net = _net()
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(DataError, match="--patch_size, --patch_spacing_mm"):
        ck.build_model_from_checkpoint(tmp_path / "plain.pt", "cpu", {"width": 8})
    loaded, desc = ck.build_model_from_checkpoint(tmp_path / "plain.pt", "cpu",
                                                  {"width": 8, "patch_size": 32, "patch_spacing_mm": 1.0, "blocks": [1, 1]})
    assert ck.weights_digest(loaded) == ck.weights_digest(net) and desc["stated_by_user"]


def test_strict_loader_names_the_mismatch_in_words(tmp_path):
    torch.save({"model": _net(width=16).state_dict()}, tmp_path / "w16.pt")
    with pytest.raises(DataError, match=r"w16.pt.*differ in shape: .*file \(16, 1, 3, 3\) vs network \(8, 1, 3, 3\).*--width"):
        ck.load_model_weights(_net(), tmp_path / "w16.pt")
    with pytest.raises(DataError, match=r"the network needs are not in the file: .*decoder"):
        ck.load_weights(_net(), _net(seg_head=False).state_dict(), "x.pt")
    with pytest.raises(DataError, match=r"in the file the network does not have: .*decoder"):
        ck.load_weights(_net(seg_head=False), _net().state_dict(), "x.pt")


def test_non_finite_weights_are_refused(tmp_path):
    net = _net()
    state = net.state_dict()
    state["stem.conv.weight"][0, 0, 0, 0] = float("nan")
    ck.save_model(tmp_path / "nan.pt", net, ck.describe_model(net))
    torch.save(state, tmp_path / "nan_plain.pt")
    with pytest.raises(DataError, match="NaN or Inf .*stem.conv.weight"):
        ck.build_model_from_checkpoint(tmp_path / "nan_plain.pt", "cpu", {"width": 8, "patch_size": 32,
                                                                          "patch_spacing_mm": 0.5, "blocks": [1, 1]})
    net.stem.conv.weight.data[0, 0, 0, 0] = float("inf")
    ck.save_model(tmp_path / "inf.pt", net, ck.describe_model(net))
    with pytest.raises(DataError, match="NaN or Inf"):
        ck.build_model_from_checkpoint(tmp_path / "inf.pt")


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(DataError, match="missing.pt: checkpoint file not found"):
        ck.read_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="junk.pt: cannot be read"):
        ck.read_checkpoint(tmp_path / "junk.pt")
    torch.save({"epoch": 3}, tmp_path / "nothing.pt")
    with pytest.raises(DataError, match="holds no network weights"):
        ck.build_model_from_checkpoint(tmp_path / "nothing.pt")


def test_weights_digest_sees_values_names_and_ddp_wrapping():
    a, b = _net(), _net()
    assert ck.weights_digest(a) == ck.weights_digest(b) == ck.weights_digest(a.state_dict())
    b.stem.conv.weight.data[0, 0, 0, 0] += 1e-6
    assert ck.weights_digest(a) != ck.weights_digest(b)

    class Wrapped(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert ck.weights_digest(Wrapped(a)) == ck.weights_digest(a)


def test_resume_refuses_a_checkpoint_of_another_setup():
    net = _net()
    state = ck.ModelDescriptionState(net, 32, 0.5, {"epochs": 2, "width": 8}, "data1").state_dict()
    ck.ModelDescriptionState(_net(), 32, 0.5, {"epochs": 2, "width": 8}, "data1").load_state_dict(state)
    with pytest.raises(DataError, match=r"network_def.width: checkpoint 8, this run 16"):
        ck.ModelDescriptionState(_net(width=16), 32, 0.5, {"epochs": 2, "width": 8}, "data1").load_state_dict(state)
    with pytest.raises(DataError, match=r"the training data differ"):
        ck.ModelDescriptionState(_net(), 32, 0.5, {"epochs": 2, "width": 8}, "data2").load_state_dict(state)
    with pytest.raises(DataError, match=r"the settings differ \(lr: checkpoint None, this run 0.1\)"):
        ck.ModelDescriptionState(_net(), 32, 0.5, {"epochs": 2, "width": 8, "lr": 0.1}, "data1").load_state_dict(state)
    # training longer is what resuming is for
    ck.ModelDescriptionState(_net(), 32, 0.5, {"epochs": 3, "width": 8}, "data1").load_state_dict(state)


def test_fresh_run_into_an_old_runs_folder_refuses_or_moves_aside(tmp_path):
    models, logs = tmp_path / "models", tmp_path / "logs"
    models.mkdir()
    logs.mkdir()
    assert ck.prepare_output_folder(models, log_dir=logs) is None  # empty: fine
    for name in ("checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "model.pt"):
        (models / name).write_bytes(b"old")
    (logs / "events.out.tfevents.1.host").write_bytes(b"old")
    with pytest.raises(DataError, match="--resume true .*--overwrite true"):
        ck.prepare_output_folder(models, log_dir=logs)
    assert ck.prepare_output_folder(models, resume="true", log_dir=logs) is None
    assert (models / "model.pt").is_file()
    with pytest.raises(ValueError, match="choose one"):
        ck.prepare_output_folder(models, resume=True, overwrite=True)
    aside = ck.prepare_output_folder(models, overwrite="true", log_dir=logs)
    assert sorted(p.name for p in (models / aside.split("/")[-1]).iterdir()) == [
        "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "logs", "model.pt"]
    assert not list(models.glob("*.pt")) and not list(logs.iterdir())
    assert ck.prepare_output_folder(models, log_dir=logs) is None  # now fresh
    # a model without a run (the model the bundle ships) is kept aside, not overwritten
    (models / "model.pt").write_bytes(b"shipped")
    kept = ck.prepare_output_folder(models, log_dir=logs)
    assert (models / kept.split("/")[-1] / "model.pt").read_bytes() == b"shipped" and not (models / "model.pt").exists()


def test_latest_checkpoint_skips_truncated_files(tmp_path):
    torch.save({"x": torch.zeros(1)}, tmp_path / "checkpoint_epoch=2.pt")
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"PK\x03\x04 truncated")
    assert ck.latest_checkpoint(tmp_path).endswith("checkpoint_epoch=2.pt")
    assert ck.resume_checkpoint(tmp_path, "false") is None
    with pytest.raises(FileNotFoundError, match="no complete"):
        ck.resume_checkpoint(tmp_path / "empty", True)
