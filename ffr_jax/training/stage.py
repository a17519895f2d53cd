"""One training stage: epochs of jitted steps, evaluation, Orbax checkpoints.

:func:`run_stage` takes a :class:`~ffr_jax.training.spec.StagePlan` (what to
train), :class:`~ffr_jax.training.spec.LoopOptions` (how often to log and
save) and the evaluation sets; it reads no config. A stage owns a directory::

    {stage_dir}/checkpoints/<step>/   Orbax: state, best variables, meta (JSON)
    {stage_dir}/result.json           written once the stage is finished

A finished stage is reused; otherwise the newest checkpoint that restores is
loaded. An epoch's data order is a function of (seed, epoch) and each step's
randomness folds in the step, so a resumed run takes exactly the steps of an
uninterrupted one. A stage that continues another first evaluates its
starting model ("epoch 0").
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
  """The outcome of a stage (its ``result.json``)."""

  best_epoch: int  # the selected epoch, 1-based (0: the starting model)
  metrics: dict[str, dict]  # split -> summarize() of the selected epoch
  history: list[dict]  # one record per epoch
  wall_seconds: float  # over all resumptions
  fingerprint: str
  plan: dict  # the plan's settings, for readers of the folder
  epoch0: dict | None = None  # the starting model's record, if it continues a stage


def restore_best_variables(stage_dir: str, model, image_size: int, seed: int,
                           shardings: Shardings) -> Any:
  """The best variables saved by a finished stage, replicated on the mesh."""
  with checkpoints.manager(stage_dir) as mgr:
    return checkpoints.restore_best(
        mgr, _abstract_variables(model, image_size, seed, shardings))


def _abstract_variables(model, image_size: int, seed: int,
                        shardings: Shardings) -> Any:
  """Shapes only: Orbax restores straight into replicated arrays."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=shardings.replicated),
      state_lib.init_on_device.eval_shape(model, image_size, seed))


def evaluate(eval_step, variables, loader, num_groups: int,
             shardings: Shardings) -> metrics_lib.GroupCounts:
  """Sums the eval step's group counts over every batch of ``loader``."""
  total = metrics_lib.GroupCounts.zeros(num_groups)
  for batch in loader:
    b = to_global({k: batch[k] for k in ("image", "label", "group", "mask")},
                  shardings)
    total = total + eval_step(variables, b)
  return total


def _eval_batch(n: int, batch: int, shardings: Shardings) -> int:
  """``batch``, or for fewer examples their number rounded up to 8 per device:
  padding costs a full forward pass per row, and no row's prediction depends
  on the others (``train.eval_batch_size`` is a speed-only key)."""
  per = 8 * shardings.num_devices
  return min(batch, max(1, -(-n // per)) * per)


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
  """Trains one stage, or resumes or reuses it; returns its result and the
  selected epoch's variables (on device).

  Args:
    evals: evaluated after every epoch; the first must be :data:`SELECTION_SPLIT`.
    init_variables: what ``plan.init`` names (None: a fresh initialisation).
    should_stop: ``should_stop(step)`` after every step; True saves a
      checkpoint and raises :class:`StageInterrupted`.
  """
  if not evals or evals[0].name != SELECTION_SPLIT:
    raise ValueError(f"The first evaluation set must be {SELECTION_SPLIT!r}.")
  os.makedirs(stage_dir, exist_ok=True)
  finished = _finished(plan, model, shardings, stage_dir)
  if finished is not None:
    return finished
  trainer = _Trainer(plan, model, evals, shardings, writer, options,
                     init_variables)
  # Closing the manager (however the loop ends) waits for pending saves.
  with checkpoints.manager(stage_dir) as mgr:
    trainer.restore_or_start(mgr, stage_dir)
    trainer.train(mgr, should_stop or (lambda step: False))
  result = trainer.result()
  write_json_atomic(os.path.join(stage_dir, RESULT_FILE), dataclasses.asdict(result))
  return result, trainer.best


def _finished(plan: StagePlan, model, shardings: Shardings, stage_dir: str
              ) -> tuple[StageResult, Any] | None:
  """A finished stage's result and selected variables; None to train it.

  A finished stage is never recomputed; one whose checkpoint is damaged is
  retrained (resume is exact, so the result is the same).
  """
  path = os.path.join(stage_dir, RESULT_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      finished = StageResult(**json.load(f))
  except (ValueError, TypeError) as e:
    logging.warning("%s: %s is damaged (%s); rebuilding it from the "
                    "checkpoints.", plan.name, path, e)
    if jax.process_index() == 0:
      os.replace(path, path + ".damaged")
    return None
  _check_fingerprint(finished.fingerprint, plan, finished.plan, stage_dir)
  try:
    best = restore_best_variables(stage_dir, model, plan.image_size,
                                  plan.seed, shardings)
  except (checkpoints.DamagedCheckpoint, FileNotFoundError) as e:
    logging.warning("%s: finished earlier, but %s; retraining it.",
                    plan.name, e.args[0].partition("; rerun")[0])
    if jax.process_index() == 0:
      os.remove(path)
    return None
  logging.info("%s: finished earlier in %s; reusing it.", plan.name, stage_dir)
  return finished, best


class _Trainer:
  """One stage's loop state: the train state, the selected variables so far,
  the bookkeeping every checkpoint saves, and what steps and evaluates."""

  def __init__(self, plan, model, evals, shardings, writer, options,
               init_variables):
    check_batch_size(plan.batch_size, shardings)
    check_batch_size(options.eval_batch_size, shardings)
    self.plan, self.evals, self.shardings = plan, evals, shardings
    self.writer, self.options = writer, options
    method = get_method(plan.method)
    scheme = GroupScheme(evals[0].scheme.spec, plan.by_source)
    group_sizes = scheme.counts(plan.examples)
    if (group_sizes == 0).all():
      raise ValueError(f"{plan.name}: no training examples.")
    data_cfg = options.input_config(plan.image_size, plan.flip)
    self.loader = pipeline.make_train_loader(
        plan.examples, scheme, data_cfg, plan.batch_size, seed=plan.seed,
        sampler=method.sampler)
    self.eval_loaders = {
        e.name: pipeline.make_eval_loader(
            e.examples, e.scheme, data_cfg,
            _eval_batch(len(e.examples), options.eval_batch_size, shardings))
        for e in evals}
    self.steps_per_epoch = self.loader.steps_per_epoch
    self.total_steps = plan.epochs * self.steps_per_epoch
    lr = (plan.lr if plan.lr_schedule == "constant" else
          optax.cosine_decay_schedule(plan.lr, max(1, self.total_steps)))
    tx = state_lib.make_optimizer(lr, plan.weight_decay)
    # What the jitted functions close over (tx, the loss): stages with equal
    # keys (the runs of an in-process sweep) share them, compiled once.
    key = (model, plan.image_size, scheme.num_groups, shardings,
           plan.weight_decay, plan.lr, plan.lr_schedule,
           self.total_steps if plan.lr_schedule != "constant" else None)
    self.state = steps_lib.shared(
        state_lib.state_init, model, tx, plan.image_size, scheme.num_groups,
        plan.seed, shardings, key=key + (plan.seed,))(init_variables)
    self.train_step = steps_lib.shared(
        steps_lib.make_train_step, model, tx,
        method.make_loss(dict(plan.method_settings), group_sizes),
        steps_lib.StepConfig(num_groups=scheme.num_groups,
                             freeze_bn=plan.freeze_bn),
        shardings, self.state, key=key + (
            method.make_loss, plan.method_settings, tuple(group_sizes.tolist()),
            plan.freeze_bn))
    self.eval_scheme = evals[0].scheme
    self.eval_step = steps_lib.shared(
        steps_lib.make_eval_step, model, self.eval_scheme.num_groups, shardings)
    self.best = jax.tree.map(jnp.copy, self.state.variables())
    self.book = _Bookkeeping(history=[], best_epoch=0, best_value=-1.0,
                             wall_seconds=0.0, fingerprint=plan.fingerprint)

  def evaluate_epoch(self, epoch: int, step: int) -> dict:
    """The current model's record on every evaluation set, logged."""
    variables, splits = self.state.variables(), {}
    for name, loader in self.eval_loaders.items():
      counts = evaluate(self.eval_step, variables, loader,
                        self.eval_scheme.num_groups, self.shardings)
      splits[name] = metrics_lib.summarize(jax.device_get(counts),
                                           self.eval_scheme.names())
    self.writer.write(self.plan.name, step, {
        f"{split}/{k}": float(m[k]) for split, m in splits.items()
        for k in ("worst_group_acc", "balanced_acc", "acc")})
    logging.info("%s epoch %s: %s", self.plan.name,
                 f"{epoch}/{self.plan.epochs}" if epoch else "0 (start)",
                 ", ".join(f"{split} WA {m['worst_group_acc']:.3f} "
                           f"BA {m['balanced_acc']:.3f}"
                           for split, m in splits.items()))
    return {"epoch": epoch, "step": step, **splits}

  def restore_or_start(self, mgr, stage_dir: str) -> None:
    """Resumes from the newest checkpoint that restores; else evaluates the
    starting model (epoch 0) of a stage that continues another."""
    plan = self.plan
    had_checkpoints = bool(mgr.all_steps())
    restored = checkpoints.restore_latest(
        mgr, self.state, self.best, check=lambda meta: _check_fingerprint(
            meta.get("fingerprint"), plan, plan.settings(), stage_dir))
    if restored is not None:
      self.state, self.best, meta = restored
      self.book = _Bookkeeping(**meta)
      self.writer.drop_after(plan.name, int(self.state.step))
      logging.info("%s: resumed from step %d.", plan.name, int(self.state.step))
      return
    if had_checkpoints:
      self.writer.drop_after(plan.name, -1)  # all damaged: start again
    if plan.init.startswith("stage:"):
      self.book.epoch0 = self.evaluate_epoch(0, 0)
      if plan.epoch0_candidate:
        self.book.best_value = self.book.epoch0[SELECTION_SPLIT][SELECTION_METRIC]

  def save(self, mgr, step: int, start_time: float) -> None:
    self.book.wall_seconds = time.perf_counter() - start_time
    checkpoints.save(mgr, step, self.state, self.best,
                     dataclasses.asdict(self.book))

  def end_epoch(self, mgr, epoch: int, step: int, start_time: float,
                stop: bool) -> None:
    """Evaluates, keeps the selected variables, checkpoints (every
    ``checkpoint_epochs`` epochs, at the last and before a stop)."""
    record = self.evaluate_epoch(epoch, step)
    value = record[SELECTION_SPLIT][SELECTION_METRIC]
    if value > self.book.best_value or self.plan.selection == SELECT_LAST:
      self.book.best_value, self.book.best_epoch = value, epoch
      self.best = jax.tree.map(jnp.copy, self.state.variables())
    self.book.history.append(record)
    every = self.options.checkpoint_epochs
    if stop or epoch == self.plan.epochs or (every and epoch % every == 0):
      self.save(mgr, step, start_time)

  def train(self, mgr, should_stop) -> None:
    """Steps to the end of the stage, evaluating and saving at epoch ends."""
    plan, spe, total = self.plan, self.steps_per_epoch, self.total_steps
    step = first_step = int(self.state.step)
    start_time = time.perf_counter() - self.book.wall_seconds
    bar = Progress(total, desc=plan.name, unit="step",
                   enabled=jax.process_index() == 0, initial=step)
    window, window_start = [], step
    try:
      while step < total:
        epoch, start = divmod(step, spe)
        for batch in self.loader.epoch(epoch, start):
          b = to_global({k: batch[k] for k in ("image", "label", "group")},
                        self.shardings)
          if step == first_step:
            # Compiled first (minutes for ResNet-50 at 224 px on a CPU): a
            # signal during set-up or compilation stops before any step.
            self.train_step = self.train_step.lower(self.state, b).compile()
            if should_stop(step):
              raise StageInterrupted(plan.name, step, total)
          self.state, m = self.train_step(self.state, b)
          window.append(m)
          step += 1
          bar.update(1)
          if len(window) >= self.options.log_every or step % spe == 0:
            window = jax.device_get(window)
            _check_finite(window, plan.name, window_start)
            train_metrics = {f"train/{k}": float(np.mean([w[k] for w in window]))
                             for k in ("loss", "accuracy")}
            self.writer.write(plan.name, step, train_metrics)
            bar.postfix = f"loss {train_metrics['train/loss']:.4f}"
            window, window_start = [], step
          # (On an epoch's last step the epoch's evaluation and checkpoint
          # come first; the stop check after them then stops.)
          stop = should_stop(step)
          every = self.options.checkpoint_every
          if step % spe and (stop or (every and step % every == 0)):
            # Never checkpoint a state whose loss went non-finite since the
            # last check: a resume would start from it.
            _check_finite(jax.device_get(window), plan.name, window_start)
            self.save(mgr, step, start_time)
            if stop:
              raise StageInterrupted(plan.name, step, total)
        stop = step < total and should_stop(step)
        self.end_epoch(mgr, epoch + 1, step, start_time, stop)
        if stop:
          raise StageInterrupted(plan.name, step, total)
    finally:
      bar.close()

  def result(self) -> StageResult:
    book = self.book
    selected = (book.epoch0 if book.best_epoch == 0
                else book.history[book.best_epoch - 1])
    return StageResult(
        best_epoch=book.best_epoch,
        metrics={e.name: selected[e.name] for e in self.evals},
        history=book.history, wall_seconds=book.wall_seconds,
        fingerprint=self.plan.fingerprint, plan=self.plan.settings(),
        epoch0=book.epoch0)


class StageInterrupted(Exception):
  """A stop was requested (a signal); the stage saved a checkpoint first."""

  def __init__(self, stage: str, step: int, total_steps: int):
    super().__init__(f"stopped at step {step} of {total_steps} in {stage}")
    self.stage, self.step, self.total_steps = stage, step, total_steps

