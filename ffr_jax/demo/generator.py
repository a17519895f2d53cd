"""A prompt-driven stand-in for Stable Diffusion with a tunable fingerprint.

:class:`ProceduralGenerator` reads the group from a prompt, renders it on its
own random stream and adds a *generator fingerprint* (after Corvi et al.),
linear in ``strength``: a blend towards a 3x3 box blur, a tint and contrast
stretch, and a period-2 checkerboard. With ``strength`` and ``content_gap``
at 0 the images are the real renderer's, byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import ml_collections
import numpy as np

from ffr_jax.demo import render
from ffr_jax.data.types import DatasetSpec
from ffr_jax.generation import prompts as prompts_lib
from ffr_jax.generation.factory import GeneratorDef

# The paper's template, and the richer one of the authors' SpuCo script.
TEMPLATES = {
    "paper": "A photo of {bias} {cls}",
    "rich": "a photo of a {cls} in {location}",
}
# Places a "rich" prompt may name, per bias value (after the authors' location
# lists for SpuCo). The bias word itself ("in water") is accepted too.
LOCATIONS = {
    "land": ("a forest", "a field", "a desert", "the mountains"),
    "water": ("a lake", "the ocean", "a river", "a pond"),
    "indoors": ("a kitchen", "a living room", "a bedroom", "an office"),
    "outdoors": ("a park", "a garden", "a backyard", "a street"),
}
DEFAULT_STRENGTH = 0.5
# No content gap: the generated images show what the real ones show.
DEFAULT_CONTENT_GAP = 0.0
# The config.benchmark keys that change generated images only (never the real
# renders); the generator also depends on benchmark.image_size.
SYNTHETIC_ONLY_KEYS = ("strength", "content_gap")
GENERATOR_KEYS = SYNTHETIC_ONLY_KEYS + ("image_size",)
# Images from the generator use their own random stream: never a real image.
GENERATOR_SALT = 1

# The fingerprint at strength 1 (units: 0..255 pixel values).
_BLUR_WEIGHT = 0.5
_TINT = np.array([5.0, 1.5, -5.0], np.float32)
_CONTRAST = 0.1
_CHECKER = np.array([1.5, -1.5, 1.5], np.float32)


def build_prompt(spec: DatasetSpec, y: int, b: int, template: str = "paper",
                 variant: int = 0) -> str:
  """The prompt that asks for group ``(y, b)``, e.g. ``"A photo of indoors small
  dog"``; with ``"rich"``, ``variant`` picks the location (cyclically)."""
  spec.group_index(y, b)
  cls, bias = spec.class_names[y], spec.bias_names[b]
  if template == "paper":
    return TEMPLATES["paper"].format(bias=bias, cls=cls)
  if template == "rich":
    if bias not in LOCATIONS:
      raise ValueError(
          f"No locations for bias {bias!r} of {spec.name}; the 'rich' template "
          f"knows {sorted(LOCATIONS)}. Use template='paper'.")
    places = LOCATIONS[bias]
    return TEMPLATES["rich"].format(cls=cls, location=places[variant % len(places)])
  raise ValueError(
      f"Unknown prompt template {template!r}; expected one of {sorted(TEMPLATES)}.")


def _alternatives(words: Sequence[str]) -> str:
  """A regex group matching any of ``words``, longest first."""
  return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def accepted_forms(spec: DatasetSpec) -> str:
  """Human-readable list of the prompt forms :func:`parse_prompt` accepts."""
  return (
      f"'{TEMPLATES['paper'].format(bias='{bias}', cls='{class}')}' or "
      f"'{TEMPLATES['rich'].format(cls='{class}', location='{location}')}' "
      f"with class in {list(spec.class_names)}, bias in "
      f"{list(spec.bias_names)} and location one of the bias's places "
      f"{dict(LOCATIONS)} or the bias word itself (case-insensitive)")


def parse_prompt(prompt: str, spec: DatasetSpec = render.DEMO_SPEC
                 ) -> tuple[int, int]:
  """Reads the group ``(y, b)`` a prompt asks for; raises quoting the prompt."""
  text = re.sub(r"\s+", " ", prompt.strip().lower()).rstrip(".!")
  classes = _alternatives(spec.class_names)
  biases = _alternatives(spec.bias_names)
  place_of = {p: b for b, places in LOCATIONS.items() for p in places}
  m = re.fullmatch(rf"a photo of (?:an? )?({biases}) ({classes})", text)
  if m:
    bias, cls = m.group(1), m.group(2)
  else:
    m = re.fullmatch(rf"a photo of (?:an? )?({classes}) (?:in|on|at) (.+)", text)
    place = m.group(2) if m else ""
    bare = re.sub(r"^(?:the|a|an) ", "", place)
    if m and place in place_of and place_of[place] in spec.bias_names:
      cls, bias = m.group(1), place_of[place]
    elif m and bare in spec.bias_names:
      cls, bias = m.group(1), bare
    else:
      raise ValueError(
          f"Cannot read a group from the prompt {prompt!r}: expected "
          f"{accepted_forms(spec)}.")
  y, b = spec.class_index(cls), spec.bias_index(bias)
  if (y, b) not in spec.groups:
    raise ValueError(
        f"The prompt {prompt!r} asks for ({cls}, {bias}), which is not a group "
        f"of {spec.name}; groups are "
        f"{[spec.group_name(g) for g in range(len(spec.groups))]}.")
  return y, b


def _box_blur(images: np.ndarray) -> np.ndarray:
  """3x3 mean filter with edge padding, ``[N, H, W, C]``."""
  h, w = images.shape[1:3]
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  out = np.zeros_like(images)
  for dy in range(3):
    for dx in range(3):
      out += padded[:, dy:dy + h, dx:dx + w]
  return out / 9.0


def fingerprint(images: np.ndarray, strength: float) -> np.ndarray:
  """Applies the generator fingerprint to float images (0..255, ``[N,H,W,3]``)."""
  if strength < 0:
    raise ValueError(f"fingerprint strength must be >= 0, got {strength}.")
  if strength == 0:
    return images
  images = images.astype(np.float32)
  blur = min(_BLUR_WEIGHT * strength, 1.0)
  out = (1 - blur) * images + blur * _box_blur(images)
  mean = out.mean(axis=(1, 2), keepdims=True)
  out = mean + (out - mean) * (1 + _CONTRAST * strength) + strength * _TINT
  h, w = images.shape[1:3]
  parity = (np.add.outer(np.arange(h), np.arange(w)) % 2) * 2 - 1
  return out + strength * parity[None, :, :, None] * _CHECKER


class ProceduralGenerator:
  """Renders the group a prompt names, with a generator fingerprint; a
  :class:`ffr_jax.generation.base.Generator`."""

  def __init__(self, strength: float = DEFAULT_STRENGTH,
               image_size: int = render.DEFAULT_SIZE,
               spec: DatasetSpec = render.DEMO_SPEC,
               content_gap: float = DEFAULT_CONTENT_GAP):
    if strength < 0:
      raise ValueError(f"fingerprint strength must be >= 0, got {strength}.")
    if spec.groups != render.GROUPS:
      raise ValueError(
          f"ProceduralGenerator renders the benchmark's groups {render.GROUPS}; "
          f"{spec.name} has {spec.groups}.")
    self.strength = float(strength)
    self.content_gap = render.check_content_gap(content_gap)
    self.image_size = render.check_size(image_size)
    self.spec = spec
    # Unchanged at gap 0, so manifests written before the knob stay valid.
    gap_tag = f"-cg{self.content_gap:g}" if self.content_gap else ""
    self.name = f"procedural-fp{self.strength:g}{gap_tag}"

  def parse(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Classes and biases the prompts ask for, as int arrays."""
    groups = [parse_prompt(p, self.spec) for p in prompts]
    ys = np.array([y for y, _ in groups], np.int64).reshape(-1)
    bs = np.array([b for _, b in groups], np.int64).reshape(-1)
    return ys, bs

  def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
    if len(prompts) != len(seeds):
      raise ValueError(
          f"generate: {len(prompts)} prompts but {len(seeds)} seeds.")
    ys, bs = self.parse(prompts)
    images = render.render_float(ys, bs, seeds, self.image_size,
                                 salt=GENERATOR_SALT,
                                 content_gap=self.content_gap)
    return render.quantize(fingerprint(images, self.strength))


def _make(config: ml_collections.ConfigDict, spec: DatasetSpec
          ) -> ProceduralGenerator:
  if "benchmark" not in config:
    raise ValueError(
        "generate.generator='procedural' needs the config.benchmark section "
        "(strength, image_size); use configs/demo.py.")
  return ProceduralGenerator(
      strength=config.benchmark.strength,
      content_gap=config.benchmark.content_gap,
      image_size=config.benchmark.image_size, spec=spec)


def _prompts(config: ml_collections.ConfigDict, spec: DatasetSpec
             ) -> prompts_lib.PromptFn:
  """The benchmark's own prompt forms: its generator reads the group back."""
  name, seed = config.generate.prompts, int(config.generate.seed)

  def prompt_fn(g: int, index: int) -> str:
    variant = int(np.random.default_rng([seed, g, index]).integers(1 << 16))
    return build_prompt(spec, *spec.groups[g], template=name, variant=variant)
  return prompt_fn


# Listed lazily in ffr_jax.generation.factory.GENERATORS as "procedural".
PROCEDURAL = GeneratorDef(
    _make, _prompts, makes_own_data=True,
    keys=("generate.prompts", "generate.seed",
          *(f"benchmark.{k}" for k in GENERATOR_KEYS)))
