"""DataLoader worker set-up, importable without Lightning: per-worker seeds, pre-emption signals
ignored in workers, OpenCV on one thread, and the exit hook that keeps leftover workers from hanging
the interpreter."""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import random
import signal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from vpnext.schema import PREEMPTION_SIGNALS

__all__ = ["launcher_rank", "prepare_workers", "register_worker_cleanup", "seed_worker"]


def launcher_rank() -> int:
    """This process's global rank from the launcher's environment (0 without one)."""
    # Workers are forked after DDP starts, so the launcher's environment names the rank.
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


def _reseed_transform(dataset: Dataset, seed: int) -> None:
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker its own augmentation stream.

    Albumentations keeps its own random state inside the pipeline, which forked workers would
    otherwise all inherit unchanged (identical crops in every worker). ``torch.initial_seed()``
    differs per worker and per epoch and follows ``seed_everything``; the rank is mixed in so DDP
    ranks differ too. (Training samples are reseeded per sample on top, see ``vpnext.data.resume``.)

    Workers ignore the pre-emption signals: ``scancel`` signals the whole process group, and the
    main process, which saves a checkpoint before stopping, still needs its workers for that step.
    They end with the main process.
    """
    for name in PREEMPTION_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    info = get_worker_info()
    seed = (torch.initial_seed() + 1_000_003 * launcher_rank()) % 2**32
    random.seed(seed)
    np.random.seed(seed)
    if info is not None:
        _reseed_transform(info.dataset, seed)


def _kill_daemonic_children() -> None:
    """At interpreter exit, SIGKILL what is left of the DataLoader workers.

    Workers ignore SIGTERM (:func:`seed_worker`), and multiprocessing's own exit handler stops
    daemonic children with SIGTERM and then joins them: if a loader iterator was not shut down
    before the interpreter exits (seen after a pre-emption stop, when the exception keeps the
    iterator alive), that join would wait forever on workers blocked on their index queue.
    Registered after multiprocessing's handler, so it runs first.
    """
    workers = [child for child in multiprocessing.active_children() if child.daemon]
    if workers and hasattr(signal, "SIGCHLD"):
        # torch's SIGCHLD handler would report the killed workers as a loader failure.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in workers:
        child.kill()
        child.join(timeout=5)


@functools.cache
def register_worker_cleanup() -> None:
    """Register :func:`_kill_daemonic_children` at exit, once per process."""
    atexit.register(_kill_daemonic_children)


def prepare_workers() -> None:
    """Set this process up to fork DataLoader workers; call it before each loader is built.

    - OpenCV runs on one thread in this process, and so in every worker forked from it. A worker's
      OpenCV pool would take cores from the training step (on two cores the worker's resizing on
      two threads measured slower fit steps, docs/benchmarks.md), and the workers are the
      parallelism. It is set here, before forking, and not in :func:`seed_worker`: a worker forked
      from a process whose OpenCV pool has run inherits the pool's state without its threads, and
      ``cv2.setNumThreads`` there waits for them forever.
    - The exit hook of :func:`register_worker_cleanup` is registered.
    """
    cv2.setNumThreads(1)
    register_worker_cleanup()
