"""CelebA-HQ (CelebAMask-HQ layout, docs/reference.md): ``y = Smiling``,
``b = Male``.

No official split: the authors split by ``os.listdir`` order (not
reproducible); we split the path-sorted rows by a seeded permutation, then
pre-bias train and val to 90% as they did.
"""

from __future__ import annotations

import os

from ffr_jax.data import layouts
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples

IMAGE_DIR = "CelebA-HQ-img"
ANNOTATION_FILE = "CelebAMask-HQ-attribute-anno.txt"
TARGET_ATTRIBUTE = "Smiling"
BIAS_ATTRIBUTE = "Male"

SPEC = DatasetSpec(
    name="celeba_hq",
    class_names=("not smiling", "smiling"),
    bias_names=("female", "male"),
    groups=((0, 0), (0, 1), (1, 0), (1, 1)),
    # Not smiling goes with male, smiling with female (docs/reference.md, "CelebA-HQ").
    majority_bias=(1, 0),
)

LAYOUT = (f"root/{IMAGE_DIR}/{{0..29999}}.jpg\n"
          f"root/{ANNOTATION_FILE}  (line 1: image count; line 2: 40 attribute "
          "names incl. Smiling and Male; then rows: file name + 40 values in "
          "{-1,1})")


def load(root: str, split_seed: int = 0) -> DatasetSplits:
  """CelebA-HQ from ``root``; rows with a missing image are skipped and counted."""
  root = os.path.abspath(root)
  labels, paths, missing = layouts.read_attribute_images(
      "CelebA-HQ", root, IMAGE_DIR, ANNOTATION_FILE,
      (TARGET_ATTRIBUTE, BIAS_ATTRIBUTE), LAYOUT)
  if not paths:
    raise ValueError(
        f"None of the {len(labels)} images listed in "
        f"{os.path.join(root, ANNOTATION_FILE)} exist in "
        f"{os.path.join(root, IMAGE_DIR)}. Expected:\n{LAYOUT}")
  ys, bs = zip(*(labels[name] for name in paths))
  examples = Examples.from_lists(list(paths.values()), ys, bs)
  train, val, test = layouts.split_and_prebias(SPEC, examples, split_seed, root)
  return layouts.dataset_splits(SPEC, {"missing_image": missing}, train=train,
                                val=val, test=test)

