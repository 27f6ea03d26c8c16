"""How an attacked batch is laid out in memory and cut into chunks, chosen by measurement.

Two settings change only how fast an attack runs:

- chunk_size: the attacks (PGD, APGD, the OOD attack) attack the batch in consecutive chunks. Every
  per-sample operation is independent of the others (GroupNorm, no batch statistics; the random
  starts are drawn for the whole batch first), so each sample's arithmetic is the same for any chunk
  size (bit-identical adversarials for DiskShapeNet at 128 px; on a tiny network a BLAS kernel chosen
  by the number of rows rounded the point head's last digits otherwise); a chunk that fits the cache
  is faster than a whole batch that does not.
- channels_last: the network's weights, hence its activations, in NHWC, which oneDNN (CPU) and cuDNN
  (GPU) often run faster. The attack then runs on a channels_last *copy* of the network (`layout_model`): the
  attacked network is never changed. The copy computes the same function, but its convolutions
  take other algorithms, so outputs differ at float-rounding level, and an L-inf PGD step, which
  follows sign(gradient), can flip a few pixels where a gradient is near zero: the adversarials
  are not bit-identical, their strength is the same (benchmarks/attack_chunking.py measures both).

Both may be "auto": `tune_attack_layout` times one attack step (forward through the heads the
attack reads, gradient w.r.t. the input only, in eval mode with the parameters frozen) for every
candidate, interleaved, on a batch shaped like the real one, and keeps the fastest. Nothing about
one machine is hard-coded.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from diskrobust.compute import AUTO, check_channels_last, check_chunks, fastest

from ._base import attack_context, chunks, run_model, unwrap_model

__all__ = ["AUTO", "AttackLayout", "layout_model", "tune_attack_layout"]

# Chunk sizes "auto" compares (those below the batch size), besides the whole batch.
CHUNK_CANDIDATES = (4, 8, 16)


@dataclass(frozen=True)
class AttackLayout:
    """channels_last: attack a channels_last copy of the network; chunk_size: None = the whole batch."""

    channels_last: bool = False
    chunk_size: int | None = None

    def describe(self) -> str:
        chunks_ = "whole batch" if self.chunk_size is None else f"chunks of {self.chunk_size}"
        return f"{'channels_last' if self.channels_last else 'NCHW'}, {chunks_}"


def layout_model(model: nn.Module, channels_last: bool) -> nn.Module:
    """The network to attack: `model` itself, or for channels_last a deep copy in that layout, in eval mode.

    The copy has the same parameters and buffers (values), so it computes the same function; `model`
    itself (its layout, mode and parameters) is left as it was.
    """
    model = unwrap_model(model)
    if not channels_last:
        return model
    twin = copy.deepcopy(model).eval()
    return twin.to(memory_format=torch.channels_last)


def _attack_step(net: nn.Module, images: torch.Tensor, heads: tuple[str, ...] | None,
                 chunk_size: int | None) -> None:
    """One attack step's work on `images`: forward through `heads`, gradient w.r.t. the input only."""
    for rows in chunks(images.shape[0], chunk_size):
        x = images[rows].clone().requires_grad_(True)
        out = run_model(net, x, heads)
        values = out.values() if isinstance(out, dict) else [out]
        loss = sum(v.float().square().sum() for v in values)
        torch.autograd.grad(loss, x)


def tune_attack_layout(model: nn.Module, example_images: torch.Tensor, heads: Sequence[str] | None = None,
                       channels_last=AUTO, chunk_size=AUTO, sizes: Sequence[int] = CHUNK_CANDIDATES,
                       repeats: int = 2) -> tuple[AttackLayout, dict[str, list[float]]]:
    """The fastest layout for attacking batches like `example_images` (B, C, H, W).

    Candidates: both layouts (or the fixed one) x the whole batch and the `sizes` below B (or the fixed
    chunk). Each is timed `repeats` times after one untimed warm-up round, the candidates alternating
    within a round so that a change in the machine's load hits them alike; the best time counts. The
    images are uniform noise of the example's shape (the timing does not depend on the values).
    `model` is timed in eval mode with its parameters frozen (`attack_context`) and left as it was.

    Returns (layout, {layout.describe(): [seconds per timed round]}); the dict is empty when nothing was "auto".
    """
    channels_last = check_channels_last(channels_last)
    chunk_size = check_chunks(chunk_size, "chunk_size")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    batch = int(example_images.shape[0])
    layouts = [False, True] if channels_last == AUTO else [bool(channels_last)]
    sizes_ = [None] + [int(s) for s in sizes if int(s) < batch] if chunk_size == AUTO else [chunk_size]
    candidates = [AttackLayout(cl, c) for cl in layouts for c in sizes_]
    if len(candidates) == 1:
        return candidates[0], {}
    heads = None if heads is None else tuple(heads)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(tuple(example_images.shape), generator=gen).to(example_images.device, example_images.dtype)
    nets = {cl: layout_model(model, cl) for cl in layouts}

    def run(cand: AttackLayout) -> None:
        x = images.contiguous(memory_format=torch.channels_last) if cand.channels_last else images
        _attack_step(nets[cand.channels_last], x, heads, cand.chunk_size)

    with attack_context(*nets.values()):
        return fastest(candidates, run, repeats, images.device, f"attack layout autotune (batch {batch})")
