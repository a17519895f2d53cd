"""Run a grid of experiments, each in its own sub-workdir; rerun to resume.

The engine and the sweep config format are :mod:`ffr_jax.experiments`.

    python -m ffr_jax.sweep --config=configs/sweeps/paper.py:demo --workdir=DIR
    python -m ffr_jax.sweep --config=... --workdir=DIR --list       # commands
    python -m ffr_jax.sweep --config=... --workdir=DIR --shard=3/16 # one shard
    python -m ffr_jax.sweep --config=... --workdir=DIR --shard=auto # as many as free
    python -m ffr_jax.sweep --config=... --workdir=DIR --prepare    # data only
    python -m ffr_jax.sweep --config=... --workdir=DIR --filter=mode=ffr/
"""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

from ffr_jax import cli
from ffr_jax import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A sweep config file (configs/sweeps/*.py[:arg]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The sweep's directory (runs/, shared/, sweep.json).")
_LIST = flags.DEFINE_bool(
    "list", False, "Print one ffr_jax.main command per run and exit.")
_SHARD = flags.DEFINE_string(
    "shard", "0/1", "i/n: run only shard i of n (0-based); auto: any number of "
    "processes (one host each) take whole units of runs as they get free.")
_FILTER = flags.DEFINE_string(
    "filter", "", "Only runs whose name matches this regular expression "
    "(re.search), e.g. 'mode=ffr/' or 'train.lr='; applied after --shard.")
_PREPARE = flags.DEFINE_bool(
    "prepare", False, "Only render/generate the shared data, then exit.")
_EXECUTOR = flags.DEFINE_enum(
    "executor", "subprocess", sorted(experiments.EXECUTORS),
    "subprocess: one ffr_jax.main process per run (isolated); inprocess: "
    "all runs in this process (no start-up cost per run).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  del argv
  finished = experiments.sweep_command(
      _CONFIG.value, os.path.abspath(_WORKDIR.value), shard_spec=_SHARD.value,
      name_filter=_FILTER.value, list_only=_LIST.value,
      prepare_only=_PREPARE.value, executor=_EXECUTOR.value)
  if not finished:
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
