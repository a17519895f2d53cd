"""End to end: SIGTERM (a preemption notice) at random points of a run, then
a rerun, gives the results of a run never stopped; each stop is one line,
exit code 143, a finished checkpoint and no Orbax temporary folder."""

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

from ffr_jax import lifecycle

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.py")
OVERRIDES = ("--config.mode=ffr", "--config.method=groupdro",
             "--config.train.checkpoint_every=2")
LOCK_FILE = lifecycle.LOCK_FILE
RESUME_LINE = "rerun the same command to resume"


def _main(workdir) -> list[str]:
  return [sys.executable, "-m", "ffr_jax.main", f"--config={DEMO}:smoke",
          f"--workdir={workdir}", *OVERRIDES]


def _start(workdir, log: pathlib.Path) -> subprocess.Popen:
  # stderr to a file: a full pipe nobody reads would block the run.
  return subprocess.Popen(_main(workdir), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=open(log, "w"), env=dict(os.environ))


def _checkpoint_steps(workdir: pathlib.Path, stage: str) -> set[int]:
  return {int(p.name) for p in workdir.glob(f"stages/{stage}-*/checkpoints/*")
          if p.name.isdigit()}


def _wait_for_new_checkpoints(proc, workdir: pathlib.Path, stage: str,
                              count: int, log: pathlib.Path, timeout=600):
  """Until ``count`` checkpoints of ``stage`` newer than any before were
  written (so training is under way, and not near its end)."""
  before = max(_checkpoint_steps(workdir, stage), default=0)
  new: set[int] = set()
  start = time.monotonic()
  while time.monotonic() - start < timeout:
    # Only the last two are kept: collect what each poll sees.
    new |= {s for s in _checkpoint_steps(workdir, stage) if s > before}
    if len(new) >= count:
      return
    if proc.poll() is not None:
      raise AssertionError(f"the run ended before {count} new {stage} "
                           "checkpoints:\n" + log.read_text()[-3000:])
    time.sleep(0.05)
  raise AssertionError(f"no {count} new {stage} checkpoints appeared")


def _comparable(workdir: pathlib.Path) -> dict[str, object]:
  """results.json as {key path: value}, without wall times and with the
  workdir's path masked."""
  text = (workdir / "results.json").read_text().replace(str(workdir), "W")
  flat = {}
  def walk(x, path):
    if isinstance(x, dict):
      for k, v in x.items():
        if k != "wall_seconds":
          walk(v, f"{path}/{k}")
    elif isinstance(x, list):
      for i, v in enumerate(x):
        walk(v, f"{path}[{i}]")
    else:
      flat[path] = x
  walk(json.loads(text), "")
  return flat


def _differences(got: dict, expected: dict) -> dict[str, tuple]:
  return {k: (got.get(k), expected.get(k)) for k in sorted({*got, *expected})
          if got.get(k, KeyError) != expected.get(k, KeyError)}


def _orbax_tmp_folders(workdir: pathlib.Path) -> list[str]:
  return [str(p) for p in workdir.rglob("*orbax-checkpoint-tmp*")]


@pytest.mark.slow
def test_sigterm_at_random_times_then_rerun_gives_the_uninterrupted_result(
    tmp_path):
  straight = tmp_path / "straight"
  log = tmp_path / "straight.log"
  proc = _start(straight, log)
  assert proc.wait(timeout=900) == 0, log.read_text()[-4000:]
  expected = _comparable(straight)

  # Two stops in stage 1 (24 steps), one in stage 2 (25 steps), each after
  # 1-2 new checkpoints (one every 2 steps) and up to 0.25 s more: random
  # points inside a step or a save, never past the end of the run. (Up to 4
  # checkpoints and 1 s ran past the end of stage 1 on a quiet machine at
  # 9 steps/s; these bounds leave 4 steps to spare at 20 steps/s.)
  rng = random.Random(0)
  stops = [(stage, rng.randint(1, 2), rng.uniform(0.0, 0.25))
           for stage in ("stage1", "stage1", "stage2")]
  workdir = tmp_path / "stopped"
  for i, (stage, count, delay) in enumerate(stops):
    log = tmp_path / f"stop{i + 1}.log"
    proc = _start(workdir, log)
    _wait_for_new_checkpoints(proc, workdir, stage, count, log)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=600)
    err = log.read_text()
    where = (f"stop {i + 1} ({stage}, {delay:.2f} s after {count} new "
             f"checkpoints):\n{err[-3000:]}")
    assert proc.returncode == 143, where
    assert "Traceback" not in err, where
    assert sum(RESUME_LINE in line for line in err.splitlines()) == 1, where
    assert not _orbax_tmp_folders(workdir), where
    assert not (workdir / LOCK_FILE).exists(), where  # released on the way out
    assert not (workdir / "results.json").exists(), where

  log = tmp_path / "final.log"
  proc = _start(workdir, log)
  assert proc.wait(timeout=900) == 0, log.read_text()[-4000:]
  assert not _differences(_comparable(workdir), expected)
  assert not _orbax_tmp_folders(workdir)


@pytest.mark.slow
def test_second_command_on_a_busy_workdir_is_refused_with_one_line(tmp_path):
  workdir = tmp_path / "w"
  log = tmp_path / "first.log"
  first = _start(workdir, log)
  try:
    _wait_for_new_checkpoints(first, workdir, "stage1", 1, log)
    second = subprocess.run(_main(workdir), cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ))
  finally:
    first.send_signal(signal.SIGINT)
    first.wait(timeout=600)
  lines = second.stderr.strip().splitlines()
  assert second.returncode == 2, second.stderr[-3000:]
  assert lines[-1].startswith(f"error: workdir {workdir} is in use by pid "
                              f"{first.pid} "), lines
  assert "Traceback" not in second.stderr
  # The first one was not disturbed, and Ctrl-C stopped it cleanly.
  assert first.returncode == 130, log.read_text()[-3000:]
  assert sum(RESUME_LINE in line for line in log.read_text().splitlines()) == 1
  assert not _orbax_tmp_folders(workdir)
