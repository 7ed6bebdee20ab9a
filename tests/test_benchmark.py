"""``vpnext benchmark``: the command end to end on a tiny model, and its timing/memory helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import TINY
from vpnext.cli import main as cli_main
from vpnext.models import VPNeXt
from vpnext.models.macs import count_macs
from vpnext.tools import benchmark
from vpnext.tools.benchmark import BackboneOnly, memory_method, peak_memory_mb, per_module_report


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    model = {"backbone": "vit_tiny_patch16_224", "decoder_dim": 32, "pyramid_dim": 16, "num_heads": 4}
    path.write_text(yaml.safe_dump({"model": {**model, "hiclr_depth": 1}, "data": {"dataset": "synthetic"}}))
    return path


@pytest.mark.slow
def test_benchmark_command_writes_every_figure(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--config", str(tiny_config), "--image-size", "32", "48", "--repeats", "2", "--warmup", "1"]
    assert cli_main(["benchmark", *args, "--model.num_classes=4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    env = result["environment"]
    assert env["device"] == "cpu" and env["threads"] == torch.get_num_threads()
    assert env["torch"] == torch.__version__ and env["memory_method"]
    assert result["image_size"] == [32, 48] and result["config"]["num_classes"] == 4
    assert set(result["inference"]) == {"model", "backbone", "deep_supervision"}
    for row in [*result["inference"].values(), *(result["training"][a] for a in ("deep_supervision", "vcr"))]:
        assert {"median_ms", "p90_ms", "images_per_s", "peak_mem_mb"} <= set(row)
        assert 0 < row["median_ms"] <= row["p90_ms"]
        assert row["images_per_s"] == pytest.approx(1e3 / row["median_ms"])
    expected = {
        "model_vs_backbone",
        "deep_supervision_vs_backbone",
        "model_vs_deep_supervision",
        "gmacs_model_vs_backbone",
        "gmacs_model_vs_deep_supervision",
        "train_vcr_vs_deep_supervision",
    }
    assert set(result["ratios"]) == expected
    assert all(math.isfinite(v) and v > 0 for v in result["ratios"].values())
    # HiCLR adds decoder work on top of the ViT; the DS baseline's head is cheaper than the model's.
    gmacs = {name: row["gmacs"] for name, row in result["inference"].items()}
    assert gmacs["model"] > gmacs["deep_supervision"] > gmacs["backbone"] > 0


def test_benchmark_rejects_unknown_options(tiny_config: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["benchmark", "--config", str(tiny_config), "--trainer.max_steps=1"]) == 2
    assert "only --model" in capsys.readouterr().err


def test_backbone_only_is_the_models_vit_pass() -> None:
    model = VPNeXt(3, **TINY).eval()
    images = torch.randn(1, 3, 40, 56)  # not a multiple of 16: padded like the model pads
    with torch.no_grad():
        expected = model.backbone(model.backbone.patch_proj(torch.nn.functional.pad(images, (0, 8, 0, 8))))[1]
        torch.testing.assert_close(BackboneOnly(model)(images), expected, rtol=0, atol=0)
    backbone_macs = count_macs(model, images, groups={"backbone": "backbone"}).by_group["backbone"]
    assert count_macs(BackboneOnly(model), images).macs == backbone_macs


def test_time_interleaved_warms_up_then_rotates_the_order() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = benchmark.time_interleaved(fns, repeats=3, warmup=1, device=torch.device("cpu"))
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_cpu_peak_memory_counts_live_tensors_at_the_peak() -> None:
    assert "profile_memory" in memory_method(torch.device("cpu"))
    cpu = torch.device("cpu")
    kept = torch.ones(16 * 2**20 // 4)  # allocated before the call: not counted

    def two_live_then_one() -> None:
        a = torch.ones(64 * 2**20 // 4)  # 64 MiB
        b = a * 2  # + 64 MiB: the peak, 128 MiB
        del a
        c = b + 1  # 64 + 64 MiB again, never more
        del b, c

    assert peak_memory_mb(two_live_then_one, cpu) == pytest.approx(128, abs=1)
    assert peak_memory_mb(lambda: None, cpu) < 0.01
    assert peak_memory_mb(lambda: kept.add_(1), cpu) < 0.01  # in place: nothing new (a scalar at most)


def test_per_module_report_covers_the_decoder_and_sums_to_the_total() -> None:
    model = VPNeXt(3, **{**TINY, "hiclr_depth": 2})
    images = torch.randn(1, 3, 32, 32)
    rows = per_module_report(model, images, repeats=1, warmup=0)
    expected = {"backbone", "pyramid_embed", "upsampler.steps", "head.aggregation", "head.classifier"}
    assert expected <= set(rows)
    assert all(row["ms"] >= 0 for row in rows.values())
    total = sum(row["gmacs"] for row in rows.values())
    assert total == pytest.approx(count_macs(model.eval(), images).macs / 1e9)
    assert rows["upsampler.steps"]["gmacs"] > 0


@pytest.mark.slow
def test_bf16_flag_runs_on_cpu(tiny_config: Path) -> None:
    args = ["--config", str(tiny_config), "--image-size", "32", "32", "--repeats", "1", "--warmup", "0"]
    assert benchmark.main([*args, "--bf16", "--model.num_classes=4"]) == 0
