"""Writers of tiny fake datasets in the official on-disk layouts, for tests.

Every image is a valid 8x8 JPEG or PNG. Encoded bytes are made once per
(format, colour) and copied, so writing a few thousand files takes well under a
second.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ffr_jax.data import spuco

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs "
    "Big_Lips Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows "
    "Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin "
    "Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young").split()


@functools.lru_cache(maxsize=None)
def _encoded(ext: str, colour: int) -> bytes:
  """An 8x8 image of one colour, encoded as ``ext`` (jpg or png)."""
  pixels = np.zeros((8, 8, 3), np.uint8)
  pixels[..., colour % 3] = 40 + 50 * (colour % 4)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG" if ext == "png" else "JPEG")
  return buf.getvalue()


def write_image(path: str, colour: int = 0) -> str:
  """Writes a tiny valid image; the format follows the extension."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ext = "png" if path.lower().endswith(".png") else "jpg"
  with open(path, "wb") as f:
    f.write(_encoded(ext, colour))
  return path


def corrupt(path: str) -> str:
  """Overwrites ``path`` with bytes no image decoder accepts."""
  with open(path, "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 this is not a jpeg" * 3)
  return path


def write_spuco_tree(root: str,
                     majority: Sequence[int] = (20, 12, 4),
                     minority: Sequence[int] = (4, 10, 4),
                     folders: Mapping = spuco.FOLDERS) -> str:
  """Writes a SpuCo Animals tree with the given per-group counts.

  Args:
    root: where ``spuco_birds/`` and ``spuco_dogs/`` go.
    majority: images per majority group for (train, val, test).
    minority: images per minority group for (train, val, test).
    folders: the ``(y, b) -> (subset, class, bias)`` folder mapping.

  Returns:
    ``root``. Files alternate between .jpg and .png.
  """
  majority_bias = spuco.SPEC.majority_bias
  for split, n_major, n_minor in zip(spuco.SPLITS, majority, minority):
    for (y, b), (subset, cls, bias) in folders.items():
      n = n_major if majority_bias[y] == b else n_minor
      folder = os.path.join(root, subset, split, cls, bias)
      os.makedirs(folder, exist_ok=True)
      for i in range(n):
        ext = "png" if i % 2 else "jpg"
        write_image(os.path.join(folder, f"{cls}_{bias}_{i:05d}.{ext}"), y + b)
  return root


def celeba_labels(n: int, seed: int = 0) -> list[tuple[int, int]]:
  """``n`` (smiling, male) pairs, every pair about equally common."""
  rng = np.random.default_rng(seed)
  return [(int(v // 2), int(v % 2)) for v in rng.integers(0, 4, size=n)]


def write_celeba_tree(root: str, n: int = 800, seed: int = 0,
                      missing: Iterable[int] = (),
                      row_order: Sequence[int] | None = None) -> str:
  """Writes CelebA-HQ-img/{i}.jpg and the attribute file for ``n`` images.

  Args:
    root: the dataset root.
    n: images listed in the attribute file.
    seed: seeds the labels.
    missing: indices listed in the file whose image is not written.
    row_order: order of the rows in the file (default 0..n-1).

  Returns:
    ``root``.
  """
  missing = set(missing)
  labels = celeba_labels(n, seed)
  ismile = CELEBA_ATTRIBUTES.index("Smiling")
  imale = CELEBA_ATTRIBUTES.index("Male")
  rows = []
  for i in (range(n) if row_order is None else row_order):
    smiling, male = labels[i]
    values = ["-1"] * len(CELEBA_ATTRIBUTES)
    values[ismile] = "1" if smiling else "-1"
    values[imale] = "1" if male else "-1"
    rows.append(f"{i}.jpg " + " ".join(values))
    if i not in missing:
      write_image(os.path.join(root, "CelebA-HQ-img", f"{i}.jpg"), i % 7)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "CelebAMask-HQ-attribute-anno.txt"), "w") as f:
    f.write("\n".join([str(n), " ".join(CELEBA_ATTRIBUTES)] + rows) + "\n")
  return root


UTK_MALFORMED = (
    "39_1_20170116174525125.jpg.chip.jpg",   # missing race (a real case)
    "61_1_20170109150557335.jpg.chip.jpg",   # missing race (a real case)
    "x_0_1_20170109150557335.jpg.chip.jpg",  # non-integer age
    "25_2_0_20170109150557335.jpg.chip.jpg",  # gender is 0 or 1
    "25_0__20170109150557335.jpg.chip.jpg",  # empty race
)
UTK_OUT_OF_RANGE = (
    "10_0_1_20170110000000001.jpg.chip.jpg",
    "60_1_2_20170110000000002.jpg.chip.jpg",
    "51_0_0_20170110000000003.jpg.chip.jpg",
)


def write_utk_tree(root: str, per_group: int = 100, seed: int = 0,
                   extra_names: Iterable[str] = UTK_MALFORMED + UTK_OUT_OF_RANGE
                   ) -> str:
  """Writes a flat UTKFace folder: ``per_group`` images per (gender, age) group.

  Ages are drawn from 20..50 ("old") and 0..5 ("young"); ``extra_names`` are
  written as well (malformed names and out-of-range ages by default).
  """
  rng = np.random.default_rng(seed)
  stamp = 20170101000000000
  for gender in (0, 1):
    for young in (0, 1):
      for _ in range(per_group):
        age = int(rng.integers(0, 6) if young else rng.integers(20, 51))
        race = int(rng.integers(0, 5))
        stamp += 1
        name = f"{age}_{gender}_{race}_{stamp}.jpg.chip.jpg"
        write_image(os.path.join(root, name), gender + 2 * young)
  for name in extra_names:
    write_image(os.path.join(root, name))
  return root


# --- Waterbirds, CelebA (official), folder datasets, synthetic folders -------

# Per split: (y, place) -> images. Train is ~95% biased, val and test are
# balanced within class, as in the official Waterbirds.
WATERBIRDS_COUNTS = {
    "train": {(0, 0): 100, (0, 1): 6, (1, 0): 4, (1, 1): 40},
    "val": {(0, 0): 30, (0, 1): 30, (1, 0): 12, (1, 1): 12},
    "test": {(0, 0): 20, (0, 1): 20, (1, 0): 8, (1, 1): 8},
}
WATERBIRDS_HEADER = "img_id,img_filename,y,split,place,place_filename"


def write_waterbirds_tree(root: str, counts: Mapping = WATERBIRDS_COUNTS,
                          missing: int = 0) -> str:
  """Writes ``waterbird_complete95_forest2water2/`` with ``metadata.csv``.

  Args:
    root: the dataset root.
    counts: split -> ``(y, place)`` -> images.
    missing: how many rows (the last ones) get no image file.

  Returns:
    ``root``.
  """
  base = os.path.join(root, "waterbird_complete95_forest2water2")
  rows = [WATERBIRDS_HEADER]
  img_id = 0
  for split_id, split in enumerate(("train", "val", "test")):
    for (y, place), n in sorted(counts[split].items()):
      for _ in range(n):
        img_id += 1
        name = f"{y:03d}.Species_{y}/Bird_{img_id:05d}.jpg"
        rows.append(f"{img_id},{name},{y},{split_id},{place},"
                    f"{'bamboo_forest' if place == 0 else 'ocean'}/x.jpg")
  n_rows = len(rows) - 1
  for i, row in enumerate(rows[1:]):
    if i < n_rows - missing:
      write_image(os.path.join(base, row.split(",")[1]), i % 5)
  os.makedirs(base, exist_ok=True)
  with open(os.path.join(base, "metadata.csv"), "w") as f:
    f.write("\n".join(rows) + "\n")
  return root


# Per split: (blond, male) -> images, like CelebA (blond men are rare).
CELEBA_COUNTS = {
    "train": {(0, 0): 60, (0, 1): 80, (1, 0): 40, (1, 1): 4},
    "val": {(0, 0): 30, (0, 1): 30, (1, 0): 15, (1, 1): 12},
    "test": {(0, 0): 20, (0, 1): 20, (1, 0): 10, (1, 1): 5},
}


def write_celeba_official_tree(root: str, counts: Mapping = CELEBA_COUNTS,
                               target: str = "Blond_Hair", bias: str = "Male"
                               ) -> str:
  """Writes ``img_align_celeba/``, ``list_attr_celeba.txt`` (double spaces, as
  the real file) and ``list_eval_partition.txt``; other attributes are -1."""
  it, ib = CELEBA_ATTRIBUTES.index(target), CELEBA_ATTRIBUTES.index(bias)
  attrs, parts = [], []
  i = 0
  for split_id, split in enumerate(("train", "val", "test")):
    for (y, b), n in sorted(counts[split].items()):
      for _ in range(n):
        i += 1
        name = f"{i:06d}.jpg"
        values = [" 1" if (k == it and y) or (k == ib and b) else "-1"
                  for k in range(len(CELEBA_ATTRIBUTES))]
        attrs.append(f"{name} " + " ".join(values))
        parts.append(f"{name} {split_id}")
        write_image(os.path.join(root, "img_align_celeba", name), i % 7)
  with open(os.path.join(root, "list_attr_celeba.txt"), "w") as f:
    f.write("\n".join([str(i), " ".join(CELEBA_ATTRIBUTES) + " "] + attrs)
            + "\n")
  with open(os.path.join(root, "list_eval_partition.txt"), "w") as f:
    f.write("\n".join(parts) + "\n")
  return root


# Per split: (class folder, bias folder) -> images.
FOLDER_COUNTS = {
    "train": {("cat", "indoor"): 40, ("cat", "outdoor"): 4,
              ("dog", "indoor"): 3, ("dog", "outdoor"): 30},
    "val": {("cat", "indoor"): 12, ("cat", "outdoor"): 10,
            ("dog", "indoor"): 10, ("dog", "outdoor"): 12},
    "test": {("cat", "indoor"): 6, ("cat", "outdoor"): 6,
             ("dog", "indoor"): 6, ("dog", "outdoor"): 6},
}


def write_folder_tree(root: str, counts: Mapping = FOLDER_COUNTS) -> str:
  """Writes ``root/{split}/{class}/{bias}/*.{jpg,png}`` with ``counts``."""
  for split, groups in counts.items():
    for g, ((cls, bias), n) in enumerate(sorted(groups.items())):
      folder = os.path.join(root, split, cls, bias)
      os.makedirs(folder, exist_ok=True)
      for i in range(n):
        ext = "png" if i % 2 else "jpg"
        write_image(os.path.join(folder, f"{i:05d}.{ext}"), g)
  return root


def write_synthetic_tree(root: str, spec, per_group: int) -> str:
  """Writes a generated-images folder (images + manifest) as the writer does."""
  from ffr_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  lines = []
  for g, (y, b) in enumerate(spec.groups):
    for i in range(per_group):
      rel = synthetic.relative_image_path(spec, y, b, i)
      write_image(os.path.join(synthetic.dataset_dir(root, spec), rel), g + 3)
      lines.append(synthetic.ManifestRecord(
          rel, spec.class_names[y], spec.bias_names[b], i, "a prompt", i,
          "fake").to_json())
  with open(os.path.join(synthetic.dataset_dir(root, spec),
                         synthetic.MANIFEST), "w") as f:
    f.write("\n".join(lines) + "\n")
  return root
