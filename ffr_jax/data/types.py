"""The data model: an example is an image path plus labels ``y`` (class),
``b`` (bias) and ``source`` (real or synthetic), kept per split as a column
table of numpy arrays so group counting and bias ratios are vectorised.

A group is ``(y, b)`` for modes ``none``/``ffr`` and ``(y, b, source)`` for
``usb``/``asb`` (docs/reference.md, "Training").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

REAL = 0
SYNTHETIC = 1
SOURCE_NAMES = ("real", "synthetic")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """The names and group structure of a dataset.

  ``name`` is also the dataset's folder inside a synthetic-images root;
  ``groups`` is the canonical order of group ids and reports;
  ``majority_bias[y]`` dominates class ``y`` in the biased real data.
  """

  name: str
  class_names: tuple[str, ...]
  bias_names: tuple[str, ...]
  groups: tuple[tuple[int, int], ...]
  majority_bias: tuple[int, ...]

  def __post_init__(self):
    if len(self.majority_bias) != len(self.class_names):
      raise ValueError(f"{self.name}: one majority bias per class is needed.")
    for y, b in self.groups:
      if not (0 <= y < len(self.class_names) and 0 <= b < len(self.bias_names)):
        raise ValueError(f"{self.name}: group {(y, b)} is out of range.")
    for y, b in enumerate(self.majority_bias):
      if (y, b) not in self.groups:
        raise ValueError(f"{self.name}: majority group {(y, b)} is not a group.")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def group_index(self, y: int, b: int) -> int:
    """Index of ``(y, b)`` in :attr:`groups`; ValueError if it is no group."""
    try:
      return self.groups.index((int(y), int(b)))
    except ValueError:
      raise ValueError(
          f"{self.name}: (y={y}, b={b}) is not one of its groups {self.groups}"
      ) from None

  def group_name(self, g: int) -> str:
    y, b = self.groups[g]
    return f"{self.class_names[y]}/{self.bias_names[b]}"

  def is_majority(self, y: int, b: int) -> bool:
    return self.majority_bias[y] == b

  def class_index(self, name: str) -> int:
    return self._index(self.class_names, name, "class", "classes")

  def bias_index(self, name: str) -> int:
    return self._index(self.bias_names, name, "bias", "biases")

  def _index(self, names: tuple[str, ...], name: str, kind: str, kinds: str) -> int:
    if name not in names:
      raise ValueError(f"{self.name}: unknown {kind} {name!r}; {kinds} are {names}")
    return names.index(name)


@dataclasses.dataclass(frozen=True)
class Examples:
  """A column table of examples (int32 labels); row ``i`` is one image.

  ``content`` is each file's byte identity (``"<size>:crc32:<hex>"``,
  :func:`ffr_jax.data.images.verify_images`), ``""`` where unknown, None when
  no row has one; it tells apart files with one path and other bytes.
  """

  path: np.ndarray
  y: np.ndarray
  b: np.ndarray
  source: np.ndarray
  content: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.path)
    for field in ("y", "b", "source", "content"):
      column = getattr(self, field)
      if column is not None and len(column) != n:
        raise ValueError(f"Examples: column {field!r} has the wrong length.")

  @classmethod
  def from_lists(
      cls,
      paths: Sequence[str],
      ys: Sequence[int],
      bs: Sequence[int],
      source: int | Sequence[int] = REAL,
      content: Sequence[str] | None = None,
  ) -> Examples:
    n = len(paths)
    src = np.full(n, source, np.int32) if np.isscalar(source) else source
    return cls(
        path=np.asarray(list(paths), dtype=object).reshape(n),
        y=np.asarray(ys, np.int32).reshape(n),
        b=np.asarray(bs, np.int32).reshape(n),
        source=np.asarray(src, np.int32).reshape(n),
        content=None if content is None else _strings(content),
    )

  @classmethod
  def empty(cls) -> Examples:
    return cls.from_lists([], [], [])

  def __len__(self) -> int:
    return len(self.path)

  def take(self, index: np.ndarray) -> Examples:
    """Rows at ``index`` (an int array or a boolean mask), in that order."""
    return Examples(
        path=self.path[index], y=self.y[index], b=self.b[index],
        source=self.source[index],
        content=None if self.content is None else self.content[index])

  def with_content(self, content: dict[str, str]) -> Examples:
    """These rows with ``content[path]`` (``""`` for a path it lacks)."""
    return dataclasses.replace(
        self, content=_strings([content.get(str(p), "") for p in self.path]))

  def sorted(self) -> Examples:
    """Rows sorted by path, so results never depend on file-system order."""
    return self.take(np.argsort(self.path.astype(str), kind="stable"))

  @staticmethod
  def concat(parts: Iterable[Examples]) -> Examples:
    parts = list(parts)
    if not parts:
      return Examples.empty()
    known = any(p.content is not None for p in parts)
    return Examples(
        path=np.concatenate([p.path for p in parts]).astype(object),
        y=np.concatenate([p.y for p in parts]).astype(np.int32),
        b=np.concatenate([p.b for p in parts]).astype(np.int32),
        source=np.concatenate([p.source for p in parts]).astype(np.int32),
        content=_strings([c for p in parts for c in (
            p.content if p.content is not None else [""] * len(p))])
        if known else None,
    )

  def mask(self, y: int, b: int, source: int | None = None) -> np.ndarray:
    m = (self.y == y) & (self.b == b)
    if source is not None:
      m &= self.source == source
    return m

  def count(self, y: int, b: int, source: int | None = None) -> int:
    return int(self.mask(y, b, source).sum())


def _strings(values: Iterable[str]) -> np.ndarray:
  values = list(values)
  return np.asarray(values, dtype=object).reshape(len(values))


@dataclasses.dataclass(frozen=True)
class GroupScheme:
  """Dense group ids: ``spec.groups`` order, or ``2 * g + source`` by source."""

  spec: DatasetSpec
  by_source: bool = False

  @property
  def num_groups(self) -> int:
    return len(self.spec.groups) * (2 if self.by_source else 1)

  def ids(self, examples: Examples) -> np.ndarray:
    lookup = np.full(
        (self.spec.num_classes, len(self.spec.bias_names)), -1, np.int32)
    for g, (y, b) in enumerate(self.spec.groups):
      lookup[y, b] = g
    g = lookup[examples.y, examples.b]
    if (g < 0).any():
      bad = int(np.argmax(g < 0))
      raise ValueError(
          f"{self.spec.name}: example {examples.path[bad]!r} has "
          f"(y={examples.y[bad]}, b={examples.b[bad]}), which is no group.")
    if self.by_source:
      g = 2 * g + examples.source
    return g.astype(np.int32)

  def names(self) -> list[str]:
    """Metric-friendly names, e.g. ``"y=0,b=1"`` or ``"y=0,b=1,src=synthetic"``."""
    if self.by_source:
      return [f"y={y},b={b},src={s}" for y, b in self.spec.groups
              for s in SOURCE_NAMES]
    return [f"y={y},b={b}" for y, b in self.spec.groups]

  def counts(self, examples: Examples) -> np.ndarray:
    return np.bincount(self.ids(examples), minlength=self.num_groups)


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
  """Train, val and test of one dataset, plus reason -> count (and a few
  example paths) of the files loading left out."""

  spec: DatasetSpec
  train: Examples
  val: Examples
  test: Examples
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  skipped_files: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def split(self, name: str) -> Examples:
    if name not in ("train", "val", "test"):
      raise ValueError(f"Unknown split {name!r}; expected train, val or test.")
    return getattr(self, name)

  def replace(self, **kwargs) -> DatasetSplits:
    return dataclasses.replace(self, **kwargs)


def group_table(spec: DatasetSpec, examples: Examples) -> list[dict]:
  """Counts per ``(y, b, source)`` as JSON rows; empty synthetic rows omitted."""
  rows = []
  for y, b in spec.groups:
    for s, sname in enumerate(SOURCE_NAMES):
      n = examples.count(y, b, s)
      if s == REAL or n:
        rows.append({"y": int(y), "b": int(b), "source": sname, "count": n})
  return rows
