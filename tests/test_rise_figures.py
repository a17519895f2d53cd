"""Protects the RISE figure pages (ffr_jax.analysis.rise.plot_pages).

A grid of many images is several pages of at most MAX_PAGE_PX pixels, and the
page title never covers the column titles (checked on the renderer's bounding
boxes, not by eye).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ffr_jax.analysis import rise

RUNS = ["none-erm", "usb-erm", "asb-erm", "ffr-erm"]


def _grid(rows: int, size: int = 32):
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(rows)]
  maps = rng.random((rows, len(RUNS), size, size)).astype(np.float32)
  labels = [f"small dog/indoors\nreal {i}" for i in range(rows)]
  notes = [["p(small dog)=0.93\npred big dog"] * len(RUNS) for _ in range(rows)]
  return images, labels, RUNS, maps, notes


def test_default_pages_fit_the_page_height():
  full_page = (rise.rows_per_page() * rise.ROW_INCHES + rise.HEADER_INCHES) * rise.DPI
  assert rise.rows_per_page() >= 4 and full_page <= rise.MAX_PAGE_PX


def test_a_long_grid_is_pages_of_at_most_the_page_height(tmp_path):
  # A small page limit keeps the figures small (drawing is slow on busy CPUs);
  # the default limit is the same arithmetic (test above).
  max_px, runs = 600, 1
  per_page = rise.rows_per_page(max_px)
  rows = 2 * per_page + 1  # full, full, one row
  (tmp_path / rise.page_name(4)).write_bytes(b"stale")  # from an earlier, longer grid
  images, labels, names, maps, notes = _grid(rows)
  paths = rise.plot_pages(images, labels, names[:runs], maps[:, :runs],
                          [n[:runs] for n in notes], str(tmp_path),
                          title="demo: none-erm", max_px=max_px)
  assert [os.path.basename(p) for p in paths] == [rise.page_name(k) for k in (1, 2, 3)]
  heights = []
  for path in paths:
    width, height = Image.open(path).size
    assert height <= max_px and width == round(rise.COL_INCHES * (runs + 1) * rise.DPI)
    heights.append(height)
  assert heights[0] == heights[1] > heights[2]
  assert not (tmp_path / rise.page_name(4)).exists()


def test_page_title_sits_above_every_column_title():
  import matplotlib.pyplot as plt
  # A tall figure: the old single figure's suptitle sat at 98% of the height,
  # below the column titles of a 40-row grid (this assertion failed there).
  images, labels, names, maps, notes = _grid(40)
  fig = rise.draw_page(images, labels, names[:1], maps[:, :1], [n[:1] for n in notes],
                       title="demo: a long title (page 1/8)")
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  title = fig._suptitle.get_window_extent(renderer)  # pylint: disable=protected-access
  axes_titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
  assert len(axes_titles) == 2
  for box in axes_titles:
    assert not title.overlaps(box)
    assert title.y0 >= box.y1  # display coordinates: y grows upwards
  plt.close(fig)
