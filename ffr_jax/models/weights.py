"""Load torchvision ResNet checkpoints into our Flax variables.

``model.pretrained`` is a ``.safetensors`` file (no torch), a ``.pth`` (needs
torch; ``python -m ffr_jax.models.weights IN.pth OUT.safetensors`` converts
it) or ``hf-hub:ORG/NAME[@REVISION]``, a timm repository's
``model.safetensors`` (``hf-hub:timm/resnet50.tv_in1k`` is the paper's
torchvision ResNet-50). The authors replace the 1000-way ``fc``: by default it
is loaded only when its shape equals the model's head.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from flax import traverse_util
import jax.numpy as jnp
import numpy as np

from ffr_jax import hub

HUB_PREFIX = hub.HUB_PREFIX
Variables = dict[str, Any]

_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_IGNORED_SUFFIXES = ("num_batches_tracked",)


# ``model.pretrained`` for a fresh initialisation; "" is refused on real data.
NONE = "none"


def pretrained_source(value: str, real_data: bool) -> str | None:
  """The file or hub id ``model.pretrained`` names; None for a fresh initialisation.

  Empty is an error on real data: the paper always starts from ImageNet, so
  training from scratch must be asked for.
  """
  if value == NONE or (not value and not real_data):
    return None
  if not value:
    raise ValueError(
        "config.model.pretrained is empty: set it to ImageNet weights, "
        f"{HUB_PREFIX}timm/resnet50.tv_in1k (downloaded once) or a local "
        ".pth/.safetensors file, or to 'none' to train from scratch.")
  if value.startswith(HUB_PREFIX):
    return value
  if not os.path.isfile(value):
    raise FileNotFoundError(
        f"config.model.pretrained={value!r} is not a file (a .pth or "
        f".safetensors file, {HUB_PREFIX}ORG/NAME, or 'none').")
  if os.path.splitext(value)[1].lower() == ".safetensors":
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    try:
      with safe_open(value, "numpy") as f:
        if not list(f.keys()):
          raise ValueError("it holds no tensors")
    except Exception as e:  # pylint: disable=broad-except  # any unreadable file
      raise WeightsError(f"config.model.pretrained={value!r} is not readable "
                         f"as weights ({e}); give a torchvision ResNet "
                         ".safetensors file.") from None
  return value


class WeightsError(ValueError):
  """A checkpoint that cannot be read or does not fit the model."""


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """A torchvision state dict from ``.safetensors`` (no torch) or ``.pth``."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No checkpoint file at {path!r}.")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    from safetensors.numpy import load_file
    return dict(load_file(path))
  if ext in (".pth", ".pt", ".bin"):
    return _read_torch(path)
  raise WeightsError(
      f"Unsupported checkpoint extension {ext!r} for {path!r}; expected .safetensors or "
      ".pth/.pt.")


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise WeightsError(
        f"Reading {path!r} needs PyTorch, which is not installed (it is not a dependency "
        "of ffr_jax). Convert the file once on a machine with torch:\n"
        f"  python -m ffr_jax.models.weights {path} {os.path.splitext(path)[0]}.safetensors\n"
        "and pass the .safetensors file instead.") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  # Training checkpoints often wrap the weights; torchvision's files are the dict itself.
  for key in ("state_dict", "model"):
    if isinstance(state.get(key), Mapping):
      state = state[key]
  return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def convert_pth_to_safetensors(pth_path: str | os.PathLike[str],
                               out_path: str | os.PathLike[str]) -> None:
  """Converts a torch checkpoint to ``.safetensors`` (needs torch; run once)."""
  from safetensors.numpy import save_file
  state = _read_torch(os.fspath(pth_path))
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.fspath(out_path))


# timm's default ResNet variant (7x7 stem, strided-conv shortcut: ``.tv_in1k``,
# ``.a1_in1k``, ...) names every module as torchvision does. Other variants
# (deep stem ``conv1.0``, average-pool shortcut, ``se``/``attn`` blocks) are
# other architectures: refused, not silently mis-mapped.
_TIMM_MODULES = (
    (re.compile(r"^(conv1|bn1|fc)$"), r"\1"),
    (re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3])$"), r"layer\1.\2.\3"),
    (re.compile(r"^layer([1-4])\.(\d+)\.downsample\.([01])$"), r"layer\1.\2.downsample.\3"),
)
_TIMM_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def timm_to_torchvision_name(name: str) -> str | None:
  """torchvision's name for a timm ResNet parameter, or None if it has none."""
  module, _, leaf = name.rpartition(".")
  if leaf not in _TIMM_LEAVES:
    return None
  for pattern, replacement in _TIMM_MODULES:
    if pattern.match(module):
      return f"{pattern.sub(replacement, module)}.{leaf}"
  return None


def timm_to_torchvision(state: Mapping[str, np.ndarray], source: str = "the checkpoint"
                        ) -> dict[str, np.ndarray]:
  """A timm ResNet state dict under torchvision's names; WeightsError names
  parameters of another timm variant."""
  out, unknown = {}, []
  for name, value in state.items():
    tv_name = timm_to_torchvision_name(name)
    if tv_name is None:
      unknown.append(name)
    else:
      out[tv_name] = value
  if unknown:
    shown = ", ".join(sorted(unknown)[:5]) + (" ..." if len(unknown) > 5 else "")
    raise WeightsError(
        f"{source} is not a torchvision-style timm ResNet: {len(unknown)} parameters have "
        f"names of another variant ({shown}); use e.g. {HUB_PREFIX}timm/resnet50.tv_in1k.")
  return out


def flax_to_torch_name(collection: str, path: tuple[str, ...]) -> str:
  """torchvision's name for a leaf, e.g. ``params``, ``("layer1_0", "conv1",
  "kernel")`` -> ``layer1.0.conv1.weight``."""
  *modules, leaf = path
  parts = []
  for m in modules:
    if m in _MODULE_NAMES:
      parts.append(_MODULE_NAMES[m])
    elif m.startswith("layer") and "_" in m:
      parts.append(m.replace("_", ".", 1))  # layer1_0 -> layer1.0
    else:
      parts.append(m)
  try:
    parts.append(_LEAF_NAMES[(collection, leaf)])
  except KeyError:
    raise WeightsError(f"No torchvision name for {collection}/{'/'.join(path)}.") from None
  return ".".join(parts)


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
  """Transposes torch layouts to ours: conv OIHW -> HWIO, linear (out,in) -> (in,out)."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    return value.T
  return value


def torchvision_to_flax(state: Mapping[str, np.ndarray], variables: Mapping[str, Any],
                        keep_head: bool | None = None) -> Variables:
  """``variables`` (from ``model.init``) with every backbone leaf from ``state``.

  ``keep_head``: load the checkpoint's ``fc`` (True), keep the model's (False),
  or load it when the shapes match (None). WeightsError lists every missing
  key, unexpected key and shape mismatch at once.
  """
  template = {(col,) + p: v for col in ("params", "batch_stats")
              for p, v in traverse_util.flatten_dict(
                  variables.get(col, {})).items()}
  load_head = keep_head
  if load_head is None:
    kernel = template.get(("params", "fc", "kernel"))
    load_head = (kernel is not None and "fc.weight" in state
                 and state["fc.weight"].shape[::-1] == tuple(kernel.shape))
  out, missing, mismatched, used = {}, [], [], set()
  for path, ref in template.items():
    if path[1] == "fc" and not load_head:  # the head
      out[path] = ref
      continue
    name = flax_to_torch_name(path[0], path[1:])
    if name not in state:
      missing.append(name)
      continue
    used.add(name)
    value = _to_flax_layout(np.asarray(state[name]))
    if value.shape != tuple(ref.shape):
      mismatched.append(f"{name}: checkpoint {tuple(state[name].shape)} -> {value.shape}, "
                        f"model expects {tuple(ref.shape)} at {'/'.join(path)}")
      continue
    out[path] = jnp.asarray(value, dtype=ref.dtype)
  unexpected = sorted(k for k in state if k not in used and not k.endswith(_IGNORED_SUFFIXES)
                      and not (k.startswith("fc.") and not load_head))
  if missing or unexpected or mismatched:
    raise WeightsError(_mismatch_message(missing, unexpected, mismatched))
  tree = traverse_util.unflatten_dict(out)
  return {col: tree.get(col, variables[col]) for col in variables}


def _mismatch_message(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
  lines = ["The checkpoint does not fit the model (is it a torchvision ResNet of the same "
           "depth and width?)."]
  for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                       ("shape mismatches", mismatched)):
    if items:
      lines.append(f"{len(items)} {title}:")
      lines.extend(f"  {item}" for item in items)
  return "\n".join(lines)


def load_torchvision_weights(path: str | os.PathLike[str], variables: Mapping[str, Any],
                             keep_head: bool | None = None) -> Variables:
  """Reads a checkpoint file or hub reference onto ``variables``
  (:func:`torchvision_to_flax`)."""
  path = os.fspath(path)
  if hub.is_hub_ref(path):
    # A timm repository's weights, renamed to torchvision's (no torch).
    local = hub.download_file(hub.parse_hub_ref(path), "model.safetensors")
    state = timm_to_torchvision(read_state_dict(local), source=path)
  else:
    state = read_state_dict(path)
  return torchvision_to_flax(state, variables, keep_head=keep_head)


def main(argv: list[str]) -> int:
  """``python -m ffr_jax.models.weights IN.pth OUT.safetensors``."""
  if len(argv) != 3:
    print("usage: python -m ffr_jax.models.weights IN.pth OUT.safetensors", file=sys.stderr)
    return 2
  convert_pth_to_safetensors(argv[1], argv[2])
  print(f"wrote {argv[2]}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
