"""Protects the input pipeline: decoding, orders, resumption, hosts, eval masks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from ffr_jax.data import image_cache
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


@pytest.mark.parametrize("sampler", ["shuffle", "balanced"])
def test_resume_mid_epoch_gives_the_same_batches(examples, sampler):
  loader = pipeline.make_train_loader(examples, SCHEME, _cfg(flip=True), 4, 3,
                                      sampler=sampler)
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


# A strongly imbalanced toy set: group sizes 900, 90, 9, 1 (images 2x2).
IMBALANCED_SIZES = (900, 90, 9, 1)
# The 99.9% quantile of chi-square with 3 degrees of freedom.
CHI2_3DOF_999 = 16.27


def _imbalanced_source() -> pipeline.RecordSource:
  groups = np.repeat(np.arange(4), IMBALANCED_SIZES).astype(np.int32)
  n = len(groups)
  images = np.arange(n * 12, dtype=np.uint32).astype(np.uint8).reshape(
      n, 2, 2, 3)
  columns = pipeline.Columns(label=groups // 2, bias=groups % 2,
                             source=np.zeros(n, np.int32), group=groups)
  return _array_source(images, columns)


def _chi_square_vs_uniform(groups: np.ndarray, num_groups: int) -> float:
  counts = np.bincount(groups, minlength=num_groups)
  expected = len(groups) / num_groups
  return float(((counts - expected) ** 2 / expected).sum())


def _epoch_rows(loader: pipeline.TrainLoader, epochs: int) -> dict:
  batches = [b for e in range(epochs) for b in loader.epoch(e)]
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_balanced_loader_draws_groups_uniformly_on_imbalanced_data():
  source = _imbalanced_source()
  loader = pipeline.TrainLoader(source, 100, seed=0, sampler="balanced")
  seen = _epoch_rows(loader, 3)
  assert len(seen["index"]) == 3 * 1000  # the epoch length is the set's size
  assert ((seen["index"] >= 0) & (seen["index"] < len(source))).all()
  np.testing.assert_array_equal(seen["group"],
                                source.columns.group[seen["index"]])
  np.testing.assert_array_equal(seen["image"], source.cache[seen["index"]])
  assert _chi_square_vs_uniform(seen["group"], 4) < CHI2_3DOF_999
  # The single member of the smallest group is drawn about 750 times, so
  # balancing resamples with replacement.
  assert (seen["group"] == 3).sum() > 600


def test_shuffled_loader_is_not_balanced_on_the_same_data():
  loader = pipeline.TrainLoader(_imbalanced_source(), 100, seed=0)
  seen = _epoch_rows(loader, 1)
  assert _chi_square_vs_uniform(seen["group"], 4) > 100 * CHI2_3DOF_999


def test_balanced_draw_is_uniform_within_a_group_and_skips_empty_groups():
  # Group 0: 5 rows, group 1: empty, group 2: 2000 rows.
  groups = np.array([0] * 5 + [2] * 2000)
  rows = np.concatenate([pipeline.balanced_order(groups, 1, e)
                         for e in range(5)])
  assert set(groups[rows]) == {0, 2}
  small = np.bincount(rows[groups[rows] == 0], minlength=5)
  expected = small.sum() / 5
  # 4 degrees of freedom, 99.9% quantile 18.47.
  assert ((small - expected) ** 2 / expected).sum() < 18.47


def test_balanced_order_is_fixed_by_seed_and_epoch():
  groups = np.repeat(np.arange(3), (50, 5, 1))
  order = pipeline.balanced_order
  np.testing.assert_array_equal(order(groups, 4, 1), order(groups, 4, 1))
  assert not np.array_equal(order(groups, 4, 1), order(groups, 4, 2))
  assert not np.array_equal(order(groups, 4, 1), order(groups, 5, 1))
  with pytest.raises(ValueError, match="non-negative"):
    order(np.array([0, -1]), 0, 0)


_DEVICE_SCRIPT = """
import jax, numpy as np
from ffr_jax.data import pipeline
groups = np.repeat(np.arange(4), (300, 30, 3, 1))
print(jax.device_count(), ",".join(map(str, pipeline.balanced_order(groups, 7, 3))))
"""


def test_balanced_order_does_not_depend_on_the_device_count():
  # This process has one CPU device; the subprocess has four.
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 1
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  out = subprocess.run([sys.executable, "-c", _DEVICE_SCRIPT], env=env,
                       capture_output=True, text=True, check=True, timeout=120)
  count, rows = out.stdout.split()
  assert int(count) == 4
  groups = np.repeat(np.arange(4), (300, 30, 3, 1))
  np.testing.assert_array_equal(
      np.array(rows.split(","), np.int64), pipeline.balanced_order(groups, 7, 3))


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


def test_worker_processes_give_the_same_batches(examples):
  # Spawns 2 grain workers (a few seconds); the order must not change.
  make = lambda workers: pipeline.make_train_loader(
      examples, SCHEME, _cfg(num_workers=workers, flip=True), 4, 2)
  _assert_same(_collect(make(0).epoch(0)), _collect(make(2).epoch(0)))


def _array_source(images, columns):
  """A RecordSource over uint8 ``[N, S, S, 3]`` images held in memory."""
  return pipeline.RecordSource(
      keys=np.asarray([f"array:{i}" for i in range(len(images))], object),
      columns=columns, image_size=images.shape[1], cache=np.asarray(images))


def test_a_source_of_cached_arrays_serves_the_same_batches(examples):
  images = np.stack([images_lib.decode(p, SIZE) for p in examples.path])
  source = _array_source(
      images, pipeline.Columns.from_examples(examples, SCHEME))
  from_files = pipeline.make_eval_loader(examples, SCHEME, _cfg(), 8,
                                         process_index=0, process_count=1)
  from_memory = pipeline.make_eval_loader(source, None, _cfg(), 8,
                                          process_index=0, process_count=1)
  _assert_same(_collect(from_files), _collect(from_memory))


# ----------------------------------------------------------------------------
# The on-disk image cache.


def _copy_examples(examples: Examples, root: str) -> Examples:
  """The same images in a fresh folder (tests below modify files)."""
  paths = []
  for path in examples.path:
    target = os.path.join(root, os.path.basename(path))
    with open(path, "rb") as src, open(target, "wb") as dst:
      dst.write(src.read())
    paths.append(target)
  return Examples.from_lists(paths, examples.y, examples.b)


def test_disk_cached_epochs_equal_decoded_epochs_and_never_decode(
    examples, tmp_path, monkeypatch):
  cache_dir = str(tmp_path / "cache")
  for sampler in ("shuffle", "balanced"):
    make = lambda cache_dir: pipeline.make_train_loader(
        examples, SCHEME, _cfg(image_cache_dir=cache_dir, flip=True), 4, 2,
        sampler=sampler)
    decoded = _collect(make("").epoch(1))
    cached = make(cache_dir)
    assert isinstance(cached.source.cache, np.memmap)
    _assert_same(decoded, _collect(cached.epoch(1)))
  evaluated = lambda cfg: _collect(pipeline.make_eval_loader(
      examples, SCHEME, cfg, 8, process_index=0, process_count=1))
  _assert_same(evaluated(_cfg()), evaluated(_cfg(image_cache_dir=cache_dir)))
  # Once built, loaders (and all their epochs) never decode an image.
  def no_decoding(*args):
    raise AssertionError(f"decoded {args}")
  monkeypatch.setattr(images_lib, "decode", no_decoding)
  loader = pipeline.make_train_loader(
      examples, SCHEME, _cfg(image_cache_dir=cache_dir), 4, 0)
  for epoch in range(2):
    assert len(list(loader.epoch(epoch))) == loader.steps_per_epoch
  # In host memory too: copied from the disk cache, not decoded.
  in_memory = pipeline.make_train_loader(
      examples, SCHEME, _cfg(image_cache_dir=cache_dir, cache_images=True), 4, 0)
  assert not isinstance(in_memory.source.cache, np.memmap)
  np.testing.assert_array_equal(in_memory.source.cache, loader.source.cache)


def test_disk_cache_is_rebuilt_when_a_source_file_changes(examples, tmp_path):
  own = _copy_examples(examples, str(tmp_path))
  cache_dir = str(tmp_path / "cache")
  source = lambda: pipeline.examples_source(own, SCHEME, SIZE,
                                            cache_dir=cache_dir)
  before = np.array(source().cache)
  changed = own.path[3]
  pixels = np.full((12, 16, 3), 200, np.uint8)
  Image.fromarray(pixels).save(changed)
  st = os.stat(changed)
  os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  after = source().cache
  np.testing.assert_array_equal(after[3], images_lib.decode(changed, SIZE))
  assert not np.array_equal(after[3], before[3])
  np.testing.assert_array_equal(np.delete(after, 3, 0), np.delete(before, 3, 0))
  # The superseded cache of the same files was deleted.
  assert len(os.listdir(cache_dir)) == 1


def test_a_failed_build_leaves_no_cache(examples, tmp_path):
  cache_dir = str(tmp_path / "cache")
  paths = [str(p) for p in examples.path]

  def fail_midway(row: int) -> np.ndarray:
    if row == 10:
      raise OSError("disk on fire")
    return images_lib.decode(paths[row], SIZE)

  with pytest.raises(OSError, match="disk on fire"):
    image_cache.cached_images(paths, SIZE, cache_dir, fail_midway, 1)
  assert os.listdir(cache_dir) == []


_KILLED_BUILD = """
import sys, time
from ffr_jax.data import image_cache, images
paths, size, cache_dir = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3]
def slow(row):
  time.sleep(0.2)
  return images.decode(paths[row], size)
image_cache.cached_images(paths, size, cache_dir, slow, 1)
"""


def test_a_killed_build_leaves_no_cache_that_is_used(examples, tmp_path):
  cache_dir = str(tmp_path / "cache")
  paths = [str(p) for p in examples.path]
  proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, ",".join(paths),
                           str(SIZE), cache_dir])
  try:
    deadline = time.monotonic() + 60
    while not any(".partial-" in d for d in _listdir(cache_dir)):
      assert time.monotonic() < deadline and proc.poll() is None
      time.sleep(0.05)
    time.sleep(0.5)  # in the middle of decoding (22 images x 0.2 s)
  finally:
    proc.kill()
    proc.wait()
  fp = image_cache.fingerprint(paths, SIZE)
  folder = os.path.join(cache_dir, fp.folder_name)
  assert image_cache.open_cache(folder, fp) is None
  rebuilt = image_cache.cached_images(
      paths, SIZE, cache_dir, lambda row: images_lib.decode(paths[row], SIZE), 1)
  np.testing.assert_array_equal(
      rebuilt, np.stack([images_lib.decode(p, SIZE) for p in paths]))
  # The dead process's partial folder was cleaned up.
  assert os.listdir(cache_dir) == [fp.folder_name]


def _listdir(path: str) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []


def test_image_cache_dir_setting(monkeypatch, tmp_path):
  monkeypatch.setenv("FFR_JAX_CACHE", str(tmp_path))
  assert image_cache.resolve_dir("") is None
  assert image_cache.resolve_dir(image_cache.AUTO) == str(tmp_path / "images")
  assert image_cache.resolve_dir("~/x") == os.path.expanduser("~/x")
