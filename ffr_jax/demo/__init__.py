"""The built-in, download-free spurious-correlation benchmark (see docs/benchmark.md).

* :mod:`~ffr_jax.demo.render`: the real-image renderer (SpuCo Animals'
  classes, backgrounds and groups; background easy, animal subtle).
* :mod:`~ffr_jax.demo.generator`: :class:`ProceduralGenerator`, a
  prompt-driven generator whose fingerprint strength is a knob.
* :mod:`~ffr_jax.demo.dataset`: :func:`prepare_real` renders the real
  splits into SpuCo's on-disk layout; ``DEMO`` is the ``"demo"`` dataset,
  which the dataset registry lists lazily.
"""

from ffr_jax.demo.dataset import DEMO, prepare_real, split_sizes
from ffr_jax.demo.generator import (
    DEFAULT_STRENGTH, TEMPLATES, ProceduralGenerator, build_prompt, fingerprint,
    parse_prompt)
# ``render`` stays the module (ffr_jax.demo.render.render draws images).
from ffr_jax.demo.render import DEMO_SPEC

__all__ = [
    "DEFAULT_STRENGTH", "DEMO", "DEMO_SPEC", "TEMPLATES", "ProceduralGenerator",
    "build_prompt", "fingerprint", "parse_prompt", "prepare_real",
    "split_sizes",
]
