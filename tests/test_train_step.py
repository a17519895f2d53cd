"""The sharded train step: 1 device == 4 devices == 2 processes, compiled once."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).parent / "workers" / "train_steps.py"
TOL = 1e-5


def _run(out, *args, timeout=300):
  return subprocess.Popen([sys.executable, str(WORKER), str(out), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=dict(os.environ))


def _wait(proc, timeout=400):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out.decode()[-3000:]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  out = tmp_path_factory.mktemp("one") / "r.npz"
  _wait(_run(out, "--devices=1", "--steps=4"))
  return np.load(out)


def _assert_same(a, b):
  assert set(a.files) == set(b.files)
  for k in a.files:
    if k in ("num_devices", "cache_size"):
      continue
    np.testing.assert_allclose(a[k], b[k], atol=TOL, rtol=0, err_msg=k)


def test_four_devices_match_one_and_compile_once(one_device, tmp_path):
  out = tmp_path / "four.npz"
  _wait(_run(out, "--devices=4", "--steps=4"))
  four = np.load(out)
  assert int(four["num_devices"]) == 4
  _assert_same(one_device, four)
  # Four steps, one compilation: no retrace per step.
  assert int(four["cache_size"]) == 1 and int(one_device["cache_size"]) == 1
  # The run really trained: GroupDRO weights moved off uniform.
  assert np.abs(four["group_weights"] - 0.25).max() > 1e-4


def test_two_processes_match_one_process(one_device, tmp_path):
  port = _free_port()
  common = ["--devices=2", "--steps=4", "--num_processes=2",
            f"--coordinator=127.0.0.1:{port}"]
  procs = [_run(tmp_path / f"p{i}.npz", *common, f"--process_id={i}")
           for i in range(2)]
  for p in procs:
    _wait(p)
  two = np.load(tmp_path / "p0.npz")
  assert int(two["num_devices"]) == 4
  assert not (tmp_path / "p1.npz").exists()  # only host 0 writes
  _assert_same(one_device, two)
