"""Two nodes simulated on one machine: two ``torchrun`` agents, ``--nnodes 2``, one CPU process each.

The commands are read from docs/training.md (the block after the "multi-node commands" marker),
so the documented lines are the ones tested: the job trains, is stopped by SIGTERM to both
agents (what ``scancel`` or a Kubernetes eviction sends), resumes with the documented resume
line, and finally continues on a single process (in the test's own process).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO_ROOT, vpnext_command
from vpnext.cli import main

MARKER = "<!-- multi-node commands: tests/test_multinode.py runs exactly these lines -->"

TINY_CONFIG = """\
trainer:
  accelerator: cpu
  max_steps: 14
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  num_sanity_val_steps: 0
  check_val_every_n_epoch: 100
model:
  decoder_dim: 32
  pyramid_dim: 16
  num_heads: 4
  warmup_iters: 1
data:
  crop_size: 64
  batch_size: 2
  num_workers: 0
  synthetic_kwargs: {num_train: 8, num_val: 2, image_size: 64}
run:
  ckpt_every_n_steps: 2
"""


def documented_commands() -> list[str]:
    """The ``torchrun`` lines of the documented multi-node block: start, then resume."""
    text = (REPO_ROOT / "docs" / "training.md").read_text()
    block = text[text.index(MARKER) :].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("torchrun ")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(line: str, config: Path, job: str, workdir: Path) -> list[subprocess.Popen]:
    """Start the documented line once per node (two agents on this machine)."""
    torchrun = Path(vpnext_command()[0]).with_name("torchrun")
    line = line.replace("HOST:PORT", f"127.0.0.1:{_free_port()}").replace("JOB", job)
    line = line.replace("$(which vpnext)", vpnext_command()[0]).replace("CONFIG", str(config))
    argv = shlex.split(line)
    argv[0] = str(torchrun) if torchrun.is_file() else argv[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [
        subprocess.Popen(
            argv, cwd=workdir, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        for _ in range(2)
    ]


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


@pytest.mark.slow
def test_two_node_job_trains_is_preempted_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start, resume = documented_commands()
    assert resume == f"{start} --ckpt_path last"
    config = tmp_path / "tiny.yaml"
    config.write_text(
        TINY_CONFIG.replace("  num_workers: 0\n", f"  num_workers: 0\n  root: {tmp_path / 'data'}\n")
    )

    agents = _launch(start, config, "jobA", tmp_path)
    run = tmp_path / "runs" / "tiny" / "torchrun-jobA_fit"
    deadline = time.monotonic() + 400
    while not (run / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
        assert all(a.poll() is None for a in agents), agents[0].communicate()[1][-3000:]
        time.sleep(0.1)
    for agent in agents:
        os.killpg(agent.pid, signal.SIGTERM)
    errs = [a.communicate(timeout=300)[1] for a in agents]
    assert all(a.returncode != 0 for a in agents)
    stopped = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 2 <= stopped["global_step"] < 14
    assert any(f"stopped by SIGTERM at step {stopped['global_step']}" in e for e in errs), errs[0][-3000:]
    assert not (run / "results.json").exists()

    agents = _launch(resume, config, "jobB", tmp_path)
    errs = [a.communicate(timeout=400)[1] for a in agents]
    assert all(a.returncode == 0 for a in agents), errs[0][-3000:]
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == [run.name]  # resumed in place
    results = _results(run)
    assert results["world_size"] == 2 and results["optimizer_steps"] == 14
    assert results["images_seen"] == 14 * 2 * 2

    # The same run continued on one process (another world size): it works and keeps counting.
    # In this process: what it checks (a checkpoint of a 2-process job resumed by 1) needs no launcher.
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_steps=18"]) == 0
    results = _results(run)
    assert results["world_size"] == 1 and results["optimizer_steps"] == 18
    assert results["images_seen"] == 14 * 2 * 2 + 4 * 2
