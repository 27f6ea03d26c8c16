"""Errors for bad input: data (files, items) and settings (config ids, command-line overrides).

Every message names where the problem is (the file or item, the setting), what is wrong and, where it
helps, what to do. `diskrobust.bundle_checks.install_error_printer` prints these messages as the
last lines of a failed run, below the full traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataError", "ConfigError", "PROJECT_ERRORS"]


class DataError(ValueError):
    """Input data that cannot be used: missing, corrupt, wrong shape, NaN/Inf, bad contour, ..."""

    def __init__(self, source: str | Path | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class ConfigError(ValueError):
    """A setting that cannot be used: unknown (misspelt) key, wrong type, value out of range.

    Args:
        source: where the setting came from (config files, "command line", a profile file), or None.
        setting: the setting's id (e.g. "ind#steps") or several, comma separated.
        problem: what is wrong with it.
        hint: what to do instead (optional).

    The message reads "<source>: <setting>: <problem>. <hint>" on one line.
    """

    def __init__(self, source: str | Path | None, setting: str, problem: str, hint: str = ""):
        self.source = None if source is None else str(source)
        self.setting = str(setting)
        self.problem = problem
        self.hint = hint
        text = f"{self.setting}: {problem}" if self.setting else problem
        if self.source:
            text = f"{self.source}: {text}"
        if hint:
            text = f"{text.rstrip('.')}. {hint}"
        super().__init__(" ".join(text.split("\n")))


# The errors whose message is written for the user (the error printer looks for these in a chain).
PROJECT_ERRORS: tuple[type[BaseException], ...] = (DataError, ConfigError)
