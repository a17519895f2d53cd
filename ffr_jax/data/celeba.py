"""CelebA in its official layout (:data:`LAYOUT`) -> :class:`DatasetSplits`.

Target and bias are two attribute columns (``data.target_attribute``,
``data.bias_attribute``). Each class's majority bias is ``data.majority``
(``"class:bias,..."``) or, when empty, the value with the most official train
images of the class. The official partition is used; as for CelebA-HQ, train
and val are first brought to the authors' 90% pre-bias.
"""

from __future__ import annotations

import os

from ffr_jax.data import layouts
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples

NAME = "celeba"
IMAGE_DIR = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
PARTITION_IDS = {"0": "train", "1": "val", "2": "test"}
OPTIONS = (("target", "target_attribute"), ("bias", "bias_attribute"),
           ("majority", "majority"), ("bias_val", "bias_val"))
# Words for the value 0 and 1 of attributes whose generic "not x" / "x" reads
# badly in a prompt ("A photo of male blond").
_VALUE_WORDS = {
    "Male": ("female", "male"),
    "Blond_Hair": ("not blond", "blond"),
    "Young": ("old", "young"),
}

LAYOUT = (f"root/{IMAGE_DIR}/*.jpg\n"
          f"root/{ATTRIBUTE_FILE}  (line 1: image count; line 2: 40 attribute "
          "names; then rows: file name + 40 values in {-1,1})\n"
          f"root/{PARTITION_FILE}  (rows: file name + 0|1|2 = train/val/test)")


def attribute_values(attribute: str) -> tuple[str, str]:
  """Names of an attribute's values 0 and 1: ``Smiling`` -> not smiling/smiling."""
  if attribute in _VALUE_WORDS:
    return _VALUE_WORDS[attribute]
  words = attribute.replace("_", " ").lower()
  return f"not {words}", words


def _spec(target: str, bias: str, majority: tuple[int, ...]) -> DatasetSpec:
  return DatasetSpec(
      name=NAME, class_names=attribute_values(target),
      bias_names=attribute_values(bias),
      groups=((0, 0), (0, 1), (1, 0), (1, 1)), majority_bias=majority)


def _check_attributes(target: str, bias: str) -> None:
  if not target or not bias or target == bias:
    raise ValueError(
        f"data.target_attribute={target!r} and data.bias_attribute={bias!r} "
        "must name two different CelebA attributes (e.g. Blond_Hair, Male).")


def read_partition(path: str) -> dict[str, str]:
  """``file -> train|val|test`` from ``list_eval_partition.txt``."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"CelebA partition file {path} is missing. Expected:\n{LAYOUT}")
  out = {}
  with open(path) as f:
    for lineno, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != 2 or fields[1] not in PARTITION_IDS:
        raise ValueError(
            f"{path}:{lineno}: expected 'file 0|1|2' (train/val/test), found "
            f"{line.strip()!r}.")
      if fields[0] in out:
        raise ValueError(f"{path}:{lineno}: image {fields[0]!r} is listed twice.")
      out[fields[0]] = PARTITION_IDS[fields[1]]
  return out


def _read(root: str, target: str, bias: str
          ) -> tuple[dict[str, Examples], list[str]]:
  """The official splits before any bias, and the paths of missing images."""
  _check_attributes(target, bias)
  root = os.path.abspath(root)
  labels, paths, missing = layouts.read_attribute_images(
      "CelebA", root, IMAGE_DIR, ATTRIBUTE_FILE, (target, bias), LAYOUT)
  partition = read_partition(os.path.join(root, PARTITION_FILE))
  unsplit = sorted(set(labels) - set(partition))
  if unsplit:
    raise ValueError(
        f"{len(unsplit)} images of {ATTRIBUTE_FILE} have no row in "
        f"{PARTITION_FILE}, e.g. {unsplit[:3]}.")
  columns = {s: ([], [], []) for s in layouts.SPLITS}
  for name, path in paths.items():
    for column, value in zip(columns[partition[name]], (path, *labels[name])):
      column.append(value)
  splits = {s: Examples.from_lists(*c) for s, c in columns.items()}
  layouts.require_every_group(_spec(target, bias, (0, 0)), splits, root)
  return splits, missing


def _majority(text: str, target: str, bias: str, train: Examples
              ) -> tuple[int, ...]:
  if text:
    return layouts.parse_majority(text, attribute_values(target),
                                  attribute_values(bias))
  return layouts.infer_majority(train, 2, 2)


def make_spec(root: str, target: str, bias: str, majority: str,
              bias_val: bool = True) -> DatasetSpec:
  """The spec for these attributes; reads the data only to infer the majority."""
  del bias_val
  _check_attributes(target, bias)
  if majority:
    return _spec(target, bias, _majority(majority, target, bias, None))
  return load(root, 0, target, bias, majority).spec


def load(root: str, split_seed: int = 0, target: str = "Blond_Hair",
         bias: str = "Male", majority: str = "", bias_val: bool = True
         ) -> DatasetSplits:
  """Official partition, 90% pre-bias of train (and of val when ``bias_val``);
  rows whose image is missing are counted under ``"missing_image"``."""
  splits, missing = _read(root, target, bias)
  spec = _spec(target, bias, _majority(majority, target, bias, splits["train"]))
  train, val = layouts.prebias(spec, splits["train"], splits["val"], split_seed)
  if not bias_val:
    val = splits["val"]
  return layouts.dataset_splits(spec, {"missing_image": missing}, train=train,
                                val=val, test=splits["test"])
