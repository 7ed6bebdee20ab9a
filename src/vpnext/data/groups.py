"""Groups of frames (a video, a city, a camera) and validation on whole held-out groups.

Frames of one video are near-duplicates of each other. A validation split that shares a video
with the training split rewards recalling neighbouring frames, not segmenting unseen scenes (CamVid's
SegNet val is all video ``0016E5``, whose other 204 frames are in train). ``val_groups`` of
:class:`~vpnext.data.datamodule.SegDataModule` therefore moves every frame of the named groups out
of training and scores them as the validation set.

A dataset declares how a file's group is found with a :class:`GroupRule`: a regular expression
searched in the image path relative to the dataset root (``/``-separated); the group is the match's
named group ``group``, else its first group, else the whole match. CamVid: the file-name prefix
(``0016E5_07959.png`` -> ``0016E5``); Cityscapes: the city folder. Any dataset, the folder layout
included, can be given a rule with ``--data.group_pattern``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vpnext.data.base import Sample
from vpnext.data.errors import DatasetError

__all__ = ["GroupRule", "GroupSplit", "count_groups", "split_by_groups"]


@dataclass(frozen=True)
class GroupRule:
    """How the group of a file is read from its path.

    Args:
        pattern: Regular expression searched in the image path relative to the dataset root.
    """

    pattern: str

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.pattern)
        except re.error as err:
            raise DatasetError(
                f"group pattern {self.pattern!r} is not a valid regular expression ({err})"
            ) from err
        object.__setattr__(self, "_regex", compiled)

    def group_of(self, root: Path, path: Path) -> str | None:
        """The group of ``path`` (a file under ``root``), ``None`` if the rule does not match it."""
        try:
            relative = path.relative_to(root).as_posix()
        except ValueError:  # not under the root (a list file pointing elsewhere): use the whole path
            relative = path.as_posix()
        match = self._regex.search(relative)  # type: ignore[attr-defined]
        if match is None:
            return None
        if "group" in match.groupdict():
            return match.group("group")
        return match.group(1) if match.groups() else match.group(0)

    def groups_of(self, root: Path, samples: Iterable[Sample]) -> list[str]:
        """The group of every sample, in order.

        Raises:
            DatasetError: A file the rule does not match (named, with the pattern).
        """
        groups = []
        for sample in samples:
            group = self.group_of(root, sample.image_path)
            if group is None:
                raise DatasetError(
                    f"{sample.image_path}: the group pattern {self.pattern!r} does not match this file "
                    "(it is searched in the path relative to the dataset root)"
                )
            groups.append(group)
        return groups


def count_groups(rule: GroupRule, root: Path, samples: Iterable[Sample]) -> dict[str, int]:
    """Frames per group, sorted by group name; files the rule does not match are left out."""
    counts = Counter(g for s in samples if (g := rule.group_of(root, s.image_path)) is not None)
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class GroupSplit:
    """Training and validation samples after moving whole groups to validation.

    Attributes:
        train: Samples of the training split(s) outside the held-out groups.
        val: Every sample of the held-out groups, from the training split(s) and the val split.
        rest_of_val: Samples of the val split outside the held-out groups (scored beside ``val``
            when no training split lists them).
        train_groups: Frames per group in ``train``.
        val_groups: Frames per group in ``val``.
    """

    train: list[Sample]
    val: list[Sample]
    rest_of_val: list[Sample]
    train_groups: dict[str, int]
    val_groups: dict[str, int]


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{g} ({n})" for g, n in counts.items()) or "none"


def split_by_groups(
    rule: GroupRule,
    root: Path,
    train: Sequence[Sample],
    val: Sequence[Sample],
    held_out: Sequence[str],
    *,
    where: str = "the dataset",
) -> GroupSplit:
    """Move every frame of the ``held_out`` groups out of ``train`` into the validation set.

    A frame listed by both a training split and the val split is kept once (the training entry).

    Args:
        rule: How a file's group is read.
        root: Dataset root (group rules see paths relative to it).
        train: Samples of the training split(s).
        val: Samples of the val split (its held-out frames are validated too).
        held_out: Group names to hold out (at least one).
        where: Name of the data in error messages (e.g. "splits train, val of camvid").

    Raises:
        DatasetError: No group named, a group with no frame in ``train`` or ``val``, groups that
            would leave no training frame (the message lists the groups that exist), or a file
            the rule does not match.
    """
    names = list(dict.fromkeys(str(g) for g in held_out))
    if not names:
        raise DatasetError("val_groups is empty: name at least one group to validate on")
    train_of = rule.groups_of(root, train)
    val_of = rule.groups_of(root, val)
    available = dict(sorted(Counter(train_of + val_of).items()))
    unknown = [g for g in names if g not in available]
    if unknown:
        raise DatasetError(
            f"val_groups: no frame of group(s) {', '.join(unknown)} in {where} "
            f"(rule {rule.pattern!r}); its groups: {_describe(available)}"
        )
    keep = set(names)
    train_kept = [s for s, g in zip(train, train_of, strict=True) if g not in keep]
    if not train_kept:
        raise DatasetError(
            f"val_groups: holding out {', '.join(names)} leaves no training frame in {where} "
            f"(groups of the training split(s): {_describe(dict(sorted(Counter(train_of).items())))})"
        )
    seen: set[Path] = set()
    held: list[Sample] = []
    for sample, group in [*zip(train, train_of, strict=True), *zip(val, val_of, strict=True)]:
        if group in keep and sample.image_path not in seen:
            seen.add(sample.image_path)
            held.append(sample)
    rest = [s for s, g in zip(val, val_of, strict=True) if g not in keep]
    return GroupSplit(
        train=train_kept,
        val=held,
        rest_of_val=rest,
        train_groups=count_groups(rule, root, train_kept),
        val_groups=count_groups(rule, root, held),
    )
