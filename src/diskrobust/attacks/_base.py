"""What every attack shares: the honest-attack context, the result type and the base class.

An attack must observe the network, never change it. `attack_context` is the one place that
guarantees this: eval mode during the attack (every submodule's own training flag restored after),
parameters excluded from autograd for the duration (restored after, even on error), gradients only
ever taken w.r.t. the input through `torch.autograd.grad`, so `.grad` of a parameter is never
written and DDP's reducer hooks never fire.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP/DataParallel wrapper (attacking the wrapper would fire its reducer hooks)."""
    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


@contextlib.contextmanager
def attack_context(*modules: nn.Module | None) -> Iterator[None]:
    """Eval mode, parameters frozen and autograd enabled for the duration; the exact prior state after.

    Accepts several modules (the network, a detector); `None` entries are skipped.
    """
    modules = tuple(m for m in modules if m is not None)
    flags = [(sub, sub.training) for m in modules for sub in m.modules()]
    params = {id(p): p for m in modules for p in m.parameters()}
    grad_flags = [(p, p.requires_grad) for p in params.values()]
    try:
        for m in modules:
            m.eval()
        for p, _ in grad_flags:
            # Without this the forward pass would save activations for weight gradients nobody asked for.
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        for sub, flag in flags:
            sub.training = flag


def make_generator(device: torch.device, seed: int | None) -> torch.Generator | None:
    """A generator on `device` seeded with `seed`, or None (the global RNG) when no seed is given."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


@dataclass
class AttackResult:
    """What an attack returns.

    images: (B, 1, H, W) adversarial images in [0, 1]; losses: (B,) the attack objective at `images`
    (the quantity the attack maximises, untargeted, or minimises, targeted); deltas: (B, 1, H, W)
    `images - original`; point_distance: (B,) mean Euclidean distance (px) between the predicted
    points at `images` and the target points, where the attack computes it (OOD attack).
    """

    images: torch.Tensor
    losses: torch.Tensor
    deltas: torch.Tensor
    point_distance: torch.Tensor | None = None


class Attack:
    """Base class: holds the unwrapped model; `__call__` is `forward` (torchattacks style)."""

    def __init__(self, model: nn.Module, seed: int | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = unwrap_model(model)
        self.seed = seed

    def forward(self, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> AttackResult:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> AttackResult:
        return self.forward(images, targets)


def check_images(images: torch.Tensor, who: str) -> torch.Tensor:
    """Validate (B, C, H, W) floating images in [0, 1]; return a detached plain-tensor copy."""
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError(f"{who}: images must be a (B, C, H, W) tensor, got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"{who}: images must be floating point, got {images.dtype}")
    images = images.as_tensor() if hasattr(images, "as_tensor") else images
    # clone: inference-mode or MetaTensor inputs cannot take part in autograd
    images = images.detach().clone()
    if not torch.isfinite(images).all():
        raise ValueError(f"{who}: images contain NaN or Inf")
    return images
