"""Train and evaluate FFR and its baselines.

    python -m ffr_jax.main --config=configs/spuco.py --workdir=DIR \
        [--config.mode=ffr --config.method=groupdro --config.data.root=...]

``--config=configs/demo.py`` runs the whole pipeline on the built-in,
download-free benchmark. Rerunning the same command resumes.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ffr_jax.reporting import results as results_lib
from ffr_jax.training import run

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file (append :arg for variants).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, logs and results.")
_CACHE = flags.DEFINE_string(
    "compilation_cache",
    os.path.join(os.path.expanduser("~"), ".cache", "ffr_jax", "xla"),
    "Persistent XLA compilation cache ('' to disable): a rerun or a resumed "
    "run skips recompiling, which is most of a small run's start-up.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
  """A log filter: INFO lines from our own modules, warnings from libraries.

  Orbax logs every checkpoint step at INFO through absl; at INFO level those
  lines would bury the run's own progress.
  """

  def filter(self, record) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    return "ffr_jax" in record.pathname.replace("\\", "/")


def _configure_logging() -> None:
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())


def _enable_compilation_cache(path: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if path and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _configure_logging()
  _enable_compilation_cache(_CACHE.value)
  workdir = os.path.abspath(_WORKDIR.value)
  runs = run.train_and_evaluate(_CONFIG.value, workdir)
  table = results_lib.markdown_table(results_lib.summary_rows(runs))
  print(table)
  where = "summary.md, summary.png" if len(runs) > 1 else "results.json"
  print(f"\nResults in {workdir} ({where}).", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
