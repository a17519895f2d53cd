"""End to end: the main command on the built-in benchmark, results, resume."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.py")


def _main(workdir, *overrides, config=f"{DEMO}:smoke"):
  return [sys.executable, "-m", "ffr_jax.main", f"--config={config}",
          f"--workdir={workdir}", *overrides]


def _run(cmd, timeout=600):
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT, env=dict(os.environ))
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _check_split_metrics(m):
  assert 0.0 <= m["worst_group_acc"] <= m["balanced_acc"] <= 1.0
  groups = m["group_acc"]
  assert set(groups) == {"y=0,b=0", "y=0,b=1", "y=1,b=0", "y=1,b=1",
                         "y=2,b=2", "y=2,b=3", "y=3,b=2", "y=3,b=3"}
  accs = [a for a in groups.values() if a is not None]
  assert min(accs) == pytest.approx(m["worst_group_acc"])
  assert sum(accs) / len(accs) == pytest.approx(m["balanced_acc"])


def test_demo_smoke_runs_every_mode_and_writes_results(tmp_path):
  proc = _run(_main(tmp_path))
  for mode in ("none", "usb", "asb", "ffr"):
    res = json.load(open(tmp_path / f"{mode}-erm" / "results.json"))
    assert res["mode"] == mode and res["method"] == "erm"
    assert res["dataset"] == "demo" and res["bias_ratio"] == 0.99
    for split in ("val", "test"):
      _check_split_metrics(res[split])
    assert res["selected_epoch"] >= 1
    assert res["config"]["mode"]  # the resolved config is recorded
    assert res["wall_seconds"] > 0
  ffr = json.load(open(tmp_path / "ffr-erm" / "results.json"))
  assert set(ffr["stages"]) == {"stage1", "stage2"}
  assert (tmp_path / "summary.png").stat().st_size > 1000
  assert "| ffr | erm |" in proc.stdout


def test_unknown_config_key_is_rejected(tmp_path):
  proc = subprocess.run(_main(tmp_path, "--config.train.nonexistent=1"),
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode != 0
  assert "nonexistent" in proc.stderr


def _wait_for_checkpoint(proc, stage_dir: pathlib.Path, timeout=400):
  start = time.time()
  while time.time() - start < timeout:
    ckpts = stage_dir / "checkpoints"
    if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
      return
    if proc.poll() is not None:
      raise AssertionError("the run ended before its first checkpoint:\n"
                           + proc.stderr.read()[-3000:])
    time.sleep(0.2)
  raise AssertionError("no checkpoint appeared")


def test_killed_run_resumes_to_the_same_result(tmp_path):
  overrides = ["--config.mode=ffr", "--config.method=groupdro",
               "--config.train.epochs=3", "--config.train.checkpoint_every=3"]
  _run(_main(tmp_path / "straight", *overrides))
  expected = json.load(open(tmp_path / "straight" / "results.json"))

  workdir = tmp_path / "killed"
  proc = subprocess.Popen(_main(workdir, *overrides), cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ))
  _wait_for_checkpoint(proc, workdir / "stage2")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / "results.json").exists()
  _run(_main(workdir, *overrides))
  got = json.load(open(workdir / "results.json"))
  for split in ("val", "test"):
    assert got[split] == expected[split]
  assert got["selected_epoch"] == expected["selected_epoch"]
  assert (got["stages"]["stage2"]["history"]
          == expected["stages"]["stage2"]["history"])


def test_real_spuco_layout_runs_with_groupdro_and_dfr(tmp_path):
  """The real-data path: an official SpuCo tree on disk, no synthetic data."""
  from tests.fake_trees import write_spuco_tree  # pylint: disable=g-import-not-at-top
  root = write_spuco_tree(str(tmp_path / "spuco"), majority=(40, 12, 12),
                          minority=(8, 12, 12))
  _run(_main(tmp_path / "run", f"--config.data.root={root}",
             "--config.data.bias_ratio=0.9", "--config.method=groupdro,dfr",
             config=f"{ROOT / 'configs' / 'spuco.py'}:smoke"))
  for method in ("groupdro", "dfr"):
    res = json.load(open(tmp_path / "run" / f"none-{method}" / "results.json"))
    assert res["dataset"] == "spuco_animals"
    _check_split_metrics(res["test"])
  dfr = json.load(open(tmp_path / "run" / "none-dfr" / "results.json"))["dfr"]
  assert dfr["best_c"] in (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
  assert dfr["num_refits"] == 20
