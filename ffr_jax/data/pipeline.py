"""The grain input pipeline: from :class:`Examples` to batches of numpy arrays.

Each epoch's global order is a pure function of ``(seed, epoch)`` (a
permutation, or group-balanced draws for Resampling), cut into global batches
of ``B`` (the partial last one dropped); host ``p`` of ``P`` takes rows
``p*B/P:(p+1)*B/P`` of each, so resuming at ``(epoch, step)`` reproduces an
uninterrupted run. Images come from their files, the on-disk cache
(:mod:`image_cache`) and/or host memory, and stay uint8 until
:func:`normalize` inside the jitted step (4x less transfer than float32).
Evaluation pads the last batch with ``mask=False`` so metrics are exact.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import itertools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from ffr_jax.data import image_cache
from ffr_jax.data import images as images_lib
from ffr_jax.data.types import Examples, GroupScheme

Batch = dict[str, np.ndarray]

SAMPLERS = ("shuffle", "balanced")
# Refuse to cache more than this in host memory; the error names the switch.
CACHE_LIMIT_BYTES = 32 << 30
# Independent random streams drawn from (seed, epoch, stream).
_STREAM_SHUFFLE = 0
_STREAM_BALANCED = 1
_STREAM_FLIP = 2


@dataclasses.dataclass(frozen=True)
class Columns:
  """The integer labels of every row, int32 numpy arrays of equal length."""

  label: np.ndarray
  bias: np.ndarray
  source: np.ndarray
  group: np.ndarray

  @classmethod
  def from_examples(cls, examples: Examples, scheme: GroupScheme) -> Columns:
    return cls(
        label=np.asarray(examples.y, np.int32),
        bias=np.asarray(examples.b, np.int32),
        source=np.asarray(examples.source, np.int32),
        group=scheme.ids(examples))

  def rows(self, index: np.ndarray) -> Batch:
    """Label fields of ``index`` (``-1`` marks padding: zeros, index -1)."""
    real = index >= 0
    safe = np.where(real, index, 0)
    out = {name: np.where(real, getattr(self, name)[safe], 0).astype(np.int32)
           for name in ("label", "bias", "source", "group")}
    out["index"] = np.where(real, index, -1).astype(np.int32)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class RecordSource:
  """A grain ``RandomAccessDataSource`` over a table of examples; with a
  ``cache`` (uint8 ``[N, S, S, 3]``) no file is read."""

  keys: np.ndarray
  columns: Columns
  image_size: int
  cache: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.keys)

  def image(self, row: int) -> np.ndarray:
    if self.cache is not None:
      return self.cache[row]
    return images_lib.decode(str(self.keys[row]), self.image_size)

  def __getitem__(self, row: int) -> dict[str, Any]:
    row = int(row)
    fields = self.columns.rows(np.asarray([row]))
    record = {name: value[0] for name, value in fields.items()}
    record["image"] = self.image(row)
    return record

  def cached(self) -> RecordSource:
    """A copy serving every image from memory (40k images at 224 px are 6 GB)."""
    if isinstance(self.cache, np.memmap):
      _check_memory_limit(len(self), self.image_size)
      return dataclasses.replace(self, cache=np.array(self.cache))
    if self.cache is not None:
      return self
    n, s = len(self), self.image_size
    _check_memory_limit(n, s)
    cache = np.empty((n, s, s, 3), np.uint8)

    def fill(row: int) -> None:
      cache[row] = images_lib.decode(str(self.keys[row]), s)

    with concurrent.futures.ThreadPoolExecutor(_threads(None)) as pool:
      list(pool.map(fill, range(n), chunksize=64))
    return dataclasses.replace(self, cache=cache)

  def disk_cached(self, cache_dir: str) -> RecordSource:
    """A copy reading images from :mod:`image_cache`."""
    if self.cache is not None:
      return self
    images = image_cache.cached_images(
        [str(k) for k in self.keys], self.image_size, cache_dir, self.image,
        _threads(None))
    return dataclasses.replace(self, cache=images)

  def gather(self, rows: np.ndarray, flips: np.ndarray) -> Batch:
    """A whole batch from the cache by fancy indexing (no per-row Python).

    Flipped rows are reversed as 3-byte pixels (a ``uint8`` reversal moves
    single bytes, about 2x slower); numpy releases the GIL for both.
    """
    assert self.cache is not None
    real = rows >= 0
    s = self.image_size
    images = np.empty((len(rows), s, s, 3), np.uint8)
    plain = real & ~flips
    images[plain] = self.cache[rows[plain]]
    mirrored = np.flatnonzero(real & flips)
    if len(mirrored):
      pixels = _as_pixels(images)
      source = _as_pixels(self.cache)
      for i in mirrored:
        pixels[i] = source[rows[i], :, ::-1]
    images[~real] = 0
    batch = self.columns.rows(rows)
    batch["image"] = images
    batch["mask"] = real
    return batch


def _as_pixels(images: np.ndarray) -> np.ndarray:
  """``[..., W, 3]`` uint8 as ``[..., W]`` of 3-byte items (a view)."""
  return images.view(np.dtype("V3"))[..., 0]


def _check_memory_limit(n: int, size: int) -> None:
  nbytes = n * size * size * 3
  if nbytes > CACHE_LIMIT_BYTES:
    raise ValueError(
        f"Caching {n} images at {size}px needs {nbytes / 2**30:.1f} GiB, over "
        f"the {CACHE_LIMIT_BYTES / 2**30:.0f} GiB limit; set data.cache_images="
        "False (the on-disk cache, data.image_cache_dir, has no such limit).")


def examples_source(examples: Examples, scheme: GroupScheme, image_size: int,
                    cache: bool = False, cache_dir: str | None = None
                    ) -> RecordSource:
  """The :class:`RecordSource` of ``examples``; ``cache``: in host memory,
  ``cache_dir``: from the on-disk cache there."""
  source = RecordSource(
      keys=np.asarray(examples.path, dtype=object),
      columns=Columns.from_examples(examples, scheme),
      image_size=int(image_size))
  return _with_caches(source, cache, cache_dir)


def _with_caches(source: RecordSource, in_memory: bool,
                 cache_dir: str | None) -> RecordSource:
  if cache_dir:
    source = source.disk_cached(cache_dir)
  return source.cached() if in_memory else source


def _threads(num_threads: int | None) -> int:
  # Decoding is mostly GIL-free C code; two threads per core hides file I/O.
  return num_threads or max(2, 2 * (os.cpu_count() or 1))


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), int(epoch), stream])


def shuffled_indices(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """A permutation of ``range(num_examples)`` fixed by ``(seed, epoch)``."""
  return _rng(seed, epoch, _STREAM_SHUFFLE).permutation(num_examples)


@functools.partial(jax.jit, static_argnames=("num_groups", "num_samples"))
def balanced_indices(key: jax.Array, group_ids: jax.Array, num_groups: int,
                     num_samples: int) -> jax.Array:
  """``num_samples`` int32 row indices, group-balanced, with replacement.

  A non-empty group uniformly, then a row of it uniformly: row ``i`` has
  probability proportional to ``1 / n_{g(i)}`` (docs/reference.md,
  "Resampling"). Integer ops only, so bit-identical on every backend.
  """
  group_ids = jnp.asarray(group_ids, jnp.int32)
  # Rows sorted by group: group g owns sorted[offsets[g]:offsets[g]+sizes[g]].
  sorted_rows = jnp.argsort(group_ids, stable=True).astype(jnp.int32)
  sizes = jnp.bincount(group_ids, length=num_groups).astype(jnp.int32)
  offsets = jnp.cumsum(sizes) - sizes
  present = jnp.argsort(sizes == 0, stable=True).astype(jnp.int32)
  num_present = jnp.sum(sizes > 0).astype(jnp.int32)
  group_key, row_key = jax.random.split(key)
  picked = present[jax.random.randint(group_key, (num_samples,), 0, num_present)]
  within = jax.random.randint(row_key, (num_samples,), 0, sizes[picked])
  return sorted_rows[offsets[picked] + within]


def balanced_order(groups: np.ndarray, seed: int, epoch: int) -> np.ndarray:
  """The Resampling epoch's ``len(groups)`` int64 rows; every host draws the same."""
  groups = np.asarray(groups, np.int32)
  n = len(groups)
  if n == 0:
    return np.zeros(0, np.int64)
  if groups.min() < 0:
    raise ValueError(f"Group ids must be non-negative, got {groups.min()}.")
  key = jax.random.fold_in(
      jax.random.fold_in(jax.random.key(int(seed)), _STREAM_BALANCED),
      int(epoch))
  rows = balanced_indices(key, groups, num_groups=int(groups.max()) + 1,
                          num_samples=n)
  return np.asarray(jax.device_get(rows), np.int64)


def flip_mask(num_rows: int, seed: int, epoch: int) -> np.ndarray:
  """Per position of the epoch's order (not per example, as online
  augmentation), flip horizontally with p = 1/2."""
  return _rng(seed, epoch, _STREAM_FLIP).random(num_rows) < 0.5


@dataclasses.dataclass(frozen=True)
class HostShard:
  """This host's place among all hosts: ``index`` of ``count``."""

  index: int
  count: int

  def __post_init__(self):
    if not 0 <= self.index < self.count:
      raise ValueError(f"process_index {self.index} is not in [0, {self.count}).")

  @classmethod
  def create(cls, process_index: int | None = None,
             process_count: int | None = None) -> HostShard:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    return cls(int(process_index), int(process_count))

  def local_batch_size(self, global_batch_size: int) -> int:
    if global_batch_size <= 0 or global_batch_size % self.count:
      raise ValueError(
          f"The global batch size {global_batch_size} must be a positive "
          f"multiple of the number of hosts ({self.count}).")
    return global_batch_size // self.count

  def take(self, global_order: np.ndarray, global_batch_size: int) -> np.ndarray:
    """Rows ``index*B/P:(index+1)*B/P`` of each global batch, concatenated."""
    local = self.local_batch_size(global_batch_size)
    per_batch = np.reshape(global_order, (-1, self.count, local))
    return per_batch[:, self.index].reshape(-1)


@dataclasses.dataclass(frozen=True)
class ReadOptions:
  """How batches are produced.

  ``num_workers``: grain worker processes (0: threads); they start afresh per
  epoch (5-7 s) and are skipped for cached images; they pay off only on hosts
  with many cores (benchmarks/input_pipeline.py). ``num_threads``: decode
  threads (0: 2 per core), or gather threads for cached images (0: 1 per core).
  """

  num_workers: int = 0
  num_threads: int = 0
  prefetch_batches: int = 2


@dataclasses.dataclass(frozen=True, eq=False)
class _PlannedRows:
  """A grain data source over one host's planned rows (``-1``: padding)."""

  source: RecordSource
  rows: np.ndarray
  flips: np.ndarray

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, i: int) -> dict[str, Any]:
    row = int(self.rows[i])
    fields = self.source.columns.rows(np.asarray([row]))
    record = {name: value[0] for name, value in fields.items()}
    record["mask"] = np.bool_(row >= 0)
    if row < 0:
      s = self.source.image_size
      record["image"] = np.zeros((s, s, 3), np.uint8)
    else:
      image = self.source.image(row)
      record["image"] = image[:, ::-1] if self.flips[i] else image
    return record


def _stack(records: Sequence[dict[str, Any]]) -> Batch:
  return {k: np.stack([r[k] for r in records]) for k in records[0]}


def read_batches(source: RecordSource, rows: np.ndarray, flips: np.ndarray,
                 batch_size: int, options: ReadOptions = ReadOptions()
                 ) -> Iterator[Batch]:
  """Yields ``rows`` (a multiple of ``batch_size``) as batches, in order."""
  if len(rows) % batch_size:
    raise ValueError(f"{len(rows)} rows are not whole batches of {batch_size}.")
  rows = np.asarray(rows, np.int64)
  flips = np.asarray(flips, bool)
  if source.cache is not None:
    yield from _gather_batches(source, rows, flips, batch_size, options)
    return
  if not len(rows):
    return
  planned = grain.MapDataset.source(_PlannedRows(source, rows, flips))
  if options.num_workers > 0:
    _ensure_flags_parsed()
    dataset = planned.batch(batch_size, batch_fn=_stack).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)
    ).mp_prefetch(grain.MultiprocessingOptions(
        num_workers=options.num_workers,
        per_worker_buffer_size=options.prefetch_batches))
  else:
    threads = _threads(options.num_threads)
    dataset = planned.to_iter_dataset(grain.ReadOptions(
        num_threads=threads,
        prefetch_buffer_size=max(threads, options.prefetch_batches * batch_size),
    )).batch(batch_size, batch_fn=_stack)
  iterator = iter(dataset)
  try:
    yield from iterator
  finally:
    # Stops worker processes now rather than at garbage collection.
    close = getattr(iterator, "close", None)
    if close is not None:
      close()


def _gather_batches(source: RecordSource, rows: np.ndarray, flips: np.ndarray,
                    batch_size: int, options: ReadOptions) -> Iterator[Batch]:
  """Cached batches in order, ``threads + prefetch_batches`` gathered ahead so
  the copy overlaps the device step."""
  starts = range(0, len(rows), batch_size)

  def gather(start: int) -> Batch:
    return source.gather(rows[start:start + batch_size],
                         flips[start:start + batch_size])

  if options.prefetch_batches <= 0:
    yield from map(gather, starts)
    return
  threads = max(1, options.num_threads or (os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    submitted = iter(starts)
    pending = collections.deque(
        pool.submit(gather, start) for start in itertools.islice(
            submitted, threads + options.prefetch_batches))
    try:
      while pending:
        batch = pending.popleft().result()
        pending.extend(pool.submit(gather, start)
                       for start in itertools.islice(submitted, 1))
        yield batch
    finally:
      # An abandoned epoch (resumption, early stop) does not finish reading.
      for future in pending:
        future.cancel()


def _ensure_flags_parsed() -> None:
  # grain's multiprocessing reads absl flags; outside absl.app.run they are
  # unparsed and grain would raise (docs/reference.md, "Library notes").
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@dataclasses.dataclass(frozen=True, eq=False)
class TrainLoader:
  """Training batches of global size ``batch_size``, resumable at any
  ``(epoch, step)``; ``sampler="balanced"`` is the Resampling method."""

  source: RecordSource
  batch_size: int
  seed: int
  sampler: str = "shuffle"
  flip: bool = False
  host: HostShard = HostShard(0, 1)
  read: ReadOptions = ReadOptions()

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"sampler={self.sampler!r}; expected one of {SAMPLERS}.")
    self.host.local_batch_size(self.batch_size)
    if self.steps_per_epoch == 0:
      raise ValueError(
          f"The training set has {len(self.source)} examples, fewer than one "
          f"global batch of {self.batch_size}; lower --config.train.batch_size.")

  @property
  def steps_per_epoch(self) -> int:
    return len(self.source) // self.batch_size

  def global_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's rows and flips over all hosts, whole batches only."""
    n = len(self.source)
    if self.sampler == "balanced":
      order = balanced_order(self.source.columns.group, self.seed, epoch)
    else:
      order = shuffled_indices(n, self.seed, epoch)
    flips = flip_mask(n, self.seed, epoch) if self.flip else np.zeros(n, bool)
    used = self.steps_per_epoch * self.batch_size
    return order[:used], flips[:used]

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    """This host's batches of ``epoch`` from ``start_step`` on, as an
    uninterrupted epoch yields them."""
    if not 0 <= start_step <= self.steps_per_epoch:
      raise ValueError(
          f"start_step {start_step} is outside [0, {self.steps_per_epoch}].")
    order, flips = self.global_order(epoch)
    skip = start_step * self.batch_size
    rows = self.host.take(order[skip:], self.batch_size)
    flips = self.host.take(flips[skip:], self.batch_size)
    return read_batches(self.source, rows, flips,
                        self.host.local_batch_size(self.batch_size), self.read)


@dataclasses.dataclass(frozen=True, eq=False)
class EvalLoader:
  """Every example once, in order, in padded global batches with a mask."""

  source: RecordSource
  batch_size: int
  host: HostShard = HostShard(0, 1)
  read: ReadOptions = ReadOptions()

  def __post_init__(self):
    self.host.local_batch_size(self.batch_size)

  @property
  def num_batches(self) -> int:
    return -(-len(self.source) // self.batch_size)

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[Batch]:
    n = len(self.source)
    padded = np.full(self.num_batches * self.batch_size, -1, np.int64)
    padded[:n] = np.arange(n)
    rows = self.host.take(padded, self.batch_size)
    flips = np.zeros(len(rows), bool)
    return read_batches(self.source, rows, flips,
                        self.host.local_batch_size(self.batch_size), self.read)


def _as_source(data: Examples | RecordSource, scheme: GroupScheme | None,
               cfg_data: Any) -> RecordSource:
  cache_dir = image_cache.resolve_dir(cfg_data.get("image_cache_dir", ""))
  in_memory = bool(cfg_data.cache_images)
  if not isinstance(data, RecordSource):
    if scheme is None:
      raise ValueError("A GroupScheme is needed to turn Examples into records.")
    data = examples_source(data, scheme, cfg_data.image_size)
  return _with_caches(data, in_memory, cache_dir)


def make_train_loader(data: Examples | RecordSource, scheme: GroupScheme | None,
                      cfg_data: Any, batch_size: int, seed: int,
                      sampler: str = "shuffle", process_index: int | None = None,
                      process_count: int | None = None) -> TrainLoader:
  """The training loader the config's ``data`` block asks for; ``scheme`` is
  ignored for a ``RecordSource``, ``batch_size`` is global."""
  return TrainLoader(
      source=_as_source(data, scheme, cfg_data),
      batch_size=int(batch_size), seed=int(seed), sampler=sampler,
      flip=bool(cfg_data.flip),
      host=HostShard.create(process_index, process_count),
      read=ReadOptions(num_workers=int(cfg_data.num_workers)))


def make_eval_loader(data: Examples | RecordSource, scheme: GroupScheme | None,
                     cfg_data: Any, batch_size: int,
                     process_index: int | None = None,
                     process_count: int | None = None) -> EvalLoader:
  """The evaluation loader: all examples once, padded, never flipped."""
  return EvalLoader(
      source=_as_source(data, scheme, cfg_data),
      batch_size=int(batch_size),
      host=HostShard.create(process_index, process_count),
      read=ReadOptions(num_workers=int(cfg_data.num_workers)))


def normalize(images: Any, dtype: Any = None) -> Any:
  """``(images / 255 - mean) / std`` (ImageNet) as ``dtype`` (default float32)."""
  mean = jnp.asarray(images_lib.IMAGENET_MEAN, jnp.float32) * 255.0
  inv_std = 1.0 / (jnp.asarray(images_lib.IMAGENET_STD, jnp.float32) * 255.0)
  out = (jnp.asarray(images, jnp.float32) - mean) * inv_std
  return out.astype(dtype or jnp.float32)
