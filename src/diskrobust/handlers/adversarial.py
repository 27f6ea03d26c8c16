"""Adversarial training as an Ignite handler for MONAI's SupervisedTrainer.

At ITERATION_STARTED (the batch is fetched, MONAI's `_iteration` has not yet run) the handler
attacks the batch and replaces `engine.state.batch` with clean + adversarial samples, targets
duplicated and a per-sample "weight" such that DiskShapeLoss's weighted mean is exactly the paper's
(clean + adversarial) / 2, or (clean + 0.5 adv_reg + 0.5 adv_seg) / 2 for adv_rs. The trainer, its
optimiser, AMP, gradient accumulation and DDP run unchanged on the bigger batch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from diskrobust.attacks import PGD, unwrap_model
from diskrobust.compute import check_precision

logger = logging.getLogger(__name__)

MODES = ("std", "rand", "adv_r", "adv_s", "adv_rs", "fast_r", "ima")
# (objective, share of the adversarial half of the loss) per adversarial set of each arm
_ARMS = {
    "rand": (("rand", 1.0),),
    "adv_r": (("points", 1.0),),
    "adv_s": (("seg", 1.0),),
    "adv_rs": (("points", 0.5), ("seg", 0.5)),
    "fast_r": (("points", 1.0),),
    "ima": (("points", 1.0),),  # AdaptiveMarginTrainingHandler (handlers/adaptive_margin.py): one budget per sample
}
# "fast is better than free" (Wong, Rice & Kolter 2020): one sign step of 1.25 eps from a uniform random
# start, projected; the stepped point is used whether or not it beats the start (no keep-best).
FAST_STEP_RATIO = 1.25


def _repeat_batch(value, batch: int, copies: int):
    """Repeat one batch entry `copies` times along the batch dimension (tensors, lists, nested dicts)."""
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
        value = value.as_tensor() if hasattr(value, "as_tensor") else value
        return torch.cat([value] * copies, dim=0)
    if isinstance(value, (list, tuple)) and len(value) == batch:
        return type(value)(list(value) * copies) if isinstance(value, list) else tuple(value) * copies
    if isinstance(value, Mapping):
        return {k: _repeat_batch(v, batch, copies) for k, v in value.items()}
    return value


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_tensor() if hasattr(t, "as_tensor") else t


class AdversarialTrainingHandler:
    """Replace each training batch by clean + adversarial samples (the paper's arms).

    Args:
        mode: "std" (no-op) | "rand" (x + U[-eps, eps] noise, clipped) | "adv_r" (PGD on the point SSE)
            | "adv_s" (PGD on 1 - soft Dice) | "adv_rs" (both, half of the adversarial weight each)
            | "fast_r" (FGSM with random start on the point SSE, "fast is better than free": one sign step of
            1.25 eps_t from U[-eps_t, eps_t], projected; `steps` and `step_size` are not used)
            | "ima" (adaptive margin: only through AdaptiveMarginTrainingHandler, handlers/adaptive_margin.py).
        eps: final L-inf budget (paper 0.07).
        steps: PGD steps (paper 20).
        step_size: PGD step (paper 0.01).
        ramp_epochs: eps_t = eps * min(1, epoch / ramp_epochs) with Ignite's 1-based epoch, i.e. the
            paper's eps * min(1, (e + 1) / ramp_epochs) with 0-based e; 0 or None: no ramp.
        random_start: PGD random start in the ball.
        point_loss: the point term PGD maximises ("sse", paper, or "mae").
        seed: the attack's randomness derives from (seed, rank, iteration).
        network: the network to attack; default `engine.network` (DDP is unwrapped).
        summary_writer: optional TensorBoard SummaryWriter; per-iteration scalars under `tag_prefix`.
        tag_prefix: scalar tag prefix.
        chunk_size: PGD attacks the batch in chunks of this many samples (speed only; see docs/attacks.md).
        precision: "fp32" | "bf16": PGD's gradient passes under bfloat16 autocast (`PGD(precision=...)`); the
            bundle passes its training `precision`, so `--precision bf16` generates the adversarials in bf16 too.

    After each iteration start, `engine.state` holds the latest values as floats, for MONAI's
    TensorBoardStatsHandler(state_attributes=[...]): `adv_eps`; `adv_loss_points` (batch mean of the
    point SSE PGD maximised) and/or `adv_loss_seg` (mean 1 - soft Dice); `adv_loss` their sum (0 for
    "rand"); `adv_losses` the same as a dict.
    """

    adaptive_margin = False  # True in AdaptiveMarginTrainingHandler, the one class that runs mode "ima"

    def __init__(self, mode: str = "adv_r", eps: float = 0.07, steps: int = 20, step_size: float = 0.01,
                 ramp_epochs: int | None = 100, random_start: bool = True, point_loss: str = "sse",
                 seed: int = 0, network: nn.Module | None = None, summary_writer=None,
                 tag_prefix: str = "adversarial", chunk_size: int | None = None, precision: str = "fp32"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "ima" and not self.adaptive_margin:
            raise ValueError("mode 'ima' (adaptive margin) is diskrobust.handlers.AdaptiveMarginTrainingHandler; in the "
                             "bundle add configs/train_ima.json after train_adversarial.json")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if ramp_epochs is not None and ramp_epochs < 0:
            raise ValueError(f"ramp_epochs must be >= 0 or None, got {ramp_epochs}")
        self.mode = mode
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.ramp_epochs = int(ramp_epochs or 0)
        self.random_start = bool(random_start)
        self.point_loss = point_loss
        self.seed = int(seed)
        self.network = network
        self.summary_writer = summary_writer
        self.tag_prefix = tag_prefix
        self.chunk_size = chunk_size
        self.precision = check_precision(precision)

    def attach(self, engine: Engine) -> None:
        if self.mode == "std":
            return  # the standard arm must be bit-identical to training without the handler
        if not engine.has_event_handler(self, Events.ITERATION_STARTED):
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def current_eps(self, epoch: int) -> float:
        """eps_t for Ignite's 1-based `epoch`."""
        if self.ramp_epochs <= 0:
            return self.eps
        return self.eps * min(1.0, epoch / self.ramp_epochs)

    def _generator(self, device: torch.device, iteration: int) -> torch.Generator:
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        state = np.random.SeedSequence([self.seed, rank, iteration]).generate_state(2, dtype=np.uint32)
        gen = torch.Generator(device=device)
        gen.manual_seed(int(state[0]) << 32 | int(state[1]))
        return gen

    def _network(self, engine: Engine) -> nn.Module:
        network = self.network if self.network is not None else getattr(engine, "network", None)
        if network is None:
            raise ValueError("AdversarialTrainingHandler needs a network: pass network= or attach to a "
                             "MONAI SupervisedTrainer (engine.network)")
        return unwrap_model(network)

    def adversarial_sets(self, network: nn.Module, image: torch.Tensor, targets: Mapping[str, torch.Tensor],
                         eps: float, generator: torch.Generator) -> list[tuple[str, float, torch.Tensor, torch.Tensor]]:
        """The arm's perturbed copies of `image` (B, 1, H, W): [(tag, share, images, objective (B,)), ...]."""
        sets = []
        for objective, share in _ARMS[self.mode]:
            if objective == "rand":
                noise = torch.rand(image.shape, generator=generator, device=image.device, dtype=image.dtype)
                adv = (image + noise.mul_(2.0).sub_(1.0).mul_(eps)).clamp_(0.0, 1.0)
                sets.append(("rand", share, adv, torch.zeros(image.shape[0], device=image.device)))
                continue
            # the per-iteration generator continues across sets, so adv_rs draws two different starts
            if self.mode == "fast_r":
                attack = PGD(network, eps=eps, steps=1, step_size=FAST_STEP_RATIO * eps, norm="linf",
                             random_start=True, objective=objective, point_loss=self.point_loss,
                             keep_best=False, generator=generator, chunk_size=self.chunk_size,
                             precision=self.precision)
            else:
                attack = PGD(network, eps=eps, steps=self.steps, step_size=self.step_size, norm="linf",
                             random_start=self.random_start, objective=objective, point_loss=self.point_loss,
                             generator=generator, chunk_size=self.chunk_size, precision=self.precision)
            result = attack(image, targets)
            sets.append((objective, share, result.images, result.losses))
        return sets

    def _batch_on_device(self, engine: Engine, required: tuple[str, ...]):
        """(batch, network, device, image, targets) of this iteration, the tensors on the network's device."""
        batch = engine.state.batch
        if not isinstance(batch, Mapping) or any(k not in batch for k in required):
            raise ValueError(f"{type(self).__name__} expects dict batches with 'image', 'points', 'mask' "
                             f"(docs/architecture.md), got {type(batch).__name__}")
        network = self._network(engine)
        device = getattr(engine.state, "device", None) or next(network.parameters()).device
        image = _plain(batch["image"]).to(device)
        targets = {k: _plain(batch[k]).to(device) for k in ("points", "mask") if k in batch}
        return batch, network, device, image, targets

    def __call__(self, engine: Engine) -> None:
        if self.mode == "std":
            return
        batch, network, device, image, targets = self._batch_on_device(engine, ("image",))
        size = image.shape[0]
        eps = self.current_eps(engine.state.epoch)
        generator = self._generator(device, engine.state.iteration)

        sets = self.adversarial_sets(network, image, targets, eps, generator)
        new_batch = self.replace_batch(engine, batch, image, targets, sets)

        losses = {tag: float(loss.mean()) for tag, _, _, loss in sets if tag != "rand"}
        engine.state.adv_eps = eps
        engine.state.adv_losses = losses
        engine.state.adv_loss = float(sum(losses.values()))
        for tag, value in losses.items():
            setattr(engine.state, f"adv_loss_{tag}", value)
        logger.debug("iteration %d: eps %.4f, batch %d -> %d, attack objectives %s", engine.state.iteration, eps,
                     size, new_batch["image"].shape[0], losses)
        if self.summary_writer is not None:
            step = engine.state.iteration
            self.summary_writer.add_scalar(f"{self.tag_prefix}/eps", eps, step)
            for tag, value in losses.items():
                self.summary_writer.add_scalar(f"{self.tag_prefix}/loss_{tag}", value, step)

    @staticmethod
    def replace_batch(engine: Engine, batch: Mapping, image: torch.Tensor, targets: Mapping[str, torch.Tensor],
                      sets: list) -> dict:
        """`engine.state.batch` := clean + the adversarial `sets`, targets repeated, per-sample weights; returned."""
        device, size = image.device, image.shape[0]
        base = _plain(batch["weight"]).to(device=device, dtype=image.dtype) if "weight" in batch else \
            torch.ones(size, device=device, dtype=image.dtype)
        # clean gets half the loss, the adversarial sets share the other half (weights are per sample)
        weights = [0.5 * base] + [0.5 * share * base for _, share, _, _ in sets]
        new_batch = {k: _repeat_batch(v, size, 1 + len(sets)) for k, v in batch.items()
                     if k not in ("image", "weight")}
        for key in ("points", "mask"):
            if key in targets:
                new_batch[key] = torch.cat([targets[key]] * (1 + len(sets)), dim=0)
        new_batch["image"] = torch.cat([image] + [adv for _, _, adv, _ in sets], dim=0)
        new_batch["weight"] = torch.cat(weights, dim=0)
        engine.state.batch = new_batch
        return new_batch

