"""A full or read-only disk is one line and exit 2; no writer leaves its
temporary files behind, whether it fails or is killed."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

from ffr_jax import lifecycle
from ffr_jax.reporting import results as results_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _command(body: str, *args: str) -> subprocess.CompletedProcess:
  """Runs ``body`` (which defines ``main(argv)``) under ``cli.run``."""
  code = "from ffr_jax import cli\n" + textwrap.dedent(body) + "\ncli.run(main)\n"
  return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("raise_it,expected", [
    # A Python write.
    ("raise OSError(errno.ENOSPC, 'No space left on device', '/w/results.json')",
     "could not write /w/results.json: No space left on device; free space "
     "or choose another --workdir"),
    # Orbax wraps the OSError of its metadata writer.
    ("""
     try:
       raise OSError(errno.EROFS, 'Read-only file system', '/w/ckpt/_METADATA')
     except OSError as e:
       raise RuntimeError('Save Finalize thread failed') from e""",
     "could not write /w/ckpt/_METADATA: Read-only file system"),
    # Orbax's array writer (tensorstore) carries the errno in its text.
    ("""raise ValueError('RESOURCE_EXHAUSTED: Error writing local file '
                     '"/w/ckpt/25.orbax-checkpoint-tmp/_sharding": Failed to '
                     "write 13251 bytes: No space left on device "
                     "[os_error_code='28']")""",
     "could not write /w/ckpt/25.orbax-checkpoint-tmp/_sharding: No space "
     "left on device"),
    ("raise PermissionError(errno.EACCES, 'Permission denied', '/w/x')",
     "Permission denied: /w/x; fix the permissions or choose another"),
])
def test_a_refused_write_is_one_line_and_exit_2(raise_it, expected):
  proc = _command("import errno\ndef main(argv):\n" + textwrap.indent(
      textwrap.dedent(raise_it).strip(), "  "))
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith("error: " + expected), proc.stderr
  assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_write_json_atomic_removes_its_temporary_file_on_a_full_disk(
    tmp_path, monkeypatch):
  path = str(tmp_path / "results.json")
  def full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(results_lib.os, "fsync", full)
  with pytest.raises(OSError, match="No space"):
    results_lib.write_json_atomic(path, {"a": 1})
  assert os.listdir(tmp_path) == []
  monkeypatch.undo()
  results_lib.write_json_atomic(path, {"a": 1})  # space freed: it works
  assert json.load(open(path)) == {"a": 1}


def test_temporary_files_of_killed_writers_go_on_the_next_write(tmp_path):
  path = tmp_path / "sweep.json"
  dead = tmp_path / f"sweep.json.tmp-{_dead_pid()}"
  live = tmp_path / f"sweep.json.tmp-{os.getppid()}"  # a shard still writing
  dead.write_text("")
  live.write_text("{")
  results_lib.write_json_atomic(str(path), {"runs": []})
  assert sorted(os.listdir(tmp_path)) == sorted(["sweep.json", live.name])


def test_a_killed_writer_leaves_no_temporary_file_after_the_next_run(tmp_path):
  # SIGKILL in the middle of a write: the temporary file stays ...
  code = textwrap.dedent(f"""
      import os, signal
      from ffr_jax.reporting import results
      def killed(fd):
        os.kill(os.getpid(), signal.SIGKILL)
      results.os.fsync = killed
      results.write_json_atomic({str(tmp_path / 'results.json')!r}, {{"a": 1}})
      """)
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120,
                        env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert proc.returncode == -9
  assert [p.name for p in tmp_path.iterdir()][0].startswith("results.json.tmp-")
  # ... until the writer's next run.
  results_lib.write_json_atomic(str(tmp_path / "results.json"), {"a": 2})
  assert os.listdir(tmp_path) == ["results.json"]


def test_the_lock_leaves_no_temporary_file_on_a_full_disk(tmp_path,
                                                          monkeypatch):
  real_open = open

  def full(path, *args, **kwargs):
    if str(path).endswith(lifecycle.TMP_SUFFIX):
      f = real_open(path, *args, **kwargs)
      f.close()  # created, then the write fails: a 0-byte file
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_open(path, *args, **kwargs)
  monkeypatch.setattr("builtins.open", full)
  with pytest.raises(OSError, match="No space"):
    lifecycle.WorkdirLock(str(tmp_path)).acquire()
  assert os.listdir(tmp_path) == []


def test_the_lock_removes_temporary_files_that_killed_writers_left(tmp_path):
  old = tmp_path / f"{lifecycle.LOCK_FILE}.mutex.0123abcd{lifecycle.TMP_SUFFIX}"
  young = tmp_path / f"{lifecycle.LOCK_FILE}.4567ef{lifecycle.TMP_SUFFIX}"
  old.write_text("")
  young.write_text("")  # maybe another process's, being written right now
  past = time.time() - 2 * lifecycle.MUTEX_STALE_AFTER
  os.utime(old, (past, past))
  with lifecycle.WorkdirLock(str(tmp_path)):
    assert not old.exists() and young.exists()
  assert os.listdir(tmp_path) == [young.name]


def test_a_full_disk_stops_a_sweep_instead_of_failing_every_run(tmp_path):
  from ffr_jax import experiments  # pylint: disable=import-outside-toplevel
  runs = [experiments.Run(name=n, config_path="c.py", overrides=(), config=None,
                          run_dir=str(tmp_path / n), unit=n) for n in "ab"]
  tried = []

  def full(run, should_stop=None, state=None):
    tried.append(run.name)
    raise OSError(errno.ENOSPC, "No space left on device", run.run_dir)

  experiments.EXECUTORS.register("full_disk", experiments.Executor(full, False))
  with pytest.raises(OSError, match="No space"):
    experiments.execute(runs, "full_disk", log=lambda s: None)
  assert tried == ["a"]


def test_a_full_disk_stops_a_subprocess_sweep_too(tmp_path, monkeypatch):
  from ffr_jax import experiments  # pylint: disable=import-outside-toplevel
  runs = [experiments.Run(name=n, config_path="nope.py", overrides=(),
                          config=None, run_dir=str(tmp_path / n), unit=n)
          for n in "ab"]

  def full(path, text):
    raise OSError(errno.ENOSPC, "No space left on device", path)

  monkeypatch.setattr(lifecycle, "write_atomic", full)
  with pytest.raises(OSError, match="No space"):  # the child failed, then the probe
    experiments.execute(runs, "subprocess", log=lambda s: None)
  assert not (tmp_path / "b").exists()  # the next run never started
