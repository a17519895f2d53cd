"""One training stage: epochs of jitted steps, evaluation, Orbax checkpoints.

A stage owns a directory::

    {stage_dir}/checkpoints/<step>/   Orbax: state, best variables, meta (JSON)
    {stage_dir}/result.json           written once the stage is finished

Resumption: a stage whose ``result.json`` exists is never recomputed. Otherwise
the latest checkpoint is restored (train state with GroupDRO weights and the
step counter, the best variables so far, the metrics history); the data order
of an epoch is a function of (seed, epoch) and the step's randomness folds in
the step number, so a resumed run takes exactly the steps an uninterrupted run
would have taken.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ffr_jax.data import pipeline
from ffr_jax.data.types import Examples, GroupScheme
from ffr_jax.evaluation import metrics as metrics_lib
from ffr_jax.progress import Progress
from ffr_jax.reporting.results import write_json_atomic
from ffr_jax.reporting.writer import MetricWriter
from ffr_jax.training import state as state_lib
from ffr_jax.training import steps as steps_lib
from ffr_jax.training.mesh import Shardings, check_batch_size, to_global
from ffr_jax.training.methods import Method

RESULT_FILE = "result.json"
SELECTION_METRIC = "worst_group_acc"


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """What one stage trains and how.

  Attributes:
    name: ``stage1``, ``stage2`` or ``train``.
    stage_dir: its directory.
    train: training examples.
    scheme: the groups the method acts on (``(y, b)`` or ``(y, b, source)``).
    method: the robustness method (its sampler and loss).
    epochs: epochs to train.
    lr: Adam learning rate.
    freeze_bn: keep batch-norm statistics fixed.
    seed: seeds initialisation, data order and step randomness.
  """

  name: str
  stage_dir: str
  train: Examples
  scheme: GroupScheme
  method: Method
  epochs: int
  lr: float
  freeze_bn: bool
  seed: int


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """A split to evaluate on each epoch, grouped by ``(y, b)``."""

  name: str
  examples: Examples
  scheme: GroupScheme


@dataclasses.dataclass
class StageResult:
  """The outcome of a stage.

  Attributes:
    best_epoch: the epoch (1-based) with the best validation worst-group
      accuracy; its metrics are the stage's result.
    metrics: split -> summarize() dict of the best epoch.
    history: one dict per epoch.
    wall_seconds: time spent training this stage (over all resumptions).
    fingerprint: what the stage was trained from and with (see
      :func:`stage_fingerprint`); a rerun must match it to reuse the stage.
  """

  best_epoch: int
  metrics: dict[str, dict]
  history: list[dict]
  wall_seconds: float
  fingerprint: dict = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def read_result(stage_dir: str) -> StageResult | None:
  path = os.path.join(stage_dir, RESULT_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return StageResult(**json.load(f))


def checkpoint_manager(stage_dir: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(stage_dir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def restore_best_variables(stage_dir: str, abstract_variables: Any) -> Any:
  """The best variables saved by a finished stage (to start the next one)."""
  mgr = checkpoint_manager(stage_dir)
  step = mgr.latest_step()
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {stage_dir}/checkpoints.")
  restored = mgr.restore(step, args=ocp.args.Composite(
      best=ocp.args.StandardRestore(abstract_variables)))
  mgr.close()
  return restored.best


def evaluate(eval_step, variables, loader, num_groups: int,
             shardings: Shardings) -> metrics_lib.GroupCounts:
  """Sums the eval step's group counts over every batch of ``loader``."""
  total = metrics_lib.GroupCounts.zeros(num_groups)
  for batch in loader:
    b = to_global({k: batch[k] for k in ("image", "label", "group", "mask")},
                  shardings)
    total = total + eval_step(variables, b)
  return total


class NonFiniteLossError(FloatingPointError):
  pass


def _check_finite(window: list[dict], stage: str, first_step: int) -> None:
  finite = [bool(m["finite"]) for m in window]
  if not all(finite):
    bad = first_step + finite.index(False)
    raise NonFiniteLossError(
        f"{stage}: the training loss became NaN or inf at step {bad + 1}. The "
        "run stopped without saving that state; the last checkpoint is intact. "
        "Lower train.lr (or stage1.lr), check the input data, or use float32.")


@dataclasses.dataclass
class _Progress:
  """Mutable bookkeeping saved in each checkpoint's meta."""

  history: list[dict]
  best_epoch: int
  best_value: float
  wall_seconds: float
  fingerprint: dict = dataclasses.field(default_factory=dict)


def _digest(*arrays: np.ndarray) -> str:
  h = hashlib.sha1()
  for a in arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def _examples_digest(examples: Examples) -> str:
  paths = "\n".join(map(str, examples.path)).encode()
  return _digest(np.frombuffer(paths, np.uint8), examples.y, examples.b,
                 examples.source)


def _variables_digest(variables: Any) -> str:
  if variables is None:
    return "fresh"
  leaves = jax.tree.leaves(jax.device_get(variables))
  return _digest(*[np.asarray(x, np.float32) for x in leaves])


def stage_fingerprint(spec: StageSpec, cfg, init_variables: Any) -> dict:
  """What a stage's result depends on, as JSON.

  A stage directory holding a result or checkpoint with another fingerprint
  belongs to another experiment (another seed, ratio, learning rate, data or
  starting point): reusing it would report that experiment's numbers.
  """
  return {
      "train_examples": _examples_digest(spec.train),
      "num_train": len(spec.train),
      "groups_by_source": spec.scheme.by_source,
      "method": spec.method.name,
      "epochs": int(spec.epochs),
      "lr": float(spec.lr),
      "freeze_bn": bool(spec.freeze_bn),
      "seed": int(spec.seed),
      "init": _variables_digest(init_variables),
      "model": f"{cfg.model.name}/{cfg.model.dtype}",
      "image_size": int(cfg.data.image_size),
      "flip": bool(cfg.data.flip),
      "batch_size": int(cfg.train.batch_size),
      "weight_decay": float(cfg.train.weight_decay),
      "groupdro": [float(cfg.groupdro.eta), float(cfg.groupdro.size_adjustment)],
  }


class StageMismatchError(ValueError):
  pass


def _check_fingerprint(stored: dict, current: dict, stage_dir: str) -> None:
  if not stored:  # written before fingerprints existed
    return
  diff = sorted(k for k in set(stored) | set(current)
                if stored.get(k) != current.get(k))
  if diff:
    details = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}"
                        for k in diff)
    raise StageMismatchError(
        f"{stage_dir} holds a stage trained with other settings ({details}). "
        "Use a new --workdir for a new experiment (or delete that folder to "
        "retrain it).")


def run_stage(spec: StageSpec, model, cfg, evals: list[EvalSet],
              shardings: Shardings, writer: MetricWriter,
              init_variables: Any | None = None) -> tuple[StageResult, Any]:
  """Trains one stage (or resumes it) and returns its result and best variables.

  Args:
    spec: the stage.
    model: the flax module.
    cfg: the run's ConfigDict (``train.*``, ``data.*``, ``groupdro.*``).
    evals: splits evaluated after every epoch; the first must be ``val``.
    shardings: the mesh.
    writer: metric sink (TensorBoard + JSON lines).
    init_variables: start from these variables (pretrained weights or the
      previous stage's best); None for a fresh initialisation.

  Returns:
    The :class:`StageResult` and the best epoch's variables (on device).
  """
  os.makedirs(spec.stage_dir, exist_ok=True)
  fingerprint = stage_fingerprint(spec, cfg, init_variables)
  finished = read_result(spec.stage_dir)
  if finished is not None:
    _check_fingerprint(finished.fingerprint, fingerprint, spec.stage_dir)
    # A finished stage is never recomputed: reuse its result and best model.
    logging.info("%s: finished earlier in %s; reusing it.", spec.name,
                 spec.stage_dir)
    abstract = jax.eval_shape(lambda: state_lib.init_variables(
        model, cfg.data.image_size, spec.seed))
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=shardings.replicated), abstract)
    return finished, restore_best_variables(spec.stage_dir, abstract)
  batch_size = cfg.train.batch_size
  check_batch_size(batch_size, shardings)
  check_batch_size(cfg.train.eval_batch_size, shardings)
  group_sizes = spec.scheme.counts(spec.train)
  if (group_sizes == 0).all():
    raise ValueError(f"{spec.name}: no training examples.")

  loader = pipeline.make_train_loader(
      spec.train, spec.scheme, cfg.data, batch_size, seed=spec.seed,
      sampler=spec.method.sampler)
  steps_per_epoch = loader.steps_per_epoch
  if steps_per_epoch == 0:
    raise ValueError(
        f"{spec.name}: {len(spec.train)} training examples do not fill one "
        f"batch of {batch_size}; lower train.batch_size.")
  eval_loaders = {
      e.name: pipeline.make_eval_loader(e.examples, e.scheme, cfg.data,
                                        cfg.train.eval_batch_size)
      for e in evals}
  num_eval_groups = evals[0].scheme.num_groups
  names = evals[0].scheme.names()

  tx = state_lib.make_optimizer(spec.lr, cfg.train.weight_decay)
  state = state_lib.create_state(
      model, tx, cfg.data.image_size, spec.scheme.num_groups, spec.seed,
      shardings, variables=init_variables)
  loss_fn = spec.method.make_loss(cfg, group_sizes)
  train_step = steps_lib.make_train_step(
      model, tx, loss_fn,
      steps_lib.StepConfig(num_groups=spec.scheme.num_groups,
                           freeze_bn=spec.freeze_bn),
      shardings, state)
  eval_step = steps_lib.make_eval_step(model, num_eval_groups, shardings)

  mgr = checkpoint_manager(spec.stage_dir)
  best = jax.tree.map(jnp.copy, state.variables())
  prog = _Progress(history=[], best_epoch=0, best_value=-1.0, wall_seconds=0.0,
                   fingerprint=fingerprint)
  if mgr.latest_step() is not None:
    state, best, prog = _restore(mgr, state, best)
    _check_fingerprint(prog.fingerprint, fingerprint, spec.stage_dir)
    prog.fingerprint = fingerprint
    logging.info("%s: resumed from step %d.", spec.name, int(state.step))

  def save(step: int) -> None:
    mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        best=ocp.args.StandardSave(best),
        meta=ocp.args.JsonSave(dataclasses.asdict(prog))))

  total_steps = spec.epochs * steps_per_epoch
  step = int(state.step)
  start_time = time.perf_counter() - prog.wall_seconds
  bar = Progress(total_steps, desc=spec.name, unit="step",
                 enabled=jax.process_index() == 0, initial=step)
  window, window_start = [], step
  while step < total_steps:
    epoch, start = divmod(step, steps_per_epoch)
    for batch in loader.epoch(epoch, start):
      b = to_global({k: batch[k] for k in ("image", "label", "group")},
                    shardings)
      state, m = train_step(state, b)
      window.append(m)
      step += 1
      bar.update(1)
      if len(window) >= cfg.train.log_every or step % steps_per_epoch == 0:
        window = jax.device_get(window)
        _check_finite(window, spec.name, window_start)
        train_metrics = {f"train/{k}": float(np.mean([w[k] for w in window]))
                         for k in ("loss", "accuracy")}
        writer.write(f"{spec.name}", step, train_metrics)
        bar.postfix = f"loss {train_metrics['train/loss']:.4f}"
        window, window_start = [], step
      every = cfg.train.checkpoint_every
      if every and step % every == 0 and step % steps_per_epoch:
        # Never checkpoint a state whose loss went non-finite since the last
        # check: a resume would start from it.
        _check_finite(jax.device_get(window), spec.name, window_start)
        prog.wall_seconds = time.perf_counter() - start_time
        save(step)
    # End of an epoch: evaluate, keep the best, checkpoint.
    epoch += 1
    record = {"epoch": epoch, "step": step}
    variables = state.variables()
    for name, eloader in eval_loaders.items():
      counts = evaluate(eval_step, variables, eloader, num_eval_groups,
                        shardings)
      record[name] = metrics_lib.summarize(jax.device_get(counts), names)
    value = record[evals[0].name][SELECTION_METRIC]
    if value > prog.best_value:
      prog.best_value, prog.best_epoch = value, epoch
      best = jax.tree.map(jnp.copy, variables)
    prog.history.append(record)
    prog.wall_seconds = time.perf_counter() - start_time
    writer.write(spec.name, step, _flat_eval_metrics(record))
    logging.info("%s epoch %d/%d: %s", spec.name, epoch, spec.epochs,
                 _describe(record))
    save(step)
  bar.close()
  mgr.wait_until_finished()
  mgr.close()
  result = StageResult(
      best_epoch=prog.best_epoch,
      metrics={e.name: prog.history[prog.best_epoch - 1][e.name] for e in evals},
      history=prog.history,
      wall_seconds=prog.wall_seconds,
      fingerprint=fingerprint)
  write_json_atomic(os.path.join(spec.stage_dir, RESULT_FILE), result.to_json())
  return result, best


def _restore(mgr, state, best):
  step = mgr.latest_step()
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(state_lib.abstract_like(state)),
      best=ocp.args.StandardRestore(state_lib.abstract_like(best)),
      meta=ocp.args.JsonRestore()))
  return restored.state, restored.best, _Progress(**restored.meta)


def _flat_eval_metrics(record: dict) -> dict[str, float]:
  out = {}
  for split in ("val", "test"):
    if split in record:
      for k in ("worst_group_acc", "balanced_acc", "acc"):
        v = record[split].get(k)
        if v is not None:
          out[f"{split}/{k}"] = float(v)
  return out


def _describe(record: dict) -> str:
  parts = []
  for split in ("val", "test"):
    if split in record:
      parts.append(f"{split} WA {record[split]['worst_group_acc']:.3f} "
                   f"BA {record[split]['balanced_acc']:.3f}")
  return ", ".join(parts)
