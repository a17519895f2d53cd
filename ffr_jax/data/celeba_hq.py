"""CelebA-HQ (from CelebAMask-HQ) in its official layout -> :class:`DatasetSplits`.

The layout (REFERENCE.md, "CelebA-HQ")::

    root/CelebA-HQ-img/{0..29999}.jpg
    root/CelebAMask-HQ-attribute-anno.txt

The attribute file: line 1 = the number of images, line 2 = the 40 attribute
names, then one row per image: file name and 40 values in {-1, 1}. We read
``y = Smiling`` and ``b = Male``.

There is no official split. The authors split 80/10/10 by ``os.listdir`` order,
which is not reproducible; we split the path-sorted rows by a seeded
permutation (:func:`ffr_jax.data.bias.seeded_split`). As the authors did, train
and val are then brought to a 90% bias ("pre-bias") before the configured bias
ratio is applied; test is never changed.
"""

from __future__ import annotations

import os

from ffr_jax.data import bias
from ffr_jax.data.spuco import skip_summary
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples

IMAGE_DIR = "CelebA-HQ-img"
ANNOTATION_FILE = "CelebAMask-HQ-attribute-anno.txt"
TARGET_ATTRIBUTE = "Smiling"
BIAS_ATTRIBUTE = "Male"
# The authors' bias before the configured ratio is applied to train and val.
PRE_BIAS_RATIO = 0.90
# Keeps the pre-bias draws apart from the later bias_splits draws, which use
# split_seed and split_seed + 1.
_PRE_BIAS_SEED_OFFSET = 7919

SPEC = DatasetSpec(
    name="celeba_hq",
    class_names=("not smiling", "smiling"),
    bias_names=("female", "male"),
    groups=((0, 0), (0, 1), (1, 0), (1, 1)),
    # Not smiling goes with male, smiling with female (REFERENCE.md).
    majority_bias=(1, 0),
)

LAYOUT = (f"root/{IMAGE_DIR}/{{0..29999}}.jpg\n"
          f"root/{ANNOTATION_FILE}  (line 1: image count; line 2: 40 attribute "
          "names incl. Smiling and Male; then rows: file name + 40 values in "
          "{-1,1})")


def split_and_prebias(spec: DatasetSpec, examples: Examples, split_seed: int,
                      where: str) -> tuple[Examples, Examples, Examples]:
  """Seeded 80/10/10 split, then train and val pre-biased to 90%.

  Shared by the datasets without official splits (CelebA-HQ, UTKFace). Val
  keeps at least ``bias.MIN_VAL_PER_GROUP`` per group, as in ``bias_splits``.

  Args:
    spec: names, groups and majority biases.
    examples: every usable example of the dataset.
    split_seed: seeds the split and which minority examples are dropped.
    where: the dataset root, for error messages.

  Returns:
    ``(train, val, test)``.

  Raises:
    ValueError: some group has no example in some split.
  """
  train, val, test = bias.seeded_split(examples, split_seed)
  require_every_group(spec, {"train": train, "val": val, "test": test}, where)
  seed = split_seed + _PRE_BIAS_SEED_OFFSET
  # The authors floor the count to keep in this step; only so do the 90%
  # counts match theirs: 592/866 (CelebA-HQ), 103/636 (UTKFace).
  train = bias.apply_bias_ratio(spec, train, PRE_BIAS_RATIO, seed,
                                floor_keep=True)
  val = bias.apply_bias_ratio(spec, val, PRE_BIAS_RATIO, seed + 1,
                              min_per_group=bias.MIN_VAL_PER_GROUP,
                              floor_keep=True)
  return train, val, test


def require_every_group(spec: DatasetSpec, splits: dict[str, Examples],
                        where: str) -> None:
  """Raises ValueError naming the first (split, group) pair with no examples.

  A group missing from a split would make worst-group accuracy undefined and
  the bias rule meaningless, so it is an error at load time.
  """
  for split, examples in splits.items():
    for g, (y, b) in enumerate(spec.groups):
      if examples.count(y, b) == 0:
        raise ValueError(
            f"{spec.name}: group {spec.group_name(g)} (y={y}, b={b}) has no "
            f"images in split {split!r} (data at {where}). Every group needs "
            "images in train, val and test.")


def _parse_header(lines: list[str], path: str) -> tuple[int, list[str]]:
  """Returns (declared row count, attribute names) from the first two lines."""
  if len(lines) < 2:
    raise ValueError(
        f"{path}: expected at least 2 header lines (image count, attribute "
        f"names), found {len(lines)}. Expected layout:\n{LAYOUT}")
  try:
    declared = int(lines[0].strip())
  except ValueError:
    raise ValueError(
        f"{path}:1: expected the number of images, found {lines[0].strip()!r}."
    ) from None
  names = lines[1].split()
  for attr in (TARGET_ATTRIBUTE, BIAS_ATTRIBUTE):
    if attr not in names:
      raise ValueError(
          f"{path}:2: attribute {attr!r} is missing from the attribute names "
          f"{names}.")
  if len(set(names)) != len(names):
    raise ValueError(f"{path}:2: attribute names repeat: {names}.")
  return declared, names


def _parse_row(line: str, lineno: int, num_attrs: int, path: str
               ) -> tuple[str, list[int]]:
  """Returns (file name, attribute values as 0/1) of one annotation row."""
  fields = line.split()
  if len(fields) != num_attrs + 1:
    raise ValueError(
        f"{path}:{lineno}: expected a file name and {num_attrs} values, found "
        f"{len(fields)} fields.")
  try:
    values = [int(v) for v in fields[1:]]
  except ValueError:
    raise ValueError(
        f"{path}:{lineno}: attribute values must be -1 or 1: {fields[1:]}."
    ) from None
  if any(v not in (-1, 1) for v in values):
    raise ValueError(
        f"{path}:{lineno}: attribute values must be -1 or 1: {fields[1:]}.")
  return fields[0], [int(v == 1) for v in values]


def read_annotations(path: str) -> dict[str, tuple[int, int]]:
  """Parses the attribute file into ``file name -> (smiling, male)``.

  Raises:
    ValueError: with the line number, for a bad header, a malformed row, a
      file listed twice, or a row count that differs from line 1.
  """
  with open(path) as f:
    lines = f.read().splitlines()
  declared, names = _parse_header(lines, path)
  iy, ib = names.index(TARGET_ATTRIBUTE), names.index(BIAS_ATTRIBUTE)
  labels = {}
  for lineno, line in enumerate(lines[2:], start=3):
    if not line.strip():
      continue
    name, values = _parse_row(line, lineno, len(names), path)
    if name in labels:
      raise ValueError(f"{path}:{lineno}: image {name!r} is listed twice.")
    labels[name] = (values[iy], values[ib])
  if len(labels) != declared:
    raise ValueError(
        f"{path}: line 1 says {declared} images but {len(labels)} rows follow; "
        "the file is truncated or edited.")
  return labels


def load(root: str, split_seed: int = 0) -> DatasetSplits:
  """Loads CelebA-HQ from ``root``: seeded 80/10/10 split, 90% pre-bias.

  Rows whose image file is missing are skipped and counted under
  ``"missing_image"``.

  Raises:
    FileNotFoundError: ``root``, the image folder or the attribute file is
      missing.
    ValueError: a malformed attribute file, or a group with no images in a
      split.
  """
  root = os.path.abspath(root)
  image_dir = os.path.join(root, IMAGE_DIR)
  anno = os.path.join(root, ANNOTATION_FILE)
  for p, kind in ((root, "root"), (image_dir, "image folder")):
    if not os.path.isdir(p):
      raise FileNotFoundError(
          f"CelebA-HQ {kind} {p} is not a directory. Expected:\n{LAYOUT}")
  if not os.path.isfile(anno):
    raise FileNotFoundError(
        f"CelebA-HQ attribute file {anno} is missing. Expected:\n{LAYOUT}")
  labels = read_annotations(anno)
  # One listing instead of 30000 stat calls.
  on_disk = set(os.listdir(image_dir))
  paths, ys, bs, missing = [], [], [], []
  for name in sorted(labels):
    path = os.path.join(image_dir, name)
    if name not in on_disk:
      missing.append(path)
      continue
    paths.append(path)
    ys.append(labels[name][0])
    bs.append(labels[name][1])
  if not paths:
    raise ValueError(
        f"None of the {len(labels)} images listed in {anno} exist in "
        f"{image_dir}. Expected:\n{LAYOUT}")
  examples = Examples.from_lists(paths, ys, bs)
  train, val, test = split_and_prebias(SPEC, examples, split_seed, root)
  counts, files = skip_summary({"missing_image": missing})
  return DatasetSplits(spec=SPEC, train=train, val=val, test=test,
                       skipped=counts, skipped_files=files)

