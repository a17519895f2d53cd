"""Protects the ResNets and torchvision weight loading (ffr_jax.models).

The parity fixtures in tests/fixtures/ were written by
tests/make_torchvision_fixture.py with torch + torchvision; these tests read
them without torch.
"""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
import textwrap

import jax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from ffr_jax.models import MODELS, create_model
from ffr_jax.models.resnet import ResNet
from ffr_jax.registry import Registry
from ffr_jax.models.weights import (
    WeightsError,
    flax_to_torch_name,
    load_torchvision_weights,
    read_state_dict,
    torchvision_to_flax,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# name -> (stage_sizes, block) of the 1/16-width torchvision networks in the fixtures.
FIXTURE_ARCHS = {
    "resnet50_w16": ((3, 4, 6, 3), "bottleneck"),
    "resnet18_w16": ((2, 2, 2, 2), "basic"),
}


def _fixture(name: str) -> tuple[str, dict[str, np.ndarray]]:
  with np.load(os.path.join(FIXTURES, f"{name}.npz")) as f:
    return os.path.join(FIXTURES, f"{name}.safetensors"), dict(f)


def _fixture_model(name: str, num_classes: int = 10, **kwargs) -> ResNet:
  stage_sizes, block = FIXTURE_ARCHS[name]
  return ResNet(stage_sizes, block, num_classes=num_classes, width=1 / 16, **kwargs)


def _init(model: ResNet, size: int = 64) -> dict:
  return jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, 3)), train=False))(
      jax.random.key(0))


@pytest.mark.parametrize("name,embedding_dim", [("resnet50", 2048), ("resnet18", 512),
                                                ("tiny", 128)])
def test_registered_models_output_shapes(name, embedding_dim):
  model = create_model(name, num_classes=7, dtype="bfloat16")
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
  out, updates = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
  assert out.logits.shape == (2, 7) and out.logits.dtype == jnp.float32
  assert out.embedding.shape == (2, embedding_dim) and out.embedding.dtype == jnp.float32
  assert model.embedding_dim == embedding_dim
  # bfloat16 is the compute dtype only: parameters and statistics stay float32.
  assert {l.dtype for l in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])


def test_resnet50_matches_torchvision_parameter_count():
  model = create_model("resnet50", num_classes=1000)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  # torchvision.models.resnet50().parameters() sums to 25,557,032.
  assert sum(l.size for l in jax.tree.leaves(params)) == 25_557_032


def test_unknown_model_name_is_rejected():
  with pytest.raises(ValueError, match="resnet50"):
    create_model("resnet51", num_classes=2)
  assert set(MODELS) == {"resnet50", "resnet18", "tiny"}
  with pytest.raises(ValueError, match="conv1x1_as_matmul"):
    create_model("tiny", num_classes=2, depth=3)


class _DepthNet(nn.Module):
  """A stand-in model with its own option (``depth``) and none of ResNet's."""

  num_classes: int
  dtype: jnp.dtype = jnp.float32
  depth: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def test_model_from_config_passes_only_the_options_the_model_declares(monkeypatch):
  from ffr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from ffr_jax import models  # pylint: disable=g-import-not-at-top
  registry = Registry("model")
  registry.register("depthnet", models.ModelSpec(_DepthNet, {}, ("depth",)))
  monkeypatch.setattr(models, "MODELS", registry)
  config_model = config_lib.base_config().model  # has the ResNets' options too
  config_model.name, config_model.depth = "depthnet", 3
  model = models.model_from_config(config_model, num_classes=4)
  assert isinstance(model, _DepthNet) and model.depth == 3 and model.num_classes == 4
  del config_model["depth"]  # no default-filling for configs without the key
  with pytest.raises(KeyError, match="model.depth"):
    models.model_from_config(config_model, num_classes=4)


def test_model_from_config_builds_the_configured_resnet():
  from ffr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from ffr_jax import models  # pylint: disable=g-import-not-at-top
  config_model = config_lib.base_config().model
  config_model.name, config_model.dtype = "resnet18", "bfloat16"
  config_model.conv1x1_as_matmul, config_model.small_convs_as_matmul = False, True
  model = models.model_from_config(config_model, num_classes=3)
  assert (model.stage_sizes, model.block, model.num_classes) == ((2, 2, 2, 2), "basic", 3)
  assert model.dtype == jnp.bfloat16
  assert (model.conv1x1_as_matmul, model.small_convs_as_matmul) == (False, True)


@pytest.mark.parametrize("as_matmul", [False, True])
@pytest.mark.parametrize("name", sorted(FIXTURE_ARCHS))
def test_logits_match_torchvision(name, as_matmul):
  path, ref = _fixture(name)
  model = _fixture_model(name, conv1x1_as_matmul=as_matmul)
  variables = load_torchvision_weights(path, _init(model))
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, ref["x_nhwc"])
  np.testing.assert_allclose(out.logits, ref["logits"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out.embedding, ref["embedding"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("option", ["conv1x1_as_matmul", "small_convs_as_matmul"])
def test_matmul_forms_match_conv_in_training(option, monkeypatch):
  # Half width, so the last stage's 3x3 convolution reads 256 channels
  # (resnet.SMALL_CONV_MIN_CHANNELS); at 32 px its output is 1x1, so
  # small_convs_as_matmul takes its patches path there (and the conv path in
  # the earlier stages). The plain model is nn.Conv everywhere.
  from ffr_jax.models import resnet  # pylint: disable=g-import-not-at-top
  kwargs = dict(stage_sizes=(1, 1, 1, 1), block="basic", num_classes=5, width=1 / 2)
  assert stage_widths_last(kwargs["width"]) >= resnet.SMALL_CONV_MIN_CHANNELS
  conv, matmul = ResNet(**kwargs), ResNet(**{option: True}, **kwargs)
  variables = _init(conv, 32)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  calls = {"patches": 0, "matmul_1x1": 0}
  real_patches = jax.lax.conv_general_dilated_patches
  real_1x1 = resnet.Conv1x1Matmul.__call__

  def counting_patches(*args, **kw):
    calls["patches"] += 1
    return real_patches(*args, **kw)

  def counting_1x1(self, *args, **kw):
    calls["matmul_1x1"] += 1
    return real_1x1(self, *args, **kw)

  monkeypatch.setattr(jax.lax, "conv_general_dilated_patches", counting_patches)
  monkeypatch.setattr(resnet.Conv1x1Matmul, "__call__", counting_1x1)

  def run(model):
    def loss(params):
      out, upd = model.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
      return jnp.sum(out.logits ** 2), (out, upd)
    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

  grads_a, (out_a, upd_a) = run(conv)
  assert calls == {"patches": 0, "matmul_1x1": 0}  # the reference is the plain conv
  grads_b, (out_b, upd_b) = run(matmul)
  # The rewritten path was traced: otherwise this compares a conv with itself.
  taken = "patches" if option == "small_convs_as_matmul" else "matmul_1x1"
  assert calls[taken] > 0
  def close(a, b):
    # Relative to the leaf's scale: train-mode BN over few values amplifies
    # the (legitimate) summation-order differences between conv and matmul.
    a, b = np.asarray(a), np.asarray(b)
    assert np.abs(a - b).max() <= 2e-4 * max(np.abs(a).max(), 1.0)

  jax.tree.map(close, (out_a, upd_a, grads_a), (out_b, upd_b, grads_b))


def stage_widths_last(width: float) -> int:
  """Input channels of the last stage's second 3x3 convolution (basic block)."""
  from ffr_jax.models.resnet import stage_widths  # pylint: disable=g-import-not-at-top
  return stage_widths(width)[1][3]


def test_batch_norm_running_average_uses_torch_momentum():
  model = create_model("tiny", num_classes=3)
  variables = _init(model, 32)
  x = 3.0 + jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
  _, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
  # torch: running = 0.9 * running + 0.1 * batch_mean; the stem BN's input is
  # conv1(x), whose per-channel batch mean we recompute here.
  stem = jax.lax.conv_general_dilated(
      x, variables["params"]["conv1"]["kernel"], (2, 2), ((3, 3), (3, 3)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(upd["batch_stats"]["bn1"]["mean"],
                             0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_fresh_head_when_num_classes_differs():
  path, ref = _fixture("resnet18_w16")
  model = _fixture_model("resnet18_w16", num_classes=3)
  template = _init(model)
  variables = load_torchvision_weights(path, template)
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"],
                                template["params"]["fc"]["kernel"])
  out = model.apply(variables, ref["x_nhwc"], train=False)
  np.testing.assert_allclose(out.embedding, ref["embedding"], atol=1e-4, rtol=0)
  with pytest.raises(WeightsError, match="fc.weight"):
    load_torchvision_weights(path, template, keep_head=True)


def test_loading_errors_list_missing_unexpected_and_mismatched_keys():
  path, _ = _fixture("resnet18_w16")
  template = _init(_fixture_model("resnet18_w16"))
  state = read_state_dict(path)
  state.pop("layer2.0.downsample.1.running_var")
  state["layer9.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  state["layer1.0.conv2.weight"] = np.zeros((4, 4, 1, 1), np.float32)
  with pytest.raises(WeightsError) as e:
    torchvision_to_flax(state, template)
  message = str(e.value)
  for expected in ("1 missing keys", "layer2.0.downsample.1.running_var",
                   "1 unexpected keys", "layer9.0.conv1.weight",
                   "1 shape mismatches", "layer1.0.conv2.weight"):
    assert expected in message


def test_a_resnet50_checkpoint_does_not_fit_a_resnet18():
  path, _ = _fixture("resnet50_w16")
  with pytest.raises(WeightsError, match="unexpected keys"):
    load_torchvision_weights(path, _init(_fixture_model("resnet18_w16")))


def test_every_leaf_has_its_torchvision_name():
  path, _ = _fixture("resnet50_w16")
  state = load_file(path)
  template = _init(_fixture_model("resnet50_w16"))
  names = set()
  for col in ("params", "batch_stats"):
    for keys, _ in jax.tree_util.tree_flatten_with_path(template[col])[0]:
      names.add(flax_to_torch_name(col, tuple(k.key for k in keys)))
  assert names == {k for k in state if not k.endswith("num_batches_tracked")}


def test_pth_without_torch_says_how_to_convert(tmp_path, monkeypatch):
  pth = tmp_path / "resnet50.pth"
  pth.write_bytes(b"not read")
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
      raise ImportError("No module named 'torch'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_torch)
  with pytest.raises(WeightsError, match="safetensors") as e:
    read_state_dict(pth)
  assert "python -m ffr_jax.models.weights" in str(e.value)
  with pytest.raises(WeightsError, match="extension"):
    (tmp_path / "w.npz").write_bytes(b"")
    read_state_dict(tmp_path / "w.npz")


def test_batch_norm_statistics_are_global_over_a_sharded_batch():
  # A fresh process: the device count must be set before jax starts.
  script = textwrap.dedent("""
      import jax
      jax.config.update("jax_num_cpu_devices", 4)
      import jax.numpy as jnp, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from ffr_jax.models import create_model
      model = create_model("tiny", num_classes=3)
      v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
      # Each device's shard has a different mean: per-shard statistics would differ.
      x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3)) + jnp.arange(8.)[:, None, None, None]
      f = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
      ref_out, ref_upd = f(v, x)
      mesh = Mesh(np.array(jax.devices()), ("data",))
      xs = jax.device_put(x, NamedSharding(mesh, P("data")))
      vs = jax.device_put(v, NamedSharding(mesh, P()))
      out, upd = f(vs, xs)
      assert len(xs.sharding.device_set) == 4
      np.testing.assert_allclose(out.logits, ref_out.logits, atol=1e-5)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), upd, ref_upd)
      print("ok")
  """)
  repo = os.path.dirname(os.path.dirname(FIXTURES))
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_pth_is_read_and_converted_when_torch_is_installed(tmp_path):
  torch = pytest.importorskip("torch")
  path, _ = _fixture("resnet18_w16")
  state = load_file(path)
  pth = tmp_path / "w.pth"
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pth)
  from ffr_jax.models.weights import convert_pth_to_safetensors
  convert_pth_to_safetensors(pth, tmp_path / "w.safetensors")
  for loaded in (read_state_dict(pth), read_state_dict(tmp_path / "w.safetensors")):
    assert loaded.keys() == state.keys()
    for k, v in state.items():
      np.testing.assert_array_equal(loaded[k], v)


@pytest.mark.parametrize("size,strides", [(2, 1), (4, 2), (1, 1), (8, 1)])
def test_small_output_conv_matches_nn_conv(size, strides):
  from ffr_jax.models import resnet  # pylint: disable=g-import-not-at-top
  channels = resnet.SMALL_CONV_MIN_CHANNELS  # wide enough for the matmul path
  x = jax.random.normal(jax.random.key(0), (2, size, size, channels))
  conv = nn.Conv(8, (3, 3), strides=(strides, strides), padding=((1, 1), (1, 1)),
                 use_bias=False)
  small = resnet.ConvSmallAsMatmul(8, 3, strides)
  variables = conv.init(jax.random.key(1), x)
  assert (jax.tree.map(jnp.shape, variables)
          == jax.tree.map(jnp.shape, small.init(jax.random.key(1), x)))

  def run(module):
    f = lambda v, x: jnp.sum(module.apply(v, x) ** 2)
    return module.apply(variables, x), jax.grad(f, argnums=(0, 1))(variables, x)

  (out_a, grads_a), (out_b, grads_b) = run(conv), run(small)
  np.testing.assert_allclose(out_a, out_b, rtol=1e-4, atol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3),
               grads_a, grads_b)
