"""Engine wiring the bundle configs call: attaching handlers after the engines exist, and the trainer's scalars."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["attach_handlers", "train_scalars"]


def attach_handlers(engine, handlers) -> None:
    """Attach `handlers` to `engine`, skipping None (handlers a config disabled, e.g. on ranks > 0).

    For handlers that reference the engine itself (CheckpointSaver / CheckpointLoader of the trainer):
    they cannot be in the engine's own handler list, which is resolved before the engine exists.
    """
    for handler in handlers or []:
        if handler is not None:
            handler.attach(engine)


def train_scalars(loss_fn, optimizer) -> Callable:
    """output_transform for Stats/TensorBoard handlers: trainer output -> {"train/loss", "train/<term>", "train/lr"}.

    DiskShapeLoss keeps its last call's terms in `last_terms`; the learning rate is read from the optimizer.
    """

    def transform(output) -> dict[str, float]:
        out = output[0] if isinstance(output, (list, tuple)) else output
        scalars = {"train/loss": float(torch.as_tensor(out["loss"]).detach())}
        for name, value in getattr(loss_fn, "last_terms", {}).items():
            scalars[f"train/{name}"] = float(value)
        scalars["train/lr"] = float(optimizer.param_groups[0]["lr"])
        return scalars

    return transform
