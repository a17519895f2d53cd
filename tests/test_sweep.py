"""The sweep engine: grid expansion, names, stage sharing, skip/resume,
shards, --list. No training except in the slow tests."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from ffr_jax import config as config_lib
from ffr_jax import experiments as sweep_lib

from conftest import ROOT

DEMO = str(ROOT / "configs" / "demo.py")
SMOKE = DEMO + ":smoke"


def _sweep(grid, fixed=(), config=SMOKE, unnamed=()):
  c = ml_collections.ConfigDict()
  c.config = config
  c.fixed = tuple(fixed)
  c.unnamed = tuple(unnamed)
  c.grid = tuple(grid)
  c.lock()
  return c


def _by_name(runs):
  return {r.name: r for r in runs}


# ----------------------------------------------------------------------------
# Expansion and names.


def test_grid_expands_to_the_union_of_products_with_readable_names(tmp_path):
  sweep = _sweep([
      {"data.bias_ratio": (0.95, 0.99), "mode": ("none", "ffr"),
       "method": ("erm",), "seed": (0, 1)},
      {"data.bias_ratio": (0.99,), "mode": ("ffr",), "method": ("groupdro",),
       "seed": (0,)},
  ], fixed=[("train.epochs", 2)])
  runs = sweep_lib.expand(sweep, tmp_path)
  assert len(runs) == 2 * 2 * 2 + 1
  names = [r.name for r in runs]
  assert names[0] == "data.bias_ratio=0.95/mode=none/method=erm/seed=0"
  assert "data.bias_ratio=0.99/mode=ffr/method=groupdro/seed=0" in names
  r = _by_name(runs)["data.bias_ratio=0.99/mode=ffr/method=erm/seed=1"]
  assert r.run_dir == os.path.join(tmp_path, "runs", "data.bias_ratio=0.99",
                                   "mode=ffr", "method=erm", "seed=1")
  assert (r.config.data.bias_ratio, r.config.mode, r.config.method,
          r.config.seed, r.config.train.epochs) == (0.99, "ffr", "erm", 1, 2)
  # The same expansion twice gives the same names, dirs and commands.
  again = sweep_lib.expand(sweep, tmp_path)
  assert [(a.name, a.command()) for a in runs] == [
      (b.name, b.command()) for b in again]


def test_equal_settings_from_two_grid_dicts_run_once(tmp_path):
  sweep = _sweep([
      {"mode": ("usb",), "method": ("erm",), "seed": (0,)},
      # benchmark.strength 0.5 is the base value: the same run again.
      {"benchmark.strength": (0.5, 1.0), "mode": ("usb",),
       "method": ("erm",), "seed": (0,)},
  ])
  names = [r.name for r in sweep_lib.expand(sweep, tmp_path)]
  assert names == ["mode=usb/method=erm/seed=0",
                   "mode=usb/method=erm/benchmark.strength=1.0/seed=0"]


def test_bad_grids_are_errors_that_say_why(tmp_path):
  with pytest.raises(ValueError, match="one mode x method"):
    sweep_lib.expand(_sweep([{"mode": ("none,ffr",), "seed": (0,)}]), tmp_path)
  with pytest.raises(KeyError, match="train.nope"):
    sweep_lib.expand(_sweep([{"train.nope": (1,)}]), tmp_path)
  with pytest.raises(ValueError, match="inside run"):
    sweep_lib.expand(_sweep([{"mode": ("none",)},
                             {"mode": ("none",), "seed": (1,)}]), tmp_path)
  with pytest.raises(ValueError, match="tuple or list"):
    sweep_lib.expand(_sweep([{"mode": "none"}]), tmp_path)
  # Two runs differing only in an unnamed key would share a folder.
  with pytest.raises(ValueError, match="both named"):
    sweep_lib.expand(_sweep([{"mode": ("none",), "data.root": ("/a", "/b")}],
                            unnamed=("data.root",)), tmp_path)


def test_shared_data_folders_are_keyed_on_their_settings(tmp_path):
  sweep = _sweep([{"data.bias_ratio": (0.95, 0.99), "mode": ("usb",),
                   "benchmark.strength": (0.0, 0.5)}])
  runs = sweep_lib.expand(sweep, tmp_path)
  real = {r.config.data.root for r in runs}
  syn = {(r.config.benchmark.strength, r.config.data.synthetic_root)
         for r in runs}
  # One rendering of the real data for all; one synthetic folder per strength
  # (the generator's output), shared by both bias ratios.
  assert len(real) == 1 and next(iter(real)).startswith(
      os.path.join(tmp_path, "shared", "real"))
  assert len(syn) == 2 and len({s for _, s in syn}) == 2


# ----------------------------------------------------------------------------
# Stage-1 sharing.


def test_runs_needing_the_same_stage1_are_one_sharing_unit(tmp_path):
  sweep = _sweep([
      {"mode": ("ffr", "stage1_only", "ffr_biased", "none", "usb"),
       "method": ("erm", "groupdro"), "seed": (0, 1)},
      {"mode": ("ffr",), "method": ("erm",), "seed": (0,),
       "train.lr": (1e-4,), "train.freeze_bn": (True,)},
      {"mode": ("ffr",), "method": ("erm",), "seed": (0,),
       "stage1.lr": (1e-4,)},
  ])
  runs = _by_name(sweep_lib.expand(sweep, tmp_path))

  def unit(name):
    return runs[name].unit

  erm = unit("mode=ffr/method=erm/seed=0")
  # Method, stage-2 learning rate and freeze-BN do not change stage 1 ...
  assert unit("mode=ffr/method=groupdro/seed=0") == erm
  assert unit("mode=ffr/method=erm/train.freeze_bn=True/train.lr=0.0001/seed=0"
              ) == erm
  # ... nor does using stage 1 alone; the biased pretraining is another stage.
  assert unit("mode=stage1_only/method=erm/seed=0") == erm
  assert unit("mode=ffr_biased/method=erm/seed=0") != erm
  # The seed and stage 1's own settings do.
  assert unit("mode=ffr/method=erm/seed=1") != erm
  assert unit("mode=ffr/method=erm/stage1.lr=0.0001/seed=0") != erm
  # Every run keeps its stages in the sweep's one stage store.
  assert {r.config.train.stages_dir for r in runs.values()} == {
      os.path.join(tmp_path, "shared", "stages")}


def test_shards_partition_the_runs_and_keep_stage1_groups_together(tmp_path):
  sweep = _sweep([{"data.bias_ratio": (0.95, 0.99), "seed": (0, 1),
                   "mode": ("none", "ffr", "stage1_only"),
                   "method": ("erm", "dfr")}])
  runs = sweep_lib.expand(sweep, tmp_path)
  shards = [sweep_lib.shard(runs, i, 3) for i in range(3)]
  names = [r.name for s in shards for r in s]
  assert sorted(names) == sorted(r.name for r in runs)
  for key in {r.unit for r in runs}:
    owners = [i for i, s in enumerate(shards)
              if any(r.unit == key for r in s)]
    assert len(owners) == 1
  assert [r.name for r in sweep_lib.shard(runs, 1, 3)] == [
      r.name for r in shards[1]]
  assert sweep_lib.parse_shard("2/3") == (2, 3)
  with pytest.raises(ValueError, match="i/n"):
    sweep_lib.parse_shard("2")
  with pytest.raises(ValueError, match="0 <= i < n"):
    sweep_lib.parse_shard("3/3")


# ----------------------------------------------------------------------------
# Skip, resume, failures.


def test_rerun_skips_finished_runs_and_reruns_unfinished_ones(tmp_path,
                                                               monkeypatch):
  sweep = _sweep([{"mode": ("none", "usb", "asb"), "seed": (0,)}])
  runs = sweep_lib.expand(sweep, tmp_path)
  finished, unfinished, failing = runs
  os.makedirs(finished.run_dir)
  with open(os.path.join(finished.run_dir, "results.json"), "w") as f:
    json.dump({"fake": True}, f)
  # An interrupted run: a stage folder but no results.json.
  os.makedirs(os.path.join(unfinished.run_dir, "train", "checkpoints"))
  calls = []

  def fake(run, should_stop=None, state=None):
    calls.append(run.name)
    if run.name == failing.name:
      raise RuntimeError("loss became NaN")
    with open(os.path.join(run.run_dir, "results.json"), "w") as f:
      json.dump({}, f)

  sweep_lib.EXECUTORS.register("fake", sweep_lib.Executor(fake, in_process=False))
  outcomes = sweep_lib.execute(runs, "fake", log=lambda s: None)
  assert calls == [unfinished.name, failing.name]
  assert [o.status for o in outcomes] == ["skipped", "done", "failed"]
  assert "NaN" in outcomes[2].error
  # Rerun: only the failed one is tried again.
  calls.clear()
  outcomes = sweep_lib.execute(runs, "fake", log=lambda s: None)
  assert calls == [failing.name]
  path = sweep_lib.write_manifest(str(tmp_path), runs, outcomes)
  with open(path) as f:
    rows = json.load(f)["runs"]
  assert [r["finished"] for r in rows] == [True, True, False]
  assert rows[2]["outcome"]["status"] == "failed"
  assert "1 failed" in sweep_lib.summarize(outcomes)
  # Another shard (or a --filter run) writing later keeps these rows.
  sweep_lib.write_manifest(str(tmp_path), runs[:1])
  with open(path) as f:
    later = {r["name"]: r for r in json.load(f)["runs"]}
  assert set(later) == {r.name for r in runs}
  assert later[failing.name]["outcome"]["status"] == "failed"


# ----------------------------------------------------------------------------
# --list.


def _parse_command(argv):
  """Parses an ffr_jax.main command line the way ffr_jax.main does."""
  assert argv[:3] == ["python", "-m", "ffr_jax.main"]
  fv = flags.FlagValues()
  # config_flags defines the --config.* override flags from the argv it is
  # given when the flag is defined.
  holder = config_flags.DEFINE_config_file(
      "config", None, "", flag_values=fv, lock_config=True,
      sys_argv=["main"] + argv[3:])
  workdir = flags.DEFINE_string("workdir", None, "", flag_values=fv)
  fv(["main"] + argv[3:])
  return holder.value, workdir.value


def test_list_prints_commands_that_parse_to_each_runs_config(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "ffr_jax.sweep",
       "--config=configs/sweeps/paper.py:smoke", f"--workdir={tmp_path}",
       "--list"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
  lines = out.strip().splitlines()
  cwd = os.getcwd()
  os.chdir(ROOT)  # the listed --config path is relative to the repository
  try:
    sweep_cfg = config_lib.load_config_file("configs/sweeps/paper.py:smoke")
    runs = sweep_lib.expand(sweep_cfg, tmp_path)
    assert len(lines) == len(runs) == 4
    for line, run in zip(lines, runs):
      config, workdir = _parse_command(shlex.split(line))
      assert workdir == run.run_dir
      assert config.to_dict() == run.config.to_dict()
  finally:
    os.chdir(cwd)
  only = subprocess.run(
      [sys.executable, "-m", "ffr_jax.sweep",
       "--config=configs/sweeps/paper.py:smoke", f"--workdir={tmp_path}",
       "--list", "--filter=mode=ffr/"], cwd=ROOT, capture_output=True,
      text=True, check=True).stdout.strip().splitlines()
  assert only == [l for l in lines if "/mode=ffr/" in l] and len(only) == 2


# ----------------------------------------------------------------------------
# Slow: real training.


@pytest.mark.slow
def test_a_listed_command_runs_as_is_and_a_sweep_shares_stage1(tmp_path):
  """Runs the smoke sweep (in process), then one listed command by hand."""
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    sweep_cfg = config_lib.load_config_file("configs/sweeps/paper.py:smoke")
    runs = sweep_lib.expand(sweep_cfg, tmp_path / "sweep")
    ffr = [r for r in runs if r.config.mode == "ffr"]
    outcomes = sweep_lib.execute(ffr, "inprocess", log=lambda s: None)
    assert [o.status for o in outcomes] == ["done", "done"]
    (stages_dir,) = {r.config.train.stages_dir for r in ffr}
    # One stage 1 for both methods: one folder, trained once (one history),
    # and both runs report the same stage-1 numbers.
    assert len([d for d in os.listdir(stages_dir)
                if d.startswith("stage1-")]) == 1
    results = [json.load(open(os.path.join(r.run_dir, "results.json")))
               for r in ffr]
    assert results[0]["stages"]["stage1"]["history"] == results[1]["stages"][
        "stage1"]["history"]
    assert "synthetic_test" in results[0]
    # A listed command, run as printed, from a fresh shell.
    none = next(r for r in runs if r.config.mode == "none")
    subprocess.run(shlex.join(none.command(sys.executable)), shell=True,
                   cwd=ROOT, check=True, capture_output=True)
    assert none.finished()
    again = sweep_lib.execute(runs[:1], "subprocess", log=lambda s: None)
    assert again[0].status == "skipped"
  finally:
    os.chdir(cwd)


def test_auto_shards_run_every_run_once_however_they_race(tmp_path):
  worker = os.path.join(ROOT, "tests", "workers", "claiming_sweep.py")
  env = {**os.environ, "PYTHONPATH": ROOT}
  for attempt in range(3):
    workdir = tmp_path / f"w{attempt}"
    procs = [subprocess.Popen([sys.executable, worker, str(workdir), "4", "5"],
                              stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    statuses = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    done_by = [(workdir / "runs" / f"u{u}" / f"r{r}" / "done_by").read_text().split()
               for u in range(4) for r in range(5)]
    assert all(len(pids) == 1 for pids in done_by), (attempt, done_by)
    # Every run is done by one process and left to it by the other.
    assert sum(s.count("done") for s in statuses) == 20
    # Both released their last claim.
    assert not list((workdir / sweep_lib.CLAIMS_DIR).rglob(sweep_lib.lifecycle.LOCK_FILE))


def test_auto_shards_are_refused_for_a_multi_host_in_process_job(tmp_path, monkeypatch):
  monkeypatch.setattr(sweep_lib.lifecycle, "process_count", lambda: 2)
  monkeypatch.setattr(sweep_lib, "maybe_initialize_distributed", lambda: None)
  with pytest.raises(ValueError, match="multi-host job takes --shard=i/n"):
    sweep_lib.run_sweep([], str(tmp_path), "inprocess", log=lambda s: None, claim=True)
