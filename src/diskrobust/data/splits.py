"""Split hygiene: a subject in more than one split of a datalist would score a model on its training data."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from diskrobust.data.errors import DataError

__all__ = ["check_disjoint_splits"]


def check_disjoint_splits(datalist: str | Path, splits: Iterable[str] = ("training", "validation", "test")) -> None:
    """DataError naming the subjects (and splits) that a datalist lists more than once across `splits`.

    Subjects are compared by their "subject" name and by their image path (a renamed copy of a training
    subject is the same subject)."""
    path = Path(datalist)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot read the datalist: {err}") from None
    seen: dict[str, str] = {}
    clashes = []
    for split in splits:
        for entry in doc.get(split, []) if isinstance(doc, dict) else []:
            if not isinstance(entry, dict):
                continue
            keys = [f"subject {entry['subject']}" if "subject" in entry else None,
                    f"image {entry['image']}" if "image" in entry else None]
            keys = [k for k in keys if k is not None]
            other = next((seen[k] for k in keys if k in seen and seen[k] != split), None)
            if other is not None:  # one clash per entry, named by its subject (or image)
                clashes.append(f"{keys[0]} in {other} and {split}")
            for k in keys:
                seen.setdefault(k, split)
    if clashes:
        raise DataError(path, f"{len(clashes)} subject(s) appear in more than one split ({'; '.join(clashes[:5])}"
                              f"{' ...' if len(clashes) > 5 else ''}): a test or validation subject must not be "
                              "trained on; fix the datalist's split")
