"""One registry shape for datasets, models, methods, modes and generators.

Lazy entries (``"module:attribute"``, imported on first lookup) let a low
layer list a plug-in that lives in a higher one without importing it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Names -> values of one kind (``kind`` appears in error messages)."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}
    self._lazy: dict[str, str] = {}  # name -> "module:attribute", not imported yet

  def register(self, name: str, value: T) -> None:
    """Adds ``name``; the same value twice is a no-op, another is an error."""
    old = self._entries.get(name, value)
    if old is not value and old != value:
      raise ValueError(f"{self.kind} {name!r} is already registered differently.")
    self._entries[name] = value
    self._lazy.pop(name, None)

  def register_lazy(self, name: str, target: str) -> None:
    """Adds ``name`` as ``"package.module:attribute"``, imported on first use."""
    self._lazy[name] = target

  def get(self, name: str) -> T:
    """The value of ``name``; ValueError listing the known names if unknown."""
    if name in self._lazy:
      module, _, attr = self._lazy[name].partition(":")
      try:
        self.register(name, getattr(importlib.import_module(module), attr))
      except (ImportError, AttributeError) as e:
        raise ValueError(f"{self.kind} {name!r}: importing {module}:{attr} "
                         f"failed ({e}).") from e
    if name not in self._entries:
      raise ValueError(
          f"Unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self)}.")
    return self._entries[name]

  def __contains__(self, name: object) -> bool:
    return name in self._entries or name in self._lazy

  def __iter__(self) -> Iterator[str]:
    return iter(sorted([*self._entries, *self._lazy]))
