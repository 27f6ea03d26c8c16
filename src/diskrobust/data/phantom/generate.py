"""One subject: anatomy -> column -> ground truth (contours, labels) -> image; and annotation noise."""

from __future__ import annotations

import json
import math

import numpy as np

from diskrobust import NUM_POINTS

from .anatomy import sample_anatomy
from .column import Frame, build_column
from .config import PhantomConfig, PhantomSubject
from .render import artefacts, render
from .shapes import resample_side

__all__ = ["generate_subject", "annotation_noise", "subject_contours"]


def subject_contours(seed: int, config: PhantomConfig | None = None) -> tuple[list[dict], dict]:
    """The five lumbar disks' exact contours and the anatomy of subject ``seed``, without the image.

    The same contours as ``generate_subject(seed, config)`` gives (the image is drawn after them), at a
    fraction of the cost: for population statistics and tests.
    """
    cfg = config if config is not None else PhantomConfig()
    anat = sample_anatomy(np.random.default_rng(int(seed)), cfg)
    col = build_column(anat)
    frame = Frame(col, anat, cfg)
    return _contours(col, frame, cfg, int(seed)), {**anat, "lordosis_deg": col.lordosis_deg, "disks": [{"level": d.level, **d.p} for d in col.disks]}


def _contours(col, frame: Frame, cfg: PhantomConfig, seed: int) -> list[dict]:
    H, W = cfg.shape
    sr, sc = cfg.spacing_mm
    disks = []
    for disk in col.disks[:5]:
        sides_px = [frame.to_px(s) for s in disk.sides]
        pts = np.concatenate([resample_side(s) for s in sides_px]).astype(np.float64)
        assert pts.shape == (NUM_POINTS, 2)
        if pts[:, 0].min() < 0 or pts[:, 1].min() < 0 or pts[:, 0].max() > W - 1 or pts[:, 1].max() > H - 1:
            raise RuntimeError(f"phantom seed {seed}: disk {disk.level} falls outside the {H}x{W} image; enlarge the field of view")
        disks.append({"level": disk.level, "label": disk.label, "points_px": pts, "points_mm": pts * np.array([sc, sr])})
    return disks


def annotation_noise(points_px: np.ndarray, spacing_mm: tuple[float, float], rms_mm: float, rng: np.random.Generator) -> np.ndarray:
    """The contour as an annotator might draw it: a displacement smooth along the contour, RMS ``rms_mm``.

    Normal component: a random closed Fourier series (harmonics 1..8, amplitudes ~ 1/k, so it wanders over
    a few cm of outline); tangential component: half as large, so points slide a little along the outline
    (corners too, by a fraction of a mm). Returns new (176, 2) px.
    """
    n = len(points_px)
    if rms_mm <= 0:
        return points_px.copy()
    sr, sc = spacing_mm
    mm = points_px * np.array([sc, sr])
    phase = 2.0 * np.pi * np.arange(n) / n
    k = np.arange(1, 9)[:, None]

    def series() -> np.ndarray:
        a, b = rng.normal(size=(2, 8, 1)) / k
        f = (a * np.cos(k * phase) + b * np.sin(k * phase)).sum(0)
        return f / (np.sqrt(np.mean(f**2)) + 1e-12)

    tangent = np.roll(mm, -1, axis=0) - np.roll(mm, 1, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    nrm = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    disp = (rms_mm * series())[:, None] * nrm + (0.5 * rms_mm * series())[:, None] * tangent
    return (mm + disp) / np.array([sc, sr])


def generate_subject(seed: int, config: PhantomConfig | None = None) -> PhantomSubject:
    """Generate one subject; the same ``seed`` and config always give the same arrays.

    Returns image (H, W) float32, label (H, W) uint16, the five lumbar disks from the bottom with
    ``points_px`` (176, 2) (x=col, y=row) and ``points_mm``, spacing, the (4, 4) affine and the parameters
    (``params["disks"][i]["findings"]`` lists each disk's pathologies). With ``annotation_noise_mm`` > 0,
    ``disks_noisy`` holds the same contours with annotation noise (from a separate stream of the seed, so
    the image does not depend on it).
    """
    from diskrobust.data.dataset_io import sagittal_affine

    cfg = config if config is not None else PhantomConfig()
    if not isinstance(cfg, PhantomConfig):
        raise TypeError(f"config must be a PhantomConfig, got {type(cfg).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    anat = sample_anatomy(rng, cfg)
    col = build_column(anat)
    frame = Frame(col, anat, cfg)
    image, label, extra = render(col, frame, anat, cfg, rng)
    image, art = artefacts(image, cfg, rng)
    H, W = cfg.shape
    sr, sc = cfg.spacing_mm
    disks = _contours(col, frame, cfg, seed)
    noisy = None
    if cfg.annotation_noise_mm > 0:
        nrng = np.random.default_rng([seed, 0xA7707])
        noisy = []
        for d in disks:
            pts = np.clip(annotation_noise(d["points_px"], (sr, sc), cfg.annotation_noise_mm, nrng), 0.0, [W - 1, H - 1])
            noisy.append({**d, "points_px": pts, "points_mm": pts * np.array([sc, sr])})
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
        disks_noisy=noisy,
    )
