"""One training stage: epochs of jitted steps, evaluation, Orbax checkpoints.

:func:`run_stage` takes a :class:`~ffr_jax.training.spec.StagePlan` (what to
train), :class:`~ffr_jax.training.spec.LoopOptions` (how often to log and
save) and the evaluation sets; it reads no config. A stage owns a directory::

    {stage_dir}/checkpoints/<step>/   Orbax: state, best variables, meta (JSON)
    {stage_dir}/result.json           written once the stage is finished

Resumption: a stage whose ``result.json`` exists is reused (retrained when
its checkpoint is damaged). Otherwise the newest checkpoint that restores is
loaded (:mod:`ffr_jax.training.checkpoints`); the data order of an epoch is a
function of (seed, epoch) and each step's randomness folds in the step number,
so a resumed run takes exactly the steps of an uninterrupted one. A stage that
continues another is evaluated before its first step ("epoch 0": the previous
stage's selected model on this stage's evaluation sets), recorded in its result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import optax

from ffr_jax.data import pipeline
from ffr_jax.data.types import GroupScheme
from ffr_jax.evaluation import metrics as metrics_lib
from ffr_jax.mesh import Shardings, check_batch_size, to_global
from ffr_jax.progress import Progress
from ffr_jax.reporting.results import write_json_atomic
from ffr_jax.reporting.writer import MetricWriter
from ffr_jax.training import checkpoints
from ffr_jax.training import state as state_lib
from ffr_jax.training import steps as steps_lib
from ffr_jax.training.methods import get_method
from ffr_jax.training.spec import (SELECT_LAST, SELECTION_METRIC,
                                   SELECTION_SPLIT, EvalSet, LoopOptions,
                                   StagePlan)

RESULT_FILE = "result.json"


@dataclasses.dataclass
class StageResult:
  """The outcome of a stage.

  Attributes:
    best_epoch: the epoch (1-based; 0 = the starting model when the plan
      allows it) with the best validation worst-group accuracy; its metrics
      are the stage's result.
    metrics: split -> summarize() dict of the best epoch.
    history: one dict per epoch.
    wall_seconds: time spent training this stage (over all resumptions).
    fingerprint: the plan's fingerprint; a rerun must match it to reuse it.
    plan: the plan's settings (for readers of the folder).
    epoch0: the starting model's metrics for a stage that continues
      another, else None.
  """

  best_epoch: int
  metrics: dict[str, dict]
  history: list[dict]
  wall_seconds: float
  fingerprint: str
  plan: dict
  epoch0: dict | None = None


def restore_best_variables(stage_dir: str, model, image_size: int, seed: int,
                           shardings: Shardings) -> Any:
  """The best variables saved by a finished stage, replicated on the mesh."""
  with checkpoints.manager(stage_dir) as mgr:
    return checkpoints.restore_best(
        mgr, _abstract_variables(model, image_size, seed, shardings))


def _abstract_variables(model, image_size: int, seed: int,
                        shardings: Shardings) -> Any:
  # Shapes only: Orbax restores straight into replicated arrays.
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=shardings.replicated),
      jax.eval_shape(lambda: state_lib.init_variables(model, image_size, seed)))


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
class _Bookkeeping:
  """Mutable bookkeeping saved in each checkpoint's meta."""

  history: list[dict]
  best_epoch: int
  best_value: float
  wall_seconds: float
  fingerprint: str
  epoch0: dict | None = None


class StageMismatchError(ValueError):
  pass


def _check_fingerprint(stored: str, plan: StagePlan, stored_plan: dict,
                       stage_dir: str) -> None:
  """Refuses a folder that holds another plan's stage."""
  if stored == plan.fingerprint:
    return
  current = plan.settings()
  diff = sorted(k for k in set(stored_plan) | set(current)
                if stored_plan.get(k) != current.get(k))
  details = ", ".join(f"{k}: {stored_plan.get(k)!r} -> {current.get(k)!r}"
                      for k in diff) or f"fingerprint {stored} -> {plan.fingerprint}"
  raise StageMismatchError(
      f"{stage_dir} holds a stage trained with other settings ({details}). "
      "Use a new --workdir for a new experiment (or delete that folder to "
      "retrain it).")


def run_stage(plan: StagePlan, model, evals: list[EvalSet],
              shardings: Shardings, writer: MetricWriter, stage_dir: str,
              options: LoopOptions = LoopOptions(),
              init_variables: Any | None = None,
              should_stop=None) -> tuple[StageResult, Any]:
  """Trains one stage (or resumes it) and returns its result and best variables.

  Args:
    plan: what to train (examples, method, optimisation, seed, init).
    evals: splits evaluated after every epoch; the first must be
      :data:`SELECTION_SPLIT`.
    writer: metric sink (TensorBoard + JSON lines).
    options: logging, checkpointing and input-pipeline options.
    init_variables: start from these variables (pretrained weights or the
      previous stage's best); None for a fresh initialisation. They must be
      what ``plan.init`` names.
    should_stop: ``should_stop(step) -> bool`` called after every step (a
      preemption guard); when it says True the stage saves a checkpoint and
      raises :class:`StageInterrupted`.

  Returns:
    The :class:`StageResult` and the best epoch's variables (on device).
  """
  if not evals or evals[0].name != SELECTION_SPLIT:
    raise ValueError(f"The first evaluation set must be {SELECTION_SPLIT!r}.")
  os.makedirs(stage_dir, exist_ok=True)
  result_path = os.path.join(stage_dir, RESULT_FILE)
  if os.path.isfile(result_path):
    with open(result_path) as f:
      finished = StageResult(**json.load(f))
    _check_fingerprint(finished.fingerprint, plan, finished.plan, stage_dir)
    # A finished stage is never recomputed: reuse its result and best model.
    try:
      best = restore_best_variables(stage_dir, model, plan.image_size,
                                    plan.seed, shardings)
      logging.info("%s: finished earlier in %s; reusing it.", plan.name,
                   stage_dir)
      return finished, best
    except (checkpoints.DamagedCheckpoint, FileNotFoundError) as e:
      # Resume is exact: retraining from an older checkpoint (or from the
      # start) gives the same result.
      logging.warning("%s: finished earlier, but %s; retraining it.",
                      plan.name, e.args[0].partition("; rerun")[0])
      os.remove(result_path)
  check_batch_size(plan.batch_size, shardings)
  check_batch_size(options.eval_batch_size, shardings)
  method = get_method(plan.method)
  scheme = GroupScheme(evals[0].scheme.spec, plan.by_source)
  group_sizes = scheme.counts(plan.examples)
  if (group_sizes == 0).all():
    raise ValueError(f"{plan.name}: no training examples.")

  data_cfg = options.input_config(plan.image_size, plan.flip)
  loader = pipeline.make_train_loader(
      plan.examples, scheme, data_cfg, plan.batch_size, seed=plan.seed,
      sampler=method.sampler)
  steps_per_epoch = loader.steps_per_epoch
  eval_loaders = {
      e.name: pipeline.make_eval_loader(e.examples, e.scheme, data_cfg,
                                        options.eval_batch_size)
      for e in evals}
  total_steps = plan.epochs * steps_per_epoch

  lr = (plan.lr if plan.lr_schedule == "constant" else
        optax.cosine_decay_schedule(plan.lr, max(1, total_steps)))
  tx = state_lib.make_optimizer(lr, plan.weight_decay)
  state = state_lib.create_state(
      model, tx, plan.image_size, scheme.num_groups, plan.seed, shardings,
      variables=init_variables)
  loss_fn = method.make_loss(dict(plan.method_settings), group_sizes)
  train_step = steps_lib.make_train_step(
      model, tx, loss_fn,
      steps_lib.StepConfig(num_groups=scheme.num_groups,
                           freeze_bn=plan.freeze_bn),
      shardings, state)
  eval_scheme = evals[0].scheme
  eval_step = steps_lib.make_eval_step(model, eval_scheme.num_groups, shardings)

  def evaluate_epoch(epoch: int, step: int) -> dict:
    """The current model's record on every evaluation set, logged."""
    variables, splits = state.variables(), {}
    for name, eloader in eval_loaders.items():
      counts = evaluate(eval_step, variables, eloader, eval_scheme.num_groups,
                        shardings)
      splits[name] = metrics_lib.summarize(jax.device_get(counts),
                                           eval_scheme.names())
    writer.write(plan.name, step, {
        f"{split}/{k}": float(m[k]) for split, m in splits.items()
        for k in ("worst_group_acc", "balanced_acc", "acc")})
    logging.info("%s epoch %s: %s", plan.name,
                 f"{epoch}/{plan.epochs}" if epoch else "0 (start)",
                 ", ".join(f"{split} WA {m['worst_group_acc']:.3f} "
                           f"BA {m['balanced_acc']:.3f}"
                           for split, m in splits.items()))
    return {"epoch": epoch, "step": step, **splits}

  def save(step: int) -> None:
    checkpoints.save(mgr, step, state, best, dataclasses.asdict(book))

  should_stop = should_stop or (lambda step: False)
  best = jax.tree.map(jnp.copy, state.variables())
  book = _Bookkeeping(history=[], best_epoch=0, best_value=-1.0,
                      wall_seconds=0.0, fingerprint=plan.fingerprint)
  # Closing the manager (however the loop ends) waits for pending saves.
  with checkpoints.manager(stage_dir) as mgr:
    had_checkpoints = bool(mgr.all_steps())
    restored = checkpoints.restore_latest(
        mgr, state, best, check=lambda meta: _check_fingerprint(
            meta.get("fingerprint"), plan, plan.settings(), stage_dir))
    if had_checkpoints and restored is None:
      writer.drop_after(plan.name, -1)  # all damaged: the stage starts again
    if restored is not None:
      state, best, meta = restored
      book = _Bookkeeping(**meta)
      writer.drop_after(plan.name, int(state.step))
      logging.info("%s: resumed from step %d.", plan.name, int(state.step))
    elif plan.init.startswith("stage:"):
      # Epoch 0: how the previous stage's model does here, before any step.
      book.epoch0 = evaluate_epoch(0, 0)
      if plan.epoch0_candidate:
        book.best_value = book.epoch0[SELECTION_SPLIT][SELECTION_METRIC]

    step = first_step = int(state.step)
    start_time = time.perf_counter() - book.wall_seconds
    bar = Progress(total_steps, desc=plan.name, unit="step",
                   enabled=jax.process_index() == 0, initial=step)
    window, window_start = [], step
    try:
      while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        for batch in loader.epoch(epoch, start):
          b = to_global({k: batch[k] for k in ("image", "label", "group")},
                        shardings)
          if step == first_step:
            # Compiled first (minutes for ResNet-50 at 224 px on a CPU): a
            # signal during set-up or compilation stops before any step.
            train_step = train_step.lower(state, b).compile()
            if should_stop(step):
              raise StageInterrupted(plan.name, step, total_steps)
          state, m = train_step(state, b)
          window.append(m)
          step += 1
          bar.update(1)
          if len(window) >= options.log_every or step % steps_per_epoch == 0:
            window = jax.device_get(window)
            _check_finite(window, plan.name, window_start)
            train_metrics = {f"train/{k}": float(np.mean([w[k] for w in window]))
                             for k in ("loss", "accuracy")}
            writer.write(plan.name, step, train_metrics)
            bar.postfix = f"loss {train_metrics['train/loss']:.4f}"
            window, window_start = [], step
          # (On an epoch's last step the epoch's evaluation and checkpoint
          # come first; the stop check after them then stops.)
          stop = should_stop(step)
          every = options.checkpoint_every
          if step % steps_per_epoch and (stop or (every and step % every == 0)):
            # Never checkpoint a state whose loss went non-finite since the
            # last check: a resume would start from it.
            _check_finite(jax.device_get(window), plan.name, window_start)
            book.wall_seconds = time.perf_counter() - start_time
            save(step)
            if stop:
              raise StageInterrupted(plan.name, step, total_steps)
        # End of an epoch: evaluate, keep the best, checkpoint.
        record = evaluate_epoch(epoch + 1, step)
        value = record[SELECTION_SPLIT][SELECTION_METRIC]
        if value > book.best_value or plan.selection == SELECT_LAST:
          book.best_value, book.best_epoch = value, epoch + 1
          best = jax.tree.map(jnp.copy, state.variables())
        book.history.append(record)
        book.wall_seconds = time.perf_counter() - start_time
        save(step)
        if step < total_steps and should_stop(step):
          raise StageInterrupted(plan.name, step, total_steps)
    finally:
      bar.close()
  selected = (book.epoch0 if book.best_epoch == 0
              else book.history[book.best_epoch - 1])
  result = StageResult(
      best_epoch=book.best_epoch,
      metrics={e.name: selected[e.name] for e in evals},
      history=book.history,
      wall_seconds=book.wall_seconds,
      fingerprint=plan.fingerprint,
      plan=plan.settings(),
      epoch0=book.epoch0)
  write_json_atomic(result_path, dataclasses.asdict(result))
  return result, best


class StageInterrupted(Exception):
  """A stop was requested (a signal); the stage saved a checkpoint first."""

  def __init__(self, stage: str, step: int, total_steps: int):
    super().__init__(f"stopped at step {step} of {total_steps} in {stage}")
    self.stage, self.step, self.total_steps = stage, step, total_steps

