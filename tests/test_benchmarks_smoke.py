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
