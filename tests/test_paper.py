"""The paper's tables are defined once (vpnext.paper); the report and `vpnext flops` read them."""

from __future__ import annotations

import pytest

from vpnext import paper
from vpnext.tools import flops_cmd, report


def _switches(row: paper.PaperRow) -> dict[str, object]:
    pairs = (flag[len("--model.") :].split("=", 1) for flag in row.switches)
    return {name: int(value) if value.isdigit() else value for name, value in pairs}


@pytest.mark.parametrize("row", paper.TABLE3, ids=lambda row: row.name)
def test_table3_switches_land_on_their_own_report_row(row: paper.PaperRow) -> None:
    assert report.table3_row(_switches(row)) == row.key


def test_report_and_flops_show_the_same_table3() -> None:
    assert [row.key for row in paper.TABLE3] == report.TABLE3_ROWS
    assert list(flops_cmd.TABLE3_ROWS) == [row.name for row in paper.TABLE3]
    for row in paper.TABLE3:
        assert report.PAPER_GFLOPS[row.key[1:]] == row.figure
        assert flops_cmd.PAPER_TABLE3[row.name] == (None if row.figure == "> 2000" else float(row.figure))


def test_paper_figures_as_printed() -> None:
    assert report.PAPER_MIOU[("Our VCR", "2")] == "68.83"
    assert report.PAPER_MIOU[("Our real pyramid", "3")] == "70.00"
    assert report.PAPER_GFLOPS[("Our VPNeXt", "√")] == "1007.62"
    assert len({row.key for table in (paper.TABLE1, paper.TABLE2, paper.TABLE3) for row in table}) == 17
