"""The column: disks and vertebral bodies stacked from the sacrum, the canal, and the image frame."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from skimage.draw import polygon as fill_polygon

from .config import DISK_LABELS, DISK_LEVELS, T12_DISK, PhantomConfig
from .shapes import Disk, concave_side, normal, osteophyte_polygon, place_disk, rot

@dataclass
class Column:
    disks: list[Disk]  # from the bottom
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
    osteophytes: list[tuple[np.ndarray, int]] = field(default_factory=list)  # (polygon, body index; -1 = sacrum)


def build_column(anat: dict) -> Column:
    n = len(anat["disks"])
    names = ["L5", "L4", "L3", "L2", "L1", "T12"][:n]
    levels = list(DISK_LEVELS) + [T12_DISK[0]]
    labels = [DISK_LABELS[lv] for lv in DISK_LEVELS] + [T12_DISK[1]]
    theta = math.radians(anat["sacral_slope_deg"])  # S1 endplate rises posteriorly
    m = np.zeros(2)
    disks: list[Disk] = []
    bodies, arches = [], []
    for i in range(n):
        disk = place_disk(levels[i], labels[i], anat["disks"][i], m, theta)
        disks.append(disk)
        m_s, th_s = disk.superior_line()
        v = anat["vertebrae"][i]
        w = math.radians(v["wedge_deg"])  # + = anterior taller: the next endplate tilts back (lordosis)
        theta = th_s - w
        m = m_s + v["height_mm"] * normal(th_s - w / 2.0)
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
            [lower.sides[3], concave_side(c_lo["AS"], ai, 0.035 * h)[1:], upper_side[1:], concave_side(pi, c_lo["PS"], 0.03 * h)[1:-1]]
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
        mm_next = mm - seg_h[k] * normal(tt - kappa / 2.0)
        e = np.array([math.cos(tt_next), math.sin(tt_next)])
        front.append(mm_next - 0.5 * seg_len[k + 1] * e)
        back.append(mm_next + 0.5 * seg_len[k + 1] * e)
        mm, tt = mm_next, tt_next
    sacrum = np.concatenate([s1.sides[1], np.array(back), np.array(front[::-1])])
    # herniations lie against the posterior walls of the neighbouring vertebrae (or the sacrum)
    for i, disk in enumerate(disks):
        c = disk.corners()
        below = disks[i - 1].corners()["PS"] if i > 0 else back[0]
        above = disks[i + 1].corners()["PI"] if i + 1 < n else top_p
        disk.add_herniation(_unit(below - c["PI"]), _unit(above - c["PS"]))
    osteophytes = _osteophytes(disks)
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
    return Column(
        disks, bodies, names, arches, sacrum, sacral_plate, canal_front, np.array(depth), cord_tip, anterior_line, sacral_back, sacral_remnants, lordosis_deg,
        osteophytes,
    )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


def _osteophytes(disks: list[Disk]) -> list[tuple[np.ndarray, int]]:
    """Beaks at the vertebral corners next to each disk: (polygon, index of the body they grow from)."""
    out = []
    for i, disk in enumerate(disks):
        sizes = disk.p.get("osteophyte_mm") or {}
        if not any(v > 0 for v in sizes.values()):
            continue
        c = disk.corners()
        u = np.array([math.cos(disk.axis), math.sin(disk.axis)])  # anterior -> posterior
        v = np.array([-u[1], u[0]])  # superior
        for name, corner, outward, towards, body in (
            ("anterior_superior", c["AS"], -u, -v, i),
            ("anterior_inferior", c["AI"], -u, v, i - 1),
            ("posterior_superior", c["PS"], u, -v, i),
            ("posterior_inferior", c["PI"], u, v, i - 1),
        ):
            if sizes.get(name, 0.0) > 0:
                # grown from the bone just beyond the disk's corner (plus the bulge of the annulus)
                start = corner - towards * 0.4 + outward * 0.2
                out.append((osteophyte_polygon(start, outward, towards, sizes[name]), body))
    return out


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


CANAL_STEP_MM = 2.0  # canal outline sampling: smooth enough, and the polygon fills stay cheap


def canal_geometry(col: Column) -> dict[str, np.ndarray]:
    """Dense canal front line, its posterior normals and depth (construction frame), cord and cauda ribbons."""
    seg = np.linalg.norm(np.diff(col.canal_front, axis=0), axis=1)
    s_knots = np.concatenate([[0.0], np.cumsum(seg)])
    front, s = _resample_polyline(col.canal_front, CANAL_STEP_MM)
    depth = np.interp(s, s_knots, col.canal_depth)
    tangent = np.gradient(front, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)  # superior tangent turned -90 deg: posterior
    back = front + normal * depth[:, None]
    # where along the canal the conus ends
    tip_idx = int(np.argmin(np.linalg.norm(front - col.cord_tip, axis=1)))
    # the stretch of the front line beside each disk (posterior-inferior to posterior-superior corner)
    spans = []
    for disk in col.disks:
        c = disk.corners()
        spans.append(tuple(sorted(int(np.argmin(np.linalg.norm(front - c[k], axis=1))) for k in ("PI", "PS"))))
    return {"front": front, "back": back, "normal": normal, "depth": depth, "tip": tip_idx, "disk_spans": spans}


def ribbon(front: np.ndarray, normal: np.ndarray, depth: np.ndarray, f0: np.ndarray, f1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two edges of a strip inside the canal between depth fractions f0 and f1 (construction frame)."""
    return front + normal * (depth * f0)[:, None], front + normal * (depth * f1)[:, None]


class Frame:
    """Construction frame (mm, x posterior, y superior) -> image pixels (x=col, y=row), and back."""

    def __init__(self, col: Column, anat: dict, cfg: PhantomConfig):
        lumbar = [d.centre for d in col.disks[:5]]
        v = lumbar[4] - lumbar[0]  # L5/S1 -> L1/L2
        # the construction frame has the S1 endplate at the sacral slope to the horizontal; a strongly curved
        # column is turned half way towards upright (as a supine patient lies), then the subject's rotation
        self.angle = 0.7 * (math.pi / 2 - math.atan2(v[1], v[0])) + math.radians(anat["rotation_deg"])
        self.R = rot(self.angle)
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


def fill_px(poly_px: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (rows, cols) whose centres lie inside a polygon given as (N, 2) (x=col, y=row)."""
    return fill_polygon(poly_px[:, 1], poly_px[:, 0], shape)


def fill_strip(a: np.ndarray, b: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
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


def line_x_of_row(line_px: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x of a roughly vertical polyline at each row (clamped at its ends)."""
    order = np.argsort(line_px[:, 1], kind="stable")
    return np.interp(rows, line_px[order, 1], line_px[order, 0])


