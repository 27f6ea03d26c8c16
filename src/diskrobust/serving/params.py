"""Request parameters of the serving tasks: parsed and checked here, so every bad value is refused
with a message that names the parameter and what is allowed (HTTP 400 in the server).

Also the check of the ids a client may send (image ids, label tags): they become file names in MONAI
Label's datastore, which joins them to its folder unchecked (``?image=../x`` would write outside it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "ID_PATTERN",
    "check_id",
    "parse_params_json",
    "parse_points",
    "parse_slice_index",
    "parse_number",
    "parse_integer",
    "parse_request",
]

# A datastore id: a plain file-name stem. No separators, no leading dot (so no "." / ".."), no "..".
ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


def check_id(value: str, what: str = "image id") -> str:
    """``value`` if it is a safe datastore id; ValueError naming ``what`` otherwise.

    Safe: 1-128 characters of letters, digits, ``_``, ``-`` and ``.``, not starting with ``.`` or ``-``,
    without ``..``: no path separator, no parent folder, no absolute path, no hidden file.
    """
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value) or ".." in value:
        shown = value if isinstance(value, str) and len(value) <= 64 else f"{str(value)[:64]}..."
        raise ValueError(f"{what} {shown!r} is not allowed: use 1-128 letters, digits, '_', '-' or '.', "
                         "not starting with '.' or '-', without '..' or path separators")
    return value


def parse_params_json(text: str | bytes | None) -> dict[str, Any]:
    """The ``params`` form field -> dict; ValueError saying what is wrong (not JSON, not an object)."""
    if text is None or text == "" or text == b"":
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"params is not valid JSON ({err.msg if hasattr(err, 'msg') else err}): "
                         "send a JSON object, e.g. params={\"threshold\": 0.5}") from None
    if not isinstance(value, dict):
        raise ValueError(f"params must be a JSON object, got {type(value).__name__}")
    return value


def parse_points(value: Any, source: str = "foreground") -> np.ndarray:
    """MONAI Label click points -> (K, 2) float (x, y) image px.

    Accepts [[x, y], ...] or [[x, y, z], ...] (3D viewers send a slice coordinate, which is dropped:
    the slice is chosen by ``slice_index``), or a JSON string of either. Raises ValueError for anything else.
    """
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return np.zeros((0, 2), dtype=np.float64)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON: {err}") from None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: expected a list of [x, y] points, got {value!r}") from None
    if arr.ndim != 2 or arr.shape[1] not in (2, 3) or not np.isfinite(arr).all():
        raise ValueError(f"{source}: expected a list of finite [x, y] points, got shape {arr.shape}")
    return arr[:, :2].copy()


def parse_slice_index(value: Any) -> int | None:
    """``slice_index`` request value -> int, or None for the middle slice (absent, null, "" or negative).

    Raises ValueError for anything that is not a whole number.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"slice_index must be an integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"slice_index must be an integer, got {value!r}") from None
    if not np.isfinite(number) or number != int(number):
        raise ValueError(f"slice_index must be an integer, got {value!r}")
    index = int(number)
    return None if index < 0 else index


def parse_number(request: Mapping[str, Any], key: str, default: float, low: float, high: float,
                 low_open: bool = True, high_open: bool = False) -> float:
    """``request[key]`` (default ``default``) as a float inside the interval; ValueError naming ``key``."""
    value = request.get(key, default)
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a number in {interval}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number in {interval}, got {value!r}") from None
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (np.isfinite(number) and above and below):
        raise ValueError(f"{key} must be a number in {interval}, got {value!r}")
    return number


def parse_integer(request: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    """``request[key]`` (default ``default``) as an integer in low..high; ValueError naming ``key``."""
    value = request.get(key, default)
    message = f"{key} must be an integer in {low}..{high}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(message)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(message) from None
    if not np.isfinite(number) or number != int(number) or not low <= number <= high:
        raise ValueError(message)
    return int(number)


def parse_request(request: Mapping[str, Any], robustness: bool = False) -> dict[str, Any]:
    """The serving arguments of one request: centres, slice index, threshold (and eps, steps, tolerance).

    ValueError names the bad parameter. Keys (see docs/monai_label.md): ``foreground`` (clicks),
    ``slice_index``, ``threshold`` in (0, 1); with ``robustness``: ``eps`` in (0, 0.3], ``steps`` in
    1..200, ``tolerance_mm`` in (0, 100].
    """
    args = {
        "centres": parse_points(request.get("foreground"), "foreground"),
        "slice_index": parse_slice_index(request.get("slice_index")),
        "threshold": parse_number(request, "threshold", 0.5, 0.0, 1.0, high_open=True),
    }
    if robustness:
        args["eps"] = parse_number(request, "eps", 0.03, 0.0, 0.3)
        args["steps"] = parse_integer(request, "steps", 10, 1, 200)
        args["tolerance_mm"] = parse_number(request, "tolerance_mm", 1.0, 0.0, 100.0)
    return args
