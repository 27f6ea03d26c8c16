"""What every benchmark here shares: the machine line, the measured fp32 convolution peak, FLOP
counts, and interleaved repeated timing (best and median)."""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def machine(device: torch.device | str = "cpu") -> str:
    """CPU model, cores, torch threads, load average (and the GPU when the device is CUDA)."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    line = (f"machine: {model}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
            f"{torch.get_num_threads()} intra-op thread(s), load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    device = torch.device(device)
    if device.type == "cuda":
        line += f"; GPU {torch.cuda.get_device_name(device)}"
    return line


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn) -> float:
    """FLOPs of one call of fn (torch.utils.flop_counter: convolutions, matmuls and their backward);
    NaN where the counter cannot follow fn (its module hooks fail inside some torch.autograd.grad
    calls, e.g. torchattacks' PGD)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    except RuntimeError:
        return float("nan")
    return float(counter.get_total_flops())


def interleaved(fns: dict, rounds: int, device: torch.device, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call of each fn over `rounds` rounds; the fns alternate within every round so
    that a change in the machine's load hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def peak_conv(device: torch.device, dtype=torch.float32, channels_last: bool = False):
    """(fn, FLOPs per call) of a large 3x3 convolution (oneDNN on CPU, cuDNN on GPU), the reference
    the other rates are a fraction of: 128 -> 128 channels on 64 x 64 at batch 8 (CPU, 9.7 GFLOP per
    call) or 256 -> 256 on 128 x 128 at batch 64 (CUDA)."""
    n, c, s = (64, 256, 128) if device.type == "cuda" else (8, 128, 64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, s, s, device=device, dtype=dtype).contiguous(memory_format=fmt)
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(device=device, dtype=dtype, memory_format=fmt)

    def fn():
        with torch.no_grad():
            conv(x)

    return fn, 2.0 * n * c * c * 9 * s * s


def conv_peak(device: torch.device, dtype=torch.float32, rounds: int = 5) -> float:
    """Measured FLOP/s of `peak_conv`, the faster of both layouts, best of `rounds`."""
    best = 0.0
    for channels_last in (False, True):
        fn, flops = peak_conv(device, dtype, channels_last)
        best = max(best, flops / min(interleaved({"conv": fn}, rounds, device)["conv"]))
    return best


def summary(seconds: list[float]) -> tuple[float, float, float]:
    """(best, median, worst) seconds."""
    return min(seconds), statistics.median(seconds), max(seconds)
