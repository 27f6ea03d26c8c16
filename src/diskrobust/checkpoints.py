"""Checkpoints: one reader, one strict loader, one weights digest, the model's own description.

Convention
----------
A *model file* (`models/model.pt`, and every full training checkpoint) is a dict that
`torch.load(path, weights_only=True)` reads::

    {"model": state_dict,                       # what MONAI's CheckpointLoader / MONAI Label load
     "diskrobust_model": description,           # plain dicts, lists, str, float, int (no tensors)
     ...}                                       # full checkpoints: "optimizer", "trainer", "best_model"

A plain state_dict (or `{"model": state_dict}`, `{"network": state_dict}`) from elsewhere still
loads; it has no description, so the user must state the geometry (width, patch size, spacing).

The description (`DESCRIPTION_KEY`, format `MODEL_FORMAT`) says what is needed to use the weights::

    {"format": "diskrobust-model/1",
     "network_def": {"_target_": "diskrobust.networks.DiskShapeNet", "in_channels": 1,
                     "num_points": 176, "spatial_size": 128, "width": 16, "blocks": [2, 2, 2, 2],
                     "point_head": true, "seg_head": true, "norm_groups": 8, "negative_slope": 0.01},
     "patch": {"size": 128, "spacing_mm": 0.5},
     "intensity": {"image": "percentile", "lower": 0.5, "upper": 99.5, "patch": "minmax"},
     "shape_pca_mean": [[x, y], ...] or null,   # (176, 2) patch px: the training contours' mean
     "training": {"config_digest": sha256, "settings": {...}, "data_digest": sha256,
                  "epoch": e, "iteration": i, "final_epoch": E, "final_iteration": I}}

`training.iteration` / `epoch` are the trainer's counters when these weights were saved, `final_*`
the planned end of that run (fine-tuning continues TensorBoard steps after them).

Every loader refuses, naming the file: a missing or unreadable file, keys or shapes that do not
match the network (in words), non-finite weights, and an explicit override (``width``,
``patch_size``, ``patch_spacing_mm``, any ``network_def`` argument) that disagrees with the
description.

Example
-------
>>> import tempfile, torch
>>> from diskrobust.networks import DiskShapeNet
>>> from diskrobust.checkpoints import describe_model, save_model, build_model_from_checkpoint
>>> net = DiskShapeNet(spatial_size=32, width=8, blocks=(1, 1))
>>> path = tempfile.mkdtemp() + "/model.pt"
>>> save_model(path, net, describe_model(net, patch_spacing_mm=1.0))
>>> loaded, desc = build_model_from_checkpoint(path, "cpu")
>>> desc["patch"], loaded.width
({'size': 32, 'spacing_mm': 1.0}, 8)
>>> build_model_from_checkpoint(path, "cpu", {"width": 16})
Traceback (most recent call last):
...
diskrobust.data.errors.DataError: ...model.pt: the model was trained with width 8, but width 16 was asked for; drop the override (the model file says how it was built)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diskrobust.data.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "DESCRIPTION_KEY",
    "MODEL_FORMAT",
    "CHECKPOINT_PREFIX",
    "read_checkpoint",
    "split_checkpoint",
    "check_finite",
    "load_weights",
    "weights_digest",
    "settings_digest",
    "describe_model",
    "check_overrides",
    "read_model_description",
    "network_from_description",
    "save_model",
    "build_model_from_checkpoint",
    "load_model_weights",
    "initial_weights",
    "continued_steps",
    "ModelDescriptionState",
    "BestModelState",
    "list_checkpoints",
    "latest_checkpoint",
    "resume_checkpoint",
    "prepare_output_folder",
]

DESCRIPTION_KEY = "diskrobust_model"
MODEL_FORMAT = "diskrobust-model/1"
CHECKPOINT_PREFIX = "checkpoint"
NETWORK_TARGET = "diskrobust.networks.DiskShapeNet"
DEFAULT_INTENSITY = {"image": "percentile", "lower": 0.5, "upper": 99.5, "patch": "minmax"}
# the DiskShapeNet arguments a description records (its constructor's, minus nothing)
_NET_ARGS = ("in_channels", "num_points", "spatial_size", "width", "blocks", "point_head", "seg_head",
             "norm_groups", "negative_slope")
# user-facing override names -> where they live in the description
_OVERRIDE_PATHS = {
    "width": ("network_def", "width"),
    "patch_size": ("patch", "size"),
    "patch_spacing_mm": ("patch", "spacing_mm"),
    **{name: ("network_def", name) for name in _NET_ARGS},
}


# --------------------------------------------------------------------------------------------------
# reading


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; DataError naming the file when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise DataError(path, f"cannot be read as a torch checkpoint (weights_only): {type(err).__name__}: {err}") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def split_checkpoint(obj: Any, path: str | Path = "checkpoint") -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state_dict, description or None) of what `read_checkpoint` returned.

    Accepts a plain state_dict or one under "model" / "network" / "state_dict" / "net".
    """
    description = obj.get(DESCRIPTION_KEY) if isinstance(obj, Mapping) else None
    if _is_state_dict(obj):
        return dict(obj), None
    if isinstance(obj, Mapping):
        for key in ("model", "network", "state_dict", "net"):
            if _is_state_dict(obj.get(key)):
                return dict(obj[key]), (dict(description) if isinstance(description, Mapping) else None)
    what = f"a {type(obj).__name__}" + (f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else "")
    raise DataError(path, f"holds no network weights ({what}); expected a state_dict or {{'model': state_dict}}")


def check_finite(state: Mapping[str, torch.Tensor], path: str | Path = "checkpoint") -> None:
    """DataError naming the first tensors that hold NaN or Inf: such weights give NaN metrics, not an error."""
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise DataError(path, f"{len(bad)} weight tensor(s) hold NaN or Inf ({', '.join(bad[:4])}"
                              f"{' ...' if len(bad) > 4 else ''}): the training diverged; use an earlier checkpoint")


def _listed(items: list[str], n: int = 6) -> str:
    return "; ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def load_weights(network: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path = "checkpoint") -> torch.nn.Module:
    """Load `state` into `network` strictly, after checking it is finite; a mismatch raises DataError saying
    which keys are missing or unexpected and which shapes differ, and what to change."""
    module = getattr(network, "module", network)  # DistributedDataParallel
    check_finite(state, path)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} tensor(s) differ in shape: {_listed(shapes)}")
        if missing:
            parts.append(f"{len(missing)} tensor(s) the network needs are not in the file: {_listed(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} tensor(s) in the file the network does not have: {_listed(unexpected)}")
        built = ", ".join(f"{k}={getattr(module, k)}" for k in ("width", "blocks", "spatial_size", "num_points",
                                                               "has_point_head", "has_seg_head") if hasattr(module, k))
        raise DataError(path, f"the weights do not fit the network ({type(module).__name__}: {built}): "
                              + " | ".join(parts) + ". Build the network as the weights were trained (e.g. --width 8; "
                              "a model file written by this project says so itself)")
    module.load_state_dict(dict(state), strict=True)
    return network


# --------------------------------------------------------------------------------------------------
# digests


def weights_digest(network_or_state: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 of a network's (or a state_dict's) names, shapes and values, in sorted name order."""
    if isinstance(network_or_state, torch.nn.Module):
        state = getattr(network_or_state, "module", network_or_state).state_dict()
    else:
        state = network_or_state
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """`value` as JSON-able plain data (numpy / torch scalars, tuples, paths -> numbers, lists, str)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _plain(np.asarray(value.detach().cpu() if torch.is_tensor(value) else value).tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def settings_digest(settings: Mapping) -> str:
    """sha256 of a settings dict as canonical JSON (sorted keys): the training config digest."""
    return hashlib.sha256(json.dumps(_plain(settings), sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# the model's description


def describe_model(
    network: torch.nn.Module,
    patch_size: int | None = None,
    patch_spacing_mm: float = 0.5,
    intensity: Mapping | None = None,
    settings: Mapping | None = None,
    data_digest: str = "",
    trainer=None,
) -> dict:
    """The description of `network` (module docstring): its constructor arguments, the patch geometry,
    the intensity normalisation, its mean shape, the training settings and their digest, the data digest
    and (with `trainer`) the trainer's counters."""
    module = getattr(network, "module", network)
    net = {"_target_": NETWORK_TARGET}
    for name in _NET_ARGS:
        attr = {"point_head": "has_point_head", "seg_head": "has_seg_head"}.get(name, name)
        if hasattr(module, attr):
            net[name] = _plain(getattr(module, attr))
    size = int(patch_size if patch_size is not None else net.get("spatial_size", 128))
    if "spatial_size" in net and int(net["spatial_size"]) != size:
        raise ValueError(f"patch_size {size} differs from the network's spatial_size {net['spatial_size']}")
    mean = getattr(module, "mean_shape", None)
    desc = {
        "format": MODEL_FORMAT,
        "network_def": net,
        "patch": {"size": size, "spacing_mm": float(patch_spacing_mm)},
        "intensity": dict(_plain(intensity) if intensity is not None else DEFAULT_INTENSITY),
        "shape_pca_mean": _plain(mean) if mean is not None else None,
        "training": {"config_digest": settings_digest(settings) if settings is not None else "",
                     "settings": _plain(settings) if settings is not None else {},
                     "data_digest": str(data_digest)},
    }
    if trainer is not None:
        state = trainer.state
        length = int(state.epoch_length or 0)
        desc["training"].update(epoch=int(state.epoch), iteration=int(state.iteration),
                                final_epoch=int(state.max_epochs or 0),
                                final_iteration=int((state.max_epochs or 0) * length))
    return desc


def _get(desc: Mapping, where: tuple[str, str]) -> Any:
    return (desc.get(where[0]) or {}).get(where[1])


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b) and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def check_overrides(description: Mapping, overrides: Mapping | None, path: str | Path = "model") -> None:
    """DataError naming each explicit override (not None) that disagrees with the description."""
    unknown = sorted(k for k in (overrides or {}) if k not in _OVERRIDE_PATHS)
    if unknown:
        raise ValueError(f"unknown model override(s) {unknown}; known: {sorted(_OVERRIDE_PATHS)}")
    diffs = []
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        recorded = _get(description, _OVERRIDE_PATHS[name])
        if recorded is not None and not _same(_plain(value), recorded):
            diffs.append(f"{name} {recorded}, but {name} {_plain(value)} was asked for")
    if diffs:
        raise DataError(path, "the model was trained with " + "; ".join(diffs)
                              + "; drop the override (the model file says how it was built)")


def _described_from_overrides(overrides: Mapping | None, path: str | Path) -> dict:
    """A description for a plain state_dict, from the geometry the user stated."""
    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    needed = [k for k in ("width", "patch_size", "patch_spacing_mm") if k not in o]
    if needed:
        raise DataError(path, "is a plain state_dict without a diskrobust model description, so its geometry must be "
                              f"stated: pass {', '.join('--' + k for k in needed)} (as the weights were trained)")
    net = {"_target_": NETWORK_TARGET, "in_channels": 1, "num_points": 176}
    net.update({k: _plain(v) for k, v in o.items() if k in _NET_ARGS})
    net["spatial_size"] = int(o["patch_size"])
    net["width"] = int(o["width"])
    return {"format": MODEL_FORMAT, "network_def": net,
            "patch": {"size": int(o["patch_size"]), "spacing_mm": float(o["patch_spacing_mm"])},
            "intensity": dict(DEFAULT_INTENSITY), "shape_pca_mean": None,
            "training": {"config_digest": "", "settings": {}, "data_digest": ""}, "stated_by_user": True}


def read_model_description(path: str | Path, overrides: Mapping | None = None) -> dict:
    """The description of the model file at `path`, checked against `overrides` (None values = take the
    model's). A plain state_dict gets its description from the overrides, which must then state
    width, patch_size and patch_spacing_mm."""
    state, desc = split_checkpoint(read_checkpoint(path), path)
    if desc is None:
        return _described_from_overrides(overrides, path)
    if desc.get("format") != MODEL_FORMAT:
        raise DataError(path, f"model description format {desc.get('format')!r}, expected {MODEL_FORMAT!r}")
    check_overrides(desc, overrides, path)
    return desc


def network_from_description(description: Mapping, **overrides) -> torch.nn.Module:
    """A fresh `DiskShapeNet` (no weights loaded) built as the description says.

    `overrides` (DiskShapeNet arguments, e.g. a config's `--network_def#width 8`) must agree with the
    description (DataError otherwise); `export=True` is allowed (same weights, one-tensor forward).
    """
    from diskrobust.networks import DiskShapeNet

    export = bool(overrides.pop("export", False))
    check_overrides(description, overrides, "model description")
    net = dict(description["network_def"])
    net.update({k: v for k, v in overrides.items() if v is not None})
    if export:
        net["export"] = True
    target = net.pop("_target_", NETWORK_TARGET)
    if target != NETWORK_TARGET:
        raise ValueError(f"network_def _target_ {target!r} is not {NETWORK_TARGET!r}")
    if "blocks" in net:
        net["blocks"] = tuple(net["blocks"])
    return DiskShapeNet(**net)


def save_model(path: str | Path, network: torch.nn.Module, description: Mapping) -> None:
    """Write {"model": state_dict, DESCRIPTION_KEY: description} to `path` (atomically: a temp file renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = getattr(network, "module", network)
    tmp = path.with_name(path.name + ".partial")
    torch.save({"model": module.state_dict(), DESCRIPTION_KEY: _plain(description)}, tmp)
    tmp.replace(path)


def load_model_weights(network: torch.nn.Module, path: str | Path, overrides: Mapping | None = None) -> dict:
    """Load the weights of the model file `path` into `network` (strict, finite, description checked
    against `overrides`); returns the description."""
    state, desc = split_checkpoint(read_checkpoint(path), path)
    if desc is not None:
        check_overrides(desc, overrides, path)
    load_weights(network, state, path)
    return desc if desc is not None else {}


def initial_weights(network: torch.nn.Module, ckpt: str | Path = "", mean_shape=None,
                    overrides: Mapping | None = None) -> dict:
    """A training run's starting point: the weights of `ckpt` (fine-tuning; checked like
    `load_model_weights`, the run's own geometry as `overrides`), else `mean_shape` (N, 2) as the point
    head's base shape. Returns the description of `ckpt` ({} without one)."""
    if ckpt:
        desc = load_model_weights(network, ckpt, overrides)
        logger.info("initial weights loaded from %s", ckpt)
        return desc
    module = getattr(network, "module", network)
    if mean_shape is not None and getattr(module, "has_point_head", False):
        module.set_mean_shape(mean_shape)
    return {}


def continued_steps(ckpt: str | Path = "") -> dict:
    """{"iteration", "epoch"} where a run fine-tuning from model file `ckpt` continues its TensorBoard steps:
    the planned end of the run that wrote it (0, 0 without `ckpt` or without a description)."""
    if not ckpt:
        return {"iteration": 0, "epoch": 0}
    _, desc = split_checkpoint(read_checkpoint(ckpt), ckpt)
    training = (desc or {}).get("training", {})
    return {"iteration": int(training.get("final_iteration", 0)), "epoch": int(training.get("final_epoch", 0))}


def build_model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                                overrides: Mapping | None = None) -> tuple[torch.nn.Module, dict]:
    """(network on `device` in eval mode with the file's weights, description).

    The network is built from the file's description; an override that disagrees with it is refused
    (DataError naming both values). A plain state_dict needs width, patch_size and patch_spacing_mm in
    `overrides`.
    """
    state, desc = split_checkpoint(read_checkpoint(path), path)
    if desc is None:
        desc = _described_from_overrides(overrides, path)
    else:
        check_overrides(desc, overrides, path)
    network = network_from_description(desc)
    load_weights(network, state, path)
    return network.to(torch.device(device)).eval(), desc


# --------------------------------------------------------------------------------------------------
# training: what the checkpoint savers store besides the weights


class ModelDescriptionState:
    """The description as a checkpoint item: `CheckpointSaver(save_dict={"model": net, DESCRIPTION_KEY: this})`.

    `state_dict()` describes the network at save time (its mean shape, the trainer's counters).
    `load_state_dict(d)` (resuming) refuses a checkpoint whose network, patch geometry, settings or data
    differ from this run's, naming the difference: resuming must continue the same run.
    """

    # settings a resumed run may change (e.g. --resume true --epochs 20 trains longer)
    RESUME_MAY_CHANGE = ("epochs",)

    def __init__(self, network, patch_size: int, patch_spacing_mm: float, settings: Mapping | None = None,
                 data_digest: str = "", trainer=None, intensity: Mapping | None = None):
        self.network, self.patch_size, self.patch_spacing_mm = network, int(patch_size), float(patch_spacing_mm)
        self.settings, self.data_digest, self.trainer, self.intensity = settings, str(data_digest), trainer, intensity
        self.loaded: dict | None = None

    def attach(self, engine) -> None:
        """Record `engine` (the trainer) so each description carries its epoch and iteration."""
        self.trainer = engine

    def describe(self) -> dict:
        return describe_model(self.network, self.patch_size, self.patch_spacing_mm, self.intensity,
                              self.settings, self.data_digest, self.trainer)

    def state_dict(self) -> dict:
        return self.describe()

    def load_state_dict(self, state: Mapping) -> None:
        mine = self.describe()
        diffs = []
        for section in ("network_def", "patch"):
            for key in sorted(set(mine[section]) | set(state.get(section, {}))):
                a, b = state.get(section, {}).get(key), mine[section].get(key)
                if not _same(a, b):
                    diffs.append(f"{section}.{key}: checkpoint {a}, this run {b}")
        theirs, ours = state.get("training", {}), mine["training"]
        old, new = theirs.get("settings") or {}, ours.get("settings") or {}
        changed = [k for k in sorted(set(old) | set(new))
                   if k not in self.RESUME_MAY_CHANGE and not _same(old.get(k), new.get(k))]
        if changed:
            diffs.append("the settings differ (" + ", ".join(f"{k}: checkpoint {old.get(k)}, this run {new.get(k)}"
                                                             for k in changed) + ")")
        if theirs.get("data_digest") and ours.get("data_digest") and theirs["data_digest"] != ours["data_digest"]:
            diffs.append("the training data differ (another dataset, or its files changed)")
        if diffs:
            raise DataError("resume", "the checkpoint is from another run: " + "; ".join(diffs)
                                      + ". Resume with the same settings, or start over with --overwrite true")
        self.loaded = dict(state)


class BestModelState:
    """Makes the best-model bookkeeping part of the full checkpoint, so a resumed run keeps it.

    Without it a resumed run forgets the best score so far: the CheckpointSaver's first validation
    would overwrite model.pt even when worse, and the evaluator would report a "new best". Holds the
    saver's list of (score, file) and the evaluator's best_metric / best_metric_epoch, as plain
    numbers and strings so `torch.load(weights_only=True)` (used by CheckpointLoader) accepts them.
    """

    def __init__(self, saver, evaluator=None):
        self.saver = saver
        self.evaluator = evaluator

    def _checkpoint(self):
        # MONAI's CheckpointSaver keeps its ignite Checkpoint for the key metric here and has no public accessor
        ckpt = getattr(self.saver, "_key_metric_checkpoint", None)
        if ckpt is None:
            raise ValueError("BestModelState needs a CheckpointSaver with save_key_metric=True")
        return ckpt

    def state_dict(self) -> dict:
        if self.saver is None:  # a distributed rank that does not save
            return {}
        state: dict = {"saved": [[float(priority), str(name)] for priority, name in self._checkpoint()._saved]}
        if self.evaluator is not None:
            state["best_metric"] = float(self.evaluator.state.best_metric)
            state["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        return state

    def load_state_dict(self, state: Mapping) -> None:
        if self.saver is not None:
            self.saver.load_state_dict({"_saved": [(p, n) for p, n in state.get("saved", [])]})
        if self.evaluator is not None and "best_metric" in state:  # restored on every rank: they all validate
            self.evaluator.state.best_metric = float(state["best_metric"])
            self.evaluator.state.best_metric_epoch = int(state["best_metric_epoch"])


# --------------------------------------------------------------------------------------------------
# full checkpoints in a folder: list, latest, resume, start over


def list_checkpoints(ckpt_dir: str | Path, prefix: str = CHECKPOINT_PREFIX) -> list[tuple[int, Path]]:
    """Full checkpoints `{prefix}_epoch=N.pt` in `ckpt_dir` as (N, path), newest first."""
    found = []
    for path in Path(ckpt_dir).glob(f"{prefix}_epoch=*.pt"):
        try:
            found.append((int(path.stem.split("=")[-1]), path))
        except ValueError:
            continue
    return sorted(found, reverse=True)


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = CHECKPOINT_PREFIX) -> str | None:
    """The newest complete full checkpoint, or None.

    A run killed while writing leaves a truncated file; torch's format is a zip whose directory is
    written last, so a file that is not a valid zip is skipped in favour of the one before it.
    """
    for _, path in list_checkpoints(ckpt_dir, prefix):
        if zipfile.is_zipfile(path):
            return str(path)
        logger.warning("skipping incomplete checkpoint %s", path)
    return None


def resume_checkpoint(ckpt_dir: str | Path, resume: bool) -> str | None:
    """Path to resume from when `resume` is true (FileNotFoundError when there is none), else None."""
    from diskrobust.bundle_checks import as_bool

    if not as_bool(resume, "resume"):
        return None
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        raise FileNotFoundError(f"resume=true but no complete {CHECKPOINT_PREFIX}_epoch=N.pt in {ckpt_dir}")
    logger.info("resuming from %s", path)
    return path


_RUN_OUTPUTS = ("model.pt", "shape_pca.npz")


def _move_aside(folder: Path, files: list[Path], logs: list[Path]) -> Path:
    aside = folder / time.strftime("previous_%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while aside.exists():
        aside = folder / f"{aside.name.split('.')[0]}.{n}"
        n += 1
    aside.mkdir(parents=True)
    for p in files:
        shutil.move(str(p), str(aside / p.name))
    if logs:
        (aside / "logs").mkdir()
        for p in logs:
            shutil.move(str(p), str(aside / "logs" / p.name))
    return aside


def prepare_output_folder(ckpt_dir: str | Path, resume=False, overwrite=False, log_dir: str | Path | None = None,
                          prefix: str = CHECKPOINT_PREFIX) -> str | None:
    """Make `ckpt_dir` ready for a training run; returns where the old outputs went (or None).

    A folder holding another run (full checkpoints or TensorBoard files) is refused (DataError) unless
    `resume` (continue it) or `overwrite` (start over). Starting over moves that run's checkpoints,
    model.pt, shape_pca.npz and, with `log_dir`, its TensorBoard files into
    `<ckpt_dir>/previous_<UTC time>/`, never deletes them. A model.pt without a run (e.g. the model the
    bundle ships) is moved there too, with a warning, so a new run never overwrites it unseen.
    """
    from diskrobust.bundle_checks import as_bool

    resume, overwrite = as_bool(resume, "resume"), as_bool(overwrite, "overwrite")
    if resume and overwrite:
        raise ValueError("resume and overwrite are both true: choose one (continue the run, or start over)")
    folder = Path(ckpt_dir)
    ckpts = [p for _, p in list_checkpoints(folder, prefix)]
    outputs = [folder / n for n in _RUN_OUTPUTS if (folder / n).exists()]
    logs = sorted(Path(log_dir).glob("events.out.tfevents.*")) if log_dir and Path(log_dir).is_dir() else []
    if resume or not (ckpts or outputs or logs):
        return None
    if (ckpts or logs) and not overwrite:
        found = sorted(p.name for p in ckpts + logs)
        raise DataError(folder, f"holds another run's outputs ({', '.join(found[:4])}{' ...' if len(found) > 4 else ''}): "
                                "pass --resume true to continue that run, --overwrite true to start over (the old "
                                "files are moved aside), or another --output_dir")
    aside = _move_aside(folder, ckpts + outputs, logs)
    logger.warning("the previous outputs in %s were moved to %s (never deleted)", folder, aside)
    return str(aside)
