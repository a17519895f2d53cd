"""RISE saliency maps (Petsiuk et al., BMVC 2018), jitted and sharded.

``S_c = sum_i score_c(I * M_i) M_i / (N p)`` over ``N`` random masks: binary
``s x s`` grids (cells kept with probability ``p``), upsampled bilinearly to
``(s + 1) * cell`` (``cell = ceil(H / s)``) and cropped ``H x W`` at a random
shift, so cell borders fall anywhere. Masks multiply the *normalised* image,
as the authors' code does: a hidden pixel is the dataset's mean colour. Masks
are drawn on device with partitionable threefry and sharded over the mesh's
``data`` axis, so the result does not depend on the device count; all batches
run in one compiled ``fori_loop``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ffr_jax.data.pipeline import normalize
from ffr_jax.mesh import Shardings, make_shardings
from ffr_jax.reporting import results as results_lib
from ffr_jax.training import last_layer

# score_fn(aux, images [B, H, W, C] float32) -> scores [B, K].
ScoreFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class RiseConfig:
  """RISE settings; the same masks (``seed``) for every model and image."""

  num_masks: int = 2000  # N, rounded up to whole batches
  grid: int = 8  # s, cells per side
  p: float = 0.5  # probability that a cell is kept
  batch: int = 256  # masks per step, rounded up to a multiple of the devices
  seed: int = 0

  def __post_init__(self):
    if self.num_masks < 1 or self.grid < 1 or self.batch < 1:
      raise ValueError(f"RISE needs num_masks, grid and batch >= 1: {self}.")
    if not 0.0 < self.p <= 1.0:
      raise ValueError(f"RISE's p must lie in (0, 1]; got {self.p}.")


def make_masks(key: jax.Array, n: int, grid: int, p: float, height: int,
               width: int) -> jax.Array:
  """``n`` RISE masks, float32 ``[n, height, width]`` in ``[0, 1]``."""
  cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
  k_grid, k_y, k_x = jax.random.split(key, 3)
  cells = jax.random.bernoulli(k_grid, p, (n, grid, grid)).astype(jnp.float32)
  up = jax.image.resize(cells, (n, (grid + 1) * cell_h, (grid + 1) * cell_w),
                        "bilinear")
  dy = jax.random.randint(k_y, (n,), 0, cell_h)
  dx = jax.random.randint(k_x, (n,), 0, cell_w)
  crop = lambda m, y, x: jax.lax.dynamic_slice(m, (y, x), (height, width))
  return jax.vmap(crop)(up, dy, dx)


def make_rise_fn(score_fn: ScoreFn, cfg: RiseConfig,
                 shardings: Shardings | None = None):
  """Compiles ``rise(aux, image [H, W, C], key) -> maps [K, H, W]``."""
  shardings = shardings or make_shardings()
  d = shardings.num_devices
  batch = -(-cfg.batch // d) * d  # a multiple of the device count
  num_batches = -(-cfg.num_masks // batch)
  total = num_batches * batch

  def one_batch(aux, image, key):
    h, w = image.shape[:2]
    masks = make_masks(key, batch, cfg.grid, cfg.p, h, w)
    masks = jax.lax.with_sharding_constraint(masks, shardings.batch)
    scores = score_fn(aux, image[None] * masks[..., None])
    return jnp.einsum("bk,bhw->khw", scores.astype(jnp.float32), masks)

  def rise(aux, image, key):
    def body(i, acc):
      return acc + one_batch(aux, image, jax.random.fold_in(key, i))
    k = jax.eval_shape(lambda: score_fn(aux, image[None])).shape[-1]
    init = jnp.zeros((k,) + image.shape[:2], jnp.float32)
    return jax.lax.fori_loop(0, num_batches, body, init) / (total * cfg.p)

  rep = shardings.replicated
  return jax.jit(rise, in_shardings=(rep, rep, rep), out_shardings=rep)


def rise_saliency(score_fn: ScoreFn, aux: Any, image: np.ndarray,
                  cfg: RiseConfig, shardings: Shardings | None = None
                  ) -> np.ndarray:
  """RISE maps of one image for every score: float32 ``[K, H, W]``."""
  fn = make_rise_fn(score_fn, cfg, shardings)
  return np.asarray(fn(aux, jnp.asarray(image, jnp.float32),
                       jax.random.key(cfg.seed)))


def model_score_fn(model, head: dict | None = None) -> ScoreFn:
  """Softmax class probabilities of ``model`` (with a refit ``head`` in place
  of its own, as a DFR or AFR run reports); ``aux`` is its variables."""

  def score(variables, images):
    out = model.apply(variables, images, train=False)
    logits = out.logits if head is None else last_layer.head_logits(
        head, out.embedding.astype(jnp.float32), jnp)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return score


def model_explainer(model, variables, cfg: RiseConfig,
                    shardings: Shardings | None = None,
                    head: dict | None = None):
  """``explain(uint8 image) -> (maps [K, H, W], class probabilities [K])``,
  compiled once for every image of a size."""
  rise = make_rise_fn(model_score_fn(model, head), cfg, shardings)
  probs = jax.jit(model_score_fn(model, head))

  def explain(image_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = normalize(jnp.asarray(image_uint8))
    maps = rise(variables, x, jax.random.key(cfg.seed))
    return np.asarray(maps), np.asarray(probs(variables, x[None])[0])
  return explain


def region_mass(saliency: np.ndarray, region: np.ndarray) -> float:
  """Share of the map's mass above its minimum (RISE's floor) in ``region``."""
  s = saliency - saliency.min()
  total = float(s.sum())
  return float(s[region].sum()) / total if total > 0 else 0.0


# Figure pages: at most MAX_PAGE_PX high at DPI, so that a many-image grid is
# several readable pages, not one very tall image.
DPI = 120
MAX_PAGE_PX = 2000
ROW_INCHES = 2.0     # one image row with its captions
HEADER_INCHES = 0.6  # the figure title and the column titles
COL_INCHES = 1.9


def rows_per_page(max_px: int = MAX_PAGE_PX) -> int:
  return max(1, int((max_px / DPI - HEADER_INCHES) // ROW_INCHES))


def page_name(page: int) -> str:
  return f"rise_page{page}.png"


def draw_page(images: list[np.ndarray], row_labels: list[str],
              col_labels: list[str], maps: np.ndarray, notes: list[list[str]],
              title: str = ""):
  """One page of the Figure 6-style grid (``maps``: ``[rows, runs, H, W]``),
  for the caller to save and close."""
  plt = results_lib.pyplot()
  rows, cols = len(images), len(col_labels) + 1
  fig, axes = plt.subplots(
      rows, cols, figsize=(COL_INCHES * cols, ROW_INCHES * rows + HEADER_INCHES),
      squeeze=False, layout="constrained", dpi=DPI)
  for r, image in enumerate(images):
    axes[r, 0].imshow(image, interpolation="nearest")
    axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    for c in range(1, cols):
      m = maps[r, c - 1]
      # Per-map min-max scaling, as RISE's figures: each shows where its
      # model looks, not how confident it is (the caption says that).
      m = (m - m.min()) / (np.ptp(m) + 1e-12)
      ax = axes[r, c]
      ax.imshow(image, interpolation="nearest")
      ax.imshow(m, cmap="jet", alpha=0.5, interpolation="bilinear")
      ax.set_xlabel(notes[r][c - 1], fontsize=7)
  axes[0, 0].set_title("image", fontsize=8)
  for c, label in enumerate(col_labels, 1):
    axes[0, c].set_title(label, fontsize=8)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=9)
  return fig


def plot_pages(images: list[np.ndarray], row_labels: list[str],
               col_labels: list[str], maps: np.ndarray, notes: list[list[str]],
               out_dir: str, title: str = "", max_px: int = MAX_PAGE_PX) -> list[str]:
  """Writes the grid as pages of at most ``max_px`` pixels; returns their paths."""
  plt = results_lib.pyplot()
  per_page = rows_per_page(max_px)
  starts = list(range(0, len(images), per_page))
  paths = []
  for page, start in enumerate(starts, 1):
    rows = slice(start, start + per_page)
    page_title = f"{title} (page {page}/{len(starts)})" if len(starts) > 1 else title
    fig = draw_page(images[rows], row_labels[rows], col_labels, maps[rows],
                    notes[rows], page_title)
    paths.append(os.path.join(out_dir, page_name(page)))
    fig.savefig(paths[-1], dpi=DPI)
    plt.close(fig)
  page = len(starts) + 1  # the pages of an earlier, longer grid go
  while os.path.exists(os.path.join(out_dir, page_name(page))):
    os.remove(os.path.join(out_dir, page_name(page)))
    page += 1
  return paths
