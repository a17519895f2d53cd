"""An on-disk cache of decoded, resized, unflipped uint8 images, one per split
and size: ``{cache_dir}/{size}px-{N}-{digest}/images.npy`` ``[N, S, S, 3]``,
read memory-mapped, with an ``index.json``.

Key: relative paths in row order with each file's size and ``st_mtime_ns``,
not a content hash (stat of 30k files is under a second; hashing CelebA-HQ
reads 9 GB), so a file rewritten with its size and mtime restored goes
unnoticed. A changed file gives a new folder and the superseded one is deleted.

Written into ``{folder}.partial-{host}-{pid}``, fsynced, then renamed; only a
folder whose ``index.json`` matches is read. Each host caches the whole split
(hosts take slices of every global batch); on a shared disk the first rename
wins.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from ffr_jax.data import images as images_lib
from ffr_jax.lifecycle import pid_alive

# Bump when the decoded pixels change (resize filter, colour conversion), so
# old caches are never read as new ones.
FORMAT_VERSION = 1
# ``data.image_cache_dir``: this value means "$FFR_JAX_CACHE/images", by
# default ~/.cache/ffr_jax/images; "" disables the cache.
AUTO = "auto"
IMAGES_FILE = "images.npy"
INDEX_FILE = "index.json"
_PARTIAL = ".partial-"
_PROGRESS_EVERY_S = 10.0


def resolve_dir(setting: str | None) -> str | None:
  """The cache folder ``data.image_cache_dir`` names, or None when disabled."""
  if not setting:
    return None
  if setting == AUTO:
    return os.path.join(images_lib.cache_base(), "images")
  return os.path.abspath(os.path.expanduser(setting))


@dataclasses.dataclass(frozen=True)
class Fingerprint:
  """What a cache was built from: ``files`` digests the relative paths and
  size (which split), ``contents`` adds every file's size and mtime (the key)."""

  root: str
  files: str
  contents: str
  image_size: int
  count: int

  @property
  def folder_name(self) -> str:
    return f"{self.image_size}px-{self.count}-{self.contents[:20]}"


def fingerprint(paths: Sequence[str], image_size: int) -> Fingerprint:
  """The fingerprint of ``paths`` (row order); FileNotFoundError if one is missing."""
  absolute = [os.path.abspath(str(p)) for p in paths]
  if not absolute:
    raise ValueError("Cannot cache an empty list of images.")
  root = (os.path.dirname(absolute[0]) if len(absolute) == 1
          else os.path.commonpath(absolute))
  files = hashlib.sha256(f"v{FORMAT_VERSION} {image_size}px\n".encode())
  contents = hashlib.sha256()
  for path in absolute:
    relative = os.path.relpath(path, root)
    try:
      st = os.stat(path)
    except OSError as e:
      raise FileNotFoundError(f"Image {path!r} is missing: {e}") from e
    files.update(f"{relative}\n".encode())
    contents.update(f"{relative}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
  files_digest = files.hexdigest()
  contents.update(files_digest.encode())
  return Fingerprint(root=root, files=files_digest,
                     contents=contents.hexdigest(),
                     image_size=int(image_size), count=len(absolute))


def open_cache(folder: str, fp: Fingerprint) -> np.ndarray | None:
  """``folder``'s images memory-mapped, or None unless index and shape match ``fp``."""
  try:
    with open(os.path.join(folder, INDEX_FILE)) as f:
      index = json.load(f)
    if (index.get("format") != FORMAT_VERSION
        or index.get("contents") != fp.contents):
      return None
    images = np.load(os.path.join(folder, IMAGES_FILE), mmap_mode="r")
  except (OSError, ValueError):
    return None
  s = fp.image_size
  if images.dtype != np.uint8 or images.shape != (fp.count, s, s, 3):
    return None
  return images


def _fsync(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _remove_dead_partials(folder: str) -> None:
  """Deletes ``.partial`` folders of ``folder`` left by dead processes here."""
  parent, name = os.path.split(folder)
  host = socket.gethostname()
  for entry in os.listdir(parent):
    if not entry.startswith(name + _PARTIAL):
      continue
    owner = entry[len(name + _PARTIAL):]
    owner_host, _, pid = owner.rpartition("-")
    if owner_host == host and pid.isdigit() and not pid_alive(int(pid)):
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _remove_superseded(cache_dir: str, fp: Fingerprint) -> None:
  """Deletes caches of the same files and size whose files have changed."""
  for entry in os.listdir(cache_dir):
    if _PARTIAL in entry or entry == fp.folder_name:
      continue
    index_path = os.path.join(cache_dir, entry, INDEX_FILE)
    try:
      with open(index_path) as f:
        index = json.load(f)
    except (OSError, ValueError):
      continue
    if index.get("files") == fp.files and index.get("root") == fp.root:
      logging.info("image cache: removing %s (its files have changed)", entry)
      shutil.rmtree(os.path.join(cache_dir, entry), ignore_errors=True)


def _fill(images: np.ndarray, load: Callable[[int], np.ndarray],
          num_threads: int, label: str) -> None:
  n = len(images)
  start = last = time.perf_counter()

  def fill(row: int) -> None:
    images[row] = load(row)

  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for done, _ in enumerate(pool.map(fill, range(n)), 1):
      now = time.perf_counter()
      if now - last >= _PROGRESS_EVERY_S or done == n:
        last = now
        logging.info("image cache %s: %d/%d images decoded (%.0f img/s)",
                     label, done, n, done / max(now - start, 1e-9))


def build(folder: str, fp: Fingerprint, load: Callable[[int], np.ndarray],
          num_threads: int) -> np.ndarray:
  """Decodes ``load(row)`` of every row into ``folder`` atomically, memory-mapped."""
  parent = os.path.dirname(folder)
  os.makedirs(parent, exist_ok=True)
  _remove_dead_partials(folder)
  partial = f"{folder}{_PARTIAL}{socket.gethostname()}-{os.getpid()}"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  try:
    s = fp.image_size
    images = np.lib.format.open_memmap(
        os.path.join(partial, IMAGES_FILE), mode="w+", dtype=np.uint8,
        shape=(fp.count, s, s, 3))
    _fill(images, load, num_threads, os.path.basename(folder))
    images.flush()
    del images
    _fsync(os.path.join(partial, IMAGES_FILE))
    with open(os.path.join(partial, INDEX_FILE), "w") as f:
      json.dump({"format": FORMAT_VERSION, "root": fp.root, "files": fp.files,
                 "contents": fp.contents, "image_size": s, "count": fp.count,
                 "shape": [fp.count, s, s, 3], "dtype": "uint8",
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    _fsync(partial)
    _publish(partial, folder, fp)
  except BaseException:
    # Whatever stopped the build (error, Ctrl-C) leaves nothing half-written.
    shutil.rmtree(partial, ignore_errors=True)
    raise
  _fsync(parent)
  _remove_superseded(parent, fp)
  images = open_cache(folder, fp)
  if images is None:
    raise RuntimeError(f"The image cache {folder} was written but cannot be "
                       "read back; check the disk.")
  return images


def _publish(partial: str, folder: str, fp: Fingerprint) -> None:
  """Renames ``partial`` to ``folder``; a usable ``folder`` already there wins."""
  try:
    os.rename(partial, folder)
    return
  except OSError:
    if not os.path.isdir(folder):
      raise
  if open_cache(folder, fp) is not None:
    # Another process (or host, on a shared disk) finished first.
    shutil.rmtree(partial, ignore_errors=True)
    return
  # An unusable folder under the final name: move it aside, then replace it.
  stale = f"{folder}.stale-{socket.gethostname()}-{os.getpid()}"
  os.rename(folder, stale)
  os.rename(partial, folder)
  shutil.rmtree(stale, ignore_errors=True)


def cached_images(paths: Sequence[str], image_size: int, cache_dir: str,
                  load: Callable[[int], np.ndarray],
                  num_threads: int) -> np.ndarray:
  """Read-only memory-mapped uint8 ``[N, S, S, 3]`` images of ``paths``,
  built with ``load(row)`` if the cache lacks them."""
  fp = fingerprint(paths, image_size)
  folder = os.path.join(cache_dir, fp.folder_name)
  images = open_cache(folder, fp)
  if images is not None:
    logging.info("image cache: reading %d images from %s", fp.count, folder)
    return images
  logging.info("image cache: decoding %d images of %s at %dpx into %s",
               fp.count, fp.root, image_size, folder)
  return build(folder, fp, load, num_threads)
