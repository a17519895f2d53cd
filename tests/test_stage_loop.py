"""The stage loop: epochs, best-epoch selection, result reuse, NaN stop, and
what a stage hands to the next one."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import dataclasses

import jax

from ffr_jax import models
from ffr_jax.data import pipeline
from ffr_jax.data.types import DatasetSpec, Examples, GroupScheme
from ffr_jax.mesh import make_shardings
from ffr_jax.reporting.writer import MetricWriter
from ffr_jax.training import checkpoints
from ffr_jax.training import stage as stage_lib
from ffr_jax.training import steps as steps_lib
from ffr_jax.training.methods import Method
from ffr_jax.training.spec import LoopOptions, StagePlan
from tests.fake_trees import write_image

SPEC = DatasetSpec("toy", ("a", "b"), ("x", "y"),
                   ((0, 0), (0, 1), (1, 0), (1, 1)), (0, 1))


def _examples(root, n_per_group, tag):
  paths, ys, bs = [], [], []
  for y, b in SPEC.groups:
    for i in range(n_per_group):
      # The colour encodes the class, so the task is learnable.
      paths.append(write_image(os.path.join(root, tag, f"{y}{b}_{i}.png"),
                               colour=y * 2 + (i % 2)))
      ys.append(y)
      bs.append(b)
  return Examples.from_lists(paths, ys, bs)


OPTIONS = LoopOptions(log_every=2, eval_batch_size=16)


def _plan(tmp_path, method="erm", epochs=2, name="train", lr=1e-3,
          init="fresh", freeze_bn=False, **kw):
  return StagePlan(
      name=name, examples=_examples(str(tmp_path), 6, "train"), data="toy",
      by_source=False, method=method, method_settings=(), epochs=epochs,
      lr=lr, lr_schedule=kw.pop("lr_schedule", "constant"), batch_size=8, weight_decay=1e-5,
      freeze_bn=freeze_bn, image_size=16, flip=False, model="tiny/float32",
      seed=0, init=init, epoch0_candidate=kw.pop("epoch0_candidate", False),
      evals=(("val", "toy-val"), ("test", "toy-test")),
      selection=kw.pop("selection", "best_val"))


def _evals(tmp_path):
  scheme = GroupScheme(SPEC)
  return [stage_lib.EvalSet("val", _examples(str(tmp_path), 3, "val"), scheme),
          stage_lib.EvalSet("test", _examples(str(tmp_path), 3, "test"), scheme)]


def _run(tmp_path, plan, writer=None, variables=None, folder=None):
  writer = writer or MetricWriter(str(tmp_path / "off"), enabled=False)
  return stage_lib.run_stage(
      plan, models.create_model("tiny", 2), _evals(tmp_path), make_shardings(),
      writer, str(tmp_path / (folder or plan.name)), OPTIONS,
      init_variables=variables)


def _evaluate(tmp_path, variables, split="val"):
  shardings = make_shardings()
  model = models.create_model("tiny", 2)
  ev = {e.name: e for e in _evals(tmp_path)}[split]
  data = OPTIONS.input_config(16)
  loader = pipeline.make_eval_loader(ev.examples, ev.scheme, data, 16)
  step = steps_lib.make_eval_step(model, ev.scheme.num_groups, shardings)
  from ffr_jax.evaluation import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  counts = stage_lib.evaluate(step, variables, loader, ev.scheme.num_groups,
                              shardings)
  return metrics_lib.summarize(jax.device_get(counts), ev.scheme.names())


def test_stage_trains_selects_and_is_never_recomputed(tmp_path, monkeypatch):
  plan = _plan(tmp_path)
  writer = MetricWriter(str(tmp_path / "logs"))
  result, best = _run(tmp_path, plan, writer)
  writer.close()
  assert len(result.history) == 2
  vals = [h["val"]["worst_group_acc"] for h in result.history]
  assert result.best_epoch == 1 + int(np.argmax(vals))
  assert result.metrics["test"] == result.history[result.best_epoch - 1]["test"]
  saved = json.load(open(tmp_path / "train" / stage_lib.RESULT_FILE))
  assert saved["best_epoch"] == result.best_epoch
  assert saved["fingerprint"] == plan.fingerprint
  lines = [json.loads(l) for l in open(tmp_path / "logs" / "metrics.jsonl")]
  assert any("val/worst_group_acc" in l for l in lines)
  assert any("test/worst_group_acc" in l for l in lines)
  assert any("train/loss" in l for l in lines)

  # A finished stage is reused, not retrained: building a loader would fail.
  def no_loader(*a, **k):
    raise AssertionError("a finished stage must not be retrained")
  monkeypatch.setattr(pipeline, "make_train_loader", no_loader)
  again, best_again = _run(tmp_path, plan)
  assert again.best_epoch == result.best_epoch
  np.testing.assert_array_equal(best["params"]["fc"]["kernel"],
                                best_again["params"]["fc"]["kernel"])


def test_returned_best_variables_reproduce_the_best_epochs_metrics(tmp_path):
  result, best = _run(tmp_path, _plan(tmp_path, epochs=3, lr=3e-3))
  assert _evaluate(tmp_path, best, "val") == result.metrics["val"]
  assert _evaluate(tmp_path, best, "test") == result.metrics["test"]


def test_next_stage_starts_from_the_best_model_with_a_fresh_optimizer(
    tmp_path, monkeypatch):
  first, best = _run(tmp_path, _plan(tmp_path, name="stage1", epochs=2))
  seen = {}
  make = steps_lib.make_train_step

  def spy(model, tx, loss_fn, cfg, shardings, state):
    seen["state"] = jax.device_get(state)
    return make(model, tx, loss_fn, cfg, shardings, state)
  monkeypatch.setattr(steps_lib, "make_train_step", spy)
  # lr 0 and frozen BN: stage 2 cannot move, so every epoch equals epoch 0,
  # and epoch 0 is stage 1's selected model.
  second, _ = _run(tmp_path, _plan(tmp_path, name="stage2", lr=0.0,
                                   freeze_bn=True, init="stage:x"),
                   variables=best)
  assert second.epoch0["val"] == first.metrics["val"]
  assert second.epoch0["test"] == first.metrics["test"]
  for record in second.history:
    assert record["val"] == first.metrics["val"]
  state = seen["state"]
  np.testing.assert_array_equal(state.params["fc"]["kernel"],
                                jax.device_get(best["params"]["fc"]["kernel"]))
  # The optimizer starts anew: Adam's moments are zero and its count is 0.
  moments = [x for x in jax.tree.leaves(state.opt_state)
             if np.asarray(x).ndim > 0]
  assert moments and all(not np.asarray(m).any() for m in moments)
  counts = [x for x in jax.tree.leaves(state.opt_state)
            if np.asarray(x).ndim == 0]
  assert all(int(c) == 0 for c in counts)


def test_lr_zero_moves_only_the_batchnorm_statistics(tmp_path):
  # The verdict's control (a): stage 2 at lr 0 keeps stage 1's weights and
  # re-estimates BatchNorm's statistics on the new data.
  _, best = _run(tmp_path, _plan(tmp_path, name="stage1", epochs=2, lr=3e-3))
  _, second = _run(tmp_path, _plan(tmp_path, name="stage2", lr=0.0,
                                   init="stage:x", epochs=1), variables=best)
  before, after = jax.device_get(best), jax.device_get(second)
  jax.tree.map(np.testing.assert_array_equal, before["params"],
               after["params"])
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: not np.array_equal(a, b), before["batch_stats"],
      after["batch_stats"]))
  assert moved and all(moved)


def test_epoch0_is_selected_only_when_the_plan_allows_it(tmp_path):
  _, best = _run(tmp_path, _plan(tmp_path, name="stage1", epochs=2, lr=3e-3))
  # A huge learning rate wrecks the model after one epoch: with epoch 0 as a
  # candidate, the starting model wins.
  wreck = dict(name="stage2", lr=5.0, init="stage:x", epochs=1)
  allowed, kept = _run(tmp_path, _plan(tmp_path, epoch0_candidate=True, **wreck),
                       variables=best, folder="a")
  plain, _ = _run(tmp_path, _plan(tmp_path, **wreck), variables=best,
                  folder="b")
  assert plain.best_epoch == 1
  if allowed.epoch0["val"]["worst_group_acc"] > allowed.history[0]["val"][
      "worst_group_acc"]:
    assert allowed.best_epoch == 0
    assert allowed.metrics["val"] == allowed.epoch0["val"]
    np.testing.assert_array_equal(jax.device_get(kept["params"]["fc"]["kernel"]),
                                  jax.device_get(best["params"]["fc"]["kernel"]))
  else:
    assert allowed.best_epoch == 1


def test_a_cosine_schedule_trains_differently_from_a_constant_one(tmp_path):
  # One epoch, so both return the model after the same steps.
  _, constant = _run(tmp_path, _plan(tmp_path, lr=3e-3, epochs=1), folder="c")
  _, cosine = _run(tmp_path, _plan(tmp_path, lr=3e-3, epochs=1,
                                   lr_schedule="cosine"), folder="k")
  a, b = (np.asarray(jax.device_get(v["params"]["fc"]["kernel"]))
          for v in (constant, cosine))
  assert not np.allclose(a, b)


def test_nan_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
  def nan_loss(settings, group_sizes):
    del settings, group_sizes
    return lambda per_example, group, q: (jnp.mean(per_example) * jnp.nan, q)

  monkeypatch.setattr(stage_lib, "get_method",
                      lambda name: Method("nan", "shuffle", nan_loss))
  with pytest.raises(stage_lib.NonFiniteLossError, match="NaN or inf at step 1"):
    _run(tmp_path, _plan(tmp_path, epochs=1))
  # Nothing was checkpointed and no result written.
  assert not (tmp_path / "train" / stage_lib.RESULT_FILE).exists()
  ckpts = tmp_path / "train" / "checkpoints"
  assert not ckpts.exists() or not [p for p in ckpts.iterdir()
                                    if p.name.isdigit()]


def test_a_stage_of_another_experiment_is_refused(tmp_path):
  plan = _plan(tmp_path, epochs=1)
  _run(tmp_path, plan)
  other = dataclasses.replace(plan, lr=1e-2)
  with pytest.raises(stage_lib.StageMismatchError, match=r"lr: 0.001 -> 0.01"):
    _run(tmp_path, other, folder=plan.name)


def test_a_stop_request_saves_a_checkpoint_and_resumes_to_the_same_result(
    tmp_path):
  plan = _plan(tmp_path, epochs=2)
  whole, _ = _run(tmp_path, plan, folder="whole")
  with pytest.raises(stage_lib.StageInterrupted) as stopped:
    stage_lib.run_stage(
        plan, models.create_model("tiny", 2), _evals(tmp_path),
        make_shardings(), MetricWriter(str(tmp_path / "off"), enabled=False),
        str(tmp_path / "cut"), OPTIONS, should_stop=lambda step: step == 3)
  assert stopped.value.step == 3
  assert not list((tmp_path / "cut").rglob("*tmp*"))
  resumed, _ = _run(tmp_path, plan, folder="cut")
  assert resumed.history == whole.history
  assert resumed.best_epoch == whole.best_epoch


def test_checkpoint_epochs_0_saves_the_last_epoch_and_a_stop_only(tmp_path):
  plan = _plan(tmp_path, epochs=3)  # 3 steps per epoch
  rare = dataclasses.replace(OPTIONS, checkpoint_epochs=0)

  def run(folder, **kw):
    return stage_lib.run_stage(
        plan, models.create_model("tiny", 2), _evals(tmp_path),
        make_shardings(), MetricWriter(str(tmp_path / "off"), enabled=False),
        str(tmp_path / folder), rare, **kw)

  whole, _ = _run(tmp_path, plan, folder="whole")
  rarely, _ = run("rare")
  assert rarely.history == whole.history
  with checkpoints.manager(str(tmp_path / "rare")) as mgr:
    assert mgr.all_steps() == [9]
  # A stop at an epoch's end saves there, and the resume is exact.
  with pytest.raises(stage_lib.StageInterrupted):
    run("cut", should_stop=lambda step: step == 3)
  with checkpoints.manager(str(tmp_path / "cut")) as mgr:
    assert mgr.all_steps() == [3]
  resumed, _ = run("cut")
  assert resumed.history == whole.history


def _groupdro_plan(tmp_path):
  # A large step size makes the group weights matter within a few steps.
  return dataclasses.replace(
      _plan(tmp_path, epochs=2, lr=3e-3), method="groupdro",
      method_settings=(("eta", 5.0), ("size_adjustment", 0.0)))


def _interrupted_then_resumed(tmp_path, plan, folder):
  with pytest.raises(stage_lib.StageInterrupted):
    stage_lib.run_stage(
        plan, models.create_model("tiny", 2), _evals(tmp_path),
        make_shardings(), MetricWriter(str(tmp_path / "off"), enabled=False),
        str(tmp_path / folder), OPTIONS, should_stop=lambda step: step == 4)
  return _run(tmp_path, plan, folder=folder)


def test_a_resume_restores_groupdros_weights(tmp_path, monkeypatch):
  plan = _groupdro_plan(tmp_path)
  _, whole = _run(tmp_path, plan, folder="whole")
  _, resumed = _interrupted_then_resumed(tmp_path, plan, "cut")
  kernel = lambda v: np.asarray(jax.device_get(v["params"]["fc"]["kernel"]))  # noqa: E731
  np.testing.assert_array_equal(kernel(resumed), kernel(whole))
  # The check above can fail: a resume that forgot q (uniform again) trains
  # another model.
  restore = checkpoints.restore_latest

  def forgetful(mgr, state, best, check):
    restored = restore(mgr, state, best, check)
    if restored is None:  # the first, interrupted run
      return None
    state, best, meta = restored
    uniform = jnp.full_like(state.group_weights, 1 / state.group_weights.size)
    return state.replace(group_weights=uniform), best, meta
  monkeypatch.setattr(checkpoints, "restore_latest", forgetful)
  _, wrong = _interrupted_then_resumed(tmp_path, plan, "forgot")
  assert not np.array_equal(kernel(wrong), kernel(whole))


def test_a_stop_during_the_first_compilation_runs_no_step(tmp_path, monkeypatch):
  events = []
  make = steps_lib.make_train_step

  class Spy:
    """The jitted step, noting when it compiles and runs."""

    def __init__(self, *args):
      self.jitted = make(*args)

    def lower(self, *args):
      lowered = self.jitted.lower(*args)
      events.append("compiled")
      return lowered

    def __call__(self, *args):
      events.append("step")
      return self.jitted(*args)
  monkeypatch.setattr(steps_lib, "make_train_step", Spy)

  def should_stop(step):
    events.append(f"check {step}")
    return True  # a signal arrived while the first step compiled
  with pytest.raises(stage_lib.StageInterrupted) as stopped:
    stage_lib.run_stage(
        _plan(tmp_path), models.create_model("tiny", 2), _evals(tmp_path),
        make_shardings(), MetricWriter(str(tmp_path / "off"), enabled=False),
        str(tmp_path / "cut"), OPTIONS, should_stop=should_stop)
  assert stopped.value.step == 0
  assert events == ["compiled", "check 0"]


def test_a_damaged_stage_result_is_rebuilt_from_the_checkpoints(tmp_path):
  first, _ = _run(tmp_path, _plan(tmp_path, epochs=1))
  path = tmp_path / "train" / stage_lib.RESULT_FILE
  path.write_text('{"best_epoch": 1, "metr')  # torn
  again, _ = _run(tmp_path, _plan(tmp_path, epochs=1))
  assert again.metrics == first.metrics and again.history == first.history
  assert (tmp_path / "train" / (stage_lib.RESULT_FILE + ".damaged")).exists()


def test_stages_alike_share_one_jitted_step_and_others_get_their_own(
    tmp_path, monkeypatch):
  """Runs of an in-process sweep compile a step once per setting."""
  made = []
  make = steps_lib.make_train_step

  def spy(*args):
    made.append(args)
    return make(*args)
  monkeypatch.setattr(steps_lib, "make_train_step", spy)
  plan = _plan(tmp_path, epochs=1)
  first, _ = _run(tmp_path, plan, folder="a")
  again, _ = _run(tmp_path, plan, folder="b")
  # The seed lives in the state, not in the step.
  _run(tmp_path, dataclasses.replace(plan, seed=1), folder="c")
  assert len(made) == 1
  assert again.history == first.history
  _run(tmp_path, dataclasses.replace(plan, lr=1e-2), folder="d")
  _run(tmp_path, dataclasses.replace(plan, freeze_bn=True), folder="e")
  assert len(made) == 3


def test_a_small_evaluation_set_is_padded_to_8_rows_per_device_only():
  shardings = make_shardings()
  per = 8 * shardings.num_devices
  assert stage_lib._eval_batch(140, 512 * per, shardings) == -(-140 // per) * per  # pylint: disable=protected-access
  assert stage_lib._eval_batch(10_000, 512 * per, shardings) == 512 * per  # pylint: disable=protected-access
