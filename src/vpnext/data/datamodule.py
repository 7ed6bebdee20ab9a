"""``SegDataModule``: any registered dataset behind one LightningDataModule.

Train batches are ``crop_size`` crops from :func:`build_train_transform`. Val/test samples apply
only the dataset's test resize (if any) and normalisation to the image and keep the label at its
original resolution; the evaluation code runs the sliding window (``slide_crop``/``slide_stride``)
and scores against the original label. Batches of different sizes are padded by
:func:`seg_collate` (image 0, label 255); with ``val_batch_size=1`` nothing is padded.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from vpnext.data.base import CheckLevel, SegmentationDataset, seg_collate
from vpnext.data.datasets import DATASET_CLASSES, ImageFolderDataset
from vpnext.data.errors import DatasetError
from vpnext.data.groups import GroupRule, count_groups, split_by_groups
from vpnext.data.mixing import MixMode
from vpnext.data.resume import EpochSeededDataset, ResumableSampler
from vpnext.data.sampling import EvalDistributedSampler
from vpnext.data.settings import DataSettings
from vpnext.data.workers import launcher_rank, prepare_workers, seed_worker
from vpnext.errors import UserError
from vpnext.memory import available_bytes


def _names(value: str | list[str] | None) -> list[str] | None:
    """Group names from ``"a,b"`` or ``[a, b]`` (``None`` stays ``None``)."""
    if value is None:
        return None
    # The command line may hand over a YAML-style list as one string: "[a,b]".
    items = value.strip().removeprefix("[").removesuffix("]").split(",") if isinstance(value, str) else value
    return [str(v).strip() for v in items if str(v).strip()]


class SegDataModule(DataSettings, L.LightningDataModule):
    """Semantic-segmentation data for any dataset in :data:`vpnext.data.catalog.DATASETS`.

    Args:
        dataset: Registry name: ``pascal_context``, ``coco_stuff``, ``cityscapes``, ``voc_aug``,
            ``ade20k``, ``camvid``, ``folder`` or ``synthetic``.
        root: Dataset root (see docs/datasets.md for each layout). For ``synthetic`` the cache
            folder to generate into (``None``: the default cache); required otherwise.
        train_split: Training split, or a list of splits trained on together (``[train, val]``);
            ``None`` uses the dataset default (e.g. ``trainaug`` for VOC).
        val_split: Validation split; ``None`` uses the dataset default.
        val_groups: Group names (a list, or one string with commas) to validate on: whole groups
            of frames (videos, cities; see :mod:`vpnext.data.groups`). Every frame of these
            groups, from the training split(s) and the val split, leaves training and becomes the
            validation set (logged as ``val/...``). The rest of the val split, when no training
            split lists it, is scored beside it as ``official_val/...``. ``None``: validate on
            ``val_split``.
        group_pattern: Regular expression that reads a file's group from its path relative to
            the root (named group ``group``, else the first group); ``None`` uses the dataset's
            own rule (CamVid: the video prefix, Cityscapes: the city).
        test_split: Test split; ``None`` uses the dataset default (val for all but held-out data).
        crop_size: Training crop, an int or ``(height, width)``; ``None`` uses the dataset default.
        train_scale: Base ``(long, short)`` scale of the random rescale; ``None`` uses the dataset
            default.
        ratio_range: Random rescale range relative to ``train_scale``.
        cat_max_ratio: Largest share of one class in a training crop (1.0 disables re-drawing).
        photometric: Apply photometric distortion during training: ``True`` with mmseg's ranges,
            ``"strong"`` with wider ones for scenes that differ in lighting (brightness +-64,
            gamma, colour shift; :func:`vpnext.data.transforms.photometric_distortion`).
        mix: Mix training crops in pairs (:mod:`vpnext.data.mixing`): ``"classmix"`` pastes half
            of another crop's classes, ``"cutmix"`` a box of it; ``"none"`` (default) does not mix.
        mix_prob: Share of the training crops that are mixed.
        test_scale: Keep-ratio ``(long, short)`` resize of val/test/predict images; ``None`` uses
            the dataset default.
        test_resize: If False, val/test/predict images keep their native size.
        slide_crop: Sliding-window size for single-scale testing, an int or ``(h, w)`` (read by
            the evaluation); ``None`` uses the dataset default.
        slide_stride: Sliding-window stride; ``None`` uses the dataset default.
        keep_original_label: Val/test labels at the original resolution (not resized with the
            image); turn off only if the evaluation expects labels at the resized image size.
        mean: Normalisation mean, fractions of 255; ``None``: what ``normalize_for``'s weights expect.
        std: Normalisation std, fractions of 255; ``None``: what ``normalize_for``'s weights expect.
        normalize_for: The timm backbone the data feeds (``vpnext fit`` links it from
            ``model.backbone``; a name of its own so that the data module's and the model's
            hyperparameters never clash): ``mean``/``std`` left at ``None`` come from its pretrained config
            (:func:`vpnext.models.backbone.backbone_normalization`: 0.5/0.5 for AugReg ViTs, ImageNet's
            for DeiT/DINOv2), for training, evaluation and prediction alike. Without a backbone,
            ImageNet's mean/std.
        batch_size: Training batch size (per device).
        val_batch_size: Val/test/predict batch size; >1 pads samples to a common size.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory (only when CUDA is available).
        persistent_workers: Keep workers alive between epochs (when ``num_workers > 0``).
        cache: Decode every frame of the sets ``setup`` builds once, into memory, and augment
            the kept pixels at each access (samples are unchanged). On a machine whose cores all
            train, this takes decoding out of every step (docs/datasets.md, "Keeping decoded
            frames in memory"). Refused when the frames would take more than half of the
            available memory; every DDP process keeps its own copy.
        check_files: Up-front scan of every split in ``setup``: ``"headers"`` (cheap: existence,
            readability, sizes, label mode), ``"decode"`` (also decodes every file and checks label
            values) or ``"none"``.
        predict_dir: Folder of images for ``predict``; ``None`` predicts on the val split.
        synthetic_kwargs: Keyword arguments of ``ensure_synthetic`` (``num_train``, ``num_val``,
            ``image_size``, ``seed``, ``ignore_band``) for ``dataset="synthetic"``.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        train_split: str | list[str] | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        val_groups: list[str] | str | None = None,
        group_pattern: str | None = None,
        crop_size: int | tuple[int, int] | None = None,
        train_scale: tuple[int, int] | None = None,
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        photometric: bool | Literal["strong"] = True,
        mix: MixMode = "none",
        mix_prob: float = 0.5,
        test_scale: tuple[int, int] | None = None,
        test_resize: bool = True,
        slide_crop: int | tuple[int, int] | None = None,
        slide_stride: int | tuple[int, int] | None = None,
        keep_original_label: bool = True,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        normalize_for: str | None = None,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        cache: bool = False,
        check_files: CheckLevel = "headers",
        predict_dir: str | None = None,
        synthetic_kwargs: dict[str, int] | None = None,
    ) -> None:
        super().__init__(  # DataSettings, then LightningDataModule
            dataset,
            root,
            crop_size=crop_size,
            train_scale=train_scale,
            test_scale=test_scale,
            test_resize=test_resize,
            slide_crop=slide_crop,
            slide_stride=slide_stride,
            mean=mean,
            std=std,
            normalize_for=normalize_for,
        )
        if not 0.0 <= mix_prob <= 1.0:
            raise UserError(f"--data.mix_prob={mix_prob}: a probability, between 0 and 1")
        self.save_hyperparameters()
        self._root: Path | None = None if dataset == "synthetic" else Path(root)  # type: ignore[arg-type]
        self.train_set: SegmentationDataset | None = None
        self.val_set: SegmentationDataset | None = None
        self.test_set: SegmentationDataset | None = None
        self.predict_set: SegmentationDataset | None = None
        #: The val split outside the held-out groups, scored beside them (``val_groups`` only).
        self.official_val_set: SegmentationDataset | None = None
        #: The held-out groups (``"a,b"`` and ``[a, b]`` alike), ``None`` without.
        self.val_groups = _names(val_groups)
        if val_groups is not None and self.group_rule is None:
            raise DatasetError(
                f"val_groups: dataset {dataset!r} declares no group rule; give one with "
                "--data.group_pattern=REGEX (docs/datasets.md, 'Validating on held-out groups')"
            )
        #: Where the training stream stands, from a checkpoint (see ``load_state_dict``).
        self._resume_from: dict[str, int] | None = None
        self._train_sampler: ResumableSampler | None = None

    # ---- groups and splits (the model and evaluation settings: DataSettings) -------------------
    @functools.cached_property
    def group_rule(self) -> GroupRule | None:
        """How a file's group is read (``group_pattern``, else the dataset's rule, else ``None``)."""
        pattern = self.hparams.group_pattern or self.spec.group_pattern
        return None if pattern is None else GroupRule(pattern)

    @property
    def train_splits(self) -> list[str]:
        """The split(s) trained on."""
        split = self.hparams.train_split or self.spec.train_split
        return [split] if isinstance(split, str) else [str(s) for s in split]

    @property
    def val_set_names(self) -> tuple[str, ...]:
        """Names the validation sets are logged under: ``val``, then ``official_val`` if scored."""
        return ("val", "official_val") if self.official_val_set is not None else ("val",)

    def group_summary(self) -> dict[str, Any] | None:
        """Frames per group of each set built so far (for ``results.json``); ``None`` without a rule."""
        rule = self.group_rule
        if rule is None or self._root is None:
            return None
        sets = {
            "train": self.train_set,
            "val": self.val_set,
            "official_val": self.official_val_set,
            "test": self.test_set,
        }
        return {
            "rule": rule.pattern,
            "val_groups": self.val_groups,
            **{
                name: None if ds is None else count_groups(rule, self._root, ds.samples)
                for name, ds in sets.items()
            },
        }

    @property
    def root(self) -> Path | None:
        """Dataset root (for ``synthetic`` known after ``prepare_data``/``setup``)."""
        return self._root

    # ---- Lightning hooks ------------------------------------------------------------------------
    def _ensure_root(self) -> Path:
        if self._root is None:
            from vpnext.data.synthetic import ensure_synthetic  # generation is only needed here

            self._root = ensure_synthetic(self.hparams.root, **(self.hparams.synthetic_kwargs or {}))
        return self._root

    def prepare_data(self) -> None:
        """Generate the synthetic dataset once (rank 0) before ``setup`` runs on every rank."""
        if self.dataset_name == "synthetic":
            self._ensure_root()

    def _make(self, split: str, train: bool, scan: bool = True) -> SegmentationDataset:
        # albumentations is imported here, not with the module: `vpnext fit --help` needs no transform.
        from vpnext.data.transforms import build_eval_transform, build_train_transform

        hp = self.hparams
        if train:
            transform = build_train_transform(
                self._crop_size,
                self._train_scale,  # type: ignore[arg-type]
                ratio_range=tuple(hp.ratio_range),
                cat_max_ratio=hp.cat_max_ratio,
                photometric=hp.photometric,
                mean=self.mean,
                std=self.std,
                # Follows seed_everything for num_workers=0; workers reseed in seed_worker.
                seed=int(torch.randint(0, 2**31 - 1, ()).item()) + launcher_rank(),
            )
        else:
            transform = build_eval_transform(self._test_scale, mean=self.mean, std=self.std)  # type: ignore[arg-type]
        cls = DATASET_CLASSES[self.dataset_name]
        return cls(  # type: ignore[call-arg]
            self._ensure_root(),
            split,
            transform,
            keep_original_label=(not train) and hp.keep_original_label,
            # scan=False: the caller has already scanned this split.
            check_files=hp.check_files if scan else "none",
            spec=self.spec,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build (and scan, see ``check_files``) the datasets the stage needs.

        Args:
            stage: ``fit``, ``validate``, ``test``, ``predict`` or ``None`` for all.
        """
        hp = self.hparams
        if self.val_groups is not None:
            self._setup_groups(stage)
        if stage in ("fit", None) and self.train_set is None:
            splits = self.train_splits
            train_set = self._make(splits[0], train=True)
            if len(splits) > 1:
                extra = [s for split in splits[1:] for s in self._make(split, train=False).samples]
                train_set = train_set.subset(train_set.samples + extra, "+".join(splits))
            self.train_set = train_set
        if stage in ("fit", "validate", None) and self.val_set is None:
            self.val_set = self._make(hp.val_split or self.spec.val_split, train=False)
        if stage in ("test", None) and self.test_set is None:
            self.test_set = self._make(hp.test_split or self.spec.test_split, train=False)
        if stage in ("predict", None) and self.predict_set is None:
            if hp.predict_dir is not None:
                from vpnext.data.transforms import build_eval_transform

                transform = build_eval_transform(self._test_scale, mean=self.mean, std=self.std)  # type: ignore[arg-type]
                self.predict_set = ImageFolderDataset(hp.predict_dir, self.spec, transform)
            else:
                self.predict_set = self._make(hp.val_split or self.spec.val_split, train=False)
        if hp.cache:
            self._keep_decoded()

    def _keep_decoded(self) -> None:
        """Decode the train/val/test sets built so far into memory (``cache``), if they fit."""
        sets = [
            ds
            for ds in (self.train_set, self.val_set, self.official_val_set, self.test_set)
            if ds is not None and not ds.decoded
        ]
        if not sets:
            return
        need, free = sum(ds.decoded_bytes() for ds in sets), available_bytes()
        frames = sum(len(ds) for ds in sets)
        if free is not None and need > free // 2:
            raise UserError(
                f"--data.cache=true: the {frames} decoded frames would take {need / 2**30:.1f} GiB, "
                f"more than half of the {free / 2**30:.1f} GiB available; leave the cache off"
            )
        start = time.perf_counter()
        kept = sum(ds.keep_decoded() for ds in sets)
        print(
            f"vpnext: --data.cache: {frames} frames kept decoded in memory "
            f"({kept / 2**20:.0f} MiB, {time.perf_counter() - start:.1f} s)",
            file=sys.stderr,
        )

    def _setup_groups(self, stage: str | None) -> None:
        """Validate on the ``val_groups``: their frames leave training and form the val set."""
        if stage not in ("fit", "validate", None) or self.val_set is not None:
            return
        hp, rule, root = self.hparams, self.group_rule, self._ensure_root()
        assert rule is not None  # checked in __init__
        splits, val_split = self.train_splits, hp.val_split or self.spec.val_split
        listed = {split: self._make(split, train=False) for split in dict.fromkeys([*splits, val_split])}
        train = [s for split in splits for s in listed[split].samples]
        val = [] if val_split in splits else listed[val_split].samples
        where = f"split(s) {', '.join(dict.fromkeys([*splits, val_split]))} of {self.dataset_name!r}"
        plan = split_by_groups(rule, root, train, val, self.val_groups or [], where=where)
        held = ",".join(plan.val_groups)
        if stage in ("fit", None):
            train_set = self._make(splits[0], train=True, scan=False)  # scanned in `listed`
            self.train_set = train_set.subset(plan.train, f"{'+'.join(splits)} without {held}")
        self.val_set = listed[splits[0]].subset(plan.val, f"groups {held}")
        if plan.rest_of_val:
            self.official_val_set = listed[val_split].subset(plan.rest_of_val, val_split)

    def _loader(self, dataset: SegmentationDataset | None, batch_size: int, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() with the matching stage before asking for a dataloader")
        workers = self.hparams.num_workers
        if workers:
            prepare_workers()
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            # Evaluation under DDP: every image on exactly one rank (Lightning's sampler would pad).
            sampler=None if train else self._eval_sampler(dataset),
            # Never drop the only (partial) batch of a dataset smaller than the batch size.
            drop_last=train and len(dataset) >= batch_size,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.hparams.persistent_workers and workers > 0,
            collate_fn=seg_collate,
            worker_init_fn=seed_worker if workers > 0 else None,
        )

    def _eval_sampler(self, dataset: SegmentationDataset) -> EvalDistributedSampler | None:
        """The non-repeating sampler when several processes share the evaluation, else ``None``.

        The ranks come from the trainer's strategy (the data-parallel group, as Lightning's own
        sampler would use), else from ``torch.distributed`` when the module is used without one.
        """
        kwargs = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        if kwargs is not None:
            replicas, rank = int(kwargs["num_replicas"]), int(kwargs["rank"])
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            replicas, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        else:
            return None
        return EvalDistributedSampler(dataset, replicas, rank) if replicas > 1 else None

    def train_dataloader(self) -> DataLoader:
        """Shuffled training crops, ``batch_size`` per step, resumable mid-epoch.

        Order and augmentation are functions of (seed, epoch, position), see
        :mod:`vpnext.data.resume`; under DDP each rank gets its share of the shuffled split.
        """
        dataset, batch_size, workers = self.train_set, self.hparams.batch_size, self.hparams.num_workers
        if dataset is None:
            raise RuntimeError("call setup('fit') before asking for the training dataloader")
        if workers:
            prepare_workers()
        kwargs = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        replicas, rank = (int(kwargs["num_replicas"]), int(kwargs["rank"])) if kwargs else (1, 0)
        # The pipeline's seed follows seed_everything (drawn in _make); the order uses the same one.
        seed = int(getattr(dataset.transform, "seed", None) or 0) - launcher_rank()
        sampler = self._train_sampler = ResumableSampler(dataset, replicas, rank, seed=seed)
        # Never drop the only (partial) batch of a dataset smaller than the batch size.
        drop_last = len(sampler) >= batch_size
        if self._resume_from is not None:
            state, self._resume_from = self._resume_from, None
            epoch = state["epoch"]
            # Every rank shards the same permutation (rank r takes r, r + W, ...), so the samples
            # trained on so far are its first batches x batch size x W entries whatever W was: a
            # run resumed on another number of processes skips exactly those.
            seen = state["batches"] * state.get("batch_size", batch_size) * state.get("world_size", replicas)
            skip = seen // replicas
            usable = len(sampler) - (len(sampler) % batch_size if drop_last else 0)
            if skip >= usable:  # saved at the end of an epoch: the next one starts afresh
                epoch, skip = epoch + 1, 0
            # Lightning creates the first iterator (and workers fetch from it) before it sets the
            # epoch, so the resumed epoch is set here.
            sampler.set_epoch(epoch)
            sampler.resume_at(epoch, skip)
        return DataLoader(
            EpochSeededDataset(dataset, seed + rank, mix=self.hparams.mix, mix_prob=self.hparams.mix_prob),
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.hparams.persistent_workers and workers > 0,
            collate_fn=seg_collate,
            worker_init_fn=seed_worker if workers > 0 else None,
            # Worker seeds come from here, not from the global RNG the model's dropout uses.
            generator=torch.Generator().manual_seed(seed),
        )

    def state_dict(self) -> dict[str, Any]:
        """Position of the training stream: epoch and batches of it trained on (in checkpoints)."""
        trainer, sampler = self.trainer, self._train_sampler
        if trainer is None or sampler is None or trainer.state.fn != "fit":
            return {}
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return {
            "epoch": int(sampler.epoch),
            "batches": int(batches),
            "batch_size": int(self.hparams.batch_size),
            "world_size": int(sampler.num_replicas),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training stream after the batches a checkpoint had trained on."""
        if "epoch" in state_dict and "batches" in state_dict:
            self._resume_from = {k: int(v) for k, v in state_dict.items()}

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation samples in list order (image resized per ``test_scale``, original label).

        With ``val_groups`` and the rest of the val split to score, two loaders in the order of
        :attr:`val_set_names`.
        """
        loader = self._loader(self.val_set, self.hparams.val_batch_size, train=False)
        if self.official_val_set is None:
            return loader
        return [loader, self._loader(self.official_val_set, self.hparams.val_batch_size, train=False)]

    def test_dataloader(self) -> DataLoader:
        """Test samples, same format as validation."""
        return self._loader(self.test_set, self.hparams.val_batch_size, train=False)

    def predict_dataloader(self) -> DataLoader:
        """Images of ``predict_dir`` (no labels) or the val split."""
        return self._loader(self.predict_set, self.hparams.val_batch_size, train=False)
