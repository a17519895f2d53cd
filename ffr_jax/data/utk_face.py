"""UTKFace in its official layout -> :class:`DatasetSplits`.

The layout (docs/reference.md, "UTKFace") is one flat folder of files named
``[age]_[gender]_[race]_[date&time].jpg.chip.jpg`` (gender 0 male, 1 female).

Target ``y`` = gender; bias ``b`` = age: 0 "old" (20 <= age <= 50), 1 "young"
(age <= 5); other ages are dropped. A few real files have malformed names (a
missing field); they are skipped and counted, never fatal. Splits are 80/10/10
seeded, then train and val are pre-biased to 90% as for CelebA-HQ.
"""

from __future__ import annotations

import dataclasses
import os

from ffr_jax.data import layouts
from ffr_jax.data.images import is_image_file
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples

OLD_AGES = (20, 50)   # inclusive range of b = 0 ("old")
YOUNG_MAX_AGE = 5     # b = 1 ("young") is age <= 5

SPEC = DatasetSpec(
    name="utk_face",
    class_names=("male", "female"),
    bias_names=("old", "young"),
    groups=((0, 0), (0, 1), (1, 0), (1, 1)),
    # Male goes with young, female with old (docs/reference.md, "UTKFace").
    majority_bias=(1, 0),
)

LAYOUT = ("root/[age]_[gender]_[race]_[date&time].jpg.chip.jpg  (one flat "
          "folder; gender 0 male, 1 female; e.g. root/26_0_1_20170116.jpg.chip.jpg)")


@dataclasses.dataclass(frozen=True)
class FaceName:
  """The labels encoded in a UTKFace file name."""
  age: int
  gender: int
  race: int


def parse_name(name: str) -> FaceName | None:
  """Parses ``[age]_[gender]_[race]_[date&time]...``; None if malformed.

  Malformed: fewer than four ``_``-separated fields, a non-integer age, gender
  or race, or a gender other than 0/1.
  """
  fields = name.split("_")
  if len(fields) < 4 or not fields[3]:
    return None
  try:
    age, gender, race = (int(f) for f in fields[:3])
  except ValueError:
    return None
  if gender not in (0, 1) or age < 0:
    return None
  return FaceName(age=age, gender=gender, race=race)


def age_bias(age: int) -> int | None:
  """The bias value of an age: 0 old, 1 young, None if the age is dropped."""
  if OLD_AGES[0] <= age <= OLD_AGES[1]:
    return 0
  if age <= YOUNG_MAX_AGE:
    return 1
  return None


def _check_root(root: str) -> list[str]:
  """The root's entries, sorted; FileNotFoundError naming the layout if absent."""
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f"UTKFace root {root} is not a directory. Expected:\n{LAYOUT}")
  # Sorted so the result never depends on the file system's listing order.
  return sorted(os.listdir(root))


def _no_images_error(root: str, entries: list[str]) -> ValueError:
  """The error for a root with no usable image, with a hint at subfolders."""
  subdirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
  hint = (f" It has subfolders {subdirs[:5]}: pass the folder that holds the "
          "images itself." if subdirs else "")
  return ValueError(
      f"{root} holds no UTKFace images with well-formed names.{hint} "
      f"Expected:\n{LAYOUT}")


def load(root: str, split_seed: int = 0) -> DatasetSplits:
  """Loads UTKFace from ``root``: seeded 80/10/10 split, 90% pre-bias.

  Skip reasons: ``"malformed_name"``, ``"age_out_of_range"`` (ages the paper
  does not use) and ``"not_an_image_file"``.

  Raises:
    FileNotFoundError: ``root`` is missing.
    ValueError: no well-formed image names, or a group without images in a
      split.
  """
  root = os.path.abspath(root)
  entries = _check_root(root)
  skipped: dict[str, list[str]] = {}
  paths, ys, bs = [], [], []
  for name in entries:
    path = os.path.join(root, name)
    if not (is_image_file(name) and os.path.isfile(path)):
      if not os.path.isdir(path):
        skipped.setdefault("not_an_image_file", []).append(path)
      continue
    face = parse_name(name)
    if face is None:
      skipped.setdefault("malformed_name", []).append(path)
      continue
    b = age_bias(face.age)
    if b is None:
      skipped.setdefault("age_out_of_range", []).append(path)
      continue
    paths.append(path)
    ys.append(face.gender)
    bs.append(b)
  if not paths and not skipped.get("age_out_of_range"):
    raise _no_images_error(root, entries)
  examples = Examples.from_lists(paths, ys, bs)
  train, val, test = layouts.split_and_prebias(SPEC, examples, split_seed, root)
  return layouts.dataset_splits(SPEC, skipped, train=train, val=val, test=test)
