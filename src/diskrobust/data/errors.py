"""Errors for bad input data. Every message names the file (or item) and the problem."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Input data that cannot be used: missing, corrupt, wrong shape, NaN/Inf, bad contour, ..."""

    def __init__(self, source: str | Path | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)
