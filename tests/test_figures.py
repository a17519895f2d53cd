"""Every figure keeps its legend inside the canvas and off the data.

Checked on the renderer's bounding boxes of each figure as it is saved: the
legend lies inside the figure and covers no bar, point, line or text.
"""

from __future__ import annotations

import matplotlib
matplotlib.use("Agg")
import matplotlib.figure  # pylint: disable=g-import-not-at-top
from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
import numpy as np
import pytest

from ffr_jax.analysis import embeddings as emb_lib
from ffr_jax.analysis import rise
from ffr_jax.data.types import DatasetSpec
from ffr_jax.reporting import aggregate as agg
from ffr_jax.reporting import paper_report
from ffr_jax.reporting import results as results_lib

from test_report import _paper_like_tree

# The built-in benchmark's 8 groups: the longest legend a figure gets here.
SPEC = DatasetSpec("demo", ("landbird", "waterbird", "small dog", "big dog"),
                   ("land", "water", "indoors", "outdoors"),
                   ((0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3)),
                   (0, 1, 2, 3))


@pytest.fixture
def saved(monkeypatch):
  """The figures saved while the test runs."""
  figures = []
  save = matplotlib.figure.Figure.savefig

  def spy(fig, *args, **kwargs):
    assert "bbox_inches" not in kwargs  # the canvas checked is the one saved
    save(fig, *args, **kwargs)
    fig.set_dpi(kwargs.get("dpi", fig.dpi))
    figures.append(fig)
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
  return figures


def _inside(box, outer, tol=1.0) -> bool:
  return (box.x0 >= outer.x0 - tol and box.y0 >= outer.y0 - tol and
          box.x1 <= outer.x1 + tol and box.y1 <= outer.y1 + tol)


def _data_boxes_and_points(fig, renderer):
  """Window boxes of bars and texts, and display points of markers and lines."""
  boxes, points = [], []
  texts = [t for t in fig.texts if t.get_text()]
  for ax in fig.axes:
    boxes += [p.get_window_extent(renderer) for p in ax.patches]
    ticks = [t.label1 for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim()))
             for t in axis.get_major_ticks() if min(lo, hi) <= t.get_loc() <= max(lo, hi)]
    texts += [t for t in [*ax.texts, ax.title, ax.xaxis.label, ax.yaxis.label, *ticks]
              if t.get_text() and t.get_visible()]
    for c in ax.collections:
      if len(c.get_offsets()):
        points.append(c.get_offset_transform().transform(c.get_offsets()))
    for line in ax.lines:
      points.append(line.get_transform().transform(line.get_xydata()))
  boxes += [t.get_window_extent(renderer) for t in texts]
  if fig._suptitle is not None:  # pylint: disable=protected-access
    boxes.append(fig._suptitle.get_window_extent(renderer))  # pylint: disable=protected-access
  return boxes, points


def _check_legends(fig, expect: int):
  canvas = FigureCanvasAgg(fig)  # pyplot.close left it without one
  canvas.draw()
  renderer = canvas.get_renderer()
  legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
  assert len(legends) == expect
  boxes, points = _data_boxes_and_points(fig, renderer)
  for box in boxes:
    assert _inside(box, fig.bbox), (box, fig.bbox)
  for legend in legends:
    box = legend.get_window_extent(renderer)
    assert _inside(box, fig.bbox), (box, fig.bbox)
    for other in boxes:
      assert not box.overlaps(other), (box, other)
    for xy in points:
      assert not ((xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) &
                  (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)).any()


@pytest.mark.parametrize("values", [
    [(0.0, 0.5), (0.48, 0.74), (0.72, 0.84), (0.16, 0.6)],  # the demo
    [(0.95, 0.99), (0.99, 0.99)], [(0.02, 0.03)] * 9])
def test_summary_chart(tmp_path, saved, values):
  rows = [{"run": f"run{i}-erm", "test_worst_group_acc": wa,
           "test_balanced_acc": ba} for i, (wa, ba) in enumerate(values)]
  results_lib.bar_chart(rows, str(tmp_path / "summary.png"), "demo, bias ratio 0.99")
  _check_legends(saved[0], expect=1)


@pytest.mark.parametrize("runs", [1, 4])
def test_embeddings_figure(tmp_path, saved, runs):
  rng = np.random.default_rng(0)
  n = 400
  results = [emb_lib.RunEmbeddings(
      name=f"mode{i}-erm", source=np.arange(n) % 2,
      groups=(np.arange(n) // 2) % 8, tsne=rng.normal(size=(n, 2)) * 30,
      probe=emb_lib.ProbeResult(0.9, 0.01, 5, {}),
      distances={"mean": 1.2, "per_group": {}}) for i in range(runs)]
  emb_lib.plot(results, SPEC, str(tmp_path / "embeddings.png"), "demo, bias ratio 0.99")
  _check_legends(saved[0], expect=1)


def test_paper_report_figures(tmp_path, saved):
  _paper_like_tree(tmp_path)
  paper_report.write_report(agg.load_records(str(tmp_path)), str(tmp_path / "out"))
  titles = {fig.get_suptitle().split(":")[0]: fig for fig in saved}
  _check_legends(titles["Figure 3"], expect=1)
  _check_legends(titles["Figure 4"], expect=0)


def test_rise_pages(tmp_path, saved):
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
  rise.plot_pages(images, ["small dog/indoors\nreal"] * 3, ["none-erm", "ffr-erm"],
                  rng.random((3, 2, 32, 32)).astype(np.float32),
                  [["p(small dog)=0.93\npred big dog"] * 2] * 3, str(tmp_path), "demo")
  _check_legends(saved[0], expect=0)
