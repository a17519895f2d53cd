"""Generated images as a dataset: the folder layout and its manifest.

Layout (written by ``ffr_jax.generate``, read here)::

    {root}/{dataset}/{class}/{bias}/{index:06d}.png
    {root}/{dataset}/manifest.jsonl

A folder of one's own images in that layout (any image file names) and no
manifest is listed in place (:func:`records_of_images`); nothing is written.

Each manifest line is one image (:class:`ManifestRecord`). The manifest is
the source of truth: an image is part of
the dataset only once its line is written, and a line is written only after the
file was renamed into place, so a killed writer never leaves a half-written
image that a reader would take.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

import numpy as np

from absl import logging

from ffr_jax.data import images, layouts
from ffr_jax.data.types import SYNTHETIC, DatasetSpec, Examples

MANIFEST = "manifest.jsonl"
REQUIRED_KEYS = ("file", "class", "bias", "index", "prompt", "seed", "generator")


@dataclasses.dataclass(frozen=True)
class ManifestRecord:
  file: str
  cls: str
  bias: str
  index: int
  prompt: str
  seed: int
  generator: str

  def to_json(self) -> str:
    return json.dumps({
        "file": self.file, "class": self.cls, "bias": self.bias,
        "index": self.index, "prompt": self.prompt, "seed": self.seed,
        "generator": self.generator})


def dataset_dir(root: str, spec: DatasetSpec) -> str:
  return os.path.join(root, spec.name)


def verified_cache_path(root: str, spec: DatasetSpec) -> str:
  """Where the images of ``{root}/{spec.name}`` that decoded fine are remembered.

  One cache for the writer, ``--verify`` and the loader, so a folder checked by
  one is only checksummed, not decoded, by the others
  (:func:`ffr_jax.data.images.find_unreadable`).
  """
  return images.verified_cache_path(dataset_dir(root, spec))


def relative_image_path(spec: DatasetSpec, y: int, b: int, index: int) -> str:
  return os.path.join(spec.class_names[y], spec.bias_names[b], f"{index:06d}.png")


def records_of_images(root: str, spec: DatasetSpec) -> list[ManifestRecord]:
  """The images of ``{root}/{spec.name}/{class}/{bias}/`` made elsewhere, as
  manifest records: indices follow the sorted file names of each group;
  prompt and seed are unknown (``""``, -1). Read-only folders work too."""
  base = dataset_dir(root, spec)
  records = []
  for y, b in spec.groups:
    folder = os.path.join(base, spec.class_names[y], spec.bias_names[b])
    found = layouts.list_images(folder, {}) if os.path.isdir(folder) else []
    records += [ManifestRecord(file=os.path.relpath(p, base), cls=spec.class_names[y],
                               bias=spec.bias_names[b], index=i, prompt="", seed=-1,
                               generator="user")
                for i, p in enumerate(found)]
  return records


def read_manifest(root: str, spec: DatasetSpec) -> Iterator[ManifestRecord]:
  """Yields the records of ``{root}/{spec.name}/manifest.jsonl``.

  A torn last line (a writer killed mid-write) is ignored; any other malformed
  line is an error naming the line number.
  """
  path = os.path.join(dataset_dir(root, spec), MANIFEST)
  if not os.path.isfile(path):
    records = records_of_images(root, spec)
    if not records:
      raise FileNotFoundError(
          f"No synthetic images in {dataset_dir(root, spec)}: expected "
          f"<class>/<bias>/*.png folders there ({', '.join(spec.class_names)} x "
          f"{', '.join(spec.bias_names)}), as `python -m ffr_jax.generate` writes.")
    logging.info("%s has no %s: using its %d images as listed.",
                 dataset_dir(root, spec), MANIFEST, len(records))
    yield from records
    return
  with open(path) as f:
    lines = f.read().split("\n")
  complete = lines[:-1]  # text after the last newline is a torn write
  for lineno, line in enumerate(complete, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      missing = [k for k in REQUIRED_KEYS if k not in row]
      if missing:
        raise ValueError(f"missing keys {missing}")
      yield ManifestRecord(
          file=str(row["file"]), cls=str(row["class"]), bias=str(row["bias"]),
          index=int(row["index"]), prompt=str(row["prompt"]),
          seed=int(row["seed"]), generator=str(row["generator"]))
    except (ValueError, TypeError) as e:
      raise ValueError(f"{path}:{lineno}: malformed manifest line ({e}).") from e


def load_synthetic(root: str, spec: DatasetSpec, check_files: bool = True
                   ) -> Examples:
  """Reads a generated-images folder as examples of source = synthetic.

  Rows are ordered by (group, index), so taking the first ``n`` of a group is
  deterministic and independent of the order images were written in.

  With ``check_files``, every listed file is checked to decode (a checksum
  cache skips the decode of files unchanged since they last decoded fine), so
  training is never handed an unreadable image. An unreadable one is an error,
  not a silent exclusion: the pool must hold the counts the run takes, and
  rerunning the generation command regenerates exactly those images.
  """
  base = dataset_dir(root, spec)
  paths, ys, bs, idx = [], [], [], []
  seen = set()
  for rec in read_manifest(root, spec):
    y, b = spec.class_index(rec.cls), spec.bias_index(rec.bias)
    spec.group_index(y, b)
    if (y, b, rec.index) in seen:
      raise ValueError(f"{base}: image {rec.file} is listed twice in {MANIFEST}.")
    seen.add((y, b, rec.index))
    paths.append(os.path.join(base, rec.file))
    ys.append(y)
    bs.append(b)
    idx.append(rec.index)
  if check_files:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise FileNotFoundError(
          f"{len(missing)} images listed in {base}/{MANIFEST} are missing on "
          f"disk, e.g. {missing[:3]}. Run `python -m ffr_jax.generate --verify`.")
    bad, content = images.verify_images(
        paths, cache_path=verified_cache_path(root, spec))
    if bad:
      shown = [f"{p} ({bad[p]})" for p in sorted(bad)[:3]]
      raise ValueError(
          f"{len(bad)} images listed in {base}/{MANIFEST} do not decode, e.g. "
          f"{shown}. Rerun the generation command (`python -m ffr_jax.generate`"
          " with the same config): it regenerates them.")
  ex = Examples.from_lists(paths, ys, bs, SYNTHETIC, content=[
      content[p] for p in paths] if check_files else None)
  order = np.lexsort((np.asarray(idx, np.int64), ex.b, ex.y))
  return ex.take(order)
