"""A mid-sagittal lumbar spine MR phantom with analytic 176-point disk contours.

Each subject is one 2D slice (default 512 x 512 px at 0.6 mm) in the orientation of docs/architecture.md
(superior at the top, anterior on the left, spinal canal on the right): T12 .. L5 and the sacrum, the disks
T12/L1 .. L5/S1 (annulus and nucleus), the canal with CSF, conus and cauda equina, laminae and spinous
processes, paraspinal muscle, fat, skin and the abdominal contents in front of the column.

How a subject is made (``generate_subject``):

1. *Anatomy* (``_sample_anatomy``): disk length and anterior/middle/posterior heights inside the published
   ranges (anatomy_and_mr_facts.md), height loss and a darker nucleus with the Pfirrmann grade, bulges and
   herniations, vertebral heights and wedges, sacral slope; all from the subject's generator.
2. *Geometry* (``_build_column``): the column is stacked from the sacral endplate upwards in a construction
   frame (mm, x posterior, y superior). A disk is a closed curve of four sides between four defined corners
   in its own frame (straight chords plus a smooth outward bump: endplates bulging into the vertebrae,
   anterior/posterior bulge, herniation); a vertebral body is the region between the disk below's superior
   side and the disk above's inferior side, so the two share their endplates exactly. The whole column is
   then turned so that L5/S1 -> L1/L2 is vertical, rotated and shifted per subject, and mapped to pixels.
3. *Ground truth*: each disk's four sides are resampled by arc length to 44 points each (point 0 =
   anterior-superior corner, sides anterior, inferior, posterior, superior), and the label map is painted
   from the same dense curves with ``skimage.draw.polygon``, so contour and mask agree.
4. *Image*: tissues get spin-echo signals S = PD (1 - exp(-TR/T1)) exp(-TE/T2) (T2w TR 3500/TE 100,
   T1w TR 600/TE 12), varied per subject and normalised so that CSF ~ 1; then a smooth multiplicative bias
   field, Gaussian blur, optional Gibbs ringing (k-space truncation) and Rician noise.

Everything random comes from ``numpy.random.default_rng(seed)``: the same seed gives the same subject.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.draw import polygon as fill_polygon

from diskrobust import NUM_POINTS, POINTS_PER_SIDE
from diskrobust.data.errors import DataError

__all__ = [
    "DISK_LEVELS",
    "DISK_LABELS",
    "VERTEBRA_LABELS",
    "CANAL_LABEL",
    "TISSUES",
    "PhantomConfig",
    "PhantomSubject",
    "generate_subject",
    "subject_seeds",
    "write_phantom_dataset",
    "ensure_phantom",
    "render_subject_png",
    "spin_echo_signal",
]

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
_T12_DISK = ("T12/L1", 206)
# SPIDER marks vertebrae cut by the image border as 100 + k
_PARTIAL_OFFSET = 100

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
}
#: nucleus pulposus T2 (ms) by Pfirrmann grade I..IV
NUCLEUS_T2_BY_GRADE = {1: 210.0, 2: 129.0, 3: 84.0, 4: 51.0}
# a degenerated nucleus also loses water: PD and T1 move towards the desiccated disk's (47.6 pu, 554 ms)
_NUCLEUS_PD_BY_GRADE = {1: 80.0, 2: 76.0, 3: 64.0, 4: 52.0}
_NUCLEUS_T1_BY_GRADE = {1: 1300.0, 2: 1165.0, 3: 850.0, 4: 600.0}
WEIGHTINGS = {"t2": (3500.0, 100.0), "t1": (600.0, 12.0)}  # (TR ms, TE ms)

# published mid-sagittal disk geometry (mm)
DISK_LENGTH_MM = (30.0, 33.0)
DISK_HEIGHT_ANTERIOR_MM = (10.8, 18.7)
DISK_HEIGHT_MIDDLE_MM = (10.0, 13.8)
DISK_HEIGHT_POSTERIOR_MM = (7.3, 10.1)


def spin_echo_signal(t1_ms, t2_ms, pd, tr_ms: float, te_ms: float):
    """Spin-echo signal S = PD (1 - exp(-TR/T1)) exp(-TE/T2) (works on scalars and arrays)."""
    return pd * (1.0 - np.exp(-tr_ms / np.asarray(t1_ms, dtype=np.float64))) * np.exp(-te_ms / np.asarray(t2_ms, dtype=np.float64))


# ---------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PhantomConfig:
    """What to generate. Ranges are (low, high) and sampled uniformly per subject.

    shape: (H, W) pixels; spacing_mm: (row, col) mm; the field of view must cover the lumbar column
    (at least 230 mm x 160 mm). weighting: "t2" (TR 3500/TE 100) or "t1" (TR 600/TE 12).
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
    herniation_probability: float = 0.2
    include_t12: bool = True

    def __post_init__(self) -> None:
        self.shape = _pair(self.shape, "shape", int)
        self.spacing_mm = _pair(self.spacing_mm, "spacing_mm", float)
        self.noise_sigma = _pair(self.noise_sigma, "noise_sigma", float)
        self.blur_sigma_px = _pair(self.blur_sigma_px, "blur_sigma_px", float)
        self.gibbs_alpha = _pair(self.gibbs_alpha, "gibbs_alpha", float)
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
        for name, hi in (("tissue_variation", 0.5), ("bias_coeff", 1.0), ("gibbs_probability", 1.0), ("herniation_probability", 1.0)):
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
        self.include_t12 = bool(self.include_t12)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "PhantomConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PhantomConfig fields: {sorted(unknown)}")
        return cls(**d)


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
    disks: from the bottom, dicts {"level", "label", "points_px" (176, 2) (x=col, y=row), "points_mm"}."""

    image: np.ndarray
    label: np.ndarray
    disks: list[dict]
    spacing_mm: tuple[float, float]
    affine: np.ndarray
    params: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# geometry helpers (construction frame: mm, x posterior, y superior)
# ---------------------------------------------------------------------------------------------------------


def _rot(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s], [s, c]])


def _normal(theta: float) -> np.ndarray:
    """Unit normal of an endplate with direction angle theta (anterior -> posterior): points superior."""
    return np.array([-math.sin(theta), math.cos(theta)])


def _bump_sine(t: np.ndarray) -> np.ndarray:
    return np.sin(np.pi * t)


def _bump_flat(t: np.ndarray) -> np.ndarray:
    # endplates: flat in the middle, curving into the corner over the outer rim (ring apophysis)
    return 1.0 - np.abs(2.0 * t - 1.0) ** 3


_DENSE = 200  # samples per side of the dense curve that both the contour and the masks come from


@dataclass
class _Disk:
    level: str
    label: int
    centre: np.ndarray  # construction frame
    axis: float  # angle of the anterior -> posterior mid-line
    p: dict  # sampled parameters
    sides: list[np.ndarray] = field(default_factory=list)  # 4 x (_DENSE + 1, 2), each from its start corner to its end corner

    def local_to_world(self, uv: np.ndarray) -> np.ndarray:
        return uv @ _rot(self.axis).T + self.centre

    def build(self) -> None:
        L, ha, hp, hm = self.p["length_mm"], self.p["height_anterior_mm"], self.p["height_posterior_mm"], self.p["height_middle_mm"]
        d = max(0.0, (hm - 0.5 * (ha + hp)) / 2.0)  # endplate bump so the mid-height is hm
        t = np.linspace(0.0, 1.0, _DENSE + 1)[:, None]
        AS, AI, PI, PS = (np.array(c, dtype=np.float64) for c in ((-L / 2, ha / 2), (-L / 2, -ha / 2), (L / 2, -hp / 2), (L / 2, hp / 2)))
        tt = t[:, 0]
        # the sin^2 taper keeps the herniation off the corners, so they stay corners
        herni = self.p["herniation_mm"] * np.exp(-0.5 * ((tt - self.p["herniation_pos"]) / self.p["herniation_width"]) ** 2) * _bump_sine(tt) ** 2
        anterior = AS + t * (AI - AS) + np.array([-1.0, 0.0]) * (self.p["bulge_anterior_mm"] * _bump_sine(tt))[:, None]
        inferior = AI + t * (PI - AI) + np.array([0.0, -1.0]) * (d * _bump_flat(tt))[:, None]
        posterior = PI + t * (PS - PI) + np.array([1.0, 0.0]) * (self.p["bulge_posterior_mm"] * _bump_sine(tt) + herni)[:, None]
        superior = PS + t * (AS - PS) + np.array([0.0, 1.0]) * (d * _bump_flat(tt))[:, None]
        self.sides = [self.local_to_world(s) for s in (anterior, inferior, posterior, superior)]

    def inferior_line(self) -> tuple[np.ndarray, float]:
        """(chord midpoint, angle) of the inferior endplate."""
        a, b = self.sides[1][0], self.sides[1][-1]
        return (a + b) / 2, math.atan2(*(b - a)[::-1])

    def superior_line(self) -> tuple[np.ndarray, float]:
        a, b = self.sides[3][-1], self.sides[3][0]  # anterior -> posterior
        return (a + b) / 2, math.atan2(*(b - a)[::-1])

    def dense_polygon(self) -> np.ndarray:
        return np.concatenate([s[:-1] for s in self.sides])

    def corners(self) -> dict[str, np.ndarray]:
        return {"AS": self.sides[0][0], "AI": self.sides[1][0], "PI": self.sides[2][0], "PS": self.sides[3][0]}


def _place_disk(level: str, label: int, p: dict, m: np.ndarray, theta: float) -> _Disk:
    """Put a disk whose inferior endplate chord is centred on ``m`` with direction ``theta``."""
    L, ha, hp = p["length_mm"], p["height_anterior_mm"], p["height_posterior_mm"]
    delta = math.atan2((ha - hp) / 2.0, L)  # the inferior chord rises posteriorly by delta in the disk frame
    axis = theta - delta
    centre = m - _rot(axis) @ np.array([0.0, -(ha + hp) / 4.0])
    disk = _Disk(level, label, centre, axis, p)
    disk.build()
    return disk


def _resample_side(side: np.ndarray, n: int = POINTS_PER_SIDE) -> np.ndarray:
    """n points equally spaced by arc length from the side's start corner (included) to its end (excluded)."""
    seg = np.linalg.norm(np.diff(side, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.arange(n) * (s[-1] / n)
    return np.stack([np.interp(targets, s, side[:, 0]), np.interp(targets, s, side[:, 1])], axis=1)


def _concave_side(a: np.ndarray, b: np.ndarray, depth: float, n: int = 40) -> np.ndarray:
    """Curve from a to b bowed by ``depth`` mm to the right of a->b (negative: to the left)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    d = b - a
    nrm = np.array([d[1], -d[0]]) / (np.linalg.norm(d) + 1e-12)
    return a + t * d + nrm * (depth * _bump_sine(t[:, 0]))[:, None]


# ---------------------------------------------------------------------------------------------------------
# anatomy sampling
# ---------------------------------------------------------------------------------------------------------

# typical anterior height per level (mm), L5/S1 first: lower disks are more wedged (lordosis)
_ANTERIOR_HEIGHT_MEAN = (16.5, 15.5, 14.0, 12.8, 11.8)
# Pfirrmann grade probabilities I..IV: lower disks degenerate more often
_GRADE_P_LOWER = (0.3, 0.4, 0.2, 0.1)
_GRADE_P_UPPER = (0.5, 0.38, 0.1, 0.02)
# vertebral wedge (deg, + = anterior taller) per vertebra L5, L4, L3, L2, L1, T12
_VERTEBRA_WEDGE_DEG = ((1.0, 4.0), (-0.5, 2.0), (-2.0, 1.0), (-3.0, 0.0), (-4.0, -1.0), (-6.0, -2.0))


def _sample_disk(rng: np.random.Generator, index: int, cfg: PhantomConfig) -> dict:
    lower = index <= 1
    grade = int(rng.choice([1, 2, 3, 4], p=_GRADE_P_LOWER if lower else _GRADE_P_UPPER))
    mean_a = _ANTERIOR_HEIGHT_MEAN[min(index, 4)] - (1.8 if index >= 5 else 0.0)
    lo_a, hi_a = DISK_HEIGHT_ANTERIOR_MM
    lo_p, hi_p = DISK_HEIGHT_POSTERIOR_MM
    lo_m, hi_m = DISK_HEIGHT_MIDDLE_MM
    # degeneration: height loss (still inside the published ranges) and a darker, smaller nucleus
    ha = float(np.clip(mean_a + rng.normal(0.0, 1.2) - 0.9 * (grade - 1), lo_a, hi_a))
    hp = float(np.clip(rng.normal(8.9, 0.6) - 0.35 * (grade - 1), lo_p, hi_p))
    ha = min(ha, 2 * (hi_m - 0.2) - hp)  # keep room for a middle height >= the mean of ha and hp
    mean = 0.5 * (ha + hp)
    m_lo, m_hi = max(lo_m, mean + 0.3), min(hi_m, mean + 2.4)
    hm = float(rng.uniform(m_lo, max(m_lo, m_hi)))
    herniated = bool(rng.random() < cfg.herniation_probability * (1.5 if grade >= 3 else 0.7))
    t2_nucleus = NUCLEUS_T2_BY_GRADE[grade] * float(rng.uniform(0.92, 1.08))
    return {
        "grade": grade,
        "length_mm": float(rng.uniform(*DISK_LENGTH_MM)),
        "height_anterior_mm": ha,
        "height_middle_mm": hm,
        "height_posterior_mm": hp,
        "bulge_anterior_mm": float(rng.uniform(0.3, 1.5)),
        "bulge_posterior_mm": float(rng.uniform(0.2, 0.9) + 0.3 * (grade - 1)),
        "herniation_mm": float(rng.uniform(1.5, 4.0)) if herniated else 0.0,
        "herniation_pos": float(rng.uniform(0.35, 0.65)),
        "herniation_width": float(rng.uniform(0.22, 0.32)),  # fraction of the posterior side: a dome, not a spike
        "nucleus_length_frac": float(rng.uniform(0.5, 0.6)),
        "nucleus_height_frac": float(rng.uniform(0.68, 0.82) * (1.0 - 0.08 * (grade - 1))),
        "nucleus_offset_frac": float(rng.uniform(0.0, 0.06)),  # the nucleus sits slightly posterior
        "nucleus_t2_ms": t2_nucleus,
        "cleft": bool(grade >= 2 and rng.random() < 0.7),  # intranuclear cleft: a dark horizontal line on T2
    }


def _sample_anatomy(rng: np.random.Generator, cfg: PhantomConfig) -> dict:
    n_disks = 6 if cfg.include_t12 else 5
    disks = [_sample_disk(rng, i, cfg) for i in range(n_disks)]
    vertebrae = [
        {"height_mm": float(rng.uniform(24.0, 28.5)), "wedge_deg": float(rng.uniform(*_VERTEBRA_WEDGE_DEG[i]))}
        for i in range(n_disks)
    ]
    return {
        "sacral_slope_deg": float(rng.uniform(30.0, 42.0)),
        "sacral_curve_deg": float(rng.uniform(10.0, 16.0)),  # per sacral segment
        "canal_depth_mm": float(rng.uniform(13.0, 18.0)),
        "spinous_length_mm": float(rng.uniform(26.0, 34.0)),
        "muscle_mm": float(rng.uniform(35.0, 60.0)),
        "fat_mm": float(rng.uniform(8.0, 35.0)),
        "prevertebral_mm": float(rng.uniform(2.0, 5.0)),
        "vessel_mm": float(rng.uniform(10.0, 18.0)),
        "aorta_in_plane": float(rng.uniform(0.4, 0.9)) if rng.random() < 0.6 else 0.0,
        "rotation_deg": float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)),
        "shift_mm": [float(rng.uniform(-cfg.max_shift_mm, cfg.max_shift_mm)) for _ in range(2)],
        "cortical_mm": float(rng.uniform(0.9, 1.5)),
        "disks": disks,
        "vertebrae": vertebrae,
    }


# ---------------------------------------------------------------------------------------------------------
# the column
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Column:
    disks: list[_Disk]  # from the bottom
    bodies: list[np.ndarray]  # vertebral body polygons, from the bottom (L5 first)
    body_names: list[str]
    arches: list[np.ndarray]  # lamina + spinous process polygons, same order
    sacrum: np.ndarray
    sacral_plate: np.ndarray  # the dorsal wall of the sacral canal
    canal_front: np.ndarray  # polyline bottom -> top along the posterior walls
    canal_depth: np.ndarray  # per canal_front vertex (mm)
    cord_tip: np.ndarray  # point on canal_front where the conus ends
    anterior_line: np.ndarray  # polyline bottom -> top along the anterior walls
    sacral_back: np.ndarray  # polyline bottom -> top along the back of the sacrum
    sacral_remnants: list[np.ndarray]  # (2, 2) anterior -> posterior lines of the fused sacral disks
    lordosis_deg: float  # angle between the S1 endplate and the L1 superior endplate


def _build_column(anat: dict) -> _Column:
    n = len(anat["disks"])
    names = ["L5", "L4", "L3", "L2", "L1", "T12"][:n]
    levels = list(DISK_LEVELS) + [_T12_DISK[0]]
    labels = [DISK_LABELS[lv] for lv in DISK_LEVELS] + [_T12_DISK[1]]
    theta = math.radians(anat["sacral_slope_deg"])  # S1 endplate rises posteriorly
    m = np.zeros(2)
    disks: list[_Disk] = []
    bodies, arches = [], []
    for i in range(n):
        disk = _place_disk(levels[i], labels[i], anat["disks"][i], m, theta)
        disks.append(disk)
        m_s, th_s = disk.superior_line()
        v = anat["vertebrae"][i]
        w = math.radians(v["wedge_deg"])  # + = anterior taller: the next endplate tilts back (lordosis)
        theta = th_s - w
        m = m_s + v["height_mm"] * _normal(th_s - w / 2.0)
        if names[i] == "L1":  # lumbar lordosis: S1 endplate to L1 superior endplate (Cobb angle)
            lordosis_deg = math.degrees(math.radians(anat["sacral_slope_deg"]) - theta)
    # the endplate above the last vertebra (T11/T12 or T12/L1): a straight chord closes the top body
    half_top = 0.5 * disks[-1].p["length_mm"] * np.array([math.cos(theta), math.sin(theta)])
    top_a, top_p = m - half_top, m + half_top
    for i in range(n):
        lower = disks[i]
        c_lo = lower.corners()
        if i + 1 < n:
            upper_side = disks[i + 1].sides[1]  # inferior side of the disk above, anterior -> posterior
            ai, pi = upper_side[0], upper_side[-1]
        else:
            upper_side = np.stack([top_a, top_p])
            ai, pi = top_a, top_p
        h = np.linalg.norm(ai - c_lo["AS"])
        # polygon: superior side of the disk below (posterior -> anterior), the anterior wall up, the upper
        # endplate anterior -> posterior, the posterior wall down; both walls bow inwards (waisted bodies)
        body = np.concatenate(
            [lower.sides[3], _concave_side(c_lo["AS"], ai, 0.035 * h)[1:], upper_side[1:], _concave_side(pi, c_lo["PS"], 0.03 * h)[1:-1]]
        )
        bodies.append(body)
        # posterior arch in the frame of the body's posterior wall
        origin = (c_lo["PS"] + pi) / 2.0
        e_dir = (pi - c_lo["PS"]) / (np.linalg.norm(pi - c_lo["PS"]) + 1e-12)  # upwards along the wall
        e_post = np.array([e_dir[1], -e_dir[0]])  # rotate -90 deg: posterior
        D, sp = anat["canal_depth_mm"], anat["spinous_length_mm"] * (0.85 if names[i] == "T12" else 1.0)
        uv = np.array(
            [
                (D, 0.42 * h),
                (D + 9.0, 0.40 * h),
                (D + sp, 0.12 * h),
                (D + sp + 3.0, -0.05 * h),
                (D + sp, -0.22 * h),
                (D + 9.0, -0.20 * h),
                (D, -0.32 * h),
            ]
        )
        arches.append(origin + uv[:, 0:1] * e_post + uv[:, 1:2] * e_dir)
    # sacrum: fused segments going down and curving (kyphosis), tapering
    s1 = disks[0]
    seg_len = [s1.p["length_mm"], 27.0, 22.0, 17.0, 12.0, 8.0]
    seg_h = [28.0, 24.0, 19.0, 15.0, 12.0]
    m0, th = s1.inferior_line()
    front, back = [], []
    mm, tt = m0, th
    for k in range(5):
        # the upper sacrum is nearly straight, the curve (kyphosis) grows towards the coccyx
        kappa = math.radians(anat["sacral_curve_deg"]) * (0.2, 0.5, 1.0, 1.4, 1.6)[k]
        tt_next = tt - kappa
        mm_next = mm - seg_h[k] * _normal(tt - kappa / 2.0)
        e = np.array([math.cos(tt_next), math.sin(tt_next)])
        front.append(mm_next - 0.5 * seg_len[k + 1] * e)
        back.append(mm_next + 0.5 * seg_len[k + 1] * e)
        mm, tt = mm_next, tt_next
    sacrum = np.concatenate([s1.sides[1], np.array(back), np.array(front[::-1])])
    # canal: along the posterior walls from S2 up to above the image, depth tapering in the sacrum
    D = anat["canal_depth_mm"]
    cf, depth = [back[1], back[0]], [0.35 * D, 0.6 * D]
    for i, disk in enumerate(disks):
        c = disk.corners()
        cf += [c["PI"], c["PS"]]
        depth += [D * (0.85 if i == 0 else 1.0)] * 2
    up = np.array([-math.sin(theta), math.cos(theta)])
    cf += [top_p, top_p + 120.0 * up]
    depth += [D, D]
    canal_front = np.array(cf)
    # dorsal sacral wall: a bony plate behind the sacral canal
    e_b = [(back[k] - (back[k - 1] if k else s1.corners()["PI"])) for k in range(5)]
    plate_in, plate_out = [], []
    base = [s1.corners()["PI"]] + back
    for k, p in enumerate(base[:5]):
        tng = e_b[min(k, 4)] / (np.linalg.norm(e_b[min(k, 4)]) + 1e-12)  # pointing down the sacrum
        post = np.array([-tng[1], tng[0]])  # rotate +90 deg from "down": posterior
        post = post if post[0] > 0 else -post
        dd = (0.6 - 0.1 * k) * D
        plate_in.append(p + post * dd)
        plate_out.append(p + post * (dd + 7.0))
    sacral_plate = np.array(plate_in + plate_out[::-1])
    # the conus medullaris ends at the lower L1 body, 6 mm above the L1/L2 disk
    l1l2 = disks[4].corners()
    cord_tip = l1l2["PS"] + 6.0 * (l1l2["PS"] - l1l2["PI"]) / max(np.linalg.norm(l1l2["PS"] - l1l2["PI"]), 1e-6)
    # lines the soft-tissue layers follow, extended beyond the coccyx so that every image row has them
    anterior_line = np.array([_extend(front[4], front[3], 150.0)] + front[::-1] + [q for d in disks for q in (d.corners()["AI"], d.corners()["AS"])] + [top_a, top_a + 120.0 * up])
    sacral_back = np.array([_extend(plate_out[4], plate_out[3], 150.0)] + plate_out[::-1])
    # remnants of the S1/S2 and S2/S3 disks cross the fused sacrum as thin dark bands
    sacral_remnants = [np.stack([front[k], back[k]]) for k in range(2)]
    return _Column(
        disks, bodies, names, arches, sacrum, sacral_plate, canal_front, np.array(depth), cord_tip, anterior_line, sacral_back, sacral_remnants, lordosis_deg
    )


def _extend(end: np.ndarray, before: np.ndarray, length: float) -> np.ndarray:
    """The point ``length`` mm beyond ``end`` along the direction before -> end."""
    d = end - before
    return end + d / (np.linalg.norm(d) + 1e-12) * length


def _resample_polyline(pts: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``step`` mm along a polyline (M, 2) and the arc length (mm) at each."""
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], max(2, int(s[-1] / step) + 1))
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], axis=1), t


_CANAL_STEP_MM = 2.0  # canal outline sampling: smooth enough, and the polygon fills stay cheap


def _canal_geometry(col: _Column) -> dict[str, np.ndarray]:
    """Dense canal front line, its posterior normals and depth (construction frame), cord and cauda ribbons."""
    seg = np.linalg.norm(np.diff(col.canal_front, axis=0), axis=1)
    s_knots = np.concatenate([[0.0], np.cumsum(seg)])
    front, s = _resample_polyline(col.canal_front, _CANAL_STEP_MM)
    depth = np.interp(s, s_knots, col.canal_depth)
    tangent = np.gradient(front, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)  # superior tangent turned -90 deg: posterior
    back = front + normal * depth[:, None]
    # where along the canal the conus ends
    tip_idx = int(np.argmin(np.linalg.norm(front - col.cord_tip, axis=1)))
    return {"front": front, "back": back, "normal": normal, "depth": depth, "tip": tip_idx}


def _ribbon(front: np.ndarray, normal: np.ndarray, depth: np.ndarray, f0: np.ndarray, f1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two edges of a strip inside the canal between depth fractions f0 and f1 (construction frame)."""
    return front + normal * (depth * f0)[:, None], front + normal * (depth * f1)[:, None]


class _Frame:
    """Construction frame (mm, x posterior, y superior) -> image pixels (x=col, y=row), and back."""

    def __init__(self, col: _Column, anat: dict, cfg: PhantomConfig):
        lumbar = [d.centre for d in col.disks[:5]]
        v = lumbar[4] - lumbar[0]  # L5/S1 -> L1/L2
        # the construction frame has the S1 endplate at the sacral slope to the horizontal; a strongly curved
        # column is turned half way towards upright (as a supine patient lies), then the subject's rotation
        self.angle = 0.7 * (math.pi / 2 - math.atan2(v[1], v[0])) + math.radians(anat["rotation_deg"])
        self.R = _rot(self.angle)
        self.pivot = np.mean(lumbar, axis=0)
        h_mm, w_mm = cfg.shape[0] * cfg.spacing_mm[0], cfg.shape[1] * cfg.spacing_mm[1]
        self.centre_mm = np.array([0.42 * w_mm + anat["shift_mm"][0], 0.47 * h_mm + anat["shift_mm"][1]])
        self.sr, self.sc = cfg.spacing_mm

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        q = (np.asarray(pts) - self.pivot) @ self.R.T
        x_mm = self.centre_mm[0] + q[:, 0]
        y_mm = self.centre_mm[1] - q[:, 1]  # superior is up: rows grow inferior
        return np.stack([x_mm / self.sc, y_mm / self.sr], axis=1)

    def to_construction(self, x_px: np.ndarray, y_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        qx = x_px * self.sc - self.centre_mm[0]
        qy = self.centre_mm[1] - y_px * self.sr
        c, s = math.cos(self.angle), math.sin(self.angle)
        # inverse rotation R^T
        return c * qx + s * qy + self.pivot[0], -s * qx + c * qy + self.pivot[1]


def _fill(poly_px: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (rows, cols) whose centres lie inside a polygon given as (N, 2) (x=col, y=row)."""
    return fill_polygon(poly_px[:, 1], poly_px[:, 0], shape)


def _fill_strip(a: np.ndarray, b: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels between two matching polylines (N, 2) px, filled quad by quad.

    A long tilted strip (the canal) as one polygon costs its whole bounding box times its vertex count;
    its quads each cost a few pixels.
    """
    rr_all, cc_all = [], []
    for i in range(len(a) - 1):
        quad = np.stack([a[i], a[i + 1], b[i + 1], b[i]])
        if quad[:, 1].max() < -1 or quad[:, 1].min() > shape[0] or quad[:, 0].max() < -1 or quad[:, 0].min() > shape[1]:
            continue
        rr, cc = fill_polygon(quad[:, 1], quad[:, 0], shape)
        rr_all.append(rr)
        cc_all.append(cc)
    if not rr_all:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    flat = np.unique(np.concatenate(rr_all) * shape[1] + np.concatenate(cc_all))
    return flat // shape[1], flat % shape[1]


def _line_x_of_row(line_px: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x of a roughly vertical polyline at each row (clamped at its ends)."""
    order = np.argsort(line_px[:, 1], kind="stable")
    return np.interp(rows, line_px[order, 1], line_px[order, 0])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Zero-mean unit-std smooth random field with blobs of about ``cell_px`` pixels (H, W).

    White noise low-passed with a Gaussian in the Fourier domain (one FFT pair instead of a wide kernel).
    """
    white = rng.standard_normal(shape)
    sigma = max(cell_px / 2.0, 0.5)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    field_ = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=shape)
    return (field_ - field_.mean()) / (field_.std() + 1e-12)


def _tissue_signals(rng: np.random.Generator, cfg: PhantomConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Per-subject signal of each tissue, normalised to the nominal CSF signal; and the variation factors."""
    tr, te = WEIGHTINGS[cfg.weighting]
    v = cfg.tissue_variation
    csf_nominal = float(spin_echo_signal(*TISSUES["csf"][:2], TISSUES["csf"][2], tr, te))
    signals, factors = {}, {}
    for name, (t1, t2, pd) in TISSUES.items():
        f_pd, f_t2 = float(rng.uniform(1 - v, 1 + v)), float(rng.uniform(1 - v / 2, 1 + v / 2))
        if name == "csf":  # the reference: other tissues vary relative to it (CSF ~ 1 before bias and noise)
            f_pd = f_t2 = 1.0
        factors[name] = f_pd
        signals[name] = float(spin_echo_signal(t1, t2 * f_t2, pd * f_pd, tr, te)) / csf_nominal
    signals["_t2_factor_nucleus"] = float(rng.uniform(1 - v / 2, 1 + v / 2))
    return signals, factors


def _nucleus_signal(disk: _Disk, cfg: PhantomConfig, pd_factor: float, t2_factor: float) -> float:
    tr, te = WEIGHTINGS[cfg.weighting]
    g = disk.p["grade"]
    csf_nominal = float(spin_echo_signal(*TISSUES["csf"][:2], TISSUES["csf"][2], tr, te))
    return float(spin_echo_signal(_NUCLEUS_T1_BY_GRADE[g], disk.p["nucleus_t2_ms"] * t2_factor, _NUCLEUS_PD_BY_GRADE[g] * pd_factor, tr, te)) / csf_nominal


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass
class _Canvas:
    """The image being painted (signal, float64) and its label map (uint16), both (H, W), and the mapping."""

    img: np.ndarray
    lab: np.ndarray
    frame: _Frame
    spacing: tuple[float, float]

    @property
    def shape(self) -> tuple[int, int]:
        return self.img.shape

    def fill(self, poly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels inside a construction-frame polygon (N, 2)."""
        return _fill(self.frame.to_px(poly), self.shape)

    def fill_strip(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _fill_strip(self.frame.to_px(a), self.frame.to_px(b), self.shape)


def _paint_soft_tissue(cv: _Canvas, col: _Column, canal: dict, anat: dict, sig: dict, rng: np.random.Generator) -> None:
    """Muscle, fat, skin and air behind the column; ligament, aorta and abdomen in front; fat in between.

    Layers are set by the distance (mm, along the rows) from the column's back line (canal, sacrum) and
    front line (anterior walls), with a smooth wobble so the boundaries are not parallel to the spine.
    """
    H, W = cv.shape
    sr, sc = cv.spacing
    rows = np.arange(H, dtype=np.float64)
    col_mm = np.arange(W, dtype=np.float64)[None, :] * sc
    back_line = cv.frame.to_px(np.concatenate([col.sacral_back, canal["back"][canal["back"][:, 1] > col.disks[0].centre[1]]]))
    # smoothed along the rows: the lines have kinks (canal -> sacrum) that soft tissue does not follow
    x_back = ndimage.gaussian_filter1d(_line_x_of_row(back_line, rows), 8.0 / sr, mode="nearest")[:, None] * sc
    x_front = ndimage.gaussian_filter1d(_line_x_of_row(cv.frame.to_px(col.anterior_line), rows), 4.0 / sr, mode="nearest")[:, None] * sc
    wobble = _smooth_noise(rng, (H, W), 60.0 / sr)
    s_post = col_mm - x_back + 4.0 * wobble
    s_ant = x_front - col_mm + 3.0 * wobble
    fatty = np.clip(0.12 + 0.12 * _smooth_noise(rng, (H, W), 6.0 / sr), 0.0, 0.5)  # fatty streaks in muscle
    muscle = sig["muscle"] * (1 - fatty) + sig["fat"] * fatty
    m_end, f_end = anat["muscle_mm"], anat["muscle_mm"] + anat["fat_mm"]
    img = np.full((H, W), sig["fat"])  # epidural / presacral fat wherever nothing else is
    img = np.where(s_post > 0, muscle, img)
    img = np.where(s_post > m_end, sig["fat"], img)
    img = np.where(s_post > f_end, sig["skin"], img)
    img = np.where(s_post > f_end + 2.5, sig["air"], img)
    # abdomen: bowel loops (fluid), mesenteric fat and soft tissue in smooth blobs
    blobs = _smooth_noise(rng, (H, W), 14.0 / sr)
    fluid = _smoothstep((blobs - 1.0) / 0.5)
    fat_part = _smoothstep((-blobs - 0.3) / 0.6)
    viscera = sig["viscera"] * (1 - fluid - fat_part) + sig["bowel_fluid"] * fluid + sig["fat"] * fat_part
    viscera = viscera * (1.0 + 0.08 * _smooth_noise(rng, (H, W), 3.0 / sr))
    img = np.where(s_ant > 0, sig["ligament"], img)
    img = np.where(s_ant > anat["prevertebral_mm"], viscera, img)
    if anat["aorta_in_plane"] > 0:
        # the aorta runs in front of the column down to L4, left of the midline: only part of it is in the
        # slice, a partial flow void
        l4_row = cv.frame.to_px(col.disks[1].centre[None])[0, 1] - 10.0 / sr
        vessel = (s_ant > anat["prevertebral_mm"]) & (s_ant < anat["prevertebral_mm"] + anat["vessel_mm"])
        share = anat["aorta_in_plane"] * _smoothstep((l4_row - rows[:, None]) / (15.0 / sr)) * vessel  # fades out at L4
        img = (1 - share) * img + share * sig["vessel"]
    cv.img[:] = img


def _paint_canal(cv: _Canvas, canal: dict, sig: dict, rng: np.random.Generator) -> None:
    """CSF (label 100), the conus above its tip and three cauda equina roots below it (partial volume)."""
    rr, cc = cv.fill_strip(canal["front"], canal["back"])
    cv.img[rr, cc] = sig["csf"]
    cv.lab[rr, cc] = CANAL_LABEL
    n, tip = len(canal["front"]), canal["tip"]
    taper = np.clip((np.arange(n) - tip) * _CANAL_STEP_MM / 25.0, 0.0, 1.0)  # the conus tapers over 25 mm
    if tip < n - 1:
        sl = slice(tip, n)
        e0, e1 = _ribbon(canal["front"][sl], canal["normal"][sl], canal["depth"][sl], 0.5 - 0.27 * taper[sl], 0.5 + 0.27 * taper[sl])
        rr, cc = cv.fill_strip(e0, e1)
        cv.img[rr, cc] = sig["cord"]
    for frac in rng.uniform(0.5, 0.85, size=3):  # supine: the roots lie in the dorsal half of the sac
        width = 0.7 / canal["depth"][: tip + 1]
        ff = np.full(tip + 1, frac) + 0.04 * np.sin(np.linspace(0, 3 * np.pi, tip + 1) + frac * 10)
        start = max(0, tip - int(rng.uniform(60, 120) / _CANAL_STEP_MM))  # roots leave the sac at their foramen
        sl = slice(start, tip + 1)
        e0, e1 = _ribbon(canal["front"][sl], canal["normal"][sl], canal["depth"][sl], ff[sl] - width[sl] / 2, ff[sl] + width[sl] / 2)
        rr, cc = cv.fill_strip(e0, e1)
        cv.img[rr, cc] = 0.6 * cv.img[rr, cc] + 0.4 * sig["cord"]


def _paint_bone(cv: _Canvas, col: _Column, anat: dict, sig: dict, rng: np.random.Generator) -> dict[str, int]:
    """Sacrum (label 0), vertebral bodies and arches (vertebra labels), marrow texture and cortical rim.

    Returns each vertebra's label (k, or 100 + k when the image border cuts its body).
    """
    H, W = cv.shape
    bone = np.zeros((H, W), dtype=bool)
    marrow_tex = 1.0 + 0.07 * _smooth_noise(rng, (H, W), 4.0 / cv.spacing[0])
    for poly in (col.sacral_plate, col.sacrum):
        rr, cc = cv.fill(poly)
        cv.img[rr, cc] = sig["sacral_marrow"] * marrow_tex[rr, cc]
        cv.lab[rr, cc] = 0
        bone[rr, cc] = True
    for line in col.sacral_remnants:
        e = line[1] - line[0]
        n = np.array([-e[1], e[0]]) / (np.linalg.norm(e) + 1e-12) * 0.8  # 1.6 mm thick
        a, b = line[0] + 0.1 * e, line[0] + 0.9 * e  # the rim stays bone: only the inner part shows
        rr, cc = cv.fill(np.stack([a - n, b - n, b + n, a + n]))
        cv.img[rr, cc] = 0.5 * (cv.img[rr, cc] + sig["annulus"])
    vertebra_labels = {}
    for name, body, arch in zip(col.body_names, col.bodies, col.arches):
        body_px = cv.frame.to_px(body)
        inside = (body_px[:, 0] >= 0) & (body_px[:, 0] <= W - 1) & (body_px[:, 1] >= 0) & (body_px[:, 1] <= H - 1)
        label = VERTEBRA_LABELS[name] + (0 if inside.all() else _PARTIAL_OFFSET)
        vertebra_labels[name] = label
        for poly in (arch, body):
            rr, cc = cv.fill(poly)
            cv.img[rr, cc] = sig["marrow"] * marrow_tex[rr, cc]
            cv.lab[rr, cc] = label
            bone[rr, cc] = True
    # cortex and endplates: the outer rim of every bone, wherever it meets something else
    dist = ndimage.distance_transform_edt(bone, sampling=cv.spacing)
    cv.img[bone & (dist <= anat["cortical_mm"])] = sig["cortical"]
    return vertebra_labels


def _paint_disks(cv: _Canvas, col: _Column, cfg: PhantomConfig, sig: dict, factors: dict) -> None:
    """Annulus with a soft-edged superelliptic nucleus; mask from the same dense curve as the contour."""
    for disk in col.disks:
        rr, cc = cv.fill(disk.dense_polygon())
        cv.lab[rr, cc] = disk.label
        p = disk.p
        L, ha, hp, hm = p["length_mm"], p["height_anterior_mm"], p["height_posterior_mm"], p["height_middle_mm"]
        # pixel centres in the disk's own frame (u anterior -> posterior, v superior), mm
        x, y = cv.frame.to_construction(cc.astype(np.float64), rr.astype(np.float64))
        c, s = math.cos(disk.axis), math.sin(disk.axis)
        u = c * (x - disk.centre[0]) + s * (y - disk.centre[1])
        v = -s * (x - disk.centre[0]) + c * (y - disk.centre[1])
        t = np.clip(u / L + 0.5, 0.0, 1.0)
        half_h = 0.5 * (ha + (hp - ha) * t) + max(0.0, (hm - 0.5 * (ha + hp)) / 2.0) * _bump_flat(t)
        a = 0.5 * p["nucleus_length_frac"] * L
        b = p["nucleus_height_frac"] * half_h  # the nucleus follows the disk's wedge
        r = np.abs((u - p["nucleus_offset_frac"] * L) / a) ** 2.5 + np.abs(v / b) ** 2.5
        w = _smoothstep((1.0 - r) / 0.3)
        nucleus = _nucleus_signal(disk, cfg, factors["nucleus"], sig["_t2_factor_nucleus"])
        val = sig["annulus"] + w * (nucleus - sig["annulus"])
        if p["cleft"]:
            val = val * (1.0 - 0.45 * w * np.exp(-0.5 * (v / 0.6) ** 2))
        cv.img[rr, cc] = val


def _render(col: _Column, frame: _Frame, anat: dict, cfg: PhantomConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Noise-free signal (H, W) float64 and labels (H, W) uint16, painted back to front."""
    sig, factors = _tissue_signals(rng, cfg)
    cv = _Canvas(np.zeros(cfg.shape), np.zeros(cfg.shape, dtype=np.uint16), frame, cfg.spacing_mm)
    canal = _canal_geometry(col)
    _paint_soft_tissue(cv, col, canal, anat, sig, rng)
    _paint_canal(cv, canal, sig, rng)
    vertebra_labels = _paint_bone(cv, col, anat, sig, rng)
    _paint_disks(cv, col, cfg, sig, factors)
    return cv.img, cv.lab, {"vertebra_labels": vertebra_labels, "tissue_signal": {k: round(v, 5) for k, v in sig.items() if not k.startswith("_")}}


def _artefacts(img: np.ndarray, cfg: PhantomConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Bias field, blur, Gibbs ringing and Rician noise, in the order a scanner would add them."""
    from numpy.polynomial.legendre import leggrid2d

    H, W = img.shape
    coeffs = rng.uniform(-cfg.bias_coeff, cfg.bias_coeff, size=(4, 4))
    coeffs[np.add.outer(np.arange(4), np.arange(4)) > 3] = 0.0  # total degree <= 3, as MONAI RandBiasField
    coeffs[0, 0] = 0.0  # keep the mean level: CSF stays ~ 1
    bias = np.exp(leggrid2d(np.linspace(-1, 1, H), np.linspace(-1, 1, W), coeffs))
    out = img * bias
    blur = float(rng.uniform(*cfg.blur_sigma_px))
    out = ndimage.gaussian_filter(out, blur, mode="nearest")
    gibbs = float(rng.uniform(*cfg.gibbs_alpha)) if rng.random() < cfg.gibbs_probability else 0.0
    if gibbs > 0:
        # phase encoding along the columns (antero-posterior): keep the central (1 - alpha) of k-space
        k = np.fft.fftshift(np.fft.fft(out, axis=1), axes=1)
        keep = int(round(W * (1.0 - gibbs) / 2.0))
        mid = W // 2
        k[:, : max(0, mid - keep)] = 0
        k[:, mid + keep :] = 0
        out = np.real(np.fft.ifft(np.fft.ifftshift(k, axes=1), axis=1))
    sigma = float(rng.uniform(*cfg.noise_sigma)) * float(out.max())
    n1 = rng.normal(0.0, sigma, size=out.shape)
    n2 = rng.normal(0.0, sigma, size=out.shape)
    out = np.sqrt((out + n1) ** 2 + n2**2)  # magnitude of complex Gaussian noise: Rician
    return out.astype(np.float32), {"bias_coeffs": coeffs.round(5).tolist(), "blur_sigma_px": blur, "gibbs_alpha": gibbs, "noise_sigma": sigma}


def generate_subject(seed: int, config: PhantomConfig | None = None) -> PhantomSubject:
    """Generate one subject; the same ``seed`` and config always give the same arrays.

    Returns image (H, W) float32, label (H, W) uint16, the five lumbar disks from the bottom with
    ``points_px`` (176, 2) (x=col, y=row) and ``points_mm``, spacing, the (4, 4) affine and the parameters.
    """
    from diskrobust.data.dataset_io import sagittal_affine

    cfg = config if config is not None else PhantomConfig()
    if not isinstance(cfg, PhantomConfig):
        raise TypeError(f"config must be a PhantomConfig, got {type(cfg).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    anat = _sample_anatomy(rng, cfg)
    col = _build_column(anat)
    frame = _Frame(col, anat, cfg)
    image, label, extra = _render(col, frame, anat, cfg, rng)
    image, art = _artefacts(image, cfg, rng)
    H, W = cfg.shape
    sr, sc = cfg.spacing_mm
    disks = []
    for disk in col.disks[:5]:
        sides_px = [frame.to_px(s) for s in disk.sides]
        pts = np.concatenate([_resample_side(s) for s in sides_px]).astype(np.float64)
        assert pts.shape == (NUM_POINTS, 2)
        if pts[:, 0].min() < 0 or pts[:, 1].min() < 0 or pts[:, 0].max() > W - 1 or pts[:, 1].max() > H - 1:
            raise RuntimeError(f"phantom seed {seed}: disk {disk.level} falls outside the {H}x{W} image; enlarge the field of view")
        disks.append({"level": disk.level, "label": disk.label, "points_px": pts, "points_mm": pts * np.array([sc, sr])})
    params = {
        "seed": seed,
        "weighting": cfg.weighting,
        **{k: v for k, v in anat.items() if k not in ("disks", "vertebrae")},
        "disks": [{"level": d.level, "label": d.label, **d.p} for d in col.disks],
        "vertebrae": [{"name": nm, "label": extra["vertebra_labels"][nm], **v} for nm, v in zip(col.body_names, anat["vertebrae"])],
        "lordosis_deg": col.lordosis_deg,
        "column_rotation_deg": math.degrees(frame.angle),
        "tissue_signal": extra["tissue_signal"],
        **art,
    }
    return PhantomSubject(
        image=image,
        label=label,
        disks=disks,
        spacing_mm=(sr, sc),
        affine=sagittal_affine((sr, sc), cfg.slice_thickness_mm, cfg.shape),
        params=json.loads(json.dumps(params)),
    )


# ---------------------------------------------------------------------------------------------------------
# datasets on disk
# ---------------------------------------------------------------------------------------------------------


def subject_seeds(seed: int, subjects: int) -> list[int]:
    """Per-subject seeds spawned from the dataset seed; subject i's seed does not depend on ``subjects``."""
    children = np.random.SeedSequence(int(seed)).spawn(int(subjects))
    return [int(c.generate_state(1, dtype=np.uint32)[0]) for c in children]


def _split_counts(n: int, split: tuple[float, float, float]) -> list[int]:
    counts = [int(round(n * f)) for f in split[:2]]
    counts.append(n - sum(counts))
    # every split asked for gets at least one subject when there are enough
    for i, f in enumerate(split):
        if f > 0 and counts[i] <= 0 and n >= sum(1 for g in split if g > 0):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def _write_one(job: tuple[int, int, str, dict]) -> dict:
    """Generate and write one subject (runs in a worker process)."""
    from diskrobust.data.dataset_io import write_contours_json, write_image_nifti

    index, seed, out_dir, cfg_dict = job
    cfg = PhantomConfig.from_dict(cfg_dict)
    subj = generate_subject(seed, cfg)
    name = f"sub-{index:04d}"
    out = Path(out_dir)
    write_image_nifti(out / "images" / f"{name}.nii.gz", subj.image, subj.affine)
    write_image_nifti(out / "labels" / f"{name}.nii.gz", subj.label, subj.affine)
    write_contours_json(out / "contours" / f"{name}.json", name, cfg.shape, subj.spacing_mm, subj.disks)
    return {"subject": name, "seed": seed, "params": subj.params}


def write_phantom_dataset(
    out_dir: str | Path,
    subjects: int,
    seed: int,
    config: PhantomConfig | None = None,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    progress: bool = True,
    workers: int = 2,
) -> Path:
    """Generate ``subjects`` subjects into ``out_dir`` and return the path of its datalist.json.

    Writes images/, labels/, contours/, datalist.json (MONAI datalist, paths relative to it, split by
    subject in order: the first ``split[0]`` go to training) and phantom.json (config, seed, per-subject
    seeds and parameters). Same arguments -> same bytes, whatever ``workers`` is.

    With ``workers > 1`` the subjects are made in a "spawn" process pool: a script that calls this at
    import time needs the usual ``if __name__ == "__main__":`` guard (or ``workers=1``).
    """
    from diskrobust.data.dataset_io import _atomic_write_json, write_datalist

    cfg = config if config is not None else PhantomConfig()
    subjects, seed, workers = int(subjects), int(seed), int(workers)
    if subjects < 1:
        raise ValueError(f"subjects must be >= 1, got {subjects}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    split = tuple(float(f) for f in split)
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split must be three non-negative fractions (training, validation, test) summing to 1, got {split}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = subject_seeds(seed, subjects)
    jobs = [(i, s, str(out), cfg.to_dict()) for i, s in enumerate(seeds)]
    from tqdm.auto import tqdm

    bar = tqdm(total=subjects, desc="phantom", unit="subject", disable=not progress)
    results: list[dict] = []
    try:
        if workers > 1 and subjects > 1:
            import multiprocessing as mp

            # spawn, not fork: the caller may hold torch threads; the workers import only numpy/scipy/skimage
            with mp.get_context("spawn").Pool(min(workers, subjects)) as pool:
                for r in pool.imap(_write_one, jobs, chunksize=1):
                    results.append(r)
                    bar.update(1)
        else:
            for job in jobs:
                results.append(_write_one(job))
                bar.update(1)
    finally:
        bar.close()
    counts = _split_counts(subjects, split)
    entries = [
        {"subject": r["subject"], "image": f"images/{r['subject']}.nii.gz", "label": f"labels/{r['subject']}.nii.gz", "contours": f"contours/{r['subject']}.json"}
        for r in results
    ]
    splits = {"training": entries[: counts[0]], "validation": entries[counts[0] : counts[0] + counts[1]], "test": entries[counts[0] + counts[1] :]}
    _atomic_write_json(
        out / "phantom.json",
        {
            "generator": "diskrobust.data.phantom",
            "seed": seed,
            "subjects": subjects,
            "split": list(split),
            "config": cfg.to_dict(),
            "subject_params": results,
        },
    )
    # written last: its presence marks a complete dataset (see ensure_phantom)
    return write_datalist(out / "datalist.json", splits)


def _warn_if_other_phantom(d: Path, subjects: int, seed: int, config: PhantomConfig | None) -> None:
    """An existing phantom made with other settings is used as is; say so, since results depend on it."""
    meta_path = d / "phantom.json"
    if not meta_path.is_file():
        return  # a converted real dataset: nothing to compare
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    wanted = {"subjects": int(subjects), "seed": int(seed), "config": (config or PhantomConfig()).to_dict()}
    differ = [k for k, v in wanted.items() if meta.get(k) != v]
    if differ:
        import logging

        logging.getLogger(__name__).warning(
            "%s already holds a phantom dataset whose %s differ from the requested ones; using it as is "
            "(delete the folder to regenerate)", d, ", ".join(differ)
        )


def ensure_phantom(dataset_dir: str | Path, subjects: int = 100, seed: int = 0, config: PhantomConfig | None = None, progress: bool = True) -> Path:
    """The folder's datalist.json; generate the phantom there first if the folder is missing or empty.

    A folder with other content but no datalist.json is not touched: DataError names it.
    """
    d = Path(dataset_dir)
    datalist = d / "datalist.json"
    if datalist.is_file():
        _warn_if_other_phantom(d, subjects, seed, config)
        return datalist
    if d.exists():
        if not d.is_dir():
            raise DataError(d, "dataset path exists and is not a folder")
        if any(d.iterdir()):
            raise DataError(d, "folder is not empty and holds no datalist.json; refusing to generate the phantom into it (empty it or pick another folder)")
    return write_phantom_dataset(d, subjects=subjects, seed=seed, config=config, progress=progress)


def render_subject_png(subject: PhantomSubject, path: str | Path, title: str | None = None) -> Path:
    """Save the image with the ground-truth contours (corners marked) as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H, W = subject.image.shape
    sr, sc = subject.spacing_mm
    fig, ax = plt.subplots(figsize=(6, 6 * (H * sr) / (W * sc)), dpi=110)
    # aspect = row/col spacing: anatomy keeps its shape on non-square pixels
    ax.imshow(subject.image, cmap="gray", vmin=0, vmax=float(np.percentile(subject.image, 99.7)), interpolation="nearest", aspect=sr / sc)
    colours = plt.cm.autumn(np.linspace(0, 1, len(subject.disks)))
    for disk, colour in zip(subject.disks, colours):
        p = disk["points_px"]
        ax.plot(np.append(p[:, 0], p[0, 0]), np.append(p[:, 1], p[0, 1]), "-", color=colour, lw=0.8)
        corners = p[::POINTS_PER_SIDE]
        ax.plot(corners[1:, 0], corners[1:, 1], "o", ms=2.5, color="cyan")
        ax.plot(corners[0, 0], corners[0, 1], "o", ms=3.5, color="lime")  # point 0: anterior-superior
        ax.text(p[:, 0].min() - 4, p[:, 1].mean(), disk["level"], color="yellow", fontsize=6, ha="right", va="center")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout(pad=0.2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
