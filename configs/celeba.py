"""CelebA (y = Blond_Hair, b = Male by default), the official partition.

Any other attribute pair is a config change: ``--config.data.target_attribute``
and ``--config.data.bias_attribute`` name two of ``list_attr_celeba.txt``'s 40
columns; class and bias names come from the attribute names ("not blond" /
"blond", "female" / "male"). ``data.majority`` says which bias value dominates
each class (``"class:bias,..."`` in those names); empty means the value with
the most official train images of each class. Train is pre-biased to 90%,
then brought to ``data.bias_ratio``, as for CelebA-HQ; val and test stay
official (``--config.data.bias_val=True``: val too, the paper's protocol).

Usage: ``--config=configs/celeba.py --config.data.root=DIR`` or ``...:smoke``.
"""

from __future__ import annotations

import ml_collections

from ffr_jax.config import apply_arg, base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The locked config; ``arg`` is ``None`` or ``"smoke"``."""
  config = base_config()
  config.data.name = "celeba"
  config.data.target_attribute = "Blond_Hair"  # the attribute that is the class
  config.data.bias_attribute = "Male"  # the attribute that is the bias
  # The usual pairing: blond goes with female, not blond with male. (By the
  # official train counts alone, not blond would be female: 71629 vs 66874.)
  config.data.majority = "not blond:male,blond:female"  # each class's majority bias
  config.generate.steps = 25  # the authors' steps for faces
  config.data.bias_val = False  # the official val
  apply_arg(config, arg)
  return config.lock()
