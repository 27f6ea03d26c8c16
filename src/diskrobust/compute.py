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

from diskrobust.data.errors import ConfigError

__all__ = ["AUTO", "PRECISIONS", "autocast", "channels_last_weight_grad_hazards", "check_channels_last", "check_chunks",
           "check_precision", "fastest", "float_outputs"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
AUTO = "auto"


def check_precision(precision: str, where: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ConfigError(None, where, f"must be one of {PRECISIONS}, got {precision!r}")
    return precision


def check_channels_last(value, where: str = "channels_last"):
    """True, False or "auto" (also the strings "true"/"false" of a command-line override)."""
    if value == AUTO or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(None, where, f"must be true, false or 'auto', got {value!r}")


def check_chunks(value, where: str):
    """A chunk size: a positive integer, None/0 (the whole batch, returned as None) or "auto"."""
    if value is None or value == AUTO:
        return value
    if isinstance(value, str) and value.lower() in ("none", "null", "0"):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 0:
        raise ConfigError(None, where, f"must be a positive integer, 0 or null (the whole batch) or 'auto', "
                          f"got {value!r}")
    return int(value) or None


# oneDNN (PyTorch's CPU convolutions) computes the weight gradient of a 1x1 convolution with a stride
# above 1 and fewer input channels than its channel block (16 with AVX-512, 8 with AVX2) through a
# "reduce to unit stride" workspace that it overruns when the tensors are channels_last (NHWC): wrong
# weight gradients, a hang, or heap corruption (uxlfoundation/oneDNN issue 6035, open). Seen here with
# torch 2.13 as a segfault or "double free" in the backward pass of DiskShapeNet(width=8) in channels_last
# at 64 and 128 px (Conv2d(8, 16, 1, stride=2) alone: from 56 px). Input gradients (what the attacks
# compute) are not affected, nor is cuDNN.
_ONEDNN_NHWC_SAFE_CHANNELS = 16


def channels_last_weight_grad_hazards(network: torch.nn.Module, device: torch.device | str) -> list[str]:
    """The layers of `network` whose weight gradient oneDNN gets wrong in channels_last on `device`.

    Empty except on CPU, for trainable non-transposed convolutions with a 1x1 kernel, a stride above 1
    and fewer than 16 input channels per group (in DiskShapeNet: the residual downsampling of the
    encoder stages when the width is 8). Each entry names the layer, its input channels and stride.
    """
    if torch.device(device).type != "cpu":
        return []
    found = []
    for name, module in network.named_modules():
        if (isinstance(module, torch.nn.modules.conv._ConvNd) and not module.transposed
                and module.weight.requires_grad and all(k == 1 for k in module.kernel_size)
                and any(s > 1 for s in module.stride)
                and module.in_channels // module.groups < _ONEDNN_NHWC_SAFE_CHANNELS):
            found.append(f"{name} ({module.in_channels} input channels, stride {tuple(module.stride)})")
    return found


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
