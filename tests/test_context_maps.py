"""``vpnext context-maps`` (Fig. 4): the affinity rows and feature similarities it draws are the model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.helpers import write_small_checkpoint
from vpnext.cli import main
from vpnext.inference import Segmenter
from vpnext.tools.context_maps import context_maps, input_points, token_of


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpts")
    return {
        "vcr": write_small_checkpoint(folder / "vcr.ckpt", aux="vcr"),
        "ds": write_small_checkpoint(folder / "ds.ckpt", aux="deep_supervision"),
    }


def test_token_of() -> None:
    assert token_of((0, 0), 16, 4) == 0
    assert token_of((17, 40), 16, 4) == 1 * 4 + 2
    assert token_of((63, 63), 16, 4) == 15


def test_maps_are_the_models_affinity_and_block_features(checkpoints: dict[str, Path]) -> None:
    model = Segmenter.from_checkpoint(checkpoints["vcr"]).model.eval()
    image = torch.randn(1, 3, 50, 70)  # padded to 64 x 80: a 4 x 5 grid
    points = [(0, 0), (20, 37), (49, 69)]
    layer = 2
    seen: dict[str, torch.Tensor] = {}
    model.backbone.vit.blocks[layer].register_forward_hook(lambda m, i, o: seen.__setitem__("block", o))
    contexts = []
    model.head.register_forward_hook(lambda m, i, o: contexts.append(o[1]))
    maps = context_maps(model, image, points, layer)
    assert maps["affinity"].shape == maps["similarity"].shape == (3, 4, 5)
    # The affinity the head applies: attention weights are SDPA with the identity as values.
    context = contexts[-1]
    n = context.key.shape[2]
    weights = F.scaled_dot_product_attention(context.query, context.key, torch.eye(n).expand(1, 1, n, n))
    tokens = [token_of(p, 16, 5) for p in points]
    expected = weights[0].mean(0)[tokens].reshape(3, 4, 5).numpy()
    np.testing.assert_allclose(maps["affinity"], expected, atol=1e-6)
    np.testing.assert_allclose(maps["affinity"].sum((1, 2)), 1.0, atol=1e-5)
    # The similarity: cosine between the block's output tokens (prefix tokens dropped).
    block = seen["block"][0, model.backbone.num_prefix_tokens :]  # (20, C)
    cosine = F.cosine_similarity(block[tokens][:, None], block[None], dim=-1).reshape(3, 4, 5).numpy()
    np.testing.assert_allclose(maps["similarity"], cosine, atol=1e-5)
    for row, token in enumerate(tokens):
        assert maps["similarity"][row].reshape(-1)[token] == pytest.approx(1.0, abs=1e-5)


def test_command_draws_the_figure(checkpoints: dict[str, Path], tmp_path: Path, capsys) -> None:
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(image)
    output = tmp_path / "fig4.png"
    args = ["context-maps", "--vcr", str(checkpoints["vcr"]), "--baseline", str(checkpoints["ds"])]
    assert main([*args, "--image", str(image), "--points", "10,10", "40,60", "--output", str(output)]) == 0
    assert f"wrote {output}" in capsys.readouterr().out
    width, height = Image.open(output).size
    assert width == 1000 and height == 520  # 4 panels x 2 points at 100 dpi
    assert main([*args, "--image", str(image), "--points", "70,10", "--output", str(output)]) == 2
    assert "outside the 64x80 image" in capsys.readouterr().err


def test_points_follow_the_test_resize() -> None:
    # CamVid: 480x360 images resized to 240x180 (its test scale) before the model sees them.
    points = [(0, 0), (359, 479), (210, 420)]
    assert input_points(points, (360, 480), (180, 240)) == [(0, 0), (179, 239), (105, 210)]
    assert input_points([(10, 20)], (64, 80), (64, 80)) == [(10, 20)]


def test_command_with_a_test_resize_draws_over_the_original(tmp_path: Path, capsys) -> None:
    """Checkpoints that resize the image at test time, as CamVid's do (480x360 -> 240x180)."""
    data = {"dataset": "synthetic", "normalize_for": "test_vit", "test_scale": [40, 32]}
    ckpts = {
        name: write_small_checkpoint(tmp_path / f"{name}.ckpt", data, aux=aux)
        for name, aux in (("vcr", "vcr"), ("ds", "deep_supervision"))
    }
    resized = Segmenter.from_checkpoint(ckpts["vcr"]).preprocess(np.zeros((64, 80, 3), np.uint8))[0]
    assert resized.shape[-2:] == (32, 40)
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(image)
    output = tmp_path / "fig4.png"
    args = ["context-maps", "--vcr", str(ckpts["vcr"]), "--baseline", str(ckpts["ds"]), "--image", str(image)]
    assert main([*args, "--points", "10,10", "63,79", "--output", str(output)]) == 0
    assert f"wrote {output}" in capsys.readouterr().out and Image.open(output).size == (1000, 520)
