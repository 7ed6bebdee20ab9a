"""Throughput of the training data loader alone (decode + augmentation + collation).

    python scripts/bench_loader.py                      # synthetic, crop 256, batch 8, 2 workers
    python scripts/bench_loader.py --dataset camvid --root ../shared/data/camvid

The first batches (worker start-up) are excluded; the figure is images per second over the
following ``--batches`` batches, cycling through epochs as needed.
"""

from __future__ import annotations

import argparse
import time

from vpnext.data import SegDataModule


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark and return images/s."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--root", default=None)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=100, help="timed batches")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches")
    args = parser.parse_args(argv)

    dm = SegDataModule(
        args.dataset,
        root=args.root,
        crop_size=args.crop,
        batch_size=args.batch_size,
        num_workers=args.workers,
        persistent_workers=True,
    )
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()

    def batches():
        while True:
            yield from loader

    stream = batches()
    for _ in range(args.warmup):
        next(stream)
    start = time.perf_counter()
    images = sum(next(stream)["image"].shape[0] for _ in range(args.batches))
    rate = images / (time.perf_counter() - start)
    print(
        f"{args.dataset}: {rate:.1f} images/s (crop {args.crop}, batch {args.batch_size}, "
        f"{args.workers} workers, {args.batches} batches)"
    )
    return rate


if __name__ == "__main__":
    main()
