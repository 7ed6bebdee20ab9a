"""``vpnext benchmark --peers``: every row builds on the configured ViT and returns full-size scores."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from vpnext.tools import benchmark, peers
from vpnext.tools.model_config import load_model_config

SIZE = (64, 64)
CLASSES = 5


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("peers") / "tiny.yaml"
    model = {"backbone": "vit_tiny_patch16_224", "decoder_dim": 32, "pyramid_dim": 16, "num_heads": 4}
    model |= {"num_classes": CLASSES, "hiclr_depth": 1, "mask2former_dim": 32}
    path.write_text(yaml.safe_dump({"model": model, "data": {"dataset": "synthetic"}}))
    return path


def _needs(row: str) -> None:
    library = peers.PEERS[row].library
    if library:
        pytest.importorskip(library)


def test_block_indices_are_evenly_spaced_and_end_with_the_last() -> None:
    assert peers._block_indices(12) == [2, 5, 8, 11]  # mmseg's ViT + UPerNet out_indices
    assert peers._block_indices(24) == [5, 11, 17, 23]


def test_neck_turns_four_vit_blocks_into_quarter_to_thirty_second_maps() -> None:
    neck = peers.ViTMultiLevel("vit_tiny_patch16_224", SIZE)
    levels = neck(torch.randn(2, 3, *SIZE))
    assert [tuple(x.shape) for x in levels] == [(2, 192, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    # The blocks it reads are the ViT's own: the 1/16 level is the lateral + conv of block 8's map.
    block8 = neck.vit.forward_intermediates(torch.zeros(1, 3, *SIZE), indices=[8], intermediates_only=True)[0]
    expected = neck.convs[2](neck.lateral[2](block8))
    torch.testing.assert_close(neck(torch.zeros(1, 3, *SIZE))[2], expected)


@pytest.mark.parametrize("row", [name for name in peers.PEERS if name != "backbone"])
def test_every_row_gives_class_scores_at_the_input_size(row: str, tiny_config: Path) -> None:
    _needs(row)
    model = peers.build_peer(row, load_model_config([tiny_config]), SIZE)
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(1, 3, *SIZE))
    assert out.shape == (1, CLASSES, *SIZE) and torch.isfinite(out).all()


def test_rows_are_built_on_the_configured_vit(tiny_config: Path) -> None:
    config = load_model_config([tiny_config])
    vit_params = sum(p.numel() for p in peers.build_peer("backbone", config, SIZE).parameters())
    for row in ("vpnext", "segmenter", "mask2former"):
        model = peers.build_peer(row, config, SIZE)
        assert sum(p.numel() for p in model.backbone.parameters()) == vit_params
    if importlib.util.find_spec("segmentation_models_pytorch"):
        neck = peers.build_peer("smp_upernet", config, SIZE).neck
        assert type(neck.vit).__name__ == "VisionTransformer" and neck.vit.embed_dim == 192


def test_eomt_scores_are_mask2formers_semantic_combination(tiny_config: Path) -> None:
    _needs("hf_eomt")
    model = peers.build_peer("hf_eomt", load_model_config([tiny_config]), SIZE)
    images = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        out = model.model(pixel_values=images)
        scores = model(images)
    classes = out.class_queries_logits.softmax(-1)[0, :, :-1]  # drop "no object"
    masks = out.masks_queries_logits.sigmoid()[0]
    explicit = sum(classes[q].view(-1, 1, 1) * masks[q] for q in range(classes.shape[0]))
    explicit = F.interpolate(explicit[None], size=SIZE, mode="bilinear", align_corners=False)
    torch.testing.assert_close(scores, explicit, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_peers_command_times_the_rows_in_one_run(tiny_config: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "peers.json"
    rows = ["backbone", "vpnext", "smp_segformer"]
    args = ["--config", str(tiny_config), "--image-size", "64", "64", "--repeats", "2", "--warmup", "1"]
    assert benchmark.main([*args, "--peers", *rows, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = {r for r in rows if not peers.missing_library(r)}
    assert set(result["rows"]) == expected and result["image_size"] == [64, 64]
    assert result["rows"]["backbone"]["x_backbone"] == 1.0
    for row in result["rows"].values():
        assert 0 < row["median_ms"] <= row["p90_ms"] and row["gmacs"] > 0 and row["params_m"] > 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in expected)


def test_a_missing_library_skips_its_rows_and_says_how_to_install(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    result = peers.run_peers(
        load_model_config([tiny_config]), SIZE, ["backbone", "hf_eomt"], repeats=1, warmup=0
    )
    assert set(result["rows"]) == {"backbone"}
    assert result["skipped"] == {"hf_eomt": "transformers is not installed (pip install 'vpnext[peers]')"}
    assert "hf_eomt        skipped: transformers is not installed (pip install 'vpnext[peers]')" in (
        peers.format_peers(result)
    )


def test_unknown_row_is_refused(tiny_config: Path) -> None:
    with pytest.raises(ValueError, match="unknown peer 'upernet'"):
        peers.build_peer("upernet", load_model_config([tiny_config]), SIZE)


def test_a_peer_that_cannot_be_built_on_the_backbone_is_skipped_with_its_reason(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("EoMT's config takes a plain MLP; this one's is a SwiGluPacked")

    monkeypatch.setattr(peers, "missing_library", lambda name: None)  # as if installed
    monkeypatch.setattr(peers, "EoMTPeer", refuse)
    config = load_model_config([tiny_config])
    result = peers.run_peers(config, SIZE, ["backbone", "hf_eomt"], repeats=1, warmup=0)
    assert set(result["rows"]) == {"backbone"}
    reason = result["skipped"]["hf_eomt"]
    assert reason.startswith("cannot be built on vit_tiny_patch16_224: ") and reason.endswith("SwiGluPacked")
    # Our own rows are not skipped: an error building them is a bug and surfaces.
    monkeypatch.setattr(config, "build", refuse)
    with pytest.raises(ValueError, match="SwiGluPacked"):
        peers.run_peers(config, SIZE, ["vpnext"], repeats=1, warmup=0)
