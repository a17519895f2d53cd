"""Protects the TFDS path: prepare with tensor features (no TF), read, batch."""

from __future__ import annotations

import os
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

# pylint: disable=g-import-not-at-top,wrong-import-position
from ffr_jax.data import bias, pipeline, tfds_builders
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples, GroupScheme

SPEC = DatasetSpec(
    name="toy", class_names=("cat", "dog"), bias_names=("in", "out"),
    groups=((0, 0), (0, 1), (1, 0), (1, 1)), majority_bias=(0, 1))
SCHEME = GroupScheme(SPEC)
SIZE = 8


def _split(root: str, name: str, n: int, rng: np.random.Generator) -> Examples:
  paths, ys, bs = [], [], []
  for i in range(n):
    y, b = i % 2, (i // 2) % 2
    folder = os.path.join(root, name, str(y), str(b))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{i:03d}.png")
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(path)
    paths.append(path)
    ys.append(y)
    bs.append(b)
  return Examples.from_lists(paths, ys, bs).sorted()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A tiny dataset in manual_dir, prepared as tensor8 into data_dir."""
  manual = str(tmp_path_factory.mktemp("manual"))
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  rng = np.random.default_rng(0)
  splits = DatasetSplits(
      spec=SPEC, train=_split(manual, "train", 12, rng),
      val=_split(manual, "val", 5, rng), test=_split(manual, "test", 7, rng))
  calls = []

  def load(root: str, split_seed: int) -> DatasetSplits:
    calls.append((root, split_seed))
    return splits

  tfds_builders.prepare(
      "utk_face", manual, data_dir, config=tfds_builders.tensor_config(SIZE),
      load_splits=load, spec=SPEC)
  assert calls == [(manual, 0)]
  return splits, data_dir


def _cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      image_size=SIZE, flip=False, cache_images=False, num_workers=0))
  cfg.update(overrides)
  return cfg


def test_preparing_tensor_features_needs_no_tensorflow(prepared):
  del prepared
  assert "tensorflow" not in sys.modules


def test_reader_returns_the_labels_in_path_order(prepared):
  splits, data_dir = prepared
  read = tfds_builders.tfds_splits("ffr_utk_face/tensor8", data_dir, SPEC)
  for name in tfds_builders.SPLITS:
    want, got = splits.split(name), read.split(name)
    assert len(got) == len(want)
    np.testing.assert_array_equal(got.y, want.y)
    np.testing.assert_array_equal(got.b, want.b)
    np.testing.assert_array_equal(got.source, want.source)
    assert all(str(p).startswith("tfds://ffr_utk_face/tensor8/" + name)
               for p in got.path)
  # The bias ratio works on TFDS examples as on folders.
  biased = bias.bias_splits(read, 0.75, seed=0)
  assert len(biased.train) <= len(read.train)


@pytest.mark.parametrize("cache", [False, True])
def test_pipeline_batches_from_tfds_equal_batches_from_files(prepared, cache):
  splits, data_dir = prepared
  store = tfds_builders.TfdsImages(data_dir)
  from_tfds = tfds_builders.tfds_examples("ffr_utk_face/tensor8", data_dir,
                                          "train")
  for make in (
      lambda ex, **kw: pipeline.make_eval_loader(ex, SCHEME, _cfg(cache_images=cache),
                                                 8, process_index=0,
                                                 process_count=1, **kw),
      lambda ex, **kw: pipeline.make_train_loader(
          ex, SCHEME, _cfg(cache_images=cache, flip=True), 4, 3,
          sampler="balanced", process_index=0, process_count=1, **kw).epoch(1),
  ):
    tfds_batches = list(make(from_tfds, store=store))
    file_batches = list(make(splits.train))
    assert len(tfds_batches) == len(file_batches) > 0
    for a, b in zip(tfds_batches, file_batches):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_tfds_source_resizes_to_the_requested_size(prepared):
  _, data_dir = prepared
  source = tfds_builders.tfds_source("ffr_utk_face/tensor8", data_dir, "test",
                                     SCHEME, image_size=4)
  record = source[0]
  assert record["image"].shape == (4, 4, 3) and record["image"].dtype == np.uint8
  assert len(source) == 7


def test_bad_names_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="<builder>/<config>"):
    tfds_builders.tfds_examples("ffr_utk_face", str(tmp_path), "train")
  with pytest.raises(ValueError, match="No TFDS builder"):
    tfds_builders.prepare("mnist", str(tmp_path), str(tmp_path))


def test_worker_processes_read_tfds_records(prepared):
  # TfdsImages must pickle into grain workers and reopen the data there.
  _, data_dir = prepared
  examples = tfds_builders.tfds_examples("ffr_utk_face/tensor8", data_dir, "test")
  store = tfds_builders.TfdsImages(data_dir)
  make = lambda workers: list(pipeline.make_eval_loader(
      examples, SCHEME, _cfg(num_workers=workers), 4, store=store,
      process_index=0, process_count=1))
  for a, b in zip(make(0), make(1), strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_image_config_declares_an_encoded_image_feature(tmp_path):
  builder = tfds_builders.FfrUtkFace(data_dir=str(tmp_path), config="image",
                                     spec=SPEC)
  features = builder.info.features
  assert isinstance(features["image"], tfds.features.Image)
  assert features["y"].names == list(SPEC.class_names)


def test_waterbirds_builder_prepares_the_official_layout(tmp_path):
  import fake_trees
  from ffr_jax.data import waterbirds
  root = fake_trees.write_waterbirds_tree(str(tmp_path / "wb"))
  data_dir = str(tmp_path / "tfds")
  tfds_builders.prepare("waterbirds", root, data_dir,
                        config=tfds_builders.tensor_config(SIZE))
  read = tfds_builders.tfds_splits(f"ffr_waterbirds/tensor{SIZE}", data_dir,
                                   waterbirds.SPEC)
  want = waterbirds.load(root)
  for name in tfds_builders.SPLITS:
    np.testing.assert_array_equal(read.split(name).y, want.split(name).y)
    np.testing.assert_array_equal(read.split(name).b, want.split(name).b)
