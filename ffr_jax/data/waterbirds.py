"""Waterbirds in its official layout (:data:`LAYOUT`) -> :class:`DatasetSplits`.

Official train is 95% biased (3498/184 landbirds, 1057/56 waterbirds on
land/water); val and test are group-balanced within each class. The bias
ratio then applies to train; val stays official unless ``data.bias_val``.
"""

from __future__ import annotations

import csv
import os

from ffr_jax.data import layouts
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples

DATASET_DIR = "waterbird_complete95_forest2water2"
METADATA = "metadata.csv"
COLUMNS = ("img_filename", "y", "split", "place")
SPLIT_IDS = {0: "train", 1: "val", 2: "test"}

SPEC = DatasetSpec(
    name="waterbirds",
    class_names=("landbird", "waterbird"),
    bias_names=("land", "water"),
    groups=((0, 0), (0, 1), (1, 0), (1, 1)),
    majority_bias=(0, 1),
)

LAYOUT = (f"root/{DATASET_DIR}/{METADATA}  (columns img_id,img_filename,y,"
          "split,place,place_filename; y 0 landbird / 1 waterbird; place 0 "
          "land / 1 water; split 0/1/2 = train/val/test)\n"
          f"root/{DATASET_DIR}/<img_filename>  (e.g. 001.Black_footed_Albatross/"
          "Black_Footed_Albatross_0009_34.jpg)")


def _dataset_dir(root: str) -> str:
  """The dataset folder; FileNotFoundError naming the layout if absent."""
  base = os.path.join(root, DATASET_DIR)
  if os.path.isdir(base):
    return base
  hint = (f" {root} itself holds {METADATA}: pass its parent folder."
          if os.path.isfile(os.path.join(root, METADATA)) else "")
  raise FileNotFoundError(
      f"Waterbirds folder {base} is not a directory.{hint} Expected:\n{LAYOUT}")


def _int_field(row: dict, column: str, allowed, where: str) -> int:
  """``row[column]`` as an int in ``allowed``; ValueError naming the line."""
  text = (row.get(column) or "").strip()
  try:
    value = int(text)
  except ValueError:
    value = None
  if value not in allowed:
    raise ValueError(
        f"{where}: column {column!r} must be one of {sorted(allowed)}, found "
        f"{text!r}.")
  return value


def read_metadata(path: str) -> list[tuple[str, int, int, str]]:
  """Rows of ``metadata.csv`` as ``(img_filename, y, place, split name)``."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"Waterbirds metadata {path} is missing. Expected:\n{LAYOUT}")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    header = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
      raise ValueError(
          f"{path}:1: missing column(s) {missing}; found {header}. "
          f"Expected:\n{LAYOUT}")
    reader.fieldnames = header
    rows = []
    for row in reader:
      where = f"{path}:{reader.line_num}"
      name = (row["img_filename"] or "").strip()
      if not name:
        raise ValueError(f"{where}: empty img_filename.")
      y = _int_field(row, "y", (0, 1), where)
      place = _int_field(row, "place", (0, 1), where)
      split = _int_field(row, "split", tuple(SPLIT_IDS), where)
      rows.append((name, y, place, SPLIT_IDS[split]))
  return rows


def load(root: str, split_seed: int = 0) -> DatasetSplits:
  """The official splits; rows whose image is missing are counted under
  ``"missing_image"``."""
  del split_seed  # metadata.csv defines the splits.
  base = _dataset_dir(os.path.abspath(root))
  rows = read_metadata(os.path.join(base, METADATA))
  columns = {s: ([], [], []) for s in layouts.SPLITS}
  missing = []
  for name, y, place, split in rows:
    path = os.path.join(base, name)
    if not os.path.isfile(path):
      missing.append(path)
      continue
    for column, value in zip(columns[split], (path, y, place)):
      column.append(value)
  splits = {s: Examples.from_lists(*c).sorted() for s, c in columns.items()}
  layouts.require_every_group(SPEC, splits, base)
  return layouts.dataset_splits(SPEC, {"missing_image": missing}, **splits)
