"""Say up front how long a training run will take on this device, before it starts.

The adversarial fine-tuning at the bundle defaults runs PGD-20 inside every iteration: minutes on a
GPU, hours on a CPU. A user who starts it on a laptop should learn that in the first seconds, not
after an hour of a silent progress bar. The estimate is the configured work (epochs x samples x
(one training step + one input-gradient step per PGD step)) times a per-image cost measured here on
a throw-away copy of the network, so the run itself is untouched: no BatchNorm statistics, no
parameters, no random-number state change.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass

import torch

# "A few minutes": below this the estimate is printed as information, above it as a warning.
WARN_AFTER_SECONDS = 300.0


@dataclass(frozen=True)
class StepCosts:
    """Seconds per image: one training step (forward, backward, parameter gradients) and one
    attack step (eval mode, gradient with respect to the input only)."""

    train: float
    attack: float


def _scalar(output) -> torch.Tensor:
    """A scalar that depends on every floating output (tensor, dict or sequence of tensors)."""
    if isinstance(output, torch.Tensor):
        return output.float().mean()
    if isinstance(output, dict):
        output = list(output.values())
    parts = [_scalar(o) for o in output if isinstance(o, (torch.Tensor, dict, list, tuple))]
    if not parts:
        raise ValueError(f"run-time estimate: the network returned no tensor ({type(output).__name__})")
    return torch.stack(parts).sum()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(step, repeats: int, device: torch.device) -> float:
    step()  # warm-up: allocator, cuDNN algorithm search, lazy initialisation
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_step_costs(network: torch.nn.Module, input_shape, device=None, *, repeats: int = 2,
                       attack: bool = True) -> StepCosts:
    """Per-image seconds of a training step and of an attack step, on `device`.

    `input_shape` is one batch's shape (B, C, H, W); the batch size used for timing is its B. The
    best of `repeats` timed steps after one warm-up is taken (the least disturbed by other load).
    """
    if len(input_shape) < 2 or any(int(s) < 1 for s in input_shape):
        raise ValueError(f"run-time estimate: input_shape must be (B, C, ...) with positive sizes, got {input_shape}")
    if repeats < 1:
        raise ValueError(f"run-time estimate: repeats must be >= 1, got {repeats}")
    device = torch.device(device) if device is not None else next(network.parameters()).device
    batch = int(input_shape[0])
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        generator = torch.Generator(device="cpu").manual_seed(0)
        x = torch.rand(tuple(int(s) for s in input_shape), generator=generator).to(device)
        clone = copy.deepcopy(network).to(device)

        def train_step():
            clone.train()
            clone.zero_grad(set_to_none=True)
            _scalar(clone(x)).backward()

        def attack_step():
            clone.eval()
            x_adv = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(_scalar(clone(x_adv)), x_adv)
            return grad

        train = _best_seconds(train_step, repeats, device) / batch
        if attack:
            for p in clone.parameters():
                p.requires_grad_(False)
            attack_cost = _best_seconds(attack_step, repeats, device) / batch
        else:
            attack_cost = 0.0
    return StepCosts(train=train, attack=attack_cost)


def estimate_training_seconds(costs: StepCosts, epochs: int, samples_per_epoch: int, adv_steps: int = 0,
                              adv_sets: int | None = None) -> float:
    """Seconds of the training iterations.

    Each sample costs one training step on itself and on each of its `adv_sets` adversarial copies
    (the adversarial handler trains on the clean batch plus the copies), and `adv_steps` attack
    steps per copy: epochs x samples x ((1 + adv_sets) x train + adv_sets x adv_steps x attack).
    `adv_sets` defaults to 1 when `adv_steps` > 0, else 0. Validation, data loading and
    checkpointing are not counted (small next to PGD on a CPU).
    """
    if adv_sets is None:
        adv_sets = 1 if adv_steps else 0
    for name, value in (("epochs", epochs), ("samples_per_epoch", samples_per_epoch), ("adv_steps", adv_steps),
                        ("adv_sets", adv_sets)):
        if int(value) < 0:
            raise ValueError(f"run-time estimate: {name} must be >= 0, got {value}")
    per_sample = (1 + int(adv_sets)) * costs.train + int(adv_sets) * int(adv_steps) * costs.attack
    return int(epochs) * int(samples_per_epoch) * per_sample


def adversarial_work(adv_mode: str, adv_steps: int) -> tuple[int, int]:
    """(adversarial copies per sample, attack steps per copy) of an AdversarialTrainingHandler mode."""
    from diskrobust.handlers.adversarial import _ARMS, MODES  # the handler's own table of copies per mode

    if adv_mode not in MODES:
        raise ValueError(f"run-time estimate: unknown adv_mode {adv_mode!r}, expected one of {list(MODES)}")
    copies = len(_ARMS.get(adv_mode, ()))
    if adv_mode == "rand":
        return copies, 0
    if adv_mode == "fast_r":
        return copies, 1
    return copies, int(adv_steps) if copies else 0


def format_duration(seconds: float) -> str:
    """'40 s', '12 min', '3.4 h': one rounded figure, as a person would say it."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 10 else f"{round(hours)} h"


def run_time_message(seconds: float, device, adv_steps: int = 0, threshold_s: float = WARN_AFTER_SECONDS,
                     adv_sets: int = 1) -> str:
    """The line to print: information below `threshold_s`, a warning with what to do above it."""
    device = torch.device(device)
    times = f" x {int(adv_sets)}" if adv_sets > 1 else ""
    inside = f" (PGD-{int(adv_steps)}{times} inside each iteration)" if adv_steps else ""
    text = f"expected about {format_duration(seconds)} on {device.type}{inside}"
    if seconds <= threshold_s:
        return f"run-time estimate: {text}"
    advice = "use --device cuda or fewer --epochs" if device.type == "cpu" else "use fewer --epochs"
    if adv_steps:
        advice += " / --adv_steps"
    return f"WARNING: {text}; {advice}"


def warn_if_slow(network: torch.nn.Module, *, epochs: int, samples_per_epoch: int, batch_size: int,
                 patch_size: int, in_channels: int = 1, adv_mode: str = "std", adv_steps: int = 0, device=None,
                 threshold_s: float = WARN_AFTER_SECONDS, stream=None) -> str:
    """Measure, estimate and print one line to `stream` (stderr by default); returns the line.

    For a bundle's `initialize`: four forward/backward steps (two warm-up, two timed) on a copy of
    `network` at a batch of at most 2 (a few seconds on a CPU for the bundle's network), then the
    estimate of the whole run. `adv_mode`/`adv_steps` are the adversarial handler's settings
    ("std": none).
    """
    adv_sets, adv_steps = adversarial_work(adv_mode, adv_steps)
    timing_batch = max(1, min(int(batch_size), 2))
    costs = measure_step_costs(network, (timing_batch, int(in_channels), int(patch_size), int(patch_size)),
                               device, repeats=1, attack=bool(adv_steps))
    seconds = estimate_training_seconds(costs, epochs, samples_per_epoch, adv_steps, adv_sets)
    device = torch.device(device) if device is not None else next(network.parameters()).device
    line = run_time_message(seconds, device, adv_steps, threshold_s, adv_sets)
    print(line, file=stream if stream is not None else sys.stderr, flush=True)
    return line
