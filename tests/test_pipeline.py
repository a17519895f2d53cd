"""Protects the input pipeline: decoding, orders, resumption, hosts, eval masks."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from ffr_jax.data import images as images_lib
from ffr_jax.data import pipeline
from ffr_jax.data.types import DatasetSpec, Examples, GroupScheme

SPEC = DatasetSpec(
    name="toy", class_names=("cat", "dog"), bias_names=("in", "out"),
    groups=((0, 0), (0, 1), (1, 0), (1, 1)), majority_bias=(0, 1))
SCHEME = GroupScheme(SPEC)
SIZE = 8


def _write_examples(root: str, n: int) -> Examples:
  """``n`` 16x12 PNGs whose pixels encode their row, with cycling labels."""
  rng = np.random.default_rng(0)
  paths, ys, bs = [], [], []
  for i in range(n):
    path = os.path.join(root, f"{i:04d}.png")
    pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    paths.append(path)
    ys.append(i % 2)
    bs.append((i // 2) % 2)
  return Examples.from_lists(paths, ys, bs)


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Examples:
  return _write_examples(str(tmp_path_factory.mktemp("images")), 22)


def _cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      image_size=SIZE, flip=False, cache_images=False, num_workers=0))
  cfg.update(overrides)
  return cfg


def _collect(batches) -> dict[str, np.ndarray]:
  batches = list(batches)
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_decode_resizes_to_uint8_square(examples):
  image = images_lib.decode(examples.path[0], SIZE)
  assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
  record = pipeline.examples_source(examples, SCHEME, SIZE)[3]
  assert record["image"].shape == (SIZE, SIZE, 3)
  assert (record["label"], record["bias"], record["index"]) == (1, 1, 3)
  assert record["group"] == SPEC.group_index(1, 1)


def test_train_batches_have_the_documented_fields(examples):
  loader = pipeline.make_train_loader(examples, SCHEME, _cfg(), 4, seed=0)
  assert loader.steps_per_epoch == 22 // 4
  batches = list(loader.epoch(0))
  assert len(batches) == 5
  batch = batches[0]
  assert batch["image"].shape == (4, SIZE, SIZE, 3)
  assert batch["image"].dtype == np.uint8
  for key in ("label", "bias", "source", "group", "index"):
    assert batch[key].dtype == np.int32 and batch[key].shape == (4,)
  assert batch["mask"].all()
  # Each row's labels match its example, and an epoch has no repeats.
  index = np.concatenate([b["index"] for b in batches])
  assert len(set(index)) == 20
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(labels, examples.y[index])


def test_shuffling_is_seeded_and_changes_per_epoch(examples):
  make = lambda seed: pipeline.make_train_loader(examples, SCHEME, _cfg(), 4, seed)
  a, b, c = make(0), make(0), make(1)
  order = lambda loader, epoch: _collect(loader.epoch(epoch))["index"]
  np.testing.assert_array_equal(order(a, 0), order(b, 0))
  assert not np.array_equal(order(a, 0), order(a, 1))
  assert not np.array_equal(order(a, 0), order(c, 0))


def test_resume_mid_epoch_gives_the_same_batches(examples):
  loader = pipeline.make_train_loader(examples, SCHEME, _cfg(flip=True), 4, 3)
  full = list(loader.epoch(2))
  resumed = list(loader.epoch(2, start_step=3))
  assert len(resumed) == len(full) - 3
  for a, b in zip(full[3:], resumed):
    _assert_same(a, b)
  assert list(loader.epoch(2, start_step=loader.steps_per_epoch)) == []
  with pytest.raises(ValueError, match="start_step"):
    loader.epoch(2, start_step=loader.steps_per_epoch + 1)


def test_flip_is_deterministic_and_mirrors_the_image(examples):
  source = pipeline.examples_source(examples, SCHEME, SIZE)
  loader = pipeline.TrainLoader(source, 4, seed=5, flip=True)
  plain = pipeline.TrainLoader(source, 4, seed=5, flip=False)
  flipped, unflipped = _collect(loader.epoch(0)), _collect(plain.epoch(0))
  _assert_same(flipped, _collect(loader.epoch(0)))
  np.testing.assert_array_equal(flipped["index"], unflipped["index"])
  same = (flipped["image"] == unflipped["image"]).all(axis=(2, 3, 4))
  mirrored = (flipped["image"] == unflipped["image"][..., ::-1, :]).all(
      axis=(2, 3, 4))
  assert (same | mirrored).all() and mirrored.any() and same.any()


def test_balanced_sampler_equalises_group_frequencies():
  sizes = (1000, 100, 10)
  groups = np.repeat(np.arange(3), sizes)
  draws = np.concatenate(
      [groups[pipeline.balanced_indices(groups, seed=0, epoch=e)]
       for e in range(20)])
  freq = np.bincount(draws, minlength=3) / len(draws)
  # 22200 draws: the standard error of each share is about 0.003.
  np.testing.assert_allclose(freq, 1 / 3, atol=0.015)
  np.testing.assert_array_equal(
      pipeline.balanced_indices(groups, 4, 1),
      pipeline.balanced_indices(groups, 4, 1))
  # Empty groups (id 1 here) simply never occur.
  sparse = np.array([0, 0, 2, 2, 2, 2])
  drawn = sparse[pipeline.balanced_indices(sparse, 0, 0)]
  assert set(drawn) <= {0, 2}


def test_balanced_loader_uses_the_sampler(examples):
  loader = pipeline.make_train_loader(examples, SCHEME, _cfg(), 4, seed=1,
                                      sampler="balanced")
  index = _collect(loader.epoch(0))["index"].reshape(-1)
  expected = pipeline.balanced_indices(loader.source.columns.group, 1, 0)[:20]
  np.testing.assert_array_equal(index, expected)


def test_two_hosts_split_each_global_batch(examples):
  single = pipeline.make_train_loader(examples, SCHEME, _cfg(flip=True), 6, 7,
                                      process_index=0, process_count=1)
  hosts = [pipeline.make_train_loader(examples, SCHEME, _cfg(flip=True), 6, 7,
                                      process_index=p, process_count=2)
           for p in range(2)]
  full = _collect(single.epoch(1))
  parts = [_collect(h.epoch(1)) for h in hosts]
  assert parts[0]["image"].shape[1] == 3
  for key in full:
    joined = np.concatenate([parts[0][key], parts[1][key]], axis=1)
    np.testing.assert_array_equal(joined, full[key], err_msg=key)
  assert not set(parts[0]["index"].ravel()) & set(parts[1]["index"].ravel())
  with pytest.raises(ValueError, match="multiple of the number of hosts"):
    pipeline.make_train_loader(examples, SCHEME, _cfg(), 5, 0,
                               process_index=0, process_count=2)


@pytest.mark.parametrize("cache", [False, True])
def test_eval_covers_every_example_once_with_a_mask(examples, cache):
  seen = []
  for p in range(2):
    loader = pipeline.make_eval_loader(examples, SCHEME, _cfg(cache_images=cache),
                                       8, process_index=p, process_count=2)
    assert loader.num_batches == 3
    batches = list(loader)
    assert len(batches) == 3
    for batch in batches:
      assert batch["image"].shape == (4, SIZE, SIZE, 3)
      assert not batch["image"][~batch["mask"]].any()
      assert (batch["index"][~batch["mask"]] == -1).all()
      seen.append(batch["index"][batch["mask"]])
  seen = np.concatenate(seen)
  np.testing.assert_array_equal(np.sort(seen), np.arange(len(examples)))


def test_eval_order_is_the_example_order(examples):
  loader = pipeline.make_eval_loader(examples, SCHEME, _cfg(), 8,
                                     process_index=0, process_count=1)
  batches = list(loader)
  index = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(index[:22], np.arange(22))
  assert batches[-1]["mask"].sum() == 22 - 16
  first = images_lib.decode(examples.path[0], SIZE)
  np.testing.assert_array_equal(batches[0]["image"][0], first)


def test_cache_and_no_cache_give_identical_batches(examples):
  for sampler in ("shuffle", "balanced"):
    make = lambda cache: pipeline.make_train_loader(
        examples, SCHEME, _cfg(cache_images=cache, flip=True), 4, 2,
        sampler=sampler)
    _assert_same(_collect(make(False).epoch(1)), _collect(make(True).epoch(1)))


def test_normalize_matches_numpy():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  expected = (images / 255.0 - np.array(images_lib.IMAGENET_MEAN)) / np.array(
      images_lib.IMAGENET_STD)
  out = np.asarray(pipeline.normalize(images))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_errors_name_what_was_expected(examples):
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.make_train_loader(examples, SCHEME, _cfg(), 64, 0)
  with pytest.raises(ValueError, match="sampler"):
    pipeline.make_train_loader(examples, SCHEME, _cfg(), 4, 0, sampler="x")
  source = pipeline.RecordSource(
      keys=np.array(["tfds://x/train/a.png"], object),
      columns=pipeline.Columns.from_examples(examples.take(np.arange(1)), SCHEME),
      image_size=SIZE)
  with pytest.raises(ValueError, match="TfdsImages"):
    source[0]


def test_worker_processes_give_the_same_batches(examples):
  # Spawns 2 grain workers (a few seconds); the order must not change.
  make = lambda workers: pipeline.make_train_loader(
      examples, SCHEME, _cfg(num_workers=workers, flip=True), 4, 2)
  _assert_same(_collect(make(0).epoch(0)), _collect(make(2).epoch(0)))


def test_array_source_serves_images_from_memory(examples):
  images = np.stack([images_lib.decode(p, SIZE) for p in examples.path])
  source = pipeline.array_source(
      images, pipeline.Columns.from_examples(examples, SCHEME))
  from_files = pipeline.make_eval_loader(examples, SCHEME, _cfg(), 8,
                                         process_index=0, process_count=1)
  from_memory = pipeline.make_eval_loader(source, None, _cfg(), 8,
                                          process_index=0, process_count=1)
  _assert_same(_collect(from_files), _collect(from_memory))
  with pytest.raises(ValueError, match="uint8 images"):
    pipeline.array_source(images.astype(np.float32), source.columns)
