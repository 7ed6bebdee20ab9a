"""What the ``vpnext`` command says: run directories, commands to resume or evaluate, progress lines
in logs, the checkpoint's step, overridden flags, bad checkpoints, version, unknown flags, start-up."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import SMALL_RUN_ARGS, table_rows
from vpnext import __version__
from vpnext.cli import main
from vpnext.tools import report


def run_captured(args: list[str]) -> tuple[int, str, str]:
    """``main(args)`` with stdout (not a terminal here, as under nohup) and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def said(stderr: str, prefix: str) -> list[str]:
    """The ``vpnext: <prefix>...`` lines, without ``vpnext: ``."""
    return [line[len("vpnext: ") :] for line in stderr.splitlines() if line.startswith(f"vpnext: {prefix}")]


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-step fit whose runs folder is given as ``--trainer.default_root_dir``, with its output."""
    root = tmp_path_factory.mktemp("root")
    data = tmp_path_factory.mktemp("data")
    args = ["fit", *SMALL_RUN_ARGS, "--trainer.enable_progress_bar=true", "--run.progress_every=0"]
    args += [f"--data.root={data}", f"--trainer.default_root_dir={root}", "--run.name=said"]
    code, out, err = run_captured(args)
    assert code == 0, err
    (run,) = (root / "said").iterdir()
    return {"root": root, "run": run, "out": out, "err": err, "args": args}


def test_fit_runs_under_default_root_dir(fit: dict) -> None:
    run = fit["run"]
    assert run.parent == fit["root"] / "said" and run.name.endswith("_fit")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run / "results.json").read_text())["run_dir"] == str(run)


def test_fit_prints_run_dir_and_commands_at_start_and_end(fit: dict) -> None:
    run, err = fit["run"], fit["err"]
    assert said(err, "fit starts") == [f"fit starts; run directory: {run}"]
    assert said(err, "fit finished") == [f"fit finished; run directory: {run}"]
    assert err.index("fit starts") < err.index("fit finished")
    resume = said(err, "resume with: ")
    assert len(resume) == 2 and resume[0] == resume[1]
    words = shlex.split(resume[0][len("resume with: ") :])
    assert words[:2] == ["vpnext", "fit"] and words[-4:] == ["--run.dir", str(run), "--ckpt_path", "last"]
    (evaluate,) = said(err, "evaluate with: ")
    expected = ["vpnext", "validate", "--config", str(run / "config.yaml")]
    assert shlex.split(evaluate[len("evaluate with: ") :]) == [
        *expected,
        "--ckpt_path",
        str(run / "checkpoints" / "last.ckpt"),
    ]
    # Where the results and the last validation picture are (SMALL_RUN_ARGS validates at step 2).
    assert said(err, "results: ") == [f"results: {run / 'results.json'}"]
    picture = run / "pictures" / "val_step0000002.png"
    assert said(err, "pictures: ") == [f"pictures: {picture} (image | ground truth | prediction)"]
    assert (run / "results.json").is_file() and picture.is_file()


def test_progress_lines_when_stdout_is_not_a_terminal(fit: dict) -> None:
    lines = said(fit["out"], "step ")
    positions = [line.split(" | ")[:2] for line in lines]
    assert positions == [["step 1/2 (50%)", "epoch 0"], ["step 2/2 (100%)", "epoch 0"]]
    assert all("train/loss " in line and " it/s" in line and "ETA " in line for line in lines)
    assert said(fit["out"], "validation at step 2: val/mIoU ")
    assert "-2" not in fit["out"] and "━" not in fit["out"]  # no bar drawn into the log


@pytest.fixture(scope="module")
def validated(fit: dict) -> dict:
    """The evaluate command the fit printed, run with an architecture flag the checkpoint overrides."""
    (evaluate,) = said(fit["err"], "evaluate with: ")
    words = shlex.split(evaluate[len("evaluate with: ") :])
    code, out, err = run_captured([*words[1:], "--model.hiclr_depth=2", "--model.decoder_dim=32"])
    assert code == 0, err
    (run,) = [p for p in (fit["root"] / "said").iterdir() if p.name.endswith("_validate")]
    return {"run": run, "err": err}


def test_validate_prints_its_run_dir_and_records_the_checkpoint_step(fit: dict, validated: dict) -> None:
    run, ckpt = validated["run"], fit["run"] / "checkpoints" / "last.ckpt"
    assert said(validated["err"], "validate starts") == [
        f"validate starts from {ckpt} (step 2); run directory: {run}"
    ]
    assert said(validated["err"], "validate finished") == [f"validate finished; run directory: {run}"]
    assert said(validated["err"], "results: ") == [f"results: {run / 'results.json'}"]
    results = json.loads((run / "results.json").read_text())
    assert results["evaluated_at_step"] == 2 and results["checkpoint"]["evaluated"] == str(ckpt)


def test_overridden_model_flag_is_named_once(fit: dict, validated: dict) -> None:
    ckpt = fit["run"] / "checkpoints" / "last.ckpt"
    # decoder_dim=32 is what the checkpoint has: no warning for it.
    assert said(validated["err"], "warning: ") == [
        f"warning: --model.hiclr_depth=2 ignored: the checkpoint fixes the architecture and has "
        f"hiclr_depth=3 ({ckpt})"
    ]


def test_report_counts_the_fit_once_and_attaches_its_evaluation(
    fit: dict, validated: dict, tmp_path: Path
) -> None:
    assert report.main([str(fit["root"]), "--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "tables.md").read_text()
    fit_name = f"`said/{fit['run'].name}`"
    (row,) = table_rows(markdown, "All runs")
    assert row.endswith(f"| {fit_name} |")
    (evaluation,) = table_rows(markdown, "Evaluations of checkpoints")
    cells = [c.strip() for c in evaluation.strip("|").split("|")]
    assert cells[:5] == [fit_name, "last.ckpt", "2", "validate", "val"]
    assert cells[6] == f"`said/{validated['run'].name}`"


@pytest.mark.parametrize("content", [b"hello\n", b"", b"PK\x03\x04 not a zip", "state_dict"])
def test_not_a_checkpoint_is_one_clear_line(
    content: bytes | str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "model.ckpt"
    if content == "state_dict":  # readable, but a plain state dict, not a Lightning checkpoint
        torch.save({"weight": torch.ones(2)}, bad)
    else:
        bad.write_bytes(content)
    code = main(["validate", f"--ckpt_path={bad}", f"--run.root={tmp_path / 'runs'}"])
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and "Traceback" not in err and "mmap" not in err
    assert len(lines) == 1 and lines[0].startswith(f"vpnext: error: not a checkpoint: {bad} ("), err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"vpnext {__version__}\n"


@pytest.mark.parametrize(
    ("flag", "suggestion"),
    [
        ("--model.hic=2", "--model.hiclr_depth"),  # a prefix of one option: refused, not set
        ("--model.hiclr_dept=2", "--model.hiclr_depth"),
        ("--trainer.max_step=5", "--trainer.max_steps"),
    ],
)
def test_unknown_flags_are_refused_with_suggestions(
    flag: str, suggestion: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code = main(["fit", flag, f"--run.root={tmp_path}", "--print_config"])
    captured = capfd.readouterr()
    assert code == 2 and "hiclr_depth: 2" not in captured.out
    name = flag.split("=")[0]
    assert f"unrecognized arguments: {name} (did you mean {suggestion}" in captured.err


def test_unknown_command_gets_a_suggestion(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["fitt"]) == 1
    assert "unknown command 'fitt' (did you mean fit?)" in capfd.readouterr().err


def test_help_and_version_start_without_torch() -> None:
    script = (
        "import sys, contextlib, io\n"
        "from vpnext.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    assert main(['--help']) == 0 and main(['--version']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'timm') if m in sys.modules)\n"
        "print(heavy, 'fit' in out.getvalue() and 'context-maps' in out.getvalue())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[] True"
