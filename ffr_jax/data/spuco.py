"""SpuCo Animals in its official layout (docs/reference.md, "SpuCo Animals").

The split folders are the splits. :data:`SPEC`'s names are prompt words
("small dog"); :data:`FOLDERS` maps each group to the differing folder names
("small_dogs"). The built-in benchmark renders into the same layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ffr_jax.data import layouts
from ffr_jax.data.layouts import SPLITS
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples

SPEC = DatasetSpec(
    name="spuco_animals",
    class_names=("landbird", "waterbird", "small dog", "big dog"),
    bias_names=("land", "water", "indoors", "outdoors"),
    groups=((0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3)),
    majority_bias=(0, 1, 2, 3),
)

# (y, b) -> (subset folder, class folder, bias folder) inside each split.
Folders = Mapping[tuple[int, int], tuple[str, str, str]]
FOLDERS: Folders = {
    (0, 0): ("spuco_birds", "landbirds", "land"),
    (0, 1): ("spuco_birds", "landbirds", "water"),
    (1, 0): ("spuco_birds", "waterbirds", "land"),
    (1, 1): ("spuco_birds", "waterbirds", "water"),
    (2, 2): ("spuco_dogs", "small_dogs", "indoor"),
    (2, 3): ("spuco_dogs", "small_dogs", "outdoor"),
    (3, 2): ("spuco_dogs", "big_dogs", "indoor"),
    (3, 3): ("spuco_dogs", "big_dogs", "outdoor"),
}


def _unique(items) -> list[str]:
  return list(dict.fromkeys(items))


def layout_description(root: str = "root", folders: Folders = FOLDERS) -> str:
  """The expected layout, one line per subset folder."""
  lines = []
  for subset in _unique(s for s, _, _ in folders.values()):
    classes = _unique(c for s, c, _ in folders.values() if s == subset)
    biases = _unique(b for s, _, b in folders.values() if s == subset)
    lines.append(
        f"{root}/{subset}/{{{','.join(SPLITS)}}}/{{{','.join(classes)}}}/"
        f"{{{','.join(biases)}}}/*.{{jpg,png}}")
  return "\n".join(lines)


LAYOUT = layout_description()


def _check_folders(root: str, folders: Folders) -> None:
  layout = layout_description(root, folders)
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f"SpuCo-layout root {root!r} is not a directory. Expected:\n{layout}")
  missing = [
      os.path.join(subset, split, cls, bias)
      for split in SPLITS
      for subset, cls, bias in folders.values()
      if not os.path.isdir(os.path.join(root, subset, split, cls, bias))
  ]
  if missing:
    shown = "\n  ".join(missing[:8])
    more = f"\n  ... and {len(missing) - 8} more" if len(missing) > 8 else ""
    raise FileNotFoundError(
        f"{root} is not in the SpuCo layout: {len(missing)} of "
        f"{len(SPLITS) * len(folders)} expected folders are missing:\n  {shown}"
        f"{more}\nExpected:\n{layout}")


def load_spuco_layout(root: str, spec: DatasetSpec = SPEC, split_seed: int = 0,
                      folders: Folders = FOLDERS) -> DatasetSplits:
  """The official splits of a root in the SpuCo layout, rows sorted by path;
  ``split_seed`` is unused (the loader signature)."""
  del split_seed  # The official folders define the splits.
  if set(spec.groups) != set(folders):
    raise ValueError(
        f"{spec.name}: groups {spec.groups} do not match the SpuCo folder "
        f"mapping's groups {tuple(folders)}.")
  root = os.path.abspath(root)
  _check_folders(root, folders)
  skipped: dict[str, list[str]] = {}
  splits = {}
  for split in SPLITS:
    paths, ys, bs = [], [], []
    for y, b in spec.groups:
      subset, cls, bias = folders[(y, b)]
      folder = os.path.join(root, subset, split, cls, bias)
      found = layouts.list_images(folder, skipped)
      if not found:
        raise ValueError(
            f"{spec.name}: group {spec.group_name(spec.group_index(y, b))} "
            f"(y={y}, b={b}) has no images in split {split!r}: {folder} holds "
            f"no .jpg/.jpeg/.png files. Expected:\n"
            f"{layout_description(root, folders)}")
      paths += found
      ys += [y] * len(found)
      bs += [b] * len(found)
    splits[split] = Examples.from_lists(paths, ys, bs).sorted()
  return layouts.dataset_splits(spec, skipped, **splits)


def load(root: str, split_seed: int = 0) -> DatasetSplits:
  """Loads SpuCo Animals from ``root`` (the registry's loader signature)."""
  return load_spuco_layout(root, SPEC, split_seed)
