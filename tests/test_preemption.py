"""End to end: SIGTERM (a preemption notice) at random times, then a rerun,
gives the results of a run never stopped; each stop is one line, exit code
143, a finished checkpoint and no Orbax temporary folder."""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest

from ffr_jax.training import lifecycle

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.py")
OVERRIDES = ("--config.mode=ffr", "--config.method=groupdro",
             "--config.train.checkpoint_every=2")
LOCK_FILE = lifecycle.LOCK_FILE
RESUME_LINE = "rerun the same command to resume"
KILLS = 3


def _main(workdir) -> list[str]:
  return [sys.executable, "-m", "ffr_jax.main", f"--config={DEMO}:smoke",
          f"--workdir={workdir}", *OVERRIDES]


def _start(workdir) -> subprocess.Popen:
  return subprocess.Popen(_main(workdir), cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ))


def _wait_for_lock(proc, workdir: pathlib.Path, timeout=300) -> float:
  """When the run owns its workdir (its signal handlers are in place then)."""
  start = time.monotonic()
  while time.monotonic() - start < timeout:
    if (workdir / LOCK_FILE).exists():
      return time.monotonic()
    if proc.poll() is not None:
      raise AssertionError("the run ended before taking its workdir:\n"
                           + proc.stderr.read()[-3000:])
    time.sleep(0.05)
  raise AssertionError("the run never took its workdir")


def _comparable(workdir: pathlib.Path) -> dict:
  """results.json without wall times and with the workdir's path masked."""
  text = (workdir / "results.json").read_text().replace(str(workdir), "W")
  def strip(x):
    if isinstance(x, dict):
      return {k: strip(v) for k, v in x.items() if k != "wall_seconds"}
    if isinstance(x, list):
      return [strip(v) for v in x]
    return x
  return strip(json.loads(text))


def _orbax_tmp_folders(workdir: pathlib.Path) -> list[str]:
  return [str(p) for p in workdir.rglob("*orbax-checkpoint-tmp*")]


@pytest.mark.slow
def test_sigterm_at_random_times_then_rerun_gives_the_uninterrupted_result(
    tmp_path):
  straight = tmp_path / "straight"
  proc = _start(straight)
  owned_at = _wait_for_lock(proc, straight)
  _, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-4000:]
  busy_seconds = time.monotonic() - owned_at
  expected = _comparable(straight)

  # Each stop lands within the first quarter of a whole run's work, so three
  # of them (which each also repeat the start-up) never reach its end.
  rng = random.Random(0)
  delays = [rng.uniform(0.05, 0.25) * busy_seconds for _ in range(KILLS)]
  workdir = tmp_path / "stopped"
  for i, delay in enumerate(delays):
    proc = _start(workdir)
    owned_at = _wait_for_lock(proc, workdir)
    time.sleep(max(0.0, owned_at + delay - time.monotonic()))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    where = f"stop {i + 1} ({delay:.1f} s after start):\n{err[-3000:]}"
    assert proc.returncode == 143, where
    assert "Traceback" not in err, where
    assert sum(RESUME_LINE in line for line in err.splitlines()) == 1, where
    assert not _orbax_tmp_folders(workdir), where
    assert not (workdir / LOCK_FILE).exists(), where  # released on the way out
    assert not (workdir / "results.json").exists(), where

  proc = _start(workdir)
  _, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-4000:]
  assert _comparable(workdir) == expected
  assert not _orbax_tmp_folders(workdir)
