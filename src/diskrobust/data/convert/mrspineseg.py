"""MRSpineSeg (SpineParseNet): ``<split>/MR/Case{N}.nii.gz`` + ``<split>/Mask/mask_case{N}.nii.gz``.

Source labels: 1 sacrum, 2 L5, 3 L4, 4 L3, 5 L2, 6 L1, 7-10 T12-T9; disks 11 L5/S, 12 L4/L5,
13 L3/L4, 14 L2/L3, 15 L1/L2, 16-19 T12/L1-T9/T10. In SPIDER numbers: vertebra v -> v - 1 (L5 = 1),
disk d -> d + 190 (L5/S1 = 201). SPIDER has no sacrum label, so the sacrum becomes background (it is
listed in the docs, not silently lost). There is no canal label: the mid-sagittal slice comes from
the disks' centre of mass and the anterior side from the header, checked against the vertebrae's
posterior elements when the masks include them.
"""

from __future__ import annotations

import re
from pathlib import Path

from diskrobust.data.convert.common import SeriesTask
from diskrobust.data.errors import DataError

__all__ = ["MRSPINESEG_LABEL_MAP", "find_mrspineseg_series"]

MRSPINESEG_LABEL_MAP: dict[int, int] = {1: 0, **{v: v - 1 for v in range(2, 11)}, **{d: d + 190 for d in range(11, 20)}}

_CASE = re.compile(r"^Case(\d+)\.nii(\.gz)?$", re.IGNORECASE)
_MASK = re.compile(r"^mask_case(\d+)\.nii(\.gz)?$", re.IGNORECASE)


def find_mrspineseg_series(root: str | Path) -> tuple[list[SeriesTask], list[dict]]:
    """Pair every ``*/MR/Case{N}.nii[.gz]`` with ``*/Mask/mask_case{N}.nii[.gz]`` under ``root``.

    ``root`` is the dataset folder holding ``train/`` (and ``test/`` if present) or one of those
    folders itself. Subjects are ``Case{N}`` (``test_Case{N}`` outside train/); one series per patient.
    """
    root = Path(root)
    mr_dirs = [d for d in [root / "MR", *sorted(root.glob("*/MR"))] if d.is_dir()]
    if not mr_dirs:
        raise DataError(root, "not an MRSpineSeg folder: no MR/ or */MR/ folder (expected train/MR/Case{N}.nii.gz)")
    tasks, unpaired = [], []
    for mr in mr_dirs:
        mask_dir = mr.parent / "Mask"
        masks = {}
        if mask_dir.is_dir():
            for p in sorted(mask_dir.iterdir()):
                m = _MASK.match(p.name)
                if m:
                    masks[int(m.group(1))] = p
        prefix = "" if mr.parent == root or mr.parent.name.lower() == "train" else f"{mr.parent.name}_"
        seen = set()
        for p in sorted(mr.iterdir()):
            m = _CASE.match(p.name)
            if not m:
                continue
            n = int(m.group(1))
            seen.add(n)
            if n not in masks:
                unpaired.append({"path": str(p), "problem": f"no mask {mask_dir.name}/mask_case{n}.nii.gz"})
                continue
            subject = f"{prefix}Case{n}"
            tasks.append(SeriesTask(subject=subject, patient=subject, image=p, mask=masks[n], label_map=MRSPINESEG_LABEL_MAP, converter="mrspineseg"))
        unpaired += [{"path": str(p), "problem": f"no image MR/Case{n}.nii.gz"} for n, p in masks.items() if n not in seen]
    return tasks, unpaired
