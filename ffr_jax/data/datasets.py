"""The dataset registry: name -> spec, loader and expected layout.

``load_dataset(config.data)`` is the one entry point the rest of ffr_jax uses:
official layout, unreadable images excluded (never silently), then the
configured bias ratio. The built-in benchmark's ``"demo"`` is imported on
first lookup, never as a side effect.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import ml_collections
import numpy as np
from absl import logging

from ffr_jax import lifecycle
from ffr_jax.data import bias, celeba, celeba_hq, folder, layouts, spuco
from ffr_jax.data import utk_face, waterbirds
from ffr_jax.data.images import file_identities, verified_cache_path, verify_images
from ffr_jax.data.types import DatasetSpec, DatasetSplits
from ffr_jax.registry import Registry

UNREADABLE = "unreadable_image"
_SHOW_PATHS = 5


@dataclasses.dataclass(frozen=True)
class DatasetDef:
  """How to load one dataset.

  Attributes:
    spec: None when the config and the data define it (``make_spec``).
    load: ``load(root, split_seed, **options) -> DatasetSplits``, before the
      configured bias ratio.
    self_contained: the dataset makes its own data (the built-in benchmark):
      an empty ``data.root`` means a folder under the workdir, which
      ``prepare(config)`` fills (a no-op when it is already there).
    options: ``(keyword of load/make_spec, key under config.data)`` pairs.
    keys: config keys the prepared data depends on besides ``data.name``:
      part of a run's data identity (``training.spec.data_identity``).
  """

  spec: DatasetSpec | None
  load: Callable[..., DatasetSplits]
  layout: str
  self_contained: bool = False
  prepare: Callable[[ml_collections.ConfigDict], None] | None = None
  options: tuple[tuple[str, str], ...] = ()
  make_spec: Callable[..., DatasetSpec] | None = None
  keys: tuple[str, ...] = ()

  def __post_init__(self):
    if (self.spec is None) == (self.make_spec is None):
      raise ValueError("A DatasetDef needs exactly one of spec and make_spec.")

  def config_options(self, cfg_data: ml_collections.ConfigDict) -> dict:
    """The keyword arguments of ``load``/``make_spec`` read from ``config.data``."""
    missing = [key for _, key in self.options if key not in cfg_data]
    if missing:
      raise ValueError(
          f"config.data lacks {['data.' + k for k in missing]}, which this "
          "dataset reads; start from its configs/*.py file.")
    return {arg: cfg_data[key] for arg, key in self.options}


def prepare_dataset(config: ml_collections.ConfigDict) -> None:
  """Makes a self-contained dataset's data on host 0; other hosts wait.

  One process writes the folder at a time (others wait, then find it
  complete); several hosts meet at a barrier after host 0 wrote it.
  """
  definition = get_dataset(config.data.name)
  if definition.prepare is None:
    return
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    # Host 0 alone writes here; the barrier below is where the hosts meet.
    with lifecycle.owned_folder(config.data.root, "preparing the data",
                                all_hosts=False):
      definition.prepare(config)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"ffr_jax:prepared:{config.data.name}")


DATASETS: Registry[DatasetDef] = Registry("dataset")
for _module in (spuco, celeba_hq, utk_face, waterbirds):
  DATASETS.register(_module.SPEC.name,
                    DatasetDef(_module.SPEC, _module.load, _module.LAYOUT))
for _module in (celeba, folder):  # names and groups from the config and the data
  DATASETS.register(_module.NAME, DatasetDef(
      None, _module.load, _module.LAYOUT, options=_module.OPTIONS,
      make_spec=_module.make_spec))
DATASETS.register_lazy("demo", "ffr_jax.demo.dataset:DEMO")


get_dataset = DATASETS.get  # ValueError for an unknown name, listing the known ones


def dataset_spec(cfg_data: ml_collections.ConfigDict) -> DatasetSpec:
  """The spec of ``config.data``, without loading the splits where it is fixed."""
  definition = get_dataset(cfg_data.name)
  if definition.spec is not None:
    return definition.spec
  _require_root(cfg_data.name, cfg_data.root, definition.layout)
  return definition.make_spec(cfg_data.root,
                              **definition.config_options(cfg_data))


def _identify_files(splits: DatasetSplits, root: str, verify: bool
                    ) -> DatasetSplits:
  """The rows with their files' content identity (:attr:`Examples.content`).

  With ``verify``, images that fail to decode are dropped with a warning;
  files unchanged since they last decoded fine are not decoded again.
  """
  parts = {s: splits.split(s) for s in layouts.SPLITS}
  paths = [str(p) for ex in parts.values() for p in ex.path]
  if verify:
    bad, content = verify_images(paths, cache_path=verified_cache_path(root))
  else:
    bad, content = {}, file_identities(paths)
  parts = {s: ex.with_content(content) for s, ex in parts.items()}
  if not bad:
    return splits.replace(**parts)
  shown = "\n  ".join(f"{p}: {bad[p]}" for p in sorted(bad)[:_SHOW_PATHS])
  logging.warning(
      "%s: %d unreadable image(s) excluded, e.g.\n  %s", splits.spec.name,
      len(bad), shown)
  kept = {s: ex.take(np.array([str(p) not in bad for p in ex.path], dtype=bool))
          for s, ex in parts.items()}
  skipped = {**splits.skipped, UNREADABLE: splits.skipped.get(UNREADABLE, 0) + len(bad)}
  files = {**splits.skipped_files, UNREADABLE: sorted(bad)[:layouts.MAX_SKIPPED_EXAMPLES]}
  return splits.replace(skipped=skipped, skipped_files=files, **kept)


def _require_root(name: str, root: str, layout: str) -> None:
  if not root:
    raise ValueError(f"config.data.root is empty; point it at the {name} data. "
                     f"Expected layout:\n{layout}")


def load_dataset(cfg_data: ml_collections.ConfigDict) -> DatasetSplits:
  """Loads ``config.data``: official layout, unreadable check, then train and
  val at ``bias_ratio`` (val keeps at least 10 per group); test as loaded."""
  ratio = bias.check_ratio(cfg_data.bias_ratio)  # Fail before any disk work.
  definition = get_dataset(cfg_data.name)
  _require_root(cfg_data.name, cfg_data.root, definition.layout)
  splits = definition.load(cfg_data.root, int(cfg_data.split_seed),
                           **definition.config_options(cfg_data))
  splits = _identify_files(splits, cfg_data.root, cfg_data.verify_images)
  if cfg_data.verify_images:
    layouts.require_every_group(
        splits.spec, {s: splits.split(s) for s in layouts.SPLITS}, cfg_data.root)
  for reason, n in splits.skipped.items():
    logging.info("%s: skipped %d file(s): %s, e.g. %s", splits.spec.name, n,
                 reason, splits.skipped_files.get(reason, [])[:2])
  return bias.bias_splits(splits, ratio, int(cfg_data.split_seed),
                         bias_val=bool(cfg_data.get("bias_val", True)))


def resolve_roots(config: ml_collections.ConfigDict, workdir: str
                  ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the empty data folders filled in under
  ``workdir`` (``data.root`` only for a self-contained dataset)."""
  config = ml_collections.ConfigDict(config.to_dict())
  definition = get_dataset(config.data.name)
  if not config.data.root and definition.self_contained:
    config.data.root = os.path.join(workdir, "data", "real")
  _require_root(config.data.name, config.data.root, definition.layout)
  if not config.data.synthetic_root:
    config.data.synthetic_root = os.path.join(workdir, "synthetic")
  if not config.eval.synthetic_test_root:
    config.eval.synthetic_test_root = config.data.synthetic_root + "-test"
  return config
