"""SPIDER label numbers <-> spine level names.

SPIDER numbers vertebrae from the bottom (1 = the lowest lumbar vertebra, L5 in a normal spine) and
names disk ``200 + k`` after the vertebra ``k`` directly above it: 201 = L5/S1, 202 = L4/L5, ...,
206 = T12/L1. The project's label images use the same numbers (docs/architecture.md).
"""

from __future__ import annotations

import re

SPIDER_CANAL = 100
SPIDER_VERTEBRAE = range(1, 26)
SPIDER_PARTIAL_VERTEBRAE = range(101, 126)
SPIDER_DISKS = range(201, 226)

# Vertebrae from the bottom: index k - 1 is SPIDER vertebra k.
_VERTEBRA_NAMES = (
    [f"L{i}" for i in range(5, 0, -1)] + [f"T{i}" for i in range(12, 0, -1)] + [f"C{i}" for i in range(7, 0, -1)]
)

__all__ = [
    "SPIDER_CANAL",
    "SPIDER_VERTEBRAE",
    "SPIDER_PARTIAL_VERTEBRAE",
    "SPIDER_DISKS",
    "vertebra_name",
    "disk_level",
    "level_to_disk_label",
    "is_disk_label",
    "level_height",
]


def vertebra_name(k: int) -> str:
    """Name of SPIDER vertebra ``k`` (1 = L5, 6 = T12, 18 = C7); ``V<k>`` beyond C1."""
    if k < 1:
        raise ValueError(f"vertebra numbers start at 1, got {k}")
    return _VERTEBRA_NAMES[k - 1] if k <= len(_VERTEBRA_NAMES) else f"V{k}"


def disk_level(label: int) -> str:
    """Level name of SPIDER disk ``label`` (201 -> 'L5/S1', 202 -> 'L4/L5', 206 -> 'T12/L1')."""
    if label not in SPIDER_DISKS:
        raise ValueError(f"{label} is not a SPIDER disk label (201..225)")
    k = label - 200
    below = "S1" if k == 1 else vertebra_name(k - 1)
    return f"{vertebra_name(k)}/{below}"


def level_to_disk_label(level: str) -> int:
    """Inverse of `disk_level`, tolerant of spacing, case and 'L5/S' (MRSpineSeg's name for L5/S1)."""
    norm = re.sub(r"[\s\-_]", "", str(level)).upper().replace("\\", "/")
    if norm in ("L5/S", "L5S1", "L5S"):
        norm = "L5/S1"
    for label in SPIDER_DISKS:
        if disk_level(label) == norm or disk_level(label).replace("/", "") == norm:
            return label
    raise ValueError(f"unknown disk level {level!r} (expected names like 'L5/S1', 'L4/L5', 'T12/L1')")


def is_disk_label(label: int) -> bool:
    return int(label) in SPIDER_DISKS


def level_height(label: int) -> float | None:
    """Position along the spine in 'half levels' counted from the bottom, for orientation checks.

    Vertebra k sits at 2k, disk 200+k at 2k - 1 (just below vertebra k), partial vertebrae like full
    ones; the canal and anything else have no height (None).
    """
    label = int(label)
    if label in SPIDER_VERTEBRAE:
        return 2.0 * label
    if label in SPIDER_PARTIAL_VERTEBRAE:
        return 2.0 * (label - 100)
    if label in SPIDER_DISKS:
        return 2.0 * (label - 200) - 1.0
    return None
