"""The workdir lock (one owner, stale locks taken over) and the stop guard."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ffr_jax import lifecycle

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/stat"),
                                reason="pid reuse is detected from /proc")


def _lock_text(workdir) -> str:
  return open(os.path.join(workdir, lifecycle.LOCK_FILE)).read()


def _write_lock(workdir, **changes) -> str:
  """A lock file as this process would write it, with ``changes``."""
  owner = lifecycle._Owner.of_this_process()  # pylint: disable=protected-access
  for k, v in changes.items():
    setattr(owner, k, v)
  os.makedirs(workdir, exist_ok=True)
  text = owner.to_json()
  with open(os.path.join(workdir, lifecycle.LOCK_FILE), "w") as f:
    f.write(text)
  return text


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


# -- the lock -----------------------------------------------------------------


def test_lock_is_created_before_anything_else_and_removed_on_release(tmp_path):
  workdir = tmp_path / "new" / "run"
  with lifecycle.WorkdirLock(str(workdir)):
    assert sorted(os.listdir(workdir)) == [lifecycle.LOCK_FILE]
    owner = json.loads(_lock_text(workdir))
    assert owner["pid"] == os.getpid()
    assert owner["host"] == socket.gethostname()
  assert os.listdir(workdir) == []


def test_second_owner_is_refused_with_one_line_naming_the_first(tmp_path):
  with lifecycle.WorkdirLock(str(tmp_path)):
    with pytest.raises(lifecycle.WorkdirBusyError) as e:
      lifecycle.WorkdirLock(str(tmp_path)).acquire()
  message = str(e.value)
  assert "\n" not in message
  for part in (f"pid {os.getpid()}", f"host {socket.gethostname()}",
               "started", "another --workdir"):
    assert part in message
  assert isinstance(e.value, ValueError)  # the commands print it as one line


def test_busy_lock_held_by_another_live_process_is_kept(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import sys, time
          from ffr_jax import lifecycle
          with lifecycle.WorkdirLock({str(tmp_path)!r}):
            print("held", flush=True)
            sys.stdin.readline()
          """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(lifecycle.WorkdirBusyError, match=f"pid {holder.pid} "):
      lifecycle.WorkdirLock(str(tmp_path)).acquire()
  finally:
    holder.communicate("\n", timeout=30)
  assert holder.returncode == 0
  assert not (tmp_path / lifecycle.LOCK_FILE).exists()  # released by holder


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, caplog):
  _write_lock(tmp_path, pid=_dead_pid())
  with lifecycle.WorkdirLock(str(tmp_path)):
    assert json.loads(_lock_text(tmp_path))["pid"] == os.getpid()
  assert "no longer running" in caplog.text


@needs_proc
def test_reused_pid_is_detected_by_its_start_time(tmp_path, caplog):
  # Our own pid, alive, but recorded with a start an hour earlier: the
  # process that wrote the lock is gone and the pid was given to us.
  start = lifecycle.process_start_time(os.getpid())
  _write_lock(tmp_path, start_time=start - 3600, token="old")
  with lifecycle.WorkdirLock(str(tmp_path)):
    assert json.loads(_lock_text(tmp_path))["token"] != "old"
  assert "now belongs to a process started" in caplog.text


@needs_proc
def test_process_start_time_is_stable_and_recent():
  start = lifecycle.process_start_time(os.getpid())
  assert start == lifecycle.process_start_time(os.getpid())
  assert time.time() - 24 * 3600 < start <= time.time()


def test_other_host_lock_is_stale_only_after_the_heartbeat_timeout(tmp_path):
  _write_lock(tmp_path, host="elsewhere", pid=1, heartbeat=time.time() - 30)
  with pytest.raises(lifecycle.WorkdirBusyError, match="host elsewhere"):
    lifecycle.WorkdirLock(str(tmp_path), stale_after=60).acquire()
  _write_lock(tmp_path, host="elsewhere", pid=1, heartbeat=time.time() - 90)
  with lifecycle.WorkdirLock(str(tmp_path), stale_after=60):
    assert json.loads(_lock_text(tmp_path))["host"] == socket.gethostname()


def test_heartbeat_is_refreshed_while_held(tmp_path):
  with lifecycle.WorkdirLock(str(tmp_path), heartbeat_every=0.05,
                             stale_after=1.0):
    first = json.loads(_lock_text(tmp_path))["heartbeat"]
    time.sleep(0.5)
    assert json.loads(_lock_text(tmp_path))["heartbeat"] > first


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
  lock = lifecycle.WorkdirLock(str(tmp_path)).acquire()
  theirs = _write_lock(tmp_path, host="elsewhere", token="theirs")
  lock.release()
  assert _lock_text(tmp_path) == theirs


def test_take_over_loses_when_the_stale_lock_changed_since_read(tmp_path):
  # B read the stale lock, then A took it over first: B must not remove A's.
  stale = _write_lock(tmp_path, pid=_dead_pid())
  with lifecycle.WorkdirLock(str(tmp_path)):
    a_text = _lock_text(tmp_path)
    b = lifecycle.WorkdirLock(str(tmp_path))
    me = lifecycle._Owner.of_this_process()  # pylint: disable=protected-access
    assert not b._take_over(stale, me, "test")  # pylint: disable=protected-access
    assert _lock_text(tmp_path) == a_text


def test_two_racing_takers_of_a_stale_lock_one_wins(tmp_path):
  _write_lock(tmp_path, pid=_dead_pid())
  go = time.time() + 2.0  # all start together, after their imports
  code = textwrap.dedent(f"""
      import time
      from ffr_jax import lifecycle
      lock = lifecycle.WorkdirLock({str(tmp_path)!r})
      time.sleep(max(0.0, {go} - time.time()))
      try:
        lock.acquire()
      except lifecycle.WorkdirBusyError:
        print("busy", flush=True)
      else:
        print("won", flush=True)
        time.sleep(3.0)  # hold it while the others look
        lock.release()
      """)
  procs = [subprocess.Popen([sys.executable, "-c", code],
                            stdout=subprocess.PIPE, text=True)
           for _ in range(6)]
  outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
  assert outcomes == ["busy"] * 5 + ["won"]


def test_a_lock_taken_over_stops_the_holders_next_step(tmp_path):
  # This process stalled past the heartbeat timeout and another machine took
  # the workdir over: its next step check must stop it, not let it write on.
  with (lifecycle.WorkdirLock(str(tmp_path)) as lock,
        lifecycle.PreemptionGuard(process_count=1) as guard):
    should_stop = lock.checked(guard.should_stop)
    assert [should_stop(s) for s in range(3)] == [False, False, False]
    os.kill(os.getpid(), signal.SIGTERM)  # the guard's answer passes through
    assert should_stop(3)
    theirs = _write_lock(tmp_path, host="elsewhere", token="theirs")
    assert not lock._beat()  # pylint: disable=protected-access
    with pytest.raises(lifecycle.WorkdirLostError, match="host elsewhere"):
      should_stop(4)
    with pytest.raises(lifecycle.WorkdirLostError, match="host elsewhere"):
      lock.checked()(4)  # without a guard too
  assert _lock_text(tmp_path) == theirs  # theirs is left alone


def test_a_removed_lock_file_is_put_back_not_lost(tmp_path):
  # A clean-up script (or a user) removed the lock of a live run, and nobody
  # took the workdir since: the heartbeat re-creates it and the run goes on.
  with lifecycle.WorkdirLock(str(tmp_path)) as lock:
    mine = json.loads(_lock_text(tmp_path))["token"]
    os.unlink(os.path.join(tmp_path, lifecycle.LOCK_FILE))
    assert lock._beat()  # pylint: disable=protected-access
    assert json.loads(_lock_text(tmp_path))["token"] == mine
    assert lock.checked()(0) is False
  assert not (tmp_path / lifecycle.LOCK_FILE).exists()


def test_hosts_stop_together_when_host_0s_lock_is_lost(tmp_path, monkeypatch):
  # On several hosts only process 0 holds the lock; it must not stop alone
  # (the others would wait in a collective): they agree at an exchange step.
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  host0_lost = {"flag": 0}
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: [host0_lost["flag"], int(x)])
  # This is host 1: its lock is disabled; host 0's is lost at step 3.
  with (lifecycle.WorkdirLock(str(tmp_path), enabled=False) as lock,
        lifecycle.PreemptionGuard(process_count=2, sync_every=4) as guard):
    check = lock.checked(guard.should_stop)
    assert [check(s) for s in (1, 2, 3)] == [False] * 3
    host0_lost["flag"] = -1
    assert check(3) is False  # no exchange between steps 0 and 4
    with pytest.raises(lifecycle.WorkdirLostError, match="process 0"):
      check(4)
  # Host 0, whose lock another machine took over: it waits for the exchange.
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: [int(x), 0])
  with (lifecycle.WorkdirLock(str(tmp_path / "w0"), enabled=True) as lock,
        lifecycle.PreemptionGuard(process_count=2, sync_every=4) as guard):
    check = lock.checked(guard.should_stop)
    _write_lock(tmp_path / "w0", host="elsewhere", token="theirs")
    assert not lock._beat()  # pylint: disable=protected-access
    assert check(3) is False
    with pytest.raises(lifecycle.WorkdirLostError, match="host elsewhere"):
      check(4)


def test_a_training_run_checks_its_lock_at_every_step(tmp_path, monkeypatch):
  from ffr_jax import experiments  # pylint: disable=import-outside-toplevel
  from ffr_jax.training import run as run_lib  # pylint: disable=import-outside-toplevel
  from ffr_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  locks, steps = [], []
  acquire = lifecycle.WorkdirLock.acquire
  monkeypatch.setattr(lifecycle.WorkdirLock, "acquire",
                      lambda self: locks.append(self) or acquire(self))

  def fake_train(config, workdir, should_stop=None, reuse_data=None):
    for step in range(10):
      if step == 2:  # another machine takes over; the heartbeat notices
        _write_lock(workdir, host="elsewhere", token="theirs")
        locks[0]._beat()  # pylint: disable=protected-access
      should_stop(step)
      steps.append(step)
  monkeypatch.setattr(run_lib, "train_checked", fake_train)
  config = config_lib.load_config_file(
      os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py:smoke"))
  config_lib.apply_overrides(config, [("mode", "none")])
  with pytest.raises(lifecycle.WorkdirLostError, match="taken over"):
    experiments.train_command(config, str(tmp_path / "w"), config_path="",
                              overrides={})
  assert steps == [0, 1]


def test_disabled_lock_writes_nothing(tmp_path):
  with lifecycle.WorkdirLock(str(tmp_path / "w"), enabled=False):
    assert not (tmp_path / "w").exists()


# -- the guard ----------------------------------------------------------------

# A fake training loop: each step is 0.2 s of Python work, so a signal's
# handler runs inside the step in which the signal arrives.
_LOOP = textwrap.dedent("""
    import signal, sys, time
    from ffr_jax import lifecycle
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    step_seconds = float(sys.argv[1])
    try:
      with lifecycle.PreemptionGuard(process_count=1) as guard:
        step = 0
        while step < 1000:
          step += 1
          print(f"start {step} requested={guard.signal_name}", flush=True)
          t = time.time()
          while time.time() - t < step_seconds:
            pass
          print(f"done {step}", flush=True)
          if guard.should_stop(step):
            break
    except KeyboardInterrupt:
      print("keyboard interrupt", flush=True)
    after = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    print(f"stopped {step} {guard.signal_name} restored={after == before}",
          flush=True)
    sys.exit(guard.exit_code or 0)
    """)


def _start_loop(step_seconds: float) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-c", _LOOP, str(step_seconds)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _rest(proc, timeout: float = 30) -> list[str]:
  """The remaining output lines. (Not communicate(): with a timeout it reads
  the pipe's fd directly and loses what the text wrapper has buffered.)"""
  proc.wait(timeout=timeout)
  return proc.stdout.read().splitlines()


def _read_until(proc, prefix: str) -> list[str]:
  lines = []
  for line in proc.stdout:
    lines.append(line.strip())
    if prefix in line:
      return lines
  raise AssertionError(f"no {prefix!r} in:\n" + "\n".join(lines))


def test_sigterm_finishes_the_step_then_stops_with_143(tmp_path):
  proc = _start_loop(0.2)
  out = _read_until(proc, "done 2")
  proc.send_signal(signal.SIGTERM)
  out += _rest(proc)
  assert proc.returncode == lifecycle.exit_code(signal.SIGTERM) == 143
  stopped = out[-1].split()
  assert stopped[0] == "stopped" and stopped[2:] == ["SIGTERM", "restored=True"]
  last = int(stopped[1])
  # The step the signal arrived in (or, when it came between a check and the
  # next step, that next step) ran to its end, and the check right after it
  # said stop: no later step began, and no earlier step saw the request.
  assert any(line.startswith(f"start {last} requested=") for line in out)
  assert not any(line == f"start {j} requested=SIGTERM"
                 for j in range(1, last) for line in out)
  assert f"done {last}" in out
  assert not any(line.startswith(f"start {last + 1} ") for line in out)
  assert sum("stopping after this step" in line for line in out) == 1


def test_second_sigint_raises_keyboard_interrupt(tmp_path):
  proc = _start_loop(30.0)  # one long step: the second Ctrl-C comes inside it
  _read_until(proc, "start 1")
  proc.send_signal(signal.SIGINT)
  _read_until(proc, "stopping after this step")
  proc.send_signal(signal.SIGINT)
  out = _rest(proc)
  assert "keyboard interrupt" in out
  assert "done 1" not in out
  assert out[-1] == "stopped 1 SIGINT restored=True"
  assert proc.returncode == 130


def test_repeated_sigterm_does_not_abort_the_stop():
  proc = _start_loop(1.0)
  _read_until(proc, "start 1")
  proc.send_signal(signal.SIGTERM)
  _read_until(proc, "stopping after this step")
  proc.send_signal(signal.SIGTERM)
  out = _rest(proc)
  assert out[-1] == "stopped 1 SIGTERM restored=True"
  assert proc.returncode == 143


def test_preempted_is_one_line_with_the_signal_exit_code():
  e = lifecycle.Preempted(step=12, stage="stage2", signal_name="SIGINT")
  assert str(e) == ("stopped at step 12 of stage2 (SIGINT); rerun the same "
                    "command to resume")
  assert e.exit_code == 130
  assert not isinstance(e, (ValueError, KeyError, OSError))


def test_hosts_agree_on_the_step_of_a_local_stop(monkeypatch):
  """Several processes: the flag counts only at exchange steps, and any
  host's flag stops every host (a fake two-host all-gather)."""
  from jax.experimental import multihost_utils
  other_host = {"flag": 0}
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: [int(x), other_host["flag"]])
  guard = lifecycle.PreemptionGuard(process_count=2, sync_every=4)
  with guard:
    assert not guard.should_stop(1)
    other_host["flag"] = int(signal.SIGTERM)  # Ctrl-C... on the other host
    assert not guard.should_stop(2)
    assert not guard.should_stop(3)
    assert guard.should_stop(4)
    assert guard.should_stop(4)  # asked twice for one step: same answer
  assert guard.signal_name == "SIGTERM" and guard.exit_code == 143


# A two-process jax.distributed job on CPU: a signal to one process stops
# both after the same step.
_HOST = textwrap.dedent("""
    import sys, time
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[2],
                               num_processes=2, process_id=int(sys.argv[1]))
    from ffr_jax import lifecycle
    with lifecycle.PreemptionGuard(sync_every=3) as guard:
      step = 0
      while step < 400:
        step += 1
        time.sleep(0.05)
        if step == 5:
          print("at step 5", flush=True)
        if guard.should_stop(step):
          break
    print(f"stopped at {step} {guard.signal_name}", flush=True)
    jax.distributed.shutdown()
    sys.exit(guard.exit_code or 0)
    """)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_two_hosts_stop_after_the_same_step(signum):
  """SIGTERM goes through JAX's preemption service, Ctrl-C through the flag
  exchange; either way the host not signalled stops at the same step."""
  address = f"localhost:{_free_port()}"
  hosts = [subprocess.Popen([sys.executable, "-c", _HOST, str(i), address],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  try:
    _read_until(hosts[1], "at step 5")
    hosts[1].send_signal(signum)
    outs = [_rest(h, timeout=120) for h in hosts]
  finally:
    for h in hosts:
      if h.poll() is None:
        h.kill()
  name = signal.Signals(signum).name
  stops = [[line for line in out if line.startswith("stopped at")]
           for out in outs]
  assert stops[0] == stops[1] and len(stops[0]) == 1, outs
  step = int(stops[0][0].split()[2])
  assert 5 <= step < 400 and stops[0][0].endswith(name), outs
  assert [h.returncode for h in hosts] == [lifecycle.exit_code(signum)] * 2
