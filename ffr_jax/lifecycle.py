"""One owner per workdir (:class:`WorkdirLock`) and clean stops on SIGTERM /
Ctrl-C (:class:`PreemptionGuard`), as docs/reliability.md tells; no jax import."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging

LOCK_FILE = ".ffr_lock.json"
TMP_SUFFIX = ".tmp"
# A mutex older than this was left by a process killed inside the critical
# section (which lasts milliseconds).
MUTEX_STALE_AFTER = 10.0
# Start times read twice from /proc for the same process agree to the clock
# tick; a reused pid started later.
_START_TIME_TOLERANCE = 0.5


def exit_code(signum: int) -> int:
  """The shell's exit code of a process stopped by ``signum`` (143, 130)."""
  return 128 + int(signum)


class WorkdirBusyError(ValueError):
  """Another live process owns the workdir (one line naming it)."""


class WorkdirLostError(WorkdirBusyError):
  """Another process took the workdir over while this one held it."""


class Preempted(Exception):
  """A stage stopped on a signal after saving its checkpoint (exit ``128 + signal``)."""

  def __init__(self, step: int | None, stage: str, signal_name: str | None):
    self.step, self.stage = step, stage
    self.signal_name = signal_name or "SIGTERM"
    self.exit_code = exit_code(signal.Signals[self.signal_name])
    where = f"at step {step} of {stage}" if step is not None else f"in {stage}"
    super().__init__(f"stopped {where} ({self.signal_name}); rerun the same "
                     "command to resume")


def _read(path: str) -> str | None:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except (FileNotFoundError, NotADirectoryError):
    return None


def process_start_time(pid: int) -> float | None:
  """Start of ``pid`` (epoch seconds) from /proc; None without /proc."""
  stat, boot = _read(f"/proc/{pid}/stat"), _read("/proc/stat")
  if stat is None or boot is None:
    return None
  try:
    # The command name (field 2) may hold spaces and parentheses: fields
    # after its last ')' start at field 3, so field 22 (starttime) is 19.
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    btime = next(int(line.split()[1]) for line in boot.splitlines()
                 if line.startswith("btime "))
  except (IndexError, ValueError, StopIteration):  # not the Linux format
    return None
  return btime + ticks / os.sysconf("SC_CLK_TCK")


def _machine() -> dict[str, str]:
  """What "the same machine and pid space" means: host name, boot and pid
  namespace (two containers on one host may share a host name)."""
  boot_id = (_read("/proc/sys/kernel/random/boot_id") or "").strip()
  try:
    pid_ns = os.readlink("/proc/self/ns/pid")
  except OSError:
    pid_ns = ""
  return {"host": socket.gethostname(), "boot_id": boot_id, "pid_ns": pid_ns}


def pid_alive(pid: int) -> bool:
  """Whether process ``pid`` runs on this machine (another user's counts)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    pass
  return True


@contextlib.contextmanager
def temporary_for(path: str) -> Iterator[str]:
  """``{path}.tmp-PID`` for an atomic write, removed if the write fails; dead
  writers' temporaries are removed first, live ones left (shards share files)."""
  for old in glob.glob(glob.escape(path) + ".tmp-*"):
    pid = old.rpartition(".tmp-")[2]
    if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
      with contextlib.suppress(FileNotFoundError):
        os.remove(old)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    yield tmp
  finally:
    with contextlib.suppress(FileNotFoundError):  # gone once renamed
      os.remove(tmp)


# A write refused by the disk: the user's to fix (space, permissions).
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                errno.EPERM)
# Orbax writes arrays with tensorstore, whose errors are ValueErrors that
# carry the errno in their text.
_TENSORSTORE_OS_ERROR = re.compile(
    r'(?:local file|Failed writing:) "([^"]+)".*\[os_error_code=\'(\d+)\'\]',
    re.S)


def disk_refusal(e: BaseException | None) -> tuple[str | None, int] | None:
  """``(path, errno)`` of a write the disk refused anywhere in ``e``'s causes."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    path, code = None, None
    if isinstance(e, OSError):
      path, code = e.filename, e.errno
    elif m := _TENSORSTORE_OS_ERROR.search(str(e)):
      path, code = m.group(1), int(m.group(2))
    if code in WRITE_ERRNOS:
      return path, code
    e = e.__cause__ or e.__context__
  return None


def write_atomic(path: str, content: str | bytes) -> None:
  """Writes via a synced temporary file and a rename: never a torn file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  binary = isinstance(content, bytes)
  with temporary_for(path) as tmp:
    with open(tmp, "wb" if binary else "w",
              encoding=None if binary else "utf-8") as f:
      f.write(content)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)


def _describe_time(t: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


@dataclasses.dataclass
class _Owner:
  """The content of a lock file."""
  host: str
  boot_id: str
  pid_ns: str
  pid: int
  start_time: float
  start_time_from_proc: bool
  heartbeat: float
  command: str
  token: str

  @classmethod
  def of_this_process(cls) -> _Owner:
    start = process_start_time(os.getpid())
    now = time.time()
    # One line, whatever the arguments held.
    command = " ".join(sys.argv).replace("\n", " ")
    return cls(**_machine(), pid=os.getpid(),
               start_time=now if start is None else start,
               start_time_from_proc=start is not None, heartbeat=now,
               command=command, token=uuid.uuid4().hex)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def parse(cls, text: str | None) -> _Owner | None:
    """None for a missing, half-written or foreign file."""
    try:
      return cls(**json.loads(text))
    except (TypeError, ValueError):
      return None

  def why_stale(self, stale_after: float) -> str | None:
    """Why this owner is gone, or None while it may still be working."""
    here = _machine()
    if (self.host, self.boot_id, self.pid_ns) == (
        here["host"], here["boot_id"], here["pid_ns"]):
      if not pid_alive(self.pid):
        return f"pid {self.pid} is no longer running"
      now_start = process_start_time(self.pid)
      if (self.start_time_from_proc and now_start is not None and
          abs(now_start - self.start_time) > _START_TIME_TOLERANCE):
        return (f"pid {self.pid} now belongs to a process started at "
                f"{_describe_time(now_start)}")
      return None
    age = time.time() - self.heartbeat
    if age > stale_after:
      return f"its last heartbeat was {age:.0f} s ago (> {stale_after:.0f} s)"
    return None

  def describe(self) -> str:
    age = time.time() - self.heartbeat
    return (f"pid {self.pid} on host {self.host} (started "
            f"{_describe_time(self.start_time)}, last heartbeat {age:.0f} s "
            f"ago, command: {self.command})")


def _create_exclusive(path: str, text: str) -> bool:
  """Writes ``path`` only if no file is there, as a hard link of a finished
  temporary (O_EXCL where links fail: a reader may see a half-written file)."""
  tmp = f"{path}.{uuid.uuid4().hex}{TMP_SUFFIX}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  except OSError:
    pass
  finally:
    os.unlink(tmp)
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write(text)
  return True


def _remove_stale_temps(path: str) -> None:
  """Removes the lock's and mutex's ``{path}.*.tmp`` left by a killed writer."""
  for tmp in glob.glob(glob.escape(path) + ".*" + TMP_SUFFIX):
    age = _mtime_age(tmp)
    if age is not None and age > MUTEX_STALE_AFTER:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _mtime_age(path: str) -> float | None:
  try:
    return time.time() - os.stat(path).st_mtime
  except FileNotFoundError:
    return None


class WorkdirLock:
  """The one owner of a workdir (a context manager, or acquire()/release()).

  ``enabled`` None: only jax process 0 takes it. A lock from another machine
  whose heartbeat is older than ``stale_after`` (keep it well above the hosts'
  clock skew) is stale.
  """

  def __init__(self, workdir: str, *, enabled: bool | None = None,
               heartbeat_every: float = 30.0, stale_after: float = 300.0):
    if stale_after <= heartbeat_every:
      raise ValueError(f"stale_after ({stale_after} s) must be longer than "
                       f"heartbeat_every ({heartbeat_every} s).")
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    # Held for the milliseconds of a take-over, heartbeat or release, so those
    # never interleave: this makes a take-over race-free.
    self._mutex = self.path + ".mutex"
    self._enabled = enabled
    self.heartbeat_every, self.stale_after = heartbeat_every, stale_after
    self._owner: _Owner | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.lost: str | None = None  # who took the lock from us, once one did

  def acquire(self) -> WorkdirLock:
    """Takes the lock or raises :class:`WorkdirBusyError`."""
    if not self._is_enabled():
      return self
    if self._owner is not None:
      raise RuntimeError(f"{self.path} is already held by this object.")
    os.makedirs(self.workdir, exist_ok=True)
    _remove_stale_temps(self.path)
    me = _Owner.of_this_process()
    deadline = time.monotonic() + 2.0
    while True:
      if _create_exclusive(self.path, me.to_json()):
        break
      text = _read(self.path)
      if text is None and time.monotonic() < deadline:
        continue  # released in between: try again
      owner = _Owner.parse(text)
      why = self._why_stale(owner)
      if why is None:
        if owner is None and time.monotonic() < deadline:
          time.sleep(0.05)  # maybe half-written (O_EXCL fallback)
          continue
        raise WorkdirBusyError(self._busy_message(owner))
      if self._take_over(text, me, why):
        break
      if time.monotonic() > deadline:  # name whoever holds it now
        current = _Owner.parse(_read(self.path))
        raise WorkdirBusyError(self._busy_message(current or owner))
      time.sleep(0.05)  # someone else is taking it over: see who won
    self._owner = me
    self._stop.clear()
    self._thread = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                    name="ffr-workdir-heartbeat")
    self._thread.start()
    return self

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still ours."""
    if self._owner is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    owner, self._owner = self._owner, None
    def remove_if_ours() -> bool:
      if self._is_ours(owner):
        os.unlink(self.path)
      return True
    # Waiting for the mutex rules out unlinking a lock another process just
    # took over; without it (its holder stuck) the check alone still holds.
    try:
      held = self._with_mutex(remove_if_ours, wait=MUTEX_STALE_AFTER)
    except OSError:  # a full disk refuses the mutex, not the unlink
      held = False
    if not held:
      remove_if_ours()

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()

  def _is_enabled(self) -> bool:
    if self._enabled is None:
      # Process 0 of a jax.distributed job, or the only process. Asked of the
      # distributed state, not jax.process_index(), which would start the
      # backend (a subprocess sweep's parent must leave the devices alone).
      self._enabled = process_index() == 0
    return self._enabled

  def _why_stale(self, owner: _Owner | None) -> str | None:
    if owner is not None:
      return owner.why_stale(self.stale_after)
    age = _mtime_age(self.path)
    if age is not None and age > self.stale_after:
      return f"the lock file is unreadable and {age:.0f} s old"
    return None

  def _busy_message(self, owner: _Owner | None) -> str:
    who = (owner.describe() if owner is not None
           else "a process whose lock file is unreadable")
    return (f"workdir {self.workdir} is in use by {who}; wait for it to "
            "finish or stop it, or use another --workdir (remove "
            f"{self.path} only if that process is gone).")

  def _take_over(self, stale_text: str, me: _Owner, why: str) -> bool:
    """Replaces the stale lock ``stale_text`` by ours; False if another
    process holds the mutex or changed the lock since we read it."""
    def swap() -> bool:
      if _read(self.path) != stale_text:
        return False
      os.unlink(self.path)
      # A fresh acquirer may link its lock in between: then it owns it.
      return _create_exclusive(self.path, me.to_json())
    won = self._with_mutex(swap, wait=0.0)
    if won:
      logging.warning("Took over the stale lock %s: %s.", self.path, why)
    return bool(won)

  def _with_mutex(self, fn: Callable[[], Any], wait: float) -> Any:
    """``fn()`` while holding the mutex file; False if it stayed taken for
    ``wait`` seconds. A mutex left by a killed process is removed."""
    deadline = time.monotonic() + wait
    while not _create_exclusive(self._mutex, str(os.getpid())):
      age = _mtime_age(self._mutex)
      if age is not None and age > MUTEX_STALE_AFTER:
        with contextlib.suppress(FileNotFoundError):
          os.unlink(self._mutex)
        continue
      if time.monotonic() >= deadline:
        return False
      time.sleep(0.01)
    try:
      return fn()
    finally:
      os.unlink(self._mutex)

  def _is_ours(self, owner: _Owner) -> bool:
    current = _Owner.parse(_read(self.path))
    return current is not None and current.token == owner.token

  def _heartbeat_loop(self) -> None:
    while not self._stop.wait(self.heartbeat_every):
      if not self._beat():
        return

  def _beat(self) -> bool:
    """Refreshes the heartbeat; False (and a warning) once the lock is no
    longer ours."""
    owner = self._owner
    if owner is None:
      return False
    def refresh() -> bool:
      owner.heartbeat = time.time()
      if _read(self.path) is None:
        # Removed by hand or by a clean-up script and taken by nobody since:
        # still ours, so it is put back.
        if _create_exclusive(self.path, owner.to_json()):
          logging.warning("The lock %s was removed while this process held "
                          "it; re-created.", self.path)
          return True
      if not self._is_ours(owner):
        return False
      write_atomic(self.path, owner.to_json())
      return True
    outcome = self._with_mutex(refresh, wait=1.0)
    if outcome is False and not self._is_ours(owner):
      current = _Owner.parse(_read(self.path))
      self.lost = (current.describe() if current
                   else "a process whose lock file is unreadable")
      logging.warning("The lock %s is no longer held by this process (%s).",
                      self.path, self.lost)
      return False
    return True

  def checked(self, should_stop: Callable[..., bool] | None = None
              ) -> Callable[[int], bool]:
    """``should_stop(step)`` that also stops the run, without saving more,
    once the lock was taken over (through the guard's ``lost``, so all hosts
    stop together)."""
    def check(step: int) -> bool:
      reason = None if self.lost is None else (
          f"workdir {self.workdir} was taken over by {self.lost} while this "
          "run held it (it stalled past the heartbeat timeout); stopped "
          "without saving more: the workdir is that process's now.")
      if should_stop is not None:
        return bool(should_stop(step, lost=reason))
      if reason is not None:
        raise WorkdirLostError(reason)
      return False
    return check


# A process waiting for another's folder says so this often.
WAIT_LOG_EVERY = 30.0


@contextlib.contextmanager
def owned_folder(path: str, what: str, poll: float = 0.2,
                 while_waiting: Callable[[], None] | None = None,
                 all_hosts: bool = True):
  """Holds shared folder ``path`` (host 0) while this process writes ``what``
  there; a live owner is waited for (its result is then reused), a dead one's
  lock taken over.

  ``while_waiting()`` runs at every poll (a stop check may raise from it);
  with ``all_hosts`` the hosts of a multi-host job meet once host 0 holds it.
  """
  lock, said = WorkdirLock(path), None
  while True:
    try:
      lock.acquire()
      break
    except WorkdirBusyError:
      if while_waiting is not None:
        while_waiting()
      owner = _Owner.parse(_read(lock.path))
      if owner is not None and owner.pid == os.getpid() and (
          owner.host, owner.boot_id) == (_machine()["host"], _machine()["boot_id"]):
        raise ValueError(f"{path} is already held by this process (for "
                         "another purpose): give the run, its data and its "
                         "synthetic images folders of their own.") from None
      if said is None or time.monotonic() - said >= WAIT_LOG_EVERY:
        logging.info("Waiting for %s to finish %s in %s.",
                     owner.describe() if owner else "another process", what, path)
        said = time.monotonic()
      time.sleep(poll)
  try:
    if all_hosts and process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"ffr_jax:owned:{path}")
    yield lock
  finally:
    lock.release()


def _distributed_state():
  """jax.distributed's state, read without starting a backend (None without jax)."""
  if sys.modules.get("jax") is None:
    return None
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state


def process_index() -> int:
  state = _distributed_state()
  return 0 if state is None else int(state.process_id)


def process_count() -> int:
  state = _distributed_state()
  return 1 if state is None else int(state.num_processes)


def _jax_preemption_service_running() -> bool:
  """Whether jax.distributed's preemption service (owning SIGTERM) runs."""
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
  except ImportError:  # a jax without it: our own handler then
    return False
  state = distributed.global_state
  return (getattr(state, "client", None) is not None and
          getattr(state, "preemption_sync_manager", None) is not None)


class PreemptionGuard:
  """Turns SIGTERM and the first Ctrl-C into a stop after the current step.

  On several processes ``should_stop`` is collective (every process calls it
  with the same steps): SIGTERM is left to JAX's preemption service, Ctrl-C
  flags are all-gathered every ``sync_every`` steps.
  """

  def __init__(self, *, sync_every: int = 10,
               process_count: int | None = None):
    if sync_every < 1:
      raise ValueError(f"sync_every must be >= 1, got {sync_every}.")
    self.sync_every = sync_every
    self._process_count = process_count
    self._signum: int | None = None  # the first stop signal received
    self._agreed: int | None = None  # what all hosts agreed on
    self._previous: dict[int, Any] = {}
    self._checked: tuple[int, bool] | None = None
    self._jax_owns_sigterm = False

  @property
  def signal_name(self) -> str | None:
    """``SIGTERM``/``SIGINT`` once a stop was requested (agreed on), else None."""
    signum = self._agreed or self._signum
    return None if signum is None else signal.Signals(signum).name

  @property
  def exit_code(self) -> int | None:
    signum = self._agreed or self._signum
    return None if signum is None else exit_code(signum)

  def __enter__(self) -> PreemptionGuard:
    if self._process_count is None:
      import jax  # pylint: disable=g-import-not-at-top  # only when asked
      self._process_count = jax.process_count()
    if self._process_count > 1:
      self._jax_owns_sigterm = _jax_preemption_service_running()
    signals = [signal.SIGINT] + ([] if self._jax_owns_sigterm
                                 else [signal.SIGTERM])
    if threading.current_thread() is not threading.main_thread():
      logging.warning("PreemptionGuard outside the main thread: signals keep "
                      "their handlers.")
      return self
    for signum in signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame) -> None:
    del frame
    if self._signum is not None:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt  # the user insists
      return  # a repeated SIGTERM: the stop is already under way
    self._signum = signum
    logging.warning("Received %s: stopping after this step with a checkpoint "
                    "(Ctrl-C again to abort at once).",
                    signal.Signals(signum).name)

  def should_stop(self, step: int, lost: str | None = None) -> bool:
    """Whether to save and stop after ``step`` (the same on every host).

    ``lost`` (:meth:`WorkdirLock.checked`) raises :class:`WorkdirLostError`,
    on several hosts at the next flag exchange so none waits in a collective.
    """
    if self._process_count is None or self._process_count <= 1:
      if lost is not None:
        raise WorkdirLostError(lost)
      return self._signum is not None
    if self._checked is not None and self._checked[0] == step:
      return self._checked[1]  # a second call for one step costs nothing
    stop = self._collective_stop(step, lost)
    self._checked = (step, stop)
    return stop

  def _collective_stop(self, step: int, lost: str | None) -> bool:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if self._jax_owns_sigterm and (
        multihost_utils.reached_preemption_sync_point(step)):
      self._agreed = int(signal.SIGTERM)
      return True
    if step % self.sync_every:
      return False
    # -1: a lost workdir lock, which outranks any signal.
    flags = multihost_utils.process_allgather(
        np.int32(-1 if lost is not None else self._signum or 0))
    if int(np.min(flags)) < 0:
      raise WorkdirLostError(lost or "the workdir lock of process 0 was taken "
                             "over while this run held it; stopped without "
                             "saving more.")
    if int(np.max(flags)) == 0:
      return False
    self._agreed = int(np.max(flags))
    return True
