"""What the dataset loaders share (they import this, bias and types, never
each other): listing, group checks, the 80/10/10 split with the 90% pre-bias,
CelebA-style attribute files, majority biases and the data summary."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from ffr_jax.data import bias
from ffr_jax.data.images import is_image_file
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples, group_table

SPLITS = ("train", "val", "test")
MAX_SKIPPED_EXAMPLES = 5
# Train and val of CelebA-HQ and UTKFace before the configured ratio.
PRE_BIAS_RATIO = 0.90
# Keeps the pre-bias draws apart from the later bias_splits draws, which use
# split_seed and split_seed + 1.
_PRE_BIAS_SEED_OFFSET = 7919


def dataset_splits(spec: DatasetSpec, skipped: Mapping[str, list[str]],
                   **splits: Examples) -> DatasetSplits:
  """The splits, with reason -> all skipped paths as counts and a few examples."""
  counts = {k: len(v) for k, v in sorted(skipped.items()) if v}
  examples = {k: list(v[:MAX_SKIPPED_EXAMPLES])
              for k, v in sorted(skipped.items()) if v}
  return DatasetSplits(spec=spec, skipped=counts, skipped_files=examples,
                       **splits)


def list_images(folder: str, skipped: dict[str, list[str]]) -> list[str]:
  """Image paths in ``folder``, sorted; anything else is recorded as skipped."""
  paths = []
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if is_image_file(name) and os.path.isfile(path):
      paths.append(path)
    else:
      skipped.setdefault("not_an_image_file", []).append(path)
  return paths


def require_every_group(spec: DatasetSpec, splits: dict[str, Examples],
                        where: str) -> None:
  """ValueError naming the first (split, group) with no examples: worst-group
  accuracy would be undefined."""
  for split, examples in splits.items():
    for g, (y, b) in enumerate(spec.groups):
      if examples.count(y, b) == 0:
        raise ValueError(
            f"{spec.name}: group {spec.group_name(g)} (y={y}, b={b}) has no "
            f"images in split {split!r} (data at {where}). Every group needs "
            "images in train, val and test.")


def prebias(spec: DatasetSpec, train: Examples, val: Examples, split_seed: int
            ) -> tuple[Examples, Examples]:
  """Train and val brought to the authors' 90% pre-bias (val keeps >= 10/group)."""
  seed = split_seed + _PRE_BIAS_SEED_OFFSET
  # The authors floor the count to keep in this step; only so do the 90%
  # counts match theirs: 592/866 (CelebA-HQ), 103/636 (UTKFace).
  train = bias.apply_bias_ratio(spec, train, PRE_BIAS_RATIO, seed,
                                floor_keep=True)
  val = bias.apply_bias_ratio(spec, val, PRE_BIAS_RATIO, seed + 1,
                              min_per_group=bias.MIN_VAL_PER_GROUP,
                              floor_keep=True)
  return train, val


def split_and_prebias(spec: DatasetSpec, examples: Examples, split_seed: int,
                      where: str) -> tuple[Examples, Examples, Examples]:
  """Seeded 80/10/10 split, then train and val pre-biased to 90% (datasets
  without official splits)."""
  train, val, test = bias.seeded_split(examples, split_seed)
  require_every_group(spec, {"train": train, "val": val, "test": test}, where)
  train, val = prebias(spec, train, val, split_seed)
  return train, val, test


# --- CelebA-style attribute files ---------------------------------------------


def _parse_header(lines: list[str], path: str, wanted: Sequence[str],
                  layout: str) -> tuple[int, list[str]]:
  if len(lines) < 2:
    raise ValueError(
        f"{path}: expected at least 2 header lines (image count, attribute "
        f"names), found {len(lines)}. Expected layout:\n{layout}")
  try:
    declared = int(lines[0].strip())
  except ValueError:
    raise ValueError(
        f"{path}:1: expected the number of images, found {lines[0].strip()!r}."
    ) from None
  names = lines[1].split()
  for attr in wanted:
    if attr not in names:
      raise ValueError(
          f"{path}:2: attribute {attr!r} is missing from the attribute names "
          f"{names}.")
  if len(set(names)) != len(names):
    raise ValueError(f"{path}:2: attribute names repeat: {names}.")
  return declared, names


def _parse_row(line: str, lineno: int, num_attrs: int, columns: list[int],
               path: str) -> tuple[str, tuple[int, ...]]:
  fields = line.split()
  if len(fields) != num_attrs + 1:
    raise ValueError(
        f"{path}:{lineno}: expected a file name and {num_attrs} values, found "
        f"{len(fields)} fields.")
  values = [fields[1 + c] for c in columns]
  # Only the columns read are checked: CelebA has 200k rows of 40 values.
  if any(v not in ("-1", "1") for v in values):
    raise ValueError(
        f"{path}:{lineno}: attribute values must be -1 or 1: {values}.")
  return fields[0], tuple(int(v == "1") for v in values)


def read_attributes(path: str, wanted: Sequence[str], layout: str
                    ) -> dict[str, tuple[int, ...]]:
  """A CelebA-style attribute file (``celeba.LAYOUT``) as ``file -> wanted
  values (0/1)``."""
  with open(path) as f:
    lines = f.read().splitlines()
  declared, names = _parse_header(lines, path, wanted, layout)
  columns = [names.index(a) for a in wanted]
  labels = {}
  for lineno, line in enumerate(lines[2:], start=3):
    if not line.strip():
      continue
    name, values = _parse_row(line, lineno, len(names), columns, path)
    if name in labels:
      raise ValueError(f"{path}:{lineno}: image {name!r} is listed twice.")
    labels[name] = values
  if len(labels) != declared:
    raise ValueError(
        f"{path}: line 1 says {declared} images but {len(labels)} rows follow; "
        "the file is truncated or edited.")
  return labels


def read_attribute_images(dataset: str, root: str, image_dir: str,
                          attribute_file: str, wanted: Sequence[str],
                          layout: str) -> tuple[dict[str, tuple[int, ...]],
                                                dict[str, str], list[str]]:
  """``(labels, {name: path} of listed images on disk, missing paths)``."""
  image_dir = os.path.join(root, image_dir)
  for p, kind in ((root, "root"), (image_dir, "image folder")):
    if not os.path.isdir(p):
      raise FileNotFoundError(
          f"{dataset} {kind} {p} is not a directory. Expected:\n{layout}")
  anno = os.path.join(root, attribute_file)
  if not os.path.isfile(anno):
    raise FileNotFoundError(
        f"{dataset} attribute file {anno} is missing. Expected:\n{layout}")
  labels = read_attributes(anno, wanted, layout)
  on_disk = set(os.listdir(image_dir))  # One listing, not a stat per image.
  paths, missing = {}, []
  for name in sorted(labels):
    path = os.path.join(image_dir, name)
    if name in on_disk:
      paths[name] = path
    else:
      missing.append(path)
  return labels, paths, missing


# --- Majority bias per class, from the config or the data ---------------------


def parse_majority(text: str, class_names: Sequence[str],
                   bias_names: Sequence[str]) -> tuple[int, ...]:
  """``"class_a:bias_x,class_b:bias_y"`` -> the majority bias index per class."""
  out: dict[int, int] = {}
  for entry in (e.strip() for e in text.split(",") if e.strip()):
    cls, sep, bias_name = (p.strip() for p in entry.partition(":"))
    if not sep:
      raise ValueError(
          f"data.majority entry {entry!r} is not 'class:bias' (e.g. "
          f"'{class_names[0]}:{bias_names[0]}').")
    if cls not in class_names or bias_name not in bias_names:
      raise ValueError(
          f"data.majority entry {entry!r}: classes are {list(class_names)}, "
          f"biases are {list(bias_names)}.")
    y = list(class_names).index(cls)
    if y in out:
      raise ValueError(f"data.majority names class {cls!r} twice.")
    out[y] = list(bias_names).index(bias_name)
  missing = [c for y, c in enumerate(class_names) if y not in out]
  if missing:
    raise ValueError(
        f"data.majority {text!r} gives no majority bias for classes {missing}.")
  return tuple(out[y] for y in range(len(class_names)))


def infer_majority(train: Examples, num_classes: int, num_biases: int
                   ) -> tuple[int, ...]:
  """The bias value with the most train images of each class (ties: lowest)."""
  out = []
  for y in range(num_classes):
    counts = np.bincount(train.b[train.y == y], minlength=num_biases)
    if not counts.sum():
      raise ValueError(f"class {y} has no train images; cannot infer its "
                       "majority bias.")
    out.append(int(np.argmax(counts)))
  return tuple(out)


# --- What python -m ffr_jax.data_summary prints -------------------------------------


def _achieved(splits: DatasetSplits) -> dict[str, dict[str, float | None]]:
  out = {}
  for split in ("train", "val"):
    ratios = bias.achieved_ratio(splits.spec, splits.split(split))
    out[split] = {splits.spec.class_names[y]: (None if math.isnan(r) else r)
                  for y, r in ratios.items()}
  return out


def splits_summary(splits: DatasetSplits, ratio: float) -> dict:
  """The JSON-ready summary of loaded splits (``python -m ffr_jax.data_summary --json``)."""
  return {
      "dataset": splits.spec.name,
      "bias_ratio": float(ratio),
      "splits": {s: group_table(splits.spec, splits.split(s)) for s in SPLITS},
      "achieved_ratio": _achieved(splits),
      "skipped": dict(splits.skipped),
  }


def splits_table(splits: DatasetSplits, ratio: float) -> str:
  """A plain-text table of the group counts per split (``python -m ffr_jax.data_summary``)."""
  spec = splits.spec
  names = [spec.group_name(g) + ("  (majority)" if spec.is_majority(y, b) else "")
           for g, (y, b) in enumerate(spec.groups)]
  width = max(len(n) for n in names + ["group", "total"])
  head = f"{'group':<{width}} " + " ".join(f"{s:>8}" for s in SPLITS)
  lines = [f"{spec.name}, bias ratio {ratio}", head, "-" * len(head)]
  for name, (y, b) in zip(names, spec.groups):
    counts = " ".join(f"{splits.split(s).count(y, b):>8d}" for s in SPLITS)
    lines.append(f"{name:<{width}} {counts}")
  totals = " ".join(f"{len(splits.split(s)):>8d}" for s in SPLITS)
  lines += ["-" * len(head), f"{'total':<{width}} {totals}", ""]
  lines.append("achieved bias ratio (majority share of each class):")
  for split, per_class in _achieved(splits).items():
    shown = ", ".join(f"{c}: {'-' if r is None else f'{r:.4f}'}"
                      for c, r in per_class.items())
    lines.append(f"  {split}: {shown}")
  lines.append("skipped: " + (", ".join(
      f"{k}={v}" for k, v in sorted(splits.skipped.items())) or "none"))
  for reason, files in sorted(splits.skipped_files.items()):
    lines.append(f"  {reason}, e.g. {', '.join(files[:3])}")
  return "\n".join(lines)
