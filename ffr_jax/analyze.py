"""Seeing why: embeddings and saliency of trained runs.

    python -m ffr_jax.analyze embeddings --workdir=RUN [--workdir=RUN2 ...] \\
        [--out=DIR] [--per_group=100] [--synthetic=auto|heldout|generate|train]
    python -m ffr_jax.analyze rise --workdir=RUN [--workdir=...] [--out=DIR] \\
        [--images=sample:1|PATH,PATH] [--groups=minority|all|NAME,...] \\
        [--rise_masks=2000 --rise_grid=8 --rise_p=0.5 --rise_batch=256]

``--workdir`` takes a run or a sweep folder; repeat it to compare.
``embeddings``: t-SNE of the runs side by side, a real-vs-synthetic linear
probe, per-group centroid distances; ``rise``: a grid of RISE saliency maps
(rows images, columns runs). See docs/analysis.md.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from ffr_jax import cli
from ffr_jax.analysis import reports
from ffr_jax.analysis import rise as rise_lib
from ffr_jax.analysis import run_loading
from ffr_jax.analysis import samples as samples_lib

COMMANDS = ("embeddings", "rise")

_WORKDIR = flags.DEFINE_multi_string(
    "workdir", None, "A training workdir or run folder; repeat to compare.")
_OUT = flags.DEFINE_string(
    "out", None, "Output folder (default: {first workdir}/analysis).")
_STAGE = flags.DEFINE_string(
    "stage", run_loading.LAST,
    "Whose best variables: 'last' (the reported model) or a stage name, e.g. "
    "'stage1' for FFR's synthetic-only model.")
_SYNTHETIC = flags.DEFINE_enum(
    "synthetic", "auto", samples_lib.SYNTHETIC_CHOICES,
    "Synthetic images to analyse: unseen ones of the run's synthetic root "
    "(heldout), new ones from its generator (generate), training ones "
    "(train), or auto (heldout, else generate with a cheap generator).")
_SEED = flags.DEFINE_integer("seed", 0, "Image sampling, probe folds, t-SNE.")
_PER_GROUP = flags.DEFINE_integer(
    "per_group", 100, "embeddings: real test and synthetic images per group.")
_IMAGES = flags.DEFINE_string(
    "images", "sample:1",
    "rise: 'sample:N' (N real + N synthetic images per chosen group) or "
    "comma-separated image paths.")
_GROUPS = flags.DEFINE_string(
    "groups", "minority",
    "rise: groups to sample from: minority, all, or names like 'big dog/indoors'.")
_WITH_SYNTHETIC = flags.DEFINE_bool(
    "with_synthetic", True, "rise: sample synthetic images too.")
_MASKS = flags.DEFINE_integer("rise_masks", 2000, "rise: number of masks N.")
_GRID = flags.DEFINE_integer("rise_grid", 8, "rise: mask cells per side s.")
_P = flags.DEFINE_float("rise_p", 0.5, "rise: probability a cell is kept.")
_BATCH = flags.DEFINE_integer(
    "rise_batch", 256, "rise: masks per step over all devices.")


def main(argv: list[str]) -> None:
  if not _WORKDIR.value:
    raise ValueError("--workdir is required (repeat it to compare runs).")
  workdirs = [os.path.abspath(w) for w in _WORKDIR.value]
  out = os.path.abspath(_OUT.value or os.path.join(workdirs[0], "analysis"))
  common = dict(stage=_STAGE.value, seed=_SEED.value, synthetic=_SYNTHETIC.value)
  if argv[1] == "embeddings":
    report = reports.embeddings_report(workdirs, out, per_group=_PER_GROUP.value,
                                       **common)
    print(reports.embeddings_table(report))
    figure = os.path.join(out, reports.EMBEDDINGS_PNG)
  else:
    cfg = rise_lib.RiseConfig(num_masks=_MASKS.value, grid=_GRID.value,
                              p=_P.value, batch=_BATCH.value, seed=_SEED.value)
    report = reports.rise_report(
        workdirs, out, images=_IMAGES.value, groups=_GROUPS.value,
        with_synthetic=_WITH_SYNTHETIC.value, rise=cfg, **common)
    figure = ", ".join(os.path.join(out, page) for page in report["pages"])
  print(f"\nWrote {figure} (and its .json, .npz).", file=sys.stderr)


if __name__ == "__main__":
  cli.run(main, commands=COMMANDS)
