"""A picture of the benchmark: one row per group, real images next to generated ones."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ffr_jax.demo import generator, render

# Width of the label column and of the gap between real and generated images.
_LABEL_W = 120
_GAP = 12


def grid_image(strength: float = generator.DEFAULT_STRENGTH,
               image_size: int = render.DEFAULT_SIZE, per_group: int = 4,
               seed: int = 0, zoom: int = 2, template: str = "paper",
               content_gap: float = generator.DEFAULT_CONTENT_GAP
               ) -> Image.Image:
  """One row per group: ``per_group`` real images (seeds ``seed + j``), then as
  many generated ones, magnified ``zoom`` times (nearest neighbour)."""
  spec = render.DEMO_SPEC
  gen = generator.ProceduralGenerator(strength, image_size, spec,
                                      content_gap=content_gap)
  cell = image_size * zoom
  width = _LABEL_W + 2 * per_group * cell + _GAP
  height = 16 + len(spec.groups) * cell
  canvas = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  draw.text((_LABEL_W, 2), "real", fill=(0, 0, 0))
  draw.text((_LABEL_W + per_group * cell + _GAP, 2),
            f"generated ({gen.name})", fill=(0, 0, 0))
  seeds = [seed + j for j in range(per_group)]
  for row, (y, b) in enumerate(spec.groups):
    prompt = generator.build_prompt(spec, y, b, template)
    real = render.render([y] * per_group, [b] * per_group, seeds, image_size)
    fake = gen.generate([prompt] * per_group, seeds)
    top = 16 + row * cell
    draw.text((4, top + cell // 2 - 12), spec.group_name(row), fill=(0, 0, 0))
    draw.text((4, top + cell // 2), "majority" if spec.is_majority(y, b)
              else "minority", fill=(110, 110, 110))
    for j, (a, f) in enumerate(zip(real, fake)):
      for image, x0 in ((a, _LABEL_W + j * cell),
                        (f, _LABEL_W + (per_group + j) * cell + _GAP)):
        tile = Image.fromarray(np.asarray(image)).resize((cell, cell), Image.NEAREST)
        canvas.paste(tile, (x0, top))
  return canvas
