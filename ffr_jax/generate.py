"""Generate the balanced synthetic dataset (resumable).

    python -m ffr_jax.generate --config=configs/spuco.py \\
        --config.data.root=DATA --config.generate.model=SD_DIR --workdir=OUT
    python -m ffr_jax.generate --config=... --workdir=OUT --verify

Loads the real dataset (``config.data``) to size the groups: by default what
ASB and FFR stage 1 use at the configured bias ratio (``--modes`` adds USB);
``--config.generate.per_group=N`` asks for ``N`` per group instead. Images go to
``config.data.synthetic_root``, or ``{workdir}/synthetic`` when it is empty (the
same default the training run reads). Rerunning the command resumes: only
missing images are generated. ``--verify`` checks the folder against its
manifest (missing, orphan, duplicate and unreadable files) without generating;
a rerun without it repairs what it finds.

Generators (``config.generate.generator``): ``stable_diffusion`` (a local
diffusers folder, ``config.generate.model``) and ``procedural`` (the built-in
benchmark's generator, ``config.benchmark.*``).

Multi-host: ``jax.distributed.initialize()`` is called only when the
environment says this is a multi-process job (``JAX_COORDINATOR_ADDRESS`` +
``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` as our launchers set, a multi-host
TPU slice, or a SLURM job with several tasks; see
``ffr_jax.training.mesh.maybe_initialize_distributed``). Every host then runs
this same command: sampling is sharded over all devices of all hosts, and host
0 alone writes the images and the manifest (``ffr_jax.generation.writer``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping

import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ffr_jax.data.types import DatasetSpec
from ffr_jax.generation import counts as counts_lib
from ffr_jax.generation import prompts as prompts_lib
from ffr_jax.generation import writer as writer_lib
from ffr_jax.generation.base import Generator

_FLAGS: dict = {}


def _define_flags() -> None:
  """Defines the command's flags; only when run as a command.

  ``ffr_jax.training.run`` imports this module for :func:`generate_synthetic`
  inside ``ffr_jax.main``, which defines ``--config`` and ``--workdir`` itself;
  defining them at import time would clash.
  """
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Path to a configs/*.py file (append :arg for variants).",
      lock_config=True)
  _FLAGS["workdir"] = flags.DEFINE_string(
      "workdir", None, "Output directory; images go to {workdir}/synthetic "
      "unless config.data.synthetic_root is set.")
  _FLAGS["verify"] = flags.DEFINE_bool(
      "verify", False,
      "Only check the folder against its manifest; exit 1 on problems.")
  _FLAGS["modes"] = flags.DEFINE_list(
      "modes", list(counts_lib.DEFAULT_MODES),
      "Compositions the folder must serve (usb, asb, ffr); sizes the groups "
      "when config.generate.per_group is -1.")
  flags.mark_flags_as_required(["config", "workdir"])


def _stable_diffusion(config: ml_collections.ConfigDict, spec: DatasetSpec
                      ) -> Generator:
  del spec  # Stable Diffusion draws whatever the prompt says.
  g = config.generate
  if not g.model:
    raise ValueError(
        "config.generate.model is empty: set --config.generate.model to a local "
        "diffusers folder of Stable Diffusion (e.g. v1.4 with Flax weights).")
  from ffr_jax.generation.stable_diffusion import StableDiffusionGenerator  # pylint: disable=import-outside-toplevel
  return StableDiffusionGenerator(
      g.model, resolution=g.resolution, steps=g.steps,
      guidance_scale=g.guidance_scale, scheduler=g.scheduler, dtype=g.dtype,
      batch_size=g.batch_size)


def _procedural(config: ml_collections.ConfigDict, spec: DatasetSpec
                ) -> Generator:
  try:
    from ffr_jax.benchmark.generator import ProceduralGenerator  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ValueError(
        "generate.generator='procedural' needs ffr_jax.benchmark.generator, "
        f"which failed to import ({e}).") from e
  if "benchmark" not in config:
    raise ValueError(
        "generate.generator='procedural' needs the config.benchmark section "
        "(strength, image_size); use configs/demo.py.")
  return ProceduralGenerator(strength=config.benchmark.strength,
                             image_size=config.benchmark.image_size, spec=spec)


# Explicit registry: config.generate.generator -> constructor.
GENERATORS: dict[str, Callable[[ml_collections.ConfigDict, DatasetSpec], Generator]] = {
    "stable_diffusion": _stable_diffusion,
    "procedural": _procedural,
}


def make_generator(config: ml_collections.ConfigDict, spec: DatasetSpec
                   ) -> Generator:
  """The generator ``config.generate.generator`` names."""
  name = config.generate.generator
  if name not in GENERATORS:
    raise ValueError(f"Unknown generator {name!r}; known: {sorted(GENERATORS)}.")
  return GENERATORS[name](config, spec)


def make_prompt_fn(config: ml_collections.ConfigDict, spec: DatasetSpec
                   ) -> prompts_lib.PromptFn:
  """``prompt_fn(g, index)`` for the configured prompt set and generator.

  The procedural generator reads the group back out of the prompt, so it gets
  the benchmark's own prompt forms; Stable Diffusion gets
  :mod:`ffr_jax.generation.prompts`.
  """
  name, seed = config.generate.prompts, int(config.generate.seed)
  if config.generate.generator != "procedural":
    return prompts_lib.make_prompt_fn(spec, name, seed)
  from ffr_jax.benchmark.generator import build_prompt  # pylint: disable=import-outside-toplevel

  def prompt_fn(g: int, index: int) -> str:
    variant = int(np.random.default_rng([seed, g, index]).integers(1 << 16))
    return build_prompt(spec, *spec.groups[g], template=name, variant=variant)
  return prompt_fn


def generate_synthetic(config: ml_collections.ConfigDict, spec: DatasetSpec,
                       needs: int | Mapping[tuple[int, int], int], root: str,
                       show_progress: bool = True, log_summary: bool = True
                       ) -> writer_lib.GenerationSummary:
  """Generates what is missing of ``needs`` into ``root/spec.name``.

  Args:
    config: the full config (``generate``, and ``benchmark`` for procedural).
    spec: the dataset.
    needs: images per group, one int or ``{(y, b): count}``.
    root: the synthetic root.
    show_progress: progress bar on stderr (host 0).
    log_summary: log the per-group table.

  Returns:
    The writer's per-group summary (also logged).
  """
  generator = make_generator(config, spec)
  metadata = {"prompts": config.generate.prompts,
              **getattr(generator, "settings", {})}
  summary = writer_lib.generate_dataset(
      generator, spec, needs, root, make_prompt_fn(config, spec),
      seed=int(config.generate.seed),
      # One call per compiled sampling batch (all devices) where there is one.
      batch_size=int(getattr(generator, "global_batch", config.generate.batch_size)),
      metadata=metadata, show_progress=show_progress)
  if log_summary:
    logging.info("Synthetic images in %s:\n%s", os.path.join(root, spec.name),
                 summary.table())
  return summary


def _resolve(config: ml_collections.ConfigDict, workdir: str
             ) -> ml_collections.ConfigDict:
  # The training run's defaults, so both commands agree on the folders.
  from ffr_jax.training.run import resolve_roots  # pylint: disable=import-outside-toplevel
  return resolve_roots(config, workdir)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  from ffr_jax.data import datasets  # pylint: disable=import-outside-toplevel
  from ffr_jax.training.mesh import maybe_initialize_distributed  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  maybe_initialize_distributed()
  workdir = os.path.abspath(_FLAGS["workdir"].value)
  config = _resolve(_FLAGS["config"].value, workdir)
  root = config.data.synthetic_root
  if _FLAGS["verify"].value:
    spec = datasets.get_dataset(config.data.name).spec
    report = writer_lib.verify(root, spec)
    print(report.text())
    sys.exit(0 if report.ok else 1)
  splits = datasets.load_dataset(config.data)
  spec = splits.spec
  per_group = (config.generate.per_group if config.generate.per_group >= 0
               else config.data.synthetic_per_group)
  needs = counts_lib.needed_per_group(spec, splits.train, _FLAGS["modes"].value, per_group)
  host0 = jax.process_index() == 0
  if host0:
    print(counts_lib.describe(spec, splits.train, needs), file=sys.stderr)
  summary = generate_synthetic(config, spec, needs, root, show_progress=host0,
                               log_summary=False)
  if host0:
    print(summary.table())
    out = os.path.join(root, spec.name, "last_run.json")
    with open(out, "w") as f:
      json.dump(summary.to_json(), f, indent=2)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
