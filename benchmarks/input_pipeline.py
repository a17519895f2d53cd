"""Images per second of the training input pipeline on this machine.

Writes ``--num_images`` random-texture JPEGs at 256x256 (about the size of the
real datasets' files) to a temporary folder, then times one training epoch of
``ffr_jax.data.pipeline`` for each output size and reading mode:

* ``threads=T``: decode in T threads in this process (``data.num_workers=0``);
* ``workers=W``: grain worker processes (``data.num_workers=W``);
* ``cache``: decode everything once into memory, then gather batches.

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
import tempfile
import time
from collections.abc import Callable

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
    int, float, float, float]:
  """Returns (images, first-batch seconds, steady img/s, overall img/s)."""
  start = time.perf_counter()
  first = None
  count = 0
  for batch in batches_fn():
    count += len(batch["image"])
    if first is None:
      first = time.perf_counter()
  end = time.perf_counter()
  steady = (count - batch_size) / max(end - first, 1e-9)
  return count, first - start, steady, count / (end - start)


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
  return rows


def cached_row(examples: Examples, scheme: GroupScheme, size: int,
               batch_size: int) -> Row:
  """Cache fill (counted as time to first batch) + one epoch from memory."""
  start = time.perf_counter()
  source = pipeline.examples_source(examples, scheme, size, cache=True)
  fill = time.perf_counter() - start
  loader = pipeline.TrainLoader(source, batch_size, seed=0, flip=True)
  count, first, steady, _ = time_epoch(lambda: loader.epoch(0), batch_size)
  total = count / (fill + count / max(steady, 1e-9))
  return Row(size, "cache (fill, then epoch)", count, fill + first, steady,
             total)


def print_row(row: Row) -> None:
  print(f"{row.size:>5} | {row.mode:<26} | {row.images:>6} | "
        f"{row.first_batch_s:>8.2f} | {row.steady_images_per_s:>10.0f} | "
        f"{row.total_images_per_s:>10.0f}", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_images", type=int, default=2000)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
  parser.add_argument("--workers", type=int, nargs="+", default=[2])
  parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
  parser.add_argument("--out", default="benchmarks/results/input_pipeline.json")
  args = parser.parse_args()
  # Other processes share the CPUs; the load average says how much.
  load_before = os.getloadavg()
  print(f"{'size':>5} | {'mode':<26} | {'images':>6} | {'first s':>8} | "
        f"{'steady/s':>10} | {'overall/s':>10}")
  rows = run(args.num_images, args.batch_size, args.sizes, args.workers,
             args.threads)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({
        "benchmark": "input_pipeline",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor(),
                    "loadavg_1_5_15_before": load_before,
                    "loadavg_1_5_15_after": os.getloadavg()},
        "source_images": f"{args.num_images} JPEGs at {SOURCE_SIZE}x{SOURCE_SIZE}",
        "batch_size": args.batch_size,
        "rows": [dataclasses.asdict(r) for r in rows],
    }, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
