"""A ``vpnext fit`` step against ``vpnext benchmark``'s bare training step, in one process.

Issue 23 asks for the fit to train at >= 0.95x the rate of the training step ``vpnext benchmark``
times. Timed in two processes, that ratio carries the machine's drift between them (+-10 % per
process on the 2-core development machine). This script times both in the same process, round by
round: it runs ``vpnext fit --config CONFIG`` for ``--steps`` steps with validation off, and every
``--every`` fit steps it runs ``--bare`` steps of ``vpnext benchmark``'s training step
(``vpnext.tools.benchmark._train_fn``: zero_grad, forward_train, the configured loss, backward,
AdamW; random images and labels of the training crop) on its own copy of the model, built by the
benchmark from the same config.

A fit step is the time from the end of one training batch to the end of the next: the loader's
wait, the forward, loss, backward, clipping, AdamW, the scheduler, logging, progress and callbacks,
everything a run pays per step. Cycles that contain a block of bare steps, and the first ``--skip``
fit steps, are left out; bare steps are timed after one untimed step per block.

    python scripts/bench_fit_step.py --config experiments/camvid/recipe.yaml \\
        --data.root=../shared/data/camvid [--steps 150] [--every 10] [--bare 3] [--json out.json]

Any other ``--section.key=value`` goes to ``vpnext fit`` as given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from typing import Any

import lightning as L
import torch

from vpnext.cli import main as vpnext_main
from vpnext.tools.benchmark import _random_labels, _seeded, _train_fn
from vpnext.tools.model_config import load_model_config

_SETTINGS: dict[str, Any] = {}


class FitAgainstStep(L.Callback):
    """Times each fit step, and interleaves blocks of the benchmark's bare step (see the module)."""

    def __init__(self) -> None:
        self.fit_ms: list[float] = []
        self.between_ms: list[float] = []
        self.bare_ms: list[float] = []
        self._last_end: float | None = None
        self._bare_before = False

    def _bare_block(self) -> None:
        for i in range(_SETTINGS["bare"] + 1):
            start = time.perf_counter()
            self._step()
            if i:
                self.bare_ms.append((time.perf_counter() - start) * 1e3)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int
    ) -> None:
        if idx == 0:
            config, images = _SETTINGS["config"], batch["image"]
            labels = _random_labels(
                images.shape[0], tuple(images.shape[-2:]), pl_module.model.num_classes, images.device
            )
            model = _seeded(lambda: config.build(), images.device).train()
            self._step = _train_fn(
                model, config, torch.randn_like(images), labels, bf16=False, compile_=False
            )
        if idx % _SETTINGS["every"] == 0:
            self._bare_block()
            self._bare_before = True
        elif self._last_end is not None and idx >= _SETTINGS["skip"]:
            self.between_ms.append((time.perf_counter() - self._last_end) * 1e3)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        end = time.perf_counter()
        if self._last_end is not None and not self._bare_before and idx >= _SETTINGS["skip"]:
            self.fit_ms.append((end - self._last_end) * 1e3)
        self._last_end, self._bare_before = end, False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit, bare = statistics.median(self.fit_ms), statistics.median(self.bare_ms)
        result = {
            "fit_step_ms": {"median": fit, "mean": statistics.fmean(self.fit_ms), "n": len(self.fit_ms)},
            "between_batches_ms": {"median": statistics.median(self.between_ms), "n": len(self.between_ms)},
            "bare_step_ms": {"median": bare, "mean": statistics.fmean(self.bare_ms), "n": len(self.bare_ms)},
            "fit_rate_vs_bare": bare / fit,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        _SETTINGS["result"] = result
        print(
            f"fit step {fit:.1f} ms (median of {len(self.fit_ms)}), benchmark's bare step {bare:.1f} ms "
            f"(median of {len(self.bare_ms)}): the fit runs at {bare / fit:.3f}x the bare step's rate",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=10, help="fit steps between blocks of bare steps")
    parser.add_argument("--bare", type=int, default=3, help="timed bare steps per block")
    parser.add_argument("--skip", type=int, default=3, help="first fit steps left out (start-up)")
    parser.add_argument("--json", default=None)
    args, fit_args = parser.parse_known_args(argv)
    overrides = [a for a in fit_args if a.startswith("--model.")]
    _SETTINGS.update(
        config=load_model_config([args.config], overrides), every=args.every, bare=args.bare, skip=args.skip
    )
    with tempfile.TemporaryDirectory() as run_dir:
        code = vpnext_main(
            [
                "fit",
                f"--config={args.config}",
                f"--trainer.max_steps={args.steps}",
                "--trainer.limit_val_batches=0",
                "--trainer.num_sanity_val_steps=0",
                f"--run.dir={run_dir}/run",
                *fit_args,
                "--trainer.callbacks+=__main__.FitAgainstStep",
            ]
        )
    if code:
        raise SystemExit(code)
    result = {"config": args.config, "fit_args": fit_args, "steps": args.steps, **_SETTINGS["result"]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
