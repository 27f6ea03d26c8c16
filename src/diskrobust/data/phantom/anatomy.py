"""Population anatomy: per-subject and per-disk parameters drawn from the published distributions.

Everything here is cheap (no image), so tests and ``phantom-stats`` can sample hundreds of subjects.

* Disk heights and AP length per level: normal with the published mean and SD (``PUBLISHED_DISK_GEOMETRY``),
  correlated within a subject (some people have tall disks), within a disk (its three heights), with the
  lordosis (a more lordotic spine has more wedged disks: anterior up, posterior down) and the subject's size
  (length). A share of subjects (``low_height_fraction``) comes from populations with lower disks (heights
  scaled by ``low_height_scale``, reaching the Brazilian / Nepalese series).
* Pfirrmann grade I-V per disk from a subject-level degeneration trait (grades cluster in one spine) with the
  configured marginal probabilities; grade III-V lower the heights (grade V: collapse to 30-50 %).
* Lordosis (L1-S1) ~ N(mean, SD) of the config; the vertebral wedges take what the disk wedges leave, so the
  geometry meets it; the sacral slope follows it.
* Pathologies with a prevalence each (``PREVALENCE_DEFAULTS``): a disk's probability is
  ``1 - (1 - prevalence) ** risk``, risk from its level and grade.
"""

from __future__ import annotations

import math

import numpy as np

from .config import DISK_LEVELS, PUBLISHED_DISK_GEOMETRY, T12_DISK, _T12_GEOMETRY, NUCLEUS_T2_BY_GRADE, PhantomConfig

__all__ = ["sample_anatomy", "disk_geometry_reference", "lordosis_from_wedges"]

# correlation shares of the height z-scores: subject, disk, lordosis (the rest is the height's own)
_RHO_SUBJECT, _RHO_DISK, _RHO_LORDOSIS = 0.15, 0.2, 0.2
_RHO_DEGENERATION = 0.4  # share of the grade latent that is the subject's
# height factor by grade (I..V); IV and V are ranges
_GRADE_HEIGHT = {1: (1.03, 1.06), 2: (0.98, 1.02), 3: (0.86, 0.94), 4: (0.68, 0.8), 5: (0.3, 0.5)}
# risk factors of findings (multiplying the prevalence's log-odds of absence), by level index and grade
_LEVEL_RISK_HERNIATION = (1.6, 1.6, 1.0, 0.6, 0.5, 0.4)
_GRADE_RISK_HERNIATION = {1: 0.4, 2: 0.8, 3: 1.3, 4: 1.6, 5: 1.0}
_GRADE_RISK_BULGE = {1: 0.3, 2: 0.7, 3: 1.3, 4: 1.7, 5: 1.5}
_GRADE_RISK_ENDPLATE = {1: 0.5, 2: 0.8, 3: 1.1, 4: 1.5, 5: 4.0}
_GRADE_RISK_OSTEOPHYTE = {1: 0.2, 2: 0.6, 3: 1.2, 4: 1.8, 5: 2.5}
_GRADE_RISK_VACUUM = {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 3.0}
_GRADE_RISK_MODIC = {1: 0.2, 2: 0.4, 3: 1.0, 4: 2.0, 5: 2.5}
# vertebral wedge (deg, + = anterior taller) before the lordosis is met: L5, L4, L3, L2, L1; T12
_VERTEBRA_WEDGE_BASE = (2.5, 0.5, -0.5, -1.5, -2.5)
_T12_WEDGE = (-6.0, -2.0)
_MIN_HEIGHT_MM = 1.5


def disk_geometry_reference(level: str) -> dict[str, tuple[float, float]]:
    """(mean, SD) mm of length / anterior / middle / posterior height of the reference population."""
    return PUBLISHED_DISK_GEOMETRY.get(level, _T12_GEOMETRY)


def _p(prevalence: float, risk: float) -> float:
    if prevalence >= 1.0:
        return 1.0 if risk > 0 else 0.0
    return 1.0 - (1.0 - prevalence) ** risk


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _grade(latent: float, probs: tuple[float, ...]) -> int:
    cum = np.cumsum(probs)
    return int(np.searchsorted(cum, _norm_cdf(latent) * cum[-1], side="right").clip(0, 4)) + 1


def _sample_herniation(rng: np.random.Generator, cfg: PhantomConfig, risk: float, vertebra_mm: float) -> dict:
    """Type and shape of a focal herniation of the posterior side (``none`` most of the time)."""
    prev = cfg.prevalence
    kind = "none"
    if rng.random() < _p(prev["migration"], risk):
        kind = "migration"
    elif rng.random() < _p(prev["extrusion"], risk):
        kind = "extrusion"
    elif rng.random() < _p(prev["protrusion"], risk):
        kind = "protrusion"
    h = {"herniation": kind, "herniation_mm": 0.0, "herniation_pos": 0.5, "herniation_base_frac": 0.0,
         "herniation_down_mm": 0.0, "herniation_up_mm": 0.0, "herniation_lateral_mm": 0.0}
    # draws happen whatever the type, so the rest of the subject does not depend on it
    depth = {"protrusion": rng.uniform(1.5, 4.0), "extrusion": rng.uniform(3.0, 6.5), "migration": rng.uniform(2.5, 5.5)}
    pos = float(rng.uniform(0.25, 0.75))  # along the posterior side, from its inferior corner
    base = float(rng.uniform(0.35, 0.7))  # attachment as a fraction of the posterior side
    r_dir, r_len, lateral = rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.0, 8.0)
    if kind == "none":
        return h
    h.update(herniation_mm=float(depth[kind]), herniation_pos=pos, herniation_base_frac=base, herniation_lateral_mm=float(lateral))
    cap = 0.4 * vertebra_mm
    if kind == "protrusion":
        h["herniation_base_frac"] = float(max(base, 0.45))
    elif kind == "extrusion":  # beyond one or both endplate levels, 1.5-4.5 mm
        over = 1.5 + 3.0 * r_len
        if r_dir < 0.45:
            h["herniation_down_mm"] = over
        elif r_dir < 0.7:
            h["herniation_up_mm"] = over
        else:
            h["herniation_down_mm"], h["herniation_up_mm"] = over, 0.7 * over
        h["herniation_base_frac"] = float(0.3 + 0.3 * base)
    else:  # a fragment migrated 5-12 mm behind a vertebral body, most often downwards
        over = min(cap, 5.0 + 7.0 * r_len)
        h["herniation_down_mm" if r_dir < 0.65 else "herniation_up_mm"] = over
        h["herniation_base_frac"] = float(0.2 + 0.25 * base)
        h["herniation_pos"] = float(0.3 + 0.4 * pos) if r_dir < 0.65 else float(0.3 + 0.4 * pos)
    return h


def _sample_endplates(rng: np.random.Generator, cfg: PhantomConfig, grade: int, height_mm: float) -> dict:
    prev = cfg.prevalence
    risk = _GRADE_RISK_ENDPLATE[grade]
    out = {"schmorl": [], "irregular_endplate_mm": 0.0, "irregular_coeffs": []}
    schmorl = rng.random() < _p(prev["schmorl"], risk)
    n_nodes = 1 + int(rng.random() < 0.2)
    nodes = [
        {"endplate": "superior" if rng.random() < 0.55 else "inferior", "pos": float(rng.uniform(0.35, 0.65)),
         "width_mm": float(rng.uniform(5.0, 10.0)), "depth_mm": float(rng.uniform(1.5, 4.5))}
        for _ in range(2)
    ]
    if schmorl:
        for node in nodes[:n_nodes]:
            node["depth_mm"] = float(min(node["depth_mm"], 0.45 * node["width_mm"]))
            out["schmorl"].append(node)
    irregular = rng.random() < _p(prev["irregular_endplate"], risk)
    amp = float(rng.uniform(0.3, 1.0) * (1.4 if grade >= 4 else 1.0))
    coeffs = rng.normal(0.0, 1.0, size=(2, 6, 2))  # (endplate, harmonic 2..7, cos/sin)
    if irregular:
        out["irregular_endplate_mm"] = amp
        out["irregular_coeffs"] = coeffs.round(4).tolist()
    return out


def _sample_osteophytes(rng: np.random.Generator, cfg: PhantomConfig, grade: int, level_index: int) -> dict:
    present = rng.random() < _p(cfg.prevalence["osteophyte"], _GRADE_RISK_OSTEOPHYTE[grade] * (1.2 if level_index <= 2 else 0.8))
    sizes = rng.uniform(1.5, 6.0, size=4)
    which = rng.random(4) < (0.85, 0.85, 0.25, 0.25)  # anterior-superior, anterior-inferior, posterior-...
    if not which.any():
        which[0] = True
    names = ("anterior_superior", "anterior_inferior", "posterior_superior", "posterior_inferior")
    out = {n: 0.0 for n in names}
    if present:
        for n, s, w in zip(names, sizes, which):
            if w:
                out[n] = float(s * (0.5 if n.startswith("posterior") else 1.0))
    return {"osteophyte_mm": out}


def _sample_disk(rng: np.random.Generator, cfg: PhantomConfig, index: int, level: str, z: dict, pop_scale: float,
                 grade: int, vertebra_mm: float) -> dict:
    ref = disk_geometry_reference(level)
    zd = rng.standard_normal()
    e = rng.standard_normal(4)
    own_ap = math.sqrt(1.0 - _RHO_SUBJECT - _RHO_DISK - _RHO_LORDOSIS)
    shared = math.sqrt(_RHO_SUBJECT) * z["subject"] + math.sqrt(_RHO_DISK) * zd
    za = shared + math.sqrt(_RHO_LORDOSIS) * z["lordosis"] + own_ap * e[0]
    zp = shared - math.sqrt(_RHO_LORDOSIS) * z["lordosis"] + own_ap * e[1]
    zm = shared + math.sqrt(1.0 - _RHO_SUBJECT - _RHO_DISK) * e[2]
    zl = math.sqrt(0.5) * z["size"] + math.sqrt(0.5) * e[3]
    g_lo, g_hi = _GRADE_HEIGHT[grade]
    g_f = float(rng.uniform(g_lo, g_hi))
    # a collapsed disk loses more in front (where it was tallest)
    f_ant = g_f if grade < 5 else g_f * 0.9
    ha = max(_MIN_HEIGHT_MM, (ref["anterior"][0] + ref["anterior"][1] * za) * pop_scale * f_ant)
    hp = max(_MIN_HEIGHT_MM, (ref["posterior"][0] + ref["posterior"][1] * zp) * pop_scale * g_f)
    hm = (ref["middle"][0] + ref["middle"][1] * zm) * pop_scale * g_f
    mean_ap = 0.5 * (ha + hp)
    hm = float(np.clip(hm, max(_MIN_HEIGHT_MM, 0.7 * mean_ap), mean_ap + 6.0))  # no pinched or ballooned disks
    length = float(ref["length"][0] + ref["length"][1] * zl)
    risk_h = _LEVEL_RISK_HERNIATION[index] * _GRADE_RISK_HERNIATION[grade]
    bulge = rng.random() < _p(cfg.prevalence["bulge"], _GRADE_RISK_BULGE[grade] * _LEVEL_RISK_HERNIATION[index] ** 0.5)
    b_post, b_ant, b_extra = rng.uniform(0.2, 0.8), rng.uniform(0.3, 1.5), rng.uniform(1.0, 2.5)
    vac = rng.random() < _p(cfg.prevalence["vacuum"], _GRADE_RISK_VACUUM[grade])
    modic = rng.random() < _p(cfg.prevalence["modic"], _GRADE_RISK_MODIC[grade])
    modic_type, modic_depth, modic_side = 1 + int(rng.random() < 0.6), float(rng.uniform(3.0, 9.0)), int(rng.integers(0, 3))
    t2_nucleus = NUCLEUS_T2_BY_GRADE[grade] * float(rng.uniform(0.92, 1.08))
    p = {
        "grade": grade,
        "length_mm": length,
        "height_anterior_mm": float(ha),
        "height_middle_mm": float(hm),
        "height_posterior_mm": float(hp),
        "bulge": bool(bulge),
        "bulge_anterior_mm": float(b_ant),
        "bulge_posterior_mm": float(b_post + 0.2 * (min(grade, 4) - 1) + (b_extra if bulge else 0.0)),
        **_sample_herniation(rng, cfg, risk_h, vertebra_mm),
        **_sample_endplates(rng, cfg, grade, hm),
        **_sample_osteophytes(rng, cfg, grade, index),
        "slip_mm": 0.0,
        "vacuum": bool(vac),
        "modic": int(modic_type if modic else 0),
        "modic_depth_mm": modic_depth,
        "modic_side": ("both", "superior", "inferior")[modic_side],
        "nucleus_length_frac": float(rng.uniform(0.5, 0.6)),
        "nucleus_height_frac": float(rng.uniform(0.68, 0.82) * (1.0 - 0.08 * (min(grade, 4) - 1))),
        "nucleus_offset_frac": float(rng.uniform(0.0, 0.06)),  # the nucleus sits slightly posterior
        "nucleus_t2_ms": t2_nucleus,
        "cleft": bool(2 <= grade <= 4 and rng.random() < 0.7),  # intranuclear cleft: a dark horizontal line on T2
    }
    if p["herniation"] == "protrusion":  # a protrusion is shallower than its base is wide
        base_mm = min(p["herniation_base_frac"], 0.76) * hp
        p["herniation_mm"] = float(min(p["herniation_mm"], max(0.8, 0.5 * base_mm)))
    p["findings"] = _findings(p)
    return p


def _findings(p: dict) -> list[str]:
    f = [f"pfirrmann_{'I II III IV V'.split()[p['grade'] - 1]}"]
    if p["bulge"]:
        f.append("bulge")
    if p["herniation"] != "none":
        f.append(p["herniation"])
    if p["schmorl"]:
        f.append("schmorl")
    if p["irregular_endplate_mm"] > 0:
        f.append("irregular_endplate")
    if any(v > 0 for v in p["osteophyte_mm"].values()):
        f.append("osteophyte")
    if p["slip_mm"] > 0:
        f.append("spondylolisthesis")
    if p["vacuum"]:
        f.append("vacuum")
    if p["modic"]:
        f.append(f"modic_{p['modic']}")
    if p["grade"] == 5:
        f.append("collapse")
    return f


def lordosis_from_wedges(disks: list[dict], wedges_deg: list[float]) -> float:
    """L1-S1 lordosis (deg) of five lumbar disks (L5/S1 first) and five vertebral wedges (L5..L1)."""
    disk_w = sum(2.0 * math.degrees(math.atan2(0.5 * (d["height_anterior_mm"] - d["height_posterior_mm"]), d["length_mm"])) for d in disks[:5])
    return disk_w + sum(wedges_deg[:5])


def _sample_fatty_foci(rng: np.random.Generator, cfg: PhantomConfig) -> list[dict]:
    present = rng.random() < cfg.prevalence["fatty_marrow"]
    n = int(rng.integers(1, 5))
    foci = [{"u": float(rng.uniform(0.15, 0.85)), "v": float(rng.uniform(0.15, 0.85)), "radius_mm": float(rng.uniform(1.5, 5.0))} for _ in range(4)]
    return foci[:n] if present else []


def sample_anatomy(rng: np.random.Generator, cfg: PhantomConfig) -> dict:
    """All anatomical parameters of one subject (disks and vertebrae from the bottom, L5/S1 / L5 first)."""
    n_disks = 6 if cfg.include_t12 else 5
    levels = list(DISK_LEVELS) + [T12_DISK[0]]
    low = bool(rng.random() < cfg.low_height_fraction)
    scale_draw = float(rng.uniform(*cfg.low_height_scale))
    pop_scale = scale_draw if low else 1.0
    mean_l, sd_l = cfg.lordosis_deg
    z = {"subject": rng.standard_normal(), "lordosis": rng.standard_normal(), "size": rng.standard_normal()}
    z["lordosis"] = float(np.clip(z["lordosis"], -2.8, 2.8))
    target_lordosis = mean_l + sd_l * z["lordosis"]
    z_deg = rng.standard_normal()
    vertebra_h = rng.uniform(24.0, 28.5, size=n_disks) * (1.0 - 0.25 * (1.0 - pop_scale))
    disks = []
    for i in range(n_disks):
        latent = math.sqrt(_RHO_DEGENERATION) * z_deg + math.sqrt(1.0 - _RHO_DEGENERATION) * rng.standard_normal()
        grade = _grade(latent, cfg.grade_probabilities_lower if i <= 1 else cfg.grade_probabilities_upper)
        disks.append(_sample_disk(rng, cfg, i, levels[i], z, pop_scale, grade, float(vertebra_h[i])))
    # spondylolisthesis: the vertebra above L4/L5 or L5/S1 slides forward by 10-30 % of the disk's length
    slip = rng.random() < cfg.prevalence["spondylolisthesis"]
    slip_level = 1 if rng.random() < 0.6 else 0
    slip_frac = float(rng.uniform(0.1, 0.3))
    if slip:
        d = disks[slip_level]
        d["slip_mm"] = slip_frac * d["length_mm"]
        d["findings"] = _findings(d)
    # vertebral wedges: a per-level base and noise, shifted together so that the lordosis meets its target
    noise = rng.normal(0.0, 1.2, size=5)
    noise -= noise.mean()
    base = np.array(_VERTEBRA_WEDGE_BASE) + noise
    disk_part = lordosis_from_wedges(disks, [0.0] * 5)
    wedges = base + (target_lordosis - disk_part - base.sum()) / 5.0
    wedges = np.clip(wedges, -14.0, 14.0)
    vertebrae = [{"height_mm": float(vertebra_h[i]), "wedge_deg": float(wedges[i]), "fatty_foci": _sample_fatty_foci(rng, cfg)} for i in range(5)]
    if n_disks == 6:
        vertebrae.append({"height_mm": float(vertebra_h[5]), "wedge_deg": float(rng.uniform(*_T12_WEDGE)), "fatty_foci": _sample_fatty_foci(rng, cfg)})
    lordosis = lordosis_from_wedges(disks, [v["wedge_deg"] for v in vertebrae])
    return {
        "population": "lower_heights" if low else "reference",
        "height_scale": pop_scale,
        "lordosis_target_deg": float(target_lordosis),
        "sacral_slope_deg": float(np.clip(38.0 + 0.65 * (lordosis - 44.5) + rng.normal(0.0, 4.0), 15.0, 60.0)),
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
