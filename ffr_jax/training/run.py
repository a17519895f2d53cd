"""A whole run: data, the mode's stages, DFR, and ``results.json``.

``config.mode`` and ``config.method`` may each name one value or several,
comma-separated (``"none,usb,asb,ffr"``). One mode x method writes
``{workdir}/results.json``; several write one sub-workdir each
(``{workdir}/{mode}-{method}/results.json``) plus ``{workdir}/summary.json``,
``summary.md`` and a bar chart. FFR's stage 1 (ERM on synthetic data, the same
for every method) lives in ``{workdir}/ffr-stage1`` and is trained once;
``train.stage1_dir`` moves the shared stages to ``{stage1_dir}/{stage name}``
(a sweep points every run needing the same stage 1 there).

With ``eval.synthetic_test_per_group = N > 0`` every stage is also evaluated
on N held-out synthetic images per group (their own generation seed and
folder) and ``results.json`` gets ``synthetic_test`` next to ``test``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time

import jax
import ml_collections

from ffr_jax.data import compose as compose_lib
from ffr_jax.data import datasets
from ffr_jax.data import synthetic as synthetic_lib
from ffr_jax.data.types import DatasetSplits, Examples, GroupScheme
from ffr_jax import models
from ffr_jax.models import weights as weights_lib
from ffr_jax.reporting import results as results_lib
from ffr_jax.reporting.writer import MetricWriter
from ffr_jax.training import last_layer
from ffr_jax.training import loop
from ffr_jax.training import state as state_lib
from ffr_jax.training.methods import get_method
from ffr_jax.training.mesh import (Shardings, make_shardings,
                                   maybe_initialize_distributed)

STAGE1_DIR = "ffr-stage1"  # the default folder of the shared stage "stage1"
SYNTHETIC_TEST = "synthetic_test"


def parse_list(value: str, known, what: str) -> list[str]:
  """``"a,b"`` -> ``["a", "b"]``, each checked against ``known``."""
  items = [v.strip() for v in str(value).split(",") if v.strip()]
  if not items:
    raise ValueError(f"config.{what} is empty; choose from {sorted(known)}.")
  for v in items:
    if v not in known:
      raise ValueError(f"Unknown {what} {v!r}; known: {sorted(known)}.")
  return items


def _old_resolve_roots(config: ml_collections.ConfigDict, workdir: str
                  ) -> ml_collections.ConfigDict:
  """Fills in the default data folders under ``workdir``.

  An empty ``data.root`` is allowed only for a dataset that can make its own
  data (the built-in benchmark renders into ``{workdir}/data/real``); an empty
  ``data.synthetic_root`` means ``{workdir}/synthetic``.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  definition = datasets.get_dataset(config.data.name)
  if not config.data.root:
    if not getattr(definition, "self_contained", False):
      raise ValueError(
          f"config.data.root is empty; point it at the {config.data.name} "
          f"folder. Expected layout:\n{definition.layout}")
    config.data.root = os.path.join(workdir, "data", "real")
  if not config.data.synthetic_root:
    config.data.synthetic_root = os.path.join(workdir, "synthetic")
  if "eval" in config and not config.eval.synthetic_test_root:
    config.eval.synthetic_test_root = config.data.synthetic_root + "-test"
  return config


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What every mode x method of a run shares."""

  config: ml_collections.ConfigDict
  workdir: str
  splits: DatasetSplits
  shardings: Shardings
  model: object
  synthetic_test: Examples | None = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every configured mode x method; returns ``{name: results}``."""
  maybe_initialize_distributed()
  os.makedirs(workdir, exist_ok=True)
  modes = parse_list(config.mode, compose_lib.MODES, "mode")
  methods = parse_list(config.method, _known_methods(), "method")
  config = datasets.resolve_roots(config, workdir)
  datasets.prepare_dataset(config)
  splits = datasets.load_dataset(config.data)
  spec = splits.spec
  ctx = RunContext(
      config=config, workdir=workdir, splits=splits,
      shardings=make_shardings(),
      model=models.model_from_config(config.model, spec.num_classes),
      synthetic_test=synthetic_test_set(config, spec))
  pool = _synthetic_pool(ctx, modes)
  runs = list(itertools.product(modes, methods))
  out = {}
  for mode, method in runs:
    run_dir = workdir if len(runs) == 1 else os.path.join(workdir,
                                                          f"{mode}-{method}")
    out[f"{mode}-{method}"] = run_one(ctx, mode, method, pool, run_dir)
  if len(runs) > 1:
    results_lib.write_summary(workdir, out)
  return out


def _known_methods():
  from ffr_jax.training.methods import METHODS  # pylint: disable=g-import-not-at-top
  return METHODS


def _synthetic_pool(ctx: RunContext, modes: list[str]) -> Examples | None:
  """Loads (and for built-in generators, makes) the synthetic images needed."""
  cfg = ctx.config
  spec, train = ctx.splits.spec, ctx.splits.train
  needs = {}
  for mode in modes:
    for g, n in compose_lib.synthetic_needs(
        mode, spec, train, cfg.data.synthetic_per_group).items():
      needs[g] = max(needs.get(g, 0), n)
  if not any(needs.values()):
    return None
  root = cfg.data.synthetic_root
  if cfg.generate.generator == "procedural":
    # The built-in benchmark's generator is cheap and offline: make what is
    # missing now (resumable), so the demo is one command.
    from ffr_jax.generation import factory as generate  # pylint: disable=g-import-not-at-top
    generate.generate_synthetic(cfg, spec, needs, root)
  return synthetic_lib.load_synthetic(root, spec)


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
  n = int(config.eval.synthetic_test_per_group) if "eval" in config else 0
  if n <= 0:
    return None
  if int(config.eval.synthetic_test_seed) == int(config.generate.seed):
    raise ValueError(
        "eval.synthetic_test_seed equals generate.seed: the synthetic test "
        "images would repeat the training images; choose another seed.")
  root = config.eval.synthetic_test_root
  needs = {g: n for g in spec.groups}
  if config.generate.generator == "procedural":
    test_config = ml_collections.ConfigDict(config.to_dict())
    test_config.generate.seed = int(config.eval.synthetic_test_seed)
    from ffr_jax.generation import factory as generate  # pylint: disable=g-import-not-at-top
    generate.generate_synthetic(test_config, spec, needs, root,
                                show_progress=False, log_summary=False)
  return compose_lib.take_synthetic(spec, synthetic_lib.load_synthetic(root, spec),
                                    needs)


def _initial_variables(ctx: RunContext):
  """ImageNet weights if configured, else None (fresh initialisation)."""
  path = ctx.config.model.pretrained
  if not path:
    return None
  # A real initialisation, not shapes: it supplies the fresh head that
  # replaces ImageNet's 1000-class one.
  template = jax.device_get(jax.jit(
      lambda: state_lib.init_variables(ctx.model, ctx.config.data.image_size,
                                       ctx.config.seed))())
  return weights_lib.load_torchvision_weights(path, template)


def shared_stage_dir(config: ml_collections.ConfigDict, workdir: str,
                     stage_name: str) -> str:
  """Where a shared (method-independent) stage lives.

  ``{train.stage1_dir}/{stage}`` when set, else ``{workdir}/ffr-{stage}``
  (``ffr-stage1`` for FFR's stage 1, as before the setting existed).
  """
  if config.train.stage1_dir:
    return os.path.join(config.train.stage1_dir, stage_name)
  return os.path.join(workdir, f"ffr-{stage_name}")


def _stage_dir(ctx: RunContext, run_dir: str, stage: compose_lib.Stage) -> str:
  if stage.shared:
    return shared_stage_dir(ctx.config, ctx.workdir, stage.name)
  return os.path.join(run_dir, stage.name)


def run_one(ctx: RunContext, mode: str, method_name: str,
            pool: Examples | None, run_dir: str) -> dict:
  """Trains the stages of ``mode`` with ``method_name``; writes results.json."""
  cfg = ctx.config
  spec = ctx.splits.spec
  start = time.time()
  comp = compose_lib.compose(mode, spec, ctx.splits.train, pool,
                             cfg.data.synthetic_per_group)
  eval_scheme = GroupScheme(spec, by_source=False)
  evals = [loop.EvalSet("val", ctx.splits.val, eval_scheme),
           loop.EvalSet("test", ctx.splits.test, eval_scheme)]
  if ctx.synthetic_test is not None:
    evals.append(loop.EvalSet(SYNTHETIC_TEST, ctx.synthetic_test, eval_scheme))
  method = get_method(method_name)
  writer = MetricWriter(run_dir)
  variables = _initial_variables(ctx)
  stage_results = {}
  last_stage_train = None
  for stage in comp.stages:
    stage_method = get_method("erm") if stage.erm_only else method
    hparams = cfg[stage.hparams]  # stage1.* or train.*
    spec_ = loop.StageSpec(
        name=stage.name, stage_dir=_stage_dir(ctx, run_dir, stage),
        train=stage.train, scheme=GroupScheme(spec, stage.by_source),
        method=stage_method, epochs=hparams.epochs, lr=hparams.lr,
        freeze_bn=bool(cfg.train.freeze_bn) and stage.freeze_bn,
        seed=cfg.seed)
    result, variables = loop.run_stage(spec_, ctx.model, cfg, evals,
                                       ctx.shardings, writer, variables)
    stage_results[stage.name] = result
    last_stage_train = stage
  final = stage_results[comp.stages[-1].name]
  metrics = {e.name: final.metrics[e.name] for e in evals
             if e.name in final.metrics}
  dfr_info = None
  if method.refit_last_layer:
    metrics, dfr_info = last_layer.refit_and_evaluate(
        ctx.model, variables, last_stage_train.train, evals, cfg,
        ctx.shardings)
  writer.close()
  results = results_lib.run_results(
      config=cfg, mode=mode, method=method_name, metrics=metrics,
      stage_results=stage_results, dfr=dfr_info,
      synthetic_per_group=comp.synthetic_per_group,
      wall_seconds=time.time() - start)
  results_lib.write_results(run_dir, results)
  logging.info("%s-%s: test WA %.4f BA %.4f", mode, method_name,
               metrics["test"]["worst_group_acc"],
               metrics["test"]["balanced_acc"])
  return results
