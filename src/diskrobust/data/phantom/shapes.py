"""Disk outlines with their pathologies, in the construction frame (mm, x posterior, y superior).

A disk is four sides between four defined corners (AS, AI, PI, PS). In the disk's own frame (u anterior ->
posterior, v superior) the corners are at (-L/2 -+ s/2, +-ha/2) and (L/2 -+ s/2, +-hp/2), s being the
forward slip of the vertebra above (spondylolisthesis; 0 normally), so the AP length (between the
midpoints of the anterior and posterior corner pairs) stays L. Each side is its chord plus outward
offsets that vanish at the corners:

* endplates (inferior, superior): a flat-topped bump so the middle height is hm (negative: the vertebra
  bulges into the disk), Schmorl nodes (rounded pits into the vertebra), wavy irregularity;
* anterior side: the anterior bulge;
* posterior side: the posterior bulge, and a herniation (``add_herniation``): a tongue of disk material whose
  outer edge lies ``T(t)`` behind the wall; for an extrusion or a migrated fragment it reaches past the
  endplate level along the neighbouring vertebra's posterior wall, so the side then runs from PI down the
  wall, round the fragment and back up to PS. The contour follows that outline, corners stay corners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from diskrobust import POINTS_PER_SIDE

_DENSE = 200  # samples per side of the dense curve that both the contour and the masks come from
_STEP_MM = 0.15  # sampling of a herniation's outline


def rot(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s], [s, c]])


def normal(theta: float) -> np.ndarray:
    """Unit normal of an endplate with direction angle theta (anterior -> posterior): points superior."""
    return np.array([-math.sin(theta), math.cos(theta)])


def bump_sine(t: np.ndarray) -> np.ndarray:
    return np.sin(np.pi * t)


def bump_flat(t: np.ndarray) -> np.ndarray:
    # endplates: flat in the middle, curving into the corner over the outer rim (ring apophysis)
    return 1.0 - np.abs(2.0 * t - 1.0) ** 3


def _pit(t: np.ndarray, pos: float, half_width: float) -> np.ndarray:
    """A rounded pit profile (max 1 at ``pos``, 0 beyond +-half_width; t and widths as side fractions):
    a round bottom, smooth shoulders where it leaves the endplate."""
    x = np.clip(np.abs(t - pos) / max(half_width, 1e-6), 0.0, 1.0)
    return (1.0 - x**2.5) ** 1.6


def _endplate_offset(p: dict, which: int, t: np.ndarray, length_mm: float) -> np.ndarray:
    """Outward offset (mm) of endplate ``which`` (0 inferior, 1 superior), t from 0 (anterior) to 1."""
    L, ha, hp, hm = length_mm, p["height_anterior_mm"], p["height_posterior_mm"], p["height_middle_mm"]
    d = (hm - 0.5 * (ha + hp)) / 2.0  # endplate bump so the mid-height is hm
    off = d * bump_flat(t)
    name = ("inferior", "superior")[which]
    for node in p.get("schmorl", []):
        if node["endplate"] == name:
            off = off + node["depth_mm"] * _pit(t, node["pos"], 0.5 * node["width_mm"] / L)
    amp = p.get("irregular_endplate_mm", 0.0)
    if amp > 0:
        c = np.asarray(p["irregular_coeffs"])[which]  # (6, 2): harmonics 2..7 along the endplate
        k = np.arange(2, 8)[:, None]
        wave = (c[:, :1] * np.cos(np.pi * k * t[None]) + c[:, 1:] * np.sin(np.pi * k * t[None])) / k
        wave = wave.sum(0)
        wave = wave / (np.sqrt(np.mean(wave**2)) + 1e-9)
        off = off + amp * wave * np.sin(np.pi * t) ** 1.5  # calm at the corners (ring apophysis)
    return off


@dataclass
class Disk:
    level: str
    label: int
    centre: np.ndarray  # construction frame
    axis: float  # angle of the anterior -> posterior mid-line
    p: dict  # sampled parameters
    sides: list[np.ndarray] = field(default_factory=list)  # 4 x (M, 2), each from its start corner to its end corner
    base_posterior: np.ndarray | None = None  # the posterior side without the herniation (when there is one)

    def local_to_world(self, uv: np.ndarray) -> np.ndarray:
        return uv @ rot(self.axis).T + self.centre

    def local_corners(self) -> tuple[np.ndarray, ...]:
        L, ha, hp, s = self.p["length_mm"], self.p["height_anterior_mm"], self.p["height_posterior_mm"], self.p.get("slip_mm", 0.0)
        return tuple(np.array(c, dtype=np.float64) for c in ((-L / 2 - s / 2, ha / 2), (-L / 2 + s / 2, -ha / 2), (L / 2 + s / 2, -hp / 2), (L / 2 - s / 2, hp / 2)))

    def build(self) -> None:
        L = self.p["length_mm"]
        t = np.linspace(0.0, 1.0, _DENSE + 1)
        AS, AI, PI, PS = self.local_corners()
        tt = t[:, None]
        anterior = AS + tt * (AI - AS) + np.array([-1.0, 0.0]) * (self.p["bulge_anterior_mm"] * bump_sine(t))[:, None]
        inferior = AI + tt * (PI - AI) + np.array([0.0, -1.0]) * _endplate_offset(self.p, 0, t, L)[:, None]
        posterior = PI + tt * (PS - PI) + np.array([1.0, 0.0]) * (self.p["bulge_posterior_mm"] * bump_sine(t))[:, None]
        # the superior side runs posterior -> anterior: its t is reversed for the endplate profile
        superior = PS + tt * (AS - PS) + np.array([0.0, 1.0]) * _endplate_offset(self.p, 1, 1.0 - t, L)[:, None]
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

    def add_herniation(self, wall_down: np.ndarray, wall_up: np.ndarray) -> None:
        """Rebuild the posterior side with the herniation (if any).

        ``wall_down`` / ``wall_up``: unit directions of the neighbouring vertebrae's posterior walls from PI
        (downwards) and from PS (upwards), along which an extrusion or migrated fragment lies.
        """
        p = self.p
        if p.get("herniation", "none") == "none" or p["herniation_mm"] <= 0:
            return
        base_side = self.sides[2]
        PI, PS = base_side[0], base_side[-1]
        Lp = float(np.linalg.norm(PS - PI))
        e_t = (PS - PI) / Lp
        e_n = np.array([e_t[1], -e_t[0]])  # outward: posterior
        # the base of the side by arc position t (mm from PI; < 0 below PI along the lower wall, > Lp above PS)
        seg = np.linalg.norm(np.diff(base_side, axis=0), axis=1)
        s_side = np.concatenate([[0.0], np.cumsum(seg)]) * (Lp / max(seg.sum(), 1e-9))

        def base(t: np.ndarray) -> np.ndarray:
            t = np.asarray(t, dtype=np.float64)
            inside = np.stack([np.interp(t, s_side, base_side[:, 0]), np.interp(t, s_side, base_side[:, 1])], axis=1)
            below = PI + np.clip(-t, 0.0, None)[:, None] * wall_down
            above = PS + np.clip(t - Lp, 0.0, None)[:, None] * wall_up
            return np.where((t < 0)[:, None], below, np.where((t > Lp)[:, None], above, inside))

        centre = p["herniation_pos"] * Lp
        half = 0.5 * p["herniation_base_frac"] * Lp
        margin = 0.12 * Lp  # an attachment keeps off the corners
        a0, b0 = max(margin, centre - half), min(Lp - margin, centre + half)
        down, up = p["herniation_down_mm"], p["herniation_up_mm"]
        t_a = -down if down > 0 else a0
        t_b = Lp + up if up > 0 else b0
        # thickest where the material is: in the migrated part for a fragment, over the attachment otherwise
        if p["herniation"] == "migration":
            t_c = t_a + 0.45 * down if down > 0 else t_b - 0.45 * up
        else:
            t_c = 0.5 * (max(t_a, a0 - 1.0) + min(t_b, b0 + 1.0)) if (down > 0 or up > 0) else 0.5 * (a0 + b0)
        t_c = float(np.clip(t_c, t_a + 0.5, t_b - 0.5))
        n = max(24, int((t_b - t_a) / _STEP_MM))
        tt = np.linspace(t_a, t_b, n)
        x = np.where(tt < t_c, (tt - t_c) / (t_c - t_a), (tt - t_c) / (t_b - t_c))
        # ends along a wall beyond an endplate are round tips, attachments rise smoothly from the wall
        tip_lo, tip_hi = down > 0, up > 0
        rounded = (1.0 - np.clip(np.abs(x), 0, 1) ** 2.2) ** (1 / 2.2)
        smooth = (1.0 - np.clip(np.abs(x), 0, 1) ** 2.5) ** 2  # a dome: round top, smooth foot
        g = np.where(x < 0, rounded if tip_lo else smooth, rounded if tip_hi else smooth)
        outer = base(tt) + (p["herniation_mm"] * g)[:, None] * e_n
        parts = []
        if t_a < 0:
            parts.append(base(np.linspace(0.0, t_a, max(4, int(-t_a / _STEP_MM))))[:-1])
        else:
            parts.append(base_side[s_side < t_a])
        parts.append(outer)
        if t_b > Lp:
            parts.append(base(np.linspace(t_b, Lp, max(4, int((t_b - Lp) / _STEP_MM))))[1:])
        else:
            parts.append(base_side[s_side > t_b])
        side = np.concatenate(parts)
        side[0], side[-1] = PI, PS
        self.base_posterior = base_side
        self.sides[2] = side


def place_disk(level: str, label: int, p: dict, m: np.ndarray, theta: float) -> Disk:
    """Put a disk whose inferior endplate chord is centred on ``m`` with direction ``theta``."""
    L, ha, hp, s = p["length_mm"], p["height_anterior_mm"], p["height_posterior_mm"], p.get("slip_mm", 0.0)
    delta = math.atan2((ha - hp) / 2.0, L)  # the inferior chord rises posteriorly by delta in the disk frame
    axis = theta - delta
    centre = m - rot(axis) @ np.array([s / 2.0, -(ha + hp) / 4.0])
    disk = Disk(level, label, centre, axis, p)
    disk.build()
    return disk


def resample_side(side: np.ndarray, n: int = POINTS_PER_SIDE) -> np.ndarray:
    """n points equally spaced by arc length from the side's start corner (included) to its end (excluded)."""
    seg = np.linalg.norm(np.diff(side, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.arange(n) * (s[-1] / n)
    return np.stack([np.interp(targets, s, side[:, 0]), np.interp(targets, s, side[:, 1])], axis=1)


def concave_side(a: np.ndarray, b: np.ndarray, depth: float, n: int = 40) -> np.ndarray:
    """Curve from a to b bowed by ``depth`` mm to the right of a->b (negative: to the left)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    d = b - a
    nrm = np.array([d[1], -d[0]]) / (np.linalg.norm(d) + 1e-12)
    return a + t * d + nrm * (depth * bump_sine(t[:, 0]))[:, None]


def osteophyte_polygon(corner: np.ndarray, outward: np.ndarray, towards_disk: np.ndarray, size_mm: float) -> np.ndarray:
    """A beak growing from a vertebral corner: ``outward`` (away from the body), curving ``towards_disk``."""
    o = outward / (np.linalg.norm(outward) + 1e-12)
    d = towards_disk / (np.linalg.norm(towards_disk) + 1e-12)
    base_w = 0.9 * size_mm + 1.0
    pts = [
        corner - d * base_w - o * 1.0,  # rooted inside the body
        corner - d * base_w + o * 0.35 * size_mm,
        corner + o * 0.85 * size_mm + d * 0.15 * size_mm,
        corner + o * 1.0 * size_mm + d * 0.6 * size_mm,  # the tip bends over the disk
        corner + o * 0.5 * size_mm + d * 0.35 * size_mm,
        corner + d * 0.1 * size_mm - o * 1.0,
    ]
    return np.array(pts)
