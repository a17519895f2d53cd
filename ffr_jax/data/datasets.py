"""The dataset registry: name -> spec, loader and expected layout.

``load_dataset(config.data)`` is the one entry point the rest of ffr_jax uses:
it loads the official layout, lists and excludes unreadable images (never
silently), and applies the configured bias ratio with the authors' rule.

The built-in benchmark registers its own ``"demo"`` dataset with
:func:`register` when ``ffr_jax.demo`` is imported; :func:`get_dataset`
imports that module on first use of the name, so callers need not.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable

import ml_collections
import numpy as np
from absl import logging

from ffr_jax.data import bias, celeba_hq, spuco, utk_face
from ffr_jax.data.images import find_unreadable, verified_cache_path
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples

UNREADABLE = "unreadable_image"
# Datasets registered by a module of their own, imported on first lookup.
LAZY_MODULES = {"demo": "ffr_jax.demo"}
# How many unreadable paths a warning shows.
_SHOW_PATHS = 5


@dataclasses.dataclass(frozen=True)
class DatasetDef:
  """How to load one dataset.

  Attributes:
    spec: class/bias names and groups.
    load: ``load(root, split_seed) -> DatasetSplits`` for the official layout,
      before the configured bias ratio is applied.
    layout: the expected on-disk layout, as text for error messages and docs.
    self_contained: the dataset makes its own data (the built-in benchmark),
      so an empty ``data.root`` means a folder under the workdir.
    prepare: for a self-contained dataset, ``prepare(config)`` makes the data
      in ``config.data.root`` from the config's parameters (a no-op when it
      is already there); called by :func:`prepare_dataset`.
  """

  spec: DatasetSpec
  load: Callable[[str, int], DatasetSplits]
  layout: str
  self_contained: bool = False
  prepare: Callable[[ml_collections.ConfigDict], None] | None = None


def prepare_dataset(config: ml_collections.ConfigDict) -> None:
  """Makes a self-contained dataset's data on host 0; other hosts wait.

  Real datasets have nothing to prepare. On several hosts sharing a file
  system only host 0 writes, then every host meets at a barrier.
  """
  definition = get_dataset(config.data.name)
  if definition.prepare is None:
    return
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    definition.prepare(config)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"ffr_jax:prepared:{config.data.name}")


DATASETS: dict[str, DatasetDef] = {
    "spuco_animals": DatasetDef(spuco.SPEC, spuco.load, spuco.LAYOUT),
    "celeba_hq": DatasetDef(celeba_hq.SPEC, celeba_hq.load, celeba_hq.LAYOUT),
    "utk_face": DatasetDef(utk_face.SPEC, utk_face.load, utk_face.LAYOUT),
}


def register(name: str, definition: DatasetDef) -> None:
  """Adds a dataset; registering the same definition twice is a no-op.

  Raises:
    ValueError: ``name`` is already registered with a different definition,
      or differs from ``definition.spec.name``.
  """
  if name != definition.spec.name:
    raise ValueError(
        f"Dataset {name!r} must be registered under its spec's name "
        f"{definition.spec.name!r} (synthetic folders are named after it).")
  old = DATASETS.get(name)
  if old is not None and old != definition:
    raise ValueError(f"Dataset {name!r} is already registered differently.")
  DATASETS[name] = definition


def _import_lazy(name: str) -> str:
  """Imports the module that registers ``name``; returns an error note or ''."""
  module = LAZY_MODULES.get(name)
  if module is None:
    return ""
  try:
    importlib.import_module(module)
  except ImportError as e:
    # Kept for the error message: a broken import must not look like a typo.
    return f" (importing {module} failed: {e})"
  return ""


def get_dataset(name: str) -> DatasetDef:
  """The definition of ``name``.

  Raises:
    KeyError: unknown name; the message lists the known names.
  """
  note = "" if name in DATASETS else _import_lazy(name)
  if name not in DATASETS:
    known = sorted(set(DATASETS) | set(LAZY_MODULES))
    raise KeyError(
        f"Unknown dataset {name!r}{note}; known datasets: {', '.join(known)}. "
        "Set --config.data.name.")
  return DATASETS[name]


def _exclude_unreadable(splits: DatasetSplits, root: str) -> DatasetSplits:
  """Decodes every image once and drops the ones that fail, with a warning.

  Files that decoded fine before (same size and modification time) are
  remembered in a cache outside ``root`` and not decoded again.
  """
  parts = {s: splits.split(s) for s in ("train", "val", "test")}
  paths = [str(p) for ex in parts.values() for p in ex.path]
  bad = find_unreadable(paths, cache_path=verified_cache_path(root))
  if not bad:
    return splits
  shown = "\n  ".join(f"{p}: {bad[p]}" for p in sorted(bad)[:_SHOW_PATHS])
  logging.warning(
      "%s: %d unreadable image(s) excluded, e.g.\n  %s", splits.spec.name,
      len(bad), shown)
  kept = {s: ex.take(~_isin(ex, bad)) for s, ex in parts.items()}
  skipped = dict(splits.skipped)
  skipped[UNREADABLE] = skipped.get(UNREADABLE, 0) + len(bad)
  files = {k: list(v) for k, v in splits.skipped_files.items()}
  files[UNREADABLE] = sorted(bad)[:spuco.MAX_SKIPPED_EXAMPLES]
  return splits.replace(skipped=skipped, skipped_files=files, **kept)


def _isin(examples: Examples, paths: dict[str, str]) -> np.ndarray:
  """Boolean mask of the rows whose path is a key of ``paths``."""
  return np.array([str(p) in paths for p in examples.path], dtype=bool)


def _require_root(name: str, root: str, layout: str) -> None:
  """Raises ValueError naming the layout when no root was configured."""
  if not root:
    raise ValueError(
        f"config.data.root is empty: set --config.data.root to the folder of "
        f"{name!r}. Expected layout:\n{layout}")


def load_dataset(cfg_data: ml_collections.ConfigDict) -> DatasetSplits:
  """Loads ``config.data``: official layout, unreadable check, bias ratio.

  Args:
    cfg_data: ``config.data`` with ``name``, ``root``, ``bias_ratio``,
      ``split_seed`` and ``verify_images``.

  Returns:
    The splits with train and val at ``bias_ratio`` (val keeps at least 10 per
    group); test as loaded.

  Raises:
    ValueError: impossible bias ratio, empty root, malformed data, or a group
      with no images in a split.
    KeyError: unknown dataset name.
    FileNotFoundError: missing root or a folder of the layout.
  """
  ratio = bias.check_ratio(cfg_data.bias_ratio)  # Fail before any disk work.
  definition = get_dataset(cfg_data.name)
  _require_root(cfg_data.name, cfg_data.root, definition.layout)
  splits = definition.load(cfg_data.root, int(cfg_data.split_seed))
  if cfg_data.verify_images:
    splits = _exclude_unreadable(splits, cfg_data.root)
    celeba_hq.require_every_group(
        splits.spec,
        {s: splits.split(s) for s in ("train", "val", "test")}, cfg_data.root)
  for reason, n in splits.skipped.items():
    logging.info("%s: skipped %d file(s): %s, e.g. %s", splits.spec.name, n,
                 reason, splits.skipped_files.get(reason, [])[:2])
  return bias.bias_splits(splits, ratio, int(cfg_data.split_seed))


def resolve_roots(config: ml_collections.ConfigDict, workdir: str
                  ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the default data folders under ``workdir``.

  An empty ``data.root`` is allowed only for a dataset that makes its own
  data (the built-in benchmark renders into ``{workdir}/data/real``); an empty
  ``data.synthetic_root`` means ``{workdir}/synthetic``; an empty
  ``eval.synthetic_test_root`` means ``{data.synthetic_root}-test``. The
  training and generation commands both resolve folders here, so they agree.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  definition = get_dataset(config.data.name)
  if not config.data.root:
    if not definition.self_contained:
      raise ValueError(
          f"config.data.root is empty; point it at the {config.data.name} "
          f"folder. Expected layout:\n{definition.layout}")
    config.data.root = os.path.join(workdir, "data", "real")
  if not config.data.synthetic_root:
    config.data.synthetic_root = os.path.join(workdir, "synthetic")
  if not config.eval.synthetic_test_root:
    config.eval.synthetic_test_root = config.data.synthetic_root + "-test"
  return config
