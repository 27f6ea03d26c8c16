"""What every attack shares: the honest-attack context, the result type, the base class and the
keep-best bookkeeping.

An attack must observe the network, never change it. `attack_context` is the one place that
guarantees this: eval mode during the attack (every submodule's own training flag restored after),
parameters excluded from autograd for the duration (restored after, even on error), gradients only
ever taken w.r.t. the input through `torch.autograd.grad`, so `.grad` of a parameter is never
written and DDP's reducer hooks never fire.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel
from tqdm.auto import tqdm


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


class BestIterate:
    """Per-sample keep-best bookkeeping, the one place every attack decides what "better" means.

    `maximize=True` keeps the highest loss (untargeted), False the lowest (targeted, OOD). A strictly
    better loss replaces the kept one, so ties keep the earlier iterate; a sample whose loss was never
    finite-comparable keeps `start` (default zeros) with loss NaN. `update(loss, delta, rows)` updates
    the samples `rows` (a slice of the batch, for chunked attacks) and returns the mask of improved ones.
    """

    def __init__(self, like: torch.Tensor, maximize: bool = True, start: torch.Tensor | None = None):
        batch = like.shape[0]
        self.maximize = bool(maximize)
        self.score = torch.full((batch,), -math.inf, device=like.device, dtype=like.dtype)
        self.loss = torch.full((batch,), math.nan, device=like.device, dtype=like.dtype)
        self.delta = torch.zeros_like(like) if start is None else start.detach().clone()

    def update(self, loss: torch.Tensor, delta: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        loss = loss.detach()
        score = loss if self.maximize else -loss
        better = score > self.score[rows]
        self.score[rows] = torch.where(better, score, self.score[rows])
        self.loss[rows] = torch.where(better, loss, self.loss[rows])
        mask = better.view(-1, *([1] * (delta.ndim - 1)))
        self.delta[rows] = torch.where(mask, delta.detach(), self.delta[rows])
        return better


def run_restarts(x: torch.Tensor, targets: Mapping[str, torch.Tensor], *, restarts: int, steps: int,
                 chunk_size: int | None, maximize: bool, clip: tuple[float, float], name: str, progress: bool,
                 start: Callable[[], torch.Tensor], run: Callable[..., None]) -> AttackResult:
    """The restart loop of the iterative attacks (PGD, APGD): the best iterate over all restarts.

    Each restart draws its start with `start()` for the whole batch, so that the chunking cannot change
    any sample's start, then calls `run(x_rows, delta_rows, targets_rows, best, rows, bar)` on each chunk;
    `run` scores its iterates into the shared `BestIterate` and advances the progress bar once a step.
    """
    best = BestIterate(x, maximize=maximize)
    parts = chunks(x.shape[0], chunk_size)
    bar = tqdm(total=restarts * steps * len(parts), desc=name, disable=not progress, leave=False)
    for _ in range(restarts):
        delta = start()
        for rows in parts:
            run(x[rows], delta[rows].clone(), {k: v[rows] for k, v in targets.items()}, best, rows, bar)
    bar.close()
    adv = (x + best.delta).clamp(*clip)
    return AttackResult(images=adv, losses=best.loss, deltas=adv - x)


def check_chunk_size(chunk_size) -> int | None:
    """None or an integer >= 1 (the `chunk_size` option of the attacks)."""
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"chunk_size must be an integer >= 1 or None, got {chunk_size}")
    return None if chunk_size is None else int(chunk_size)


def chunks(batch: int, chunk_size: int | None) -> list[slice]:
    """The batch cut into consecutive slices of `chunk_size` samples (None: one slice)."""
    if chunk_size is None or chunk_size >= batch:
        return [slice(0, batch)]
    return [slice(i, min(batch, i + chunk_size)) for i in range(0, batch, chunk_size)]


def heads_of(objective) -> tuple[str, ...] | None:
    """The network outputs an objective reads (its `heads` attribute), or None: unknown, run everything."""
    heads = getattr(objective, "heads", None)
    return None if heads is None else tuple(heads)


def run_model(model: nn.Module, images: torch.Tensor, heads: tuple[str, ...] | None) -> dict[str, torch.Tensor]:
    """The network's outputs, only `heads` of them when the network can skip the rest (`forward_heads`)."""
    if heads is not None and callable(getattr(model, "forward_heads", None)):
        return model.forward_heads(images, heads)
    return model(images)


@torch.no_grad()
def score(model: nn.Module, objective: Callable, heads: tuple[str, ...] | None, images: torch.Tensor,
          targets: Mapping[str, torch.Tensor], chunk_size: int | None = None) -> torch.Tensor:
    """The objective (B,) at `images`, in fp32, chunk by chunk."""
    parts = []
    for rows in chunks(images.shape[0], chunk_size):
        outputs = run_model(model, images[rows], heads)
        parts.append(objective(outputs, {k: v[rows] for k, v in targets.items()}))
    return torch.cat(parts)


class Attack:
    """Base class (the torchattacks template): `__call__` guards the network, `forward` does the work.

    `__call__` runs `forward` inside `attack_context(*self.guarded_modules())` — eval mode, parameters
    frozen, autograd on, every flag restored after — so no attack can forget it. Subclasses implement
    `forward(images, targets) -> AttackResult` and may extend `guarded_modules` (e.g. a detector);
    call the attack, not `forward`, from outside.
    """

    def __init__(self, model: nn.Module, seed: int | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = unwrap_model(model)
        self.seed = seed

    def guarded_modules(self) -> tuple[nn.Module | None, ...]:
        return (self.model,)

    def forward(self, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> AttackResult:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, targets: dict[str, torch.Tensor], **kwargs) -> AttackResult:
        with attack_context(*self.guarded_modules()):
            return self.forward(images, targets, **kwargs)


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
