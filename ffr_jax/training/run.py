"""One run: one mode x method, from config to ``results.json``.

    config -> check_run -> load_run_data -> spec.plan_run (the RunSpec)
           -> each stage plan (run_stage; the method may derive its examples)
           -> the method's after-stage step -> {workdir}/results.json

Stages live in ``{stages_dir}/{name}-{fingerprint}``: a stage with the same
plan is trained once, by one process at a time (a lock in its folder; others
wait, then reuse it). ``results.json`` names each stage's folder relative to
the workdir, so a finished workdir can be moved. Several modes or methods at
once are a sweep (:mod:`ffr_jax.experiments`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from ffr_jax import config as config_lib
from ffr_jax import lifecycle
from ffr_jax import models
from ffr_jax.data import bias
from ffr_jax.data import compose as compose_lib
from ffr_jax.data import datasets
from ffr_jax.data import synthetic as synthetic_lib
from ffr_jax.data.types import DatasetSplits, Examples
from ffr_jax.generation import counts as counts_lib
from ffr_jax.generation import factory as generation
from ffr_jax.mesh import make_shardings, maybe_initialize_distributed
from ffr_jax.models import weights as weights_lib
from ffr_jax.reporting import results as results_lib
from ffr_jax.reporting.writer import MetricWriter
from ffr_jax.training import last_layer
from ffr_jax.training import spec as spec_lib
from ffr_jax.training import stage as stage_lib
from ffr_jax.training import state as state_lib
from ffr_jax.training.methods import Context, get_method


class RunMismatchError(ValueError):
  """The workdir holds the results of a run with other settings."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every value a run reads before anything is written."""
  check_one_run(config)
  for mode in (str(config.mode), *config_lib.lr_by_mode(config.train.lr_by_mode)):
    compose_lib.MODES.get(mode)
  definition = datasets.get_dataset(str(config.data.name))
  models.MODELS.get(str(config.model.name))
  bias.check_ratio(config.data.bias_ratio)
  # Every stage and method setting is checked by planning without data.
  spec_lib.plan_run(config)
  spec_lib.loop_options(config)
  root = str(config.data.root)
  if root and not definition.self_contained and not os.path.isdir(root):
    raise FileNotFoundError(
        f"config.data.root={root!r} is not a folder; point it at the "
        f"{config.data.name} data (python -m ffr_jax.data_summary --help shows the "
        "layouts).")
  weights_lib.pretrained_source(str(config.model.pretrained),
                                real_data=not definition.self_contained)


def check_one_run(config: ml_collections.ConfigDict, where: str = "") -> None:
  """Raises ValueError when ``mode`` or ``method`` is a comma list."""
  for key in ("mode", "method"):
    if "," in str(config[key]):
      raise ValueError(
          f"{where}config.{key}={config[key]!r} is a list; a run trains one "
          "mode x method (ffr_jax.main runs lists as a sweep; a sweep config "
          "lists the values in its grid).")


def check_run(config: ml_collections.ConfigDict, workdir: str
              ) -> ml_collections.ConfigDict:
  """The validated config with its data folders resolved (under ``workdir``)."""
  validate_config(config)
  return datasets.resolve_roots(config, workdir)


@dataclasses.dataclass(frozen=True)
class RunData:
  """The data of a run: real splits, synthetic pool, synthetic test set."""

  splits: DatasetSplits
  synthetic: Examples | None
  synthetic_test: Examples | None
  roots: tuple[str, ...]


def load_run_data(config: ml_collections.ConfigDict, modes: Sequence[str],
                  reuse: dict | None = None) -> RunData:
  """Loads (and for built-in generators, makes) what ``modes`` train on;
  ``config`` from :func:`check_run`. ``reuse`` (kept by an in-process sweep)
  returns data loaded before for the same data key: loading re-reads files."""
  key = spec_lib.data_key(config, modes)
  if reuse is not None and key in reuse:
    return reuse[key]
  datasets.prepare_dataset(config)
  splits = datasets.load_dataset(config.data)
  check_same_data_on_every_host(splits)
  spec = splits.spec
  needs = counts_lib.needed_per_group(spec, splits.train, modes,
                                      config.data.synthetic_per_group)
  pool = None
  if any(needs.values()):
    root = config.data.synthetic_root
    if generation.makes_its_own_data(config):
      generation.generate_synthetic(config, spec, needs, root)
    pool = synthetic_lib.load_synthetic(root, spec)
  data = RunData(splits=splits, synthetic=pool,
                 synthetic_test=synthetic_test_set(config, spec),
                 roots=(config.data.root, config.data.synthetic_root,
                        config.eval.synthetic_test_root))
  if reuse is not None:
    if len(reuse) >= 8:  # columns of paths and labels: small
      del reuse[next(iter(reuse))]
    reuse[key] = data
  return data


def check_same_data_on_every_host(splits: DatasetSplits) -> None:
  """Fails clearly when the hosts of a multi-host run loaded other splits
  (a flaky network file system listing other files on some host)."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  for name in ("train", "val", "test"):
    ex = splits.split(name)
    h.update("\n".join(os.path.basename(str(p)) for p in ex.path).encode())
    h.update(np.asarray(ex.y, np.int64).tobytes())
    h.update(np.asarray(ex.b, np.int64).tobytes())
  mine = np.frombuffer(h.digest()[:8], np.uint32)
  every = np.asarray(multihost_utils.process_allgather(mine))
  differ = [i for i, theirs in enumerate(every) if (theirs != every[0]).any()]
  if differ:
    raise ValueError(
        f"Hosts {differ} loaded other dataset splits than host 0 (listing of "
        f"{splits.spec.name} differs): check that every host sees the same "
        "files under data.root.")


def synthetic_test_set(config: ml_collections.ConfigDict, spec
                       ) -> Examples | None:
  """The held-out synthetic test images, or None when not configured.

  They come from ``eval.synthetic_test_root``, generated with their own seed
  ``eval.synthetic_test_seed`` (the built-in generator makes them now; Stable
  Diffusion's come from ``ffr_jax.generate`` with that seed and root).
  """
  n = int(config.eval.synthetic_test_per_group)
  if n <= 0:
    return None
  if int(config.eval.synthetic_test_seed) == int(config.generate.seed):
    raise ValueError(
        "eval.synthetic_test_seed equals generate.seed: the synthetic test "
        "images would repeat the training images; choose another seed.")
  root = config.eval.synthetic_test_root
  needs = {g: n for g in spec.groups}
  if generation.makes_its_own_data(config):
    test_config = ml_collections.ConfigDict(config.to_dict())
    test_config.generate.seed = int(config.eval.synthetic_test_seed)
    generation.generate_synthetic(test_config, spec, needs, root,
                                  show_progress=False, log_summary=False)
  return compose_lib.take_synthetic(
      spec, synthetic_lib.load_synthetic(root, spec), needs)


def pretrained_variables(config: ml_collections.ConfigDict, model):
  """ImageNet weights if configured (else None) and their plan ``init``."""
  source = weights_lib.pretrained_source(str(config.model.pretrained), real_data=False)
  if source is None:
    return None, spec_lib.FRESH
  # A real initialisation, not shapes: it supplies the fresh head that
  # replaces ImageNet's 1000-class one.
  template = jax.device_get(state_lib.init_on_device(
      model, config.data.image_size, config.seed))
  variables = weights_lib.load_torchvision_weights(source, template)
  return variables, f"pretrained:{spec_lib.variables_digest(variables)}"


def _finished_results(workdir: str, fingerprint: str) -> dict | None:
  """The results of this very run if it finished earlier, else None; another
  run's are a :class:`RunMismatchError`."""
  path = os.path.join(workdir, results_lib.RESULTS_FILE)
  if not os.path.isfile(path):
    return None
  previous = results_lib.read_results(workdir)
  if previous.get("fingerprint") != fingerprint:
    raise RunMismatchError(
        f"{workdir} holds the results of a run with other settings (mode "
        f"{previous.get('mode')}, method {previous.get('method')}) or planned "
        "by an older ffr_jax; use a new --workdir for a new experiment.")
  return previous


def _train_stages(ctx: Context, writer: MetricWriter) -> None:
  """Trains (or reuses) every stage of ``ctx.spec`` in order.

  Each stage folder has one owner at a time: a process that finds another
  one training it waits, then reuses the result.
  """
  method = get_method(ctx.spec.method)
  # Stage steps restart at 0; JAX's multi-host preemption sync point expects
  # step ids that only grow: each stage's ids start after the previous one's.
  for plan in ctx.spec.stages:
    if plan.examples is None:  # built from an earlier stage (JTT's error set)
      plan = dataclasses.replace(plan, examples=method.derive(plan, ctx))
    stage_dir = ctx.spec.stage_dir(plan)

    def stop_waiting(name=plan.name):
      # One host waits (the others meet it after): a collective check would hang.
      if lifecycle.process_count() == 1 and ctx.should_stop(ctx.step):
        raise stage_lib.StageInterrupted(name, ctx.step, 0)

    with lifecycle.owned_folder(stage_dir, f"stage {plan.name}",
                                while_waiting=stop_waiting):
      result, variables = stage_lib.run_stage(
          plan, ctx.model, list(ctx.spec.evals), ctx.shardings, writer,
          stage_dir, ctx.options, init_variables=ctx.variables[plan.init],
          should_stop=lambda step, first=ctx.step: ctx.should_stop(first + step))
    ctx.step += result.history[-1]["step"] + 1
    ctx.variables[f"stage:{plan.fingerprint}"] = variables
    ctx.results[plan.name] = result


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       should_stop=None, reuse_data: dict | None = None) -> dict:
  """Checks ``config``, then :func:`train_checked`."""
  return train_checked(check_run(config, workdir), workdir, should_stop,
                       reuse_data)


def train_checked(config: ml_collections.ConfigDict, workdir: str,
                  should_stop=None, reuse_data: dict | None = None) -> dict:
  """Trains one mode x method (``config`` from :func:`check_run`) and
  writes ``results.json``; a finished run's results come back unchanged."""
  maybe_initialize_distributed()
  mode, method_name = str(config.mode), str(config.method)
  data = load_run_data(config, [mode], reuse_data)
  shardings = make_shardings()
  model = models.model_from_config(config.model, data.splits.spec.num_classes)
  variables, init = pretrained_variables(config, model)
  spec = spec_lib.plan_run(config, data, pretrained=init, workdir=workdir)
  finished = _finished_results(workdir, spec.fingerprint)
  if finished is not None:
    logging.info("%s-%s: finished earlier; results in %s.", mode, method_name,
                 workdir)
    return finished
  start = time.time()
  ctx = Context(config=config, spec=spec, model=model, shardings=shardings,
                options=spec_lib.loop_options(config),
                should_stop=should_stop or (lambda step: False),
                variables={spec.stages[0].init: variables}, results={})
  writer = MetricWriter(workdir)
  try:
    _train_stages(ctx, writer)
  finally:
    writer.close()
  results = _results(ctx, workdir, time.time() - start)
  results_lib.write_json_atomic(
      os.path.join(workdir, results_lib.RESULTS_FILE), results)
  logging.info("%s-%s: test WA %.4f BA %.4f", mode, method_name,
               results["test"]["worst_group_acc"], results["test"]["balanced_acc"])
  return results


def _results(ctx: Context, workdir: str, wall_seconds: float) -> dict:
  """The run's results: the last stage's, or its method's after-stage step's."""
  spec = ctx.spec
  last = ctx.results[spec.stages[-1].name].metrics
  metrics, source = dict(last), spec_lib.SELECTION_SPLIT
  after = get_method(spec.method).after
  if after is not None:
    outcome = after(ctx)
    if outcome.head is not None and jax.process_index() == 0:
      buffer = io.BytesIO()
      np.savez(buffer, **outcome.head)
      lifecycle.write_atomic(os.path.join(workdir, last_layer.HEAD_FILE),
                             buffer.getvalue())
    metrics = dict(outcome.metrics)
    ctx.details.update(outcome.details)
    source = outcome.selection_source
    if source != spec_lib.SELECTION_SPLIT:
      # The step fitted on val: select on the last stage's val score.
      metrics["val_backbone"] = last[spec_lib.SELECTION_SPLIT]
  selected = last if source != spec_lib.SELECTION_SPLIT else metrics
  selection = {"worst_group_acc": selected[spec_lib.SELECTION_SPLIT][
      spec_lib.SELECTION_METRIC], "source": source}
  return results_lib.run_results(
      config=ctx.config, metrics=metrics, stage_results=ctx.results,
      stage_dirs={p.name: os.path.relpath(spec.stage_dir(p), workdir)
                  for p in spec.stages},
      selection=selection, details=ctx.details or None,
      synthetic_per_group=spec.synthetic_per_group,
      fingerprint=spec.fingerprint, wall_seconds=wall_seconds)


def check_workdir(workdir: str) -> None:
  if not workdir:
    raise ValueError("--workdir is empty; name the folder for this run's "
                     "checkpoints and results.")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"--workdir={workdir} is a file, not a folder.")


@contextlib.contextmanager
def owned_workdir(workdir: str):
  """Holds the workdir's lock (host 0) for the duration of a command.

  A second process on the same workdir stops at once with one line naming
  the owner; a stale lock of a killed process is taken over. Yields the lock:
  ``lock.checked(should_stop)`` stops a run whose lock was taken over.
  """
  check_workdir(workdir)
  with lifecycle.WorkdirLock(workdir, enabled=jax.process_index() == 0) as lock:
    yield lock
