"""Metrics to TensorBoard event files and a JSON-lines file, from host 0.

clu's metric writers import TensorFlow at import time, so we write TensorBoard
events with tensorboardX (pure Python) and keep ``metrics.jsonl`` beside them
for scripts: one line per write, ``{"stage", "step", "<name>": value, ...}``.
"""

from __future__ import annotations

import json
import os
import time

import jax

from ffr_jax.lifecycle import write_atomic

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """Writes scalars under ``{logdir}``; a no-op on hosts other than 0."""

  def __init__(self, logdir: str, enabled: bool | None = None):
    self.logdir = logdir
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(logdir, exist_ok=True)
      self._jsonl = open(os.path.join(logdir, METRICS_FILE), "a")
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(logdir, "tensorboard"))
      except ImportError:  # The JSON lines still carry every number.
        self._tb = None

  def write(self, stage: str, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled or not scalars:
      return
    row = {"stage": stage, "step": int(step), "time": time.time()}
    row.update({k: float(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f"{stage}/{k}", float(v), int(step))

  def drop_after(self, stage: str, step: int) -> None:
    """Forgets JSON lines of ``stage`` past ``step``: a run resumed from its
    last checkpoint logs them again."""
    if not self.enabled:
      return
    path = os.path.join(self.logdir, METRICS_FILE)
    self._jsonl.close()
    with open(path) as f:
      rows = [line for line in f if line.strip()]
    kept = []
    for line in rows:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # a line torn by the kill
        continue
      if not (row.get("stage") == stage and int(row.get("step", 0)) > step):
        kept.append(line if line.endswith("\n") else line + "\n")
    write_atomic(path, "".join(kept))
    self._jsonl = open(path, "a")

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
