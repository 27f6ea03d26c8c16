"""The network under evaluation: loading a checkpoint strictly, its weight digest, the heads it has.

(`diskrobust.checkpoints` will own checkpoint reading for the whole project; until then the sweep's
strict loader lives here.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diskrobust.data.errors import ConfigError, DataError
from diskrobust.robustness.config import HEADS, SweepConfig

__all__ = ["load_network_checkpoint", "model_fingerprint", "network_outputs", "check_heads", "file_sha256"]


def _state_dict_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A plain state_dict, or one wrapped as {"model"|"network"|"state_dict": state_dict} (Ignite checkpoints)."""
    if isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("model", "network", "state_dict", "net"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(torch.is_tensor(v) for v in inner.values()):
                return dict(inner)
    raise DataError(path, f"not a network state_dict (a {type(obj).__name__}"
                          f"{' with keys ' + str(sorted(obj)[:8]) if isinstance(obj, Mapping) else ''})")


def load_network_checkpoint(network: nn.Module, ckpt_path: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """Load `ckpt_path` into `network` strictly; a mismatch raises DataError listing the keys and shapes.

    The error says which network parameters to change: the bundle's `network_def` must match the one
    the checkpoint was trained with (e.g. `--network_def#width 8`).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt/non-torch files
        raise DataError(path, f"cannot be read as a torch checkpoint: {type(err).__name__}: {err}") from None
    state = _state_dict_from(obj, path)
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def listed(items: list[str]) -> str:
            return "; ".join(items[:6]) + (f" (and {len(items) - 6} more)" if len(items) > 6 else "")

        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {listed(shapes)}")
        if missing:
            parts.append(f"{len(missing)} key(s) missing from the checkpoint: {listed(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) in the checkpoint: {listed(unexpected)}")
        desc = ", ".join(f"{k}={getattr(network, k)}" for k in ("width", "blocks", "has_point_head", "has_seg_head",
                                                                 "spatial_size", "num_points") if hasattr(network, k))
        raise DataError(path, f"does not match the network ({type(network).__name__}: {desc}): " + " | ".join(parts)
                        + ". Give the network the parameters the checkpoint was trained with (bundle overrides such as "
                          "--width 8 or --network_def#blocks \"[2, 2, 2, 2]\"; check the training config).")
    network.load_state_dict(state, strict=True)
    if device is not None:
        network.to(device)
    return network.eval()


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the network's weights and buffers (what makes cached units valid)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


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
