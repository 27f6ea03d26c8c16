"""Painting a subject: tissue signals, soft tissue, canal, bone, disks, partial volume and scanner artefacts.

Tissue signals are spin-echo S = PD (1 - exp(-TR/T1)) exp(-TE/T2) relative to CSF. Labels are painted from
the same dense outlines as the contours (exact); intensities are not: disk borders blend into the ligaments
and endplates over a width that grows with the slice thickness, a paramedian herniation is only partly in
the slice, the marrow is textured (trabecular grain, heterogeneity, optional fatty foci, Modic changes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .column import CANAL_STEP_MM, Column, Frame, fill_px, fill_strip, line_x_of_row, ribbon
from .config import (
    CANAL_LABEL,
    NUCLEUS_PD_BY_GRADE,
    NUCLEUS_T1_BY_GRADE,
    PARTIAL_OFFSET,
    TISSUES,
    VERTEBRA_LABELS,
    WEIGHTINGS,
    PhantomConfig,
    spin_echo_signal,
)
from .shapes import Disk, bump_flat

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


def _nucleus_signal(disk: Disk, cfg: PhantomConfig, pd_factor: float, t2_factor: float) -> float:
    tr, te = WEIGHTINGS[cfg.weighting]
    g = disk.p["grade"]
    csf_nominal = float(spin_echo_signal(*TISSUES["csf"][:2], TISSUES["csf"][2], tr, te))
    return float(spin_echo_signal(NUCLEUS_T1_BY_GRADE[g], disk.p["nucleus_t2_ms"] * t2_factor, NUCLEUS_PD_BY_GRADE[g] * pd_factor, tr, te)) / csf_nominal


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass
class _Canvas:
    """The image being painted (signal, float64) and its label map (uint16), both (H, W), and the mapping."""

    img: np.ndarray
    lab: np.ndarray
    frame: Frame
    spacing: tuple[float, float]

    @property
    def shape(self) -> tuple[int, int]:
        return self.img.shape

    def fill(self, poly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels inside a construction-frame polygon (N, 2)."""
        return fill_px(self.frame.to_px(poly), self.shape)

    def fill_strip(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return fill_strip(self.frame.to_px(a), self.frame.to_px(b), self.shape)


def _paint_soft_tissue(cv: _Canvas, col: Column, canal: dict, anat: dict, sig: dict, rng: np.random.Generator) -> None:
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
    x_back = ndimage.gaussian_filter1d(line_x_of_row(back_line, rows), 8.0 / sr, mode="nearest")[:, None] * sc
    x_front = ndimage.gaussian_filter1d(line_x_of_row(cv.frame.to_px(col.anterior_line), rows), 4.0 / sr, mode="nearest")[:, None] * sc
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
    taper = np.clip((np.arange(n) - tip) * CANAL_STEP_MM / 25.0, 0.0, 1.0)  # the conus tapers over 25 mm
    if tip < n - 1:
        sl = slice(tip, n)
        e0, e1 = ribbon(canal["front"][sl], canal["normal"][sl], canal["depth"][sl], 0.5 - 0.27 * taper[sl], 0.5 + 0.27 * taper[sl])
        rr, cc = cv.fill_strip(e0, e1)
        cv.img[rr, cc] = sig["cord"]
    for frac in rng.uniform(0.5, 0.85, size=3):  # supine: the roots lie in the dorsal half of the sac
        width = 0.7 / canal["depth"][: tip + 1]
        ff = np.full(tip + 1, frac) + 0.04 * np.sin(np.linspace(0, 3 * np.pi, tip + 1) + frac * 10)
        start = max(0, tip - int(rng.uniform(60, 120) / CANAL_STEP_MM))  # roots leave the sac at their foramen
        sl = slice(start, tip + 1)
        e0, e1 = ribbon(canal["front"][sl], canal["normal"][sl], canal["depth"][sl], ff[sl] - width[sl] / 2, ff[sl] + width[sl] / 2)
        rr, cc = cv.fill_strip(e0, e1)
        cv.img[rr, cc] = 0.6 * cv.img[rr, cc] + 0.4 * sig["cord"]
    # the posterior longitudinal ligament and dura: a thin dark band along the front of the sac, into which
    # the posterior annulus blends (painted next to each disk only: a strip costs its quads)
    thick = rng.uniform(0.8, 1.4)
    for pi, ps in canal["disk_spans"]:
        sl = slice(max(0, pi - 2), min(n, ps + 3))
        frac = thick / canal["depth"][sl]
        e0, e1 = ribbon(canal["front"][sl], canal["normal"][sl], canal["depth"][sl], np.zeros_like(frac), frac)
        rr, cc = cv.fill_strip(e0, e1)
        cv.img[rr, cc] = 0.3 * cv.img[rr, cc] + 0.7 * sig["ligament"]


def _marrow_texture(rng: np.random.Generator, shape: tuple[int, int], spacing: float, amount: float) -> np.ndarray:
    """Multiplicative marrow texture: coarse heterogeneity (~8 mm) and trabecular grain (~1.2 mm)."""
    coarse = _smooth_noise(rng, shape, 8.0 / spacing)
    grain = _smooth_noise(rng, shape, 1.2 / spacing)
    return 1.0 + amount * (0.07 * coarse + 0.06 * grain)


def _local_frame(disk: Disk) -> tuple[np.ndarray, np.ndarray]:
    u = np.array([math.cos(disk.axis), math.sin(disk.axis)])
    return u, np.array([-u[1], u[0]])


def _paint_fatty_foci(cv: "_Canvas", rr, cc, foci: list[dict], origin: np.ndarray, e_u: np.ndarray, e_v: np.ndarray,
                      size: tuple[float, float], fat: float) -> None:
    if not foci or len(rr) == 0:
        return
    x, y = cv.frame.to_construction(cc.astype(np.float64), rr.astype(np.float64))
    for f in foci:
        c = origin + f["u"] * size[0] * e_u + f["v"] * size[1] * e_v
        d = np.hypot(x - c[0], y - c[1])
        w = _smoothstep((f["radius_mm"] - d) / (0.5 * f["radius_mm"]))
        cv.img[rr, cc] = cv.img[rr, cc] + w * (0.92 * fat - cv.img[rr, cc])


def _paint_bone(cv: "_Canvas", col: Column, anat: dict, cfg: PhantomConfig, sig: dict, rng: np.random.Generator) -> dict[str, int]:
    """Sacrum (label 0), vertebral bodies, osteophytes and arches (vertebra labels), textured marrow with
    optional fatty foci and Modic changes, and a soft-edged cortical rim.

    Returns each vertebra's label (k, or 100 + k when the image border cuts its body).
    """
    H, W = cv.shape
    bone = np.zeros((H, W), dtype=bool)
    marrow_tex = _marrow_texture(rng, (H, W), cv.spacing[0], cfg.marrow_texture)
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
    body_labels = []
    for i, (name, body, arch) in enumerate(zip(col.body_names, col.bodies, col.arches)):
        body_px = cv.frame.to_px(body)
        inside = (body_px[:, 0] >= 0) & (body_px[:, 0] <= W - 1) & (body_px[:, 1] >= 0) & (body_px[:, 1] <= H - 1)
        label = VERTEBRA_LABELS[name] + (0 if inside.all() else PARTIAL_OFFSET)
        vertebra_labels[name] = label
        body_labels.append(label)
        for poly in (arch, body):
            rr, cc = cv.fill(poly)
            cv.img[rr, cc] = sig["marrow"] * marrow_tex[rr, cc]
            cv.lab[rr, cc] = label
            bone[rr, cc] = True
        # fatty foci in the body's frame: from the anterior-superior corner of the disk below
        lower = col.disks[i]
        e_u, e_v = _local_frame(lower)
        foci = anat["vertebrae"][i].get("fatty_foci", [])
        _paint_fatty_foci(cv, rr, cc, foci, lower.corners()["AS"], e_u, e_v, (lower.p["length_mm"], anat["vertebrae"][i]["height_mm"]), sig["fat"])
    for poly, body_index in col.osteophytes:
        rr, cc = cv.fill(poly)
        cv.img[rr, cc] = (sig["marrow"] if body_index >= 0 else sig["sacral_marrow"]) * marrow_tex[rr, cc]
        cv.lab[rr, cc] = body_labels[body_index] if body_index >= 0 else 0
        bone[rr, cc] = True
    _paint_modic(cv, col, bone, sig)
    # cortex and endplates: the outer rim of every bone, wherever it meets something else, with a soft inner edge
    dist = ndimage.distance_transform_edt(bone, sampling=cv.spacing)
    px = min(cv.spacing)
    w = np.clip((anat["cortical_mm"] + 0.5 * px - dist) / px, 0.0, 1.0) * bone
    cv.img[:] = cv.img + w * (sig["cortical"] - cv.img)
    return vertebra_labels


def _paint_modic(cv: "_Canvas", col: Column, bone: np.ndarray, sig: dict) -> None:
    """Modic changes: marrow next to a degenerated disk's endplates turns oedematous (type 1) or fatty (2)."""
    for disk in col.disks:
        p = disk.p
        if not p.get("modic"):
            continue
        depth = p["modic_depth_mm"]
        r0, r1, c0, c1 = _bbox(cv, disk.dense_polygon(), depth + 3.0)
        sub = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        rr, cc = cv.fill(disk.dense_polygon())
        sub[rr - r0, cc - c0] = True
        dist = ndimage.distance_transform_edt(~sub, sampling=cv.spacing)
        e_u, e_v = _local_frame(disk)
        yy, xx = np.mgrid[r0:r1, c0:c1]
        x, y = cv.frame.to_construction(xx.astype(np.float64), yy.astype(np.float64))
        v = -(x - disk.centre[0]) * math.sin(disk.axis) + (y - disk.centre[1]) * math.cos(disk.axis)
        u = (x - disk.centre[0]) * math.cos(disk.axis) + (y - disk.centre[1]) * math.sin(disk.axis)
        side = {"both": np.ones_like(v, dtype=bool), "superior": v > 0, "inferior": v < 0}[p["modic_side"]]
        w = _smoothstep((depth - dist) / (0.5 * depth)) * side * bone[r0:r1, c0:c1]
        w = w * (np.abs(u) < 0.45 * p["length_mm"])  # the change spares the ring apophyses
        target = sig["edema"] if p["modic"] == 1 else 0.95 * sig["fat"]
        img = cv.img[r0:r1, c0:c1]
        cv.img[r0:r1, c0:c1] = img + 0.8 * w * (target - img)


def _bbox(cv: "_Canvas", poly: np.ndarray, margin_mm: float) -> tuple[int, int, int, int]:
    px = cv.frame.to_px(poly)
    H, W = cv.shape
    mr, mc = margin_mm / cv.spacing[0], margin_mm / cv.spacing[1]
    r0, r1 = int(max(0, np.floor(px[:, 1].min() - mr))), int(min(H, np.ceil(px[:, 1].max() + mr) + 1))
    c0, c1 = int(max(0, np.floor(px[:, 0].min() - mc))), int(min(W, np.ceil(px[:, 0].max() + mc) + 1))
    return r0, r1, c0, c1


def _edge_width_mm(cfg: PhantomConfig) -> float:
    """Half-width of the blend at disk borders: the pixel and the slice's partial volume (endplates are
    curved across a thick slice, the annulus fans into the ligaments)."""
    return 0.5 * math.hypot(min(cfg.spacing_mm), 0.25 * cfg.slice_thickness_mm)


def _paint_disks(cv: "_Canvas", col: Column, cfg: PhantomConfig, sig: dict, factors: dict, rng: np.random.Generator) -> None:
    """Annulus (darker outer lamellae) with a soft-edged superelliptic nucleus, herniated material, gas.

    The label is the filled dense outline (exact, the contour's); the signal blends into what lies around
    over ``_edge_width_mm`` on both sides of the outline.
    """
    edge = _edge_width_mm(cfg)
    for disk in col.disks:
        poly = disk.dense_polygon()
        r0, r1, c0, c1 = _bbox(cv, poly, 2.0 * edge + 1.5)
        rr, cc = cv.fill(poly)
        cv.lab[rr, cc] = disk.label
        inside = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        inside[rr - r0, cc - c0] = True
        # signed distance to the outline (mm, + inside), from the pixel grid
        sd = ndimage.distance_transform_edt(inside, sampling=cv.spacing) - ndimage.distance_transform_edt(~inside, sampling=cv.spacing)
        sd = sd + np.where(inside, -0.5, 0.5) * min(cv.spacing)  # the outline runs between the pixel centres
        p = disk.p
        L, ha, hp, hm = p["length_mm"], p["height_anterior_mm"], p["height_posterior_mm"], p["height_middle_mm"]
        yy, xx = np.mgrid[r0:r1, c0:c1]
        x, y = cv.frame.to_construction(xx.astype(np.float64), yy.astype(np.float64))
        c, s = math.cos(disk.axis), math.sin(disk.axis)
        u = c * (x - disk.centre[0]) + s * (y - disk.centre[1])
        v = -s * (x - disk.centre[0]) + c * (y - disk.centre[1])
        t = np.clip(u / L + 0.5, 0.0, 1.0)
        half_h = np.maximum(0.5 * (ha + (hp - ha) * t) + (hm - 0.5 * (ha + hp)) / 2.0 * bump_flat(t), 0.5)
        a = 0.5 * p["nucleus_length_frac"] * L
        b = p["nucleus_height_frac"] * half_h  # the nucleus follows the disk's wedge
        r = np.abs((u - p["nucleus_offset_frac"] * L) / a) ** 2.5 + np.abs(v / b) ** 2.5
        # the nucleus fades through the inner annulus (no sharp edge): wide in the length, narrow in the height
        w = _smoothstep((1.0 - r) / 0.75)
        nucleus = _nucleus_signal(disk, cfg, factors["nucleus"], sig["_t2_factor_nucleus"])
        annulus = sig["annulus"] * (0.75 + 0.25 * _smoothstep(sd / 1.5))  # outer lamellae darkest
        val = annulus + w * (nucleus - annulus)
        if p["cleft"]:
            val = val * (1.0 - 0.45 * w * np.exp(-0.5 * (v / 0.6) ** 2))
        outside_base = None
        if disk.base_posterior is not None:
            # herniated nucleus material: brighter than the annulus on T2, fainter when it lies off the midline
            base = np.zeros_like(inside)
            brr, bcc = cv.fill(np.concatenate([disk.sides[0][:-1], disk.sides[1][:-1], disk.base_posterior[:-1], disk.sides[3][:-1]]))
            ok = (brr >= r0) & (brr < r1) & (bcc >= c0) & (bcc < c1)
            base[brr[ok] - r0, bcc[ok] - c0] = True
            outside_base = inside & ~base
            tongue = ndimage.binary_dilation(outside_base, iterations=1) & inside
            herniated = 0.55 * annulus + 0.45 * nucleus
            val = np.where(tongue, herniated, val)
        if p.get("vacuum"):
            # gas: dark streaks along the middle of the disk
            g_len, g_h = rng.uniform(0.25, 0.45) * L, rng.uniform(0.12, 0.25)
            g_u, wob = rng.uniform(-0.15, 0.15) * L, rng.uniform(0, 2 * np.pi)
            streak = np.exp(-0.5 * ((u - g_u) / g_len) ** 4) * np.exp(-0.5 * ((v - 0.4 * np.sin(u / 3.0 + wob)) / (g_h * half_h)) ** 2)
            val = val + np.clip(1.3 * streak, 0, 1) * (sig["gas"] - val)
        alpha = _smoothstep((sd + edge) / (2.0 * edge))
        bg = cv.img[r0:r1, c0:c1]
        mix = bg + alpha * (val - bg)
        if outside_base is not None:
            # a paramedian herniation fills only part of the slice's thickness
            f_in = 1.0 - 0.5 * min(1.0, p["herniation_lateral_mm"] / 8.0) * min(1.0, cfg.slice_thickness_mm / 5.0)
            mix = np.where(ndimage.binary_dilation(outside_base, iterations=2), bg + f_in * (mix - bg), mix)
        cv.img[r0:r1, c0:c1] = mix


def render(col: Column, frame: Frame, anat: dict, cfg: PhantomConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Noise-free signal (H, W) float64 and labels (H, W) uint16, painted back to front."""
    from .column import canal_geometry

    sig, factors = _tissue_signals(rng, cfg)
    cv = _Canvas(np.zeros(cfg.shape), np.zeros(cfg.shape, dtype=np.uint16), frame, cfg.spacing_mm)
    canal = canal_geometry(col)
    _paint_soft_tissue(cv, col, canal, anat, sig, rng)
    _paint_canal(cv, canal, sig, rng)
    vertebra_labels = _paint_bone(cv, col, anat, cfg, sig, rng)
    _paint_disks(cv, col, cfg, sig, factors, rng)
    return cv.img, cv.lab, {"vertebra_labels": vertebra_labels, "tissue_signal": {k: round(v, 5) for k, v in sig.items() if not k.startswith("_")}}


def artefacts(img: np.ndarray, cfg: PhantomConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
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


