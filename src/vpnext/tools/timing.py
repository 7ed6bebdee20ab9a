"""Timing and peak memory for benchmarks: interleaved rounds (every candidate once per round, in
rotating order, so that load from other processes hits all alike), medians and p90, and the most
tensor memory one call holds; the timed inference call itself (no grad, optional bf16 autocast
and ``torch.compile``)."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "autocast",
    "inference_call",
    "memory_method",
    "peak_memory_mb",
    "summarize",
    "sync",
    "time_interleaved",
]


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``bf16``, else nothing."""
    return torch.autocast(device.type, torch.bfloat16) if bf16 else contextlib.nullcontext()


def inference_call(
    module: torch.nn.Module, images: torch.Tensor, bf16: bool = False, compile_: bool = False
) -> Callable[[], Any]:
    """A no-argument call of ``module`` on ``images`` without gradients (what is timed)."""
    runner = torch.compile(module) if compile_ else module

    def run() -> Any:
        with torch.no_grad(), autocast(images.device, bf16):
            return runner(images)

    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(seconds: list[float], batch_size: int) -> dict[str, float]:
    ordered = sorted(seconds)
    median = statistics.median(ordered)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return {"median_ms": 1e3 * median, "p90_ms": 1e3 * p90, "images_per_s": batch_size / median}


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Wall times (s) of every function: ``warmup`` untimed calls, then interleaved rounds.

    Args:
        fns: Name -> function to time.
        repeats: Timed rounds; each runs every function once, the order rotating by one per round.
        warmup: Untimed calls of each function first.
        device: Synchronised before and after each call (CUDA).

    Returns:
        Name -> ``repeats`` wall times in seconds.
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Hide what C++ code writes to file descriptor 2 (the profiler logs every start and stop)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def memory_method(device: torch.device) -> str:
    """How :func:`peak_memory_mb` measures on ``device`` (documented in the JSON)."""
    if device.type == "cuda":
        return "cuda max_memory_allocated - memory_allocated before"
    return "peak of tensor memory allocated during the call (torch.profiler, profile_memory)"


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak tensor memory (MiB) that one call of ``fn`` adds to what was allocated before.

    CUDA: the caching allocator's statistics. CPU has none, so the call runs under
    ``torch.profiler`` with ``profile_memory``: every allocation and free is an event, and the
    peak of their running sum is the CPU counterpart of ``max_memory_allocated``. It sees tensor
    memory only (not the allocator's or Python's overhead), and a buffer allocated and freed within
    one op counts as that op's net allocation.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    cpu_only = [torch.profiler.ProfilerActivity.CPU]
    with _native_stderr_silenced(), torch.profiler.profile(activities=cpu_only, profile_memory=True) as prof:
        fn()
    # Ops report what they allocate themselves ("self"); frees outside ops are "[memory]" events.
    deltas = sorted(
        (event.time_range.start, event.self_cpu_memory_usage)
        for event in prof.events()
        if event.self_cpu_memory_usage
    )
    running = peak = 0
    for _, delta in deltas:
        running += delta
        peak = max(peak, running)
    return peak / 2**20
