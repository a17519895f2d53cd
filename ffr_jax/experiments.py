"""The sweep engine: a grid of runs, each in its own sub-workdir; rerun to resume.

docs/experiments.md ("Sweep configs") describes sweep configs, the run folders
(``{workdir}/runs/{name}``), the shared folders (``{workdir}/shared/``: data,
synthetic images, stages), resuming, failures and shards. The commands' work:
:func:`sweep_command` (``ffr_jax.sweep``) and :func:`train_command` (``ffr_jax.main``).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections

from ffr_jax import config as config_lib
from ffr_jax import lifecycle
from ffr_jax.mesh import maybe_initialize_distributed
from ffr_jax.data import datasets
from ffr_jax.registry import Registry
from ffr_jax.reporting import results as results_lib
from ffr_jax.training import run as run_lib
from ffr_jax.training import spec as spec_lib
from ffr_jax.training import stage as stage_lib

RUNS_DIR = "runs"
SHARED_DIR = "shared"  # {workdir}/shared/{real,synthetic,stages}
CONFIG_KEY = "config"  # the grid key that names the run config file
MANIFEST_LOCK = ".sweep_json.lock"  # held while a shard updates sweep.json
AUTO_SHARD = "auto"  # --shard=auto: take the units no other process holds
CLAIMS_DIR = ".claims"  # {workdir}/.claims/{unit}: the process working on it
CLAIMED = "claimed"  # an outcome: left to the process that held its unit
# Keys first in a run's name, in this order; then the rest alphabetically,
# then the seed, so the names of one sweep sort into readable blocks.
NAME_ORDER = (CONFIG_KEY, "data.name", "data.bias_ratio", "mode", "method")

def format_value(value: Any) -> str:
  """A value as ``--config.key=VALUE`` and run names spell it."""
  if isinstance(value, (list, tuple, dict)):
    raise ValueError(f"Sweep values must be scalars, got {value!r}.")
  return str(value)


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep."""

  name: str  # its sub-workdir under {workdir}/runs, from its grid values
  config_path: str  # path[:arg]
  overrides: tuple[tuple[str, Any], ...]  # fixed, grid, then shared folders
  config: ml_collections.ConfigDict  # overrides applied
  run_dir: str
  unit: str  # the RunSpec's unit: a shard takes whole units

  def command(self, python: str = "python") -> list[str]:
    """The ``ffr_jax.main`` command that trains this run on its own."""
    return ([python, "-m", "ffr_jax.main", f"--config={self.config_path}",
             f"--workdir={self.run_dir}"] +
            [f"--config.{k}={format_value(v)}" for k, v in self.overrides])

  def finished(self) -> bool:
    return os.path.isfile(os.path.join(self.run_dir, results_lib.RESULTS_FILE))


def _key_rank(key: str) -> tuple:
  if key in NAME_ORDER:
    return (0, NAME_ORDER.index(key), key)
  return (2 if key == "seed" else 1, 0, key)


def _name_part(key: str, value: Any) -> str:
  if key == CONFIG_KEY:  # configs/spuco.py:smoke -> config=spuco:smoke
    file, arg = config_lib.split_config_path(str(value))
    value = os.path.splitext(os.path.basename(file))[0] + (
        f":{arg}" if arg is not None else "")
  text = format_value(value)
  if "/" in text or text in ("", ".", ".."):
    raise ValueError(f"Sweep value {value!r} of {key!r} cannot name a folder.")
  return f"{key}={text}"


def run_name(assignment: Mapping[str, Any]) -> str:
  """``{"seed": 0, "mode": "ffr"}`` -> ``"mode=ffr/seed=0"``."""
  keys = sorted(assignment, key=_key_rank)
  return "/".join(_name_part(k, assignment[k]) for k in keys)


def expand_grid(grid: Sequence[Mapping[str, Sequence[Any]]]
                ) -> list[dict[str, Any]]:
  """The union of the cartesian products of each grid dict, in order."""
  out = []
  for entry in grid:
    keys = list(entry)
    for key in keys:
      if isinstance(entry[key], (str, bytes)) or not isinstance(entry[key], Iterable):
        raise ValueError(f"Grid values of {key!r} must be a tuple or list, got "
                         f"{entry[key]!r}.")
    out += [dict(zip(keys, combo))
            for combo in itertools.product(*(entry[k] for k in keys))]
  return out


def _shared_data_dirs(config: ml_collections.ConfigDict, shared: str
                      ) -> list[tuple[str, str]]:
  """``data.root`` / ``data.synthetic_root`` overrides for shared folders.

  Only folders a run would otherwise make in its own workdir are shared, named
  by the RunSpec's data identity: a self-contained dataset's rendered data and
  the synthetic pool (one pool serves every bias ratio and mode). User-given
  roots are left alone.
  """
  out, name = [], str(config.data.name)
  identity = spec_lib.data_identity(config)
  if not config.data.root and datasets.get_dataset(name).self_contained:
    out.append(("data.root", os.path.join(
        shared, "real", f"{name}-{identity.prepared[:12]}")))
  if not config.data.synthetic_root:
    out.append(("data.synthetic_root", os.path.join(
        shared, "synthetic", f"{name}-{identity.pool[:12]}")))
  return out


def expand(sweep: ml_collections.ConfigDict, workdir: str,
           base: ml_collections.ConfigDict | None = None) -> list[Run]:
  """The runs of a sweep config, in grid order, without duplicates.

  ``base``: the run config, when the caller has it (``main`` with comma
  lists); else ``sweep.config`` is loaded.
  """
  workdir = os.path.abspath(workdir)
  shared = os.path.join(workdir, SHARED_DIR)
  bases: dict[str, ml_collections.ConfigDict] = {}
  if base is not None:
    bases[str(sweep.config)] = base
  runs, seen = [], {}
  fixed = [(str(k), v) for k, v in sweep.fixed]
  for assignment in expand_grid(sweep.grid):
    config_path = str(assignment.get(CONFIG_KEY, sweep.config))
    if config_path not in bases:
      bases[config_path] = config_lib.load_config_file(config_path)
    config = copy.deepcopy(bases[config_path])
    grid_overrides = [(k, v) for k, v in assignment.items() if k != CONFIG_KEY]
    config_lib.apply_overrides(config, fixed + grid_overrides)
    name = run_name({k: v for k, v in assignment.items()
                     if k not in tuple(sweep.get("unnamed", ()))})
    run_lib.check_one_run(config, f"Run {name!r}: ")
    identity = (config_path, spec_lib.json_digest(config_lib.flatten(config), 64))
    if identity in seen:
      continue  # the same settings from another grid dict: run once
    if name in seen.values():
      raise ValueError(
          f"Two runs with different settings are both named {name!r}; a key "
          "listed in `unnamed` must follow from the named ones.")
    seen[identity] = name
    derived = _shared_data_dirs(config, shared)
    if not config.train.stages_dir:
      derived.append(("train.stages_dir", os.path.join(shared, "stages")))
    config_lib.apply_overrides(config, derived)
    runs.append(Run(
        name=name, config_path=config_path,
        overrides=tuple(fixed + grid_overrides + derived), config=config,
        run_dir=os.path.join(workdir, RUNS_DIR, *name.split("/")),
        unit=spec_lib.plan_run(config).unit))
  dirs = sorted((r.run_dir + os.sep, r.name) for r in runs)
  for (a, na), (b, nb) in zip(dirs, dirs[1:]):
    if b.startswith(a):
      raise ValueError(
          f"Run {nb!r} would live inside run {na!r}; give both grid dicts the "
          "same keys.")
  return runs


def parse_shard(text: str) -> tuple[int, int]:
  """``"2/8"`` -> ``(2, 8)``; shards are numbered 0..n-1."""
  try:
    i, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise ValueError(f"--shard must look like i/n (e.g. 0/4) or be "
                     f"{AUTO_SHARD}, got {text!r}.") from None
  if n < 1 or not 0 <= i < n:
    raise ValueError(f"--shard={text}: need n >= 1 and 0 <= i < n.")
  return i, n


def shard(runs: Sequence[Run], index: int, count: int) -> list[Run]:
  """The runs of shard ``index`` of ``count``, in sweep order: whole units,
  greedily (largest first) to the shard with the fewest runs; deterministic."""
  units: dict[str, list[int]] = {}
  for i, r in enumerate(runs):
    units.setdefault(r.unit, []).append(i)
  order = sorted(units.values(), key=lambda u: (-len(u), u[0]))
  loads = [0] * count
  mine = []
  for unit in order:
    target = min(range(count), key=lambda s: (loads[s], s))
    loads[target] += len(unit)
    if target == index:
      mine.extend(unit)
  return [runs[i] for i in sorted(mine)]


@dataclasses.dataclass
class Outcome:
  name: str
  status: str  # "skipped" (finished earlier), "done", "failed", CLAIMED
  seconds: float = 0.0
  error: str = ""


def run_subprocess(run: Run, should_stop=None, state: dict | None = None) -> None:
  """Runs ``run.command()``, output appended to ``{run_dir}/sweep.log`` (a
  signal reaches the child through the process group)."""
  del should_stop, state
  os.makedirs(run.run_dir, exist_ok=True)
  with open(os.path.join(run.run_dir, "sweep.log"), "a") as log:
    log.write(f"\n$ {shlex.join(run.command())}\n")
    log.flush()
    proc = subprocess.run(run.command(sys.executable), stdout=log,
                          stderr=subprocess.STDOUT, check=False)
  if proc.returncode != 0:
    # A full or read-only disk fails every later run alike: the probe raises
    # the disk's error, which stops the sweep.
    probe = os.path.join(run.run_dir, ".write_probe")
    lifecycle.write_atomic(probe, "")
    os.remove(probe)
    raise RuntimeError(f"exit code {proc.returncode}; see "
                       f"{os.path.join(run.run_dir, 'sweep.log')}")


def run_in_process(run: Run, should_stop=None, state: dict | None = None
                   ) -> None:
  """Trains ``run`` in this process; ``state`` keeps recent runs' data for
  the later runs of the sweep that read the same (compiled steps are kept by
  :func:`ffr_jax.training.steps.shared`)."""
  with run_lib.owned_workdir(run.run_dir) as lock:
    run_lib.train_and_evaluate(run.config, run.run_dir,
                               lock.checked(should_stop), state)


@dataclasses.dataclass(frozen=True)
class Executor:
  """How a sweep runs each run: ``run(run, should_stop, state)``.

  ``in_process``: runs train here, so this process starts jax's backend and
  its guard's stop is collective; a subprocess sweep's parent never starts it
  (it would hold the accelerators its runs need).
  """

  run: Callable[..., None]
  in_process: bool


EXECUTORS: Registry[Executor] = Registry("executor")
EXECUTORS.register("subprocess", Executor(run_subprocess, in_process=False))
EXECUTORS.register("inprocess", Executor(run_in_process, in_process=True))


class _Claims:
  """The one unit this process works on, held as a lock under ``folder``;
  another process's unit is left to it (``--shard=auto``)."""

  def __init__(self, folder: str):
    self.folder, self.unit, self.lock = folder, None, None

  def take(self, unit: str) -> bool:
    if unit == self.unit:
      return True
    self.release()
    lock = lifecycle.WorkdirLock(os.path.join(self.folder, unit), enabled=True)
    try:
      self.lock = lock.acquire()
    except lifecycle.WorkdirBusyError:
      return False
    self.unit = unit
    return True

  def release(self) -> None:
    if self.lock is not None:
      self.lock.release()
    self.unit, self.lock = None, None


def execute(runs: Sequence[Run], executor: str = "subprocess",
            log=print, guard: lifecycle.PreemptionGuard | None = None,
            claims: str | None = None) -> list[Outcome]:
  """Runs every unfinished run in order; a failure is recorded, not raised.

  A stop signal (``guard``) ends the sweep with
  :class:`~ffr_jax.lifecycle.Preempted` after the current run's checkpoint;
  the stopped run is no failure. With ``claims`` (a folder), a run whose unit
  another live process holds there is left to it.
  """
  how = EXECUTORS.get(executor)
  state: dict = {}  # shared by the runs of this call (in-process data reuse)
  outcomes = []
  held = _Claims(claims) if claims else None
  try:
    for i, run in enumerate(runs):
      outcomes.append(_execute_one(run, f"[{i + 1}/{len(runs)}]", how, log,
                                   guard, state, held))
  finally:
    if held is not None:
      held.release()
  return outcomes


def _execute_one(run: Run, counter: str, how, log, guard, state,
                 held: _Claims | None) -> Outcome:
  """One run of :func:`execute`: its outcome, or Preempted / a disk error."""
  if run.finished():
    return Outcome(run.name, "skipped")
  if held is not None and not held.take(run.unit):
    return Outcome(run.name, CLAIMED)
  if run.finished():  # by the process that held its unit until now
    return Outcome(run.name, "skipped")
  log(f"{counter} {run.name}")
  start = time.time()
  try:
    how.run(run, guard.should_stop if guard is not None else None, state)
    _raise_if_stopped(guard, run)
    if not run.finished():
      raise RuntimeError(f"ended without {results_lib.RESULTS_FILE}")
    return Outcome(run.name, "done", time.time() - start)
  except stage_lib.StageInterrupted as e:
    raise lifecycle.Preempted(e.step, f"{e.stage} of {run.name}",
                              guard.signal_name if guard else None) from None
  except lifecycle.Preempted:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # A child that exited because the sweep was signalled stopped; it did
    # not fail. A full or read-only disk fails every later run alike.
    _raise_if_stopped(guard, run)
    if lifecycle.disk_refusal(e) is not None:
      raise
    # One bad run (a NaN loss, a missing file) must not stop the sweep.
    outcome = Outcome(run.name, "failed", time.time() - start,
                      f"{type(e).__name__}: {e}")
    log(f"  FAILED: {outcome.error}")
    if how.in_process:
      log(traceback.format_exc())
    return outcome


def _raise_if_stopped(guard: lifecycle.PreemptionGuard | None, run: Run) -> None:
  if guard is not None and guard.signal_name is not None:
    raise lifecycle.Preempted(None, run.name, guard.signal_name)


def prepare(runs: Sequence[Run], log=print) -> None:
  """Prepares the shared data of ``runs`` without training: one pass per
  data key (rendered real data, generated synthetic and synthetic test sets)."""
  groups: dict[str, list[Run]] = {}
  for r in runs:
    groups.setdefault(spec_lib.data_key(r.config), []).append(r)
  for members in groups.values():
    first = members[0]
    modes = sorted({str(r.config.mode) for r in members})
    log(f"prepare: {first.name} (+{len(members) - 1} alike), modes {modes}")
    config = datasets.resolve_roots(first.config, first.run_dir)
    run_lib.load_run_data(config, modes)


def write_manifest(workdir: str, runs: Sequence[Run],
                   outcomes: Sequence[Outcome] = ()) -> str:
  """``{workdir}/sweep.json``: every run's name, command and last outcome.

  Rows of runs not in ``runs`` (another shard's, or outside a ``--filter``)
  are kept as they are: shards update it one at a time.
  """
  path = os.path.join(workdir, "sweep.json")
  if lifecycle.process_index() != 0:
    return path
  with lifecycle.owned_folder(os.path.join(workdir, MANIFEST_LOCK),
                              "updating sweep.json", all_hosts=False):
    previous = {}
    if os.path.isfile(path):
      with open(path) as f:
        previous = {r["name"]: r for r in json.load(f).get("runs", [])}
    by_name = {o.name: o for o in outcomes if o.status != CLAIMED}
    rows = []
    for r in runs:
      row = {"name": r.name, "run_dir": r.run_dir, "command": shlex.join(
          r.command()), "unit": r.unit, "finished": r.finished()}
      if r.name in by_name:
        row["outcome"] = dataclasses.asdict(by_name[r.name])
      elif "outcome" in previous.get(r.name, {}):
        row["outcome"] = previous[r.name]["outcome"]
      rows.append(row)
    mine = {r.name for r in runs}
    rows += [row for name, row in previous.items() if name not in mine]
    lifecycle.write_atomic(path, json.dumps({"runs": rows}, indent=2))
  return path


def summarize(outcomes: Sequence[Outcome]) -> str:
  counts = {s: sum(o.status == s for o in outcomes)
            for s in ("done", "skipped", "failed", CLAIMED)}
  lines = [f"{counts['done']} run, {counts['skipped']} skipped (finished "
           f"earlier), {counts['failed']} failed."]
  if counts[CLAIMED]:
    lines[0] += f" {counts[CLAIMED]} left to other processes (their units)."
  lines += [f"  failed: {o.name}: {o.error}" for o in outcomes
            if o.status == "failed"]
  return "\n".join(lines)


def run_sweep(runs: Sequence[Run], workdir: str, executor: str = "subprocess",
              log=None, claim: bool = False) -> list[Outcome]:
  """Runs the unfinished ``runs`` and records the outcomes in sweep.json;
  shards may run side by side (each run's folder has one owner). ``claim``:
  each unit goes to whichever process takes it first (``--shard=auto``)."""
  log = log or (lambda s: print(s, file=sys.stderr, flush=True))
  log(f"Sweep: {len(runs)} runs, {sum(r.finished() for r in runs)} finished "
      "earlier.")
  in_process = EXECUTORS.get(executor).in_process
  if in_process:
    maybe_initialize_distributed()  # before anything starts jax's backend
  if claim and in_process and lifecycle.process_count() > 1:
    # Host 0 alone would hold the claims while every host must run alike.
    raise ValueError(f"--shard={AUTO_SHARD} runs one process per shard; a "
                     "multi-host job takes --shard=i/n.")
  claims = os.path.join(workdir, CLAIMS_DIR) if claim else None
  with lifecycle.PreemptionGuard(
      process_count=None if in_process else 1) as guard:
    write_manifest(workdir, runs)
    start = time.time()
    outcomes = execute(runs, executor, log, guard, claims)
  write_manifest(workdir, runs, outcomes)
  log(summarize(outcomes) + f"\nWall time {time.time() - start:.0f} s.")
  return outcomes


def sweep_command(sweep: ml_collections.ConfigDict, workdir: str, *,
                  shard_spec: str = "0/1", name_filter: str = "",
                  list_only: bool = False, prepare_only: bool = False,
                  executor: str = "subprocess") -> bool:
  """What ``ffr_jax.sweep`` does; False when a run failed.

  The runs of shard ``shard_spec`` (``i/n``, or ``auto``: every run, each
  unit taken by the first free process) whose names match the regular
  expression ``name_filter`` are listed (one ``ffr_jax.main`` command each),
  prepared (their shared data only) or run.
  """
  runs = expand(sweep, workdir)
  claim = shard_spec == AUTO_SHARD
  index, count = (0, 1) if claim else parse_shard(shard_spec)
  mine = shard(runs, index, count)
  if name_filter:
    try:
      pattern = re.compile(name_filter)
    except re.error as e:
      raise ValueError(f"--filter={name_filter!r} is not a regular "
                       f"expression: {e}") from None
    mine = [r for r in mine if pattern.search(r.name)]
  if list_only:
    for r in mine:
      print(shlex.join(r.command()))
  elif prepare_only:
    prepare(mine)
  else:
    print(f"Shard {shard_spec}: {len(mine)} of {len(runs)} runs.", file=sys.stderr)
    outcomes = run_sweep(mine, workdir, executor, claim=claim)
    return not any(o.status == "failed" for o in outcomes)
  return True


@dataclasses.dataclass(frozen=True)
class CommandResult:
  """What ``ffr_jax.main`` prints, and whether every run finished."""

  table: str
  failed: tuple[str, ...] = ()


def train_command(config: ml_collections.ConfigDict, workdir: str, *,
                  config_path: str, overrides: Mapping[str, Any]
                  ) -> CommandResult:
  """What ``ffr_jax.main`` does.

  One mode x method trains into ``workdir``; comma lists in ``mode`` or
  ``method`` become a sweep run in this process (the sweep layout). Either
  way this process owns the whole workdir, and every run's config is
  validated before anything is written.
  """
  run_lib.check_workdir(workdir)
  workdir = os.path.abspath(workdir)
  lists = {k: _comma_list(config, k) for k in ("mode", "method")}
  if all(len(v) == 1 for v in lists.values()):
    config = run_lib.check_run(config, workdir)  # before the lock writes anything
    results = _owned(workdir, lambda should_stop: run_lib.train_checked(
        config, workdir, should_stop))
    rows = results_lib.summary_rows({f"{config.mode}-{config.method}": results})
    return CommandResult(
        results_lib.markdown_table(rows) + "\n" + results_lib.LEGEND +
        f"\nResults in {workdir}/{results_lib.RESULTS_FILE}.")
  fixed = tuple((k, v) for k, v in overrides.items() if k not in lists)
  runs = expand(ml_collections.ConfigDict(
      {"config": config_path, "fixed": fixed, "grid": (lists,)}), workdir, base=config)
  for r in runs:
    run_lib.validate_config(r.config)
  outcomes = _owned(workdir, lambda _: run_sweep(runs, workdir, "inprocess"),
                    guard=False)
  table = results_lib.write_summary(workdir, {
      r.name: results_lib.read_results(r.run_dir) for r in runs if r.finished()})
  return CommandResult(
      table + "\n" + results_lib.LEGEND +
      f"\nOne seed ({config.seed}) on one draw of the data, so the rows may "
      "differ by chance; docs/experiments.md has the verdict over seeds, with "
      f"intervals.\nResults in {workdir} (summary.md, summary.png, runs/).",
      failed=tuple(o.name for o in outcomes if o.status == "failed"))


def _comma_list(config: ml_collections.ConfigDict, key: str) -> tuple[str, ...]:
  values = tuple(v.strip() for v in str(config[key]).split(",") if v.strip())
  if not values:
    raise ValueError(f"config.{key}={config[key]!r} names no {key}; give one "
                     "or a comma-separated list.")
  return values


def _owned(workdir: str, work: Callable, guard: bool = True):
  """``work(should_stop)`` while this process owns ``workdir``.

  With ``guard``, SIGTERM/SIGINT stop after the current step with a
  checkpoint (:class:`~ffr_jax.lifecycle.Preempted`); a sweep has its own.
  """
  # Before the lock and the guard ask jax which process this is: that starts
  # the backend, after which jax.distributed can no longer be initialized.
  maybe_initialize_distributed()
  with run_lib.owned_workdir(workdir) as lock:
    if not guard:
      return work(lock.checked())
    with lifecycle.PreemptionGuard() as g:
      try:
        return work(lock.checked(g.should_stop))
      except stage_lib.StageInterrupted as e:
        raise lifecycle.Preempted(step=e.step, stage=e.stage,
                                  signal_name=g.signal_name) from None
