"""Study grids: which arms to train and how to evaluate them, read from a JSON profile.

A profile (configs/study/*.json) names the shape-variation levels (PCA modes), the training
methods, and the overrides passed to the two bundles. Validation happens here, before any work:
an unknown key is refused naming the closest valid ones, every value is type-checked, and a grid
that names an arm twice is refused (two trainings would write one arm folder at once).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from diskrobust.data.errors import DataError

# the paper's five arms (the default grid) and the arms beyond it (issue 18: fast_r = FGSM with random
# start, ima = adaptive per-disk margin); every one is an AdversarialTrainingHandler mode but std
PAPER_METHODS = ("std", "rand", "adv_r", "adv_s", "adv_rs")
METHODS = PAPER_METHODS + ("fast_r", "ima")


@dataclass(frozen=True)
class Arm:
    """One cell of the grid: a shape-variation level and a training method.

    A findings design (`blocks`) adds the training-set size, the augmentation's name and the seed;
    its arms are named `n{train_subjects}-{augmentation}-{method}` (`design_name`, what findings
    refer to) plus `-s{seed}`.
    """

    shape_modes: int
    method: str
    train_subjects: int | None = None
    augmentation: str | None = None
    seed: int | None = None

    @property
    def design_name(self) -> str:
        if self.augmentation is None:
            return f"P{self.shape_modes}-{self.method}"
        return f"n{self.train_subjects}-{self.augmentation}-{self.method}"

    @property
    def name(self) -> str:
        return self.design_name if self.seed is None else f"{self.design_name}-s{self.seed}"

    @property
    def base(self) -> "Arm":
        """The standard arm this one is fine-tuned from (the paper fine-tunes the standard model)."""
        return Arm(self.shape_modes, "std", self.train_subjects, self.augmentation, self.seed)


@dataclass
class StudyConfig:
    name: str
    output_dir: Path
    seed: int = 0
    jobs: int = 1
    shape_modes: list[int] = field(default_factory=lambda: [3, 5, 10])
    methods: list[str] = field(default_factory=lambda: list(PAPER_METHODS))
    dataset: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    adversarial: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    reduced: list[str] = field(default_factory=list)
    description: str = ""
    retries: int = 0
    resources: dict[str, Any] = field(default_factory=dict)
    # the findings design (configs/study/findings.json); `blocks` replaces shape_modes x methods
    seeds: list[int] = field(default_factory=list)
    augmentations: dict[str, Any] = field(default_factory=dict)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    baselines: dict[str, Any] = field(default_factory=dict)
    ood_budget: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    @property
    def arms(self) -> list[Arm]:
        if self.blocks:
            return [Arm(int(self.augmentations[aug]["shape_modes"]), m, int(n), aug, int(seed))
                    for block in self.blocks for n in block["train_subjects"] for aug in block["augmentations"]
                    for m in block["methods"] for seed in (self.seeds or [self.seed])]
        return [Arm(k, m) for k in self.shape_modes for m in self.methods]

    @property
    def dataset_dir(self) -> Path:
        return Path(self.dataset.get("dataset_dir") or self.output_dir / "data")

    def arm_dir(self, arm: Arm) -> Path:
        if arm.seed is not None:
            return self.output_dir / "arms" / arm.design_name / f"seed{arm.seed}"
        return self.output_dir / "arms" / arm.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "output_dir": str(self.output_dir),
            "seed": self.seed, "jobs": self.jobs, "shape_modes": self.shape_modes, "methods": self.methods,
            "dataset": self.dataset, "train": self.train, "adversarial": self.adversarial,
            "evaluation": self.evaluation, "reduced": self.reduced, "retries": self.retries,
            "resources": self.resources,
            **({"seeds": self.seeds, "augmentations": self.augmentations, "blocks": self.blocks,
                "baselines": self.baselines, "ood_budget": self.ood_budget, "statistics": self.statistics}
               if self.blocks else {}),
        }


# key -> (expected type(s), what the value is) ; the single source of the study schema
_SCHEMA: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a name"),
    "description": ((str,), "a text"),
    "output_dir": ((str,), "a folder path"),
    "seed": ((int,), "an integer"),
    "jobs": ((int,), "an integer >= 1 (arms run at once by the local engine)"),
    "shape_modes": ((list,), "a list of PCA mode counts, e.g. [3, 5, 10]"),
    "methods": ((list,), f"a list of training methods from {list(METHODS)}"),
    "dataset": ((dict,), "an object with dataset_dir, phantom_subjects, seed"),
    "train": ((dict,), "an object of lumbar_disk_shape overrides"),
    "adversarial": ((dict,), "an object of train_adversarial overrides"),
    "evaluation": ((dict,), "an object of lumbar_disk_attack overrides"),
    "reduced": ((list,), "a list of texts (what the profile cuts from the paper)"),
    "retries": ((int,), "an integer >= 0 (times a failed stage is tried again)"),
    "resources": ((dict,), "an object with cpus_per_arm, gpus_per_arm, split_evaluation (Ray engine)"),
    "seeds": ((list,), "a list of training seeds; every arm of `blocks` runs once per seed"),
    "augmentations": ((dict,), "an object: augmentation name -> {shape_modes, c_max}"),
    "blocks": ((list,), "a list of {train_subjects, augmentations, methods} (the findings design)"),
    "baselines": ((dict,), "an object with mean_shape, uniform_noise"),
    "ood_budget": ((dict,), "the OOD budget search (diskrobust.robustness.ood_budget.OodBudgetConfig)"),
    "statistics": ((dict,), "the findings and their tests (diskrobust.study.statistics.StatisticsConfig)"),
}
_KNOWN = set(_SCHEMA)
_DATASET = {"dataset_dir": ((str,), "a dataset folder"), "phantom_subjects": ((int,), "an integer >= 1"),
            "seed": ((int,), "an integer")}
_RESOURCES = {"cpus_per_arm": ((int, float), "a number > 0"), "gpus_per_arm": ((int, float), "a number >= 0"),
              "split_evaluation": ((bool,), "true or false (Ray: one task per IND head and OOD start)")}


def closest(word: str, choices: Iterable[str]) -> list[str]:
    """The valid names closest to a misspelt one (best first; may be empty)."""
    return difflib.get_close_matches(word, sorted(choices), n=3, cutoff=0.5)


def _unknown_message(unknown: Iterable[str], known: Iterable[str], where: str) -> str:
    parts = []
    for key in sorted(unknown):
        near = closest(key, known)
        parts.append(f"{key!r}" + (f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""))
    return f"unknown {where} {', '.join(parts)}; valid: {sorted(known)}"


def _check_types(raw: dict, schema: dict, path: Path, where: str = "") -> None:
    unknown = set(raw) - set(schema)
    if unknown:
        raise DataError(path, _unknown_message(unknown, schema, f"keys{' in ' + where if where else ''}"))
    for key, value in raw.items():
        types, what = schema[key]
        # bool is an int in Python: `"seed": true` is a slip, not seed 1
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise DataError(path, f"{where + '.' if where else ''}{key} must be {what}, got {value!r}")


def _unique(values: list, path: Path, key: str) -> None:
    seen, dup = set(), []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    if dup:
        raise DataError(path, f"{key} lists {dup} more than once: each arm must appear once "
                              f"(two runs would write one arm folder at once); remove the duplicates")


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
    _check_types(raw, _SCHEMA, path)
    _check_types(raw.get("dataset", {}), _DATASET, path, "dataset")
    _check_types(raw.get("resources", {}), _RESOURCES, path, "resources")
    modes = raw.get("shape_modes", [3, 5, 10])
    if not modes or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in modes):
        raise DataError(path, f"shape_modes must be a non-empty list of positive integers (PCA modes), got {modes}")
    methods = raw.get("methods", list(PAPER_METHODS))
    if not methods:
        raise DataError(path, "the grid is empty: methods must name at least one training method")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise DataError(path, _unknown_message([str(m) for m in bad], METHODS, "training methods"))
    _unique(modes, path, "shape_modes")
    _unique(methods, path, "methods")
    for key, minimum in (("jobs", 1), ("retries", 0)):
        if key in raw and raw[key] < minimum:
            raise DataError(path, f"{key} must be >= {minimum}, got {raw[key]}")
    if raw.get("dataset", {}).get("phantom_subjects", 1) < 1:
        raise DataError(path, "dataset.phantom_subjects must be >= 1")
    res = raw.get("resources", {})
    if res.get("cpus_per_arm", 1) <= 0 or res.get("gpus_per_arm", 0) < 0:
        raise DataError(path, f"resources: cpus_per_arm must be > 0 and gpus_per_arm >= 0, got {res}")
    if not all(isinstance(r, str) for r in raw.get("reduced", [])):
        raise DataError(path, "reduced must be a list of texts")
    if raw.get("blocks"):
        _check_design(raw, path)
    out = output_dir or raw.get("output_dir") or f"runs/study_{raw.get('name', path.stem)}"
    return StudyConfig(
        name=raw.get("name", path.stem),
        output_dir=Path(out),
        seed=raw.get("seed", 0),
        jobs=raw.get("jobs", 1),
        shape_modes=list(modes),
        methods=list(methods),
        dataset=dict(raw.get("dataset", {})),
        train=dict(raw.get("train", {})),
        adversarial=dict(raw.get("adversarial", {})),
        evaluation=dict(raw.get("evaluation", {})),
        reduced=list(raw.get("reduced", [])),
        description=raw.get("description", ""),
        retries=raw.get("retries", 0),
        resources=dict(res),
        seeds=list(raw.get("seeds", [])),
        augmentations=dict(raw.get("augmentations", {})),
        blocks=[dict(b) for b in raw.get("blocks", [])],
        baselines=dict(raw.get("baselines", {})),
        ood_budget=dict(raw.get("ood_budget", {})),
        statistics=dict(raw.get("statistics", {})),
        source=path,
    )


def _check_design(raw: dict, path: Path) -> None:
    """The findings design: seeds, augmentations, blocks, and findings that name arms of the design."""
    seeds = raw.get("seeds", [])
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise DataError(path, f"seeds must be a non-empty list of integers >= 0, got {seeds}")
    _unique(seeds, path, "seeds")
    augs = raw.get("augmentations", {})
    for name, a in augs.items():
        if not isinstance(a, dict) or set(a) - {"shape_modes", "c_max"} or "shape_modes" not in a:
            raise DataError(path, f"augmentations.{name} must be {{shape_modes, c_max (optional)}}, got {a!r}")
        c = a.get("c_max")
        if c is not None and not (isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0) and \
                not (isinstance(c, dict) and set(c) == {"match_variance_of"} and isinstance(c["match_variance_of"], int)):
            raise DataError(path, f"augmentations.{name}.c_max must be a number > 0 or "
                                  f"{{\"match_variance_of\": <PCA modes>}}, got {c!r}")
    names = set()
    for i, block in enumerate(raw["blocks"]):
        where = f"blocks[{i}]"
        if not isinstance(block, dict) or set(block) != {"train_subjects", "augmentations", "methods"}:
            raise DataError(path, f"{where} must be an object with exactly train_subjects, augmentations, methods")
        sizes = block["train_subjects"]
        if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
            raise DataError(path, f"{where}.train_subjects must be a list of integers >= 1, got {sizes}")
        unknown = [a for a in block["augmentations"] if a not in augs]
        if unknown or not block["augmentations"]:
            raise DataError(path, _unknown_message([str(a) for a in unknown], augs, f"augmentations in {where}")
                            if unknown else f"{where}.augmentations is empty")
        for a in block["augmentations"]:
            if augs[a]["shape_modes"] < 1:
                raise DataError(path, f"{where}: augmentation {a!r} has shape_modes {augs[a]['shape_modes']}: "
                                      "training without shape augmentation needs lumbar_disk_shape support that "
                                      "does not exist yet (its dataset would warp every patch to the mean shape); "
                                      "remove it from the block")
        bad = [m for m in block["methods"] if m not in METHODS]
        if bad or not block["methods"]:
            raise DataError(path, _unknown_message([str(m) for m in bad], METHODS, f"methods in {where}")
                            if bad else f"{where}.methods is empty")
        names |= {f"n{n}-{a}-{m}" for n in sizes for a in block["augmentations"] for m in block["methods"]}
    if raw.get("statistics"):
        from diskrobust.study.statistics import StatisticsConfig

        try:
            stats = StatisticsConfig.from_dict(raw["statistics"])
        except ValueError as err:
            raise DataError(path, str(err)) from None
        for f in stats.findings:
            missing = [a for a in (f.a, f.b) if a not in names]
            if missing:
                raise DataError(path, f"statistics.findings {f.id!r} names arm(s) {missing} that the blocks do "
                                      f"not make; arms: {sorted(names)}")
    if raw.get("ood_budget"):
        from diskrobust.robustness.ood_budget import OodBudgetConfig

        try:
            OodBudgetConfig.from_dict(raw["ood_budget"])
        except ValueError as err:
            raise DataError(path, str(err)) from None
