"""The generator interface shared by Stable Diffusion and the built-in benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Generator(Protocol):
  """Turns prompts into images."""

  name: str  # recorded in each manifest line
  image_size: int  # side of the square images

  def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
    """``uint8 [len(prompts), image_size, image_size, 3]``; image ``i`` depends
    only on ``(prompts[i], seeds[i])``, never on its batch (resumable runs)."""
    ...
