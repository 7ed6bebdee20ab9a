"""Every dataset loads through SegDataModule from a tiny tree in its real on-disk format.

Each fixture writes 2 train + 2 val images of 40x60 with the dataset's own file names, folder
nesting, split files and label encoding; label conversions are checked pixel by pixel against
expectations computed here independently of the library's look-up tables.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vpnext.data import DATASETS, SegDataModule, get_dataset_spec
from vpnext.data.prepare import prepare

H, W = 40, 60
REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"


def rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if palette is not None:
        img = img.convert("P") if img.mode != "L" else Image.fromarray(array, mode="L").convert("P")
        img.putpalette(palette)
    img.save(path)


def raw_pattern(values: list[int], seed: int) -> np.ndarray:
    """A label map that contains every value of ``values`` (shuffled, tiled to 40x60)."""
    tiled = np.resize(np.array(values, dtype=np.uint8), H * W)
    return np.random.default_rng(seed).permutation(tiled).reshape(H, W)


# ---- writers: each returns {val id: raw label} so tests can check the conversion ---------------
def write_pascal_context(root: Path) -> dict[str, np.ndarray]:
    raws = {}
    for split, ids in (("train", ["2008_000001", "2008_000002"]), ("val", ["2008_000003", "2008_000004"])):
        lst = root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text("\n".join(ids) + "\n")
        for n, i in enumerate(ids):
            save(root / "JPEGImages" / f"{i}.jpg", rgb(n))
            raws[i] = raw_pattern([*range(60), 255], n)
            save(root / "SegmentationClassContext" / f"{i}.png", raws[i])
    return {i: raws[i] for i in ("2008_000003", "2008_000004")}


COCO_UNUSED = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}


def write_coco_stuff(root: Path) -> dict[str, np.ndarray]:
    raws = {}
    for split, ids in (
        ("train2017", ["000000000009", "000000000025"]),
        ("val2017", ["000000000139", "000000000285"]),
    ):
        for n, i in enumerate(ids):
            save(root / "images" / split / f"{i}.jpg", rgb(n))
            raws[i] = raw_pattern([*range(182), 255], n)
            save(root / "annotations" / split / f"{i}.png", raws[i])  # raw ids, converted by prepare
    assert prepare("coco_stuff", root) == 4
    return {i: raws[i] for i in ("000000000139", "000000000285")}


CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def write_cityscapes(root: Path) -> dict[str, np.ndarray]:
    raws = {}
    for split, names in (
        ("train", ["aachen/aachen_000000_000019", "bochum/bochum_000000_000313"]),
        ("val", ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"]),
    ):
        for n, name in enumerate(names):
            save(root / "leftImg8bit" / split / f"{name}_leftImg8bit.png", rgb(n))
            raws[name] = raw_pattern([*range(34), 255], n)
            save(root / "gtFine" / split / f"{name}_gtFine_labelIds.png", raws[name])
            # The other gtFine files must not be mistaken for labels or images.
            save(root / "gtFine" / split / f"{name}_gtFine_instanceIds.png", raws[name])
    assert prepare("cityscapes", root) == 4
    return {k: v for k, v in raws.items() if k.startswith(("frankfurt", "lindau"))}


def voc_palette() -> list[int]:
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_voc_aug(root: Path) -> dict[str, np.ndarray]:
    raws = {}
    seg = root / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    (seg / "trainaug.txt").write_text("2007_000032\n2008_000008\n")
    (seg / "val.txt").write_text("2007_000033\n2007_000042\n")
    for n, i in enumerate(["2007_000032", "2008_000008"]):
        save(root / "JPEGImages" / f"{i}.jpg", rgb(n))
        save(root / "SegmentationClassAug" / f"{i}.png", raw_pattern([*range(21), 255], n))  # mode L
    for n, i in enumerate(["2007_000033", "2007_000042"]):
        save(root / "JPEGImages" / f"{i}.jpg", rgb(n))
        raws[i] = raw_pattern([*range(21), 255], n + 7)
        save(root / "SegmentationClass" / f"{i}.png", raws[i], palette=voc_palette())  # mode P
    return raws


def write_ade20k(root: Path) -> dict[str, np.ndarray]:
    raws = {}
    for split, ids in (
        ("training", ["ADE_train_00000001", "ADE_train_00000002"]),
        ("validation", ["ADE_val_00000001", "ADE_val_00000002"]),
    ):
        for n, i in enumerate(ids):
            save(root / "images" / split / f"{i}.jpg", rgb(n))
            raws[i] = raw_pattern(list(range(151)), n)
            save(root / "annotations" / split / f"{i}.png", raws[i])
    return {i: raws[i] for i in ("ADE_val_00000001", "ADE_val_00000002")}


def write_camvid(root: Path) -> dict[str, np.ndarray]:
    raws = {}
    for split, ids in (
        ("train", ["0001TP_006690", "0001TP_006720"]),
        ("val", ["0016E5_07959", "0016E5_07961"]),
    ):
        lines = []
        for n, i in enumerate(ids):
            save(root / split / f"{i}.png", rgb(n))
            raws[i] = raw_pattern(list(range(12)), n)
            save(root / f"{split}annot" / f"{i}.png", raws[i])
            lines.append(f"/SegNet/CamVid/{split}/{i}.png /SegNet/CamVid/{split}annot/{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return {i: raws[i] for i in ("0016E5_07959", "0016E5_07961")}


def write_folder(root: Path) -> dict[str, np.ndarray]:
    raws = {}
    for split, ids in (("train", ["a", "b"]), ("val", ["c", "d"])):
        (root / f"{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for n, i in enumerate(ids):
            suffix = ".jpg" if n else ".png"  # both image formats are allowed
            save(root / "images" / split / f"{i}{suffix}", rgb(n))
            raws[i] = raw_pattern([0, 1, 2, 255], n)
            save(root / "annotations" / split / f"{i}.png", raws[i])
    (root / "meta.json").write_text(json.dumps({"classes": ["bg", "x", "y"], "palette": [[0, 0, 0]] * 3}))
    return {i: raws[i] for i in ("c", "d")}


def expect_reduce_zero(raw: np.ndarray) -> np.ndarray:
    return np.where((raw == 0) | (raw == 255), 255, raw.astype(np.int64) - 1)


def expect_coco(raw: np.ndarray) -> np.ndarray:
    out = np.empty(raw.shape, np.int64)
    for r in np.unique(raw):
        out[raw == r] = 255 if (r == 255 or r in COCO_UNUSED) else r - sum(u < r for u in COCO_UNUSED)
    return out


def expect_cityscapes(raw: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda r: CITYSCAPES_TRAIN_IDS.get(int(r), 255))(raw).astype(np.int64)


def expect_camvid(raw: np.ndarray) -> np.ndarray:
    return np.where(raw == 11, 255, raw).astype(np.int64)


def expect_identity(raw: np.ndarray) -> np.ndarray:
    return raw.astype(np.int64)


CASES: dict[str, tuple[Callable[[Path], dict[str, np.ndarray]], Callable[[np.ndarray], np.ndarray], int]] = {
    "pascal_context": (write_pascal_context, expect_reduce_zero, 59),
    "coco_stuff": (write_coco_stuff, expect_coco, 171),
    "cityscapes": (write_cityscapes, expect_cityscapes, 19),
    "voc_aug": (write_voc_aug, expect_identity, 21),
    "ade20k": (write_ade20k, expect_reduce_zero, 150),
    "camvid": (write_camvid, expect_camvid, 11),
    "folder": (write_folder, expect_identity, 3),
}


def tiny_datamodule(name: str, root: Path, **kwargs) -> SegDataModule:
    args = dict(crop_size=32, train_scale=(60, 40), test_resize=False, batch_size=2, num_workers=0)
    return SegDataModule(name, root=str(root), **{**args, **kwargs})


@pytest.mark.parametrize("name", sorted(CASES))
def test_dataset_loads_through_datamodule(name: str, tmp_path: Path) -> None:
    writer, expect, num_classes = CASES[name]
    raws = writer(tmp_path)
    dm = tiny_datamodule(name, tmp_path)
    assert dm.num_classes == num_classes == len(dm.class_names) == len(dm.palette)
    dm.setup("fit")
    assert len(dm.train_set) == 2 and len(dm.val_set) == 2

    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (2, 32, 32) and batch["label"].dtype == torch.int64
    values = set(batch["label"].unique().tolist())
    assert values <= set(range(num_classes)) | {255}

    seen = 0
    for batch in dm.val_dataloader():
        assert batch["image"].shape == (1, 3, H, W) and batch["label"].shape == (1, H, W)
        meta = batch["meta"][0]
        assert meta["ori_size"] == (H, W) and Path(meta["image_path"]).is_file()
        key = next(k for k in raws if k.split("/")[-1] in meta["image_path"])
        np.testing.assert_array_equal(batch["label"][0].numpy(), expect(raws[key]))
        seen += 1
    assert seen == 2


def test_conversions_cover_every_class(tmp_path: Path) -> None:
    """The fixtures exercise the whole class range: every train id and 255 appear after conversion."""
    for name, (writer, expect, num_classes) in CASES.items():
        raws = writer(tmp_path / name)
        converted = np.concatenate([expect(r).ravel() for r in raws.values()])
        if name == "voc_aug":
            assert 255 in converted  # VOC's boundary value is kept as ignore
        assert set(np.unique(converted).tolist()) == set(range(num_classes)) | {255}, name


def test_val_keeps_original_label_while_image_is_resized(tmp_path: Path) -> None:
    raws = write_pascal_context(tmp_path)
    dm = SegDataModule("pascal_context", root=str(tmp_path), num_workers=0)  # default test scale
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    # (2048, 520) keep-ratio: short side 40 -> 520, long side 60 -> 780.
    assert batch["image"].shape == (1, 3, 520, 780)
    assert batch["label"].shape == (1, H, W)
    assert batch["meta"][0]["img_size"] == (520, 780) and batch["meta"][0]["ori_size"] == (H, W)
    np.testing.assert_array_equal(batch["label"][0].numpy(), expect_reduce_zero(raws["2008_000003"]))


def test_padded_val_batches(tmp_path: Path) -> None:
    """val_batch_size > 1 pads images (0) and labels (255) of different sizes to a common size."""
    write_folder(tmp_path)
    small = tmp_path / "images" / "val" / "d.jpg"
    Image.fromarray(rgb(5)[:30, :50]).save(small)
    lbl = tmp_path / "annotations" / "val" / "d.png"
    Image.fromarray(np.ones((30, 50), np.uint8)).save(lbl)
    dm = tiny_datamodule("folder", tmp_path, val_batch_size=2)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, H, W) and batch["label"].shape == (2, H, W)
    assert [m["img_size"] for m in batch["meta"]] == [(H, W), (30, 50)]
    assert (batch["label"][1, 30:] == 255).all() and (batch["label"][1, :, 50:] == 255).all()
    assert (batch["label"][1, :30, :50] == 1).all()
    assert (batch["image"][1, :, 30:] == 0).all() and batch["image"][1, :, :30, :50].abs().sum() > 0


def test_predict_over_image_folder(tmp_path: Path) -> None:
    write_folder(tmp_path / "data")
    pics = tmp_path / "pics"
    pics.mkdir()
    for n in range(3):
        Image.fromarray(rgb(n)).save(pics / f"p{n}.jpg")
    (pics / "notes.txt").write_text("not an image")
    dm = tiny_datamodule("folder", tmp_path / "data", predict_dir=str(pics))
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert len(batches) == 3 and all("label" not in b for b in batches)
    assert batches[0]["image"].shape == (1, 3, H, W)


def test_synthetic_through_datamodule(tmp_path: Path) -> None:
    kwargs = {"num_train": 3, "num_val": 2, "image_size": 32}
    dm = SegDataModule("synthetic", root=str(tmp_path), batch_size=2, num_workers=0, synthetic_kwargs=kwargs)
    assert dm.num_classes == len(DATASETS["synthetic"].class_names) > 1
    dm.prepare_data()
    dm.setup("fit")
    assert dm.root is not None and dm.root.parent == tmp_path
    assert len(dm.train_set) == 3 and len(dm.val_set) == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, *dm.crop_size) and batch["label"].dtype == torch.int64
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 3, 32, 32) and val["label"].shape == (1, 32, 32)


def test_spec_registry() -> None:
    expected = {
        "pascal_context": 59,
        "coco_stuff": 171,
        "cityscapes": 19,
        "voc_aug": 21,
        "ade20k": 150,
        "camvid": 11,
    }
    for name, k in expected.items():
        spec = get_dataset_spec(name)
        assert spec.num_classes == k and len(spec.palette) == k and len(set(spec.class_names)) == k
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in spec.palette)
    assert get_dataset_spec("pascal_context").crop_size == (480, 480)
    assert get_dataset_spec("pascal_context").slide_stride == (320, 320)
    assert get_dataset_spec("cityscapes").slide_crop == (768, 768)
    assert get_dataset_spec("voc_aug").train_split == "trainaug"
    assert get_dataset_spec("voc_aug").palette[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    assert get_dataset_spec("cityscapes").palette[0] == (128, 64, 128)
    with pytest.raises(KeyError, match="known"):
        get_dataset_spec("imagenet")


@pytest.mark.skipif(not CAMVID.is_dir(), reason="shared CamVid copy not present")
def test_camvid_shared_copy() -> None:
    dm = SegDataModule("camvid", root=str(CAMVID), num_workers=0, batch_size=2)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (367, 101)
    assert all(s.image_path.is_relative_to(CAMVID) for s in dm.train_set.samples)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 256, 256)
    sample = dm.val_set[0]
    raw = np.asarray(Image.open(dm.val_set.samples[0].label_path))
    assert sample["label"].shape == (360, 480) and sample["image"].shape == (3, 360, 480)
    np.testing.assert_array_equal(sample["label"].numpy(), expect_camvid(raw))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_vpnext_validate_runs_on_the_fixture_tree(name: str, tmp_path: Path) -> None:
    from vpnext.cli import main

    CASES[name][0](tmp_path / "data")
    args = [
        "validate",
        "--config",
        str(REPO / "experiments" / "data" / f"{name}.yaml"),
        f"--data.root={tmp_path / 'data'}",
        "--data.test_resize=false",  # keep the 40x60 fixtures small
        # A 32-pixel window at stride 24 slides over them (2x3 windows) at a cost of seconds; the
        # dataset's own window (512-768) would pad each fixture image to a full-size forward.
        "--data.crop_size=32",
        "--data.slide_crop=32",
        "--data.slide_stride=24",
        "--data.num_workers=0",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--model.decoder_dim=32",
        "--model.pyramid_dim=16",
        "--model.num_heads=4",
        f"--run.dir={tmp_path / 'run'}",
    ]
    assert main(args) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert tuple(results["per_class_iou"]) == get_dataset_spec(name).class_names or name == "folder"
    assert len(results["per_class_iou"]) == CASES[name][2] and results["data"]["dataset"] == name
    assert results["mIoU"] is not None and results["evaluation"]["window"] == "slide"
    assert results["evaluation"]["crop"] == [32, 32] and results["evaluation"]["stride"] == [24, 24]
