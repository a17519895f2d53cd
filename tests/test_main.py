"""End to end: the main command on the built-in benchmark: results, resume,
portable workdirs, one owner, one-line errors."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
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
  proc = _run(_main(tmp_path, "--config.train.lr_by_mode=ffr:1e-5,usb:3e-4"))
  for mode in ("none", "usb", "asb", "ffr"):
    res = json.load(open(tmp_path / "runs" / f"mode={mode}" / "method=erm" /
                         "results.json"))
    assert res["mode"] == mode and res["method"] == "erm"
    assert res["dataset"] == "demo" and res["bias_ratio"] == 0.99
    for split in ("val", "test"):
      _check_split_metrics(res[split])
    assert res["selected_epoch"] >= 1
    assert res["selection"] == {"worst_group_acc": res["val"]["worst_group_acc"],
                                "source": "val"}
    assert res["config"]["mode"] == mode  # the resolved config is recorded
    assert res["wall_seconds"] > 0
  ffr = json.load(open(tmp_path / "runs" / "mode=ffr" / "method=erm" /
                       "results.json"))
  assert set(ffr["stages"]) == {"stage1", "stage2"}
  assert ffr["stage_order"] == ["stage1", "stage2"]
  # Stage 2 starts with an evaluation of stage 1's selected model.
  assert ffr["stages"]["stage2"]["epoch0"]["val"] == ffr["stages"]["stage1"]["val"]
  assert (tmp_path / "summary.png").stat().st_size > 1000
  # Each mode trains at its own rate when train.lr_by_mode names it.
  assert "| ffr | erm | 1e-05 |" in proc.stdout
  assert "| usb | erm | 0.0003 |" in proc.stdout
  assert "| none | erm | 0.001 |" in proc.stdout
  run = tmp_path / "runs" / "mode=ffr" / "method=erm"
  plans = {s: json.load(open(run / ffr["stages"][s]["dir"] / "result.json"))
           ["plan"] for s in ("stage1", "stage2")}
  assert (plans["stage1"]["lr"], plans["stage2"]["lr"]) == (1e-3, 1e-5)
  assert "WA = worst-group accuracy" in proc.stdout
  assert "One seed (0) on one draw of the data" in proc.stdout


def _free_port() -> int:
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("modes", [
    "none", pytest.param("none,usb", marks=pytest.mark.slow)])
def test_a_jax_distributed_job_initializes_before_anything_asks_jax(tmp_path,
                                                                      modes):
  # What a pod launcher sets (here a one-process job): jax.distributed must be
  # initialized before the workdir lock or the stop guard ask which process
  # this is, or it refuses ("must be called before any JAX calls").
  env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}",
             JAX_NUM_PROCESSES="1", JAX_PROCESS_ID="0")
  proc = subprocess.run(_main(tmp_path, f"--config.mode={modes}"), cwd=ROOT,
                        capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "jax.distributed: process 0 of 1" in proc.stderr


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path):
  """A two-process jax.distributed ffr_jax.main (CPU, gloo) on one shared
  workdir gives the one-process run's numbers."""
  _run(_main(tmp_path / "one", "--config.mode=ffr"))
  address = f"localhost:{_free_port()}"
  procs = [subprocess.Popen(
      _main(tmp_path / "two", "--config.mode=ffr"), cwd=ROOT,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i))) for i in range(2)]
  errs = [p.communicate(timeout=600)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
  one, two = (json.load(open(tmp_path / w / "results.json")) for w in ("one", "two"))
  for split in ("val", "test"):
    assert two[split] == one[split]
  for stage in ("stage1", "stage2"):
    assert two["stages"][stage]["history"] == one["stages"][stage]["history"]


def test_a_subprocess_sweep_never_starts_a_backend_in_its_parent(tmp_path):
  # The parent of subprocess runs must leave the accelerators to them (a TPU
  # opens in one process only; a GPU client preallocates most memory).
  code = f"""
import json, os, sys
import ml_collections
from ffr_jax import experiments
sweep = ml_collections.ConfigDict({{"config": {DEMO + ":smoke"!r}, "fixed": (),
                                   "grid": ({{"mode": ("none", "usb")}},)}})
runs = experiments.expand(sweep, {str(tmp_path)!r})
def fake(run, should_stop=None, state=None):
  os.makedirs(run.run_dir, exist_ok=True)
  open(os.path.join(run.run_dir, "results.json"), "w").write("{{}}")
experiments.EXECUTORS.register("fake", experiments.Executor(fake, in_process=False))
outcomes = experiments.run_sweep(runs, {str(tmp_path)!r}, "fake", log=lambda s: None)
from jax._src import xla_bridge
print([o.status for o in outcomes], xla_bridge.backends_are_initialized())
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == "['done', 'done'] False", proc.stdout


def _fails_with_one_line(cmd, expect: str):
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                        timeout=300)
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  assert expect in lines[0], lines[0]
  return lines[0]


@pytest.mark.parametrize("override,expect", [
    ("--config.train.nonexistent=1", "nonexistent"),
    ("--config.data.bias_ratio=1.5", "1.5"),
    ("--config.mode=mixup", "Unknown mode 'mixup'"),
    ("--config.method=jttt", "Unknown method 'jttt'"),
    ("--config.train.epochs=0", "epochs=0 must be >= 1"),
    ("--config.train.lr=abc", "lr"),
    ("--config.train.lr=inf", "lr=inf must be a finite number"),
    ("--config.mode=,", "names no mode"),
    ("--config.train.lr_by_mode=fr:1e-5", "Unknown mode 'fr'"),
    ("--config.train.lr_by_mode=ffr=1e-5", "lr_by_mode='ffr=1e-5'"),
    ("--config.method=dfr --config.dfr.num_refits=0", "num_refits=0"),
    ("--config.method=dfr --config.dfr.c_grid=()", "c_grid"),
    ("--config.method=afr --config.afr.heldout=0", "afr.heldout"),
    ("--config.method=jtt --config.jtt.epochs_id=0", "jtt.epochs_id=0"),
])
def test_a_bad_config_value_is_one_line_and_writes_nothing(tmp_path, override,
                                                           expect):
  workdir = tmp_path / "w"
  _fails_with_one_line(_main(workdir, *override.split()), expect)
  assert not workdir.exists()  # validated before anything is written


def test_bad_paths_are_one_line_errors(tmp_path):
  _fails_with_one_line(_main(tmp_path, config=str(ROOT / "configs" / "nope.py")),
                       "nope.py")
  file = tmp_path / "a_file"
  file.write_text("x")
  _fails_with_one_line(_main(file), "a_file")
  _fails_with_one_line(_main(""), "--workdir is empty")
  assert not list(ROOT.glob("runs")) and not (ROOT / "stages").exists()
  weights = tmp_path / "w.safetensors"
  weights.write_text("not weights")
  _fails_with_one_line(_main(tmp_path / "w", f"--config.model.pretrained={weights}"),
                       "is not readable as weights")
  assert not (tmp_path / "w").exists()


def test_no_arguments_is_one_line_naming_the_missing_flags():
  line = _fails_with_one_line([sys.executable, "-m", "ffr_jax.main"],
                              "missing --config and --workdir; run with --help")
  assert ".." not in line


def _stage_dir(workdir: pathlib.Path, stage: str) -> pathlib.Path:
  """The folder of ``stage`` (``stages/{stage}-{fingerprint}``), once it exists."""
  found = sorted((workdir / "stages").glob(f"{stage}-*")) if (
      workdir / "stages").exists() else []
  return found[0] if found else workdir / "stages" / f"{stage}-?"


def _wait_for_stage_checkpoint(proc, workdir, stage, timeout=400):
  start = time.time()
  while time.time() - start < timeout:
    ckpts = _stage_dir(workdir, stage) / "checkpoints"
    if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
      return
    if proc.poll() is not None:
      raise AssertionError("the run ended before its first checkpoint:\n"
                           + proc.stderr.read()[-3000:])
    time.sleep(0.2)
  raise AssertionError("no checkpoint appeared")


def _metric_rows(workdir):
  return [json.loads(l) for l in open(workdir / "metrics.jsonl")]


def test_killed_run_resumes_to_the_same_result_anywhere(tmp_path):
  overrides = ["--config.mode=ffr", "--config.method=groupdro",
               "--config.train.epochs=3", "--config.train.checkpoint_every=3"]
  _run(_main(tmp_path / "straight", *overrides))
  expected = json.load(open(tmp_path / "straight" / "results.json"))

  workdir = tmp_path / "killed"
  proc = subprocess.Popen(_main(workdir, *overrides), cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ))
  _wait_for_stage_checkpoint(proc, workdir, "stage2")
  # A second process on the same workdir is refused at once, in one line.
  line = _fails_with_one_line(_main(workdir, *overrides), "in use")
  assert str(proc.pid) in line
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / "results.json").exists()
  # Resumed in a copy at another path (and the data under another root):
  # fingerprints hold no absolute paths, and the killed owner's lock is stale.
  moved = tmp_path / "elsewhere" / "moved"
  shutil.copytree(workdir, moved)
  _run(_main(moved, *overrides))
  got = json.load(open(moved / "results.json"))
  for split in ("val", "test"):
    assert got[split] == expected[split]
  assert got["selected_epoch"] == expected["selected_epoch"]
  assert (got["stages"]["stage2"]["history"]
          == expected["stages"]["stage2"]["history"])
  # Every logged step once, even those logged again after the resume.
  keys = [(r["stage"], r["step"], tuple(sorted(k for k in r if "/" in k)))
          for r in _metric_rows(moved)]
  assert len(keys) == len(set(keys))
  # A finished run is not redone: results.json (wall times too) unchanged.
  before = (moved / "results.json").read_bytes()
  proc = _run(_main(moved, *overrides))
  assert (moved / "results.json").read_bytes() == before


def test_real_spuco_layout_runs_with_groupdro_and_dfr(tmp_path):
  """The real-data path: an official SpuCo tree on disk, no synthetic data."""
  from tests.fake_trees import write_spuco_tree  # pylint: disable=g-import-not-at-top
  root = write_spuco_tree(str(tmp_path / "spuco"), majority=(40, 12, 12),
                          minority=(8, 12, 12))
  _run(_main(tmp_path / "run", f"--config.data.root={root}",
             "--config.data.bias_ratio=0.9", "--config.method=groupdro,dfr",
             config=f"{ROOT / 'configs' / 'spuco.py'}:smoke"))
  for method in ("groupdro", "dfr"):
    res = json.load(open(tmp_path / "run" / "runs" / "mode=none" /
                         f"method={method}" / "results.json"))
    assert res["dataset"] == "spuco_animals"
    _check_split_metrics(res["test"])
  dfr_run = json.load(open(tmp_path / "run" / "runs" / "mode=none" /
                           "method=dfr" / "results.json"))
  # DFR's refit head is scored on val it was fit on: selection uses the
  # backbone's val score before the refit.
  assert dfr_run["selection"] == {
      "worst_group_acc": dfr_run["val_backbone"]["worst_group_acc"],
      "source": "backbone_val"}
  dfr = dfr_run["dfr"]
  assert dfr["best_c"] in (3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003)
  assert dfr["num_refits"] == 20
