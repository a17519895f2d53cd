"""UTKFace (docs/reference.md): ``y`` = gender, ``b`` = age, 0 old (20-50),
1 young (<= 5), other ages dropped. Malformed names (real files have some) are
skipped and counted. Seeded 80/10/10 split, train and val pre-biased to 90%.
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
  age: int
  gender: int
  race: int


def parse_name(name: str) -> FaceName | None:
  """Parses ``[age]_[gender]_[race]_[date&time]...``; None if malformed."""
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
  if OLD_AGES[0] <= age <= OLD_AGES[1]:
    return 0
  if age <= YOUNG_MAX_AGE:
    return 1
  return None


def _check_root(root: str) -> list[str]:
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f"UTKFace root {root} is not a directory. Expected:\n{LAYOUT}")
  return sorted(os.listdir(root))


def _no_images_error(root: str, entries: list[str]) -> ValueError:
  subdirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
  hint = (f" It has subfolders {subdirs[:5]}: pass the folder that holds the "
          "images itself." if subdirs else "")
  return ValueError(
      f"{root} holds no UTKFace images with well-formed names.{hint} "
      f"Expected:\n{LAYOUT}")


def load(root: str, split_seed: int = 0) -> DatasetSplits:
  """UTKFace from ``root``; skip reasons ``malformed_name``, ``age_out_of_range``,
  ``not_an_image_file``."""
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
