"""The network under evaluation: its weight digest and the heads it has.

Reading model files (strictly, with their description) is `diskrobust.checkpoints`'.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from diskrobust.data.errors import ConfigError
from diskrobust.robustness.config import HEADS, SweepConfig

__all__ = ["model_fingerprint", "network_outputs", "check_heads", "file_sha256", "load_surrogate"]


def model_fingerprint(model: nn.Module) -> str:
    """A short digest of the network's weights and buffers (what makes cached units valid)."""
    from diskrobust.checkpoints import weights_digest

    return weights_digest(model)[:16]


def network_outputs(model: nn.Module, image_shape: Sequence[int]) -> list[str]:
    """Keys of the network's output dict for one zero image of shape (1, H, W)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *image_shape), device=device))
    finally:
        model.train(was_training)
    if not isinstance(out, Mapping):
        raise ValueError(f"the network must return a dict with 'pred' and/or 'seg', got {type(out).__name__}")
    return sorted(out)


def check_heads(config: SweepConfig, outputs: Sequence[str]) -> None:
    """Every attacked head must exist in the network: raise ValueError naming the head and the outputs."""
    wanted = []
    if config.ind.enabled:
        wanted += [("ind#heads", h) for h in config.ind.heads]
    if config.ood.enabled:
        wanted += [("ood#heads", h) for h in config.ood.heads]
    for where, head in wanted:
        absent = [o for o in HEADS[head] if o not in outputs]
        if absent:
            raise ConfigError(None, where, f"head {head!r} needs network output(s) {absent}, but the network "
                             f"returns only {list(outputs)}")


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file (the checkpoint recorded next to the results)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_surrogate(model: nn.Module, path: str | Path) -> nn.Module:
    """The masking audit's transfer source: a copy of `model`'s architecture with the weights of model file
    `path` (strict), on its device, in eval mode. DataError naming the file (and `audit#surrogate_ckpt`)
    when it is missing, unreadable, does not fit the architecture, or holds the evaluated weights themselves
    (transfer from the network itself is white-box, not a transfer check)."""
    import copy

    from diskrobust.attacks._base import unwrap_model
    from diskrobust.checkpoints import load_model_weights, weights_digest
    from diskrobust.data.errors import DataError

    surrogate = copy.deepcopy(unwrap_model(model))
    try:
        load_model_weights(surrogate, path)
    except DataError as err:
        raise DataError(path, f"audit#surrogate_ckpt: {err.problem}") from None
    if weights_digest(surrogate) == weights_digest(model):
        raise DataError(path, "audit#surrogate_ckpt: holds the weights of the evaluated network itself; the transfer "
                              "check needs another model of the same architecture (e.g. another seed's model.pt)")
    return surrogate.eval()
