"""A run's set-up: every host must have loaded the same data."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples
from ffr_jax.training import run as run_lib

SPEC = DatasetSpec("toy", ("a", "b"), ("x", "y"),
                   ((0, 0), (0, 1), (1, 0), (1, 1)), (0, 1))


def _splits(paths):
  ex = Examples.from_lists(paths, [0, 1], [0, 1])
  return DatasetSplits(spec=SPEC, train=ex, val=ex, test=ex)


def _digest(paths):
  """What a host with ``paths`` contributes to the all-gather."""
  got = {}

  def capture(mine):
    got["digest"] = mine
    return np.stack([mine, mine])
  with pytest.MonkeyPatch.context() as m:
    m.setattr(jax, "process_count", lambda: 2)
    m.setattr(multihost_utils, "process_allgather", capture)
    run_lib.check_same_data_on_every_host(_splits(paths))
  return got["digest"]


def _two_hosts(monkeypatch, other_host_paths):
  """Pretends to be host 0 of 2; host 1 listed ``other_host_paths``."""
  theirs = _digest(other_host_paths)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda mine: np.stack([mine, theirs]))


def test_hosts_that_listed_other_files_fail_clearly(monkeypatch):
  _two_hosts(monkeypatch, ["/d/a.png", "/d/c.png"])
  with pytest.raises(ValueError, match=r"Hosts \[1\] loaded other dataset splits"):
    run_lib.check_same_data_on_every_host(_splits(["/d/a.png", "/d/b.png"]))


def test_hosts_with_the_same_files_under_other_mounts_agree(monkeypatch):
  _two_hosts(monkeypatch, ["/mnt/x/a.png", "/mnt/x/b.png"])
  run_lib.check_same_data_on_every_host(_splits(["/d/a.png", "/d/b.png"]))
