"""Study grids: which arms to train and how to evaluate them, read from a JSON profile.

A profile (configs/study/*.json) names the shape-variation levels (PCA modes), the training
methods, and the overrides passed to the two bundles. Validation happens here, before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diskrobust.data.errors import DataError

METHODS = ("std", "rand", "adv_r", "adv_s", "adv_rs")


@dataclass(frozen=True)
class Arm:
    """One cell of the grid: a shape-variation level and a training method."""

    shape_modes: int
    method: str

    @property
    def name(self) -> str:
        return f"P{self.shape_modes}-{self.method}"

    @property
    def base(self) -> "Arm":
        """The standard arm this one is fine-tuned from (the paper fine-tunes the standard model)."""
        return Arm(self.shape_modes, "std")


@dataclass
class StudyConfig:
    name: str
    output_dir: Path
    seed: int = 0
    jobs: int = 1
    shape_modes: list[int] = field(default_factory=lambda: [3, 5, 10])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    dataset: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    adversarial: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    reduced: list[str] = field(default_factory=list)
    description: str = ""
    source: Path | None = None

    @property
    def arms(self) -> list[Arm]:
        return [Arm(k, m) for k in self.shape_modes for m in self.methods]

    @property
    def dataset_dir(self) -> Path:
        return Path(self.dataset.get("dataset_dir") or self.output_dir / "data")

    def arm_dir(self, arm: Arm) -> Path:
        return self.output_dir / "arms" / arm.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "output_dir": str(self.output_dir),
            "seed": self.seed, "jobs": self.jobs, "shape_modes": self.shape_modes, "methods": self.methods,
            "dataset": self.dataset, "train": self.train, "adversarial": self.adversarial,
            "evaluation": self.evaluation, "reduced": self.reduced,
        }


_KNOWN = {"name", "description", "output_dir", "seed", "jobs", "shape_modes", "methods", "dataset", "train",
          "adversarial", "evaluation", "reduced"}


def load_study_config(path: str | Path, output_dir: str | Path | None = None) -> StudyConfig:
    """Read and validate a study profile; `output_dir` overrides the profile's."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "study config not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise DataError(path, "a study config must be a JSON object")
    unknown = set(raw) - _KNOWN
    if unknown:
        raise DataError(path, f"unknown keys {sorted(unknown)}; known: {sorted(_KNOWN)}")
    out = output_dir or raw.get("output_dir") or f"runs/study_{raw.get('name', path.stem)}"
    cfg = StudyConfig(
        name=str(raw.get("name", path.stem)),
        output_dir=Path(out),
        seed=int(raw.get("seed", 0)),
        jobs=int(raw.get("jobs", 1)),
        shape_modes=[int(k) for k in raw.get("shape_modes", [3, 5, 10])],
        methods=list(raw.get("methods", list(METHODS))),
        dataset=dict(raw.get("dataset", {})),
        train=dict(raw.get("train", {})),
        adversarial=dict(raw.get("adversarial", {})),
        evaluation=dict(raw.get("evaluation", {})),
        reduced=list(raw.get("reduced", [])),
        description=str(raw.get("description", "")),
        source=path,
    )
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise DataError(path, f"unknown training methods {bad}; choose from {list(METHODS)}")
    if not cfg.methods or not cfg.shape_modes:
        raise DataError(path, "the grid is empty: give at least one of shape_modes and methods")
    if any(k < 1 for k in cfg.shape_modes):
        raise DataError(path, f"shape_modes must be positive PCA mode counts, got {cfg.shape_modes}")
    return cfg
