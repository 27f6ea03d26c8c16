"""The robustness sweep: clean metrics, an IND PGD sweep over epsilon, an OOD attack sweep.

`run_robustness_sweep(model, dataset, config, output_dir)` is the engine the bundle
`bundles/lumbar_disk_attack` and the study runner call. The work is split into "units", one per
(sweep, attack, head, eps), each saved as soon as it is done to
`<output_dir>/units/<sweep>/<attack>/<head>/eps<eps>.json` together with a fingerprint of everything
that determines it (the network's weights, the test samples, the seed and the unit's attack
settings). A re-run reuses every unit whose file and fingerprint match, so an interrupted sweep
resumes where it stopped and a changed setting recomputes only what it affects.

Sweeps:
    clean  the network on the test patches; the eps = 0 point of every IND curve.
    ind    PGD (`diskrobust.attacks.PGD`) untargeted, per attack (norm "linf" or "l2"), per attacked
           head ("points": point SSE, "seg": 1 - soft Dice, "both": their sum), per eps; metrics vs the
           true contour.
    ood    `diskrobust.attacks.OODAttack` from start images ("uniform_noise", "box_noise", "natural":
           scikit-image sample photos) towards the network's own outputs on the test patches, per L2
           budget; metrics vs that target (how closely the fooled network reproduces an in-distribution
           disk). eps = 0 is the start image unattacked.

Randomness: every unit's seed is derived from `config.seed` and the unit's name, so a unit gives the
same numbers whether it runs first, last or in a resumed run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from diskrobust.data.errors import DataError
from diskrobust.handlers.tensorboard_attack import AttackTensorBoardLogger, eps_tag
from diskrobust.study import results

__all__ = [
    "IND_ATTACKS", "HEADS", "OOD_STARTS", "PROFILES",
    "IndConfig", "OodConfig", "SweepConfig", "TestSet",
    "load_profile", "load_test_set", "load_network_checkpoint", "run_robustness_sweep",
    "BundleEvaluation", "default_bundle_root",
]

logger = logging.getLogger(__name__)

# IND attack name -> PGD norm.
IND_ATTACKS = {"linf": "linf", "l2": "l2"}
# Attacked head -> the network outputs it needs.
HEADS = {"points": ("pred",), "seg": ("seg",), "both": ("pred", "seg")}
OOD_STARTS = ("uniform_noise", "box_noise", "natural")
PROFILES = ("cpu-quick", "paper")
_UPDATES = ("sign", "adamax")
_OOD_OPTIMIZERS = ("adamax", "adam", "sgd")


def _check_grid(values: Any, where: str, allow_zero: bool = False) -> list[float]:
    """A sorted, strictly increasing, non-empty list of finite eps > 0 (>= 0 with allow_zero)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{where}: the epsilon grid must be a non-empty list, got {values!r}")
    try:
        grid = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: the epsilon grid must hold numbers, got {values!r}") from None
    bad = [v for v in grid if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero)]
    if bad:
        raise ValueError(f"{where}: epsilons must be finite and {'>=' if allow_zero else '>'} 0 "
                         f"(eps 0, the clean model, is always included), got {bad} in {grid}")
    if any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError(f"{where}: the epsilon grid must be sorted ascending without repeats, got {grid}")
    return grid


def _check_int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_names(values: Any, known: Sequence[str], where: str, what: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{where} must be a non-empty list of {what} names from {list(known)}, got {values!r}")
    unknown = [v for v in values if v not in known]
    if unknown:
        raise ValueError(f"{where}: unknown {what} name(s) {unknown}; known: {list(known)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{where}: repeated {what} names in {list(values)}")
    return list(values)


def _reject_unknown_keys(d: Mapping, allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; allowed: {sorted(allowed)}")


@dataclass
class IndConfig:
    """IND PGD sweep. step = eps * step_ratio (paper: eps / 5); update "adamax" is the paper's evaluation."""

    attacks: list[str] = field(default_factory=lambda: ["linf"])
    eps: dict[str, list[float]] = field(default_factory=lambda: {
        "linf": [0.01, 0.03, 0.05, 0.07, 0.1, 0.2], "l2": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]})
    heads: list[str] = field(default_factory=lambda: ["points", "seg", "both"])
    steps: int = 100
    step_ratio: float = 0.2
    update: str = "adamax"
    random_start: bool = True
    restarts: int = 1
    point_loss: str = "sse"
    enabled: bool = True

    def validate(self, where: str = "ind") -> IndConfig:
        self.attacks = _check_names(self.attacks, list(IND_ATTACKS), f"{where}.attacks", "attack")
        if not isinstance(self.eps, Mapping):
            raise ValueError(f"{where}.eps must map attack name -> epsilon grid, got {self.eps!r}")
        missing = [a for a in self.attacks if a not in self.eps]
        if missing:
            raise ValueError(f"{where}.eps has no epsilon grid for attack(s) {missing}")
        unknown = [name for name in self.eps if name not in IND_ATTACKS]
        if unknown:
            raise ValueError(f"{where}.eps: unknown attack name(s) {unknown}; known: {list(IND_ATTACKS)}")
        self.eps = {name: _check_grid(grid, f"{where}.eps.{name}") for name, grid in self.eps.items()}
        self.heads = _check_names(self.heads, list(HEADS), f"{where}.heads", "head")
        self.steps = _check_int(self.steps, f"{where}.steps", 1)
        self.restarts = _check_int(self.restarts, f"{where}.restarts", 1)
        if not (isinstance(self.step_ratio, (int, float)) and math.isfinite(self.step_ratio) and self.step_ratio > 0):
            raise ValueError(f"{where}.step_ratio must be a number > 0, got {self.step_ratio!r}")
        if self.update not in _UPDATES:
            raise ValueError(f"{where}.update must be one of {list(_UPDATES)}, got {self.update!r}")
        if self.point_loss not in ("sse", "mae"):
            raise ValueError(f"{where}.point_loss must be 'sse' or 'mae', got {self.point_loss!r}")
        return self


@dataclass
class OodConfig:
    """OOD sweep: start images attacked towards in-distribution outputs within an L2 budget (paper: 40, 4000 steps)."""

    starts: list[str] = field(default_factory=lambda: list(OOD_STARTS))
    eps: list[float] = field(default_factory=lambda: [40.0])
    heads: list[str] = field(default_factory=lambda: ["both"])
    steps: int = 4000
    lr: float = 0.01
    optimizer: str = "adamax"
    random_start: bool = True
    num_samples: int | None = None
    enabled: bool = True

    def validate(self, where: str = "ood") -> OodConfig:
        self.starts = _check_names(self.starts, OOD_STARTS, f"{where}.starts", "OOD start image")
        self.eps = _check_grid(self.eps, f"{where}.eps")
        self.heads = _check_names(self.heads, list(HEADS), f"{where}.heads", "head")
        self.steps = _check_int(self.steps, f"{where}.steps", 1)
        if self.num_samples is not None:
            self.num_samples = _check_int(self.num_samples, f"{where}.num_samples", 1)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"{where}.lr must be a number > 0, got {self.lr!r}")
        if self.optimizer not in _OOD_OPTIMIZERS:
            raise ValueError(f"{where}.optimizer must be one of {list(_OOD_OPTIMIZERS)}, got {self.optimizer!r}")
        return self


@dataclass
class SweepConfig:
    """Everything that decides what a sweep computes.

    num_samples: the first N test patches (None: all). tolerance_px: a sample is "within tolerance" if its
    mean point error is <= this. tensorboard_images: samples with images per epsilon in TensorBoard.
    """

    profile: str = "custom"
    description: str = ""
    seed: int = 0
    num_samples: int | None = 16
    batch_size: int = 16
    tolerance_px: float = 2.0
    tensorboard_images: int = 4
    ind: IndConfig = field(default_factory=IndConfig)
    ood: OodConfig = field(default_factory=OodConfig)

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "sweep config") -> SweepConfig:
        """Build and validate; unknown keys, names and bad grids raise ValueError naming the setting."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where} must be a dict, got {type(d).__name__}")
        top = [f for f in cls.__dataclass_fields__ if f not in ("ind", "ood")] + ["ind", "ood"]
        _reject_unknown_keys(d, top, where)
        ind_d = dict(d.get("ind", {}))
        ood_d = dict(d.get("ood", {}))
        _reject_unknown_keys(ind_d, list(IndConfig.__dataclass_fields__), f"{where}: ind")
        _reject_unknown_keys(ood_d, list(OodConfig.__dataclass_fields__), f"{where}: ood")
        kwargs = {k: v for k, v in d.items() if k not in ("ind", "ood")}
        cfg = cls(**kwargs, ind=IndConfig(**ind_d), ood=OodConfig(**ood_d))
        return cfg.validate()

    def validate(self) -> SweepConfig:
        self.seed = _check_int(self.seed, "seed", 0)
        if self.num_samples is not None:
            self.num_samples = _check_int(self.num_samples, "num_samples", 1)
        self.batch_size = _check_int(self.batch_size, "batch_size", 1)
        self.tensorboard_images = _check_int(self.tensorboard_images, "tensorboard_images", 0)
        if not (isinstance(self.tolerance_px, (int, float)) and self.tolerance_px >= 0):
            raise ValueError(f"tolerance_px must be a number >= 0, got {self.tolerance_px!r}")
        self.ind.validate()
        self.ood.validate()
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _deep_merge(base: Mapping, update: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def load_profile(profile: str, profiles_dir: str | Path | None = None,
                 overrides: Mapping | None = None) -> SweepConfig:
    """A profile (a name in `profiles_dir`, e.g. "cpu-quick", or a path to a JSON file), deep-merged with
    `overrides` (e.g. {"ind": {"steps": 5}}), validated."""
    path = Path(profile)
    if path.suffix != ".json":
        if profiles_dir is None:
            raise ValueError(f"profile {profile!r} is a name but no profiles folder was given")
        path = Path(profiles_dir) / f"{profile}.json"
    if not path.is_file():
        known = sorted(p.stem for p in Path(profiles_dir).glob("*.json")) if profiles_dir else []
        raise DataError(path, f"no such profile file (known profiles: {known})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err}") from None
    data.setdefault("profile", path.stem)
    if overrides:
        if not isinstance(overrides, Mapping):
            raise ValueError(f"sweep overrides must be a dict like {{'ind': {{'steps': 5}}}}, got {overrides!r}")
        data = _deep_merge(data, overrides)
    try:
        return SweepConfig.from_dict(data, where=f"profile {path}")
    except (TypeError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(path, f"invalid sweep settings (after overrides {dict(overrides or {})}): {err}") from None


# ---------------------------------------------------------------------------------------------- data


@dataclass
class TestSet:
    """The test patches as tensors (CPU): images (N, 1, H, W), points (N, 176, 2), mask (N, 1, H, W)."""

    __test__ = False  # not a pytest test class despite its name

    images: torch.Tensor
    points: torch.Tensor
    mask: torch.Tensor
    subjects: list[str]
    levels: list[str]
    spacing_mm: float
    source: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in (self.images, self.points, self.mask):
            h.update(t.contiguous().numpy().tobytes())
        h.update(json.dumps([self.subjects, self.levels, self.spacing_mm]).encode())
        return h.hexdigest()[:16]


def _plain(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def load_test_set(dataset, num_samples: int | None = None, spacing_mm: float | None = None) -> TestSet:
    """The first `num_samples` items of a dataset of dicts ("image", "points", "mask", "subject", "level").

    Accepts a `DiskPatchDataset` (spacing from its `patch_spacing_mm`), any sequence of such dicts, or a
    `TestSet` (sliced). Raises DataError for an empty dataset or items missing keys.
    """
    source = str(getattr(dataset, "datalist_path", "") or type(dataset).__name__)
    if isinstance(dataset, TestSet):
        n = len(dataset) if num_samples is None else min(num_samples, len(dataset))
        if n == 0:
            raise DataError(dataset.source, "the test set is empty")
        return TestSet(dataset.images[:n], dataset.points[:n], dataset.mask[:n], dataset.subjects[:n],
                       dataset.levels[:n], dataset.spacing_mm, dataset.source)
    total = len(dataset)
    if total == 0:
        raise DataError(source, "the test split holds no disk patches (empty datalist or split)")
    n = total if num_samples is None else min(int(num_samples), total)
    if spacing_mm is None:
        spacing_mm = getattr(dataset, "patch_spacing_mm", None) or getattr(getattr(dataset, "bank", None),
                                                                           "patch_spacing_mm", None) or 0.5
    images, points, masks, subjects, levels = [], [], [], [], []
    for i in range(n):
        item = dataset[i]
        missing = [k for k in ("image", "points", "mask") if k not in item]
        if missing:
            raise DataError(source, f"item {i} lacks {missing} (needs image, points, mask)")
        images.append(_plain(item["image"]).float().reshape(1, *_plain(item["image"]).shape[-2:]))
        points.append(_plain(item["points"]).float().reshape(-1, 2))
        masks.append(_plain(item["mask"]).float().reshape(1, *_plain(item["mask"]).shape[-2:]))
        subjects.append(str(item.get("subject", f"item{i}")))
        levels.append(str(item.get("level", "")))
    return TestSet(torch.stack(images), torch.stack(points), torch.stack(masks), subjects, levels,
                   float(spacing_mm), source)


# ------------------------------------------------------------------------------------------- network


def _state_dict_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A plain state_dict, or one wrapped as {"model"|"network"|"state_dict": state_dict} (Ignite checkpoints)."""
    if isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("model", "network", "state_dict", "net"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(torch.is_tensor(v) for v in inner.values()):
                return dict(inner)
    raise DataError(path, f"not a network state_dict (a {type(obj).__name__}"
                          f"{' with keys ' + str(sorted(obj)[:8]) if isinstance(obj, Mapping) else ''})")


def load_network_checkpoint(network: nn.Module, ckpt_path: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """Load `ckpt_path` into `network` strictly; a mismatch raises DataError listing the keys and shapes.

    The error says which network parameters to change: the bundle's `network_def` must match the one
    the checkpoint was trained with (e.g. `--network_def#width 8`).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt/non-torch files
        raise DataError(path, f"cannot be read as a torch checkpoint: {type(err).__name__}: {err}") from None
    state = _state_dict_from(obj, path)
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def listed(items: list[str]) -> str:
            return "; ".join(items[:6]) + (f" (and {len(items) - 6} more)" if len(items) > 6 else "")

        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {listed(shapes)}")
        if missing:
            parts.append(f"{len(missing)} key(s) missing from the checkpoint: {listed(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) in the checkpoint: {listed(unexpected)}")
        desc = ", ".join(f"{k}={getattr(network, k)}" for k in ("width", "blocks", "has_point_head", "has_seg_head",
                                                                 "spatial_size", "num_points") if hasattr(network, k))
        raise DataError(path, f"does not match the network ({type(network).__name__}: {desc}): " + " | ".join(parts)
                        + ". Give the network the parameters the checkpoint was trained with (bundle overrides such as "
                          "--width 8 or --network_def#blocks \"[2, 2, 2, 2]\"; check the training config).")
    network.load_state_dict(state, strict=True)
    if device is not None:
        network.to(device)
    return network.eval()


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the network's weights and buffers (what makes cached units valid)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def network_outputs(model: nn.Module, image_shape: Sequence[int]) -> list[str]:
    """Keys of the network's output dict for one zero image of shape (1, H, W)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *image_shape), device=device))
    finally:
        model.train(was_training)
    if not isinstance(out, Mapping):
        raise ValueError(f"the network must return a dict with 'pred' and/or 'seg', got {type(out).__name__}")
    return sorted(out)


def check_heads(config: SweepConfig, outputs: Sequence[str]) -> None:
    """Every attacked head must exist in the network: raise ValueError naming the head and the outputs."""
    wanted = []
    if config.ind.enabled:
        wanted += [("ind.heads", h) for h in config.ind.heads]
    if config.ood.enabled:
        wanted += [("ood.heads", h) for h in config.ood.heads]
    for where, head in wanted:
        absent = [o for o in HEADS[head] if o not in outputs]
        if absent:
            raise ValueError(f"{where}: head {head!r} needs network output(s) {absent}, but the network "
                             f"returns only {list(outputs)}")


# ----------------------------------------------------------------------------------------- the units


def derive_seed(seed: int, name: str) -> int:
    """A seed for one unit from the run's seed and the unit's name (order-independent, resumable)."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


@dataclass
class Unit:
    sweep: str
    attack: str
    norm: str
    head: str
    eps: float
    steps: int
    params: dict

    @property
    def key(self) -> str:
        if self.sweep == "clean":
            return "clean"
        return f"{self.sweep}/{self.attack}/{self.head}/{eps_tag(self.eps)}"

    @property
    def prefix(self) -> str:
        return f"{self.sweep}/{self.attack}/{self.head}"


def plan_units(cfg: SweepConfig) -> list[Unit]:
    """The units of a sweep in run order: clean, IND (attack, head, eps), OOD (start, head, eps incl. 0)."""
    units = [Unit("clean", "none", "none", "none", 0.0, 0, {})]
    if cfg.ind.enabled:
        for attack in cfg.ind.attacks:
            for head in cfg.ind.heads:
                for eps in cfg.ind.eps[attack]:
                    params = {"steps": cfg.ind.steps, "step_size": eps * cfg.ind.step_ratio, "update": cfg.ind.update,
                              "random_start": cfg.ind.random_start, "restarts": cfg.ind.restarts,
                              "point_loss": cfg.ind.point_loss}
                    units.append(Unit("ind", attack, IND_ATTACKS[attack], head, eps, cfg.ind.steps, params))
    if cfg.ood.enabled:
        for start in cfg.ood.starts:
            for head in cfg.ood.heads:
                for eps in [0.0] + cfg.ood.eps:
                    steps = cfg.ood.steps if eps > 0 else 0
                    params = {"steps": steps, "lr": cfg.ood.lr, "optimizer": cfg.ood.optimizer,
                              "random_start": cfg.ood.random_start, "num_samples": cfg.ood.num_samples}
                    units.append(Unit("ood", start, "l2", head, eps, steps, params))
    return units


def _metrics_module():
    from diskrobust import metrics

    return metrics


@torch.no_grad()
def _evaluate(model: nn.Module, images: torch.Tensor, ref_points: torch.Tensor | None,
              poly_mask: torch.Tensor | None, seg_mask: torch.Tensor | None, spacing_mm: float) -> dict[str, np.ndarray]:
    """Metrics (B,) of the network on `images` against a reference: point error px/mm, polygon and seg Dice.

    ref_points (B, N, 2); poly_mask, seg_mask (B, 1, H, W). NaN where the network lacks the head.
    Also returns the predicted points (B, N, 2) or None under "_pred".
    """
    m = _metrics_module()
    out = model(images)
    b = images.shape[0]
    nan = np.full(b, np.nan)
    res = {"point_error_px": nan, "point_error_mm": nan, "polygon_dice": nan, "seg_dice": nan, "_pred": None}
    if "pred" in out and ref_points is not None:
        pred = out["pred"]
        res["point_error_px"] = m.mean_point_distance(pred, ref_points).cpu().numpy().astype(float)
        res["point_error_mm"] = m.mean_point_distance(pred, ref_points, spacing_mm=(spacing_mm, spacing_mm)).cpu().numpy().astype(float)
        res["_pred"] = pred.detach()
    if "pred" in out and poly_mask is not None:
        res["polygon_dice"] = m.polygon_dice(out["pred"], poly_mask).cpu().numpy().astype(float)
        res["_pred"] = out["pred"].detach()
    if "seg" in out and seg_mask is not None:
        res["seg_dice"] = m.seg_dice(out["seg"], seg_mask).cpu().numpy().astype(float)
    return res


def _rows(unit: Unit, ids: Sequence[int], test: TestSet, metrics: Mapping, losses, deltas: torch.Tensor | None,
          reference: str) -> list[dict]:
    b = len(ids)
    if deltas is not None:
        flat = deltas.detach().flatten(1).float().cpu()
        linf, l2 = flat.abs().amax(1).numpy(), flat.norm(dim=1).numpy()
    else:
        linf = l2 = np.zeros(b)
    losses = np.full(b, np.nan) if losses is None else losses.detach().cpu().numpy().astype(float)
    rows = []
    for j, i in enumerate(ids):
        rows.append({
            "sample_id": int(i), "subject": test.subjects[i], "level": test.levels[i], "sweep": unit.sweep,
            "attack": unit.attack, "norm": unit.norm, "head": unit.head, "eps": float(unit.eps), "steps": unit.steps,
            "reference": reference,
            **{k: float(metrics[k][j]) for k in results.METRICS},
            "attack_loss": float(losses[j]), "delta_linf": float(linf[j]), "delta_l2": float(l2[j]),
        })
    return rows


def _batches(n: int, batch_size: int):
    for b, start in enumerate(range(0, n, batch_size)):
        yield b, list(range(start, min(n, start + batch_size)))


def _ood_starts(kind: str, n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """(n, 1, H, W) start images of one kind, the same for every budget and head of that kind."""
    from diskrobust.attacks import box_noise, natural_images, uniform_noise

    gen = torch.Generator().manual_seed(derive_seed(seed, f"ood_start/{kind}"))
    if kind == "uniform_noise":
        return uniform_noise(n, size, generator=gen)
    if kind == "box_noise":
        return box_noise(n, size, generator=gen)
    images, _ = natural_images(n, size)
    return images


class _Runner:
    """Computes one unit at a time; holds the test set and the OOD targets."""

    # Attacks with at least this many steps get their own (transient) progress bar: a paper-profile
    # unit runs for minutes, the unit bar alone would look stuck.
    INNER_BAR_STEPS = 100

    def __init__(self, model: nn.Module, test: TestSet, cfg: SweepConfig, tb: AttackTensorBoardLogger | None,
                 progress: bool = False):
        self.model, self.test, self.cfg, self.tb = model, test, cfg, tb
        self.progress = progress
        self.device = next(model.parameters()).device
        self._ood_targets: dict[str, torch.Tensor] | None = None
        self._clean_pred: torch.Tensor | None = None

    def _dev(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    def clean_predictions(self) -> torch.Tensor | None:
        """(N, 176, 2) the clean predictions (for the IND contour images), None without a point head."""
        if self._clean_pred is None:
            preds = []
            with torch.no_grad():
                for _, ids in _batches(len(self.test), self.cfg.batch_size):
                    out = self.model(self._dev(self.test.images[ids]))
                    if "pred" not in out:
                        return None
                    preds.append(out["pred"].cpu())
            self._clean_pred = torch.cat(preds)
        return self._clean_pred

    def ood_targets(self) -> dict[str, torch.Tensor]:
        """The network's outputs on the first ood.num_samples test patches: points, seg mask, polygon mask."""
        if self._ood_targets is None:
            from diskrobust.attacks import targets_from_model
            from diskrobust.data.contours import polygon_fill_torch

            n = self.n_ood
            parts: dict[str, list] = {}
            for _, ids in _batches(n, self.cfg.batch_size):
                t = targets_from_model(self.model, self._dev(self.test.images[ids]))
                for k, v in t.items():
                    parts.setdefault(k, []).append(v.cpu())
            targets = {k: torch.cat(v) for k, v in parts.items()}
            if "points" in targets:
                h, w = self.test.images.shape[-2:]
                targets["polygon"] = polygon_fill_torch(targets["points"], (h, w)).float().reshape(n, 1, h, w)
            self._ood_targets = targets
        return self._ood_targets

    @property
    def n_ood(self) -> int:
        return len(self.test) if self.cfg.ood.num_samples is None else min(self.cfg.ood.num_samples, len(self.test))

    def run(self, unit: Unit) -> list[dict]:
        if unit.sweep == "clean":
            return self._clean(unit)
        if unit.sweep == "ind":
            return self._ind(unit)
        return self._ood(unit)

    def _clean(self, unit: Unit) -> list[dict]:
        rows = []
        for _, ids in _batches(len(self.test), self.cfg.batch_size):
            x = self._dev(self.test.images[ids])
            mask = self._dev(self.test.mask[ids])
            met = _evaluate(self.model, x, self._dev(self.test.points[ids]), mask, mask, self.test.spacing_mm)
            rows += _rows(unit, ids, self.test, met, None, None, "truth")
        return rows

    def _ind(self, unit: Unit) -> list[dict]:
        from diskrobust.attacks import PGD

        p = unit.params
        seed = derive_seed(self.cfg.seed, unit.key)
        rows = []
        for b, ids in _batches(len(self.test), self.cfg.batch_size):
            x = self._dev(self.test.images[ids])
            points, mask = self._dev(self.test.points[ids]), self._dev(self.test.mask[ids])
            pgd = PGD(self.model, eps=unit.eps, steps=p["steps"], step_size=p["step_size"], norm=unit.norm,
                      random_start=p["random_start"], update=p["update"], objective=unit.head,
                      point_loss=p["point_loss"], restarts=p["restarts"], seed=seed + b,
                      progress=self.progress and p["steps"] >= self.INNER_BAR_STEPS)
            res = pgd(x, {"points": points, "mask": mask})
            met = _evaluate(self.model, res.images, points, mask, mask, self.test.spacing_mm)
            rows += _rows(unit, ids, self.test, met, res.losses, res.deltas, "truth")
            if b == 0 and self.tb is not None and self.tb.num_images:
                clean_pred = self.clean_predictions()
                self.tb.log_ind_examples(unit.prefix, unit.eps, ids, x.cpu(), res.images.cpu(), points.cpu(),
                                         None if clean_pred is None else clean_pred[ids],
                                         None if met["_pred"] is None else met["_pred"].cpu())
        return rows

    def _ood(self, unit: Unit) -> list[dict]:
        from diskrobust.attacks import OODAttack

        n = self.n_ood
        size = tuple(self.test.images.shape[-2:])
        starts_all = _ood_starts(unit.attack, n, size, self.cfg.seed)
        targets_all = self.ood_targets()
        # The attacked head decides which target terms the attack sees; metrics always use all of them.
        use = {"points": ("points",), "seg": ("mask",), "both": ("points", "mask")}[unit.head]
        seed = derive_seed(self.cfg.seed, unit.key)
        rows = []
        for b, ids in _batches(n, self.cfg.batch_size):
            start = self._dev(starts_all[ids])
            tgt = {k: self._dev(v[ids]) for k, v in targets_all.items()}
            if unit.eps > 0:
                attack = OODAttack(self.model, eps=unit.eps, steps=unit.params["steps"], lr=unit.params["lr"],
                                   optimizer=unit.params["optimizer"], random_start=unit.params["random_start"],
                                   seed=seed + b,
                                   progress=self.progress and unit.params["steps"] >= self.INNER_BAR_STEPS)
                res = attack(start, {k: tgt[k] for k in use if k in tgt})
                adv, losses, deltas = res.images, res.losses, res.deltas
            else:
                adv, losses, deltas = start, None, None
            met = _evaluate(self.model, adv, tgt.get("points"), tgt.get("polygon"), tgt.get("mask"),
                            self.test.spacing_mm)
            rows += _rows(unit, ids, self.test, met, losses, deltas, "target")
            if b == 0 and self.tb is not None and self.tb.num_images:
                self.tb.log_ood_examples(unit.prefix, unit.eps, ids, start.cpu(), adv.cpu(),
                                         self.test.images[ids], None if "points" not in tgt else tgt["points"].cpu(),
                                         None if met["_pred"] is None else met["_pred"].cpu())
        return rows


def _unit_summary(rows: Sequence[Mapping], tolerance_px: float) -> dict[str, float]:
    """Scalars of one unit for TensorBoard and the log."""
    def col(k):
        return np.array([float(r[k]) for r in rows], dtype=float)

    err = col("point_error_px")
    ok = np.isfinite(err)
    out = {}
    if ok.any():
        out.update(point_error_px_mean=float(err[ok].mean()), point_error_px_median=float(np.median(err[ok])),
                   point_error_px_p95=float(np.percentile(err[ok], 95)),
                   point_error_mm_mean=float(np.nanmean(col("point_error_mm"))),
                   within_tolerance=float(np.mean(err <= tolerance_px)))
    for k in ("polygon_dice", "seg_dice"):
        v = col(k)
        if np.isfinite(v).any():
            out[f"{k}_mean"] = float(np.nanmean(v))
    return out


def _load_unit(path: Path, fingerprint: str) -> list[dict] | None:
    """The rows of a finished unit, or None when the file is absent, unreadable or from other settings."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("fingerprint") != fingerprint:
        return None
    rows = data.get("rows")
    if not isinstance(rows, list):
        return None
    for r in rows:  # strict JSON stored NaN as null
        for k in results.METRICS:
            if r.get(k) is None:
                r[k] = float("nan")
        if r.get("attack_loss") is None:
            r["attack_loss"] = float("nan")
    return rows


class _EventLog:
    """`sweep.log` in the output folder: one JSON line per unit computed or reused (what resume tests read)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **event) -> None:
        event = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **event}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def run_robustness_sweep(model: nn.Module, dataset, config: SweepConfig | Mapping, output_dir: str | Path,
                         writer=None, progress: bool = True, run_info: Mapping | None = None) -> dict:
    """Run (or resume) the clean / IND / OOD sweep of `model` on `dataset`; write all result files.

    Args:
        model: the network (on its device), returning {"pred": (B, 176, 2), "seg": (B, 1, H, W)} (either may be absent).
        dataset: test patches, see `load_test_set` (DiskPatchDataset, list of dicts or TestSet).
        config: a SweepConfig or a dict for `SweepConfig.from_dict`.
        output_dir: where the files go (see module docstring and docs/robustness_evaluation.md).
        writer: None, a SummaryWriter, a log folder, or an AttackTensorBoardLogger: TensorBoard output
            for the units computed in this call.
        progress: tqdm bar over the units.
        run_info: extra facts recorded in config.json (checkpoint, dataset, network definition).

    Returns {"output_dir", "files": {name: path}, "aggregate": ..., "computed": [unit keys], "reused": [...],
    "seconds"}.
    """
    cfg = config if isinstance(config, SweepConfig) else SweepConfig.from_dict(config)
    cfg.validate()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = load_test_set(dataset, cfg.num_samples)
    check_heads(cfg, network_outputs(model, tuple(test.images.shape[1:])))
    tb = writer if isinstance(writer, AttackTensorBoardLogger) or writer is None else \
        AttackTensorBoardLogger(writer, cfg.tensorboard_images)
    if tb is not None:
        tb.num_images = min(tb.num_images, cfg.tensorboard_images)

    base = {"model": model_fingerprint(model), "data": test.fingerprint(), "seed": cfg.seed,
            "num_samples": len(test), "batch_size": cfg.batch_size}
    units = plan_units(cfg)
    info = {"sweep": cfg.to_dict(), "num_test_samples": len(test), "model_fingerprint": base["model"],
            "data_fingerprint": base["data"], "units": len(units), "environment": results.environment_info(),
            **dict(run_info or {})}
    files = {"config": results.atomic_write_json(out / "config.json", info)}
    log = _EventLog(out / "sweep.log")
    log.write(event="start", profile=cfg.profile, units=len(units), model=base["model"], data=base["data"])

    was_training = model.training
    model.eval()
    runner = _Runner(model, test, cfg, tb, progress)
    all_rows: list[dict] = []
    computed, reused = [], []
    t_start = time.perf_counter()
    try:
        bar = tqdm(units, desc="robustness sweep", disable=not progress, unit="unit")
        for unit in bar:
            bar.set_postfix_str(unit.key, refresh=False)
            path = out / "units" / f"{unit.key}.json"
            fingerprint = hashlib.sha256(json.dumps({**base, "unit": unit.key, "params": unit.params},
                                                    sort_keys=True).encode()).hexdigest()[:16]
            rows = _load_unit(path, fingerprint)
            if rows is not None:
                reused.append(unit.key)
                log.write(event="reused", unit=unit.key)
            else:
                t0 = time.perf_counter()
                rows = runner.run(unit)
                seconds = time.perf_counter() - t0
                results.atomic_write_json(path, {"fingerprint": fingerprint, "unit": unit.key, "params": unit.params,
                                                 "seconds": seconds, "rows": rows})
                computed.append(unit.key)
                summary = _unit_summary(rows, cfg.tolerance_px)
                log.write(event="computed", unit=unit.key, seconds=round(seconds, 3), **summary)
                if tb is not None:
                    if unit.sweep == "clean":
                        for attack in (cfg.ind.attacks if cfg.ind.enabled else []):
                            for head in cfg.ind.heads:
                                tb.log_scalars(f"ind/{attack}/{head}", 0.0, summary)
                    else:
                        tb.log_scalars(unit.prefix, unit.eps, summary)
            all_rows += rows
    finally:
        model.train(was_training)
        if tb is not None:
            tb.flush()

    agg = results.aggregate(all_rows, cfg.tolerance_px)
    per_sample = []
    for r in all_rows:
        err = float(r["point_error_px"])
        per_sample.append({**r, "within_tolerance": "" if math.isnan(err) else int(err <= cfg.tolerance_px)})
    files["per_sample"] = results.write_rows_csv(out / "per_sample.csv", per_sample,
                                                 columns=results.ROW_COLUMNS + ("within_tolerance",))
    files["aggregate"] = results.atomic_write_json(out / "aggregate.json", {"profile": cfg.profile, **agg})
    files["report"] = results.atomic_write_text(out / "report.md", results.markdown_report(agg, _report_header(cfg, info, test)))
    files["plots"] = results.plot_curves(agg, out / "plots")
    seconds = time.perf_counter() - t_start
    log.write(event="done", computed=len(computed), reused=len(reused), seconds=round(seconds, 3))
    return {"output_dir": str(out), "files": files, "aggregate": agg, "computed": computed, "reused": reused,
            "seconds": seconds}


def _report_header(cfg: SweepConfig, info: Mapping, test: TestSet) -> list[str]:
    ind, ood = cfg.ind, cfg.ood
    env = info.get("environment", {})
    lines = [f"# Robustness evaluation ({cfg.profile} profile)", ""]
    if cfg.description:
        lines += [cfg.description, ""]
    if info.get("checkpoint"):
        lines.append(f"- checkpoint: `{info['checkpoint']}` (sha256 {str(info.get('checkpoint_sha256', ''))[:12]})")
    lines += [f"- test patches: {len(test)} from `{test.source}` (patch spacing {test.spacing_mm:g} mm/px), seed {cfg.seed}"]
    if ind.enabled:
        lines.append(f"- IND: PGD {', '.join(f'{a} eps {ind.eps[a]}' for a in ind.attacks)}; {ind.steps} steps, "
                     f"step = eps x {ind.step_ratio:g}, update {ind.update}, random start {ind.random_start}, "
                     f"{ind.restarts} restart(s), heads {ind.heads}, point loss {ind.point_loss}")
    if ood.enabled:
        lines.append(f"- OOD: starts {ood.starts}, L2 eps {ood.eps}, {ood.steps} steps, {ood.optimizer} lr {ood.lr:g}, "
                     f"heads {ood.heads}, {min(len(test), ood.num_samples or len(test))} targets")
    lines.append(f"- tolerance: {cfg.tolerance_px:g} px; versions: torch {env.get('torch')}, monai {env.get('monai')}, "
                 f"diskrobust {env.get('diskrobust')}, git {env.get('git_commit')}")
    return lines


# -------------------------------------------------------------------------------------- bundle entry


def default_bundle_root() -> str:
    """The bundle folder (the one holding configs/), absolute.

    Tried in order: the config folder of the MONAI ConfigWorkflow that is resolving the config (found on
    the call stack: a config expression cannot see its own file), `--config_file` on the command line, this
    checkout's bundles/lumbar_disk_attack, the current folder.
    """
    from monai.bundle import ConfigWorkflow

    candidates: list[Path] = []
    frame = sys._getframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        # only the workflow: other objects on the stack (the ConfigParser) answer any attribute lookup
        if isinstance(owner, ConfigWorkflow):
            candidates.append(Path(owner.config_root_path))
        frame = frame.f_back
    del frame
    argv = sys.argv
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--config_file" and i + 1 < len(argv) else \
            arg.split("=", 1)[1] if arg.startswith("--config_file=") else None
        if value:
            candidates.append(Path(value.strip("[]()'\" ").split(",")[0].strip("'\" ")).parent)
    candidates.append(Path(__file__).resolve().parents[3] / "bundles" / "lumbar_disk_attack" / "configs")
    for cfg_dir in candidates:
        root = cfg_dir.parent if cfg_dir.name == "configs" else cfg_dir
        if (root / "configs" / "evaluate.json").is_file():
            return str(root.resolve())
    return str(Path.cwd())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class BundleEvaluation:
    """What bundles/lumbar_disk_attack/configs/evaluate.json runs: `initialize()` checks every input
    (profile and overrides, checkpoint vs network, dataset) before any work; `run()` does the sweep.

    Args:
        network: the network instance from the bundle's `network_def` (weights are loaded here).
        ckpt_path: a plain state_dict file (models/model.pt of lumbar_disk_shape).
        output_dir: result folder.
        dataset_dir: a dataset folder with datalist.json; if it does not exist or is empty, the phantom
            is generated there (`phantom_subjects`, `phantom_seed`).
        datalist: a datalist file to use instead of `<dataset_dir>/datalist.json`.
        split: the datalist split to evaluate.
        profile: a profile name in `profiles_dir` or a path to a profile JSON.
        sweep_overrides: dict deep-merged into the profile, e.g. {"ind": {"steps": 5}, "num_samples": 4}.
        device: torch device (default: CUDA if available).
        patch_size, patch_spacing_mm: the patch geometry the network was trained with.
        tensorboard: write TensorBoard events to `<output_dir>/tensorboard`.
    """

    def __init__(self, network: nn.Module, ckpt_path: str, output_dir: str, dataset_dir: str | None = None,
                 datalist: str | None = None, split: str = "test", profile: str = "cpu-quick",
                 profiles_dir: str | None = None, sweep_overrides: Mapping | None = None, device=None,
                 patch_size: int = 128, patch_spacing_mm: float = 0.5, phantom_subjects: int = 12,
                 phantom_seed: int = 0, tensorboard: bool = True, progress: bool = True):
        self.network = network
        self.ckpt_path = Path(ckpt_path)
        self.output_dir = Path(output_dir)
        self.dataset_dir = None if dataset_dir in (None, "") else Path(dataset_dir)
        self.datalist = None if datalist in (None, "") else Path(datalist)
        self.split = split
        self.profile = profile
        self.profiles_dir = profiles_dir
        self.sweep_overrides = dict(sweep_overrides or {})
        self.device = torch.device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.patch_size = int(patch_size)
        self.patch_spacing_mm = float(patch_spacing_mm)
        self.phantom_subjects = int(phantom_subjects)
        self.phantom_seed = int(phantom_seed)
        self.tensorboard = _as_bool(tensorboard, "tensorboard")
        self.progress = _as_bool(progress, "progress")
        self.config: SweepConfig | None = None
        self.dataset = None

    def _datalist_path(self) -> Path:
        if self.datalist is not None:
            if not self.datalist.is_file():
                raise DataError(self.datalist, "datalist file not found")
            return self.datalist
        if self.dataset_dir is None:
            raise ValueError("give dataset_dir (a dataset folder) or datalist (a datalist file)")
        from diskrobust.data.phantom import ensure_phantom

        # ensure_phantom generates only into a missing or empty folder (DataError otherwise), so a user's
        # dataset folder without a datalist is never overwritten.
        return Path(ensure_phantom(self.dataset_dir, self.phantom_subjects, self.phantom_seed, progress=self.progress))

    def initialize(self) -> BundleEvaluation:
        """Validate everything (raises DataError/ValueError naming the file or setting) before any work."""
        self.config = load_profile(self.profile, self.profiles_dir, self.sweep_overrides)
        load_network_checkpoint(self.network, self.ckpt_path, self.device)
        datalist = self._datalist_path()
        from diskrobust.datasets import DiskPatchDataset

        self.dataset = DiskPatchDataset(str(datalist), self.split, patch_size=self.patch_size,
                                        patch_spacing_mm=self.patch_spacing_mm)
        if len(self.dataset) == 0:
            raise DataError(datalist, f"split {self.split!r} holds no disk patches")
        check_heads(self.config, network_outputs(self.network, (1, self.patch_size, self.patch_size)))
        self.datalist_path = datalist
        return self

    def run(self) -> dict:
        if self.config is None:
            self.initialize()
        writer = None
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        run_info = {"checkpoint": str(self.ckpt_path.resolve()), "checkpoint_sha256": _sha256(self.ckpt_path),
                    "datalist": str(Path(self.datalist_path).resolve()), "split": self.split,
                    "device": str(self.device), "network": type(self.network).__name__,
                    "network_params": _network_params(self.network)}
        try:
            result = run_robustness_sweep(self.network, self.dataset, self.config, self.output_dir,
                                          writer=AttackTensorBoardLogger(writer, self.config.tensorboard_images)
                                          if writer is not None else None,
                                          progress=self.progress, run_info=run_info)
        finally:
            if writer is not None:
                writer.close()
        logger.info("robustness results in %s (report.md, per_sample.csv, aggregate.json, plots/, tensorboard/)",
                    self.output_dir)
        return result


def _as_bool(value, name: str) -> bool:
    """A flag from the command line: `--progress false` arrives as the string "false"."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _network_params(network: nn.Module) -> dict:
    """The DiskShapeNet hyper-parameters worth recording next to the results."""
    keys = ("in_channels", "num_points", "spatial_size", "width", "blocks", "has_point_head", "has_seg_head")
    params = {k: getattr(network, k) for k in keys if hasattr(network, k)}
    params["parameters"] = sum(p.numel() for p in network.parameters())
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
