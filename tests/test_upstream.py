"""The benchmark's upstream pretraining: its dataset, and weights that load as torchvision's."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from ffr_jax import models
from ffr_jax.demo import render, upstream
from ffr_jax.models import weights as weights_lib
from ffr_jax.training import run as run_lib
from ffr_jax.training import state as state_lib
from ffr_jax.data.pipeline import normalize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_upstream_render_is_deterministic_and_per_image():
  labels, indices = np.array([0, 57, 99, 57]), np.array([0, 3, 1, 4])
  a = upstream.render_upstream(labels, indices, 32, seed=0)
  assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, upstream.render_upstream(labels, indices, 32, seed=0))
  # Image i depends on its own (class, index) only, not on the batch.
  np.testing.assert_array_equal(a[1], upstream.render_upstream([57], [3], 32, seed=0)[0])
  assert not np.array_equal(a[1], a[3])
  assert not np.array_equal(a, upstream.render_upstream(labels, indices, 32, seed=1))
  held_out = upstream.render_upstream(labels, indices, 32, seed=0, salt=upstream.TEST_SALT)
  assert not any(np.array_equal(x, h) for x, h in zip(a, held_out))


def test_upstream_has_100_classes_disjoint_from_the_benchmark():
  assert upstream.MAX_CLASSES >= upstream.DEFAULT_CLASSES == 100
  assert len(set(upstream.CLASS_NAMES)) == upstream.MAX_CLASSES
  _, labels = upstream.split(100, 1, 16, 0, upstream.TRAIN_SALT)
  assert sorted(set(labels.tolist())) == list(range(100))
  words = {w for name in upstream.CLASS_NAMES for w in name.replace("/", " ").split()}
  benchmark = {w for name in render.CLASS_NAMES + render.BIAS_NAMES for w in name.split()}
  assert not words & benchmark
  with pytest.raises(ValueError, match="classes"):
    upstream.split(upstream.MAX_CLASSES + 1, 1, 32, 0, upstream.TRAIN_SALT)


def test_every_tiny_leaf_has_a_torchvision_name_and_round_trips():
  model = models.create_model("tiny", 7)
  variables = jax.device_get(jax.jit(lambda: state_lib.init_variables(model, 32, 3))())
  state = upstream.to_torchvision_state(variables)
  assert "conv1.weight" in state and "layer1.0.bn1.running_var" in state
  assert state["fc.weight"].shape[0] == 7  # torchvision's (out, in)
  loaded = weights_lib.torchvision_to_flax(state, variables)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _demo_config(pretrained: str | None):
  spec = importlib.util.spec_from_file_location(
      "demo_config", os.path.join(ROOT, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(None)
  if pretrained is not None:
    config.model.pretrained = pretrained
  return config


def _outputs(model, variables, x):
  out = model.apply(variables, normalize(x), train=False)
  return out.logits, out.embedding


def _perturbed(variables, seed: int):
  """``variables`` with every leaf moved (batch stats too), as training would."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: np.asarray(a) + np.abs(rng.normal(0.1, 0.05, np.shape(a))).astype(np.float32),
      variables)


def test_saved_weights_load_through_model_pretrained_with_the_same_outputs(tmp_path):
  up_model = models.create_model("tiny", 5)
  trained = _perturbed(jax.device_get(jax.jit(
      lambda: state_lib.init_variables(up_model, 32, 1))()), 0)
  out = str(tmp_path / "up.safetensors")
  upstream.save_torchvision(trained, out)
  x = upstream.render_upstream([0, 1, 2], [0, 0, 0], 32)
  logits, emb = _outputs(up_model, trained, x)
  # Same classes as upstream: the head's shape matches, so all of it loads.
  template = jax.device_get(jax.jit(lambda: state_lib.init_variables(up_model, 32, 9))())
  same = weights_lib.load_torchvision_weights(out, template)
  np.testing.assert_allclose(np.asarray(_outputs(up_model, same, x)[0]),
                             np.asarray(logits), rtol=1e-5, atol=1e-5)
  # The path users take: model.pretrained in the demo config, 4 classes.
  config = _demo_config(out)
  model = models.model_from_config(config.model, 4)
  variables, init = run_lib.pretrained_variables(config, model)
  assert init.startswith("pretrained:")
  logits4, emb4 = _outputs(model, variables, x)
  np.testing.assert_allclose(np.asarray(emb4), np.asarray(emb), rtol=1e-5, atol=1e-5)
  assert logits4.shape == (3, 4)  # the 5-way head is replaced


@pytest.mark.slow
def test_pretrain_command_writes_weights_and_record(tmp_path):
  from ffr_jax.benchmark import main  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / "up.safetensors")
  assert main(["pretrain", f"--out={out}", "--classes=5", "--per_class=4",
               "--epochs=1"]) == 0
  with open(upstream.metadata_path(out), encoding="utf-8") as f:
    record = json.load(f)
  assert record["classes"] == 5 and 0 <= record["held_out_accuracy"] <= 1
  assert record["weights_bytes"] == os.path.getsize(out)
  config = _demo_config(out)
  variables, _ = run_lib.pretrained_variables(
      config, models.model_from_config(config.model, 4))
  stem = weights_lib.read_state_dict(out)["conv1.weight"].transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(np.asarray(variables["params"]["conv1"]["kernel"]), stem)


def test_save_refuses_a_name_model_pretrained_cannot_read(tmp_path):
  with pytest.raises(ValueError, match="safetensors"):
    upstream.save_torchvision({"params": {}}, str(tmp_path / "w.pth"))


def test_shipped_upstream_weights_load_and_reach_their_recorded_accuracy():
  """The weights every demo mode starts from: the file in the package, its
  record beside it, and its held-out accuracy reproduced from the file."""
  from ffr_jax import demo  # pylint: disable=import-outside-toplevel
  config = _demo_config(None)  # the config file's own default
  assert config.model.pretrained == demo.UPSTREAM_WEIGHTS
  with open(upstream.metadata_path(demo.UPSTREAM_WEIGHTS), encoding="utf-8") as f:
    record = json.load(f)
  assert record["held_out_accuracy"] >= 0.10  # the calibration protocol's gate
  assert record["weights_bytes"] == os.path.getsize(demo.UPSTREAM_WEIGHTS)
  # Upstream's own 100-way head loads whole; the accuracy is the record's.
  model = models.create_model(record["model"], record["classes"])
  template = jax.device_get(jax.jit(lambda: state_lib.init_variables(
      model, record["image_size"], 0))())
  variables = weights_lib.load_torchvision_weights(demo.UPSTREAM_WEIGHTS, template)
  x, y = upstream.split(record["classes"], record["held_out_per_class"],
                        record["image_size"], record["seed"], upstream.TEST_SALT)
  logits, _ = _outputs(model, variables, x)
  accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == y))
  assert accuracy == pytest.approx(record["held_out_accuracy"], abs=0.005)
  # The demo config starts every mode from it (a fresh 4-way head).
  variables4, init = run_lib.pretrained_variables(
      config, models.model_from_config(config.model, 4))
  assert init.startswith("pretrained:")
  np.testing.assert_array_equal(np.asarray(variables4["params"]["conv1"]["kernel"]),
                                np.asarray(variables["params"]["conv1"]["kernel"]))
