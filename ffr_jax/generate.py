"""Generate the balanced synthetic dataset (resumable).

    python -m ffr_jax.generate --config=configs/spuco.py \\
        --config.data.root=DATA --config.generate.model=SD_DIR --workdir=OUT
    python -m ffr_jax.generate --config=... --workdir=OUT --verify

Sizes the groups from the real data as ``--modes`` use them, or
``--config.generate.per_group=N``. Rerunning resumes and repairs. On a
multi-host job every host runs this same command; host 0 writes the files.
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
