"""The ``vpnext`` command: fit/validate round trip, run directories, config surface, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import albumentations
import cv2
import pytest
import timm
import torch
import yaml

from tests.helpers import SMALL_RUN_ARGS, only_run_dir, read_json
from vpnext import cli
from vpnext.cli import RunOptions, UserError, main, resolve_run_dir
from vpnext.data.synthetic import SYNTHETIC_CLASSES


#: A fit that takes seconds: 8 train / 4 val synthetic 64x64 images, tiny decoder, 2 steps of
#: batch 4 (one per epoch), validation after each epoch, so the last one sees the final weights.
@pytest.fixture(scope="module")
def fit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    data = tmp_path_factory.mktemp("data")
    args = ["fit", *SMALL_RUN_ARGS, f"--data.root={data}", f"--run.root={root}", "--run.name=cli"]
    assert main(args) == 0
    return only_run_dir(root / "cli", "_fit")


def test_fit_writes_checkpoints_results_and_logs(fit_run: Path) -> None:
    assert (fit_run / "config.yaml").is_file()
    assert (fit_run / "checkpoints" / "best.ckpt").is_file()
    assert (fit_run / "checkpoints" / "last.ckpt").is_file()

    results = read_json(fit_run / "results.json")
    assert results["schema_version"] == 1 and results["stage"] == "fit" and results["split"] == "val"
    assert results["experiment"] == "cli" and Path(results["run_dir"]) == fit_run
    assert 0.0 <= results["mIoU"] <= 1.0
    assert list(results["per_class_iou"]) == list(SYNTHETIC_CLASSES)
    assert results["model"]["aux"] == "vcr" and results["model"]["hiclr_depth"] == 3
    # aux_layers=2 on the 12-block ViT-Tiny resolves to blocks 4 and 8, recorded as indices.
    assert results["model"]["aux_layers"] == 2 and results["aux_block_indices"] == [4, 8]
    assert results["model"]["num_classes"] == len(SYNTHETIC_CLASSES)
    assert results["optimizer_steps"] == 2 and results["images_seen"] == 8
    assert results["seed"] == 0  # seed_everything's default: report groups runs by everything else
    assert 0 < results["inference_gmacs"] < 5  # tiny ViT at 64x64, counted as `vpnext flops` does
    assert results["evaluated_at_step"] == 2
    # The wall time is labelled with what it was measured on.
    assert results["machine"]["threads"] == torch.get_num_threads()
    assert isinstance(results["machine"]["device"], str) and results["machine"]["device"]
    assert results["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # ... and with the versions of the libraries that change the numbers (a fresh install may differ).
    assert results["versions"]["torch"] == torch.__version__
    assert results["versions"]["timm"] == timm.__version__
    assert results["versions"]["albumentations"] == albumentations.__version__
    assert results["versions"]["opencv"] == cv2.__version__
    assert all(results["versions"][name] for name in ("torchvision", "numpy", "pillow", "lightning"))
    # ... and with the code that made it (a git checkout here; None for an installed wheel).
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        assert results["code"]["commit"] == head.stdout.strip()
        assert isinstance(results["code"]["dirty"], bool)
    else:
        assert "code" in results
    assert results["checkpoint"]["last"] == str(fit_run / "checkpoints" / "last.ckpt")
    assert results["best_mIoU"] is not None
    checkpoint = torch.load(results["checkpoint"]["last"], map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    assert results["num_params"] == sum(v.numel() for k, v in state.items() if k.startswith("model."))
    # The data module was told the backbone (linked from model.backbone) and normalised for it.
    data_hparams = checkpoint["datamodule_hyper_parameters"]
    assert data_hparams["normalize_for"] == "vit_tiny_patch16_224" and data_hparams["mean"] is None

    with open(fit_run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    assert {"train/loss", "train/loss_main", "train/loss_aux_0", "train/loss_aux_1", "val/mIoU"} <= columns
    first_lr = next(float(r["lr-AdamW/decoder.decay"]) for r in rows if r["lr-AdamW/decoder.decay"])
    assert first_lr == pytest.approx(6e-5 * 10 * 1e-6)  # step 0 of the warmup: base x mult x ratio
    logged = [float(r["val/mIoU"]) for r in rows if r["val/mIoU"]]
    assert logged[-1] == pytest.approx(results["mIoU"], abs=1e-6)


def test_validate_from_checkpoint_reproduces_fit_miou(fit_run: Path) -> None:
    fitted = read_json(fit_run / "results.json")
    ckpt = fit_run / "checkpoints" / "last.ckpt"
    assert main(["validate", "--config", str(fit_run / "config.yaml"), "--ckpt_path", str(ckpt)]) == 0
    run = only_run_dir(fit_run.parent, "_validate")
    validated = read_json(run / "results.json")
    assert validated["stage"] == "validate" and validated["checkpoint"]["evaluated"] == str(ckpt)
    assert validated["mIoU"] == fitted["mIoU"]
    assert validated["per_class_iou"] == fitted["per_class_iou"]
    assert (run / "config.yaml").is_file() and not (fit_run / "config.yaml").samefile(run / "config.yaml")


def test_checkpoint_fixes_architecture_but_not_evaluation(fit_run: Path) -> None:
    ckpt = fit_run / "checkpoints" / "last.ckpt"
    args = ["validate", "--config", str(fit_run / "config.yaml"), "--ckpt_path", str(ckpt)]
    # hiclr_depth=1 would not fit the weights: the checkpoint's 3 wins; the eval switch is kept.
    overrides = ["--model.hiclr_depth=1", "--model.eval_mode=ms_flip", "--model.eval_scales=[1.0]"]
    assert main([*args, *overrides, "--run.name=msflip"]) == 0
    results = read_json(only_run_dir(fit_run.parent.parent / "msflip", "_validate") / "results.json")
    assert results["model"]["hiclr_depth"] == 3
    assert results["evaluation"]["mode"] == "ms_flip" and results["evaluation"]["flip"] is True


def test_checkpoint_for_other_class_count_is_refused(
    fit_run: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    ckpt = fit_run / "checkpoints" / "last.ckpt"
    data = ["--data.dataset=folder", f"--data.root={tmp_path}"]
    code = main(["validate", "--config", str(fit_run / "config.yaml"), *data, "--ckpt_path", str(ckpt)])
    errors = [line for line in capfd.readouterr().err.splitlines() if "error" in line.lower()]
    assert code == 1 and len(errors) == 1
    assert "ckpt_path" in errors[0] and "6 classes" in errors[0] and "has 3" in errors[0]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("quickstart.yaml", {"backbone": "vit_tiny_patch16_224", "aux": "vcr", "upsampler": "hiclr"}),
        ("vcr_layers.yaml", {"backbone": "vit_large_patch16_384", "aux": "vcr", "upsampler": "bilinear"}),
        ("vitup.yaml", {"backbone": "vit_large_patch16_384", "upsampler": "hiclr", "hiclr_depth": 3}),
    ],
)
def test_experiment_configs_parse(config: str, expected: dict, capsys: pytest.CaptureFixture[str]) -> None:
    experiments = Path(__file__).resolve().parents[1] / "experiments"
    loggers = [str(experiments / "logger" / name) for name in ("csv.yaml", "wandb.yaml")]
    assert main(["fit", "--config", str(experiments / config), "--config", loggers[0], "--print_config"]) == 0
    parsed = yaml.safe_load(capsys.readouterr().out)
    assert expected.items() <= parsed["model"].items()
    assert main(["fit", "--config", str(experiments / config), "--config", loggers[1], "--print_config"]) == 0
    logger_classes = [
        item["class_path"] for item in yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]
    ]
    assert logger_classes[0].endswith("WandbLogger") and logger_classes[1].endswith("CSVLogger")
    if "vit_large" in expected["backbone"]:  # the paper's batch of 16 in total
        assert parsed["trainer"]["devices"] * parsed["data"]["batch_size"] == 16


@pytest.mark.slow
def test_wandb_logger_config_works_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb_config = Path(__file__).resolve().parents[1] / "experiments" / "logger" / "wandb.yaml"
    run = tmp_path / "run"
    args = ["fit", *SMALL_RUN_ARGS, "--config", str(wandb_config), f"--data.root={tmp_path / 'data'}"]
    assert main([*args, f"--run.dir={run}"]) == 0
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb")), "the offline run holds no W&B log to sync"
    assert (run / "metrics.csv").is_file() and (run / "results.json").is_file()


@pytest.mark.parametrize("config", ["vcr_layers.yaml", "vitup.yaml"])
def test_cpu_scale_keeps_the_paper_config_variant(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    experiments = Path(__file__).resolve().parents[1] / "experiments"
    paper = ["fit", "--config", str(experiments / config)]
    assert main([*paper, "--print_config"]) == 0
    original = yaml.safe_load(capsys.readouterr().out)
    assert main([*paper, "--config", str(experiments / "cpu.yaml"), "--print_config"]) == 0
    scaled = yaml.safe_load(capsys.readouterr().out)
    switches = ("aux", "aux_layers", "head", "upsampler", "hiclr_depth", "replay_stop_grad")
    assert {k: scaled["model"][k] for k in switches} == {k: original["model"][k] for k in switches}
    assert scaled["model"]["backbone"] == "vit_tiny_patch16_224" and scaled["trainer"]["accelerator"] == "cpu"
    assert scaled["data"]["dataset"] == "synthetic" and scaled["data"]["slide_crop"] is None


def test_print_config_and_help_show_ablation_switches(capsys: pytest.CaptureFixture[str]) -> None:
    overrides = ["--model.aux=deep_supervision", "--model.hiclr_depth=5", "--model.aux_layers=[4, 8]"]
    assert main(["fit", *overrides, "--model.replay_stop_grad=False", "--print_config"]) == 0
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["aux"] == "deep_supervision" and model["hiclr_depth"] == 5 and model["aux_layers"] == [4, 8]
    assert model["replay_stop_grad"] is False  # W&B's ${args} renders booleans as True/False
    assert {"head", "upsampler", "pyramid_embed", "eval_mode", "lr", "layer_decay"} <= set(model)

    assert main(["fit", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for switch in (
        "--model.aux {none,deep_supervision,naive_align,vcr}",
        "--model.head {context,mask_transformer,mask2former}",
        "--model.upsampler {bilinear,mock_pyramid,mock_hiclr,hiclr}",
        "--model.eval_mode {ss,ms_flip}",
        "--model.aux_layers AUX_LAYERS",
        "--model.hiclr_depth HICLR_DEPTH",
    ):
        assert switch in help_text


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["fit", "--model.bogus=1"], "model.bogus"),
        (["fit", "--model.aux=vcrr"], "model.aux"),
        (["fit", "--model.num_classes=7"], "model.num_classes"),
        (["validate", "--ckpt_path=missing/last.ckpt"], "missing/last.ckpt"),
        (["fit", "--data.dataset=pascal_context", "--data.root=nowhere/VOC2010"], "nowhere/VOC2010"),
        (["fit", "--config=nowhere.yaml"], "nowhere.yaml"),
        (["frobnicate"], "frobnicate"),
        (["data", "frobnicate"], "data prepare"),
    ],
)
def test_bad_input_exits_with_one_line(
    args: list[str], names: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code = main([*args, f"--run.root={tmp_path}"] if args[0] in ("fit", "validate") else args)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("vpnext: error:"), err
    assert names in lines[0]
    assert not any(tmp_path.iterdir())  # no run directory left behind


def test_model_error_is_one_line_unless_debug(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    args = ["fit", "--model.head=mask_transformer", "--model.aux=vcr", f"--run.root={tmp_path}"]
    assert main(args) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "ValueError: aux='vcr' needs head='context'" in errors[0]
    assert not any((tmp_path / "default").iterdir())  # the empty run directory was removed
    with pytest.raises(ValueError, match="needs head='context'"):
        main([*args, "--debug"])


def test_run_dirs_are_never_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.RUN_DIR_ENV, raising=False)
    options = RunOptions(root=str(tmp_path))
    first = resolve_run_dir(options, "exp", "fit")
    second = resolve_run_dir(options, "exp", "fit")  # same second: must still differ
    assert first != second and first.is_dir() and second.is_dir()
    assert first.parent == tmp_path / "exp" and first.name.endswith("_fit")

    (first / "config.yaml").write_text("x")
    with pytest.raises(UserError, match="run.dir"):
        resolve_run_dir(RunOptions(dir=str(first)), "exp", "fit")
    assert resolve_run_dir(RunOptions(dir=str(second)), "exp", "fit") == second  # empty is fine

    # A process Lightning starts for another DDP rank joins its launcher's run.
    monkeypatch.setenv(cli.RUN_DIR_ENV, str(first))
    assert resolve_run_dir(options, "exp", "fit") == first


def test_extra_commands_dispatch_before_lightning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.EXTRA_COMMANDS, "count args", "builtins:len")
    assert main(["count", "args", "a", "b", "c"]) == 3  # the function gets only what follows
    assert main(["data", "prepare", "--help"]) == 0
    assert "vpnext data prepare" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["data prepare", "flops", "benchmark", "sweep", "report"])
def test_every_tool_is_a_vpnext_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command.split(), "--help"]) == 0
    assert f"vpnext {command}" in capsys.readouterr().out
