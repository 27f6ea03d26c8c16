"""One training step for MONAI's SupervisedTrainer: memory layout, micro-batches and precision.

`TrainingStep` is an `iteration_update` for `monai.engines.SupervisedTrainer`: the trainer, its
handlers and events stay MONAI's, only how the step is computed changes.

- channels_last: network and input in NHWC, which oneDNN (CPU) and cuDNN (GPU) often run faster.
- micro_batch: the batch is cut into chunks whose gradients are summed before the optimiser step.
  This is exact for DiskShapeNet because it has GroupNorm only (no batch statistics) and
  DiskShapeLoss is a (weighted) mean over samples: each chunk's loss is scaled by its share of the
  batch (of the summed sample weights when the batch has a "weight"), so the summed gradient is the
  full batch's up to float rounding. Smaller chunks keep activations in cache (CPU) or memory (GPU).
- precision: "bf16" runs the forward pass under `torch.autocast` (CPU or CUDA); the loss is always
  computed in fp32 on fp32 copies of the outputs, and evaluation/attack scoring is untouched (the
  evaluator does not use this step), so final scores stay fp32.

Layout and chunk size change only the speed, so they may be "auto": chosen by `autotune` at the
first batch, by timing candidates on a copy of the network (the trained network, its optimiser and
the global random state are not touched). Precision changes the numbers and is never chosen
automatically.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from diskrobust.compute import (AUTO, autocast, channels_last_weight_grad_hazards, check_channels_last, check_chunks,
                                check_precision, fastest, float_outputs)
from diskrobust.data.errors import ConfigError

logger = logging.getLogger(__name__)

# Values the bundle's command-line check lets through besides the defaults' types (false, 0).
ALSO_ACCEPTED = {"channels_last": [AUTO], "micro_batch": [AUTO, None]}


@dataclass(frozen=True)
class StepSettings:
    """How a step is computed: micro_batch None = the whole batch at once."""

    channels_last: bool = False
    micro_batch: int | None = None
    precision: str = "fp32"

    def describe(self) -> str:
        chunks = "whole batch" if self.micro_batch is None else f"micro-batches of {self.micro_batch}"
        layout = "channels_last" if self.channels_last else "NCHW"
        return f"{layout}, {chunks}, {self.precision}"


def _plain(t):
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def _unwrap(network: nn.Module) -> nn.Module:
    while hasattr(network, "module") and isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module
    return network


def set_memory_format(network: nn.Module, channels_last: bool) -> nn.Module:
    """Convert the network's 4-D parameters and buffers in place (the Parameter objects, hence an
    optimiser's references to them, are kept)."""
    return network.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _chunks(batch: int, micro_batch: int | None) -> list[slice]:
    if micro_batch is None or micro_batch >= batch:
        return [slice(0, batch)]
    return [slice(s, min(s + micro_batch, batch)) for s in range(0, batch, micro_batch)]


def _slice_targets(targets, part: slice):
    if torch.is_tensor(targets):
        return targets[part]
    if isinstance(targets, Mapping):
        return {k: (v[part] if torch.is_tensor(v) and v.ndim > 0 else v) for k, v in targets.items()}
    raise TypeError(f"micro-batching needs tensor or dict targets, got {type(targets).__name__}")


def _shares(targets, chunks: list[slice], batch: int) -> list[torch.Tensor | float]:
    """Each chunk's share of a (weighted) per-sample mean over the whole batch."""
    weight = targets.get("weight") if isinstance(targets, Mapping) else None
    if weight is None:
        return [(c.stop - c.start) / batch for c in chunks]
    weight = _plain(weight).detach().float()
    total = weight.sum().clamp_min(1e-12)  # DiskShapeLoss's own clamp
    return [weight[c].sum() / total for c in chunks]


def _cat_outputs(parts: list):
    if len(parts) == 1:
        return parts[0]
    if torch.is_tensor(parts[0]):
        return torch.cat(parts, 0)
    return {k: torch.cat([p[k] for p in parts], 0) for k in parts[0]}


def _is_sample_mean_loss(loss_function) -> bool:
    from diskrobust.losses import DiskShapeLoss

    return isinstance(loss_function, DiskShapeLoss) or getattr(loss_function, "sample_mean", False)


def forward_backward(network: nn.Module, loss_function, inputs: torch.Tensor, targets, settings: StepSettings,
                     inferer=None, no_sync=None) -> tuple[object, torch.Tensor]:
    """Forward, loss and backward of one batch under `settings`; gradients are accumulated into
    `.grad` (the caller zeroes them and steps the optimiser). Returns (outputs detached and
    concatenated over chunks, in fp32; the batch loss, detached)."""
    inputs = _plain(inputs)
    if settings.channels_last:
        safe_channels_last(network, inputs.device, True)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    batch = inputs.shape[0]
    chunks = _chunks(batch, settings.micro_batch)
    shares = _shares(targets, chunks, batch) if len(chunks) > 1 else [1.0]
    run = inferer if inferer is not None else (lambda x, net: net(x))
    outputs, total = [], None
    for i, (part, share) in enumerate(zip(chunks, shares)):
        chunk_targets = targets if len(chunks) == 1 else _slice_targets(targets, part)
        # DDP: reduce gradients once, after the last chunk
        sync = no_sync() if (no_sync is not None and i < len(chunks) - 1) else contextlib.nullcontext()
        with sync:
            with autocast(inputs.device, settings.precision):
                out = run(inputs[part], network)
            out = float_outputs(out)
            loss = loss_function(out, chunk_targets).mean()
            (loss * share).backward()
        detached = loss.detach() * share
        total = detached if total is None else total + detached
        outputs.append({k: v.detach() for k, v in out.items()} if isinstance(out, Mapping) else out.detach())
    return _cat_outputs(outputs), total


def safe_channels_last(network: nn.Module, device: torch.device | str, channels_last):
    """`channels_last` (True, False or "auto") as it can be used to train `network` on `device`.

    On CPU, oneDNN computes some layers' weight gradients wrongly in channels_last (a 1x1 convolution
    with a stride and fewer than 16 input channels: `compute.channels_last_weight_grad_hazards`). For
    such a network "auto" becomes False (NCHW, with a warning), and True is refused with the layers named.
    """
    if channels_last is False:
        return False
    hazards = channels_last_weight_grad_hazards(_unwrap(network), device)
    if not hazards:
        return channels_last
    why = (f"on CPU, oneDNN computes the weight gradient of a strided 1x1 convolution with fewer than 16 "
           f"input channels wrongly in channels_last, or crashes (oneDNN issue 6035); this network has "
           f"{len(hazards)} such layer(s): {', '.join(hazards)}")
    if channels_last == AUTO:
        logger.warning("channels_last 'auto' keeps NCHW: %s", why)
        return False
    raise ConfigError(None, "channels_last", f"true cannot train this network: {why}",
                      "Use channels_last false or 'auto' (which then keeps NCHW), or a network whose strided 1x1 "
                      "convolutions have 16 or more input channels (DiskShapeNet: width 16 or more)")


def _synthetic_batch(network: nn.Module, batch: int, example: torch.Tensor, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *example.shape[1:])
    images = torch.rand(shape, generator=gen).to(example.device, example.dtype)
    targets = {"mask": (torch.rand((batch, 1, *shape[2:]), generator=gen) > 0.5).float().to(example.device)}
    num_points = getattr(network, "num_points", 176)
    base = getattr(network, "mean_shape", None)
    points = torch.randn((batch, num_points, 2), generator=gen).to(example.device)
    targets["points"] = points + (base if base is not None else shape[-1] / 2)
    return images, targets


def candidate_settings(batch: int, precision: str = "fp32", channels_last="auto", micro_batch="auto",
                       sizes: Sequence[int] = (4, 8, 16)) -> list[StepSettings]:
    """The settings `autotune` compares for a batch of `batch`: both layouts (or the fixed one) x the
    whole batch and the chunk sizes below it (or the fixed one)."""
    layouts = [False, True] if channels_last == AUTO else [bool(channels_last)]
    if micro_batch == AUTO:
        chunks = [None] + [s for s in sizes if s < batch]
    else:
        chunks = [micro_batch]
    return [StepSettings(cl, mb, precision) for cl in layouts for mb in chunks]


def autotune(network: nn.Module, loss_function, example_inputs: torch.Tensor, precision: str = "fp32",
             channels_last="auto", micro_batch="auto", repeats: int = 2,
             candidates: Sequence[StepSettings] | None = None) -> tuple[StepSettings, dict]:
    """The fastest of `candidate_settings` for batches like `example_inputs`, timed on a deep copy of
    `network` with synthetic data of the same shape (forward + loss + backward; the optimiser step
    does not depend on these settings). Candidates alternate within each of `repeats` rounds after
    one warm-up round, so that a change in the machine's load hits them alike; the best time counts.

    Returns (settings, {settings.describe(): [seconds per round, ...]}).
    """
    example_inputs = _plain(example_inputs)
    batch = example_inputs.shape[0]
    if candidates is None:
        channels_last = safe_channels_last(network, example_inputs.device, check_channels_last(channels_last))
        candidates = candidate_settings(batch, precision, channels_last, micro_batch)
    candidates = list(candidates)
    if len(candidates) == 1:
        return candidates[0], {}
    net = copy.deepcopy(_unwrap(network)).train()
    images, targets = _synthetic_batch(net, batch, example_inputs)

    def run(cand: StepSettings) -> None:
        set_memory_format(net, cand.channels_last)
        net.zero_grad(set_to_none=True)
        forward_backward(net, loss_function, images, targets, cand)

    return fastest(candidates, run, repeats, images.device, f"training step autotune (batch {batch})")


def _same_on_all_ranks(settings: StepSettings) -> StepSettings:
    """Rank 0's choice everywhere, so that DDP ranks run the same chunks (each rank times its own)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return settings
    box = [settings]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class TrainingStep:
    """`SupervisedTrainer(iteration_update=TrainingStep(...))`: MONAI's iteration with a faster step.

    Args:
        channels_last: True | False | "auto" (measured at the first batch).
        micro_batch: chunk size (int), None or 0 for the whole batch, or "auto" (measured).
        precision: "fp32" | "bf16" (forward under autocast; loss and optimiser state in fp32).
        autotune_repeats: timed rounds per candidate when something is "auto".

    Same as MONAI's `_iteration`: prepare_batch, network.train(), zero_grad, forward (through the
    trainer's inferer), loss, backward, optimizer.step, `engine.accumulation_steps`, and the
    FORWARD/LOSS/BACKWARD/MODEL_COMPLETED events (with micro-batches FORWARD_COMPLETED and
    LOSS_COMPLETED fire once, after the last chunk, with the whole batch's PRED and LOSS in
    engine.state.output). The settings in use are `self.settings` (None until the first batch) and
    `engine.state.training_step` (a dict); the autotune timings are `self.timings`.
    """

    def __init__(self, channels_last=False, micro_batch=None, precision: str = "fp32",
                 autotune_repeats: int = 2):
        self.channels_last = check_channels_last(channels_last)
        self.micro_batch = check_chunks(micro_batch, "micro_batch")
        self.precision = check_precision(precision)
        if int(autotune_repeats) < 1:
            raise ValueError(f"autotune_repeats must be >= 1, got {autotune_repeats}")
        self.autotune_repeats = int(autotune_repeats)
        self.settings: StepSettings | None = None
        self.timings: dict = {}
        self._batch_size: int | None = None

    def _check_engine(self, engine) -> None:
        if getattr(engine, "amp", False):
            raise ValueError("TrainingStep: the trainer has amp=True; set the step's precision ('bf16') instead "
                             "and leave the trainer's amp false")
        if getattr(engine, "compile", False):
            raise ValueError("TrainingStep does not support SupervisedTrainer(compile=True)")
        if self.precision == "bf16":
            device = torch.device(engine.state.device) if getattr(engine.state, "device", None) else None
            if device is not None and device.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise ValueError("precision 'bf16': this CUDA device does not support bfloat16; use 'fp32'")

    def resolve(self, network: nn.Module, loss_function, inputs: torch.Tensor) -> StepSettings:
        """The settings for batches like `inputs` (autotuned once per batch size when 'auto')."""
        batch = _plain(inputs).shape[0]
        if self.settings is not None and (self._batch_size == batch or AUTO not in (self.micro_batch,
                                                                                    self.channels_last)):
            return self.settings
        if self.micro_batch is not None and self.micro_batch != AUTO and not _is_sample_mean_loss(loss_function):
            raise ValueError(f"micro_batch={self.micro_batch}: exact only for a loss that is a (weighted) mean over "
                             f"samples (DiskShapeLoss, or a loss with sample_mean = True); got "
                             f"{type(loss_function).__name__}. Use micro_batch=None")
        micro = self.micro_batch
        if micro == AUTO and not _is_sample_mean_loss(loss_function):
            micro = None
        channels_last = safe_channels_last(network, _plain(inputs).device, self.channels_last)
        if AUTO in (micro, channels_last):
            settings, self.timings = autotune(network, loss_function, inputs, self.precision, channels_last,
                                              micro, self.autotune_repeats)
            settings = _same_on_all_ranks(settings)
        else:
            settings = StepSettings(bool(channels_last), micro, self.precision)
        set_memory_format(_unwrap(network), settings.channels_last)
        self.settings, self._batch_size = settings, batch
        return settings

    def __call__(self, engine, batchdata):
        from monai.engines.utils import IterationEvents
        from monai.utils.enums import CommonKeys as Keys

        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        self._check_engine(engine)
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) != 2:
            raise ValueError("TrainingStep expects prepare_batch to return (inputs, targets)")
        inputs, targets = batch
        settings = self.resolve(engine.network, engine.loss_function, inputs)
        engine.state.training_step = asdict(settings)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}

        acc = engine.accumulation_steps
        if acc > 1:  # MONAI's own rule for gradient accumulation over iterations
            length = engine.state.epoch_length
            local = (engine.state.iteration - 1) % length if length is not None else engine.state.iteration - 1
            should_zero = local % acc == 0
            should_step = (local + 1) % acc == 0 or (length is not None and local + 1 == length)
        else:
            should_zero = should_step = True

        engine.network.train()
        if should_zero:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        loss_function = engine.loss_function
        if acc > 1:
            def loss_function(out, tgt, _fn=engine.loss_function):
                return _fn(out, tgt) / acc
        pred, loss = forward_backward(engine.network, loss_function, inputs, targets, settings,
                                      inferer=engine.inferer, no_sync=getattr(engine.network, "no_sync", None))
        engine.state.output[Keys.PRED] = pred
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = loss * acc if acc > 1 else loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if should_step:
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
