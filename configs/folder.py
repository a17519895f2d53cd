"""Any folder of biased images: ``root/{train,val,test}/{class}/{bias}/*.jpg``.

Class and bias names are the folder names (sorted, the same in every split).
``data.majority`` names each class's majority bias (``"class_a:bias_x,
class_b:bias_y"``); empty means the bias with the most train images of the
class (logged). The data is used as found (its ratio is logged) unless
``data.bias_ratio`` asks for one: minority images of train and val are then
dropped by the authors' rule, as for SpuCo Animals; test is never changed.

Synthetic prompts come from ``generate.template`` (``{class}`` or
``{a_class}``, and ``{bias}``; underscores in folder names read as spaces);
``--config.generate.prompts=paper`` uses the paper's template instead.

Usage: ``--config=configs/folder.py --config.data.root=DIR`` or ``...:smoke``.
"""

from __future__ import annotations

import ml_collections

from ffr_jax.config import apply_arg, base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The locked config; ``arg`` is ``None`` or ``"smoke"``."""
  config = base_config()
  config.data.name = "folder"
  config.data.bias_ratio = -1.0  # -1: as found
  config.data.majority = ""  # class:bias,... naming each class's majority bias; "": the most frequent
  config.generate.template = ml_collections.FieldReference(  # prompt with {class} or {a_class}, and {bias}
      "a photo of a {class} in {bias}")
  # The prompt set is the template (a prompt set may be a template string).
  config.generate.prompts = config.generate.get_ref("template")
  apply_arg(config, arg)
  return config.lock()
