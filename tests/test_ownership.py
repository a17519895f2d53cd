"""Who owns what on disk: one writer per shared folder, one owner per
workdir for the README's four-mode command, clean sweep stops."""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from ffr_jax import lifecycle

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.py")


def _write_slowly(folder: str, log: str, name: str) -> None:
  with lifecycle.owned_folder(folder, "a test write", poll=0.01):
    for i in range(5):
      with open(log, "a") as f:
        f.write(f"{name}{i}\n")
      time.sleep(0.02)


def test_a_shared_folder_has_one_writer_at_a_time(tmp_path):
  for trial in range(3):
    log = str(tmp_path / f"log{trial}")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_slowly,
                         args=(str(tmp_path / f"shared{trial}"), log, n))
             for n in "ab"]
    for p in procs:
      p.start()
    for p in procs:
      p.join(60)
      assert p.exitcode == 0
    lines = open(log).read().split()
    # Each writer's five lines come together: never interleaved.
    assert lines in (["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "b3", "b4"],
                     ["b0", "b1", "b2", "b3", "b4", "a0", "a1", "a2", "a3", "a4"])
    assert not os.path.exists(os.path.join(tmp_path, f"shared{trial}",
                                           lifecycle.LOCK_FILE))


def test_a_second_main_on_a_four_mode_workdir_stops_at_once(tmp_path):
  workdir = tmp_path / "w"
  with lifecycle.WorkdirLock(str(workdir)):
    proc = subprocess.run(
        [sys.executable, "-m", "ffr_jax.main", f"--config={DEMO}:smoke",
         f"--workdir={workdir}", "--config.mode=none,usb,asb,ffr"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "is in use by pid" in lines[0]
  assert not (workdir / "runs").exists()  # it took no run of the first


def _wait_for(predicate, timeout: float) -> None:
  deadline = time.time() + timeout
  while not predicate():
    assert time.time() < deadline, "timed out"
    time.sleep(0.1)


@pytest.mark.slow
def test_sigint_to_a_subprocess_sweep_stops_it_without_a_failure(tmp_path):
  sweep = tmp_path / "sweep.py"
  sweep.write_text(f"""
import ml_collections
def get_config():
  return ml_collections.ConfigDict({{
      "config": {DEMO + ':smoke'!r},
      "fixed": (("stage1.epochs", 40),),
      "grid": ({{"mode": ("ffr", "none")}},)}})
""")
  workdir = tmp_path / "w"
  proc = subprocess.Popen(
      [sys.executable, "-m", "ffr_jax.sweep", f"--config={sweep}",
       f"--workdir={workdir}"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
      start_new_session=True)
  first = workdir / "runs" / "mode=ffr" / "method=erm"
  # Training has started once stage 1 wrote its first checkpoint.
  _wait_for(lambda: any((workdir / "shared" / "stages").glob(
      "stage1-*/checkpoints/*")), 300)
  os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-3000:]
  assert "rerun the same command to resume" in err.splitlines()[-1]
  assert "FAILED" not in err and "[2/2]" not in err
  rows = json.load(open(workdir / "sweep.json"))["runs"]
  assert all("outcome" not in r for r in rows)
  assert not (first / "results.json").exists()


@pytest.mark.slow
def test_shards_started_together_share_a_stage_and_its_data(tmp_path):
  """Two runs (as two sweep shards would) start at once on one workdir's
  shared folders: the data is prepared once and the shared stage 1 trained
  once; every run sees every test image (a half-written folder once cost one)."""
  for trial in range(3):
    workdir = tmp_path / f"w{trial}"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "ffr_jax.main", f"--config={DEMO}:smoke",
         f"--workdir={workdir}/runs/{mode}", f"--config.mode={mode}",
         f"--config.train.stages_dir={workdir}/stages",
         f"--config.data.root={workdir}/real",
         f"--config.data.synthetic_root={workdir}/synthetic"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for mode in ("ffr", "stage1_only")]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
      assert p.returncode == 0, err[-3000:]
    results = [json.load(open(workdir / "runs" / m / "results.json"))
               for m in ("ffr", "stage1_only")]
    assert len(list((workdir / "stages").glob("stage1-*"))) == 1
    assert (results[0]["stages"]["stage1"]["test"] ==
            results[1]["stages"]["stage1"]["test"])
    for r in results:  # the smoke benchmark renders 20 test images per group
      assert set(r["test"]["group_count"].values()) == {20}


def _update_manifest(workdir: str, names: list[str]) -> None:
  from ffr_jax import experiments  # pylint: disable=import-outside-toplevel
  runs = [experiments.Run(name=n, config_path="c.py", overrides=(), config=None,
                          run_dir=os.path.join(workdir, "runs", n), unit=n)
          for n in names]
  for i in range(20):
    outcomes = [experiments.Outcome(r.name, "done", float(i)) for r in runs]
    experiments.write_manifest(workdir, runs, outcomes)


def test_shards_updating_sweep_json_at_once_lose_no_row(tmp_path):
  ctx = multiprocessing.get_context("spawn")
  shards = [[f"a{i}" for i in range(5)], [f"b{i}" for i in range(5)]]
  procs = [ctx.Process(target=_update_manifest, args=(str(tmp_path), names))
           for names in shards]
  for p in procs:
    p.start()
  for p in procs:
    p.join(120)
    assert p.exitcode == 0
  rows = json.load(open(tmp_path / "sweep.json"))["runs"]
  assert sorted(r["name"] for r in rows) == sorted(shards[0] + shards[1])
  assert {r["outcome"]["seconds"] for r in rows} == {19.0}


def test_a_process_never_waits_for_its_own_folder(tmp_path):
  with lifecycle.owned_folder(str(tmp_path), "the run"):
    with pytest.raises(ValueError, match="already held by this process"):
      with lifecycle.owned_folder(str(tmp_path), "its synthetic images"):
        pass


def _hold(folder: str, seconds: float, ready) -> None:
  with lifecycle.owned_folder(folder, "a long write"):
    ready.set()
    time.sleep(seconds)


def test_a_stop_request_ends_the_wait_for_another_owner(tmp_path):
  ctx = multiprocessing.get_context("spawn")
  ready = ctx.Event()
  holder = ctx.Process(target=_hold, args=(str(tmp_path), 30, ready))
  holder.start()
  try:
    assert ready.wait(60)
    polls = []

    def stop_after_three():
      polls.append(1)
      if len(polls) == 3:
        raise KeyboardInterrupt  # what a stop check raises instead

    start = time.time()
    with pytest.raises(KeyboardInterrupt):
      with lifecycle.owned_folder(str(tmp_path), "the stage", poll=0.01,
                                  while_waiting=stop_after_three):
        pass
    assert time.time() - start < 5  # not the 30 s the owner holds it
  finally:
    holder.kill()
    holder.join()
