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
manifest (missing, orphan, duplicate and unreadable files, and groups with
fewer usable images than the config needs) without generating, and exits 1 on
any problem; a rerun without it repairs what it finds (unreadable images are
regenerated).

Generators (``config.generate.generator``, see
:mod:`ffr_jax.generation.factory`): ``stable_diffusion`` (a diffusers folder,
``config.generate.model``) and ``procedural`` (the built-in benchmark's
generator, ``config.benchmark.*``).

Multi-host: ``jax.distributed.initialize()`` is called only when the
environment says this is a multi-process job (``JAX_COORDINATOR_ADDRESS`` +
``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` as our launchers set, a multi-host
TPU slice, or a SLURM job with several tasks; see
``ffr_jax.mesh.maybe_initialize_distributed``). Every host then runs
this same command: sampling is sharded over all devices of all hosts, and host
0 alone writes the images and the manifest (``ffr_jax.generation.writer``).
"""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

from ffr_jax import cli
from ffr_jax.generation import counts as counts_lib
from ffr_jax.generation import factory

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file (append :arg for variants).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory; images go to {workdir}/synthetic "
    "unless config.data.synthetic_root is set.")
_VERIFY = flags.DEFINE_bool(
    "verify", False,
    "Only check the folder against its manifest and the counts the config "
    "needs; exit 1 on problems.")
_MODES = flags.DEFINE_list(
    "modes", list(counts_lib.DEFAULT_MODES),
    "Compositions the folder must serve (usb, asb, ffr); sizes the groups "
    "when config.generate.per_group is -1.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  del argv
  if not factory.generate_command(_CONFIG.value, os.path.abspath(_WORKDIR.value),
                                  _MODES.value, verify_only=_VERIFY.value):
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
