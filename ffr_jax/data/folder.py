"""Any folder of biased images (:data:`LAYOUT`) -> :class:`DatasetSplits`.

Class and bias names are the folder names, sorted; the groups are the
``(class, bias)`` folders, which must be the same in every split. The majority
bias of each class is ``data.majority`` (``"class_a:bias_x,class_b:bias_y"``)
or, when empty, the bias with the most train images of the class (the loader
logs which). The spec is built here, from the folder, when the data is loaded
(:func:`make_spec`); everything downstream sees an ordinary
:class:`DatasetSpec` named ``"folder"``.

The split folders are the splits; ``load_dataset`` applies the configured bias
ratio to train and val with the authors' minority-dropping rule, as for SpuCo
Animals.
"""

from __future__ import annotations

import os

from absl import logging

from ffr_jax.data import layouts
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples

NAME = "folder"
# load/make_spec keyword -> key under config.data (configs/folder.py).
OPTIONS = (("majority", "majority"),)
LAYOUT = ("root/{train,val,test}/{class}/{bias}/*.{jpg,jpeg,png}  (the same "
          "class and bias folders in every split)")

# split -> class -> bias folder names.
Tree = dict[str, dict[str, list[str]]]


def _subfolders(path: str) -> list[str]:
  return sorted(e for e in os.listdir(path)
                if os.path.isdir(os.path.join(path, e)))


def scan(root: str) -> Tree:
  """The class and bias folders of every split."""
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f"Folder dataset root {root} is not a directory. Expected:\n{LAYOUT}")
  tree: Tree = {}
  for split in layouts.SPLITS:
    base = os.path.join(root, split)
    if not os.path.isdir(base):
      raise FileNotFoundError(
          f"Folder dataset: split folder {base} is missing. Expected:\n{LAYOUT}")
    tree[split] = {c: _subfolders(os.path.join(base, c))
                   for c in _subfolders(base)}
  if not tree["train"]:
    raise ValueError(f"{root}/train has no class folders. Expected:\n{LAYOUT}")
  empty = [c for c, bs in tree["train"].items() if not bs]
  if empty:
    raise ValueError(f"{root}/train/{empty[0]} has no bias folders. "
                     f"Expected:\n{LAYOUT}")
  for split in layouts.SPLITS[1:]:
    _same_folders(root, tree["train"], split, tree[split])
  return tree


def _same_folders(root: str, train: dict[str, list[str]], split: str,
                  other: dict[str, list[str]]) -> None:
  """ValueError naming the first class or bias folder one split lacks."""
  for cls in sorted(set(train) | set(other)):
    if cls not in other or cls not in train:
      lacking = split if cls not in other else "train"
      raise ValueError(
          f"Folder dataset: class folder {cls!r} is missing from "
          f"{os.path.join(root, lacking)}; every split needs the same class "
          f"folders. Expected:\n{LAYOUT}")
    for b in sorted(set(train[cls]) ^ set(other[cls])):
      lacking = split if b not in other[cls] else "train"
      raise ValueError(
          f"Folder dataset: bias folder {os.path.join(lacking, cls, b)} is "
          f"missing under {root}; every split needs the same bias folders. "
          f"Expected:\n{LAYOUT}")


def _names(tree: Tree) -> tuple[tuple[str, ...], tuple[str, ...],
                                tuple[tuple[int, int], ...]]:
  """Class names, bias names and groups of a scanned tree."""
  classes = tuple(sorted(tree["train"]))
  biases = tuple(sorted({b for bs in tree["train"].values() for b in bs}))
  groups = tuple((y, biases.index(b)) for y, c in enumerate(classes)
                 for b in tree["train"][c])
  return classes, biases, groups


def _read_split(root: str, split: str, classes, biases, groups,
                skipped: dict[str, list[str]]) -> Examples:
  paths, ys, bs = [], [], []
  for y, b in groups:
    found = layouts.list_images(
        os.path.join(root, split, classes[y], biases[b]), skipped)
    paths += found
    ys += [y] * len(found)
    bs += [b] * len(found)
  return Examples.from_lists(paths, ys, bs).sorted()


def _majority(text: str, classes, biases, train: Examples | None
              ) -> tuple[int, ...]:
  if text:
    return layouts.parse_majority(text, classes, biases)
  majority = layouts.infer_majority(train, len(classes), len(biases))
  logging.info("folder: data.majority is empty; majority bias per class "
               "inferred from the train counts: %s", ", ".join(
                   f"{c}:{biases[b]}" for c, b in zip(classes, majority)))
  return majority


def _spec(classes, biases, groups, majority) -> DatasetSpec:
  return DatasetSpec(name=NAME, class_names=classes, bias_names=biases,
                     groups=groups, majority_bias=majority)


def make_spec(root: str, majority: str = "") -> DatasetSpec:
  """The spec of the folder at ``root`` (lists train only to infer a majority)."""
  root = os.path.abspath(root)
  classes, biases, groups = _names(scan(root))
  train = None if majority else _read_split(root, "train", classes, biases,
                                            groups, {})
  return _spec(classes, biases, groups,
               _majority(majority, classes, biases, train))


def load(root: str, split_seed: int = 0, majority: str = "") -> DatasetSplits:
  """Loads the folder dataset at ``root`` with its split folders."""
  del split_seed  # The split folders are the splits.
  root = os.path.abspath(root)
  classes, biases, groups = _names(scan(root))
  skipped: dict[str, list[str]] = {}
  splits = {s: _read_split(root, s, classes, biases, groups, skipped)
            for s in layouts.SPLITS}
  # Checked before the majority is inferred, which needs every class in train.
  first_bias = tuple(next(b for gy, b in groups if gy == y)
                     for y in range(len(classes)))
  layouts.require_every_group(_spec(classes, biases, groups, first_bias),
                              splits, root)
  spec = _spec(classes, biases, groups,
               _majority(majority, classes, biases, splits["train"]))
  return layouts.dataset_splits(spec, skipped, **splits)
