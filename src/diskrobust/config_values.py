"""Values that reach the project from a config or the command line, checked once.

`python -m monai.bundle run ... --resume true` hands the config the *string* "true"; `bool("false")`
is True. Every flag goes through `as_bool`, which accepts booleans and the usual spellings and
refuses anything else, naming the setting.
"""

from __future__ import annotations

__all__ = ["as_bool"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def as_bool(value, name: str = "flag") -> bool:
    """A boolean setting: True/False, 0/1 or the strings true/false, yes/no, on/off (any case).

    >>> as_bool("False"), as_bool(1)
    (False, True)
    >>> as_bool("maybe", "resume")
    Traceback (most recent call last):
    ...
    ValueError: resume: expected a boolean (true/false), got 'maybe'
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    elif isinstance(value, int) and value in (0, 1):
        return bool(value)
    elif value is None:
        return False
    raise ValueError(f"{name}: expected a boolean (true/false), got {value!r}")
