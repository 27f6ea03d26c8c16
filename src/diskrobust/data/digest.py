"""Content digests of dataset files: what makes a cache, a model description or a result valid.

A digest hashes the bytes of the files a datalist's entries name (not their paths or mtimes), so
a copied dataset keeps its digest and an edited file changes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = ["entries_digest", "datalist_digest"]


def _file_sha256(path: Path, h) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def entries_digest(entries: Sequence[Mapping], keys: Iterable[str] = ("image", "contours")) -> str:
    """sha256 over each entry's subject and the contents of its `keys` files, in entry order."""
    h = hashlib.sha256()
    for e in entries:
        h.update(str(e.get("subject", "")).encode() + b"\0")
        for key in keys:
            if key in e:
                h.update(key.encode() + b"\0")
                _file_sha256(Path(e[key]), h)
    return h.hexdigest()


def datalist_digest(datalist: str | Path, splits: Iterable[str] = ("training", "validation"),
                    keys: Iterable[str] = ("image", "contours")) -> str:
    """sha256 of the named splits of a datalist (their files' contents), e.g. a model's training data."""
    from diskrobust.data.dataset_io import load_datalist

    h = hashlib.sha256()
    for split in splits:
        h.update(split.encode() + b"\0")
        h.update(entries_digest(load_datalist(datalist, split), keys).encode())
    return h.hexdigest()
