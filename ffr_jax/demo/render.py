"""The built-in benchmark's real-image renderer, after SpuCo Animals.

Four classes on four backgrounds, SpuCo Animals' eight groups: the background
is a big, easy cue, the class a subtle one (a small animal silhouette in a
random colour, position, scale and facing). Image ``i`` depends only on
``(y, b, seed, size, salt)``. ``content_gap`` in [0, 1] (docs/benchmark.md)
moves what is drawn towards larger, centred, saturated animals on cleaner
backgrounds; each change is ``x + gap * (...)``, so gap 0 gives the real bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ffr_jax.data import spuco
from ffr_jax.data.types import DatasetSpec

# SpuCo Animals' names and groups, under the name "demo" (the name is also the
# folder of the benchmark's generated images inside a synthetic-images root).
DEMO_SPEC: DatasetSpec = dataclasses.replace(spuco.SPEC, name="demo")
CLASS_NAMES = DEMO_SPEC.class_names
BIAS_NAMES = DEMO_SPEC.bias_names
GROUPS = DEMO_SPEC.groups

MIN_SIZE, MAX_SIZE = 16, 128
DEFAULT_SIZE = 32
# Per-pixel sensor noise of the real images (in 0..255 units).
NOISE_STD = 6.0
# Side of the coarse random grid that is upsampled into the background mottling.
TEXTURE_GRID = 6
# How many uniform numbers each image draws for its scene parameters.
_NUM_PARAMS = 16
# Images drawn per vectorised step; bounds host memory at large sizes.
_CHUNK = 512

# Base colours of the backgrounds (RGB, 0..255); two per background, e.g.
# wall/floor or sky/grass, the second used below a random horizon.
_BG_TOP = np.array([[112, 100, 58], [40, 92, 150], [196, 176, 146],
                    [146, 186, 226]], np.float32)
_BG_BOTTOM = np.array([[96, 84, 48], [30, 74, 130], [122, 82, 50],
                       [70, 132, 60]], np.float32)
# Strength of each background's texture: (mottling, horizontal waves, planks).
_BG_TEXTURE = np.array([[26, 0, 0], [6, 16, 0], [5, 0, 14], [10, 0, 0]],
                       np.float32)
# Backgrounds with a horizon (wall/floor, sky/grass) and where it lies.
_HAS_HORIZON = np.array([0, 0, 1, 1], np.float32)

# The content gap at 1 (docs/benchmark.md, "The content gap"): each effect
# grows linearly with the gap from 0 (the real images) to these values.
GAP_SCALE = 0.4          # animals up to 40% larger
GAP_CENTRE = 0.5         # where a centred animal's body sits (x and y)
GAP_TEXTURE = 0.7        # 70% less background texture (cleaner scenes)
GAP_JITTER = 0.7         # 70% less per-image background colour jitter
GAP_SATURATION = 0.6     # colours pushed 60% further from grey


def check_content_gap(gap: float) -> float:
  """``gap`` as a float; raises outside [0, 1]."""
  gap = float(gap)
  if not 0.0 <= gap <= 1.0:
    raise ValueError(
        f"content_gap={gap} must lie in [0, 1] (0: the real images' content).")
  return gap


def check_size(size: int) -> int:
  """``size`` as an int; raises if the renderer does not support it."""
  size = int(size)
  if not MIN_SIZE <= size <= MAX_SIZE:
    raise ValueError(
        f"image_size={size} is not supported: the benchmark renders square "
        f"images of {MIN_SIZE} to {MAX_SIZE} pixels (32 to 64 recommended).")
  return size


def _checked_inputs(ys, bs, seeds, size, content_gap):
  """The renderer's arguments, checked; labels and seeds as int64 vectors."""
  size = check_size(size)
  gap = check_content_gap(content_gap)
  ys = np.asarray(ys, np.int64).reshape(-1)
  bs = np.asarray(bs, np.int64).reshape(-1)
  seeds = np.asarray(seeds, np.int64).reshape(-1)
  if not (len(ys) == len(bs) == len(seeds)):
    raise ValueError(
        f"render: ys, bs and seeds must have one entry per image; got lengths "
        f"{len(ys)}, {len(bs)}, {len(seeds)}.")
  if len(seeds) and seeds.min() < 0:
    raise ValueError("render: seeds must be non-negative integers.")
  for y, b in set(zip(ys.tolist(), bs.tolist())):
    DEMO_SPEC.group_index(y, b)  # raises with the list of groups
  return size, gap, ys, bs, seeds


def draw(keys: Sequence[Sequence[int]], num_params: int, grid: int, size: int
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-image float32 uniforms ``[N, num_params]``, normal field ``[N, grid,
  grid]`` and normal noise ``[N, size, size, 3]``, image ``i`` from its own
  generator seeded by ``keys[i]``: results never depend on batching."""
  n = len(keys)
  params = np.empty((n, num_params), np.float32)
  field = np.empty((n, grid, grid), np.float32)
  noise = np.empty((n, size, size, 3), np.float32)
  for i, key in enumerate(keys):
    rng = np.random.default_rng([int(k) for k in key])
    params[i] = rng.random(num_params)
    field[i] = rng.standard_normal((grid, grid))
    noise[i] = rng.standard_normal((size, size, 3), dtype=np.float32)
  return params, field, noise


def _draw(ys, bs, seeds, size: int, salt: int):
  return draw([(s, y, b, salt) for s, y, b in zip(seeds, ys, bs)],
              _NUM_PARAMS, TEXTURE_GRID, size)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
  """Bilinear upsampling of ``[N, g, g]`` to ``[N, size, size]`` (separable)."""
  g = grid.shape[-1]
  pos = (np.arange(size) + 0.5) / size * (g - 1)
  lo = np.clip(np.floor(pos).astype(int), 0, g - 2)
  w = (pos - lo).astype(np.float32)
  rows = grid[:, lo, :] * (1 - w)[None, :, None] + grid[:, lo + 1, :] * w[None, :, None]
  return rows[:, :, lo] * (1 - w) + rows[:, :, lo + 1] * w


def _saturate(colours: np.ndarray, gap: float) -> np.ndarray:
  """Pushes ``[..., 3]`` colours away from their grey by ``GAP_SATURATION * gap``."""
  grey = colours.mean(axis=-1, keepdims=True)
  return colours + gap * GAP_SATURATION * (colours - grey)


def _backgrounds(bs: np.ndarray, p: np.ndarray, texture: np.ndarray,
                 u: np.ndarray, v: np.ndarray, gap: float = 0.0) -> np.ndarray:
  """Background fields ``[N, S, S, 3]`` for bias values ``bs``."""
  size = u.shape[-1]
  jitter = (p[:, 0:3] - 0.5) * 36  # per-channel colour jitter, +-18
  jitter = jitter * (1 - gap * GAP_JITTER)
  bright = 0.85 + 0.3 * p[:, 3]
  top = _saturate(_BG_TOP[bs] + jitter, gap) * bright[:, None]
  bottom = _saturate(_BG_BOTTOM[bs] + jitter, gap) * bright[:, None]
  horizon = 0.45 + 0.25 * p[:, 4]
  below = 1 / (1 + np.exp(-(v[None] - horizon[:, None, None]) * size * 1.5))
  below = below * _HAS_HORIZON[bs][:, None, None]
  img = top[:, None, None] * (1 - below[..., None]) + bottom[:, None, None] * below[..., None]
  strength = _BG_TEXTURE[bs] * (1 - gap * GAP_TEXTURE)
  mottle = _upsample(texture, size) * strength[:, 0, None, None]
  freq = 3 + 4 * p[:, 5]
  phase = 2 * np.pi * p[:, 6]
  waves = np.sin(2 * np.pi * freq[:, None, None] * (v[None] + 0.05 * np.sin(
      2 * np.pi * 2 * u[None])) + phase[:, None, None]) * strength[:, 1, None, None]
  planks = np.sin(2 * np.pi * 5 * (u[None] + p[:, 6, None, None])) ** 8
  planks = planks * strength[:, 2, None, None] * below
  return img + (mottle + waves - planks)[..., None]


def _ellipse(u, v, cx, cy, ax, ay, size):
  """Anti-aliased coverage of axis-aligned ellipses; params are ``[N]``."""
  cx, cy, ax, ay = (np.asarray(a, np.float32) for a in (cx, cy, ax, ay))
  du = (u[None] - cx[:, None, None]) / ax[:, None, None]
  dv = (v[None] - cy[:, None, None]) / ay[:, None, None]
  d = np.sqrt(du * du + dv * dv)
  edge = np.minimum(ax, ay)[:, None, None] * size
  return np.clip(0.5 - (d - 1) * edge, 0, 1)


def _box(u, v, cx, cy, hw, hh, size):
  """Anti-aliased coverage of axis-aligned rectangles; params are ``[N]``."""
  cx, cy, hw, hh = (np.asarray(a, np.float32) for a in (cx, cy, hw, hh))
  cu = np.clip(0.5 + (hw[:, None, None] - np.abs(u[None] - cx[:, None, None])) * size, 0, 1)
  cv = np.clip(0.5 + (hh[:, None, None] - np.abs(v[None] - cy[:, None, None])) * size, 0, 1)
  return cu * cv


def _objects(ys: np.ndarray, p: np.ndarray, u: np.ndarray, v: np.ndarray,
             gap: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """Each image's animal: coverage ``[N, S, S]`` and a brightness map of its markings."""
  size = u.shape[-1]
  bird = ys < 2
  # Body half-width in image units: big dogs are larger than small dogs, birds
  # in between; ranges overlap so size alone is not decisive.
  lo = np.array([0.14, 0.14, 0.11, 0.16])[ys]
  hi = np.array([0.19, 0.19, 0.16, 0.22])[ys]
  ax = (lo + (hi - lo) * p[:, 7]) * (1 + gap * GAP_SCALE)
  ay = ax * np.where(bird, 0.62, 0.5)
  cx = 0.32 + 0.36 * p[:, 8]
  cy = 0.42 + 0.2 * p[:, 9]
  cx, cy = cx + gap * (GAP_CENTRE - cx), cy + gap * (GAP_CENTRE - cy)
  # Which way the animal looks; the gap makes facing right the canonical pose.
  face = np.where(p[:, 10] < 0.5 * (1 - gap), -1.0, 1.0)
  body = _ellipse(u, v, cx, cy, ax, ay, size)
  cover = body
  tone = _markings(ys, body, u, v, cx, cy, ax, ay)

  # Head: on the body's shoulder, or raised on a neck for waterbirds.
  long_neck = ys == 1
  hx = cx + face * ax * np.where(bird, 0.85, 1.0)
  hy = cy - ay * np.where(long_neck, 2.3, np.where(bird, 0.8, 0.9))
  hr = ax * np.where(bird, 0.38, 0.42)
  cover = np.maximum(cover, _ellipse(u, v, hx, hy, hr, hr, size))
  neck = _box(u, v, hx, (hy + cy - ay * 0.5) / 2, ax * 0.13,
              np.abs(cy - ay * 0.5 - hy) / 2, size)
  cover = np.maximum(cover, neck * long_neck[:, None, None])

  # Beak (birds): a thin bar pointing forward from the head.
  beak = _box(u, v, hx + face * hr * 1.25, hy + hr * 0.1, hr * 0.55, hr * 0.18, size)
  cover = np.maximum(cover, beak * bird[:, None, None])

  # Legs (dogs): four bars under the body.
  dog = ~bird
  leg_h = ay * 0.9
  for off in (-0.7, -0.3, 0.3, 0.7):
    leg = _box(u, v, cx + off * ax, cy + ay * 0.6 + leg_h, ax * 0.09, leg_h, size)
    cover = np.maximum(cover, leg * dog[:, None, None])

  # Ears (dogs): pointed and upright for small dogs, floppy and hanging for big.
  small = ys == 2
  ear_up = _box(u, v, hx - face * hr * 0.45, hy - hr * 1.1, hr * 0.22, hr * 0.45, size)
  ear_down = _ellipse(u, v, hx - face * hr * 0.9, hy + hr * 0.35, hr * 0.3,
                      hr * 0.6, size)
  ears = np.where(small[:, None, None], ear_up, ear_down)
  return np.maximum(cover, ears * dog[:, None, None]), tone


def _markings(ys, body, u, v, cx, cy, ax, ay) -> np.ndarray:
  """Brightness multipliers ``[N, S, S]``: landbirds' wing bars, waterbirds'
  light belly, big dogs' dark saddle (a cue weaker than the background)."""
  rel_u = (u[None] - cx[:, None, None]) / ax[:, None, None]
  rel_v = (v[None] - cy[:, None, None]) / ay[:, None, None]
  bars = (np.sin(2 * np.pi * 2.2 * rel_u) > 0.2) & (rel_v < 0.3)
  belly = np.clip((rel_v - 0.1) * 4, 0, 1)
  saddle = np.clip((-0.15 - rel_v) * 4, 0, 1)
  kind = ys[:, None, None]
  tone = np.ones_like(body)
  tone = np.where(kind == 0, 1 - 0.45 * bars * body, tone)
  tone = np.where(kind == 1, 1 + 0.6 * belly * body, tone)
  return np.where(kind == 3, 1 - 0.45 * saddle * body, tone).astype(np.float32)


def _object_colour(p: np.ndarray, gap: float = 0.0) -> np.ndarray:
  """A random colour per image, drawn the same way for every class."""
  base = 25 + 205 * p[:, 11:14]
  grey = base.mean(axis=1, keepdims=True)
  # Pull towards grey by a random amount: muted animals are harder to see.
  muted = p[:, 14:15]
  return _saturate(grey + (base - grey) * (0.6 + 0.4 * muted), gap)


def render_float(ys: Sequence[int], bs: Sequence[int], seeds: Sequence[int],
                 size: int = DEFAULT_SIZE, salt: int = 0,
                 content_gap: float = 0.0) -> np.ndarray:
  """:func:`render` before quantisation: float32 ``[N, size, size, 3]`` in
  0..255, unclipped (the generator adds its fingerprint here).

  ``salt`` separates independent streams of images (0: the real data).
  """
  size, gap, ys, bs, seeds = _checked_inputs(ys, bs, seeds, size, content_gap)
  out = np.empty((len(seeds), size, size, 3), np.float32)
  coords = (np.arange(size, dtype=np.float32) + 0.5) / size
  u, v = np.meshgrid(coords, coords)  # u: x (columns), v: y (rows)
  for start in range(0, len(seeds), _CHUNK):
    sl = slice(start, start + _CHUNK)
    p, texture, noise = _draw(ys[sl], bs[sl], seeds[sl], size, salt)
    img = _backgrounds(bs[sl], p, texture, u, v, gap)
    cover, tone = _objects(ys[sl], p, u, v, gap)
    cover, tone = cover[..., None], tone[..., None]
    colour = _object_colour(p, gap)[:, None, None, :]
    # Shade the animal darker towards its bottom so it is not a flat decal.
    shade = 1.0 - 0.18 * (v[None, :, :, None] - 0.5)
    img = img * (1 - cover) + np.minimum(colour * shade * tone, 250) * cover
    out[sl] = img + NOISE_STD * noise
  return out


def animal_coverage(ys: Sequence[int], bs: Sequence[int], seeds: Sequence[int],
                    size: int = DEFAULT_SIZE, salt: int = 0,
                    content_gap: float = 0.0) -> np.ndarray:
  """The animal's coverage ``[N, size, size]`` in [0, 1] in :func:`render_float`'s
  images with the same arguments (to measure the content gap)."""
  size, gap, ys, bs, seeds = _checked_inputs(ys, bs, seeds, size, content_gap)
  coords = (np.arange(size, dtype=np.float32) + 0.5) / size
  u, v = np.meshgrid(coords, coords)
  p, _, _ = _draw(ys, bs, seeds, size, salt)
  return _objects(ys, p, u, v, gap)[0]


def area_and_offset(cover: np.ndarray) -> tuple[float, float]:
  """Mean animal area (fraction of the image) and mean centroid distance from
  the image centre, over ``cover [N, size, size]``."""
  size = cover.shape[-1]
  coords = (np.arange(size) + 0.5) / size
  mass = cover.sum(axis=(1, 2))
  cx = (cover * coords[None, None, :]).sum(axis=(1, 2)) / mass
  cy = (cover * coords[None, :, None]).sum(axis=(1, 2)) / mass
  return float((mass / size**2).mean()), float(np.hypot(cx - 0.5, cy - 0.5).mean())


def quantize(images: np.ndarray) -> np.ndarray:
  """Float 0..255 images to uint8 (round to nearest, clip)."""
  return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def render(ys: Sequence[int], bs: Sequence[int], seeds: Sequence[int],
           size: int = DEFAULT_SIZE, salt: int = 0,
           content_gap: float = 0.0) -> np.ndarray:
  """Renders benchmark images, uint8 ``[N, size, size, 3]``: ``ys`` the classes
  (landbird, waterbird, small dog, big dog), ``bs`` the backgrounds (land,
  water, indoors, outdoors), one of the eight groups each."""
  return quantize(render_float(ys, bs, seeds, size, salt, content_gap))
