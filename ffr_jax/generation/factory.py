"""The generator registry, ``generate_synthetic`` and the ``generate`` command;
``procedural`` (the built-in benchmark's) lives in :mod:`ffr_jax.demo.generator`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import ml_collections
from absl import logging

from ffr_jax import lifecycle
from ffr_jax.data import datasets
from ffr_jax.data.types import DatasetSpec
from ffr_jax.generation import counts as counts_lib
from ffr_jax.generation import prompts as prompts_lib
from ffr_jax.generation import writer as writer_lib
from ffr_jax.generation.base import Generator
from ffr_jax.mesh import maybe_initialize_distributed
from ffr_jax.registry import Registry


def _stable_diffusion(config: ml_collections.ConfigDict, spec: DatasetSpec
                      ) -> Generator:
  del spec  # Stable Diffusion draws whatever the prompt says.
  g = config.generate
  if not g.model:
    raise ValueError(
        "config.generate.model is empty: set --config.generate.model to a local "
        "diffusers folder or a hub id (e.g. CompVis/stable-diffusion-v1-4 with "
        "--config.generate.revision=flax).")
  from ffr_jax.generation.stable_diffusion import StableDiffusionGenerator  # pylint: disable=import-outside-toplevel
  return StableDiffusionGenerator(
      g.model, resolution=g.resolution, steps=g.steps,
      guidance_scale=g.guidance_scale, scheduler=g.scheduler, dtype=g.dtype,
      batch_size=g.batch_size, revision=g.revision)


def _text_prompts(config: ml_collections.ConfigDict, spec: DatasetSpec
                  ) -> prompts_lib.PromptFn:
  """Stable Diffusion's prompts (:mod:`ffr_jax.generation.prompts`)."""
  return prompts_lib.make_prompt_fn(spec, config.generate.prompts,
                                    int(config.generate.seed))


@dataclasses.dataclass(frozen=True)
class GeneratorDef:
  """A generator kind.

  Attributes:
    makes_own_data: cheap and offline: a training run makes the images it
      lacks itself.
    keys: the config keys its images depend on besides group and index: the
      pool's identity.
  """

  make: Callable[[ml_collections.ConfigDict, DatasetSpec], Generator]
  prompts: Callable[[ml_collections.ConfigDict, DatasetSpec], prompts_lib.PromptFn]
  makes_own_data: bool = False
  keys: tuple[str, ...] = ()


GENERATORS: Registry[GeneratorDef] = Registry("generator")
GENERATORS.register("stable_diffusion", GeneratorDef(
    _stable_diffusion, _text_prompts,
    keys=tuple(f"generate.{k}" for k in (
        "model", "revision", "prompts", "guidance_scale", "steps", "resolution",
        "scheduler", "dtype", "seed"))))
GENERATORS.register_lazy("procedural", "ffr_jax.demo.generator:PROCEDURAL")


def make_generator(config: ml_collections.ConfigDict, spec: DatasetSpec
                   ) -> Generator:
  """The generator ``config.generate.generator`` names."""
  return GENERATORS.get(config.generate.generator).make(config, spec)


def makes_its_own_data(config: ml_collections.ConfigDict) -> bool:
  """Whether a run generates its missing synthetic images itself."""
  return GENERATORS.get(config.generate.generator).makes_own_data


def generate_synthetic(config: ml_collections.ConfigDict, spec: DatasetSpec,
                       needs: int | Mapping[tuple[int, int], int], root: str,
                       show_progress: bool = True, log_summary: bool = True
                       ) -> writer_lib.GenerationSummary:
  """Generates what is missing of ``needs`` (per group: one int or
  ``{(y, b): count}``) into ``root/spec.name``; returns the writer's summary."""
  definition = GENERATORS.get(config.generate.generator)
  with lifecycle.owned_folder(root, "generating synthetic images"):
    generator = definition.make(config, spec)
    metadata = {"prompts": config.generate.prompts,
                **getattr(generator, "settings", {})}
    summary = writer_lib.generate_dataset(
        generator, spec, needs, root, definition.prompts(config, spec),
        seed=int(config.generate.seed),
        # One call per compiled sampling batch (all devices) where there is one.
        batch_size=int(getattr(generator, "global_batch", config.generate.batch_size)),
        metadata=metadata, show_progress=show_progress)
    if log_summary:
      logging.info("Synthetic images in %s:\n%s", os.path.join(root, spec.name),
                   summary.table())
    return summary


def generate_command(config: ml_collections.ConfigDict, workdir: str,
                     modes: Sequence[str], verify_only: bool = False) -> bool:
  """What ``ffr_jax.generate`` does; False when ``--verify`` found problems.

  Every host samples, host 0 writes the images and ``last_run.json``.
  """
  import jax  # pylint: disable=import-outside-toplevel
  maybe_initialize_distributed()
  config = datasets.resolve_roots(config, workdir)
  root = config.data.synthetic_root
  datasets.prepare_dataset(config)
  splits = datasets.load_dataset(config.data)
  spec = splits.spec
  needs = counts_lib.needed_per_group(spec, splits.train, modes,
                                      counts_lib.configured_per_group(config))
  if verify_only:
    report = writer_lib.verify(root, spec, needs)
    print(report.text())
    return report.ok
  host0 = jax.process_index() == 0
  if host0:
    print(counts_lib.describe(spec, splits.train, needs), file=sys.stderr)
  summary = generate_synthetic(config, spec, needs, root,
                               show_progress=host0, log_summary=False)
  if host0:
    print(summary.table())
    with open(os.path.join(root, spec.name, "last_run.json"), "w") as f:
      json.dump(summary.to_json(), f, indent=2)
  return True
