"""A progress bar with rate and ETA on stderr, not tqdm: one line per redraw
in a pod worker's log file (every 10 s), in place on a terminal, nothing off
host 0."""

from __future__ import annotations

import sys
import time


def format_seconds(s: float) -> str:
  s = max(0, int(round(s)))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
  """``Progress(total, desc)``; call ``update(n)``, then ``close()``."""

  def __init__(self, total: int, desc: str = "", unit: str = "it",
               enabled: bool = True, initial: int = 0):
    self.total = max(int(total), 0)
    self.desc = desc
    self.unit = unit
    self.enabled = enabled
    self.stream = sys.stderr
    self.n = initial
    self._start = time.perf_counter()
    self._last = 0.0
    self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    # In a log file every redraw is a new line: keep them sparse.
    self.min_interval = 0.5 if self._tty else 10.0
    self.postfix = ""
    self._first = None  # (time, count) at the first update

  def rate(self) -> float:
    # Measured from the first update on: the time before it is start-up
    # (for a train loop, compilation) and would make the first ETAs absurd.
    if self._first is None:
      return 0.0
    elapsed = time.perf_counter() - self._first[0]
    done = self.n - self._first[1]
    return done / elapsed if elapsed > 0 and done > 0 else 0.0

  def line(self) -> str:
    rate = self.rate()
    eta = (self.total - self.n) / rate if rate > 0 else float("nan")
    pct = 100.0 * self.n / self.total if self.total else 100.0
    eta_s = format_seconds(eta) if eta == eta else "--:--"
    elapsed = format_seconds(time.perf_counter() - self._start)
    post = f" {self.postfix}" if self.postfix else ""
    return (f"{self.desc} {self.n}/{self.total} ({pct:5.1f}%) "
            f"{rate:.1f} {self.unit}/s elapsed {elapsed} ETA {eta_s}{post}")

  def update(self, n: int = 1, postfix: str | None = None) -> None:
    if self._first is None:
      self._first = (time.perf_counter(), self.n + n)
    self.n += n
    if postfix is not None:
      self.postfix = postfix
    now = time.perf_counter()
    if self.enabled and (now - self._last >= self.min_interval
                         or self.n >= self.total):
      self._last = now
      self._draw()

  def _draw(self) -> None:
    self._drawn = self.n
    end = "\r" if self._tty else "\n"
    self.stream.write(self.line() + end)
    self.stream.flush()

  def close(self) -> None:
    if self.enabled and (self._tty or getattr(self, "_drawn", None) != self.n):
      self.stream.write(self.line() + "\n")
      self.stream.flush()
