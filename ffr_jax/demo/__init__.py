"""The built-in, download-free spurious-correlation benchmark (see docs/benchmark.md).

* :mod:`~ffr_jax.demo.render`: the real-image renderer (SpuCo Animals'
  classes, backgrounds and groups; background easy, animal subtle).
* :mod:`~ffr_jax.demo.generator`: :class:`ProceduralGenerator`, a
  prompt-driven generator whose fingerprint strength is a knob;
  ``PROCEDURAL`` is the ``"procedural"`` generator, which the generator
  registry lists lazily.
* :mod:`~ffr_jax.demo.dataset`: :func:`prepare_real` renders the real
  splits into SpuCo's on-disk layout; ``DEMO`` is the ``"demo"`` dataset,
  which the dataset registry lists lazily.
* :mod:`~ffr_jax.demo.upstream`: the upstream pretraining (the benchmark's
  ImageNet); its weights ship as ``UPSTREAM_WEIGHTS``, which every mode of
  ``configs/demo.py`` starts from.
"""

import os


from ffr_jax.demo.dataset import DEFAULT_SCALE, DEMO, prepare_real, split_sizes
from ffr_jax.demo.generator import (
    DEFAULT_STRENGTH, TEMPLATES, ProceduralGenerator, build_prompt, fingerprint,
    parse_prompt)
# ``render`` stays the module (ffr_jax.demo.render.render draws images).
from ffr_jax.demo.render import DEMO_SPEC

# ``python -m ffr_jax.demo pretrain --out=...`` at its defaults (the settings
# and held-out accuracy are in upstream.json beside it).
UPSTREAM_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "upstream.safetensors")

__all__ = [
    "DEFAULT_SCALE", "DEFAULT_STRENGTH", "DEMO", "DEMO_SPEC", "TEMPLATES", "ProceduralGenerator",
    "build_prompt", "fingerprint", "parse_prompt", "prepare_real",
    "split_sizes", "UPSTREAM_WEIGHTS",
]
