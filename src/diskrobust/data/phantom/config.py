"""Phantom conventions, published reference values, tissue parameters and ``PhantomConfig``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

# ---------------------------------------------------------------------------------------------------------
# conventions
# ---------------------------------------------------------------------------------------------------------

#: the lumbar disks with ground-truth contours, from the bottom (SPIDER: disk 200+k lies below vertebra k)
DISK_LEVELS = ("L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2")
DISK_LABELS = {lvl: 201 + i for i, lvl in enumerate(DISK_LEVELS)}
#: vertebrae numbered from the bottom (SPIDER). T12 (and the T12/L1 disk, 206) are drawn and labelled when
#: ``include_t12``; the sacrum is drawn but keeps label 0 (SPIDER does not number it).
VERTEBRA_LABELS = {"L5": 1, "L4": 2, "L3": 3, "L2": 4, "L1": 5, "T12": 6}
CANAL_LABEL = 100
T12_DISK = ("T12/L1", 206)
# SPIDER marks vertebrae cut by the image border as 100 + k
PARTIAL_OFFSET = 100

#: Published mid-sagittal disk geometry, mm, mean and SD per level (L5/S1 first): 14 normal adults aged
#: 40-59 (anatomy_and_mr_facts.md). Keys: AP length, anterior, middle, posterior height.
PUBLISHED_DISK_GEOMETRY: dict[str, dict[str, tuple[float, float]]] = {
    "L5/S1": {"length": (31.3, 2.6), "anterior": (18.7, 1.6), "middle": (13.0, 2.5), "posterior": (8.5, 1.1)},
    "L4/L5": {"length": (33.1, 2.4), "anterior": (18.1, 1.5), "middle": (13.8, 2.0), "posterior": (10.1, 1.0)},
    "L3/L4": {"length": (32.9, 2.4), "anterior": (15.2, 1.2), "middle": (12.5, 1.8), "posterior": (9.1, 1.2)},
    "L2/L3": {"length": (32.0, 2.4), "anterior": (13.1, 1.2), "middle": (11.6, 1.5), "posterior": (8.6, 1.7)},
    "L1/L2": {"length": (30.2, 2.7), "anterior": (10.8, 1.6), "middle": (10.0, 1.9), "posterior": (7.3, 1.7)},
}
#: T12/L1 (not in the published table): a little lower and shorter than L1/L2
_T12_GEOMETRY = {"length": (29.5, 2.6), "anterior": (9.5, 1.5), "middle": (9.2, 1.7), "posterior": (7.0, 1.5)}
#: lower heights reported in other populations (anterior height, mm): Brazilian series of 900 disks, Nepalese
LOWER_POPULATION_ANTERIOR_MM = {"L5/S1": 12.4, "L4/L5": 10.9, "L3/L4": 9.3, "L1/L2": 7.0}
#: lumbar lordosis of adults (lumbosacral-angle series of 274 adults), deg
PUBLISHED_LORDOSIS_DEG = (44.5, 9.9)

# Tissue (T1 ms, T2 ms, PD pu). Disk, CSF, marrow, cord from Drake-Perez et al. AJNR 2018 (see
# anatomy_and_mr_facts.md); annulus T2 inside 37-62 ms; muscle T2 34 ms; fat uses the fast-spin-echo
# effective T2 (brighter than the true T2, as on clinical FSE); bone/ligament near zero signal.
TISSUES: dict[str, tuple[float, float, float]] = {
    "csf": (4273.0, 1578.0, 107.5),
    "nucleus": (1165.0, 129.0, 78.9),  # T2 replaced per disk by the Pfirrmann grade
    "annulus": (900.0, 45.0, 70.0),
    "marrow": (515.0, 101.0, 91.1),
    "sacral_marrow": (420.0, 105.0, 95.0),  # fattier marrow in the sacrum
    "cortical": (1000.0, 2.0, 8.0),
    "cord": (780.0, 102.0, 58.7),
    "muscle": (1100.0, 34.0, 70.0),
    "fat": (300.0, 130.0, 95.0),
    "viscera": (900.0, 70.0, 80.0),
    "bowel_fluid": (3000.0, 600.0, 100.0),
    "vessel": (1200.0, 30.0, 8.0),  # flow void
    "ligament": (1000.0, 12.0, 30.0),
    "skin": (800.0, 45.0, 75.0),
    "air": (1000.0, 1.0, 0.0),
    "gas": (1000.0, 1.0, 0.0),  # vacuum phenomenon: nitrogen in a degenerated disk, no signal
    "edema": (1100.0, 140.0, 95.0),  # Modic type 1 marrow: T1 dark, T2 bright
}
#: nucleus pulposus T2 (ms) by Pfirrmann grade I..V (V: collapsed, black)
NUCLEUS_T2_BY_GRADE = {1: 210.0, 2: 129.0, 3: 84.0, 4: 51.0, 5: 38.0}
# a degenerated nucleus also loses water: PD and T1 move towards the desiccated disk's (47.6 pu, 554 ms)
NUCLEUS_PD_BY_GRADE = {1: 80.0, 2: 76.0, 3: 64.0, 4: 52.0, 5: 42.0}
NUCLEUS_T1_BY_GRADE = {1: 1300.0, 2: 1165.0, 3: 850.0, 4: 600.0, 5: 520.0}
WEIGHTINGS = {"t2": (3500.0, 100.0), "t1": (600.0, 12.0)}  # (TR ms, TE ms)

#: Pathologies and their default prevalence. Each is the probability for a disk (vertebra, subject) of
#: average risk; a disk's probability is 1 - (1 - prevalence) ** risk, risk growing with the level's load
#: and the degeneration grade, so 0 never and 1 always gives the finding. See ``anatomy.py``.
PREVALENCE_DEFAULTS: dict[str, float] = {
    "bulge": 0.35,  # diffuse posterior annulus bulge (per disk)
    "protrusion": 0.16,  # focal herniation, base wider than its depth (per disk)
    "extrusion": 0.06,  # herniation reaching beyond an endplate level behind the vertebra (per disk)
    "migration": 0.035,  # a fragment migrated 5-12 mm up or down behind the vertebral body (per disk)
    "schmorl": 0.12,  # Schmorl node: disk material indenting an endplate (per endplate pair of a disk)
    "irregular_endplate": 0.2,  # wavy endplates (per disk)
    "osteophyte": 0.15,  # corner osteophytes of the two vertebrae next to a disk (per disk)
    "spondylolisthesis": 0.06,  # one vertebra shifted forward, at L4/L5 or L5/S1 (per subject)
    "vacuum": 0.05,  # gas in a degenerated disk (per disk, needs grade >= IV)
    "modic": 0.1,  # Modic type 1/2 change of the marrow next to a disk (per disk)
    "fatty_marrow": 0.3,  # focal fatty marrow deposits (per vertebra)
}
#: Pfirrmann grade probabilities I..V of the two lowest disks and of the others
GRADE_P_LOWER = (0.12, 0.34, 0.27, 0.17, 0.10)
GRADE_P_UPPER = (0.30, 0.44, 0.17, 0.07, 0.02)


def spin_echo_signal(t1_ms, t2_ms, pd, tr_ms: float, te_ms: float):
    """Spin-echo signal S = PD (1 - exp(-TR/T1)) exp(-TE/T2) (works on scalars and arrays)."""
    return pd * (1.0 - np.exp(-tr_ms / np.asarray(t1_ms, dtype=np.float64))) * np.exp(-te_ms / np.asarray(t2_ms, dtype=np.float64))


# ---------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------

_SPLITS = ("training", "validation", "test")


@dataclass
class PhantomConfig:
    """What to generate. Ranges are (low, high) and sampled uniformly per subject.

    shape: (H, W) pixels; spacing_mm: (row, col) mm; the field of view must cover the lumbar column
    (at least 230 mm x 160 mm). weighting: "t2" (TR 3500/TE 100) or "t1" (TR 600/TE 12).
    slice_thickness_mm: partial volume across the slice (softer borders, paramedian findings fainter).
    low_height_fraction: share of subjects from populations with lower disks (heights scaled by
    ``low_height_scale``). lordosis_deg: (mean, SD) of the L1-S1 lordosis. grade_probabilities_lower /
    _upper: Pfirrmann I..V for L4/L5 + L5/S1 / the others. prevalence: pathology -> prevalence
    (``PREVALENCE_DEFAULTS``; missing keys take the default). marrow_texture: 0 flat marrow, 1 default.
    annotation_noise_mm: RMS of a smooth displacement of the written contours (0: exact), applied to the
    subjects of ``annotation_noise_splits``; exact contours are always written too (contours_exact/).
    """

    shape: tuple[int, int] = (512, 512)
    spacing_mm: tuple[float, float] = (0.6, 0.6)
    weighting: str = "t2"
    slice_thickness_mm: float = 4.0
    tissue_variation: float = 0.18  # per-subject relative change of each tissue's PD (and half of it on T2)
    noise_sigma: tuple[float, float] = (0.01, 0.05)  # Rician sigma, fraction of the image maximum
    bias_coeff: float = 0.25  # max |coefficient| of the log bias field (Legendre degree 3)
    blur_sigma_px: tuple[float, float] = (0.5, 1.0)
    gibbs_probability: float = 0.5
    gibbs_alpha: tuple[float, float] = (0.1, 0.3)  # fraction of k-space cut along the columns
    max_rotation_deg: float = 8.0
    max_shift_mm: float = 8.0
    include_t12: bool = True
    low_height_fraction: float = 0.3
    low_height_scale: tuple[float, float] = (0.55, 0.8)
    lordosis_deg: tuple[float, float] = PUBLISHED_LORDOSIS_DEG
    grade_probabilities_lower: tuple[float, ...] = GRADE_P_LOWER
    grade_probabilities_upper: tuple[float, ...] = GRADE_P_UPPER
    prevalence: dict = field(default_factory=lambda: dict(PREVALENCE_DEFAULTS))
    marrow_texture: float = 1.0
    annotation_noise_mm: float = 0.0
    annotation_noise_splits: tuple[str, ...] = ("training",)

    def __post_init__(self) -> None:
        self.shape = _pair(self.shape, "shape", int)
        self.spacing_mm = _pair(self.spacing_mm, "spacing_mm", float)
        self.noise_sigma = _pair(self.noise_sigma, "noise_sigma", float)
        self.blur_sigma_px = _pair(self.blur_sigma_px, "blur_sigma_px", float)
        self.gibbs_alpha = _pair(self.gibbs_alpha, "gibbs_alpha", float)
        self.low_height_scale = _pair(self.low_height_scale, "low_height_scale", float)
        self.lordosis_deg = _pair(self.lordosis_deg, "lordosis_deg", float)
        if min(self.shape) < 64:
            raise ValueError(f"PhantomConfig.shape must be at least 64 x 64 px, got {self.shape}")
        if min(self.spacing_mm) <= 0 or not all(map(math.isfinite, self.spacing_mm)):
            raise ValueError(f"PhantomConfig.spacing_mm must be positive, got {self.spacing_mm}")
        fov = (self.shape[0] * self.spacing_mm[0], self.shape[1] * self.spacing_mm[1])
        if fov[0] < 230.0 or fov[1] < 160.0:
            raise ValueError(
                f"PhantomConfig field of view {fov[0]:.0f} x {fov[1]:.0f} mm (shape x spacing) is too small for the "
                "lumbar column: need at least 230 mm (rows) x 160 mm (cols)"
            )
        self.weighting = str(self.weighting).lower()
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"PhantomConfig.weighting must be one of {sorted(WEIGHTINGS)}, got {self.weighting!r}")
        _check_range(self.noise_sigma, "noise_sigma", 0.0, 0.5)
        _check_range(self.blur_sigma_px, "blur_sigma_px", 0.0, 5.0)
        _check_range(self.gibbs_alpha, "gibbs_alpha", 0.0, 0.9)
        _check_range(self.low_height_scale, "low_height_scale", 0.3, 1.0)
        for name, hi in (
            ("tissue_variation", 0.5), ("bias_coeff", 1.0), ("gibbs_probability", 1.0), ("low_height_fraction", 1.0),
            ("marrow_texture", 3.0), ("annotation_noise_mm", 2.0),
        ):
            v = float(getattr(self, name))
            if not 0.0 <= v <= hi:
                raise ValueError(f"PhantomConfig.{name} must be in [0, {hi}], got {v}")
            setattr(self, name, v)
        for name, hi in (("max_rotation_deg", 20.0), ("max_shift_mm", 20.0), ("slice_thickness_mm", 50.0)):
            v = float(getattr(self, name))
            if not 0.0 <= v <= hi:
                raise ValueError(f"PhantomConfig.{name} must be in [0, {hi}], got {v}")
            setattr(self, name, v)
        if self.slice_thickness_mm <= 0:
            raise ValueError("PhantomConfig.slice_thickness_mm must be positive")
        mean, sd = self.lordosis_deg
        if not (10.0 <= mean <= 80.0 and 0.0 <= sd <= 20.0):
            raise ValueError(f"PhantomConfig.lordosis_deg must be (mean in [10, 80], SD in [0, 20]) deg, got {self.lordosis_deg}")
        for name in ("grade_probabilities_lower", "grade_probabilities_upper"):
            p = tuple(float(x) for x in getattr(self, name))
            if len(p) != 5 or min(p) < 0 or abs(sum(p) - 1.0) > 1e-6:
                raise ValueError(f"PhantomConfig.{name} must be 5 probabilities (Pfirrmann I..V) summing to 1, got {p}")
            setattr(self, name, p)
        if not isinstance(self.prevalence, dict):
            raise ValueError(f"PhantomConfig.prevalence must be a mapping pathology -> probability, got {self.prevalence!r}")
        unknown = set(self.prevalence) - set(PREVALENCE_DEFAULTS)
        if unknown:
            raise ValueError(f"PhantomConfig.prevalence: unknown pathologies {sorted(unknown)}; known: {sorted(PREVALENCE_DEFAULTS)}")
        prev = dict(PREVALENCE_DEFAULTS)
        for k, v in self.prevalence.items():
            v = float(v)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"PhantomConfig.prevalence[{k!r}] must be in [0, 1], got {v}")
            prev[k] = v
        self.prevalence = prev
        self.annotation_noise_splits = tuple(str(s) for s in self.annotation_noise_splits)
        bad = set(self.annotation_noise_splits) - set(_SPLITS)
        if bad:
            raise ValueError(f"PhantomConfig.annotation_noise_splits: unknown splits {sorted(bad)}; use {list(_SPLITS)}")
        self.include_t12 = bool(self.include_t12)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, dict) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "PhantomConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PhantomConfig fields: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def healthy(cls, **overrides) -> "PhantomConfig":
        """The reference population only: no lower-height subjects, grades I-II, no pathology."""
        base = {
            "low_height_fraction": 0.0,
            "grade_probabilities_lower": (0.3, 0.7, 0.0, 0.0, 0.0),
            "grade_probabilities_upper": (0.3, 0.7, 0.0, 0.0, 0.0),
            "prevalence": {k: 0.0 for k in PREVALENCE_DEFAULTS},
        }
        base.update(overrides)
        return cls(**base)


def _pair(value, name: str, kind) -> tuple:
    try:
        vals = tuple(kind(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"PhantomConfig.{name} must be a pair of numbers, got {value!r}") from err
    if len(vals) != 2:
        raise ValueError(f"PhantomConfig.{name} must have two values, got {value!r}")
    return vals


def _check_range(pair: tuple[float, float], name: str, lo: float, hi: float) -> None:
    if not (lo <= pair[0] <= pair[1] <= hi):
        raise ValueError(f"PhantomConfig.{name} must be (low, high) with {lo} <= low <= high <= {hi}, got {pair}")


@dataclass
class PhantomSubject:
    """One generated slice. image (H, W) float32 raw signal (CSF ~ 1 before noise); label (H, W) uint16;
    disks: from the bottom, dicts {"level", "label", "points_px" (176, 2) (x=col, y=row), "points_mm"}
    (exact); disks_noisy: the same with annotation noise (None when ``annotation_noise_mm`` is 0)."""

    image: np.ndarray
    label: np.ndarray
    disks: list[dict]
    spacing_mm: tuple[float, float]
    affine: np.ndarray
    params: dict = field(default_factory=dict)
    disks_noisy: list[dict] | None = None
