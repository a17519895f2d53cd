"""The benchmark's real data, rendered into SpuCo Animals' official layout.

:func:`prepare_real` writes PNGs to::

    root/spuco_birds/{train,val,test}/{landbirds,waterbirds}/{land,water}/*.png
    root/spuco_dogs/{train,val,test}/{small_dogs,big_dogs}/{indoor,outdoor}/*.png

so the ``"demo"`` dataset goes through exactly the loader and pipeline real
SpuCo Animals does. A marker ``root/.ffr_benchmark.json`` records the render
parameters: a root rendered with other parameters (or half-written) is
re-rendered, and a SpuCo-layout folder without it (real data) is never touched.
"""

from __future__ import annotations

import json
import os
import shutil

from PIL import Image

from absl import logging

from ffr_jax import lifecycle
from ffr_jax.demo import render
from ffr_jax.data import spuco
from ffr_jax.data.datasets import DatasetDef
from ffr_jax.data.types import DatasetSplits

MARKER = ".ffr_benchmark.json"
# Bump when the renderer's output changes, so old renders are redone.
RENDER_VERSION = 1
# The demo's and the demo sweep's one scale: train 500 / 25 per group before
# the bias rule, val 25 / 10, test 25 / 25 (docs/benchmark.md).
DEFAULT_SCALE = 0.05
DEFAULT_SEED = 0
# SpuCo Animals' official images per group: (majority, minority) per split.
OFFICIAL_SIZES = {"train": (10000, 500), "val": (500, 25), "test": (500, 500)}
# Least images per group and split: val needs 10 per group for model selection
# (ffr_jax.data.bias.MIN_VAL_PER_GROUP); test groups below ~20 make worst-group
# accuracy too coarse to read.
MIN_PER_GROUP = {"train": 5, "val": 10, "test": 20}
# Images per group and split are indexed below this (it separates seeds).
_MAX_PER_GROUP = 1_000_000


def split_sizes(scale: float) -> dict[str, dict[tuple[int, int], int]]:
  """Images per split and group at ``scale`` times SpuCo's official sizes, at
  least ``MIN_PER_GROUP``."""
  scale = float(scale)
  if not 0 < scale <= 1:
    raise ValueError(
        f"benchmark scale={scale} must lie in (0, 1]: it multiplies SpuCo "
        "Animals' official split sizes (1 = 10000 majority train images per "
        "group).")
  spec = render.DEMO_SPEC
  out = {}
  for split, (major, minor) in OFFICIAL_SIZES.items():
    out[split] = {
        (y, b): max(MIN_PER_GROUP[split],
                    int(round((major if spec.is_majority(y, b) else minor) * scale)))
        for y, b in spec.groups}
  return out


def image_seed(seed: int, split: str, group: int, index: int) -> int:
  """The renderer seed of one image, distinct for every (seed, split, group, index)."""
  split_id = spuco.SPLITS.index(split)
  return ((int(seed) * len(spuco.SPLITS) + split_id) * len(render.GROUPS)
          + group) * _MAX_PER_GROUP + int(index)


def read_marker(root: str) -> dict | None:
  """The render parameters recorded in ``root``, or None if it has no marker."""
  path = os.path.join(root, MARKER)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_marker(root: str, params: dict, complete: bool) -> None:
  lifecycle.write_atomic(os.path.join(root, MARKER), json.dumps(
      {**params, "complete": complete}, indent=1, sort_keys=True))


def _clear(root: str, marker: dict | None) -> None:
  """Removes a previous render; refuses to touch a folder we did not render."""
  subsets = sorted({subset for subset, _, _ in spuco.FOLDERS.values()})
  present = [s for s in subsets if os.path.exists(os.path.join(root, s))]
  if present and marker is None:
    raise FileExistsError(
        f"{root} already holds {present} but no {MARKER}: it looks like real "
        "SpuCo Animals data, which the demo benchmark will not overwrite. Point "
        "data.root at an empty folder (or use data.name=spuco_animals).")
  for subset in present:
    shutil.rmtree(os.path.join(root, subset))


def prepare_real(root: str, *, scale: float = DEFAULT_SCALE,
                 image_size: int = render.DEFAULT_SIZE,
                 seed: int = DEFAULT_SEED) -> None:
  """Renders the real images into ``root`` in the SpuCo layout, unless a
  complete render with the same parameters is there."""
  image_size = render.check_size(image_size)
  params = {"version": RENDER_VERSION, "scale": float(scale),
            "image_size": image_size, "seed": int(seed)}
  sizes = split_sizes(scale)
  marker = read_marker(root)
  if marker is not None and marker.get("complete") and (
      {k: marker.get(k) for k in params} == params):
    return
  os.makedirs(root, exist_ok=True)
  if marker is not None and marker.get("complete"):
    # Never silent: a rerun with other benchmark parameters replaces the data.
    logging.warning(
        "%s was rendered with %s; re-rendering it with %s.", root,
        {k: marker.get(k) for k in params}, params)
  _clear(root, marker)
  _write_marker(root, params, complete=False)
  for split, per_group in sizes.items():
    for g, (y, b) in enumerate(render.GROUPS):
      subset, cls, bias = spuco.FOLDERS[(y, b)]
      folder = os.path.join(root, subset, split, cls, bias)
      os.makedirs(folder, exist_ok=True)
      n = per_group[(y, b)]
      seeds = [image_seed(seed, split, g, i) for i in range(n)]
      images = render.render([y] * n, [b] * n, seeds, image_size)
      for i, image in enumerate(images):
        # Low compression: the files are tiny and rendering speed matters more.
        Image.fromarray(image).save(os.path.join(folder, f"{i:06d}.png"),
                                    compress_level=1)
  _write_marker(root, params, complete=True)


def load(root: str, split_seed: int = 0) -> DatasetSplits:
  """The registry's loader of a root :func:`prepare_real` rendered; it never
  renders (the config's ``benchmark.*`` decide, ``datasets.prepare_dataset``)."""
  marker = read_marker(root)
  if marker is None or not marker.get("complete"):
    state = "was not rendered" if marker is None else "holds a cut-short render"
    raise FileNotFoundError(
        f"{root} {state}: the demo's data is made by "
        "ffr_jax.data.datasets.prepare_dataset(config) (the training and "
        "generation commands call it) or ffr_jax.demo.prepare_real(root, ...).")
  return spuco.load_spuco_layout(root, render.DEMO_SPEC, split_seed)


LAYOUT = (spuco.layout_description() +
          f"\n(rendered by ffr_jax.demo.prepare_real; {MARKER} records how)")


def prepare_from_config(config) -> None:
  """Renders ``config.data.root`` with the config's ``benchmark`` parameters."""
  prepare_real(config.data.root, scale=config.benchmark.scale,
               image_size=config.benchmark.image_size,
               seed=config.benchmark.seed)


# Listed lazily in ffr_jax.data.datasets.DATASETS as "demo".
DEMO = DatasetDef(spec=render.DEMO_SPEC, load=load, layout=LAYOUT,
                  self_contained=True, prepare=prepare_from_config,
                  keys=("benchmark.scale", "benchmark.image_size",
                        "benchmark.seed"))
