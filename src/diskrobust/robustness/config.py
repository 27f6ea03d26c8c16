"""What a robustness sweep computes: its settings, validated before any work.

The attack bundle keeps these settings as config ids (`seed`, `num_samples`, `ind#steps`,
`ood#eps_rms`, ...; profiles are MONAI override files), and `SweepConfig.from_dict` turns them into
one checked object: unknown keys are refused with the closest valid ones, booleans are read strictly
(`"false"` is false), budgets and step counts must lie in range.

Budgets that mean the same at every patch size:
    ind.eps["linf"]  the L-inf radius, per pixel by nature, in (0, 1] on [0, 1] images.
    ind.eps["l2"]    the L2 budget per pixel as an RMS, in (0, 1]; the absolute L2 radius the attack
                     uses is rms * sqrt(H * W) (`absolute_l2`), e.g. 0.0625 -> 4 at 64 x 64, 8 at 128 x 128.
    ood.eps_rms      the OOD attack's L2 budgets per pixel (RMS), likewise. The paper's absolute L2 of 40
                     at 128 x 128 is an RMS of 0.3125: on the demo's 64 x 64 patches the same absolute 40
                     would be an RMS of 0.625, noise that hides the start image entirely.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from diskrobust.bundle_checks import as_bool, check_number, closest
from diskrobust.compute import PRECISIONS, check_channels_last, check_chunks
from diskrobust.data.errors import ConfigError

__all__ = [
    "IND_ATTACKS", "HEADS", "OOD_STARTS", "AuditConfig", "IndConfig", "OodConfig", "SweepConfig", "absolute_l2",
    "SWEEP_SETTINGS",
]

# IND attack name -> the norm its budget is measured in. A new IND attack kind (e.g. APGD) is added
# here and in `diskrobust.robustness.engine.IND_ATTACK_BUILDERS` (how to build it for one unit).
IND_ATTACKS = {"linf": "linf", "l2": "l2", "autoattack_linf": "linf", "autoattack_l2": "l2"}
# The ensemble (diskrobust.attacks.RegressionAutoAttack) without its own ind#eps grid uses the PGD grid of its norm.
_GRID_FALLBACK = {"autoattack_linf": "linf", "autoattack_l2": "l2"}
# Attacked head -> the network outputs it needs.
HEADS = {"points": ("pred",), "seg": ("seg",), "both": ("pred", "seg")}
OOD_STARTS = ("uniform_noise", "box_noise", "natural")
_UPDATES = ("sign", "adamax")
_OOD_OPTIMIZERS = ("adamax", "adam", "sgd")
_POINT_LOSSES = ("sse", "mae")


def absolute_l2(rms: float, image_size: Sequence[int]) -> float:
    """The absolute L2 radius of a per-pixel RMS budget on (H, W) images: rms * sqrt(H * W)."""
    h, w = (int(v) for v in image_size[-2:])
    return float(rms) * math.sqrt(h * w)


def _grid(values: Any, where: str, maximum: float | None = 1.0) -> list[float]:
    """A sorted, strictly increasing, non-empty list of finite budgets in (0, maximum]."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(None, where, f"must be a non-empty list of budgets, got {values!r}")
    grid = [float(check_number(v, where, minimum=0.0, maximum=maximum, min_inclusive=False)) for v in values]
    if any(b <= a for a, b in zip(grid, grid[1:])):
        raise ConfigError(None, where, f"must be sorted ascending without repeats, got {grid}")
    return grid


def _names(values: Any, known: Sequence[str], where: str, what: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(None, where, f"must be a non-empty list of {what} names from {list(known)}, got {values!r}")
    unknown = [v for v in values if v not in known]
    if unknown:
        raise ConfigError(None, where, f"unknown {what} name(s) {unknown}; known: {list(known)}")
    if len(set(values)) != len(values):
        raise ConfigError(None, where, f"repeated {what} names in {list(values)}")
    return list(values)


def _choice(value: Any, choices: Sequence[str], where: str) -> str:
    if value not in choices:
        raise ConfigError(None, where, f"must be one of {list(choices)}, got {value!r}")
    return value


def _reject_unknown(d: Mapping, allowed: Sequence[str], where: str, retired: Mapping[str, str] | None = None) -> None:
    for key in d:
        if key in (retired or {}):
            raise ConfigError(None, f"{where}{key}", f"is no longer a setting: {retired[key]}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        hints = [f"'{where}{k}'" + (f" (closest: {', '.join(repr(where + c) for c in closest(k, allowed))})"
                                    if closest(k, allowed) else "") for k in unknown]
        raise ConfigError(None, ", ".join(where + k for k in unknown), f"unknown setting(s) {'; '.join(hints)}",
                          f"allowed: {sorted(allowed)}")


@dataclass
class IndConfig:
    """IND PGD sweep. step = eps * step_ratio (paper: eps / 5); update "adamax" is the paper's evaluation."""

    attacks: list[str] = field(default_factory=lambda: ["linf"])
    eps: dict[str, list[float]] = field(default_factory=lambda: {
        "linf": [0.01, 0.03, 0.05, 0.07, 0.1, 0.2], "l2": [0.00390625, 0.0078125, 0.015625, 0.03125, 0.0625, 0.125]})
    heads: list[str] = field(default_factory=lambda: ["points", "seg", "both"])
    steps: int = 100
    step_ratio: float = 0.2
    update: str = "adamax"
    random_start: bool = True
    restarts: int = 1
    point_loss: str = "sse"
    queries: int = 1000  # Square queries per sample of the autoattack_* ensemble (0: APGD members only)
    precision: str = "fp32"  # "bf16": PGD's gradient passes under autocast; every score stays fp32
    enabled: bool = True

    def validate(self, where: str = "ind#") -> IndConfig:
        self.enabled = as_bool(self.enabled, f"{where}enabled")
        self.attacks = _names(self.attacks, list(IND_ATTACKS), f"{where}attacks", "attack")
        if not isinstance(self.eps, Mapping):
            raise ConfigError(None, f"{where}eps", f"must map attack name -> budget grid, got {self.eps!r}")
        unknown = [name for name in self.eps if name not in IND_ATTACKS]
        if unknown:
            raise ConfigError(None, f"{where}eps", f"unknown attack name(s) {unknown}; known: {list(IND_ATTACKS)}")
        self.eps = {**{a: self.eps[_GRID_FALLBACK[a]] for a in self.attacks
                       if a not in self.eps and _GRID_FALLBACK.get(a) in self.eps}, **self.eps}
        missing = [a for a in self.attacks if a not in self.eps]
        if missing:
            raise ConfigError(None, f"{where}eps", f"has no budget grid for attack(s) {missing}")
        # every budget is per pixel: L-inf radius, or L2 as an RMS; both lie in (0, 1] on [0, 1] images
        self.eps = {name: _grid(grid, f"{where}eps#{name}") for name, grid in self.eps.items()}
        self.heads = _names(self.heads, list(HEADS), f"{where}heads", "head")
        self.steps = check_number(self.steps, f"{where}steps", minimum=1, integer=True)
        self.restarts = check_number(self.restarts, f"{where}restarts", minimum=1, integer=True)
        self.step_ratio = check_number(self.step_ratio, f"{where}step_ratio", minimum=0, min_inclusive=False)
        self.update = _choice(self.update, _UPDATES, f"{where}update")
        self.random_start = as_bool(self.random_start, f"{where}random_start")
        self.point_loss = _choice(self.point_loss, _POINT_LOSSES, f"{where}point_loss")
        self.queries = check_number(self.queries, f"{where}queries", minimum=0, integer=True)
        self.precision = _choice(self.precision, PRECISIONS, f"{where}precision")
        ensembles = [a for a in self.attacks if a.startswith("autoattack")]
        if self.precision != "fp32" and ensembles:
            raise ConfigError(None, f"{where}precision", f"{self.precision!r} is implemented for the PGD attacks "
                              f"(linf, l2) only; {ensembles} would run in fp32",
                              "remove the autoattack_* attacks from ind#attacks or keep ind#precision fp32")
        return self


_OOD_RETIRED = {"eps": "the OOD budget is per pixel now: give ood#eps_rms (absolute L2 = rms * sqrt(H * W); "
                       "the paper's 40 at 128 x 128 is 0.3125)"}


@dataclass
class OodConfig:
    """OOD sweep: start images attacked towards in-distribution outputs within per-pixel L2 budgets."""

    starts: list[str] = field(default_factory=lambda: list(OOD_STARTS))
    eps_rms: list[float] = field(default_factory=lambda: [0.05])
    heads: list[str] = field(default_factory=lambda: ["both"])
    steps: int = 4000
    lr: float = 0.01
    optimizer: str = "adamax"
    random_start: bool = True
    num_samples: int | None = None
    enabled: bool = True

    def validate(self, where: str = "ood#") -> OodConfig:
        self.enabled = as_bool(self.enabled, f"{where}enabled")
        self.starts = _names(self.starts, OOD_STARTS, f"{where}starts", "OOD start image")
        self.eps_rms = _grid(self.eps_rms, f"{where}eps_rms")
        self.heads = _names(self.heads, list(HEADS), f"{where}heads", "head")
        self.steps = check_number(self.steps, f"{where}steps", minimum=1, integer=True)
        if self.num_samples is not None:
            self.num_samples = check_number(self.num_samples, f"{where}num_samples", minimum=1, integer=True)
        self.lr = check_number(self.lr, f"{where}lr", minimum=0, min_inclusive=False)
        self.optimizer = _choice(self.optimizer, _OOD_OPTIMIZERS, f"{where}optimizer")
        self.random_start = as_bool(self.random_start, f"{where}random_start")
        return self


@dataclass
class AuditConfig:
    """The gradient-masking audit's own rows (`diskrobust.robustness.audit_units`), on the first `num_samples`
    test patches, for the white-box attack the audit judges (`sweep_audit.white_box_attack`, point head) at
    its eps grid: uniform noise (`noise_draws` draws, the per-sample worst), an independent Square attack
    (`queries`), the white-box attack with `steps_factor` x its steps and `restarts_factor` x its restarts,
    L-inf eps 1 (`unbounded`) with the constant / noise images any attacker reaches there, and, given
    `surrogate_ckpt` (a model file of the same network), adversarials crafted on it (transfer).
    Off in the Python default (a programmatic sweep stays as cheap as before); on in the bundle's evaluate.json."""

    enabled: bool = False
    num_samples: int = 8
    noise_draws: int = 4
    queries: int = 100
    steps_factor: int = 2
    restarts_factor: int = 2
    unbounded: bool = True
    surrogate_ckpt: str | None = None

    def validate(self, where: str = "audit#") -> AuditConfig:
        self.enabled = as_bool(self.enabled, f"{where}enabled")
        self.num_samples = check_number(self.num_samples, f"{where}num_samples", minimum=1, integer=True)
        self.noise_draws = check_number(self.noise_draws, f"{where}noise_draws", minimum=1, integer=True)
        self.queries = check_number(self.queries, f"{where}queries", minimum=1, integer=True)
        # a factor of 1 would rerun the sweep's own attack and make the effort checks vacuous
        self.steps_factor = check_number(self.steps_factor, f"{where}steps_factor", minimum=2, integer=True)
        self.restarts_factor = check_number(self.restarts_factor, f"{where}restarts_factor", minimum=2, integer=True)
        self.unbounded = as_bool(self.unbounded, f"{where}unbounded")
        if self.surrogate_ckpt in (None, ""):
            self.surrogate_ckpt = None
        elif not isinstance(self.surrogate_ckpt, str):
            raise ConfigError(None, f"{where}surrogate_ckpt", f"must be a model file path or empty, "
                                                              f"got {self.surrogate_ckpt!r}")
        return self


@dataclass
class SweepConfig:
    """Everything that decides what a sweep computes.

    profile: the profile's name (reported; the settings themselves are what ran). num_samples: the first
    N test patches (None: all). tolerance_px: a sample is "within tolerance" if its mean point error is
    <= this. tensorboard_images: samples with images per budget in TensorBoard.
    chunk_size: the attacks attack each batch in chunks of this many samples (None: the whole batch; "auto":
    the fastest, measured once per run); the same arithmetic per sample for any value (bit-identical for
    DiskShapeNet at 128 px; a BLAS kernel chosen by the row count may round otherwise), so not part of a
    unit's fingerprint.
    channels_last: attack and score a channels_last copy of the network (True, False or "auto": whichever
    is faster, measured once per run). Same function, other convolution algorithms: the numbers differ at
    float-rounding level, so a unit computed in one layout is not reused by a run in the other
    (`diskrobust.attacks.layout`).
    """

    profile: str = "custom"
    seed: int = 0
    num_samples: int | None = 16
    batch_size: int = 16
    tolerance_px: float = 2.0
    tensorboard_images: int = 4
    chunk_size: int | str | None = None
    channels_last: bool | str = False
    ind: IndConfig = field(default_factory=IndConfig)
    ood: OodConfig = field(default_factory=OodConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)

    @classmethod
    def from_dict(cls, d: Mapping, where: str | None = None) -> SweepConfig:
        """Build and validate; unknown keys, names and bad values raise ConfigError naming the setting
        (and `where`, e.g. the config files, as its source)."""
        try:
            if not isinstance(d, Mapping):
                raise ConfigError(None, "sweep settings", f"must be a dict, got {type(d).__name__}")
            _reject_unknown(d, SWEEP_SETTINGS, "", {"description": "the report's header is written from the "
                                                                   "settings that ran; drop it"})
            ind_d, ood_d, audit_d = d.get("ind", {}), d.get("ood", {}), d.get("audit", {})
            for name, sub in (("ind", ind_d), ("ood", ood_d), ("audit", audit_d)):
                if not isinstance(sub, Mapping):
                    raise ConfigError(None, name, f"must be a dict of settings, got {sub!r}")
            _reject_unknown(ind_d, list(IndConfig.__dataclass_fields__), "ind#")
            _reject_unknown(ood_d, list(OodConfig.__dataclass_fields__), "ood#", _OOD_RETIRED)
            _reject_unknown(audit_d, list(AuditConfig.__dataclass_fields__), "audit#")
            kwargs = {k: v for k, v in d.items() if k not in ("ind", "ood", "audit")}
            cfg = cls(**kwargs, ind=IndConfig(**dict(ind_d)), ood=OodConfig(**dict(ood_d)),
                      audit=AuditConfig(**dict(audit_d)))
            return cfg.validate()
        except ConfigError as err:
            if where and not err.source:
                raise ConfigError(where, err.setting, err.problem, err.hint) from None
            raise

    def validate(self) -> SweepConfig:
        self.profile = str(self.profile)
        self.seed = check_number(self.seed, "seed", minimum=0, integer=True)
        if self.num_samples is not None:
            self.num_samples = check_number(self.num_samples, "num_samples", minimum=1, integer=True)
        self.batch_size = check_number(self.batch_size, "batch_size", minimum=1, integer=True)
        self.tensorboard_images = check_number(self.tensorboard_images, "tensorboard_images", minimum=0, integer=True)
        self.tolerance_px = check_number(self.tolerance_px, "tolerance_px", minimum=0)
        self.chunk_size = check_chunks(self.chunk_size, "chunk_size")  # ConfigError with the setting's name
        self.channels_last = check_channels_last(self.channels_last, "channels_last")
        self.ind.validate()
        self.ood.validate()
        self.audit.validate()
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# The top-level sweep ids of the attack bundle (the rest of its config is data, model and output).
SWEEP_SETTINGS = ("profile", "seed", "num_samples", "batch_size", "tolerance_px", "tensorboard_images", "chunk_size",
                  "channels_last", "ind", "ood", "audit")
