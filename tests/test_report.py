"""``vpnext report``: rows chosen from the switches in results.json, exact Markdown, the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import SETTING, report_model, section, table_rows, write_run
from vpnext.tools import report


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    write_run(root, "a", 0.4011, aux="deep_supervision")
    write_run(root, "b", 0.4222, aux="none", head="mask_transformer")
    write_run(root, "c", 0.4333, aux_layers=1)
    write_run(root, "d", 0.4444)  # VCR 2 layers, bilinear: Table I and Table II
    write_run(root, "e", 0.4555, upsampler="mock_hiclr", hiclr_depth=2)
    write_run(root, "nested/f", 0.4666, upsampler="hiclr", hiclr_depth=3)
    write_run(root, "g", 0.4777, upsampler="hiclr", hiclr_depth=1, aux_layers=[3, 7])  # 2 explicit layers
    write_run(root, "h", 0.3, upsampler="hiclr", hiclr_depth=2, replay_stop_grad=False)  # extras only
    write_run(root, "i", 0.3, aux="naive_align")  # extras only
    return root


def test_table1_rows_exact(runs: Path) -> None:
    markdown, _ = report.render_report(runs)
    assert table_rows(markdown, "Table I") == [
        "| Deep supervision | 2 | 40.11 | – | – | 66.50 |",
        "| Mask decoder w/o pyramid | 2 (implicit) | 42.22 | – | – | 67.88 |",
        "| Our VCR | 1 | 43.33 | – | – | 68.43 |",
        "|  | 2 | 44.44 | – | – | 68.83 |",
        "|  | 3 | – | – | – | 68.56 |",
    ]
    assert (
        section(markdown, "Table I")[2]
        == "| Methods | Num# DS layers | mIoU(%) | GMACs | wall (min) | paper |"
    )


def test_table2_rows_exact(runs: Path) -> None:
    markdown, _ = report.render_report(runs)
    assert table_rows(markdown, "Table II") == [
        "| Bilinear | 0 | 44.44 | – | – | 68.83 |",
        "| Mock pyramid | 2 | 45.55 | – | – | 69.01 |",
        "| Our real pyramid | 1 | 47.77 | – | – | 69.50 |",
        "|  | 2 | – | – | – | 69.87 |",  # the run with replay_stop_grad=False is not the paper's VCR
        "|  | 3 | 46.66 | – | – | 70.00 |",
        "|  | 4 | – | – | – | 69.81 |",
        "|  | 5 | – | – | – | 69.43 |",
    ]
    assert (
        "4 run(s), seeds None: dataset synthetic, backbone vit_tiny_patch16_224, crop 64x64, steps 30."
        in markdown
    )


def test_extra_runs_are_listed_but_not_in_paper_tables(runs: Path) -> None:
    markdown, _ = report.render_report(runs)
    everything = section(markdown, "All runs")
    assert len([line for line in everything if line.startswith("| ")]) == 2 + 9  # header, separator, runs
    assert (
        "| efficient | naive_align | 2 | context | bilinear | 0 | true | null | 30.00 | `i` |" in everything
    )
    assert "| efficient | vcr | 2 | context | hiclr | 2 | false | null | 30.00 | `h` |" in everything


def test_latest_run_wins_a_contested_row_and_mixed_settings_are_flagged(runs: Path) -> None:
    write_run(
        runs,
        "z-smoke",
        0.1,
        finished="2024-01-01T00:00:00+00:00",
        steps=5,
        upsampler="mock_hiclr",
        hiclr_depth=2,
    )
    write_run(runs, "z-late", 0.9, finished="2026-01-01T00:00:00+00:00", steps=5, aux_layers=3)
    markdown, _ = report.render_report(runs)
    assert "| Mock pyramid | 2 | 45.55 | – | – | 69.01 |" in table_rows(
        markdown, "Table II"
    )  # not the older 10.00
    assert "|  | 3 | 90.00 | – | – | 68.56 |" in table_rows(markdown, "Table I")
    notes = "\n".join(section(markdown, "Table II"))
    assert "Mock pyramid 2: 1 run(s) of another configuration not shown" in notes
    assert "runs differ in steps: 30, 5" in "\n".join(section(markdown, "Table I"))


def test_best_metric_and_unevaluated_runs(runs: Path) -> None:
    write_run(runs, "never-evaluated", None, upsampler="hiclr", hiclr_depth=5)
    markdown, _ = report.render_report(runs, metric="best_mIoU")
    rows = table_rows(markdown, "Table II")
    assert rows[0] == "| Bilinear | 0 | 45.44 | – | – | 68.83 |"
    assert rows[-1] == "|  | 5 | – | – | – | 69.43 |"


def test_table3_from_flops_json(runs: Path) -> None:
    """One GMACs column per decoder configuration (paper-width first), beside the paper."""
    flops = runs / "flops"
    flops.mkdir()
    entries = {
        "ds": (report_model(aux="deep_supervision"), 345e9),
        "mask": (report_model(aux="none", head="mask_transformer"), 343e9),
        "mask2former": (report_model(aux="none", head="mask2former"), 1075e9),
        "mask_pyr": (report_model(aux="none", head="mask_transformer", upsampler="mock_pyramid"), 547e9),
        "vcr": (report_model(), 345e9),
        "vpnext": (report_model(upsampler="hiclr", hiclr_depth=3), 1054e9),
    }
    for decoder, scale in [("paper", 1.0), ("efficient", 0.5)]:
        for name, (switches, macs) in entries.items():
            switches = {**switches, "backbone": "vit_large_patch16_384", "decoder": decoder}
            record = {"switches": switches, "macs": macs * scale, "image_size": [480, 480]}
            (flops / f"{decoder}_{name}.json").write_text(json.dumps(record))
    markdown, _ = report.render_report(runs)
    assert section(markdown, "Table III")[2] == (
        "| Methods | Pyramid upsampler | paper, GMACs | efficient, GMACs | paper |"
    )
    assert table_rows(markdown, "Table III") == [
        "| Deep supervision | - | 345.00 | 172.50 | 356.69 |",
        "| Mask decoder | - | 343.00 | 171.50 | 359.99 |",
        "|  | √ | 1075.00 | 537.50 | > 2000 |",
        "| Mask decoder (Segmenter) + FPN mock pyramid | √ | 547.00 | 273.50 | – |",
        "| Our VPNeXt | - | 345.00 | 172.50 | 356.69 |",
        "|  | √ | 1054.00 | 527.00 | 1007.62 |",
    ]
    assert "vit_large_patch16_384 at 480x480" in markdown


def test_main_writes_markdown_and_png(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert report.main([str(runs), "--out", str(out)]) == 0
    assert (out / "tables.md").read_text().startswith("# VPNeXt ablations")
    png = (out / "hiclr_depth.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_main_rejects_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        report.main([str(tmp_path / "nope")])
    assert exit_.value.code == 2


def with_coverage(
    folder: Path, evaluated: int, distinct: int, size: int, partial: bool, repeated: int
) -> None:
    path = folder / "results.json"
    record = json.loads(path.read_text())
    counts = dict(images_evaluated=evaluated, images_distinct=distinct, split_size=size)
    path.write_text(json.dumps({**record, **counts, "partial": partial, "images_repeated": repeated}))


def test_partial_and_repeating_evaluations_are_marked(runs: Path) -> None:
    with_coverage(runs / "d", 7, 7, 7, partial=False, repeated=0)  # whole split once: no mark
    with_coverage(runs / "nested/f", 3, 3, 7, partial=True, repeated=0)
    with_coverage(runs / "e", 8, 7, 7, partial=False, repeated=1)
    markdown, _ = report.render_report(runs)
    assert table_rows(markdown, "Table II")[:4] == [
        "| Bilinear | 0 | 44.44 | – | – | 68.83 |",
        "| Mock pyramid | 2 | 45.55 (1 repeated) | – | – | 69.01 |",
        "| Our real pyramid | 1 | 47.77 | – | – | 69.50 |",
        "|  | 2 | – | – | – | 69.87 |",
    ]
    assert "|  | 3 | 46.66 (partial: 3/7 images) | – | – | 70.00 |" in table_rows(markdown, "Table II")
    notes = "\n".join(section(markdown, "Table II"))
    assert (
        f"- note: Our real pyramid 3: partial evaluation, 3 of 7 val images (`{runs / 'nested/f'}`)" in notes
    )
    assert f"- note: Mock pyramid 2: 8 val images scored, only 7 of them distinct (`{runs / 'e'}`)" in notes
    assert "partial" not in "\n".join(section(markdown, "Table I"))
    everything = section(markdown, "All runs")
    assert (
        "| efficient | vcr | 2 | context | hiclr | 3 | true | null "
        "| 46.66 (partial: 3/7 images) | `nested/f` |" in everything
    )


def _seeded(
    root: Path, name: str, miou: float, seed: int, decoder: str = "efficient", wall: float = 120.0, **sw
):
    folder = write_run(root, name, miou, decoder=decoder, **sw)
    path = folder / "results.json"
    record = json.loads(path.read_text())
    record.update(seed=seed, wall_time_s=wall, inference_gmacs=1.25)
    path.write_text(json.dumps(record))


def test_setting_line_says_which_machines_timed_the_runs(tmp_path: Path) -> None:
    """Wall times from different machines are not comparable: the line under the table names them."""
    root = tmp_path / "runs"
    machines = [{"device": "CPU A", "threads": 2}, {"device": "CPU A", "threads": 2}, None]
    for seed, machine in enumerate(machines):
        _seeded(root, f"ds{seed}", 0.4, seed, aux="deep_supervision")
        if machine is not None:
            path = root / f"ds{seed}" / "results.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "machine": machine}))
    markdown, _ = report.render_report(root)
    assert "Timed on CPU A, 2 threads (2 run(s)); not recorded (1 run(s))." in markdown
    # Runs from before the field: no line at all.
    for seed in (0, 1):
        (root / f"ds{seed}" / "results.json").unlink()
    assert "Timed on" not in report.render_report(root)[0]


def test_seeds_are_one_row_with_mean_std_and_n(tmp_path: Path) -> None:
    """Runs that differ only in seed_everything form one row: mean ± sample std (n), GMACs, wall."""
    root = tmp_path / "runs"
    for seed, value in [(0, 0.40), (1, 0.42), (2, 0.47)]:
        _seeded(root, f"ds{seed}", value, seed, aux="deep_supervision", wall=60.0 * (seed + 1))
    markdown, tables = report.render_report(root)
    # mean 43.00, sample std sqrt(((3)^2 + (1)^2 + (4)^2) / 2) = sqrt(13) = 3.61; wall (1+2+3)/3 = 2.0 min
    assert (
        table_rows(markdown, "Table I")[0]
        == "| Deep supervision | 2 | 43.00 ± 3.61 (n=3) | 1.25 | 2.0 | 66.50 |"
    )
    assert "3 run(s), seeds 0/1/2:" in markdown
    group = report.seed_group(next(iter(tables["efficient"]["table1"].values())))
    assert group.n == 3 and group.by_seed() == {0: 0.40, 1: 0.42, 2: 0.47}


def test_paired_comparisons_match_seeds_and_decoders_get_their_own_tables(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    ds = [0.40, 0.42, 0.47]
    vcr = [0.41, 0.45, 0.49]  # per-seed differences +1, +3, +2 points
    for seed in range(3):
        _seeded(root, f"ds{seed}", ds[seed], seed, aux="deep_supervision")
        _seeded(root, f"vcr{seed}", vcr[seed], seed)
        _seeded(root, f"vcr-paper{seed}", vcr[seed] + 0.05, seed, decoder="paper")
    _seeded(root, "vcr-extra-seed", 0.9, 7)  # no deep-supervision run with seed 7: not paired
    markdown, _ = report.render_report(root)
    assert "## Table I: ablation on VCR (decoder: paper)" in markdown
    assert "## Table I: ablation on VCR (decoder: efficient)" in markdown
    pairs = "\n".join(section(markdown, "Paired comparisons"))
    # differences 1, 3, 2: mean 2.00, std 1.00, 95% t interval 2 ± 4.303 / sqrt(3) = [-0.48, +4.48]
    assert (
        "| VCR (2 layers) − deep supervision (2 layers) (efficient) | +2.00 ± 1.00, 95% CI [-0.48, +4.48], "
        "higher on 3/3 seeds |"
    ) in pairs
    assert (
        "| VCR (2 layers): paper − efficient decoder | +5.00 ± 0.00, 95% CI [+5.00, +5.00], "
        "higher on 3/3 seeds |" in pairs
    )
    assert "| HiCLR 3 − bilinear (efficient) | – |" in pairs


def test_plot_shows_every_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "runs"
    for seed, value in [(0, 0.40), (1, 0.44)]:
        _seeded(root, f"bilinear{seed}", value, seed)
        _seeded(root, f"hiclr{seed}", value + 0.02, seed, upsampler="hiclr", hiclr_depth=3)
    _, tables = report.render_report(root)
    import matplotlib.axes

    points = []
    original = matplotlib.axes.Axes.scatter
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "scatter",
        lambda self, x, y, **kw: points.extend(zip(x, y, strict=True)) or original(self, x, y, **kw),
    )
    out = report.plot_hiclr_depth(tables, tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [(x, round(y, 6)) for x, y in sorted(points)] == [(0, 40.0), (0, 44.0), (3, 42.0), (3, 46.0)]


def write_evaluation(root: Path, name: str, miou: float, checkpoint: Path, stage: str = "validate") -> Path:
    """A ``vpnext validate``/``test`` run of ``checkpoint`` (same switches as the run it evaluated)."""
    folder = write_run(root, name, miou)
    record = json.loads((folder / "results.json").read_text())
    record.update(stage=stage, split="val" if stage == "validate" else "test", optimizer_steps=0)
    record.update(evaluated_at_step=30, checkpoint={"evaluated": str(checkpoint), "best": None, "last": None})
    (folder / "results.json").write_text(json.dumps(record))
    return folder


def test_evaluations_are_attached_to_their_training_run_never_counted_as_one(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    trained = write_run(root, "exp/1_fit", 0.4444)
    write_evaluation(root, "exp/2_validate", 0.1111, trained / "checkpoints" / "last.ckpt")
    write_evaluation(root, "exp/3_test", 0.2222, trained / "checkpoints" / "best.ckpt", stage="test")
    write_evaluation(root, "exp/4_validate", 0.3333, tmp_path / "elsewhere" / "checkpoints" / "last.ckpt")
    markdown, _ = report.render_report(root)
    assert table_rows(markdown, "Table I")[3] == "|  | 2 | 44.44 | – | – | 68.83 |"  # the fit's, alone
    assert [line.rsplit("|", 2)[-2].strip() for line in table_rows(markdown, "All runs")] == ["`exp/1_fit`"]
    assert table_rows(markdown, "Evaluations of checkpoints") == [
        "| `exp/1_fit` | best.ckpt | 30 | test | test | 22.22 | `exp/3_test` |",
        "| `exp/1_fit` | last.ckpt | 30 | validate | val | 11.11 | `exp/2_validate` |",
        "| not under this folder | last.ckpt | 30 | validate | val | 33.33 | `exp/4_validate` |",
    ]


def test_folder_without_a_finished_training_run_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty)]) == 1
    assert capsys.readouterr().err.startswith(f"vpnext report: error: no finished training run under {empty}")
    assert not (empty / "tables.md").exists()
    # Only an evaluation and a run that never finished: still no training run to report.
    write_evaluation(tmp_path / "mixed", "a_validate", 0.3, tmp_path / "x" / "checkpoints" / "last.ckpt")
    (tmp_path / "mixed" / "b_fit").mkdir()
    (tmp_path / "mixed" / "b_fit" / "config.yaml").write_text("model: {}\n")
    assert report.main([str(tmp_path / "mixed")]) == 1
    err = capsys.readouterr().err
    assert "found 1 incomplete run(s) and 1 evaluation(s) of checkpoints" in err


def test_per_class_iou_is_the_mean_over_seeds_best_row_first(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    per_class = {  # (row, seed): IoU of (Sky, Pole)
        ("ds", 0): (0.90, 0.00),
        ("ds", 1): (0.80, 0.10),
        ("vcr", 0): (0.95, 0.20),
        ("vcr", 1): (0.85, 0.30),
    }
    for (row, seed), (sky, pole) in per_class.items():
        switches = {"aux": "deep_supervision"} if row == "ds" else {}
        _seeded(root, f"{row}{seed}", (sky + pole) / 2, seed, **switches)
        path = root / f"{row}{seed}" / "results.json"
        record = json.loads(path.read_text())
        record["per_class_iou"] = {"Sky": sky, "Pole": pole}
        path.write_text(json.dumps(record))
    markdown, _ = report.render_report(root)
    lines = section(markdown, "Per-class IoU")
    assert lines[2] == "| Row | n | Sky | Pole | mIoU |"
    # VCR 2 layers with bilinear fills Table I and Table II, but it is one line; best row first.
    assert [line for line in lines[4:] if line.startswith("| ")] == [
        "| Our VCR 2 | 2 | 90.0 | 25.0 | 57.5 |",
        "| Deep supervision 2 | 2 | 85.0 | 5.0 | 45.0 |",
    ]


def test_table3_without_flops_files_has_one_gmacs_column(runs: Path) -> None:
    markdown, _ = report.render_report(runs)
    lines = section(markdown, "Table III")
    assert lines[2] == "| Methods | Pyramid upsampler | GMACs | paper |"
    assert lines[4] == "| Deep supervision | - | – | 356.69 |"
    assert "No `vpnext flops --json` files in `flops/` (run `make flops`)." in lines


def test_held_out_group_runs_show_both_validation_sets_side_by_side(tmp_path: Path) -> None:
    """Runs validated on held-out groups also scored the official val: one column each."""
    root = tmp_path / "runs"
    held = {"val_groups": ["0006R0"], "train": {"0001TP": 62}, "val": {"0006R0": 101}}
    for seed, (unseen, official) in enumerate([(0.30, 0.50), (0.32, 0.54)]):
        folder = write_run(root, f"ds{seed}", unseen, aux="deep_supervision")
        path = folder / "results.json"
        record = json.loads(path.read_text())
        record.update(seed=seed, data={**SETTING, "groups": held}, official_val={"mIoU": official})
        path.write_text(json.dumps(record))
    markdown, _ = report.render_report(root)
    assert section(markdown, "Table I")[2] == (
        "| Methods | Num# DS layers | mIoU(%) | official val mIoU(%) | GMACs | wall (min) | paper |"
    )
    assert table_rows(markdown, "Table I")[0] == (
        "| Deep supervision | 2 | 31.00 ± 1.41 (n=2) | 52.00 ± 2.83 (n=2) | – | – | 66.50 |"
    )
    assert "val groups 0006R0." in markdown
    # A same-video run in the same folder is another protocol: flagged, never averaged in.
    write_run(root, "old", 0.9, finished="2024-01-01T00:00:00+00:00", aux="deep_supervision")
    markdown, _ = report.render_report(root)
    assert table_rows(markdown, "Table I")[0].startswith("| Deep supervision | 2 | 31.00 ± 1.41 (n=2) |")
    assert "runs differ in val: groups 0006R0, split" not in markdown  # the old run is not shown
    assert "1 run(s) of another configuration not shown" in markdown


def test_the_fpn_mock_pyramid_gets_its_own_row_not_the_papers(runs: Path) -> None:
    write_run(runs, "fpn", 0.4321, upsampler="mock_pyramid")
    rows = table_rows(report.render_report(runs)[0], "Table II")
    assert rows[:3] == [
        "| Bilinear | 0 | 44.44 | – | – | 68.83 |",
        "| Mock pyramid (FPN, no HiCLR) | 0 | 43.21 | – | – | – |",
        "| Mock pyramid | 2 | 45.55 | – | – | 69.01 |",
    ]


def test_lightnings_bookkeeping_in_the_hparams_does_not_split_a_row(tmp_path: Path) -> None:
    """Runs saved before and after the redesign differ only by Lightning's ``_instantiator`` key:
    seeds of one configuration, averaged in one row."""
    root = tmp_path / "runs"
    for seed, miou, extra in [
        (0, 0.30, {"_instantiator": "lightning.pytorch.cli.instantiate_module"}),
        (1, 0.32, {}),
    ]:
        path = write_run(root, f"s{seed}", miou, aux="deep_supervision") / "results.json"
        record = json.loads(path.read_text())
        record.update(seed=seed, hparams={**record["model"], "lr": 0.002, **extra})
        path.write_text(json.dumps(record))
    markdown, _ = report.render_report(root)
    assert table_rows(markdown, "Table I")[0].startswith("| Deep supervision | 2 | 31.00 ± 1.41 (n=2) |")
    assert "another configuration" not in markdown
