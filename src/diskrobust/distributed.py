"""Multi-process training under torchrun: devices, the process group, and what only rank 0 does."""

from __future__ import annotations

import logging
import os

import torch

__all__ = [
    "select_device",
    "distributed_backend",
    "distributed_device",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "rank",
    "barrier",
    "quiet_unless_main",
    "record_weights_digest",
]


def select_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as torch.device; None/"" or "auto" -> cuda:0 when available, else cpu."""
    if device is None or str(device) in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def distributed_backend(device) -> str:
    """nccl for CUDA devices, gloo otherwise (CPU)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def distributed_device() -> torch.device:
    """This process's device under torchrun: cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(device) -> int:
    """Initialise the default process group (once) with the backend matching `device`; returns the rank."""
    import torch.distributed as dist

    device = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=distributed_backend(device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return dist.get_rank()


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0 or when not distributed: only this process saves checkpoints and writes logs."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        torch.distributed.barrier()


def quiet_unless_main(*engines) -> None:
    """Only rank 0 logs progress: other ranks' engine loggers drop to WARNING."""
    if not is_main_process():
        for engine in engines:
            engine.logger.setLevel(logging.WARNING)


def record_weights_digest(network: torch.nn.Module, path: str, stage: str) -> str:
    """Append {"stage", "rank", "sha256"} as one JSON line to `path` ("" = do nothing); returns the digest.

    Lets a distributed run show that every rank ends with the same weights.
    """
    import json
    from pathlib import Path

    from diskrobust.checkpoints import weights_digest

    digest = weights_digest(network)
    if path:
        out = Path(str(path).format(rank=rank()))
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(json.dumps({"stage": stage, "rank": rank(), "sha256": digest}) + "\n")
    return digest
