"""Run a grid of experiments, each in its own sub-workdir; rerun to resume.

    python -m ffr_jax.sweep --config=configs/sweeps/paper.py:demo --workdir=DIR
    python -m ffr_jax.sweep --config=... --workdir=DIR --list       # commands
    python -m ffr_jax.sweep --config=... --workdir=DIR --shard=3/16 # one shard
    python -m ffr_jax.sweep --config=... --workdir=DIR --prepare    # data only
    python -m ffr_jax.sweep --config=... --workdir=DIR --filter=mode=ffr/

A sweep config file defines ``get_config(arg)`` returning a locked ConfigDict:

* ``config``: the run config file every run starts from (``path[:arg]``, as
  ``ffr_jax.main --config`` takes it; relative paths are relative to the
  directory the sweep runs in, normally the repository root);
* ``fixed``: ``((key, value), ...)``, overrides applied to every run;
* ``unnamed`` (optional): grid keys left out of run names, e.g. paths that
  follow from the dataset (``data.root``);
* ``grid``: a tuple of dicts ``{key: (value, ...)}``; each dict expands to
  the cartesian product of its values, and the sweep is the union over dicts
  (runs with identical settings are kept once). ``key`` is a dotted run-config
  key (``data.bias_ratio``, ``train.lr``, ``seed``, ...) or ``config`` (the
  run config file, to sweep datasets).

Run ``r`` lives in ``{workdir}/runs/{name}``, ``name`` being its grid values
in a fixed key order, e.g. ``data.bias_ratio=0.99/mode=ffr/method=erm/seed=0``
(only the keys its grid dict sets: the name does not change when other dicts
are added). Shared inputs live in ``{workdir}/shared/``: the rendered real
data of the built-in benchmark (keyed on its render settings), the synthetic
images (keyed on the generator settings) and the method-independent synthetic
pretraining stages (FFR's stage 1; keyed on a hash of every setting that
stage depends on, see :func:`stage1_key`), so stage 1 is trained once for all
methods and for ``stage1_only``.

A run whose ``results.json`` exists is skipped; an unfinished one is started
again and resumes from its checkpoints. A failed run is reported (exit code 1
at the end) and the sweep goes on. ``--shard=i/n`` runs the ``i``-th of ``n``
deterministic shards; runs sharing a stage 1 always land in the same shard,
so no two shards ever train the same stage 1 at once. Before running shards in
parallel, run ``--prepare`` once: it renders and generates the shared data, so
that shards do not write the same folders concurrently.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections

RESULTS_FILE = "results.json"  # ffr_jax.reporting.results.RESULTS_FILE
RUNS_DIR = "runs"
SHARED_DIR = "shared"
CONFIG_KEY = "config"  # the grid key that names the run config file
# Keys first in a run's name, in this order; then the rest alphabetically,
# then the seed, so the names of one sweep sort into readable blocks.
NAME_ORDER = (CONFIG_KEY, "data.name", "data.bias_ratio", "mode", "method")
NAME_LAST = ("seed",)

# Settings FFR's stage 1 does not depend on: everything stage 2 alone uses,
# and settings that change speed or logging but not results. Every other
# setting (dataset, bias ratio, split seed, seed, model, stage1.*, batch size,
# weight decay, data and generator settings, eval.*) is part of the key, so a
# new setting is shared only when it is listed here: at worst a stage 1 is
# retrained, never wrongly reused.
STAGE1_INDEPENDENT = (
    "mode", "method", "train.epochs", "train.lr", "train.freeze_bn",
    "train.stage1_dir", "train.log_every", "train.checkpoint_every",
    "train.eval_batch_size", "groupdro.", "dfr.", "data.num_workers",
    "data.verify_images", "data.cache_images", "generate.batch_size",
)


# ----------------------------------------------------------------------------
# Config helpers.


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (ConfigDicts and dicts; tuples kept)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  out = {}
  for k, v in config.items():
    key = f"{prefix}{k}"
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def settings_hash(settings: Mapping[str, Any], length: int = 12) -> str:
  """A stable short hash of a flat settings dict (order-independent)."""
  text = json.dumps(dict(sorted(settings.items())), sort_keys=True,
                    default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:length]


def split_config_path(path: str) -> tuple[str, str | None]:
  """``"configs/demo.py:smoke"`` -> ``("configs/demo.py", "smoke")``."""
  file, sep, arg = path.partition(":")
  return file, (arg if sep else None)


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Imports ``path[:arg]`` and returns ``get_config(arg)``, as config_flags does."""
  file, arg = split_config_path(path)
  if not os.path.isfile(file):
    raise FileNotFoundError(
        f"Config file {file!r} not found (relative to {os.getcwd()}); run the "
        "sweep from the repository root or give an absolute path.")
  name = "_ffr_sweep_config_" + hashlib.sha1(
      os.path.abspath(file).encode()).hexdigest()[:8]
  spec = importlib.util.spec_from_file_location(name, file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def set_value(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets dotted ``key``; an unknown key is an error naming the key."""
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
      raise KeyError(f"Unknown config key {key!r} (no section {p!r}).")
    node = node[p]
  if leaf not in node:
    raise KeyError(f"Unknown config key {key!r}.")
  node[leaf] = value


def format_value(value: Any) -> str:
  """A value as ``--config.key=VALUE`` and run names spell it."""
  if isinstance(value, (list, tuple, dict)):
    raise ValueError(f"Sweep values must be scalars, got {value!r}.")
  return str(value)


# ----------------------------------------------------------------------------
# Expansion.


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep.

  Attributes:
    name: its sub-workdir under ``{workdir}/runs``, from its grid values.
    config_path: the run config file (``path[:arg]``).
    overrides: every ``--config.key=value`` of the run, in command order
      (fixed settings, grid values, then the shared folders).
    config: the run's full config (overrides applied).
    run_dir: its workdir.
    stage1_key: the hash naming its shared stage-1 folder, or None when its
      mode has no shared stage.
  """

  name: str
  config_path: str
  overrides: tuple[tuple[str, Any], ...]
  config: ml_collections.ConfigDict
  run_dir: str
  stage1_key: str | None

  def command(self, python: str = "python") -> list[str]:
    """The ``ffr_jax.main`` command that trains this run on its own."""
    return ([python, "-m", "ffr_jax.main", f"--config={self.config_path}",
             f"--workdir={self.run_dir}"] +
            [f"--config.{k}={format_value(v)}" for k, v in self.overrides])

  def finished(self) -> bool:
    return os.path.isfile(os.path.join(self.run_dir, RESULTS_FILE))


def _key_rank(key: str) -> tuple:
  if key in NAME_ORDER:
    return (0, NAME_ORDER.index(key), key)
  if key in NAME_LAST:
    return (2, NAME_LAST.index(key), key)
  return (1, 0, key)


def _name_part(key: str, value: Any) -> str:
  if key == CONFIG_KEY:  # configs/spuco.py:smoke -> config=spuco:smoke
    file, arg = split_config_path(str(value))
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
      values = entry[key]
      if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"Grid values of {key!r} must be a tuple or list, got "
                         f"{values!r}.")
    for combo in itertools.product(*(tuple(entry[k]) for k in keys)):
      out.append(dict(zip(keys, combo)))
  return out


def stage1_key(config: ml_collections.ConfigDict) -> str:
  """The hash of every setting a shared pretraining stage depends on."""
  flat = flatten(config)
  kept = {k: v for k, v in flat.items()
          if not any(k == x or (x.endswith(".") and k.startswith(x))
                     for x in STAGE1_INDEPENDENT)}
  return settings_hash(kept)


def _shared_data_dirs(config: ml_collections.ConfigDict, shared: str
                      ) -> list[tuple[str, str]]:
  """``data.root`` / ``data.synthetic_root`` overrides for shared folders.

  Only folders the run would otherwise make in its own workdir are shared:
  the built-in benchmark's rendered real data (keyed on its render settings)
  and the synthetic images (keyed on the generator settings; images are a
  function of the seed, group and index, so one folder serves every bias
  ratio and mode). User-given roots are left alone.
  """
  out = []
  name = config.data.name
  has_benchmark = "benchmark" in config
  if not config.data.root and has_benchmark:
    render = {k: v for k, v in flatten(config.benchmark).items()
              if k != "strength"}  # the fingerprint only touches synthetic
    out.append(("data.root", os.path.join(
        shared, "real", f"{name}-{settings_hash({'name': name, **render})}")))
  if not config.data.synthetic_root:
    gen = {f"generate.{k}": v for k, v in flatten(config.generate).items()
           if k != "batch_size"}
    if has_benchmark:
      gen.update({f"benchmark.{k}": v for k, v in flatten(config.benchmark).items()
                  if k in ("strength", "image_size")})
    out.append(("data.synthetic_root", os.path.join(
        shared, "synthetic", f"{name}-{settings_hash({'name': name, **gen})}")))
  return out


def _check_single(config: ml_collections.ConfigDict, name: str) -> None:
  for key in ("mode", "method"):
    if "," in str(config[key]):
      raise ValueError(
          f"Run {name!r}: {key}={config[key]!r} is a list; a sweep run trains "
          f"one mode x method. Put the values in the grid instead.")


def _mode_shared_stage(mode: str) -> str | None:
  from ffr_jax.data import compose  # pylint: disable=g-import-not-at-top
  return compose.SHARED_STAGES.get(mode)


def expand(sweep: ml_collections.ConfigDict, workdir: str) -> list[Run]:
  """The runs of a sweep config, in grid order, without duplicates.

  Raises:
    ValueError: a run's mode or method is a list, a value cannot name a
      folder, or one run's folder would hold another's.
    KeyError: a grid or fixed key is not a key of the run config.
  """
  workdir = os.path.abspath(workdir)
  shared = os.path.join(workdir, SHARED_DIR)
  bases: dict[str, ml_collections.ConfigDict] = {}
  runs, seen = [], {}
  fixed = [(str(k), v) for k, v in sweep.fixed]
  for assignment in expand_grid(sweep.grid):
    config_path = str(assignment.get(CONFIG_KEY, sweep.config))
    if config_path not in bases:
      bases[config_path] = load_config_file(config_path)
    config = copy.deepcopy(bases[config_path])
    grid_overrides = [(k, v) for k, v in assignment.items() if k != CONFIG_KEY]
    for k, v in fixed + grid_overrides:
      set_value(config, k, v)
    name = run_name({k: v for k, v in assignment.items()
                     if k not in tuple(sweep.get("unnamed", ()))})
    _check_single(config, name)
    identity = (config_path, settings_hash(flatten(config), 64))
    if identity in seen:
      continue  # the same settings from another grid dict: run once
    if name in seen.values():
      raise ValueError(
          f"Two runs with different settings are both named {name!r}; a key "
          "listed in `unnamed` must follow from the named ones.")
    seen[identity] = name
    derived = _shared_data_dirs(config, shared)
    for k, v in derived:
      set_value(config, k, v)
    shared_stage = _mode_shared_stage(str(config.mode))
    key = None
    if shared_stage is not None:
      key = stage1_key(config)
      stage1_dir = os.path.join(shared, "stage1", key)
      derived.append(("train.stage1_dir", stage1_dir))
      set_value(config, "train.stage1_dir", stage1_dir)
    runs.append(Run(
        name=name, config_path=config_path,
        overrides=tuple(fixed + grid_overrides + derived), config=config,
        run_dir=os.path.join(workdir, RUNS_DIR, *name.split("/")),
        stage1_key=key))
  _check_nesting(runs)
  return runs


def _check_nesting(runs: Sequence[Run]) -> None:
  dirs = sorted((r.run_dir + os.sep, r.name) for r in runs)
  for (a, na), (b, nb) in zip(dirs, dirs[1:]):
    if b.startswith(a):
      raise ValueError(
          f"Run {nb!r} would live inside run {na!r}; give both grid dicts the "
          "same keys.")


# ----------------------------------------------------------------------------
# Sharding.


def parse_shard(text: str) -> tuple[int, int]:
  """``"2/8"`` -> ``(2, 8)``; shards are numbered 0..n-1."""
  try:
    i, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}."
                     ) from None
  if n < 1 or not 0 <= i < n:
    raise ValueError(f"--shard={text}: need n >= 1 and 0 <= i < n.")
  return i, n


def shard(runs: Sequence[Run], index: int, count: int) -> list[Run]:
  """The runs of shard ``index`` of ``count``, in sweep order.

  Runs sharing a stage 1 form one unit, so a stage 1 is trained by one shard
  only; units go greedily (largest first, ties by first run) to the shard
  with the fewest runs so far (ties to the lowest index). Deterministic: the
  same sweep always gives the same shards.
  """
  units: dict[str, list[int]] = {}
  for i, r in enumerate(runs):
    units.setdefault(r.stage1_key or f"run:{r.name}", []).append(i)
  order = sorted(units.values(), key=lambda u: (-len(u), u[0]))
  loads = [0] * count
  mine = []
  for unit in order:
    target = min(range(count), key=lambda s: (loads[s], s))
    loads[target] += len(unit)
    if target == index:
      mine.extend(unit)
  return [runs[i] for i in sorted(mine)]


# ----------------------------------------------------------------------------
# Execution.


@dataclasses.dataclass
class Outcome:
  name: str
  status: str  # "skipped" (finished earlier), "done", "failed"
  seconds: float = 0.0
  error: str = ""


def run_subprocess(run: Run) -> None:
  """Runs ``run.command()`` with output appended to ``{run_dir}/sweep.log``."""
  os.makedirs(run.run_dir, exist_ok=True)
  with open(os.path.join(run.run_dir, "sweep.log"), "a") as log:
    log.write(f"\n$ {shlex.join(run.command())}\n")
    log.flush()
    proc = subprocess.run(run.command(sys.executable), stdout=log,
                          stderr=subprocess.STDOUT, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"exit code {proc.returncode}; see "
                       f"{os.path.join(run.run_dir, 'sweep.log')}")


def run_in_process(run: Run) -> None:
  """Trains ``run`` in this process (no start-up cost; one failure is caught)."""
  import jax  # pylint: disable=g-import-not-at-top
  from ffr_jax.training import run as run_lib  # pylint: disable=g-import-not-at-top
  config = copy.deepcopy(run.config)
  config.lock()
  try:
    run_lib.train_and_evaluate(config, run.run_dir)
  finally:
    jax.clear_caches()  # compiled steps of finished runs would pile up


EXECUTORS = {"subprocess": run_subprocess, "inprocess": run_in_process}


def execute(runs: Sequence[Run], executor: str = "subprocess",
            log=print) -> list[Outcome]:
  """Runs every unfinished run in order; a failure is recorded, not raised."""
  fn = EXECUTORS[executor]
  outcomes = []
  for i, run in enumerate(runs):
    if run.finished():
      outcomes.append(Outcome(run.name, "skipped"))
      continue
    log(f"[{i + 1}/{len(runs)}] {run.name}")
    start = time.time()
    try:
      fn(run)
      if not run.finished():
        raise RuntimeError(f"ended without {RESULTS_FILE}")
      outcomes.append(Outcome(run.name, "done", time.time() - start))
    except Exception as e:  # pylint: disable=broad-except
      # One bad run (a NaN loss, a missing file) must not stop the sweep.
      outcomes.append(Outcome(run.name, "failed", time.time() - start,
                              f"{type(e).__name__}: {e}"))
      log(f"  FAILED: {outcomes[-1].error}")
      if executor == "inprocess":
        log(traceback.format_exc())
  return outcomes


def prepare(runs: Sequence[Run], log=print) -> None:
  """Renders and generates the shared data of ``runs`` (no training).

  One pass per distinct data setting: the real data is rendered (built-in
  benchmark) and the synthetic images every run's mode needs are generated
  (built-in generator), including the held-out synthetic test set.
  """
  from ffr_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from ffr_jax.training import run as run_lib  # pylint: disable=g-import-not-at-top
  groups: dict[str, list[Run]] = {}
  for r in runs:
    flat = {k: v for k, v in flatten(r.config).items()
            if k not in ("mode", "method") and not k.startswith(
                ("train.", "stage1.", "groupdro.", "dfr.", "model."))
            and k != "seed"}
    groups.setdefault(settings_hash(flat), []).append(r)
  for members in groups.values():
    first = members[0]
    config = ml_collections.ConfigDict(first.config.to_dict())
    config.mode = ",".join(sorted({str(r.config.mode) for r in members}))
    log(f"prepare: {first.name} (+{len(members) - 1} alike), modes {config.mode}")
    config = datasets.resolve_roots(config, first.run_dir)
    datasets.prepare_dataset(config)
    splits = datasets.load_dataset(config.data)
    ctx = run_lib.RunContext(config=config, workdir=first.run_dir,
                             splits=splits, shardings=None, model=None)
    run_lib._synthetic_pool(ctx, config.mode.split(","))  # pylint: disable=protected-access
    run_lib.synthetic_test_set(config, splits.spec)


def write_manifest(workdir: str, runs: Sequence[Run],
                   outcomes: Sequence[Outcome] = ()) -> str:
  """``{workdir}/sweep.json``: every run's name, command and last outcome."""
  path = os.path.join(workdir, "sweep.json")
  previous = {}
  if os.path.isfile(path):
    with open(path) as f:
      previous = {r["name"]: r for r in json.load(f).get("runs", [])}
  by_name = {o.name: o for o in outcomes}
  rows = []
  for r in runs:
    row = {"name": r.name, "run_dir": r.run_dir, "command": shlex.join(
        r.command()), "stage1_key": r.stage1_key, "finished": r.finished()}
    if r.name in by_name:
      row["outcome"] = dataclasses.asdict(by_name[r.name])
    elif "outcome" in previous.get(r.name, {}):
      row["outcome"] = previous[r.name]["outcome"]
    rows.append(row)
  os.makedirs(workdir, exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"  # shards may write at the same time
  with open(tmp, "w") as f:
    json.dump({"runs": rows}, f, indent=2)
  os.replace(tmp, path)
  return path


def summarize(outcomes: Sequence[Outcome]) -> str:
  counts = {s: sum(o.status == s for o in outcomes)
            for s in ("done", "skipped", "failed")}
  lines = [f"{counts['done']} run, {counts['skipped']} skipped (finished "
           f"earlier), {counts['failed']} failed."]
  lines += [f"  failed: {o.name}: {o.error}" for o in outcomes
            if o.status == "failed"]
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# Command line.

_FLAGS: dict = {}


def _define_flags() -> None:
  """Defines the command's flags; only when run as a command."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "A sweep config file (configs/sweeps/*.py[:arg]).",
      lock_config=True)
  _FLAGS["workdir"] = flags.DEFINE_string(
      "workdir", None, "The sweep's directory (runs/, shared/, sweep.json).")
  _FLAGS["list"] = flags.DEFINE_bool(
      "list", False, "Print one ffr_jax.main command per run and exit.")
  _FLAGS["shard"] = flags.DEFINE_string(
      "shard", "0/1", "i/n: run only shard i of n (0-based).")
  _FLAGS["filter"] = flags.DEFINE_string(
      "filter", "", "Only runs whose name matches this regular expression "
      "(re.search), e.g. 'mode=ffr/' or 'train.lr='; applied after --shard.")
  _FLAGS["prepare"] = flags.DEFINE_bool(
      "prepare", False, "Only render/generate the shared data, then exit.")
  _FLAGS["executor"] = flags.DEFINE_enum(
      "executor", "subprocess", sorted(EXECUTORS),
      "subprocess: one ffr_jax.main process per run (isolated); inprocess: "
      "all runs in this process (no start-up cost per run).")
  flags.mark_flags_as_required(["config", "workdir"])


def _setup_in_process() -> None:
  """What ``ffr_jax.main`` sets up, for runs trained in this process.

  (Importing ``ffr_jax.main`` would define its ``--config`` flag a second
  time.) Library INFO logs are dropped, our own kept; the persistent XLA
  compilation cache spares recompiling the same steps run after run.
  """
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top

  class QuietLibraries(std_logging.Filter):

    def filter(self, record) -> bool:
      return (record.levelno >= std_logging.WARNING or
              "ffr_jax" in record.pathname.replace("\\", "/"))

  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(QuietLibraries())
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(
        os.path.expanduser("~"), ".cache", "ffr_jax", "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str]) -> None:
  from absl import app  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = os.path.abspath(_FLAGS["workdir"].value)
  runs = expand(_FLAGS["config"].value, workdir)
  index, count = parse_shard(_FLAGS["shard"].value)
  mine = shard(runs, index, count)
  if _FLAGS["filter"].value:
    pattern = re.compile(_FLAGS["filter"].value)
    mine = [r for r in mine if pattern.search(r.name)]
  if _FLAGS["list"].value:
    for r in mine:
      print(shlex.join(r.command()))
    return
  if _FLAGS["executor"].value == "inprocess" or _FLAGS["prepare"].value:
    _setup_in_process()
  if _FLAGS["prepare"].value:
    prepare(mine)
    return
  log = lambda s: print(s, file=sys.stderr, flush=True)
  log(f"Sweep: {len(runs)} runs, shard {index}/{count}: {len(mine)} runs, "
      f"{sum(r.finished() for r in mine)} finished earlier.")
  write_manifest(workdir, runs)
  start = time.time()
  outcomes = execute(mine, _FLAGS["executor"].value, log)
  write_manifest(workdir, runs, outcomes)
  log(summarize(outcomes) + f"\nWall time {time.time() - start:.0f} s.")
  if any(o.status == "failed" for o in outcomes):
    sys.exit(1)


if __name__ == "__main__":
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  _define_flags()
  _app.run(main)
