"""SPIDER (Grand Challenge 2023, Zenodo, CC BY 4.0): ``images/<id>_<seq>.mha`` + ``masks/<id>_<seq>.mha``.

SPIDER masks already use the project's label convention (vertebrae 1-25 from the bottom, canal 100,
partial vertebrae 101-125, disks 201-225), so the label map is the identity on those values. A patient
(``<id>``) has several series (t1, t2, t2_SPACE): they share a patient id and thus a split.
"""

from __future__ import annotations

import re
from pathlib import Path

from diskrobust.data.convert.common import SeriesTask
from diskrobust.data.levels import SPIDER_CANAL, SPIDER_DISKS, SPIDER_PARTIAL_VERTEBRAE, SPIDER_VERTEBRAE
from diskrobust.data.errors import DataError

__all__ = ["SPIDER_LABEL_MAP", "find_spider_series", "subject_name"]

SPIDER_LABEL_MAP: dict[int, int] = {
    v: v for v in [*SPIDER_VERTEBRAE, SPIDER_CANAL, *SPIDER_PARTIAL_VERTEBRAE, *SPIDER_DISKS]
}

_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def subject_name(stem: str) -> str:
    """A file-system-safe subject name (anything outside [A-Za-z0-9_.-] becomes '_')."""
    return _SAFE.sub("_", stem)


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".mha")] if name.lower().endswith(".mha") else path.stem


def find_spider_series(root: str | Path) -> tuple[list[SeriesTask], list[dict]]:
    """Pair ``root/images/*.mha`` with ``root/masks/*.mha`` by file name.

    Returns ``(tasks, unpaired)``; ``unpaired`` lists {path, problem} for images without a mask and
    masks without an image. The patient is the file name up to the first '_' (``12_t2`` -> ``12``).
    Raises DataError when ``root/images`` is missing or holds no .mha file.
    """
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir():
        raise DataError(root, "not a SPIDER folder: 'images/' is missing (expected images/<id>_<seq>.mha and masks/<same>.mha)")
    images = {_stem(p): p for p in sorted(img_dir.glob("*.mha"))}
    masks = {_stem(p): p for p in sorted(mask_dir.glob("*.mha"))} if mask_dir.is_dir() else {}
    if not images:
        raise DataError(img_dir, "no .mha images found")
    tasks, unpaired = [], []
    for stem, img in images.items():
        if stem not in masks:
            unpaired.append({"path": str(img), "problem": f"no mask masks/{stem}.mha"})
            continue
        tasks.append(
            SeriesTask(
                subject=subject_name(stem),
                patient=stem.split("_")[0],
                image=img,
                mask=masks[stem],
                label_map=SPIDER_LABEL_MAP,
                converter="spider",
                extra={"sequence": stem.split("_", 1)[1] if "_" in stem else ""},
            )
        )
    unpaired += [{"path": str(p), "problem": f"no image images/{s}.mha"} for s, p in masks.items() if s not in images]
    return tasks, unpaired
