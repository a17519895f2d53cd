"""One run: one mode x method, from config to ``results.json``.

    config -> validate -> data -> compose (the mode's stages)
           -> plan_run (one StagePlan per stage) -> run_stage per plan
           -> DFR refit (method dfr) -> {workdir}/results.json

Stages live in ``train.stages_dir`` (default ``{workdir}/stages``), one folder
per plan (``{name}-{fingerprint}``), so a stage with the same plan is trained
once: a sweep points all its runs at one folder and FFR's stage 1 is shared by
every method. ``results.json`` names each stage's folder relative to the
workdir, so a finished workdir can be moved.

Several modes or methods at once (``--config.mode=none,usb``) are a sweep:
``ffr_jax.main`` hands them to :mod:`ffr_jax.experiments`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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
from ffr_jax.data.types import DatasetSplits, Examples, GroupScheme
from ffr_jax.generation import counts as counts_lib
from ffr_jax.generation import factory as generation
from ffr_jax.mesh import make_shardings, maybe_initialize_distributed
from ffr_jax.models import weights as weights_lib
from ffr_jax.reporting import results as results_lib
from ffr_jax.reporting.writer import MetricWriter
from ffr_jax.training import last_layer
from ffr_jax.training import plan as plan_lib
from ffr_jax.training import stage as stage_lib
from ffr_jax.training import state as state_lib
from ffr_jax.training.methods import METHODS, get_method

STAGES_DIR = "stages"   # {workdir}/stages unless train.stages_dir is set
SYNTHETIC_TEST = "synthetic_test"


class RunMismatchError(ValueError):
  """The workdir holds the results of a run with other settings."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every value a run reads before anything is written.

  Raises:
    ValueError: the first bad value, with what was expected.
  """
  check_one_run(config)
  compose_lib.MODES.get(str(config.mode))
  METHODS.get(str(config.method))
  definition = datasets.get_dataset(str(config.data.name))
  models.MODELS.get(str(config.model.name))
  generation.GENERATORS.get(str(config.generate.generator))
  bias.check_ratio(config.data.bias_ratio)
  # Every stage setting is checked by planning the run without data.
  plan_lib.plan_run(config, compose_lib.describe(str(config.mode)))
  plan_lib.loop_options(config)
  root = str(config.data.root)
  if root and not definition.self_contained and not os.path.isdir(root):
    raise FileNotFoundError(
        f"config.data.root={root!r} is not a folder; point it at the "
        f"{config.data.name} data (python -m ffr_jax.data --help shows the "
        "layouts).")
  weights_lib.pretrained_source(str(config.model.pretrained), not definition.self_contained)


def check_one_run(config: ml_collections.ConfigDict, where: str = "") -> None:
  """Raises ValueError when ``mode`` or ``method`` is a comma list."""
  for key in ("mode", "method"):
    if "," in str(config[key]):
      raise ValueError(
          f"{where}config.{key}={config[key]!r} is a list; a run trains one "
          "mode x method (ffr_jax.main runs lists as a sweep; a sweep config "
          "lists the values in its grid).")


@dataclasses.dataclass(frozen=True)
class RunData:
  """The data of a run: real splits, synthetic pool, synthetic test set."""

  splits: DatasetSplits
  synthetic: Examples | None
  synthetic_test: Examples | None
  roots: tuple[str, ...]


def load_run_data(config: ml_collections.ConfigDict, modes: Sequence[str],
                  reuse: dict | None = None) -> RunData:
  """Loads (and for built-in generators, makes) what ``modes`` train on.

  Args:
    config: with resolved roots (:func:`ffr_jax.data.datasets.resolve_roots`).
    modes: the modes whose synthetic images must exist.
    reuse: a dict kept between the runs of one in-process sweep: it holds the
      last data loaded, returned again when every setting the data is loaded
      from is the same (loading re-reads every file's bytes).
  """
  key = plan_lib.json_digest({"modes": sorted(modes), **{
      k: v for k, v in config_lib.flatten(config).items()
      if k.split(".")[0] in ("data", "generate", "benchmark", "eval")}}, 64)
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
    reuse.clear()
    reuse[key] = data
  return data


def check_same_data_on_every_host(splits: DatasetSplits) -> None:
  """Fails clearly when the hosts of a multi-host run loaded other splits.

  A flaky network file system could list different files on different hosts;
  training would then mix data silently. Each host digests its splits and the
  digests are compared across processes.
  """
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

  They come from ``eval.synthetic_test_root`` and the generation seed
  ``eval.synthetic_test_seed`` (which must differ from ``generate.seed``, so
  no test image is a training image). The built-in generator makes missing
  ones now; for Stable Diffusion generate them first with
  ``python -m ffr_jax.generate --config.generate.seed=SEED
  --config.generate.per_group=N --config.data.synthetic_root=ROOT``.
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


def eval_sets(data: RunData) -> list[stage_lib.EvalSet]:
  """Every split a run evaluates after each epoch; val first (selection)."""
  scheme = GroupScheme(data.splits.spec, by_source=False)
  evals = [stage_lib.EvalSet("val", data.splits.val, scheme),
           stage_lib.EvalSet("test", data.splits.test, scheme)]
  if data.synthetic_test is not None:
    evals.append(stage_lib.EvalSet(SYNTHETIC_TEST, data.synthetic_test, scheme))
  return evals


def pretrained_variables(config: ml_collections.ConfigDict, model):
  """ImageNet weights if configured (else None) and their plan ``init``."""
  source = weights_lib.pretrained_source(str(config.model.pretrained), real_data=False)
  if source is None:
    return None, plan_lib.FRESH
  # A real initialisation, not shapes: it supplies the fresh head that
  # replaces ImageNet's 1000-class one.
  template = jax.device_get(jax.jit(
      lambda: state_lib.init_variables(model, config.data.image_size,
                                       config.seed))())
  variables = weights_lib.load_torchvision_weights(source, template)
  return variables, f"pretrained:{plan_lib.variables_digest(variables)}"


def run_fingerprint(plans: Sequence[plan_lib.StagePlan],
                    config: ml_collections.ConfigDict) -> str:
  """The stages plus what acts after them (DFR's settings, the eval sets)."""
  after = {"method": str(config.method),
           "eval": {k: v for k, v in config_lib.flatten(config.eval).items()
                    if not k.endswith("_root")}}
  if get_method(str(config.method)).refit_last_layer:
    after["dfr"] = config_lib.flatten(config.dfr)
  return plan_lib.json_digest({"stages": [p.fingerprint for p in plans], **after})


def _finished_results(workdir: str, fingerprint: str) -> dict | None:
  """The results of this very run if it finished earlier, else None.

  Raises:
    RunMismatchError: the workdir holds a finished run with other settings.
  """
  path = os.path.join(workdir, results_lib.RESULTS_FILE)
  if not os.path.isfile(path):
    return None
  previous = results_lib.read_results(workdir)
  if previous.get("fingerprint") != fingerprint:
    raise RunMismatchError(
        f"{workdir} holds the results of a run with other settings (mode "
        f"{previous.get('mode')}, method {previous.get('method')}); use a new "
        "--workdir for a new experiment.")
  return previous


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       should_stop=None, reuse_data: dict | None = None) -> dict:
  """Trains the stages of one mode x method and writes ``results.json``.

  Args:
    config: the run's config (one mode, one method).
    should_stop: ``should_stop(step) -> bool``, a preemption guard's check.
    reuse_data: the previous run's data, to reuse when it is the same
      (``reuse`` of :func:`load_run_data`).

  Returns:
    The ``results.json`` dict. A finished run returns its results unchanged
    (wall times included).
  """
  validate_config(config)
  maybe_initialize_distributed()
  config = datasets.resolve_roots(config, workdir)
  mode, method_name = str(config.mode), str(config.method)
  data = load_run_data(config, [mode], reuse_data)
  spec = data.splits.spec
  shardings = make_shardings()
  model = models.model_from_config(config.model, spec.num_classes)
  composition = compose_lib.compose(mode, spec, data.splits.train, data.synthetic,
                                    config.data.synthetic_per_group)
  variables, init = pretrained_variables(config, model)
  plans = plan_lib.plan_run(config, composition.stages, roots=data.roots,
                            pretrained=init)
  fingerprint = run_fingerprint(plans, config)
  finished = _finished_results(workdir, fingerprint)
  if finished is not None:
    logging.info("%s-%s: finished earlier; results in %s.", mode, method_name,
                 workdir)
    return finished
  start = time.time()
  evals = eval_sets(data)
  options = plan_lib.loop_options(config)
  root = str(config.train.stages_dir) or os.path.join(workdir, STAGES_DIR)
  writer = MetricWriter(workdir)
  stage_results, stage_dirs = {}, {}
  should_stop = should_stop or (lambda step: False)
  # Stage steps restart at 0; JAX's multi-host preemption sync point expects
  # step ids that only grow: each stage's ids start after the previous one's.
  first_id = 0
  try:
    for plan in plans:
      stage_dir = os.path.join(root, plan.folder)
      result, variables = stage_lib.run_stage(
          plan, model, evals, shardings, writer, stage_dir, options,
          init_variables=variables,
          should_stop=lambda step, first=first_id: should_stop(first + step))
      first_id += result.history[-1]["step"] + 1
      stage_results[plan.name] = result
      stage_dirs[plan.name] = os.path.relpath(stage_dir, workdir)
  finally:
    writer.close()
  metrics = dict(stage_results[plans[-1].name].metrics)
  selection = {"worst_group_acc": metrics[stage_lib.SELECTION_SPLIT][
      stage_lib.SELECTION_METRIC], "source": stage_lib.SELECTION_SPLIT}
  dfr_info = None
  if get_method(method_name).refit_last_layer:
    # The refit head is scored on the val data it was fit on: selection uses
    # the backbone's val score before the refit (the authors' choice).
    backbone_val = metrics[stage_lib.SELECTION_SPLIT]
    metrics, dfr_info = last_layer.refit_and_evaluate(
        model, variables, plans[-1].examples, evals, config, shardings)
    metrics["val_backbone"] = backbone_val
    selection["source"] = "backbone_val"
  results = results_lib.run_results(
      config=config, metrics=metrics, stage_results=stage_results,
      stage_dirs=stage_dirs, selection=selection, dfr=dfr_info,
      synthetic_per_group=composition.synthetic_per_group,
      fingerprint=fingerprint, wall_seconds=time.time() - start)
  results_lib.write_json_atomic(
      os.path.join(workdir, results_lib.RESULTS_FILE), results)
  logging.info("%s-%s: test WA %.4f BA %.4f", mode, method_name,
               metrics["test"]["worst_group_acc"],
               metrics["test"]["balanced_acc"])
  return results


def check_workdir(workdir: str) -> None:
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


def train_command(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """One mode x method as ``ffr_jax.main`` runs it: validated, locked, and
  stopped cleanly by SIGTERM/SIGINT (a checkpoint, then :class:`Preempted`).
  """
  validate_config(config)  # before the lock writes anything
  datasets.resolve_roots(config, workdir)
  # Before the lock and the guard ask jax which process this is: that starts
  # the backend, after which jax.distributed can no longer be initialized.
  maybe_initialize_distributed()
  with owned_workdir(workdir) as lock, lifecycle.PreemptionGuard() as guard:
    try:
      return train_and_evaluate(config, workdir,
                                should_stop=lock.checked(guard.should_stop))
    except stage_lib.StageInterrupted as e:
      raise lifecycle.Preempted(
          step=e.step, stage=e.stage, signal_name=guard.signal_name) from None
