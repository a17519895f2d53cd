"""Images per second of the training input pipeline on this machine.

Writes ``--num_images`` random-texture JPEGs at 256x256 (about the size of the
real datasets' files) to a temporary folder, then times one training epoch of
``ffr_jax.data.pipeline`` for each output size and reading mode:

* ``threads=T``: decode in T threads in this process (``data.num_workers=0``);
* ``workers=W``: grain worker processes (``data.num_workers=W``);
* ``cache``: decode everything once into memory, then gather batches;
* ``disk cache``: build the on-disk cache (``data.image_cache_dir``,
  ``ffr_jax.data.image_cache``) once, then read epochs from it memory-mapped
  (warm page cache) with T gather threads;
* ``disk cache via grain``: the same memory-mapped images read per record
  through grain (what the cache would cost without the vectorised gather).

For each it reports the time to the first batch (worker start-up, cache fill)
and the steady-state rate after it. A ``decode`` row gives the single-thread
cost of one PIL decode + resize, the unit everything else is bounded by, and a
``decode_draft`` row shows what JPEG draft mode (libjpeg's DCT-domain
downscaling) would save at small output sizes.

Usage::

    PYTHONPATH=. python benchmarks/input_pipeline.py --out benchmarks/results/input_pipeline.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Callable

import grain
import ml_collections
import numpy as np
from PIL import Image

from ffr_jax.data import images as images_lib
from ffr_jax.data import pipeline
from ffr_jax.data.types import DatasetSpec, Examples, GroupScheme

SPEC = DatasetSpec(
    name="bench", class_names=("a", "b"), bias_names=("x", "y"),
    groups=((0, 0), (0, 1), (1, 0), (1, 1)), majority_bias=(0, 1))
SOURCE_SIZE = 256


@dataclasses.dataclass(frozen=True)
class Row:
  """One measurement."""

  size: int
  mode: str
  images: int
  first_batch_s: float
  steady_images_per_s: float
  total_images_per_s: float
  # CPU seconds (all threads) per image: less sensitive to other load.
  cpu_ms_per_image: float = 0.0


def write_jpegs(root: str, n: int) -> Examples:
  """``n`` smooth random 256x256 JPEGs (quality 90) with cycling labels."""
  rng = np.random.default_rng(0)
  paths = []
  for i in range(n):
    # Upsampled noise compresses like a photo, unlike white noise.
    small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((SOURCE_SIZE, SOURCE_SIZE),
                                          Image.BICUBIC)
    path = os.path.join(root, f"{i:05d}.jpg")
    image.save(path, quality=90)
    paths.append(path)
  ys = np.arange(n) % 2
  return Examples.from_lists(paths, ys, (np.arange(n) // 2) % 2)


def time_epoch(batches_fn: Callable[[], object], batch_size: int) -> tuple[
    int, float, float, float, float]:
  """Returns (images, first-batch s, steady img/s, overall img/s, CPU ms/img)."""
  start = time.perf_counter()
  cpu_start = time.process_time()
  first = None
  count = 0
  for batch in batches_fn():
    count += len(batch["image"])
    if first is None:
      first = time.perf_counter()
  end = time.perf_counter()
  cpu_ms = 1e3 * (time.process_time() - cpu_start) / max(count, 1)
  steady = (count - batch_size) / max(end - first, 1e-9)
  return count, first - start, steady, count / (end - start), cpu_ms


def decode_rate(paths: list[str], size: int, draft: bool) -> float:
  """Single-thread images/s of decode + resize."""
  start = time.perf_counter()
  for path in paths:
    if draft:
      with Image.open(path) as im:
        im.draft("RGB", (size, size))
        im = im.convert("RGB").resize((size, size), Image.BILINEAR)
        np.asarray(im)
    else:
      images_lib.decode(path, size)
  return len(paths) / (time.perf_counter() - start)


def run(num_images: int, batch_size: int, sizes: list[int],
        workers: list[int], threads: list[int]) -> list[Row]:
  rows = []
  scheme = GroupScheme(SPEC)
  with tempfile.TemporaryDirectory() as root:
    examples = write_jpegs(root, num_images)
    sample = [str(p) for p in examples.path[:200]]
    for size in sizes:
      for draft in (False, True):
        rate = decode_rate(sample, size, draft)
        mode = "decode_draft" if draft else "decode"
        rows.append(Row(size, mode + " (1 thread)", len(sample), 0.0, rate, rate))
        print_row(rows[-1])
      modes = [(f"threads={t}", dict(num_workers=0), t) for t in threads]
      modes += [(f"workers={w}", dict(num_workers=w), 0) for w in workers]
      for name, overrides, num_threads in modes:
        cfg = ml_collections.ConfigDict(dict(
            image_size=size, flip=True, cache_images=False, **overrides))
        loader = pipeline.make_train_loader(
            examples, scheme, cfg, batch_size, seed=0, process_index=0,
            process_count=1)
        loader = dataclasses.replace(loader, read=dataclasses.replace(
            loader.read, num_threads=num_threads))
        rows.append(Row(size, name, *time_epoch(lambda: loader.epoch(0),
                                                batch_size)))
        print_row(rows[-1])
      rows.append(cached_row(examples, scheme, size, batch_size))
      print_row(rows[-1])
      for row in disk_cache_rows(examples, scheme, size, batch_size, threads):
        rows.append(row)
        print_row(row)
  return rows


def disk_cache_rows(examples: Examples, scheme: GroupScheme, size: int,
                    batch_size: int, threads: list[int]) -> list[Row]:
  """Build the on-disk cache, then epochs from it (gather, and via grain)."""
  out = []
  with tempfile.TemporaryDirectory() as cache_dir:
    start, cpu_start = time.perf_counter(), time.process_time()
    source = pipeline.examples_source(examples, scheme, size,
                                      cache_dir=cache_dir)
    build = time.perf_counter() - start
    cpu_ms = 1e3 * (time.process_time() - cpu_start) / len(source)
    out.append(Row(size, "disk cache build", len(source), build,
                   len(source) / build, len(source) / build, cpu_ms))
    for t in threads:
      loader = pipeline.TrainLoader(
          source, batch_size, seed=0, flip=True,
          read=pipeline.ReadOptions(num_threads=t))
      list(loader.epoch(0))  # warms the page cache
      out.append(Row(size, f"disk cache, threads={t}",
                     *time_epoch(lambda: loader.epoch(1), batch_size)))
    # Without flips: what the mirrored copy costs.
    loader = pipeline.TrainLoader(source, batch_size, seed=0, flip=False,
                                  read=pipeline.ReadOptions(num_threads=2))
    out.append(Row(size, "disk cache, no flip, threads=2",
                   *time_epoch(lambda: loader.epoch(1), batch_size)))
    out.append(Row(size, "disk cache via grain (2 thr)",
                   *time_epoch(lambda: grain_per_record(source, batch_size),
                               batch_size)))
  return out


def grain_per_record(source: pipeline.RecordSource, batch_size: int):
  """Cached records read one by one through grain, as without the gather."""
  n = len(source) // batch_size * batch_size
  order = pipeline.shuffled_indices(len(source), 0, 1)[:n]
  flips = pipeline.flip_mask(len(source), 0, 1)[:n]
  planned = grain.MapDataset.source(pipeline._PlannedRows(  # pylint: disable=protected-access
      source, order, flips))
  dataset = planned.to_iter_dataset(grain.ReadOptions(
      num_threads=2, prefetch_buffer_size=2 * batch_size)).batch(
          batch_size, batch_fn=pipeline._stack)  # pylint: disable=protected-access
  return iter(dataset)


def cached_row(examples: Examples, scheme: GroupScheme, size: int,
               batch_size: int) -> Row:
  """Cache fill (counted as time to first batch) + one epoch from memory."""
  start = time.perf_counter()
  source = pipeline.examples_source(examples, scheme, size, cache=True)
  fill = time.perf_counter() - start
  loader = pipeline.TrainLoader(source, batch_size, seed=0, flip=True)
  count, first, steady, _, cpu_ms = time_epoch(lambda: loader.epoch(0),
                                               batch_size)
  total = count / (fill + count / max(steady, 1e-9))
  return Row(size, "cache (fill, then epoch)", count, fill + first, steady,
             total, cpu_ms)


def print_row(row: Row) -> None:
  print(f"{row.size:>5} | {row.mode:<30} | {row.images:>6} | "
        f"{row.first_batch_s:>8.2f} | {row.steady_images_per_s:>10.0f} | "
        f"{row.total_images_per_s:>10.0f} | {row.cpu_ms_per_image:>7.3f}",
        flush=True)


def cpu_flags() -> list[str]:
  """The AVX flags of this CPU (memcpy and PIL's resize speed depend on them)."""
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return []
  return sorted(set(re.findall(r"\b(avx512[a-z_0-9]*|avx2)\b", text)))


def _uptime() -> str:
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True,
                          check=False).stdout.strip()
  except OSError:
    return ""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_images", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
  parser.add_argument("--workers", type=int, nargs="*", default=[2])
  parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--out", default="benchmarks/results/input_pipeline.json")
  args = parser.parse_args()
  # Other processes share the CPUs; the load average says how much.
  load_before = os.getloadavg()
  uptime_before = _uptime()
  print(f"{'size':>5} | {'mode':<30} | {'images':>6} | {'first s':>8} | "
        f"{'steady/s':>10} | {'overall/s':>10} | {'cpu ms':>7}")
  rows = run(args.num_images, args.batch_size, args.sizes, args.workers,
             args.threads)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({
        "benchmark": "input_pipeline",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor(),
                    "cpu_flags": cpu_flags(),
                    "uptime_before": uptime_before,
                    "uptime_after": _uptime(),
                    "loadavg_1_5_15_before": load_before,
                    "loadavg_1_5_15_after": os.getloadavg()},
        "source_images": f"{args.num_images} JPEGs at {SOURCE_SIZE}x{SOURCE_SIZE}",
        "batch_size": args.batch_size,
        "rows": [dataclasses.asdict(r) for r in rows],
    }, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
