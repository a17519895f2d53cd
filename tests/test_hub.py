"""Protects hub references (ffr_jax.hub) and hub ImageNet weights, offline.

A fake huggingface_hub cache in its on-disk layout
(``models--ORG--NAME/{refs/<revision>, snapshots/<commit>/...}``) is filled
from the tiny fixtures; ``HF_HUB_CACHE`` points at it and ``HF_HUB_OFFLINE=1``
forbids the network, so huggingface_hub resolves the files exactly as it does
after a real download. Stable Diffusion from the hub is in
tests/test_stable_diffusion.py (it needs the tiny pipeline).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffr_jax import hub
from ffr_jax.models.resnet import ResNet
from ffr_jax.models.weights import (
    WeightsError,
    load_torchvision_weights,
    timm_to_torchvision,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
RESNET50_W16 = os.path.join(FIXTURES, "resnet50_w16.safetensors")
REPO = "timm/resnet50_w16.tv_in1k"


def fake_hub_cache(cache: str, repo_id: str, files: dict[str, str],
                   revisions: tuple[str, ...] = ("main",)) -> str:
  """Writes ``repo_id`` into a huggingface_hub cache at ``cache``.

  Args:
    cache: the ``HF_HUB_CACHE`` folder.
    repo_id: ``ORG/NAME``.
    files: path in the repository -> local file or folder to copy there.
    revisions: refs (branches) that point at the one snapshot.

  Returns:
    The snapshot folder.
  """
  commit = hashlib.sha1(repr((repo_id, sorted(files))).encode()).hexdigest()
  repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
  snapshot = os.path.join(repo, "snapshots", commit)
  for dest, src in files.items():
    target = os.path.join(snapshot, dest)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.isdir(src):
      shutil.copytree(src, target, dirs_exist_ok=True)
    else:
      shutil.copyfile(src, target)
  os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
  for revision in revisions:
    with open(os.path.join(repo, "refs", revision), "w") as f:
      f.write(commit)
  return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> str:
  """An empty hub cache that is the only source of files (no network)."""
  cache = str(tmp_path / "hub")
  os.makedirs(cache)
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
  monkeypatch.setenv("HF_HUB_CACHE", cache)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  return cache


@pytest.fixture
def no_torch(monkeypatch):
  """``import torch`` fails, as on a machine without it."""
  monkeypatch.setitem(sys.modules, "torch", None)


def _template() -> dict:
  model = ResNet((3, 4, 6, 3), "bottleneck", num_classes=10, width=1 / 16)
  return jax.jit(lambda k: model.init(k, jnp.zeros((1, 64, 64, 3)), train=False))(
      jax.random.key(0))


def _assert_same(a: dict, b: dict) -> None:
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_parse_hub_ref_with_and_without_revision():
  assert hub.parse_hub_ref("hf-hub:timm/resnet50.tv_in1k") == hub.HubRef(
      "timm/resnet50.tv_in1k", "main")
  assert hub.parse_hub_ref("hf-hub:timm/resnet50.tv_in1k@abc").revision == "abc"
  with pytest.raises(ValueError, match="ORG/NAME"):
    hub.parse_hub_ref("hf-hub:resnet50")


def test_hub_weights_equal_the_local_file_without_torch(offline_cache, no_torch):
  fake_hub_cache(offline_cache, REPO, {"model.safetensors": RESNET50_W16})
  template = _template()
  local = load_torchvision_weights(RESNET50_W16, template)
  _assert_same(load_torchvision_weights(f"hf-hub:{REPO}", template), local)
  # A named revision resolves through refs/<revision>.
  fake_hub_cache(offline_cache, REPO, {"model.safetensors": RESNET50_W16},
                 revisions=("v1",))
  _assert_same(load_torchvision_weights(f"hf-hub:{REPO}@v1", template), local)


def test_uncached_hub_weights_are_one_line_naming_id_revision_cache(offline_cache):
  fake_hub_cache(offline_cache, REPO, {"model.safetensors": RESNET50_W16})
  for ref, revision in ((f"hf-hub:{REPO}@nope", "nope"),
                        ("hf-hub:timm/not-there", "main")):
    with pytest.raises(FileNotFoundError) as e:
      load_torchvision_weights(ref, {})
    message = str(e.value)
    assert "\n" not in message
    for expected in (ref[len("hf-hub:"):].split("@")[0], repr(revision), offline_cache,
                     "HF_HUB_OFFLINE=0"):
      assert expected in message, (expected, message)


def test_timm_names_of_another_variant_are_refused():
  state = {"conv1.weight": np.zeros(1), "layer1.0.downsample.2.weight": np.zeros(1),
           "conv1.0.weight": np.zeros(1)}
  with pytest.raises(WeightsError, match="2 parameters") as e:
    timm_to_torchvision(state, source="hf-hub:timm/resnet50d.gluon_in1k")
  assert "conv1.0.weight" in str(e.value) and "resnet50.tv_in1k" in str(e.value)
  assert timm_to_torchvision({"layer4.2.bn3.running_var": 1}) == {
      "layer4.2.bn3.running_var": 1}


def test_local_paths_are_not_hub_ids(tmp_path):
  assert hub.looks_like_repo_id("CompVis/stable-diffusion-v1-4")
  (tmp_path / "org" / "name").mkdir(parents=True)
  assert not hub.looks_like_repo_id(str(tmp_path / "org" / "name"))
  assert not hub.looks_like_repo_id("/models/sd")


def _fake_sd_files(tmp_path) -> dict[str, str]:
  """A diffusers layout with placeholder files (enough to resolve, not to load)."""
  src = tmp_path / "sd_src"
  for component, weights in (("tokenizer", "vocab.json"), ("scheduler", "scheduler_config.json"),
                             ("text_encoder", "flax_model.msgpack"),
                             ("unet", "diffusion_flax_model.msgpack"),
                             ("vae", "diffusion_flax_model.msgpack")):
    (src / component).mkdir(parents=True)
    (src / component / weights).write_text("{}")
  (src / "model_index.json").write_text("{}")
  return {name: str(src / name) for name in os.listdir(src)}


def test_sd_hub_id_resolves_to_its_cached_revision(offline_cache, tmp_path):
  from ffr_jax.generation.stable_diffusion import resolve_model_dir
  snapshot = fake_hub_cache(offline_cache, "CompVis/tiny-sd", _fake_sd_files(tmp_path),
                            revisions=("flax",))
  assert resolve_model_dir("CompVis/tiny-sd", "flax") == snapshot
  assert resolve_model_dir(snapshot) == snapshot  # a local folder is itself
  with pytest.raises(ValueError, match="local folder"):
    resolve_model_dir(snapshot, "flax")
  with pytest.raises(FileNotFoundError) as e:
    resolve_model_dir("CompVis/tiny-sd", "bf16")  # the revision was never cached
  message = str(e.value)
  assert "\n" not in message
  for expected in ("'CompVis/tiny-sd'", "'bf16'", offline_cache, "HF_HUB_OFFLINE=0"):
    assert expected in message, (expected, message)
  with pytest.raises(FileNotFoundError, match="neither a local diffusers folder"):
    resolve_model_dir(str(tmp_path / "missing_folder"))
