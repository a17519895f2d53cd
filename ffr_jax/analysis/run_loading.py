"""A finished run, back from its workdir: config, data spec, model, variables.

A run is a folder with ``results.json``, which holds the resolved config and
names each stage's folder (``results["stages"][name]["dir"]``, relative to the
run). A sweep's workdir holds ``runs/<name>/results.json`` and ``sweep.json``
(the runs, in order). Nothing here trains or writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections
import numpy as np

from ffr_jax import models
from ffr_jax.data import datasets
from ffr_jax.data.types import DatasetSpec
from ffr_jax.mesh import Shardings
from ffr_jax.reporting import aggregate
from ffr_jax.reporting import results as results_lib
from ffr_jax.training import last_layer
from ffr_jax.training import stage as stage_lib

LAST = "last"
_HOW_TO_TRAIN = ("Train one with `python -m ffr_jax.main --config=... "
                 "--workdir=DIR` and let it finish.")


@dataclasses.dataclass(frozen=True)
class RunInfo:
  """A finished run found in ``workdir`` (a run or sweep folder); ``name`` is
  ``"{mode}-{method}"``, or the sweep's run name where that repeats."""

  name: str
  run_dir: str
  workdir: str
  results: dict
  config: ml_collections.ConfigDict

  @property
  def mode(self) -> str:
    return str(self.results["mode"])

  @property
  def method(self) -> str:
    return str(self.results["method"])


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """A run with its model and the best variables of ``stage`` (replicated on the mesh)."""

  info: RunInfo
  stage: str
  spec: DatasetSpec
  model: Any
  variables: Any
  head: dict | None = None  # the run's refit head (DFR, AFR), last stage only

  @property
  def name(self) -> str:
    return self.info.name

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.info.config


def _read_run(run_dir: str, workdir: str) -> RunInfo:
  results = results_lib.read_results(run_dir)
  if "config" not in results or "stages" not in results:
    raise ValueError(f"{run_dir}/{results_lib.RESULTS_FILE} has no 'config' or "
                     "'stages'; it was not written by `python -m ffr_jax.main`.")
  return RunInfo(name=f"{results['mode']}-{results['method']}",
                 run_dir=run_dir, workdir=workdir, results=results,
                 config=ml_collections.ConfigDict(results["config"]))


def find_runs(workdir: str) -> list[RunInfo]:
  """Every finished run in a run's or a sweep's folder, in the sweep's order."""
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"No such workdir: {workdir}. {_HOW_TO_TRAIN}")
  if os.path.isfile(os.path.join(workdir, results_lib.RESULTS_FILE)):
    return [_read_run(workdir, workdir)]
  found = [os.path.dirname(p) for p in
           aggregate.results_paths(os.path.join(workdir, "runs"))]
  if not found:
    raise FileNotFoundError(
        f"No finished run in {workdir}: expected {workdir}/"
        f"{results_lib.RESULTS_FILE} (a run) or {workdir}/runs/.../"
        f"{results_lib.RESULTS_FILE} (a sweep). {_HOW_TO_TRAIN}")
  order = []  # the run folders in the sweep's order
  if os.path.isfile(os.path.join(workdir, "sweep.json")):
    with open(os.path.join(workdir, "sweep.json")) as f:
      order = [os.path.abspath(str(row["run_dir"]))
               for row in json.load(f)["runs"]]
  found.sort(key=lambda d: (order.index(d) if d in order else len(order), d))
  runs = [_read_run(d, workdir) for d in found]
  names = [r.name for r in runs]
  runs_dir = os.path.join(workdir, "runs")
  return [r if names.count(r.name) == 1 else dataclasses.replace(
      r, name=os.path.relpath(r.run_dir, runs_dir)) for r in runs]


def find_runs_in(workdirs: list[str]) -> list[RunInfo]:
  """:func:`find_runs` over several workdirs; names that repeat (e.g. two
  seeds) get their workdir's folder name prefixed."""
  runs = [r for w in workdirs for r in find_runs(w)]
  names = [r.name for r in runs]
  return [r if names.count(r.name) == 1 else dataclasses.replace(
      r, name=f"{os.path.basename(r.workdir.rstrip(os.sep))}/{r.name}")
          for r in runs]


def resolve_stage(run: RunInfo, stage: str = LAST) -> tuple[str, str]:
  """``(stage name, stage folder)``; ``"last"`` is the model the run reports."""
  present = list(run.results.get("stage_order", ()))
  if not present:
    raise ValueError(f"{run.run_dir}/{results_lib.RESULTS_FILE} lists no "
                     "stages ('stage_order').")
  name = present[-1] if stage == LAST else stage
  if name not in present:
    raise ValueError(f"Run {run.name} has no stage {stage!r}; it has "
                     f"{present} (or 'last').")
  return name, os.path.normpath(os.path.join(
      run.run_dir, run.results["stages"][name]["dir"]))


def load_run(run: RunInfo, shardings: Shardings, stage: str = LAST
             ) -> LoadedRun:
  """Rebuilds ``run``'s model and restores the best variables of ``stage``."""
  name, stage_dir = resolve_stage(run, stage)
  # Checked before Orbax sees the folder: its manager would create a missing
  # folder and then report only "no checkpoint".
  ckpt = os.path.join(stage_dir, "checkpoints")
  if not (os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt))):
    raise FileNotFoundError(
        f"No checkpoint in {ckpt}: the run's results.json exists but its "
        f"stage has no saved variables (deleted or copied without them). "
        f"{_HOW_TO_TRAIN}")
  config = run.config
  spec = datasets.dataset_spec(config.data)
  # The flax module exactly as ffr_jax.training.run builds it.
  model = models.model_from_config(config.model, spec.num_classes)
  variables = stage_lib.restore_best_variables(
      stage_dir, model, config.data.image_size, config.seed, shardings)
  head_path = os.path.join(run.run_dir, last_layer.HEAD_FILE)
  head = None
  if name == run.results["stage_order"][-1] and os.path.isfile(head_path):
    with np.load(head_path) as f:
      head = {k: f[k] for k in f.files}
  return LoadedRun(info=run, stage=name, spec=spec, model=model,
                   variables=variables, head=head)
