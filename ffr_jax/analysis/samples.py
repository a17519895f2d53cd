"""Which images an analysis looks at: real test images and held-out synthetic ones.

Synthetic images should be unseen, or a model that memorised them would look
better separated than it is. ``--synthetic=heldout`` takes each group's images
from index ``n`` on (``n`` the most any analysed run trained on: a composition
takes the first), ``generate`` new ones (seed ``generate.seed +
HELDOUT_SEED_OFFSET``), ``train`` the first ones, ``auto`` heldout or else
generate with a cheap generator.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import ml_collections
import numpy as np

from ffr_jax.analysis.run_loading import RunInfo
from ffr_jax.data import datasets
from ffr_jax.data import synthetic as synthetic_lib
from ffr_jax.data.types import DatasetSpec, Examples
from ffr_jax.generation import factory as generate_lib
from ffr_jax.training import spec as spec_lib

HELDOUT_SEED_OFFSET = 7919
SYNTHETIC_CHOICES = ("auto", "heldout", "generate", "train")
HELDOUT_DIR = "heldout_synthetic"
# Generators cheap enough that ``auto`` may run them without being asked.
_CHEAP_GENERATORS = ("procedural",)


@dataclasses.dataclass(frozen=True)
class Sample:
  """The images of one analysis, real rows first."""

  real: Examples
  synthetic: Examples
  synthetic_choice: str  # heldout, generate or train: what was used
  synthetic_root: str

  @property
  def examples(self) -> Examples:
    return Examples.concat([self.real, self.synthetic])

  def describe(self) -> dict:
    return {"synthetic_choice": self.synthetic_choice,
            "synthetic_root": self.synthetic_root,
            "num_real": len(self.real), "num_synthetic": len(self.synthetic)}


def data_key(config: ml_collections.ConfigDict) -> str:
  """Runs with equal keys see the same data and the same generator."""
  return spec_lib.data_key(config)[:10]


def without_verification(data: ml_collections.ConfigDict
                         ) -> ml_collections.ConfigDict:
  """A copy of ``config.data`` that does not decode every image at load."""
  data = ml_collections.ConfigDict(data.to_dict())
  data.verify_images = False
  return data


def real_test_sample(config: ml_collections.ConfigDict, per_group: int,
                     seed: int = 0) -> Examples:
  """A seeded random ``per_group`` real test images per group (or all)."""
  splits = datasets.load_dataset(without_verification(config.data))
  test = splits.test
  rng = np.random.default_rng(seed)
  return Examples.concat(
      test.take(rng.permutation(np.flatnonzero(test.mask(*g)))[:per_group])
      for g in splits.spec.groups)


def used_synthetic(runs: list[RunInfo], spec: DatasetSpec
                   ) -> dict[tuple[int, int], int]:
  """Per group, the most synthetic images any of ``runs`` trained on."""
  used = {g: 0 for g in spec.groups}
  for run in runs:
    for key, n in (run.results.get("synthetic_per_group") or {}).items():
      fields = dict(part.split("=") for part in key.split(","))
      g = (int(fields["y"]), int(fields["b"]))
      used[g] = max(used.get(g, 0), int(n))
  return used


def synthetic_pool(root: str, spec: DatasetSpec) -> Examples:
  """The synthetic images in ``root``; none if nothing was generated there."""
  try:
    return synthetic_lib.load_synthetic(root, spec)
  except FileNotFoundError:
    return Examples.empty()


def _after(spec: DatasetSpec, pool: Examples, per_group: int,
           start: dict | None = None) -> Examples:
  """Rows ``start[g] .. start[g] + per_group`` of each group, in index order."""
  start = start or {g: 0 for g in spec.groups}
  return Examples.concat(
      pool.take(np.flatnonzero(pool.mask(*g))[start[g]:start[g] + per_group])
      for g in spec.groups)


def _enough(spec: DatasetSpec, examples: Examples, per_group: int) -> bool:
  return all(examples.count(*g) >= per_group for g in spec.groups)


def _generate(config: ml_collections.ConfigDict, spec: DatasetSpec,
              per_group: int, out_dir: str) -> tuple[Examples, str, str]:
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.generate.seed = int(cfg.generate.seed) + HELDOUT_SEED_OFFSET
  root = os.path.join(out_dir, HELDOUT_DIR, data_key(config))
  generate_lib.generate_synthetic(cfg, spec, per_group, root,
                                  show_progress=False, log_summary=False)
  pool = synthetic_lib.load_synthetic(root, spec)
  return _after(spec, pool, per_group), "generate", root


def synthetic_sample(runs: list[RunInfo], spec: DatasetSpec, per_group: int,
                     choice: str, out_dir: str) -> tuple[Examples, str, str]:
  """``(examples, choice used, root)`` for ``runs`` (which share one data key)."""
  if choice not in SYNTHETIC_CHOICES:
    raise ValueError(f"Unknown synthetic choice {choice!r}; choose from "
                     f"{SYNTHETIC_CHOICES}.")
  config = runs[0].config
  root = config.data.synthetic_root
  if choice == "generate":
    return _generate(config, spec, per_group, out_dir)
  pool = synthetic_pool(root, spec)
  if choice == "train":
    ex = _after(spec, pool, per_group)
    if not _enough(spec, ex, 1):
      raise ValueError(f"No synthetic images for some group in {root}.")
    return ex, "train", root
  heldout = _after(spec, pool, per_group, used_synthetic(runs, spec))
  if _enough(spec, heldout, per_group):
    return heldout, "heldout", root
  have = {spec.group_name(i): heldout.count(*g)
          for i, g in enumerate(spec.groups)}
  short = (f"{root} holds fewer than {per_group} unseen synthetic images in "
           f"some group ({have})")
  if choice == "heldout":
    raise ValueError(
        f"{short}; generate more there with `python -m ffr_jax.generate "
        "--config.generate.per_group=...`, lower --per_group, or use "
        "--synthetic=generate.")
  if config.generate.generator not in _CHEAP_GENERATORS:
    raise ValueError(
        f"{short}, and generating held-out images with "
        f"{config.generate.generator!r} is a job of its own: pass "
        "--synthetic=generate to do it, --synthetic=train to look at training "
        "images, or lower --per_group.")
  logging.info("Synthetic root %s has too few unseen images (%s); generating "
               "%d per group with the run's generator.", root, have, per_group)
  return _generate(config, spec, per_group, out_dir)


def make_sample(runs: list[RunInfo], spec: DatasetSpec, per_group: int,
                choice: str, out_dir: str, seed: int = 0) -> Sample:
  """Real test and synthetic images for ``runs`` (sharing one data key)."""
  real = real_test_sample(runs[0].config, per_group, seed)
  # As many synthetic images per group as the largest real group has, so
  # neither source dominates the picture when the test split is small.
  largest = max(real.count(*g) for g in spec.groups)
  syn, used, root = synthetic_sample(runs, spec, min(per_group, largest),
                                     choice, out_dir)
  return Sample(real=real, synthetic=syn, synthetic_choice=used,
                synthetic_root=root)
