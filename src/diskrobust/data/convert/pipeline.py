"""Convert a list of series, split by patient, write datalist.json and the report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diskrobust.data.convert.common import ConvertOptions, SeriesTask, convert_series
from diskrobust.data.convert.report import REPORT_FORMAT, summarise, write_report
from diskrobust.data.dataset_io import SPLITS, write_datalist
from diskrobust.data.errors import DataError

__all__ = ["split_patients", "check_output_folder", "convert_dataset"]


def split_patients(patients: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Assign each patient to training / validation / test, shuffled by ``numpy.random.default_rng(seed)``.

    ``fractions`` (training, validation, test) are normalised; validation and test get
    ``round(n * fraction)`` patients but at least one each when their fraction is > 0 and there are
    enough patients to keep one for training. The result does not depend on the input order.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {list(fractions)}")
    fr = fr / fr.sum()
    unique = sorted(set(patients))
    n = len(unique)
    order = np.random.default_rng(seed).permutation(n)
    counts = [0, int(round(n * fr[1])), int(round(n * fr[2]))]
    for i in (1, 2):
        if fr[i] > 0 and counts[i] == 0 and n - sum(counts) > 1:
            counts[i] = 1
    while sum(counts) > n - (1 if fr[0] > 0 and n > 0 else 0) and (counts[1] or counts[2]):
        counts[2 if counts[2] >= counts[1] else 1] -= 1
    counts[0] = n - counts[1] - counts[2]
    names = [SPLITS[0]] * counts[0] + [SPLITS[1]] * counts[1] + [SPLITS[2]] * counts[2]
    return {unique[j]: names[k] for k, j in enumerate(order)}


def check_output_folder(root: str | Path, out: str | Path) -> None:
    """Refuse an output folder that is, contains or lies inside the input folder (symlinks resolved).

    Writing images/, labels/ and the report there would overwrite or mix with the source files.
    """
    root_r, out_r = Path(root).resolve(), Path(out).resolve()
    if out_r == root_r:
        how = "is the input folder"
    elif out_r in root_r.parents:
        how = "contains the input folder"
    elif root_r in out_r.parents:
        how = "lies inside the input folder"
    else:
        return
    raise DataError(
        out,
        f"the output folder {how} ({root}; resolved: --out {out_r}, --root {root_r}): converting would "
        "overwrite or mix with the source files. Choose an --out outside --root (and not above it).",
    )


def convert_dataset(
    dataset: str,
    root: str | Path,
    out: str | Path,
    tasks: Sequence[SeriesTask],
    unpaired: Sequence[dict] = (),
    options: ConvertOptions | None = None,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict:
    """Convert every task, write ``datalist.json`` (split by patient), ``report.json`` and ``report.md``.

    Returns the report dict. Series of one patient always share a split. Subjects must be unique.
    """
    options = options or ConvertOptions()
    check_output_folder(root, out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [t.subject for t in tasks]
    dupes = sorted({s for s in names if names.count(s) > 1})
    if dupes:
        raise ValueError(f"subject names must be unique, repeated: {dupes[:5]}")
    series = [
        convert_series(t, out, options)
        for t in tqdm(tasks, desc=f"convert {dataset}", unit="series", disable=not progress)
    ]
    converted = [s for s in series if s["status"] == "converted"]
    assignment = split_patients([s["patient"] for s in converted], fractions, seed)
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for s in converted:
        s["split"] = assignment[s["patient"]]
        entry = {"subject": s["subject"], "patient": s["patient"], **s["outputs"]}
        splits[s["split"]].append(entry)
    write_datalist(out / "datalist.json", splits)
    report = {
        "format": REPORT_FORMAT,
        "dataset": dataset,
        "root": str(root),
        "out": str(out),
        "seed": int(seed),
        "split_fractions": [float(f) for f in fractions],
        "options": {k: getattr(options, k) for k in options.__dataclass_fields__},
        **(extra or {}),
        "patients_per_split": {name: len({e["patient"] for e in splits[name]}) for name in SPLITS},
        "series": series,
        "unpaired": list(unpaired),
    }
    report["summary"] = summarise(series, list(unpaired))
    write_report(out, report)
    return report
