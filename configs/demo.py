"""The built-in, download-free benchmark ("demo"): see docs/benchmark.md.

Real images are rendered into SpuCo Animals' on-disk layout on first use,
synthetic ones by the procedural generator. With the default mode list, each
mode's run is ``{workdir}/runs/mode={mode}/method=erm``, and the rendered
images are shared under ``{workdir}/shared/{real,synthetic}/``.

Usage::

    python -m ffr_jax.main --config=configs/demo.py --workdir=/tmp/demo
    python -m ffr_jax.main --config=configs/demo.py:smoke ...   # about a minute
"""

from __future__ import annotations

import ml_collections

from ffr_jax import config as base
from ffr_jax import demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config; ``arg="smoke"`` makes it tiny (for tests)."""
  c = base.base_config()

  c.benchmark = ml_collections.ConfigDict()
  c.benchmark.scale = demo.DEFAULT_SCALE  # share of SpuCo's sizes (0.05: 500/25 train per group)
  c.benchmark.image_size = ml_collections.FieldReference(32)  # side of every image in pixels
  c.benchmark.seed = 0          # seeds every real image
  c.benchmark.strength = 0.5    # generator fingerprint; 0 = real distribution (calibrated)
  # 0.75 (with strength 0.5) is the calibration's choice: synthetic-only
  # training closest to the paper's 51.2 WA, probe >= 0.95 (docs/benchmark.md,
  # "Calibration runs").
  c.benchmark.content_gap = 0.75  # generated content/style shift (0 = real content)

  c.data.name = "demo"
  c.data.root = ""              # "": rendered into the workdir on first use
  c.data.synthetic_root = ""    # "": generated into the workdir on first use
  c.data.bias_ratio = 0.99
  c.data.image_size = c.benchmark.get_ref("image_size")
  c.data.cache_images = True    # a few thousand 32 px images: keep them decoded

  c.model.name = "tiny"         # 4 modes train in minutes on 2 cores
  # Every mode starts from the upstream-pretrained backbone, as every mode in
  # the paper starts from ImageNet (python -m ffr_jax.benchmark pretrain).
  c.model.pretrained = demo.UPSTREAM_WEIGHTS

  c.train.batch_size = 64
  c.train.epochs = 5
  # -1: each mode's rate that validation picked at 99% bias in the second
  # verdict (docs/experiments.md), adopted after that sweep, from val only; a
  # --config.train.lr=X runs every mode at X.
  c.train.lr = base.AUTHORS_LR
  c.train.lr_by_mode = "none:1e-4,usb:1e-3,asb:1e-3,ffr:1e-5"
  c.train.eval_batch_size = 512
  c.train.log_every = 20
  c.stage1.epochs = 5
  c.stage1.lr = 1e-3

  # The four modes with ERM, run as a sweep in one process.
  c.mode = "none,usb,asb,ffr"
  c.method = "erm"

  c.generate.generator = "procedural"
  c.generate.prompts = "paper"  # "A photo of {bias} {class}"; or "rich"
  c.generate.resolution = c.benchmark.get_ref("image_size")
  c.generate.batch_size = 256

  base.apply_arg(c, arg)        # "smoke": 1 epoch, batch 16, tiny model, 32 px
  if arg == base.SMOKE:
    c.benchmark.scale = 0.01    # train 100/5 per group; val 10; test 20
  c.lock()
  return c
