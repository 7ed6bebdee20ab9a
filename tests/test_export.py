"""``vpnext export``: each format reproduces the PyTorch model within 1e-4, deformable convs included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import write_small_checkpoint
from vpnext.cli import main
from vpnext.inference import Segmenter
from vpnext.tools.export import FORMATS, inference_graph, load_exported

pytestmark = pytest.mark.slow


#: ``test_vit`` is timm's 6-block, 64-wide ViT: the export traces the same code as ViT-L in seconds.
#: One HiCLR iteration: the graph still holds both kinds of deformable conv (the head's and HiCLR's),
#: and each further iteration only repeats the same ops at ~1 s of symbolic shape work per format.
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt", hiclr_depth=1)


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> nn.Module:
    return Segmenter.from_checkpoint(checkpoint).model


def test_offsets_are_not_zero(model: nn.Module) -> None:
    seen = []
    model.head.offset_conv.register_forward_hook(lambda m, i, o: seen.append(o.abs().mean().item()))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert seen[0] > 0.3, "the deformable conv must sample off the grid for the test to mean anything"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_export_matches_pytorch(fmt: str, checkpoint: Path, model: nn.Module, tmp_path: Path, capsys) -> None:
    output = tmp_path / f"model{FORMATS[fmt]}"
    assert main(["export", "--ckpt_path", str(checkpoint), "--format", fmt, "--output", str(output)]) == 0
    assert f"wrote {output}" in capsys.readouterr().out
    meta = json.loads(output.with_name(output.name + ".json").read_text())
    assert meta["input"]["mean"] == [0.5, 0.5, 0.5] and meta["class_names"][0] == "background"
    assert set(meta["max_abs_difference"]) == {"69x71", "64x64", "82x100"}
    assert max(meta["max_abs_difference"].values()) <= 1e-4
    # Independently of the command's own check: another batch size and another odd size.
    run = load_exported(output, fmt)
    x = torch.randn(3, 3, 45, 110)
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (x.shape[0], 4, 45, 110)
    assert (run(x) - expected).abs().max().item() <= 1e-4


def test_graph_has_no_aux_branch_and_no_custom_op(model: nn.Module) -> None:
    graph = inference_graph(model)
    assert not any(name.startswith("aux.") for name in graph.state_dict())
    assert any(name.startswith("aux.") for name in model.state_dict()), "the model itself has aux weights"
    program = torch.export.export(graph, (torch.randn(1, 3, 64, 64),))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("vpnext" in t for t in targets)
    assert any("grid_sampler" in t for t in targets)
    assert not any(name.startswith("aux.") for name in program.state_dict)


def test_existing_output_is_kept(checkpoint: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "model.ts"
    output.write_text("keep me")
    assert (
        main(["export", "--ckpt_path", str(checkpoint), "--format", "torchscript", "--output", str(output)])
        == 1
    )
    assert "--overwrite" in capsys.readouterr().err and output.read_text() == "keep me"


def test_mask2former_exports_for_any_input_size(tmp_path: Path) -> None:
    """Its position embeddings, reference points and level sizes are computed from the maps, not
    from Python numbers, so the traced graph is not fixed to the size it was traced at."""
    checkpoint = write_small_checkpoint(
        tmp_path / "m2f.ckpt", head="mask2former", upsampler="bilinear", aux="none", mask2former_dim=32
    )
    output = tmp_path / "m2f.pt"
    assert (
        main(["export", "--ckpt_path", str(checkpoint), "--format", "torchscript", "--output", str(output)])
        == 0
    )
    run, model = load_exported(output, "torchscript"), Segmenter.from_checkpoint(checkpoint).model
    x = torch.randn(1, 3, 45, 110)
    with torch.no_grad():
        assert (run(x) - model(x)).abs().max().item() <= 1e-4
