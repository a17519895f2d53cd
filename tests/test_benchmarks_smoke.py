"""Keeps the benchmark scripts running: each at toy shapes on CPU, no timing checks.

The numbers of these runs mean nothing; what is protected is that the scripts
(benchmarks/train_step.py, generate.py, gpu_suite.py) still import, run end
to end and write their JSON records, so a GPU session does not discover a
broken script on its clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")


def _run(script: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
  result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result


@pytest.mark.slow
def test_train_step_benchmark_runs_with_breakdown(tmp_path):
  out = tmp_path / "train_step.json"
  _run("train_step.py", "--model", "tiny", "--configs", "2x32", "--steps", "1",
       "--warmup", "0", "--conv1x1-as-matmul", "on", "--breakdown", "--out", str(out))
  record = json.loads(out.read_text())["runs"][-1]
  assert record["results"][0]["config"] == "2x32"
  assert record["results"][0]["jax"]["images_per_s"] > 0
  assert set(record["breakdown"]["jax_ms"]) == {
      "forward_eval", "forward_train", "forward_backward", "adam", "step"}


@pytest.mark.slow
def test_generate_benchmark_runs_tiny(tmp_path):
  out = tmp_path / "generate.json"
  _run("generate.py", "--tiny", "--resolution", "16", "--steps", "2", "--calls", "1",
       "--no-torch", "--out", str(out))
  record = json.loads(out.read_text())[-1]
  assert record["settings"]["tiny"] and record["results"][0]["images_per_s"] > 0


@pytest.mark.slow
def test_gpu_suite_runs_every_section_tiny(tmp_path):
  out = tmp_path / "gpu_suite.json"
  _run("gpu_suite.py", "--tiny", "--out", str(out), timeout=1800)
  record = json.loads(out.read_text())["runs"][-1]
  assert set(record["sections"]) == {"train", "sd", "input"}
  for name, section in record["sections"].items():
    assert section["status"] == "ok", (name, section.get("log_tail", ""))
    assert section["rows"], name
  impls = {row["impl"] for row in record["sections"]["train"]["rows"]}
  assert "ffr_jax" in impls
  assert record["versions"]["jax"] != "not installed"


def test_gpu_suite_rejects_an_unknown_section():
  result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "gpu_suite.py"),
                           "--sections", "train,video"], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2 and "video" in result.stderr


def _calibration():
  sys.path.insert(0, BENCHMARKS)
  try:
    import calibration  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(BENCHMARKS)
  return calibration


def test_calibration_choice_follows_the_preregistered_rule():
  cal = _calibration()
  row = lambda gap, strength, wa: {"content_gap": gap, "strength": strength,  # noqa: E731
                                   "mean_wa": wa}
  # Closest to 51.2 among the pairs in the band [43.2, 59.2] ...
  chosen, passed = cal.choose([row(0.5, 0.5, 71.3), row(0.75, 1.0, 58.0),
                               row(0.75, 0.5, 52.3), row(1.0, 1.0, 44.0)])
  assert (chosen["content_gap"], chosen["strength"], passed) == (0.75, 0.5, True)
  # ... ties within 0.5 points go to the smaller gap, then the smaller strength ...
  chosen, _ = cal.choose([row(1.0, 0.5, 51.2), row(0.5, 1.0, 51.5), row(0.5, 0.5, 50.8)])
  assert (chosen["content_gap"], chosen["strength"]) == (0.5, 0.5)
  # ... and with no pair in the band, the closest is kept and marked failed.
  chosen, passed = cal.choose([row(0.0, 0.5, 89.0), row(1.0, 0.5, 42.0)])
  assert (chosen["content_gap"], passed) == (1.0, False)


def test_calibration_record_matches_its_runs():
  """The committed record's means are those of its own runs (no hand edits)."""
  cal = _calibration()
  with open(os.path.join(BENCHMARKS, "results", "calibration.json")) as f:
    record = json.load(f)
  for row in record["runs"].values():
    wa = [r["test_wa"] for r in row["runs"]]
    assert row["n"] == len(wa) == len(cal.RATIOS) * len(cal.SEEDS)
    assert row["mean_wa"] == pytest.approx(sum(wa) / len(wa))
  assert cal.in_band(record["runs"]["none,cue=1"]["mean_wa"], cal.NONE_TARGET)


@pytest.mark.slow
def test_sweep_speed_benchmark_times_shards_and_checks_numbers(tmp_path):
  out, workdir = tmp_path / "sweep_speed.json", tmp_path / "w"
  # A first pass records the runs; the timed pass must reproduce them.
  _run("sweep_speed.py", "--sweep=configs/sweeps/paper.py:smoke",
       "--filter=mode=none/method=(erm|dfr)", f"--workdir={workdir}",
       f"--runs={tmp_path / 'none.jsonl'}", f"--out={out}")
  record = json.loads(out.read_text())[-1]
  assert record["runs"] == 2 and record["not_recorded"] and record["s_per_run"] > 0
  with open(tmp_path / "runs.jsonl", "w") as f:
    for path in (workdir / "runs").rglob("results.json"):
      r = json.loads(path.read_text())
      f.write(json.dumps({"run": str(path.parent.relative_to(workdir)),
                          "val_wa": r["val"]["worst_group_acc"],
                          "test_wa": r["test"]["worst_group_acc"],
                          "test_ba": r["test"]["balanced_acc"],
                          "selected_epoch": r["selected_epoch"]}) + "\n")
  _run("sweep_speed.py", "--sweep=configs/sweeps/paper.py:smoke",
       "--filter=mode=none/method=(erm|dfr)", f"--workdir={workdir}",
       f"--runs={tmp_path / 'runs.jsonl'}", f"--out={out}", "--label=again")
  record = json.loads(out.read_text())[-1]
  assert record["label"] == "again" and record["identical_to_record"] == 2
