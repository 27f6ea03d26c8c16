"""Gaussian noise augmentation for training a base model that median smoothing can use.

Smoothing averages the base network over x + N(0, sigma^2 I); a network that never saw such inputs
outputs nonsense on them and the smoothed model is poor (Cohen et al. 2019; Chiang et al. 2020 train
with the same sigma). `GaussianNoiseTraining` is an Ignite handler for MONAI's SupervisedTrainer:
at ITERATION_STARTED it replaces `engine.state.batch["image"]` by image + N(0, sigma^2), no clipping
(the smoothed model does not clip either). The noise of iteration i comes from a generator seeded with
(seed, rank, i), so a resumed run draws the same noise and the batch loaders (CPU workers or the
GPU-augmented loader) need no change. The bundle's `configs/train_noise.json` wires it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from ignite.engine import Engine, Events

from .smoothing import _check_sigma

__all__ = ["GaussianNoiseTraining"]


class GaussianNoiseTraining:
    """Add N(0, sigma^2) to every training image at ITERATION_STARTED; `sigma=0` is off (bit-identical)."""

    # distinguishes this handler's stream from the adversarial handler's (same seed, same iteration)
    STREAM = 0x6E6F6973

    def __init__(self, sigma: float, seed: int = 0):
        self.sigma = 0.0 if sigma == 0 else _check_sigma(sigma)
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        if self.sigma == 0.0:
            return
        if not engine.has_event_handler(self, Events.ITERATION_STARTED):
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def generator(self, device: torch.device, iteration: int) -> torch.Generator:
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        state = np.random.SeedSequence([self.seed, self.STREAM, rank, int(iteration)]).generate_state(2, dtype=np.uint32)
        gen = torch.Generator(device=device)
        gen.manual_seed(int(state[0]) << 32 | int(state[1]))
        return gen

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        if not isinstance(batch, Mapping) or "image" not in batch:
            raise ValueError("GaussianNoiseTraining expects dict batches with 'image' (docs/architecture.md), "
                             f"got {type(batch).__name__}")
        image = batch["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        gen = self.generator(image.device, engine.state.iteration)
        noise = torch.randn(image.shape, generator=gen, device=image.device, dtype=image.dtype)
        new_batch = dict(batch)
        new_batch["image"] = image + noise.mul_(self.sigma)
        engine.state.batch = new_batch
