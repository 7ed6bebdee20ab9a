"""``vpnext.memory``: glibc keeps freed buffers for the next pass instead of faulting them in again."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")

#: A fresh interpreter (the test process's heap has a history): one 20 MiB block, freed (glibc's
#: dynamic mmap threshold rises to it), then rounds of ten 8 MiB blocks, every page written, freed.
#: Prints whether the thresholds were set and the page faults of the second set of rounds.
SCRIPT = """
import resource
from vpnext.memory import tune_malloc, tuned
set_now = tune_malloc()
def rounds():
    del_me = bytearray(20 << 20); del del_me
    for _ in range(5):
        blocks = [bytearray(8 << 20) for _ in range(10)]
        del blocks
rounds()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds()
print(set_now, tuned(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(**env: str) -> tuple[str, str, int]:
    user_settings = ("MALLOC_", "VPNEXT_MALLOC", "GLIBC_TUNABLES")  # the test sets its own
    base = {k: v for k, v in os.environ.items() if not k.startswith(user_settings)}
    base["PYTHONPATH"] = str(REPO_ROOT / "src")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env={**base, **env}, check=True
    )
    set_now, tuned, faults = done.stdout.split()
    return set_now, tuned, int(faults)


def test_freed_buffers_are_reused_without_page_faults() -> None:
    assert _run() == ("True", "True", pytest.approx(0, abs=200))


@pytest.mark.parametrize(
    "env",
    [
        {"VPNEXT_MALLOC": "0"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
    ],
    ids=["switched_off", "malloc_env_of_the_user", "glibc_tunables_of_the_user"],
)
def test_glibc_defaults_are_kept_where_asked_and_fault_every_round(env: dict[str, str]) -> None:
    """The same rounds with glibc's settings: the heap's free top (80 MiB) is handed back after each
    round and faulted in again, 4 KiB at a time."""
    set_now, tuned, faults = _run(**env)
    assert (set_now, tuned) == ("False", "False")
    assert faults > 5 * 80 * 256 // 2  # at least half of the 5 x 80 MiB pages


def test_the_vpnext_command_sets_it_first(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    cli_main = importlib.import_module("vpnext.cli.main")  # the module (vpnext.cli.main is also the function)
    calls = []
    monkeypatch.setattr(cli_main, "tune_malloc", lambda: calls.append("tuned"))
    assert cli_main.main(["--version"]) == 0
    assert calls == ["tuned"] and "vpnext" in capsys.readouterr().out
