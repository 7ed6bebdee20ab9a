"""Validation on whole held-out groups (videos, cities): the rule, the split, the data module, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpnext.cli import main
from vpnext.data.base import Sample
from vpnext.data.catalog import get_dataset_spec
from vpnext.data.class_stats import class_pixel_counts
from vpnext.data.datamodule import SegDataModule
from vpnext.data.errors import DatasetError
from vpnext.data.groups import GroupRule, split_by_groups
from vpnext.training import results as results_module

ROOT = Path("/data/camvid")
#: A CamVid-like tree: video AAA only in train, BBB in train and val (like 0016E5), CCC only in val.
TRAIN_IDS = ("AAA_000010", "AAA_000020", "BBB_f00030", "BBB_f00040", "BBB_f00050")
VAL_IDS = ("BBB_f00060", "CCC_00070")


def samples(names: tuple[str, ...], split: str = "train") -> list[Sample]:
    return [Sample(ROOT / split / f"{n}.png", ROOT / f"{split}annot" / f"{n}.png") for n in names]


def stems(dataset: object) -> list[str]:
    return [s.image_path.stem for s in dataset.samples]  # type: ignore[attr-defined]


def write_camvid_groups(root: Path, size: tuple[int, int] = (48, 64)) -> Path:
    """CamVid's SegNet layout (list files with the authors' absolute prefix) for TRAIN/VAL_IDS."""
    rng = np.random.default_rng(0)
    for split, ids in (("train", TRAIN_IDS), ("val", VAL_IDS)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for name in ids:
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                root / split / f"{name}.png"
            )
            label = rng.integers(0, 12, size, dtype=np.uint8)  # 11 = Unlabelled
            Image.fromarray(label).save(root / f"{split}annot" / f"{name}.png")
        lines = [f"/SegNet/CamVid/{split}/{n}.png /SegNet/CamVid/{split}annot/{n}.png" for n in ids]
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


# ---- the rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("relative", "group"),
    [
        ("train/0001TP_006690.png", "0001TP"),
        ("train/0006R0_f00930.png", "0006R0"),
        ("val/0016E5_07959.png", "0016E5"),
        ("test/Seq05VD_f00000.png", "Seq05VD"),
    ],
)
def test_camvid_rule_reads_the_video_prefix(relative: str, group: str) -> None:
    rule = GroupRule(get_dataset_spec("camvid").group_pattern)  # type: ignore[arg-type]
    assert rule.group_of(ROOT, ROOT / relative) == group


def test_cityscapes_rule_reads_the_city_folder() -> None:
    rule = GroupRule(get_dataset_spec("cityscapes").group_pattern)  # type: ignore[arg-type]
    path = ROOT / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert rule.group_of(ROOT, path) == "aachen"
    assert rule.group_of(ROOT, ROOT / "gtFine/train/aachen/x.png") is None


def test_named_group_wins_then_first_group_then_whole_match() -> None:
    path = ROOT / "images/train/cam2-0005.png"
    assert GroupRule(r"(cam\d)-(?P<group>\d+)").group_of(ROOT, path) == "0005"
    assert GroupRule(r"(cam\d)-\d+").group_of(ROOT, path) == "cam2"
    assert GroupRule(r"cam\d").group_of(ROOT, path) == "cam2"


def test_rule_sees_the_path_relative_to_the_root() -> None:
    # "data" is in the absolute path but not in the relative one: it must not match.
    assert GroupRule(r"^(?P<group>data)").group_of(ROOT, ROOT / "images/a.png") is None
    assert GroupRule(r"^images/(?P<group>[^/]+)").group_of(ROOT, ROOT / "images/a.png") == "a.png"


def test_file_outside_the_rule_is_named() -> None:
    rule = GroupRule(r"^(?P<group>[A-Z]+)_")
    with pytest.raises(DatasetError, match=r"lonely\.png.*does not match"):
        rule.groups_of(ROOT, [Sample(ROOT / "lonely.png", None)])


def test_invalid_pattern_is_one_clear_error() -> None:
    with pytest.raises(DatasetError, match="not a valid regular expression"):
        GroupRule("(unclosed")


# ---- the split --------------------------------------------------------------------------------
RULE = GroupRule(r"(?P<group>[^/_]+)_[^/]*$")


def test_held_out_group_leaves_training_and_is_validated_from_every_split() -> None:
    plan = split_by_groups(RULE, ROOT, samples(TRAIN_IDS), samples(VAL_IDS, "val"), ["BBB"])
    assert [s.image_path.stem for s in plan.train] == ["AAA_000010", "AAA_000020"]
    assert [s.image_path.stem for s in plan.val] == ["BBB_f00030", "BBB_f00040", "BBB_f00050", "BBB_f00060"]
    assert [s.image_path.stem for s in plan.rest_of_val] == ["CCC_00070"]
    assert plan.train_groups == {"AAA": 2}
    assert plan.val_groups == {"BBB": 4}


def test_frame_listed_twice_is_validated_once() -> None:
    train = samples(TRAIN_IDS)
    plan = split_by_groups(RULE, ROOT, train, train[2:3], ["BBB"])
    assert [s.image_path.stem for s in plan.val] == ["BBB_f00030", "BBB_f00040", "BBB_f00050"]


@pytest.mark.parametrize(
    ("held_out", "message"),
    [
        pytest.param(
            ["ZZZ"], r"no frame of group\(s\) ZZZ .*groups: AAA \(2\), BBB \(4\), CCC \(1\)", id="unknown"
        ),
        pytest.param(["AAA", "BBB"], "leaves no training frame", id="empties-training"),
        pytest.param([], "val_groups is empty", id="none-named"),
    ],
)
def test_split_refusals(held_out: list[str], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        split_by_groups(RULE, ROOT, samples(TRAIN_IDS), samples(VAL_IDS, "val"), held_out)


# ---- the data module --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def camvid_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_camvid_groups(tmp_path_factory.mktemp("camvid"))


def test_datamodule_validates_on_the_held_out_group(camvid_tree: Path) -> None:
    dm = SegDataModule("camvid", root=str(camvid_tree), val_groups=["AAA"], num_workers=0, batch_size=2)
    dm.setup("fit")
    assert stems(dm.train_set) == ["BBB_f00030", "BBB_f00040", "BBB_f00050"]
    assert stems(dm.val_set) == ["AAA_000010", "AAA_000020"]
    assert stems(dm.official_val_set) == ["BBB_f00060", "CCC_00070"]
    assert dm.val_set_names == ("val", "official_val")
    assert len(dm.val_dataloader()) == 2
    # Training samples are augmented crops, validation samples keep the original label.
    assert dm.train_set.transform is not dm.val_set.transform and dm.val_set.keep_original_label
    summary = dm.group_summary()
    assert summary["train"] == {"BBB": 3} and summary["val"] == {"AAA": 2}
    assert summary["official_val"] == {"BBB": 1, "CCC": 1} and summary["val_groups"] == ["AAA"]


def test_validate_stage_builds_only_the_evaluation_sets(camvid_tree: Path) -> None:
    dm = SegDataModule("camvid", root=str(camvid_tree), val_groups=["CCC"], num_workers=0)
    dm.setup("validate")
    assert dm.train_set is None
    assert stems(dm.val_set) == ["CCC_00070"]
    assert stems(dm.official_val_set) == ["BBB_f00060"]


def test_train_and_val_together_leave_nothing_official_to_score(camvid_tree: Path) -> None:
    dm = SegDataModule(
        "camvid", root=str(camvid_tree), train_split=["train", "val"], val_groups=["AAA"], num_workers=0
    )
    dm.setup("fit")
    assert stems(dm.train_set) == ["BBB_f00030", "BBB_f00040", "BBB_f00050", "BBB_f00060", "CCC_00070"]
    assert dm.official_val_set is None and dm.val_set_names == ("val",)
    assert len(dm.train_dataloader().dataset) == 5


def test_without_val_groups_the_splits_are_untouched_and_groups_recorded(camvid_tree: Path) -> None:
    dm = SegDataModule("camvid", root=str(camvid_tree), num_workers=0)
    dm.setup("fit")
    assert stems(dm.train_set) == list(TRAIN_IDS) and stems(dm.val_set) == list(VAL_IDS)
    summary = dm.group_summary()
    # The overlap that makes CamVid's val a same-video val is visible in the record.
    assert summary["train"] == {"AAA": 2, "BBB": 3} and summary["val"] == {"BBB": 1, "CCC": 1}
    assert summary["val_groups"] is None


def test_folder_dataset_takes_a_pattern(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ids = {"train": ["camA-1", "camA-2", "camB-1"], "val": ["camB-2"]}
    for split, names in ids.items():
        for name in names:
            for folder, array in (
                ("images", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)),
                ("annotations", rng.integers(0, 2, (32, 32), dtype=np.uint8)),
            ):
                (tmp_path / folder / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(tmp_path / folder / split / f"{name}.png")
        (tmp_path / f"{split}.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "meta.json").write_text(
        json.dumps({"classes": ["a", "b"], "palette": [[0, 0, 0], [9, 9, 9]]})
    )
    dm = SegDataModule(
        "folder", root=str(tmp_path), val_groups=["camB"], group_pattern=r"/(cam[A-Z])-", num_workers=0
    )
    dm.setup("fit")
    assert stems(dm.train_set) == ["camA-1", "camA-2"]
    assert stems(dm.val_set) == ["camB-1", "camB-2"]
    assert dm.official_val_set is None  # the val split was all camB


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"dataset": "synthetic", "val_groups": ["a"]}, "declares no group rule", id="no-rule"),
        pytest.param({"val_groups": ""}, "val_groups is empty", id="empty-string"),
    ],
)
def test_datamodule_refusals(camvid_tree: Path, kwargs: dict, message: str) -> None:
    args = {"dataset": "camvid", "root": str(camvid_tree), "num_workers": 0, **kwargs}
    with pytest.raises(DatasetError, match=message):
        SegDataModule(**args).setup("fit")


@pytest.mark.parametrize("given", ["AAA, CCC", "[AAA,CCC]", ["AAA", "CCC"]])
def test_groups_can_be_a_list_or_one_string(camvid_tree: Path, given: str | list[str]) -> None:
    dm = SegDataModule("camvid", root=str(camvid_tree), val_groups=given, num_workers=0)
    dm.setup("validate")
    assert dm.val_groups == ["AAA", "CCC"]
    assert stems(dm.val_set) == ["AAA_000010", "AAA_000020", "CCC_00070"]


# ---- end to end -------------------------------------------------------------------------------
TINY_CAMVID_FIT = [
    "--trainer.accelerator=cpu",
    "--trainer.max_steps=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--model.decoder_dim=32",
    "--model.pyramid_dim=16",
    "--model.num_heads=4",
    "--model.warmup_iters=1",
    "--model.eval_window=whole",
    "--data.dataset=camvid",
    "--data.train_scale=[64, 48]",
    "--data.crop_size=[48, 64]",
    "--data.batch_size=2",
    "--data.num_workers=0",
]


@pytest.mark.slow
def test_fit_scores_both_sets_and_records_the_groups(
    camvid_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The code is read when the run starts: a commit made while it trains must not be recorded.
    reads = iter([{"commit": "at-start", "dirty": False}])
    monkeypatch.setattr(
        results_module, "code_version", lambda: next(reads, {"commit": "later", "dirty": True})
    )
    # A YAML-style list on the command line ("[AAA]" would be an unknown group if taken literally).
    args = ["fit", *TINY_CAMVID_FIT, f"--data.root={camvid_tree}", "--data.val_groups=[AAA]"]
    assert main([*args, f"--run.root={tmp_path}", "--run.name=groups"]) == 0
    (run,) = (tmp_path / "groups").iterdir()
    results = json.loads((run / "results.json").read_text())
    groups = results["data"]["groups"]
    assert groups["train"] == {"BBB": 3} and groups["val"] == {"AAA": 2} and groups["val_groups"] == ["AAA"]
    assert groups["official_val"] == {"BBB": 1, "CCC": 1}
    assert results["mIoU"] is not None and results["images_evaluated"] == 2
    assert results["code"] == {"commit": "at-start", "dirty": False}
    official = results["official_val"]
    assert official["images_evaluated"] == 2 and official["evaluated_at_step"] == 2
    assert set(official["per_class_iou"]) == set(results["per_class_iou"])
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/mIoU" in header and "official_val/mIoU" in header


def test_fit_refuses_an_unknown_group_in_one_line(
    camvid_tree: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", *TINY_CAMVID_FIT, f"--data.root={camvid_tree}", "--data.val_groups=0006R0"]
    assert main([*args, f"--run.root={tmp_path}"]) != 0
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("vpnext: error: val_groups: no frame of group(s) 0006R0"), lines[0]
    assert "AAA (2), BBB (4), CCC (1)" in lines[0]


def test_class_counts_leave_out_the_held_out_groups(camvid_tree: Path) -> None:
    """Class weights for a held-out-group run come from the frames it trains on."""
    all_pixels, _, _ = class_pixel_counts("camvid", str(camvid_tree), "train")
    kept, _, _ = class_pixel_counts("camvid", str(camvid_tree), "train", exclude_groups=["AAA"])
    expected = np.zeros(11, dtype=np.int64)
    for name in TRAIN_IDS[2:]:  # the BBB frames
        label = np.asarray(Image.open(camvid_tree / "trainannot" / f"{name}.png"))
        expected += np.bincount(label[label < 11].ravel(), minlength=11)[:11]
    np.testing.assert_array_equal(kept, expected)
    assert (kept < all_pixels).any() and (kept <= all_pixels).all()
