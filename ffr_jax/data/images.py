"""Reading images from disk: decode + resize, and finding unreadable files."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# torchvision's ImageNet statistics, which the pretrained ResNet50 expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def decode(path: str, size: int) -> np.ndarray:
  """Reads ``path`` as RGB and resizes it to ``size x size`` (no crop).

  The authors resize straight to 224x224 (aspect ratio not kept, no crop); we do
  the same, bilinear as torchvision's default.

  Returns:
    uint8 array of shape ``(size, size, 3)``.
  """
  with Image.open(path) as im:
    im = im.convert("RGB")
    if im.size != (size, size):
      im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _unreadable(path: str) -> str | None:
  try:
    with Image.open(path) as im:
      im.load()  # load() decodes pixel data; verify() misses truncated JPEGs.
    return None
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"


def find_unreadable(paths: Sequence[str], num_threads: int | None = None
                    ) -> dict[str, str]:
  """Decodes every file once; returns ``{path: error}`` for those that fail.

  Decoding is done in threads (PIL releases the GIL while decoding).
  """
  num_threads = num_threads or min(16, (os.cpu_count() or 1) * 2)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    errors = pool.map(_unreadable, paths, chunksize=64)
    return {p: e for p, e in zip(paths, errors) if e is not None}
