"""The generator interface shared by Stable Diffusion and the built-in benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Generator(Protocol):
  """Turns prompts into images.

  Attributes:
    name: recorded in each manifest line (e.g. ``"sd-v1-4"`` or
      ``"procedural-fp0.5"``).
    image_size: side of the square images it returns.
  """

  name: str
  image_size: int

  def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
    """Returns ``uint8 [len(prompts), image_size, image_size, 3]``.

    Image ``i`` must depend only on ``(prompts[i], seeds[i])``, never on the
    batch it was generated in, so that generation is reproducible across batch
    sizes, device counts and resumed runs.
    """
    ...
