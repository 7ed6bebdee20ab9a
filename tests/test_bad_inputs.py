"""Every bad input in ``scripts/bad_inputs.py`` ends with one clear line; docs/reliability.md lists them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT


def _script():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("bad_inputs", REPO_ROOT / "scripts" / "bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bad_inputs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _without_message(table: str) -> list[list[str]]:
    """Rows of the generated table minus the exit-code and message columns (those may be reworded)."""
    rows = []
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| #"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows.append([cells[0], cells[1], cells[2], cells[-1]])
        elif " bad inputs end with one clear line" in line:
            rows.append([line])
    return rows


@pytest.mark.slow
def test_every_bad_input_gives_one_clear_line_and_the_table_is_current(tmp_path: Path) -> None:
    script = _script()
    outcomes = script.run_all(tmp_path)
    assert len(outcomes) >= 30
    unclear = [(o.case.what, o.code, o.lines, o.traceback, o.leftovers) for o in outcomes if not o.ok]
    assert not unclear
    doc = (REPO_ROOT / "docs" / "reliability.md").read_text()
    start, end = doc.index(script.TABLE_START), doc.index(script.TABLE_END)
    assert _without_message(doc[start:end]) == _without_message(script.markdown(outcomes)), (
        "docs/reliability.md is out of date: python scripts/bad_inputs.py --markdown docs/reliability.md"
    )
