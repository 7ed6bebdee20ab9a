"""``vpnext report``: the paper's Tables I–III from finished runs, plus a plot of mIoU vs HiCLR depth.

Every ``results.json`` under ``RUNS_DIR`` is read and placed in a table row by its ablation
switches (the ``model`` block of ``results.json``), never by its directory name, so runs started
by ``vpnext sweep``, ``wandb agent`` or by hand all count. One run can fill rows of two tables
(VCR with 2 layers and the bilinear upsampler is both Table I's "Our VCR, 2" and Table II's
"Bilinear, 0", as in the paper).

* Table I (VCR): upsampler bilinear (or HiCLR depth 0); deep supervision, the Segmenter mask
  decoder and VCR, by number of auxiliary layers.
* Table II (ViTUp): VCR with 2 layers; bilinear, mock pyramid and HiCLR depth 1–5.
* Table III (cost): GMACs from the ``vpnext flops --json`` files under ``RUNS_DIR/flops``.
* All runs: every run with its switches, including ablations the paper has no table for.

Paper rows without a run show ``–``. Runs that differ only in their seed (``seed_everything``) are
one configuration: the row shows their mean ± sample std and n (:mod:`vpnext.tools.seeds`), the
mean wall time and the inference GMACs. When runs of several configurations land in one row (say,
a smoke test and a full run), the configuration of the run that finished last is shown and a
note says so; runs whose dataset, backbone, crop or step count differ from each other are listed
under the table, since their numbers are not comparable. Each decoder configuration (``paper``,
``efficient``) gets its own Tables I and II, and the pairs that decide the paper's claims (VCR-2 vs
deep supervision, HiCLR-3 vs bilinear and vs mock pyramid, paper vs efficient decoder) are
compared seed by seed. A number that is not over the whole split, each image once, says so where it is
shown: a run whose ``results.json`` records a partial evaluation (``limit_val_batches``) or
repeated images shows e.g. ``41.20 (partial: 3/7 images)`` and gets a note under the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from vpnext.tools.evaluations import evaluations_section
from vpnext.tools.runs import (
    FLOPS_DIR,
    MASK2FORMER_ROW,
    PAPER_GFLOPS,
    PAPER_MIOU,
    TABLE1_ROWS,
    TABLE2_ROWS,
    TABLE3_ROWS,
    RowKey,
    Run,
    incomplete_runs,
    load_checkpoint_evaluations,
    load_flops,
    load_runs,
    table1_row,
    table2_row,
    table3_row,
)
from vpnext.tools.seeds import SeedGroup, paired

__all__ = ["Run", "load_flops", "load_runs", "main", "render_report"]

# The loading and the row of each run live in vpnext.tools.runs; these names are the report's API.


MISSING = "–"
PAPER_NOTE = "`paper`: the paper's figure (Pascal Context 59, ViT-L/16, 480x480, 20k iterations)."


# ---- rendering ----------------------------------------------------------------------------------
def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub Markdown table; a method repeated on consecutive rows is written once, as in the paper."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    previous = None
    for row in rows:
        cells = list(row)
        if cells[0] == previous:
            cells[0] = ""
        else:
            previous = cells[0]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: The runs of one row: one configuration, one run per seed (empty tuple: no run).
RowRuns = tuple[Run, ...]


def _fill(
    runs: Sequence[Run], row_of: Callable[[dict[str, Any]], RowKey | None], paper_rows: Sequence[RowKey]
) -> tuple[dict[RowKey, RowRuns], list[str]]:
    """Place runs in rows (paper rows always present); notes on contested rows and mixed settings.

    A row shows one configuration with all its seeds: the configuration of the run that finished
    last; other configurations matching the row are named in a note.
    """
    rows: dict[RowKey, RowRuns] = dict.fromkeys(paper_rows, ())
    matched: dict[RowKey, list[Run]] = {}
    for run in runs:
        key = row_of(run.model)
        if key is not None:
            matched.setdefault(key, []).append(run)
    notes = []
    for key, candidates in matched.items():
        candidates.sort(key=lambda r: r.finished_at)
        chosen = candidates[-1].config_key
        rows[key] = tuple(r for r in candidates if r.config_key == chosen)
        others = [r for r in candidates if r.config_key != chosen]
        if others:
            names = ", ".join(str(r.path.parent) for r in others)
            notes.append(
                f"{key[1]} {key[2]}: {len(others)} run(s) of another configuration not shown "
                f"(the latest configuration is): {names}"
            )
        seeds = [r.seed for r in rows[key]]
        if len(set(seeds)) < len(seeds):
            notes.append(f"{key[1]} {key[2]}: {len(seeds)} runs but seeds {sorted(map(str, seeds))} repeat")
    for key, group in rows.items():
        for run in group:
            if run.coverage_note:
                notes.append(f"{key[1]} {key[2]}: {run.coverage_note} (`{run.path.parent}`)")
    shown = [r for group in rows.values() for r in group]
    for index, name in enumerate(("dataset", "backbone", "crop", "steps", "val")):
        values = sorted({str(r.setting[index][1]) for r in shown})
        if len(values) > 1:
            notes.append(f"runs differ in {name}: {', '.join(values)} (numbers not comparable)")
    return dict(sorted(rows.items(), key=lambda item: item[0][0])), notes


def _setting_line(groups: Iterable[RowRuns]) -> str:
    shown = [r for group in groups for r in group]
    if not shown:
        return "No runs yet."
    parts = []
    for index, (name, _) in enumerate(shown[0].setting):
        values = sorted({str(r.setting[index][1]) for r in shown})
        if name == "val" and values == ["split"]:
            continue  # the dataset's val split, as ever: nothing to say
        parts.append(f"{name} {'/'.join(values)}")
    seeds = sorted({str(r.seed) for r in shown})
    line = f"{len(shown)} run(s), seeds {'/'.join(seeds)}: " + ", ".join(parts) + "."
    if any(r.machine for r in shown):  # results.json files from before the field have no machine
        machines = Counter(r.machine or "not recorded" for r in shown)
        line += " Timed on " + "; ".join(f"{name} ({n} run(s))" for name, n in sorted(machines.items())) + "."
    return line


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.2f}"


def seed_group(runs: RowRuns) -> SeedGroup | None:
    """The evaluated runs of a row as a :class:`SeedGroup` (``None`` if none evaluated)."""
    scored = [r for r in runs if r.miou is not None]
    if not scored:
        return None
    gmacs = next((r.gmacs for r in scored if r.gmacs is not None), None)
    walls = tuple(float(r.wall_time_s) for r in scored if r.wall_time_s is not None)
    return SeedGroup(
        tuple(float(r.miou) for r in scored), tuple(r.seed for r in scored), tuple(scored), walls, gmacs
    )


def _score(runs: RowRuns | Run | None) -> str:
    """Mean ± std (n) as percentages, flagged when an evaluation is not over the whole split once."""
    if isinstance(runs, Run):
        runs = (runs,)
    group = seed_group(runs or ())
    if group is None:
        return MISSING
    marks = sorted({r.coverage_mark for r in group.runs if r.coverage_mark})
    return group.format() + (f" ({'; '.join(marks)})" if marks else "")


def _cost_cells(runs: RowRuns) -> list[str]:
    group = seed_group(runs)
    if group is None:
        return [MISSING, MISSING]
    gmacs = MISSING if group.gmacs is None else f"{group.gmacs:.2f}"
    wall = group.mean_wall_time
    return [gmacs, MISSING if wall is None else f"{wall / 60:.1f}"]


def _official_score(runs: RowRuns) -> str:
    """Mean ± std (n) of the official val split scored beside held-out groups."""
    scored = [r for r in runs if r.official_miou is not None]
    if not scored:
        return MISSING
    return SeedGroup(
        tuple(float(r.official_miou) for r in scored), tuple(r.seed for r in scored), tuple(scored)
    ).format()


def _miou_section(title: str, second: str, filled: dict[RowKey, RowRuns], notes: list[str]) -> str:
    # Runs validated on held-out groups also scored the official val split: both, side by side.
    both = any(r.official_miou is not None for runs in filled.values() for r in runs)
    header = ["Methods", second, "mIoU(%)", *(["official val mIoU(%)"] if both else [])]
    table = markdown_table(
        [*header, "GMACs", "wall (min)", "paper"],
        [
            (
                key[1],
                key[2],
                _score(runs),
                *([_official_score(runs)] if both else []),
                *_cost_cells(runs),
                PAPER_MIOU.get(key[1:], MISSING),
            )
            for key, runs in filled.items()
        ],
    )
    lines = [f"## {title}", "", table, "", _setting_line(filled.values()), PAPER_NOTE]
    lines.append(
        "mIoU: mean ± sample std over seeds (n runs that differ only in `seed_everything`); GMACs: "
        "inference MACs at the training crop; wall: mean minutes per run (training + evaluation)."
    )
    if both:
        lines.append(
            "mIoU is over the validation set the setting names (`val groups ...`: every frame of "
            "groups held out of training, i.e. unseen scenes); official val: the rest of the "
            "dataset's val split, scored by the same runs (it may share groups with training)."
        )
    lines += [f"- note: {note}" for note in notes]
    return "\n".join(lines)


#: The comparisons that decide the paper's claims: (label, table, row a, row b).
Cell = tuple[str, tuple[str, str]]  # (table, (method, column))
PAIRS: list[tuple[str, Cell, Cell]] = [
    (
        "VCR (2 layers) − deep supervision (2 layers)",
        ("table1", ("Our VCR", "2")),
        ("table1", ("Deep supervision", "2")),
    ),
    (
        "VCR (2 layers) − mask decoder w/o pyramid",
        ("table1", ("Our VCR", "2")),
        ("table1", ("Mask decoder w/o pyramid", "2 (implicit)")),
    ),
    ("VCR (2 layers) − VCR (1 layer)", ("table1", ("Our VCR", "2")), ("table1", ("Our VCR", "1"))),
    ("VCR (3 layers) − VCR (2 layers)", ("table1", ("Our VCR", "3")), ("table1", ("Our VCR", "2"))),
    ("HiCLR 3 − bilinear", ("table2", ("Our real pyramid", "3")), ("table2", ("Bilinear", "0"))),
    ("HiCLR 3 − HiCLR 1", ("table2", ("Our real pyramid", "3")), ("table2", ("Our real pyramid", "1"))),
    ("HiCLR 4 − HiCLR 3", ("table2", ("Our real pyramid", "4")), ("table2", ("Our real pyramid", "3"))),
    ("HiCLR 5 − HiCLR 4", ("table2", ("Our real pyramid", "5")), ("table2", ("Our real pyramid", "4"))),
    ("HiCLR 3 − mock pyramid", ("table2", ("Our real pyramid", "3")), ("table2", ("Mock pyramid", "2"))),
    (
        "VPNeXt (HiCLR 3) − mask decoder with pyramid (Mask2Former)",
        ("table2", ("Our real pyramid", "3")),
        ("table1", MASK2FORMER_ROW[1:]),
    ),
]


def _row(table: dict[RowKey, RowRuns], name: tuple[str, str]) -> RowRuns:
    return next((runs for key, runs in table.items() if key[1:] == name), ())


def _paired_section(tables: dict[str, dict[str, dict[RowKey, RowRuns]]]) -> str:
    """Per-seed differences of the pairs that decide the paper's claims; paper vs efficient decoder."""
    lines = []
    for decoder, by_table in tables.items():
        for label, (table_a, a), (table_b, b) in PAIRS:
            ga, gb = seed_group(_row(by_table[table_a], a)), seed_group(_row(by_table[table_b], b))
            diff = None if ga is None or gb is None else paired(ga, gb)
            lines.append((f"{label} ({decoder})", MISSING if diff is None else diff.format()))
    if "paper" in tables and "efficient" in tables:
        for table, row, label in [
            ("table2", ("Our real pyramid", "3"), "VPNeXt (HiCLR 3)"),
            ("table1", ("Our VCR", "2"), "VCR (2 layers)"),
        ]:
            ga = seed_group(_row(tables["paper"][table], row))
            gb = seed_group(_row(tables["efficient"][table], row))
            diff = None if ga is None or gb is None else paired(ga, gb)
            lines.append((f"{label}: paper − efficient decoder", MISSING if diff is None else diff.format()))
    table = markdown_table(["Comparison (a − b)", "mIoU difference, points"], lines)
    note = (
        "Differences are taken seed by seed (the same seed: the same initialisation and data order) "
        "over the seeds both rows ran; ± is the sample std of the differences, the interval a "
        "two-sided 95% Student-t interval over the n pairs."
    )
    return "\n".join(["## Paired comparisons over seeds", "", table, "", note])


def _per_class_section(tables: dict[str, dict[str, dict[RowKey, RowRuns]]]) -> str:
    """IoU of every class for each filled row of Tables I and II (mean over the row's seeds), best row first.

    A run shared by two tables (VCR 2 layers, bilinear) is one line. Empty if no run recorded
    per-class IoU.
    """
    lines: list[tuple[float, list[str]]] = []
    seen: set[tuple[Path, ...]] = set()
    classes: list[str] = []
    for decoder, by_table in tables.items():
        for table in ("table1", "table2"):
            for key, runs in by_table[table].items():
                group = seed_group(runs)
                scored = [r for r in runs if r.miou is not None and r.per_class]
                paths = tuple(r.path for r in runs)
                if group is None or not scored or paths in seen:
                    continue
                seen.add(paths)
                classes = classes or [name for name, _ in scored[0].per_class]
                per_class = [dict(r.per_class) for r in scored]
                cells = [
                    MISSING
                    if any(c not in pc or pc[c] is None for pc in per_class)
                    else f"{100 * sum(pc[c] for pc in per_class) / len(per_class):.1f}"
                    for c in classes
                ]
                label = f"{key[1]} {key[2]} ({decoder})" if len(tables) > 1 else f"{key[1]} {key[2]}"
                lines.append((group.mean, [label, str(len(scored)), *cells, f"{100 * group.mean:.1f}"]))
    if not lines:
        return ""
    lines.sort(key=lambda item: -item[0])
    table = markdown_table(["Row", "n", *classes, "mIoU"], [cells for _, cells in lines])
    note = (
        "IoU (%) of each class, mean over the row's seeds; rows by mean mIoU, best first. Classes a "
        "row's runs did not all record show –."
    )
    return "\n".join(["## Per-class IoU", "", table, "", note])


def _decoder_of(switches: dict[str, Any]) -> str:
    # flops files from before the named decoder configurations had the efficient widths.
    return str(switches.get("decoder") or "efficient")


def _flops_section(records: Sequence[dict[str, Any]]) -> str:
    """Table III with one GMACs column per decoder configuration (paper-width first), beside the paper."""
    decoders = sorted({_decoder_of(r["switches"]) for r in records}, key=lambda d: (d != "paper", d))
    rows: dict[RowKey, dict[str, dict[str, Any]]] = {key: {} for key in TABLE3_ROWS}
    for record in records:
        key = table3_row(record["switches"])
        if key is not None:
            rows.setdefault(key, {})[_decoder_of(record["switches"])] = record
    header = ["Methods", "Pyramid upsampler", *([f"{d}, GMACs" for d in decoders] or ["GMACs"]), "paper"]
    table = markdown_table(
        header,
        [
            (
                k[1],
                k[2],
                *(MISSING if d not in found else f"{found[d]['macs'] / 1e9:.2f}" for d in decoders or [""]),
                PAPER_GFLOPS.get(k[1:], MISSING),
            )
            for k, found in sorted(rows.items())
        ],
    )
    shown = [r for found in rows.values() for r in found.values()]
    sizes = sorted({"x".join(map(str, r.get("image_size", []))) for r in shown})
    backbones = sorted({str(r["switches"].get("backbone")) for r in shown})
    info = (
        f"Inference MACs (eval mode) of {'/'.join(backbones)} at {'/'.join(sizes)}; `paper` decoder: the "
        "widths that reproduce Table III, `efficient`: the narrow default (docs/model.md)."
        if backbones
        else f"No `vpnext flops --json` files in `{FLOPS_DIR}/` (run `make flops`)."
    )
    note = (
        "`paper`: the paper's figure (ViT-L/16, 480x480; its `> 2000` row is Mask2Former-based, ours is "
        "Mask2Former on ViTDet's simple feature pyramid, docs/model.md)."
    )
    return "\n".join(["## Table III: computational cost", "", table, "", info, note])


def _all_runs_section(runs: Sequence[Run], root: Path) -> str:
    switches = ["decoder", "aux", "aux_layers", "head", "upsampler", "hiclr_depth", "replay_stop_grad"]
    rows = sorted(
        [
            run.decoder,
            *(_cell(run.model.get(s)) for s in switches[1:]),
            _cell(run.seed),
            _score(run),
            f"`{run.path.parent.relative_to(root)}`",
        ]
        for run in runs
    )
    header = [*switches, "seed", "mIoU(%)", "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(["## All runs", "", *lines])


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def render_report(
    runs_dir: str | Path, metric: str = "mIoU"
) -> tuple[str, dict[str, dict[str, dict[RowKey, RowRuns]]]]:
    """The Markdown report and the filled Table I/II rows per decoder configuration (for the plot)."""
    root = Path(runs_dir)
    runs = load_runs(root, metric)
    decoders = sorted({r.decoder for r in runs}, key=lambda d: (d != "paper", d)) or ["efficient"]
    sections = [f"# VPNeXt ablations ({metric}, single scale)"]
    tables: dict[str, dict[str, dict[RowKey, RowRuns]]] = {}
    for decoder in decoders:
        mine = [r for r in runs if r.decoder == decoder]
        table1, notes1 = _fill(mine, table1_row, TABLE1_ROWS)
        table2, notes2 = _fill(mine, table2_row, TABLE2_ROWS)
        tables[decoder] = {"table1": table1, "table2": table2}
        suffix = f" (decoder: {decoder})"
        sections.append(_miou_section("Table I: ablation on VCR" + suffix, "Num# DS layers", table1, notes1))
        sections.append(
            _miou_section("Table II: ablation on ViTUp" + suffix, "Num# HiCLR layers", table2, notes2)
        )
    sections += [
        _paired_section(tables),
        _per_class_section(tables),
        _flops_section(load_flops(root)),
        _all_runs_section(runs, root),
    ]
    training_runs = [r.path.parent for r in runs]
    sections.append(evaluations_section(load_checkpoint_evaluations(root), training_runs, root))
    return "\n\n".join(s for s in sections if s) + "\n", tables


def plot_hiclr_depth(tables: dict[str, dict[str, dict[RowKey, RowRuns]]], out: Path) -> Path:
    """mIoU against HiCLR depth (0 = bilinear), mean ± std with every seed's run as a dot, per
    decoder configuration; the mock pyramid as a reference line with its spread as a band."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for index, (decoder, by_table) in enumerate(tables.items()):
        colour = f"C{index}"
        depths, means, stds, mock = [], [], [], None
        for key, runs in by_table["table2"].items():
            group = seed_group(runs)
            if group is None:
                continue
            if key[1] == "Mock pyramid":
                mock = group
                continue
            depth = int(key[2])
            depths.append(depth)
            means.append(100 * group.mean)
            stds.append(100 * (group.std or 0.0))
            ax.scatter([depth] * group.n, [100 * v for v in group.values], s=10, color=colour, alpha=0.5)
        if depths:
            ax.errorbar(
                depths,
                means,
                yerr=stds,
                marker="o",
                capsize=3,
                color=colour,
                label=f"{decoder}: bilinear (0) / real pyramid + HiCLR",
            )
        if mock is not None:
            centre, spread = 100 * mock.mean, 100 * (mock.std or 0.0)
            ax.axhline(centre, linestyle="--", color=colour, alpha=0.8, label=f"{decoder}: mock pyramid")
            if spread:
                ax.axhspan(centre - spread, centre + spread, color=colour, alpha=0.1)
    ax.set_xlabel("Num# HiCLR layers")
    ax.set_ylabel("mIoU (%)")
    ax.set_xticks(range(6))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpnext report",
        description="Write the paper's Tables I–III (Markdown) and a plot from finished runs.",
    )
    parser.add_argument("runs_dir", help="folder searched (recursively) for results.json files")
    parser.add_argument("--out", help="output folder for tables.md and hiclr_depth.png (default: RUNS_DIR)")
    parser.add_argument(
        "--metric",
        choices=["mIoU", "best_mIoU"],
        default="mIoU",
        help="mIoU at the end of training (the paper's protocol) or the best validation mIoU",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``vpnext report RUNS_DIR [--out DIR] [--metric mIoU|best_mIoU]``; returns an exit code."""
    parser = build_parser()
    options = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    root = Path(options.runs_dir)
    if not root.is_dir():
        parser.error(f"{root} is not a folder")
    if not load_runs(root, options.metric):
        ignored = incomplete_runs(root)
        evaluations = load_checkpoint_evaluations(root)
        found = [f"{len(ignored)} incomplete run(s)"] if ignored else []
        found += [f"{len(evaluations)} evaluation(s) of checkpoints"] if evaluations else []
        print(
            f"vpnext report: error: no finished training run under {root} (no results.json of a "
            f"`vpnext fit`{'; found ' + ' and '.join(found) if found else ''}); nothing written",
            file=sys.stderr,
        )
        return 1
    out = Path(options.out) if options.out else root
    out.mkdir(parents=True, exist_ok=True)
    markdown, tables = render_report(root, options.metric)
    (out / "tables.md").write_text(markdown)
    plot_hiclr_depth(tables, out / "hiclr_depth.png")
    print(markdown)
    print(f"vpnext report: wrote {out / 'tables.md'} and {out / 'hiclr_depth.png'}", file=sys.stderr)
    ignored = incomplete_runs(root)
    if ignored:
        names = ", ".join(str(p.relative_to(root)) for p in ignored[:5])
        names += ", ..." if len(ignored) > 5 else ""
        print(
            f"vpnext report: ignored {len(ignored)} incomplete run(s) without a complete results.json "
            f"(stopped, failed or still running): {names}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
