"""Sweep files and ``vpnext sweep``: W&B's own commands parse and pick the intended variant; the
local runner's commands, run directories, resumption, overrides and failures."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO_ROOT, VITUP, FakeVpnext, use_fake
from vpnext.tools import sweep as runner

SWEEPS = sorted((REPO_ROOT / "sweeps").glob("*.yaml"))
SWEEP_IDS = [p.stem for p in SWEEPS]
VCR_LAYERS = str(REPO_ROOT / "sweeps/vcr_layers.yaml")


def expected_switches(params: dict) -> dict:
    """The model switches a grid point sets: a dict-valued ``model`` and flat ``model.x`` values."""
    switches = dict(params.get("model", {}))
    switches |= {name.split(".", 1)[1]: value for name, value in params.items() if name.startswith("model.")}
    return switches


# ---- the sweep files --------------------------------------------------------------------------
def test_sweep_files_exist_with_the_paper_grids() -> None:
    assert SWEEP_IDS == ["extras", "vcr_layers", "vitup"]
    sizes = {p.stem: len(runner.grid_points(runner.load_sweep(p))) for p in SWEEPS}
    assert sizes == {"vcr_layers": 6, "vitup": 7, "extras": 4}


@pytest.mark.parametrize("path", SWEEPS, ids=SWEEP_IDS)
def test_sweep_file_is_plain_wandb_grid(path: Path) -> None:
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "vpnext" and sweep["method"] == "grid"
    assert sweep["command"][:3] == ["vpnext", "fit", "--config"] and sweep["command"][-1] == "${args}"
    if not (REPO_ROOT / sweep["command"][3]).is_file():
        pytest.fail(f"{path.name} runs {sweep['command'][3]}, which does not exist")
    assert "${interpreter}" not in sweep["command"]
    # Exactly one varied parameter, without a dot: W&B's grid de-duplication reads a dotted name
    # as a nested key, and a grid over variants must not become a cartesian product.
    varied = [name for name, spec in sweep["parameters"].items() if "values" in spec]
    assert varied == ["model"]
    # W&B renders values with str(): a None (or the string 'None') reaches jsonargparse as 'None'.
    assert not [v for v in _leaves(sweep["parameters"]) if v is None or v == "None"]


def _leaves(node: object) -> list:
    if isinstance(node, dict):
        return [leaf for value in node.values() for leaf in _leaves(value)]
    if isinstance(node, list):
        return [leaf for value in node for leaf in _leaves(value)]
    return [node]


def test_vitup_grid_is_table2() -> None:
    points = runner.grid_points(runner.load_sweep(VITUP))
    rows = [(expected_switches(p)["upsampler"], expected_switches(p)["hiclr_depth"]) for p in points]
    assert rows == [("bilinear", 0), ("mock_hiclr", 2)] + [("hiclr", d) for d in range(1, 6)]
    assert all(
        expected_switches(p)["aux"] == "vcr" and expected_switches(p)["aux_layers"] == 2 for p in points
    )


def test_vcr_layers_grid_is_table1() -> None:
    points = runner.grid_points(runner.load_sweep(VCR_LAYERS))
    rows = [(s["aux"], s["aux_layers"], s["head"], s["upsampler"]) for s in map(expected_switches, points)]
    assert rows == [
        ("deep_supervision", 2, "context", "bilinear"),
        ("none", 2, "mask_transformer", "bilinear"),
        ("none", 2, "mask2former", "bilinear"),
        ("vcr", 1, "context", "bilinear"),
        ("vcr", 2, "context", "bilinear"),
        ("vcr", 3, "context", "bilinear"),
    ]


def test_table1_rows_share_aux_weight_and_segmenter_width_with_make_flops() -> None:
    """No Table I confound: one total auxiliary weight for every row, stated in the sweep file, and
    the mask decoder trained at the width `make flops` counts (neither the sweep nor its base
    config sets a Segmenter width, so both take Segmenter's published one)."""
    sweep = runner.load_sweep(VCR_LAYERS)
    for point in runner.grid_points(sweep):
        switches = expected_switches(point)
        assert switches["aux_weighting"] == "total" and switches["aux_weight"] == 0.4
    base = yaml.safe_load((REPO_ROOT / "experiments/vcr_layers.yaml").read_text())["model"]
    assert base["decoder"] == "paper"
    for config in ("experiments/vcr_layers.yaml", "experiments/vitup.yaml", "Makefile"):
        assert "segmenter_dim" not in (REPO_ROOT / config).read_text(), config
    assert runner.grid_points(runner.load_sweep(VITUP))[0]["model.aux_weighting"] == "total"


# ---- what `wandb agent` would run ---------------------------------------------------------------
def test_agent_command_matches_wandb_rendering() -> None:
    sweep = {
        "program": "train.py",
        "command": ["${env}", "${interpreter}", "${program}", "--fixed", "${args}"],
        "parameters": {},
    }
    params = {"b.flag": True, "a": {"x": 1, "y": "s"}, "c": None}
    assert runner.agent_command(sweep, params) == [
        "/usr/bin/env",
        "python",
        "train.py",
        "--fixed",
        "--b.flag=True",
        "--a={'x': 1, 'y': 's'}",
        "--c=None",
    ]
    with pytest.raises(ValueError, match="args_json_file"):
        runner.agent_command({**sweep, "command": ["x", "${args_json_file}"]}, params)


def _parse_with_cli(command: list[str]) -> dict:
    """Parse a ``vpnext fit ...`` command with the real CLI, in process, without building anything."""
    cli = pytest.importorskip("vpnext.cli")
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main([*command[1:], "--print_config"])
    assert code == 0, f"vpnext rejected: {command}"
    return yaml.safe_load(out.getvalue())


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=SWEEP_IDS)
def test_every_agent_command_parses_and_selects_its_variant(
    path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sweep = runner.load_sweep(path)
    if not (REPO_ROOT / sweep["command"][3]).is_file():
        pytest.skip(f"{sweep['command'][3]} not written yet")
    monkeypatch.chdir(REPO_ROOT)  # the sweep's config path is relative, as for `wandb agent`
    seen = []
    for params in runner.grid_points(sweep):
        command = runner.agent_command(sweep, params)
        config = _parse_with_cli([*command, f"--run.dir={tmp_path / 'unused'}"])
        chosen = {key: config["model"][key] for key in expected_switches(params)}
        assert chosen == expected_switches(params)
        seen.append(tuple(sorted(chosen.items())))
    assert len(set(seen)) == len(seen)  # every grid point is a different model


# ---- the local runner -------------------------------------------------------------------------
def dry_run(capsys: pytest.CaptureFixture, *argv: str) -> list[str]:
    assert runner.main(["--dry-run", *argv]) == 0
    return capsys.readouterr().out.strip().split("\n")


def test_dry_run_lists_the_agent_commands_with_overrides_and_run_dirs(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    sweep = runner.load_sweep(VITUP)
    lines = dry_run(capsys, VITUP, "--runs-dir", str(tmp_path), "--", "--trainer.max_steps=3")
    assert len(lines) == 7
    for line, params in zip(lines, runner.grid_points(sweep), strict=True):
        agent = " ".join(runner._quote(a) for a in runner.agent_command(sweep, params))
        assert line.startswith(agent + " --trainer.max_steps=3 --run.dir=" + str(tmp_path / "vitup") + "/")
    assert lines[4].split("--run.dir=")[1].startswith(str(tmp_path / "vitup/upsampler=hiclr,hiclr_depth=3-"))


def test_run_dirs_are_deterministic_distinct_and_depend_on_overrides(tmp_path: Path) -> None:
    first = [p.run_dir for p in runner.plan_runs(VCR_LAYERS, tmp_path)]
    again = [p.run_dir for p in runner.plan_runs(VCR_LAYERS, tmp_path)]
    other = [p.run_dir for p in runner.plan_runs(VCR_LAYERS, tmp_path, ["--x=1"])]
    assert first == again
    assert len(set(first)) == 6
    assert first[1].name.startswith("aux=none,aux_layers=2,head=mask_transformer-")
    assert not set(first) & set(other)


def test_finished_runs_are_skipped_and_the_rest_run_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    points = runner.plan_runs(VITUP, tmp_path, ["--trainer.max_steps=2"])
    for done in (points[0], points[3]):
        done.run_dir.mkdir(parents=True)
        (done.run_dir / "results.json").write_text(json.dumps({"mIoU": 0.5}))  # complete
    fake = FakeVpnext()
    use_fake(monkeypatch, fake)
    code = runner.main([VITUP, "--runs-dir", str(tmp_path), "--", "--trainer.max_steps=2"])
    assert code == 0
    ran = [argv for argv, _ in fake.calls]
    assert ran == [p.argv for i, p in enumerate(points) if i not in (0, 3)]
    assert all(argv[-2] == "--trainer.max_steps=2" for argv in ran)
    assert "5 done, 2 skipped, 0 failed" in capsys.readouterr().out

    # A second invocation finds everything finished and starts nothing.
    fake.calls.clear()
    assert runner.main([VITUP, "--runs-dir", str(tmp_path), "--", "--trainer.max_steps=2"]) == 0
    assert fake.calls == []


def test_a_failed_run_makes_the_sweep_fail_and_its_files_are_kept_aside(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    use_fake(monkeypatch, FakeVpnext(fail_on="'mock_hiclr'"))
    assert runner.main([VITUP, "--runs-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "6 done, 0 skipped, 1 failed" in out
    failed = next(p for p in runner.plan_runs(VITUP, tmp_path) if "mock" in p.run_dir.name)
    assert f"failed         0  {failed.run_dir}  (exit 1)" in out

    # Retrying moves the failed attempt's files aside (the CLI only writes into an empty folder).
    fake = FakeVpnext()
    use_fake(monkeypatch, fake)
    assert runner.main([VITUP, "--runs-dir", str(tmp_path)]) == 0
    assert len(fake.calls) == 1
    assert (failed.run_dir.parent / f"{failed.run_dir.name}.failed-1" / "config.yaml").is_file()
    assert (failed.run_dir / "results.json").is_file()


def test_gpus_run_one_process_per_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeVpnext()
    use_fake(monkeypatch, fake)
    assert runner.main([VCR_LAYERS, "--runs-dir", str(tmp_path), "--gpus", "0,1"]) == 0
    assert len(fake.calls) == 6
    assert {gpu for _, gpu in fake.calls} <= {"0", "1"}
    assert len(list((tmp_path / "vcr_layers").glob("*.log"))) == 6  # parallel runs log to files


def test_override_of_a_swept_switch_warns(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    argv = [VITUP, "--runs-dir", str(tmp_path), "--dry-run", "--"]
    assert runner.main([*argv, "--model.hiclr_depth=2", "--model.lr=0.1", "--trainer.max_steps=2"]) == 0
    warnings = [line for line in capsys.readouterr().err.split("\n") if "warning" in line]
    assert warnings == ["vpnext sweep: warning: --model.hiclr_depth=2 overrides a swept value in every run"]


def test_a_config_file_that_sets_a_swept_switch_warns(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    argv = [VITUP, "--runs-dir", str(tmp_path), "--dry-run", "--"]
    quickstart, cpu = (str(REPO_ROOT / "experiments" / name) for name in ("quickstart.yaml", "cpu.yaml"))
    assert runner.main([*argv, "--config", quickstart]) == 0
    warnings = [line for line in capsys.readouterr().err.split("\n") if "warning" in line]
    assert warnings == [
        f"vpnext sweep: warning: --config {quickstart} (model.hiclr_depth, model.upsampler) "
        "overrides a swept value in every run"
    ]
    # The CPU-scale file is made to be appended to any sweep: it sets no ablation switch.
    assert runner.main([*argv, f"--config={cpu}"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_export_appends_overrides_to_the_wandb_command(tmp_path: Path) -> None:
    out = tmp_path / "vitup.yaml"
    assert runner.main([VITUP, "--export", str(out), "--", "--trainer.max_steps=5"]) == 0
    exported = runner.load_sweep(out)
    original = runner.load_sweep(VITUP)
    assert exported["command"] == [*original["command"], "--trainer.max_steps=5"]
    assert exported["parameters"] == original["parameters"]


def test_non_grid_sweeps_are_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bayes.yaml"
    bad.write_text("method: bayes\ncommand: [vpnext]\nparameters: {lr: {min: 0.1, max: 1}}\n")
    with pytest.raises(SystemExit):
        runner.main([str(bad), "--dry-run"])
    bad.write_text("method: grid\ncommand: [vpnext]\nparameters: {lr: {min: 0.1, max: 1}}\n")
    with pytest.raises(ValueError, match="exactly one key"):
        runner.load_sweep(bad)


def test_only_runs_the_selected_points_in_sweep_order(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    points = runner.plan_runs(VCR_LAYERS, tmp_path)
    only = ["--only", "aux=vcr,aux_layers=2", "--only", "head=mask_transformer"]
    lines = dry_run(capsys, VCR_LAYERS, "--runs-dir", str(tmp_path), *only)
    # Segmenter comes before VCR-2 in the sweep, and aux=vcr alone would also match VCR-1 and -3.
    assert [line.split("--run.dir=")[1] for line in lines] == [str(points[i].run_dir) for i in (1, 4)]
    with pytest.raises(SystemExit):
        runner.main([VCR_LAYERS, "--dry-run", "--only", "aux_layers=4"])
    assert "--only aux_layers=4 matches no point of the sweep; its points: aux=deep_supervision" in (
        capsys.readouterr().err
    )
