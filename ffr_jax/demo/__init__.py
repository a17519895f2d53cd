"""The built-in, download-free spurious-correlation benchmark (docs/benchmark.md):
the real-image renderer, the procedural generator, the ``"demo"`` dataset and
the upstream pretraining whose weights (``UPSTREAM_WEIGHTS``) every mode of
``configs/demo.py`` starts from."""

import os

from ffr_jax.demo.dataset import DEFAULT_SCALE, DEMO, prepare_real, split_sizes
from ffr_jax.demo.generator import (
    DEFAULT_STRENGTH, TEMPLATES, ProceduralGenerator, build_prompt, fingerprint,
    parse_prompt)
# ``render`` stays the module (ffr_jax.demo.render.render draws images).
from ffr_jax.demo.render import DEMO_SPEC

# ``python -m ffr_jax.benchmark pretrain`` at its defaults (settings in upstream.json).
UPSTREAM_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "upstream.safetensors")
