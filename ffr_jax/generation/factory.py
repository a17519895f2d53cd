"""Generators, prompt functions, ``generate_synthetic`` and what the
``generate`` command does (``generate_command``): the library side of
generation, also used by a training run that makes the built-in benchmark's
synthetic images itself.

Generators (``config.generate.generator``): ``stable_diffusion`` (a diffusers
folder, ``config.generate.model``) and ``procedural`` (the built-in
benchmark's generator, ``config.benchmark.*``), which lives in
:mod:`ffr_jax.demo.generator` and is listed lazily.
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
    make: ``make(config, spec) -> Generator``.
    prompts: ``prompts(config, spec) -> prompt_fn(g, index)``.
    makes_own_data: cheap and offline (the built-in benchmark's): a training
      run makes the images it lacks itself, so the demo is one command.
    keys: the config keys its images depend on (an image is a function of
      these, the group and its index): the pool's identity.
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
# The built-in benchmark's generator lives in ffr_jax.demo: imported on first
# lookup, never as a side effect.
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
  """Generates what is missing of ``needs`` into ``root/spec.name``.

  Args:
    config: the full config (``generate``, and ``benchmark`` for procedural).
    needs: images per group, one int or ``{(y, b): count}``.
    show_progress: progress bar on stderr (host 0).
    log_summary: log the per-group table.

  Returns:
    The writer's per-group summary (also logged).
  """
  definition = GENERATORS.get(config.generate.generator)
  with lifecycle.owned_folder(root, "generating synthetic images"):
    return _generate(definition, config, spec, needs, root, show_progress,
                     log_summary)


def _generate(definition, config, spec, needs, root, show_progress,
              log_summary) -> writer_lib.GenerationSummary:
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

  Sizes the groups from the real training split (what ``modes`` need, or
  ``generate.per_group``), then generates what is missing into the
  synthetic root (every host samples, host 0 writes) and writes
  ``last_run.json`` beside the manifest; or, ``verify_only``, checks the
  folder and prints the report.
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
