"""How a step is computed, the options the training step and the attacks share: precision, memory
layout and chunks of the batch (their checks), and the autocast context.

"bf16" runs a forward pass under `torch.autocast` (CPU or CUDA); what is computed from its outputs
(losses, gradients w.r.t. fp32 leaves, scores) stays fp32. channels_last and chunks change only
the speed, so they may be "auto" (chosen by timing: `training.autotune`, `attacks.tune_attack_layout`).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
from collections.abc import Callable, Mapping, Sequence
from time import perf_counter

import torch

__all__ = ["AUTO", "PRECISIONS", "autocast", "check_channels_last", "check_chunks", "check_precision", "fastest",
           "float_outputs"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
AUTO = "auto"


def check_precision(precision: str, where: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{where} must be one of {PRECISIONS}, got {precision!r}")
    return precision


def check_channels_last(value, where: str = "channels_last"):
    """True, False or "auto" (also the strings "true"/"false" of a command-line override)."""
    if value == AUTO or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"{where} must be true, false or 'auto', got {value!r}")


def check_chunks(value, where: str):
    """A chunk size: a positive integer, None/0 (the whole batch, returned as None) or "auto"."""
    if value is None or value == AUTO:
        return value
    if isinstance(value, str) and value.lower() in ("none", "null", "0"):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 0:
        raise ValueError(f"{where} must be a positive integer, 0 or null (the whole batch) or 'auto', got {value!r}")
    return int(value) or None


def autocast(device: torch.device | str, precision: str):
    """The context a forward pass of `precision` runs in (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def float_outputs(outputs):
    """A network's outputs (a tensor or a dict of them) in fp32: a forward pass under autocast gives bf16."""
    if torch.is_tensor(outputs):
        return outputs.float()
    if isinstance(outputs, Mapping):
        return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in outputs.items()}
    return outputs


def fastest(candidates: Sequence, run: Callable, repeats: int, device: torch.device | str, what: str):
    """The candidate whose `run(candidate)` is fastest: every candidate once per round, alternating within
    the round (a change in the machine's load hits them alike), one untimed warm-up round (caches, the
    allocator, the kernels), then `repeats` timed rounds; the best time counts. Candidates have a
    `describe()`. Returns (best, {describe(): [seconds per timed round]}) and logs the table as `what`."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {c: [] for c in candidates}
    for round_ in range(int(repeats) + 1):
        for cand in candidates:
            sync()
            start = perf_counter()
            run(cand)
            sync()
            if round_ > 0:
                times[cand].append(perf_counter() - start)
    best = min(candidates, key=lambda c: min(times[c]))
    table = {c.describe(): times[c] for c in candidates}
    logger.info("%s: %s -> %s", what,
                "; ".join(f"{k}: best {min(v):.3f} s, median {statistics.median(v):.3f} s" for k, v in table.items()),
                best.describe())
    return best, table
