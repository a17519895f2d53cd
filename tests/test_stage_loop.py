"""The stage loop: epochs, best-epoch selection, result reuse, NaN stop."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from ffr_jax import config as config_lib
from ffr_jax import models
from ffr_jax.data import pipeline
from ffr_jax.data.types import DatasetSpec, Examples, GroupScheme
from ffr_jax.reporting.writer import MetricWriter
from ffr_jax.training import loop
from ffr_jax.training.mesh import make_shardings
from ffr_jax.training.methods import Method, get_method
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


def _cfg():
  cfg = config_lib.base_config()
  cfg.data.image_size = 16
  cfg.data.cache_images = True
  cfg.train.batch_size = 8
  cfg.train.eval_batch_size = 16
  cfg.train.log_every = 2
  return cfg


def _stage(tmp_path, method, epochs=2, name="train"):
  scheme = GroupScheme(SPEC)
  return loop.StageSpec(
      name=name, stage_dir=str(tmp_path / name),
      train=_examples(str(tmp_path), 6, "train"), scheme=scheme,
      method=method, epochs=epochs, lr=1e-3, freeze_bn=False, seed=0)


def _evals(tmp_path):
  scheme = GroupScheme(SPEC)
  return [loop.EvalSet("val", _examples(str(tmp_path), 3, "val"), scheme),
          loop.EvalSet("test", _examples(str(tmp_path), 3, "test"), scheme)]


def test_stage_trains_selects_and_is_never_recomputed(tmp_path, monkeypatch):
  model = models.create_model("tiny", 2)
  spec = _stage(tmp_path, get_method("erm"))
  writer = MetricWriter(str(tmp_path / "logs"))
  result, best = loop.run_stage(spec, model, _cfg(), _evals(tmp_path),
                                make_shardings(), writer)
  writer.close()
  assert len(result.history) == 2
  vals = [h["val"]["worst_group_acc"] for h in result.history]
  assert result.best_epoch == 1 + int(np.argmax(vals))
  assert result.metrics["test"] == result.history[result.best_epoch - 1]["test"]
  saved = json.load(open(tmp_path / "train" / loop.RESULT_FILE))
  assert saved["best_epoch"] == result.best_epoch
  lines = [json.loads(l) for l in open(tmp_path / "logs" / "metrics.jsonl")]
  assert any("val/worst_group_acc" in l for l in lines)
  assert any("train/loss" in l for l in lines)

  # A finished stage is reused, not retrained: building a loader would fail.
  def no_loader(*a, **k):
    raise AssertionError("a finished stage must not be retrained")
  monkeypatch.setattr(pipeline, "make_train_loader", no_loader)
  again, best_again = loop.run_stage(spec, model, _cfg(), _evals(tmp_path),
                                     make_shardings(), MetricWriter(
                                         str(tmp_path / "l2"), enabled=False))
  assert again.best_epoch == result.best_epoch
  np.testing.assert_array_equal(best["params"]["fc"]["kernel"],
                                best_again["params"]["fc"]["kernel"])


def test_nan_loss_stops_with_a_clear_message(tmp_path):
  def nan_loss(config, group_sizes):
    del config, group_sizes
    return lambda per_example, group, q: (jnp.mean(per_example) * jnp.nan, q)

  spec = _stage(tmp_path, Method("nan", "shuffle", nan_loss), epochs=1)
  with pytest.raises(loop.NonFiniteLossError, match="NaN or inf at step 1"):
    loop.run_stage(spec, models.create_model("tiny", 2), _cfg(),
                   _evals(tmp_path), make_shardings(),
                   MetricWriter(str(tmp_path / "logs"), enabled=False))
  # Nothing was checkpointed and no result written.
  assert not (tmp_path / "train" / loop.RESULT_FILE).exists()
  ckpts = tmp_path / "train" / "checkpoints"
  assert not ckpts.exists() or not [p for p in ckpts.iterdir()
                                    if p.name.isdigit()]


def test_a_stage_of_another_experiment_is_refused(tmp_path):
  import dataclasses  # pylint: disable=g-import-not-at-top
  model = models.create_model("tiny", 2)
  spec = _stage(tmp_path, get_method("erm"), epochs=1)
  off = MetricWriter(str(tmp_path / "logs"), enabled=False)
  loop.run_stage(spec, model, _cfg(), _evals(tmp_path), make_shardings(), off)
  other = dataclasses.replace(spec, lr=1e-2)
  with pytest.raises(loop.StageMismatchError, match=r"lr: 0.001 -> 0.01"):
    loop.run_stage(other, model, _cfg(), _evals(tmp_path), make_shardings(),
                   off)
