"""Reading images from disk: decode + resize, and finding unreadable files."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
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


def find_unreadable(paths: Sequence[str], num_threads: int | None = None,
                    cache_path: str | None = None) -> dict[str, str]:
  """Decodes every file once; returns ``{path: error}`` for those that fail.

  Decoding is done in threads (PIL releases the GIL while decoding).

  Args:
    paths: image files.
    num_threads: decoding threads (default: 2 per core, at most 16).
    cache_path: a JSON file remembering which files decoded fine, keyed by
      path with their size and modification time; such files are not decoded
      again (CelebA-HQ's 30k 1024 px JPEGs take minutes to decode). A
      changed file is decoded again; failures are never cached.
  """
  num_threads = num_threads or min(16, (os.cpu_count() or 1) * 2)
  known = _read_cache(cache_path)
  stats = {p: _stat(p) for p in paths}
  todo = [p for p in paths if stats[p] is None or known.get(p) != stats[p]]
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    errors = dict(zip(todo, pool.map(_unreadable, todo, chunksize=64)))
  bad = {p: e for p, e in errors.items() if e is not None}
  if cache_path is not None and todo:
    known.update({p: stats[p] for p in todo
                  if p not in bad and stats[p] is not None})
    _write_cache(cache_path, known)
  return bad


def verified_cache_path(root: str) -> str:
  """Where :func:`find_unreadable` remembers the good files under ``root``.

  ``$FFR_JAX_CACHE`` (default ``~/.cache/ffr_jax``)/verified/<hash of root>.json,
  outside the dataset folder, which may be read-only.
  """
  base = os.environ.get("FFR_JAX_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "ffr_jax"))
  digest = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:16]
  return os.path.join(base, "verified", f"{digest}.json")


def _stat(path: str) -> list[int] | None:
  try:
    st = os.stat(path)
  except OSError:
    return None
  return [st.st_size, st.st_mtime_ns]


def _read_cache(path: str | None) -> dict[str, list[int]]:
  if path is None or not os.path.isfile(path):
    return {}
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):  # A damaged cache only costs a re-decode.
    return {}


def _write_cache(path: str, entries: dict[str, list[int]]) -> None:
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(entries, f)
    os.replace(tmp, path)
  except OSError:  # Read-only home: verification still ran; just not cached.
    pass
